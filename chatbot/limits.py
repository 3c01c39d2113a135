"""Flood control: a token bucket per person per room, and the reply a flood gets.

Pure: time comes in as an argument, nothing is sent or stored. The buckets live in
memory only; a restart forgets them, which costs nothing worse than a fresh bucket.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum


class Verdict(Enum):
    ALLOW = "allow"
    SLOW_DOWN = "slow down"  # the first command refused: say so once
    SILENT = "silent"  # refused again before the bucket refilled: say nothing


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    # When the next command will be answered; set for SLOW_DOWN and SILENT.
    resume_at: datetime | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


@dataclass(frozen=True, slots=True)
class Bucket:
    """Tokens left at `at`; `warned` once the person was told to slow down."""

    tokens: float
    at: datetime
    warned: bool = False


def refill(bucket: Bucket, now: datetime, capacity: int, per: timedelta) -> Bucket:
    """The bucket at `now`: tokens flow back continuously, `capacity` per `per`.

    A full bucket forgets the warning, so the next flood is told again. A clock that
    went back adds nothing.
    """
    elapsed = max(0.0, (now - bucket.at).total_seconds())
    tokens = min(float(capacity), bucket.tokens + elapsed * capacity / per.total_seconds())
    return Bucket(tokens, max(now, bucket.at), bucket.warned and tokens < capacity)


def spend(bucket: Bucket | None, now: datetime, capacity: int,
          per: timedelta) -> tuple[Bucket, Decision]:
    """Take one token for a command, or refuse it: the first refusal of a flood says
    "slow down", later ones are silent until the bucket is full again. A refused
    command takes nothing, so the bucket refills at the same pace whatever is sent."""
    bucket = Bucket(float(capacity), now) if bucket is None else refill(
        bucket, now, capacity, per)
    if bucket.tokens >= 1:
        return Bucket(bucket.tokens - 1, bucket.at, bucket.warned), Decision(Verdict.ALLOW)
    wait = (1 - bucket.tokens) * per.total_seconds() / capacity
    resume_at = bucket.at + timedelta(seconds=wait)
    if bucket.warned:
        return bucket, Decision(Verdict.SILENT, resume_at)
    return Bucket(bucket.tokens, bucket.at, True), Decision(Verdict.SLOW_DOWN, resume_at)


class FloodGate:
    """One bucket per key (room, person). Memory stays bounded: buckets that must be
    full again (untouched for `per`) are dropped, at most once per `per`."""

    def __init__(self, capacity: int, per: timedelta) -> None:
        self.capacity, self.per = capacity, per
        self._buckets: dict[Hashable, Bucket] = {}
        self._swept_at: datetime | None = None

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, now: datetime) -> Decision:
        self._sweep(now)
        bucket, decision = spend(self._buckets.get(key), now, self.capacity, self.per)
        self._buckets[key] = bucket
        return decision

    def would_allow(self, key: Hashable, now: datetime) -> bool:
        """Whether `take` would allow a command now; changes nothing."""
        bucket = self._buckets.get(key)
        return bucket is None or refill(bucket, now, self.capacity, self.per).tokens >= 1

    def give_back(self, key: Hashable) -> None:
        """Return the token a command took that turned out to be handled before."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets[key] = Bucket(min(float(self.capacity), bucket.tokens + 1),
                                        bucket.at, bucket.warned)

    def _sweep(self, now: datetime) -> None:
        if self._swept_at is not None and now - self._swept_at < self.per:
            return
        self._swept_at = now
        # Spending empties a bucket at most; `per` refills it from empty.
        self._buckets = {key: bucket for key, bucket in self._buckets.items()
                         if now - bucket.at < self.per}


def _seconds(delay: timedelta) -> str:
    seconds = max(1, math.ceil(delay.total_seconds()))
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minutes"


def slow_down_text(capacity: int, per: timedelta, resume_at: datetime, now: datetime) -> str:
    """The one reply a person gets when they run out of commands."""
    return (f"Slow down, please: I take {capacity} command{'s' if capacity != 1 else ''} "
            f"per {_seconds(per)} from each person. I will answer yours again in "
            f"{_seconds(resume_at - now)}; until then I ignore them.")
