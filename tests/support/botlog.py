"""The bot's log lines, for a test that runs the bot in the test's own event loop."""

from __future__ import annotations

import asyncio
import logging


class LogWatcher(logging.Handler):
    """Collects the bot's log lines (it runs in this process) and wakes whoever waits."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._changed = asyncio.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, text: str, timeout: float = 20) -> str:
        async def find() -> str:
            async with self._changed:
                while not (found := [line for line in self.lines if text in line]):
                    await self._changed.wait()
                return found[0]

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            raise AssertionError(f"the bot logged no line with {text!r} in {timeout} s") from None
