"""One retry policy for every call to the homeserver, and one backoff for durable jobs.

A call is retried while the homeserver cannot be reached (a reset, a timeout) or
answers with a transient error (5xx, or an answer that is not Matrix JSON, as a
proxy's 502 page is); any other answer is returned for the caller to judge. Delays
grow exponentially with jitter, so a fleet of bots does not retry in step, up to a
cap that keeps a meeting room answered soon after an outage ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from nio import ErrorResponse
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    stop_never,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, OSError)
FIRST_DELAY = 1.0
# Low on purpose: a retry is one cheap request, while a long cap would leave a
# meeting room unanswered for that long after an outage ends.
CAP_DELAY = 15.0


def backoff_delay(failures: int, *, first: float = FIRST_DELAY, cap: float = CAP_DELAY,
                  rng: Callable[[], float] = random.random) -> float:
    """The wait after the `failures`-th failure in a row: first, 2 x first, 4 x first …
    up to `cap`, each scaled by a random factor from 0.5 to 1 (jitter)."""
    exponential = min(cap, first * 2 ** max(0, failures - 1))
    return exponential * (0.5 + rng() / 2)


def is_transient(response: Any) -> bool:
    """Whether a nio response is an error that the same request may not meet again."""
    status = getattr(getattr(response, "transport_response", None), "status", None)
    if isinstance(status, int) and (status >= 500 or status == 429):
        return True
    # nio makes an error without an errcode from a body that is not Matrix JSON.
    return isinstance(response, ErrorResponse) and response.status_code in (
        None, "M_LIMIT_EXCEEDED")


async def call_homeserver(what: str, call: Callable[[], Awaitable[T]], *,
                          give_up_after: float | None = None,
                          first: float = FIRST_DELAY, cap: float = CAP_DELAY) -> T:
    """`call()`, retried through network errors and transient answers.

    Retries forever unless `give_up_after` (seconds) is given; then the last network
    error is raised, or the last transient answer returned. Logs the first failure of
    a run of failures, and the recovery, once each.
    """
    def wait(state: RetryCallState) -> float:
        return backoff_delay(state.attempt_number, first=first, cap=cap)

    def before_sleep(state: RetryCallState) -> None:
        if state.attempt_number == 1:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            if error is not None:
                problem = f"homeserver unreachable ({error or type(error).__name__})"
            else:
                problem = "homeserver answered " + _describe(
                    outcome.result() if outcome is not None else None)
            log.warning("%s: %s; retrying with backoff up to %ss", what, problem, cap)

    attempts = 0

    async def attempt() -> T:
        nonlocal attempts
        attempts += 1
        return await call()

    result: T = await AsyncRetrying(
        retry=retry_if_exception_type(NETWORK_ERRORS) | retry_if_result(is_transient),
        wait=wait,
        stop=stop_never if give_up_after is None else stop_after_delay(give_up_after),
        before_sleep=before_sleep,
        retry_error_callback=_last_outcome,
    )(attempt)
    if attempts > 1 and not is_transient(result):
        log.warning("%s: works again after %s attempts", what, attempts)
    return result


def _last_outcome(state: RetryCallState) -> Any:
    """Out of time: raise the last error, or hand back the last (transient) answer."""
    assert state.outcome is not None
    return state.outcome.result()


def _describe(response: Any) -> str:
    status = getattr(getattr(response, "transport_response", None), "status", None)
    code = getattr(response, "status_code", None)
    message = getattr(response, "message", None)
    return " ".join(str(part) for part in (status, code, message) if part) or "no answer"
