"""The job planner: which reminders and starts are scheduled, and exactly when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chatbot.config import MeetingConfig, parse_config
from chatbot.meetings import JobKind, plan_series


def series(**overrides: object) -> MeetingConfig:
    fields: dict[str, object] = {
        "id": "team", "title": "Team", "room": "!room:example.org",
        "timezone": "Europe/London", "start": "2026-03-29 02:30",
        "reminders": ["1d", "1h", "10m"],
    }
    fields.update(overrides)
    matrix = {"homeserver": "https://example.org", "user_id": "@bot:example.org",
              "password": "secret"}
    return parse_config({"matrix": matrix, "meetings": [fields]}).meetings[0]


def test_reminders_are_real_time_before_the_start_even_across_a_clock_change() -> None:
    meeting = series()
    (occurrence,) = meeting.schedule.next_occurrences(datetime(2026, 3, 1, tzinfo=UTC), 1)
    jobs = plan_series(meeting, occurrence, set(), datetime(2026, 1, 1, tzinfo=UTC))
    runs = {job.lead: job.run_at.astimezone(UTC) for job in jobs if job.kind is JobKind.REMINDER}
    start = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 02:30 BST
    assert runs == {lead: start - lead for lead in meeting.reminders}
    assert [job.run_at.astimezone(UTC) for job in jobs if job.kind is JobKind.START] == [start]


def test_decided_reminders_and_those_due_before_the_bot_first_ran_are_not_planned() -> None:
    meeting = series()
    (occurrence,) = meeting.schedule.next_occurrences(datetime(2026, 3, 1, tzinfo=UTC), 1)
    owed_since = datetime(2026, 3, 28, 12, tzinfo=UTC)  # after the 1d reminder fell due
    jobs = plan_series(meeting, occurrence, {600}, owed_since)
    assert [job.lead for job in jobs if job.kind is JobKind.REMINDER] == [timedelta(hours=1)]


def test_job_ids_are_the_same_however_often_the_plan_is_made() -> None:
    meeting = series()
    (occurrence,) = meeting.schedule.next_occurrences(datetime(2026, 3, 1, tzinfo=UTC), 1)
    owed = datetime(2026, 1, 1, tzinfo=UTC)
    first = [job.id for job in plan_series(meeting, occurrence, set(), owed)]
    assert first == [job.id for job in plan_series(meeting, occurrence, set(), owed)]
    assert len(set(first)) == len(first) == 4
