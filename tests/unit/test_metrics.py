"""What the bot counts, how it reads in Prometheus' text format, and when it is healthy."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chatbot.metrics import CONTENT_TYPE, Metrics

START = datetime(2026, 6, 17, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> Metrics:
    return Metrics(clock)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the rendered text, by name and labels."""
    text = metrics.render().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


# --- counters ---------------------------------------------------------------------------


def test_commands_are_counted_by_name(metrics: Metrics) -> None:
    for name in ("here", "here", "update", "unknown"):
        metrics.command_handled(name)
    assert value(metrics, "chatbot_commands_total", command="here") == 2
    assert value(metrics, "chatbot_commands_total", command="update") == 1
    assert value(metrics, "chatbot_commands_total", command="unknown") == 1
    assert value(metrics, "chatbot_commands_total", command="pass") is None


def test_an_empty_command_name_counts_as_unknown(metrics: Metrics) -> None:
    metrics.command_handled("")
    assert value(metrics, "chatbot_commands_total", command="unknown") == 1


def test_errors_are_counted_by_where_they_were_caught(metrics: Metrics) -> None:
    metrics.error("message")
    metrics.error("job")
    metrics.error("job")
    assert value(metrics, "chatbot_errors_total", where="message") == 1
    assert value(metrics, "chatbot_errors_total", where="job") == 2


def test_a_failed_sync_counts_as_a_sync_error(metrics: Metrics, clock: Clock) -> None:
    metrics.sync_failed(clock())
    metrics.sync_failed(clock())
    assert value(metrics, "chatbot_errors_total", where="sync") == 2


def test_reminders_sent_and_missed_start_at_zero_and_count(metrics: Metrics) -> None:
    assert value(metrics, "chatbot_reminders_total", outcome="sent") == 0
    assert value(metrics, "chatbot_reminders_total", outcome="missed") == 0
    metrics.reminder("sent")
    metrics.reminder("sent")
    metrics.reminder("missed")
    assert value(metrics, "chatbot_reminders_total", outcome="sent") == 2
    assert value(metrics, "chatbot_reminders_total", outcome="missed") == 1


def test_a_reminder_outcome_other_than_sent_or_missed_is_a_mistake(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="'skipped'"):
        metrics.reminder("skipped")


def test_meetings_open_is_what_was_last_set(metrics: Metrics) -> None:
    assert value(metrics, "chatbot_meetings_open") == 0
    metrics.set_meetings_open(2)
    metrics.set_meetings_open(1)
    assert value(metrics, "chatbot_meetings_open") == 1


# --- exposition ---------------------------------------------------------------------------


def test_render_is_prometheus_text_with_help_types_and_labels(metrics: Metrics) -> None:
    metrics.command_handled("here")
    metrics.error("delivery")
    text = metrics.render().decode()
    for line in (
        "# TYPE chatbot_commands_total counter",
        'chatbot_commands_total{command="here"} 1.0',
        'chatbot_errors_total{where="delivery"} 1.0',
        'chatbot_reminders_total{outcome="sent"} 0.0',
        "# TYPE chatbot_meetings_open gauge",
        "# TYPE chatbot_sync_lag_seconds gauge",
        "# HELP chatbot_healthy 1 while syncing is healthy (what /healthz answers), else 0.",
    ):
        assert line in text.splitlines(), line
    assert CONTENT_TYPE == CONTENT_TYPE_LATEST  # what generate_latest writes


def test_a_counter_reads_as_a_prometheus_client_counter_would(metrics: Metrics) -> None:
    tally = metrics._errors
    registry = CollectorRegistry()
    reference = Counter(tally.name, tally.documentation, tally.labelnames, registry=registry)
    before = time.time()
    for where in ("job", "message", "job"):
        metrics.error(where)
        reference.labels(where).inc()

    def lines(text: str) -> list[str]:  # _created holds the time the series began
        return [line for line in text.splitlines()
                if "chatbot_errors" in line and "_created" not in line]

    assert lines(metrics.render().decode()) == lines(generate_latest(registry).decode())
    created = value(metrics, "chatbot_errors_created", where="job")
    assert created is not None and before <= created <= time.time()


def test_two_bots_in_one_process_count_separately(clock: Clock) -> None:
    first, second = Metrics(clock), Metrics(clock)
    first.command_handled("here")
    assert value(first, "chatbot_commands_total", command="here") == 1
    assert value(second, "chatbot_commands_total", command="here") is None


# --- sync lag and health ------------------------------------------------------------------


def test_sync_lag_is_measured_at_scrape_time_from_the_last_success(
    metrics: Metrics, clock: Clock
) -> None:
    clock.advance(20)
    assert value(metrics, "chatbot_sync_lag_seconds") == 20  # since the start: none yet
    metrics.sync_succeeded(clock())
    assert value(metrics, "chatbot_sync_lag_seconds") == 0
    clock.advance(42.5)
    assert value(metrics, "chatbot_sync_lag_seconds") == 42.5
    assert value(metrics, "chatbot_last_sync_timestamp_seconds") == START.timestamp() + 20


def test_sync_lag_never_runs_backwards_below_zero(metrics: Metrics, clock: Clock) -> None:
    metrics.sync_succeeded(clock() + timedelta(seconds=5))
    assert value(metrics, "chatbot_sync_lag_seconds") == 0


def test_not_healthy_before_the_first_sync(metrics: Metrics, clock: Clock) -> None:
    assert not metrics.healthy(clock())
    assert metrics.unhealthy_reason(clock()) == "no successful sync yet"
    assert value(metrics, "chatbot_healthy") == 0


@pytest.mark.parametrize(
    ("events", "seconds_later", "reason"),
    [
        pytest.param([("ok", 0)], 0, None, id="just synced"),
        pytest.param([("ok", 0)], 90, None, id="90 s after a sync: still healthy"),
        pytest.param([("ok", 0)], 91, "no successful sync for 91 s", id="91 s: stuck"),
        pytest.param([("ok", 0), ("fail", 10)], 10, "the last sync failed",
                     id="a failure after the last success"),
        pytest.param([("ok", 0), ("fail", 10), ("ok", 11)], 11, None,
                     id="a success after the failure recovers"),
        pytest.param([("fail", 0)], 0, "no successful sync yet", id="only failures"),
        pytest.param([("ok", 0), ("fail", 0)], 0, "the last sync failed",
                     id="the order of the calls counts, not their times: failed last"),
        pytest.param([("fail", 0), ("ok", 0)], 0, None,
                     id="the order of the calls counts, not their times: succeeded last"),
    ],
)
def test_health_follows_the_sync_loop(
    metrics: Metrics, events: list[tuple[str, float]], seconds_later: float, reason: str | None
) -> None:
    for outcome, at in events:
        when = START + timedelta(seconds=at)
        (metrics.sync_succeeded if outcome == "ok" else metrics.sync_failed)(when)
    now = START + timedelta(seconds=seconds_later)
    assert metrics.unhealthy_reason(now) == reason
    assert metrics.healthy(now) is (reason is None)


def test_the_health_gauge_reads_the_clock_at_scrape_time(metrics: Metrics, clock: Clock) -> None:
    metrics.sync_succeeded(clock())
    assert value(metrics, "chatbot_healthy") == 1
    clock.advance(120)
    assert value(metrics, "chatbot_healthy") == 0


def test_the_allowed_sync_age_can_be_set(clock: Clock) -> None:
    metrics = Metrics(clock, max_sync_age=timedelta(seconds=10))
    metrics.sync_succeeded(clock())
    assert metrics.healthy(clock.advance(10))
    assert not metrics.healthy(clock.advance(1))


# --- the bot's own time per command ---------------------------------------------------------


class Timer:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_own_time_runs_from_the_sync_response_to_the_sending_of_the_check_mark(
        clock: Clock) -> None:
    timer = Timer()
    metrics = Metrics(clock, timer=timer)
    for n, took in enumerate((0.001, 0.002, 0.003)):
        metrics.message_arrived(f"$here{n}", timer.now)
        metrics.command_handled("here", f"$here{n}")
        timer.now += took
        metrics.acknowledging(f"$here{n}")
    assert metrics.own_time.summary() == {
        "here": {"count": 3, "median": pytest.approx(0.002), "p95": pytest.approx(0.0029)}}
    assert value(metrics, "chatbot_command_own_seconds", command="here",
                 quantile="0.5") == pytest.approx(0.002)
    assert "here median 2.00 ms p95 2.90 ms over 3" in metrics.own_time_line()


def test_own_time_counts_only_commands_it_saw_arrive(clock: Clock) -> None:
    timer = Timer()
    metrics = Metrics(clock, timer=timer)
    metrics.message_arrived("$chat", timer.now)  # not a command: never handled
    metrics.acknowledging("$chat")
    metrics.command_handled("here", "$before-restart")  # arrived before this process
    metrics.acknowledging("$before-restart")
    assert metrics.own_time.summary() == {}
    assert metrics.own_time_line() == "no command acknowledged yet"


def test_own_time_keeps_a_bounded_number_of_messages_and_samples(clock: Clock) -> None:
    timer = Timer()
    metrics = Metrics(clock, timer=timer)
    kept = metrics.own_time.keep
    for n in range(kept * 3):
        metrics.message_arrived(f"$m{n}", timer.now)  # never acknowledged
    for n in range(kept * 2):
        metrics.message_arrived(f"$c{n}", timer.now)
        metrics.command_handled("update", f"$c{n}")
        metrics.acknowledging(f"$c{n}")
    assert len(metrics.own_time._waiting) <= kept
    assert metrics.own_time.summary()["update"]["count"] == kept
