"""What the running bot counts, for `/metrics` (Prometheus) and `/healthz`.

One `Metrics` per bot, each with its own `CollectorRegistry` (never the library's global
default), so several bots in one process, as in the tests, do not collide. The core and
the Matrix edge report events through its methods; the web edge renders it.

Health: the bot is healthy while its sync loop works, that is when the last successful
sync was at most `max_sync_age` ago (default 90 s: three 30 s long polls) and no sync
has failed since it (by the order of the calls). Before the first successful sync it
is not healthy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# A long poll returns after at most 30 s even when the rooms are quiet; three missed
# in a row mean the loop is stuck, not merely idle.
DEFAULT_MAX_SYNC_AGE = timedelta(seconds=90)
UNKNOWN_COMMAND = "unknown"
REMINDER_OUTCOMES = ("sent", "missed")
PRUNED_TABLES = ("events", "jobs", "undecrypted")


class Metrics:
    """The bot's counters and gauges, and the sync health derived from them."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        *,
        max_sync_age: timedelta = DEFAULT_MAX_SYNC_AGE,
    ) -> None:
        self.clock = clock
        self.max_sync_age = max_sync_age
        self.started_at = clock()
        self.last_sync: datetime | None = None
        self.last_sync_failure: datetime | None = None
        # By order of the calls, not by their times: a clock can repeat a reading.
        self._failed_since_sync = False
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # memory, CPU, open files, start time
        self._commands = Counter(
            "chatbot_commands", "Commands handled, by command name ('unknown' for a "
            "mistyped one the bot answered with a suggestion).",
            ["command"], registry=self.registry)
        self._errors = Counter(
            "chatbot_errors", "Errors caught and logged, by where they were caught.",
            ["where"], registry=self.registry)
        self._reminders = Counter(
            "chatbot_reminders", "Reminders decided: sent, or missed (fell due while the "
            "bot was down and skipped).", ["outcome"], registry=self.registry)
        self._jobs_failed = Counter(
            "chatbot_jobs_failed", "Failed attempts of outbox jobs (messages, reactions, "
            "note files), by kind; each is retried with backoff.", ["kind"],
            registry=self.registry)
        self._jobs_parked = Counter(
            "chatbot_jobs_parked", "Outbox jobs that kept failing past jobs.park_after and "
            "are no longer retried, by kind.", ["kind"], registry=self.registry)
        self._pruned = Counter(
            "chatbot_pruned_rows", "Rows the daily upkeep deleted once past retention.events, "
            "by what they were: events (ids of handled events), jobs (finished outbox jobs), "
            "undecrypted (messages that could not be decrypted).", ["table"],
            registry=self.registry)
        self._direct_chats_left = Counter(
            "chatbot_direct_chats_left", "Direct chats the bot left after nobody used them "
            "for retention.direct_chats.", registry=self.registry)
        self._commands_throttled = Counter(
            "chatbot_commands_throttled", "Commands refused because their sender sent "
            "more than limits.commands per limits.per in a room.", registry=self.registry)
        self._task_crashes = Counter(
            "chatbot_task_crashes", "Crashes of the bot's long-running tasks (each is "
            "restarted with backoff), by task.", ["task"], registry=self.registry)
        # Which long-running task crashed last and why, for /healthz.
        self._task_failing: dict[str, tuple[datetime, str]] = {}
        self._hackmd_calls = Counter(
            "chatbot_hackmd_calls", "Calls made to the HackMD API (making, writing and "
            "reading back the meetings' notes pages, and checks).", registry=self.registry)
        self._hackmd_calls_counted = 0
        self._hackmd_calls_left = Gauge(
            "chatbot_hackmd_calls_left", "Calls left in HackMD's current 5-minute rate-limit "
            "window, as its last answer said (-1 before the first answer).",
            registry=self.registry)
        self._hackmd_calls_left.set(-1)
        self._meetings_open = Gauge(
            "chatbot_meetings_open", "Meetings open now.", registry=self.registry)
        lag = Gauge(
            "chatbot_sync_lag_seconds", "Seconds since the last successful sync (since the "
            "bot started, before the first one).", registry=self.registry)
        lag.set_function(self.sync_lag_seconds)
        last = Gauge(
            "chatbot_last_sync_timestamp_seconds", "Unix time of the last successful sync "
            "(0 before the first one).", registry=self.registry)
        last.set_function(lambda: self.last_sync.timestamp() if self.last_sync else 0.0)
        healthy = Gauge(
            "chatbot_healthy", "1 while syncing is healthy (what /healthz answers), else 0.",
            registry=self.registry)
        healthy.set_function(lambda: float(self.healthy(self.clock())))
        # Label values known in advance are exported as 0 from the start, so a rate()
        # over them has a series to work on before the first event.
        for outcome in REMINDER_OUTCOMES:
            self._reminders.labels(outcome=outcome)
        for table in PRUNED_TABLES:
            self._pruned.labels(table=table)

    # --- what the core reports ----------------------------------------------------------

    def command_handled(self, name: str) -> None:
        """A command was recorded: its registry name, or "unknown" for a mistyped one."""
        self._commands.labels(command=name or UNKNOWN_COMMAND).inc()

    def command_throttled(self) -> None:
        """A command was refused by flood control (answered "slow down", or not at all)."""
        self._commands_throttled.inc()

    def error(self, where: str) -> None:
        """An exception was caught and logged at one of the doors.

        `where` is a short fixed word naming the door, such as "message", "job",
        "delivery" or "plan", never text from chat (each value is a separate series).
        """
        self._errors.labels(where=where).inc()

    def reminder(self, outcome: str) -> None:
        """A reminder's fate was recorded: "sent", or "missed" (skipped as too late)."""
        if outcome not in REMINDER_OUTCOMES:
            raise ValueError(f"reminder outcome must be one of {REMINDER_OUTCOMES}, "
                             f"got {outcome!r}")
        self._reminders.labels(outcome=outcome).inc()

    def set_meetings_open(self, count: int) -> None:
        """How many meetings are open now (at start, and whenever one opens or closes)."""
        self._meetings_open.set(count)

    def hackmd_calls(self, made: int, left: int | None) -> None:
        """HackMD calls made so far by this bot (a running total), and how many its
        rate limit leaves (None: not said yet)."""
        if made > self._hackmd_calls_counted:
            self._hackmd_calls.inc(made - self._hackmd_calls_counted)
            self._hackmd_calls_counted = made
        if left is not None:
            self._hackmd_calls_left.set(left)

    def job_failed(self, kind: str) -> None:
        """An attempt of an outbox job failed; it will be retried (or parked)."""
        self._jobs_failed.labels(kind=kind).inc()

    def job_parked(self, kind: str) -> None:
        """An outbox job kept failing and is no longer retried."""
        self._jobs_parked.labels(kind=kind).inc()

    def pruned(self, **counts: int) -> None:
        """Upkeep deleted rows: a count per kind in PRUNED_TABLES."""
        for table, count in counts.items():
            if table not in PRUNED_TABLES:
                raise ValueError(f"pruned rows must be one of {PRUNED_TABLES}, got {table!r}")
            self._pruned.labels(table=table).inc(count)

    def left_direct_chat(self) -> None:
        """The bot left a direct chat nobody used."""
        self._direct_chats_left.inc()

    # --- what the supervisor reports ----------------------------------------------------

    def task_crashed(self, task: str, reason: str, now: datetime) -> None:
        """A long-running task raised; it is restarted with backoff."""
        self._task_crashes.labels(task=task).inc()
        self._task_failing[task] = (now, reason)
        self._errors.labels(where=task).inc()

    def task_running(self, task: str) -> None:
        """A restarted task has run long enough to count as working again."""
        self._task_failing.pop(task, None)

    # --- what the sync loop reports -----------------------------------------------------

    def sync_succeeded(self, now: datetime) -> None:
        """A sync response was handled and its position saved."""
        self.last_sync = now
        self._failed_since_sync = False

    def sync_failed(self, now: datetime) -> None:
        """A sync request failed (network, or an error from the homeserver).

        Counts as an error where="sync" too: do not also call `error("sync")`.
        """
        self.last_sync_failure = now
        self._failed_since_sync = True
        self._errors.labels(where="sync").inc()

    # --- health ---------------------------------------------------------------------------

    def sync_lag_seconds(self) -> float:
        """Seconds since the last successful sync, or since the start before the first one."""
        since = self.last_sync or self.started_at
        return max(0.0, (self.clock() - since).total_seconds())

    def unhealthy_reason(self, now: datetime) -> str | None:
        """Why the bot is not healthy at `now`, in a few words; None when it is."""
        for task, (since, reason) in sorted(self._task_failing.items()):
            return f"task {task} is failing ({reason}, since {since:%H:%M:%S} UTC)"
        if self.last_sync is None:
            return "no successful sync yet"
        if self._failed_since_sync:
            return "the last sync failed"
        age = (now - self.last_sync).total_seconds()
        if age > self.max_sync_age.total_seconds():
            return f"no successful sync for {math.floor(age)} s"
        return None

    def healthy(self, now: datetime) -> bool:
        """True while the last sync succeeded no more than `max_sync_age` before `now`."""
        return self.unhealthy_reason(now) is None

    # --- exposition -----------------------------------------------------------------------

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (served as `CONTENT_TYPE`)."""
        return generate_latest(self.registry)
