"""Waiting for a condition with a deadline: the one poll loop the tests share."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

# How often a wait asks again; each wait has its own deadline.
POLL_SECONDS = 0.05


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str,
                     timeout: float = 15) -> None:
    """Return once `check()` (plain or async) is true; fail naming `what` after `timeout`."""

    async def poll() -> None:
        while True:
            outcome = check()
            if await outcome if inspect.isawaitable(outcome) else outcome:
                return
            await asyncio.sleep(POLL_SECONDS)  # sleep-ok: the poll interval of a deadline wait

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    """`eventually` for code outside an event loop (a fixture's teardown): whether
    `check()` came true within `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)  # sleep-ok: the poll interval of a deadline wait
    return True
