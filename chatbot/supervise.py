"""Long-running tasks, each started through one wrapper that names it, logs and counts
a crash, and restarts it with backoff. Only what is fatal (a refused login) ends the bot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from chatbot.metrics import Metrics
from chatbot.retry import backoff_delay

log = logging.getLogger(__name__)

# A restarted task that runs this long without crashing again counts as working, for
# /healthz and for the backoff, which starts small again after that.
HEALTHY_AFTER_SECONDS = 30.0
RESTART_CAP_SECONDS = 60.0


async def supervise(
    name: str, run: Callable[[], Awaitable[None]], *, metrics: Metrics,
    clock: Callable[[], datetime], fatal: tuple[type[BaseException], ...] = (),
    healthy_after: float = HEALTHY_AFTER_SECONDS, cap: float = RESTART_CAP_SECONDS,
) -> None:
    """Run `run()` until it returns, restarting it whenever it raises anything but
    `fatal` (re-raised) or cancellation."""
    loop = asyncio.get_running_loop()
    failures = 0
    crashes = [0]  # how many so far; a list, so a timer set at a restart reads it later
    while True:
        started = loop.time()
        try:
            await run()
            return
        except fatal:
            raise
        except Exception as error:
            if loop.time() - started >= healthy_after:
                failures = 0
            failures += 1
            crashes[0] += 1
            delay = backoff_delay(failures, cap=cap)
            metrics.task_crashed(name, _reason(error), clock())
            log.exception("task %s crashed (%s time(s) in a row); restarting it in %.1f s",
                          name, failures, delay)
        await asyncio.sleep(delay)
        log.info("restarting task %s", name)

        loop.call_later(healthy_after, _clear_if_still_running, crashes, crashes[0], name,
                        metrics)


def _clear_if_still_running(crashes: list[int], crashes_then: int, name: str,
                            metrics: Metrics) -> None:
    """A restarted task that has not crashed again since counts as working again."""
    if crashes[0] == crashes_then:
        metrics.task_running(name)


def _reason(error: BaseException) -> str:
    """A short, single-line description for /healthz (the log has the traceback)."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 160 else text[:157] + "..."
