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
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
# A long poll returns after at most 30 s even when the rooms are quiet; three missed
# in a row mean the loop is stuck, not merely idle.
DEFAULT_MAX_SYNC_AGE = timedelta(seconds=90)
UNKNOWN_COMMAND = "unknown"
REMINDER_OUTCOMES = ("sent", "missed")
PRUNED_TABLES = ("events", "jobs", "undecrypted")
# The bot's own time per command is kept for this many recent commands of each name,
# and for as many messages between their arrival and their ✅: bounded, whatever the load.
OWN_TIME_KEPT = 1_000
OWN_TIME_QUANTILES = (0.5, 0.95)


class OwnTime:
    """The bot's own time per command: from the sync response that brought a command (as
    nio hands it over, parsed) to the moment its ✅ is sent; what the homeserver and the
    network take is not in it. Durations come from a monotonic `timer`, not the clock."""

    def __init__(self, timer: Callable[[], float] = time.perf_counter,
                 keep: int = OWN_TIME_KEPT) -> None:
        self.timer = timer
        self.keep = keep
        # event id -> [arrival, command name once handled]; oldest first
        self._waiting: dict[str, tuple[float, str | None]] = {}
        self._samples: dict[str, deque[float]] = {}

    def arrived(self, event_id: str, at: float) -> None:
        self._waiting[event_id] = (at, None)
        if len(self._waiting) > self.keep:
            del self._waiting[next(iter(self._waiting))]

    def handled(self, event_id: str, name: str) -> None:
        if (waiting := self._waiting.get(event_id)) is not None:
            self._waiting[event_id] = (waiting[0], name)

    def acknowledged(self, event_id: str) -> None:
        """The ✅ for `event_id` is being sent now."""
        at, name = self._waiting.pop(event_id, (0.0, None))
        if name is None:
            return  # not a command, or one from before a restart
        samples = self._samples.get(name)
        if samples is None:
            samples = self._samples[name] = deque(maxlen=self.keep)
        samples.append(self.timer() - at)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per command name: how many samples, their median and p95, in seconds."""
        return {name: {"count": len(samples), **quantiles(samples)}
                for name, samples in sorted(self._samples.items()) if samples}


def quantiles(samples: deque[float] | list[float]) -> dict[str, float]:
    """The median and p95 of `samples` (at least one)."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return {"median": ordered[0], "p95": ordered[0]}
    return {"median": statistics.median(ordered),
            "p95": statistics.quantiles(ordered, n=100, method="inclusive")[94]}


class _OwnTimeCollector(Collector):
    def __init__(self, own_time: OwnTime) -> None:
        self.own_time = own_time

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "chatbot_command_own_seconds", "The bot's own time per command, from the sync "
            "response that brought it to the sending of its ✅, over the last "
            f"{OWN_TIME_KEPT} of each command: median (quantile 0.5) and p95 (0.95).",
            labels=["command", "quantile"])
        for name, figures in self.own_time.summary().items():
            family.add_metric([name, "0.5"], figures["median"])
            family.add_metric([name, "0.95"], figures["p95"])
        yield family


class Metrics:
    """The bot's counters and gauges, and the sync health derived from them."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        *,
        max_sync_age: timedelta = DEFAULT_MAX_SYNC_AGE,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.clock = clock
        self.own_time = OwnTime(timer)
        self.max_sync_age = max_sync_age
        self.started_at = clock()
        self.last_sync: datetime | None = None
        self.last_sync_failure: datetime | None = None
        # By order of the calls, not by their times: a clock can repeat a reading.
        self._failed_since_sync = False
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # memory, CPU, open files, start time
        self.registry.register(_OwnTimeCollector(self.own_time))
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

    def command_handled(self, name: str, event_id: str | None = None) -> None:
        """A command was recorded: its registry name, or "unknown" for a mistyped one."""
        self._commands.labels(command=name or UNKNOWN_COMMAND).inc()
        if event_id is not None:
            self.own_time.handled(event_id, name or UNKNOWN_COMMAND)

    def message_arrived(self, event_id: str, at: float) -> None:
        """A message came in a sync response that nio handed over at `at` (the timer's)."""
        self.own_time.arrived(event_id, at)

    def acknowledging(self, event_id: str) -> None:
        """The ✅ for the message `event_id` is being sent: its command's own time ends."""
        self.own_time.acknowledged(event_id)

    def own_time_line(self) -> str:
        """The bot's own time per command, one line for the log."""
        figures = self.own_time.summary()
        if not figures:
            return "no command acknowledged yet"
        return "; ".join(
            f"{name} median {f['median'] * 1000:.2f} ms p95 {f['p95'] * 1000:.2f} ms "
            f"over {f['count']:.0f}" for name, f in figures.items())

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
