"""What the running bot counts, for `/metrics` (Prometheus) and `/healthz`.

One `Metrics` per bot. The core and the Matrix edge report events through its methods,
which keep plain numbers; the web edge renders it, and only then is prometheus_client
imported and the bot's own `CollectorRegistry` made (never the library's global default,
so several bots in one process, as in the tests, do not collide).

Health: the bot is healthy while its sync loop works, that is when the last successful
sync was at most `max_sync_age` ago (default 90 s: three 30 s long polls) and no sync
has failed since it (by the order of the calls). Before the first successful sync it
is not healthy.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

# prometheus_client (with the http.server, wsgiref and gzip it brings) is imported when
# /metrics is first asked for: a bot without a web server never needs it, and the counts
# themselves are plain numbers.
if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

# prometheus_client's CONTENT_TYPE_LATEST, which `render` writes (a unit test holds them equal).
CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"
# A long poll returns after at most 30 s even when the rooms are quiet; three missed
# in a row mean the loop is stuck, not merely idle.
DEFAULT_MAX_SYNC_AGE = timedelta(seconds=90)
UNKNOWN_COMMAND = "unknown"
REMINDER_OUTCOMES = ("sent", "missed")
PRUNED_TABLES = ("events", "jobs", "undecrypted")
# The bot's own time per command is kept for this many recent commands of each name,
# and for as many messages between their arrival and their ✅: bounded, whatever the load.
OWN_TIME_KEPT = 1_000


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
    import statistics

    ordered = sorted(samples)
    if len(ordered) == 1:
        return {"median": ordered[0], "p95": ordered[0]}
    return {"median": statistics.median(ordered),
            "p95": statistics.quantiles(ordered, n=100, method="inclusive")[94]}


class Tally:
    """A Prometheus counter kept as plain numbers: per label values, the count and the
    Unix time it was first counted (exported as `_created`, as prometheus_client does)."""

    __slots__ = ("_counts", "documentation", "labelnames", "name")

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        # label values -> [count, created]; in the order first counted, as exported
        self._counts: dict[tuple[str, ...], list[float]] = {}
        if not labelnames:
            self.start()

    def start(self, *values: str) -> list[float]:
        """The series for `values`, at 0 from now if it was not there yet."""
        series = self._counts.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            series = self._counts[values] = [0.0, time.time()]
        return series

    def inc(self, *values: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.start(*values)[0] += amount

    def series(self) -> Iterable[tuple[tuple[str, ...], float, float]]:
        """(label values, count, created) for each series, in the order first counted."""
        return [(values, count, created) for values, (count, created) in self._counts.items()]


def _created_series() -> bool:
    """Whether counters export `_created`: prometheus_client's own switch, read the same way."""
    return os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in (
        "true", "1", "t")


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
        # Made on the first `render`, with the process collector (memory, CPU, open files).
        self._registry: CollectorRegistry | None = None
        self._commands = Tally(
            "chatbot_commands", "Commands handled, by command name ('unknown' for a "
            "mistyped one the bot answered with a suggestion).", ("command",))
        self._errors = Tally(
            "chatbot_errors", "Errors caught and logged, by where they were caught.",
            ("where",))
        self._reminders = Tally(
            "chatbot_reminders", "Reminders decided: sent, or missed (fell due while the "
            "bot was down and skipped).", ("outcome",))
        self._jobs_failed = Tally(
            "chatbot_jobs_failed", "Failed attempts of outbox jobs (messages, reactions, "
            "note files), by kind; each is retried with backoff.", ("kind",))
        self._jobs_parked = Tally(
            "chatbot_jobs_parked", "Outbox jobs that kept failing past jobs.park_after and "
            "are no longer retried, by kind.", ("kind",))
        self._pruned = Tally(
            "chatbot_pruned_rows", "Rows the daily upkeep deleted once past retention.events, "
            "by what they were: events (ids of handled events), jobs (finished outbox jobs), "
            "undecrypted (messages that could not be decrypted).", ("table",))
        self._direct_chats_left = Tally(
            "chatbot_direct_chats_left", "Direct chats the bot left after nobody used them "
            "for retention.direct_chats.")
        self._commands_throttled = Tally(
            "chatbot_commands_throttled", "Commands refused because their sender sent "
            "more than limits.commands per limits.per in a room.")
        self._task_crashes = Tally(
            "chatbot_task_crashes", "Crashes of the bot's long-running tasks (each is "
            "restarted with backoff), by task.", ("task",))
        # Which long-running task crashed last and why, for /healthz.
        self._task_failing: dict[str, tuple[datetime, str]] = {}
        self._hackmd_calls = Tally(
            "chatbot_hackmd_calls", "Calls made to the HackMD API (making, writing and "
            "reading back the meetings' notes pages, and checks).")
        self._hackmd_calls_counted = 0
        self._hackmd_calls_left = -1.0
        self._meetings_open = 0.0
        # Label values known in advance are exported as 0 from the start, so a rate()
        # over them has a series to work on before the first event.
        for outcome in REMINDER_OUTCOMES:
            self._reminders.start(outcome)
        for table in PRUNED_TABLES:
            self._pruned.start(table)

    def _tallies(self) -> tuple[Tally, ...]:
        """Every counter, in the order /metrics shows them."""
        return (self._commands, self._errors, self._reminders, self._jobs_failed,
                self._jobs_parked, self._pruned, self._direct_chats_left,
                self._commands_throttled, self._task_crashes, self._hackmd_calls)

    def _gauges(self) -> tuple[tuple[str, str, float], ...]:
        """Every gauge (name, help, value now), in the order /metrics shows them."""
        return (
            ("chatbot_hackmd_calls_left", "Calls left in HackMD's current 5-minute rate-limit "
             "window, as its last answer said (-1 before the first answer).",
             self._hackmd_calls_left),
            ("chatbot_meetings_open", "Meetings open now.", self._meetings_open),
            ("chatbot_sync_lag_seconds", "Seconds since the last successful sync (since the "
             "bot started, before the first one).", self.sync_lag_seconds()),
            ("chatbot_last_sync_timestamp_seconds", "Unix time of the last successful sync "
             "(0 before the first one).",
             self.last_sync.timestamp() if self.last_sync else 0.0),
            ("chatbot_healthy", "1 while syncing is healthy (what /healthz answers), else 0.",
             float(self.healthy(self.clock()))),
        )

    # --- what the core reports ----------------------------------------------------------

    def command_handled(self, name: str, event_id: str | None = None) -> None:
        """A command was recorded: its registry name, or "unknown" for a mistyped one."""
        self._commands.inc(name or UNKNOWN_COMMAND)
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
        self._errors.inc(where)

    def reminder(self, outcome: str) -> None:
        """A reminder's fate was recorded: "sent", or "missed" (skipped as too late)."""
        if outcome not in REMINDER_OUTCOMES:
            raise ValueError(f"reminder outcome must be one of {REMINDER_OUTCOMES}, "
                             f"got {outcome!r}")
        self._reminders.inc(outcome)

    def set_meetings_open(self, count: int) -> None:
        """How many meetings are open now (at start, and whenever one opens or closes)."""
        self._meetings_open = float(count)

    def hackmd_calls(self, made: int, left: int | None) -> None:
        """HackMD calls made so far by this bot (a running total), and how many its
        rate limit leaves (None: not said yet)."""
        if made > self._hackmd_calls_counted:
            self._hackmd_calls.inc(amount=made - self._hackmd_calls_counted)
            self._hackmd_calls_counted = made
        if left is not None:
            self._hackmd_calls_left = float(left)

    def job_failed(self, kind: str) -> None:
        """An attempt of an outbox job failed; it will be retried (or parked)."""
        self._jobs_failed.inc(kind)

    def job_parked(self, kind: str) -> None:
        """An outbox job kept failing and is no longer retried."""
        self._jobs_parked.inc(kind)

    def pruned(self, **counts: int) -> None:
        """Upkeep deleted rows: a count per kind in PRUNED_TABLES."""
        for table, count in counts.items():
            if table not in PRUNED_TABLES:
                raise ValueError(f"pruned rows must be one of {PRUNED_TABLES}, got {table!r}")
            self._pruned.inc(table, amount=count)

    def left_direct_chat(self) -> None:
        """The bot left a direct chat nobody used."""
        self._direct_chats_left.inc()

    # --- what the supervisor reports ----------------------------------------------------

    def task_crashed(self, task: str, reason: str, now: datetime) -> None:
        """A long-running task raised; it is restarted with backoff."""
        self._task_crashes.inc(task)
        self._task_failing[task] = (now, reason)
        self._errors.inc(task)

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
        self._errors.inc("sync")

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
        from prometheus_client import generate_latest

        if self._registry is None:
            self._registry = _registry(self)
        return generate_latest(self._registry)

    def families(self) -> list[Metric]:
        """The bot's own metrics as Prometheus families, read now (the process's own
        come from prometheus_client's process collector)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        own = GaugeMetricFamily(
            "chatbot_command_own_seconds", "The bot's own time per command, from the sync "
            "response that brought it to the sending of its ✅, over the last "
            f"{OWN_TIME_KEPT} of each command: median (quantile 0.5) and p95 (0.95).",
            labels=["command", "quantile"])
        for name, figures in self.own_time.summary().items():
            own.add_metric([name, "0.5"], figures["median"])
            own.add_metric([name, "0.95"], figures["p95"])
        families: list[Metric] = [own]
        created = _created_series()
        for tally in self._tallies():
            counter = CounterMetricFamily(tally.name, tally.documentation,
                                          labels=tally.labelnames)
            for values, count, since in tally.series():
                counter.add_metric(values, count, since if created else None)
            families.append(counter)
        families.extend(GaugeMetricFamily(name, documentation, value=value)
                        for name, documentation, value in self._gauges())
        return families


def _registry(metrics: Metrics) -> CollectorRegistry:
    """A registry of the bot's own (never the library's global default, so several bots in
    one process, as in the tests, do not collide) with the process collector first."""
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client.registry import Collector

    class Families(Collector):
        def collect(self) -> Iterable[Metric]:
            return metrics.families()

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # memory, CPU, open files, start time
    registry.register(Families())
    return registry
