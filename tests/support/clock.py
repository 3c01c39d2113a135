"""A clock for tests of code that takes an injected clock."""

from __future__ import annotations

from datetime import datetime, timedelta


class ManualClock:
    """The bot's clock in a test: it stands still until the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
