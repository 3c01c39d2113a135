"""Time maths: durations, when a meeting happens (across daylight saving), and reminders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from chatbot.recurrence import (
    ReminderDecision,
    Schedule,
    decide_reminder,
    format_duration,
    localize,
    parse_duration,
    parse_rule,
    remembered_rule,
)

LONDON = ZoneInfo("Europe/London")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
HOUR = timedelta(hours=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def utc_starts(schedule: Schedule, now: datetime, count: int) -> list[str]:
    """The next starts as `YYYY-MM-DD HH:MM` in UTC, the easiest form to read in a table."""
    return [f"{o.start.astimezone(UTC):%Y-%m-%d %H:%M}"
            for o in schedule.next_occurrences(now, count)]


def local_starts(schedule: Schedule, now: datetime, count: int) -> list[str]:
    return [f"{o.start:%Y-%m-%d %H:%M %Z}" for o in schedule.next_occurrences(now, count)]


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "duration", "canonical"),
    [
        pytest.param("45s", timedelta(seconds=45), "45s", id="45s"),
        pytest.param("10m", timedelta(minutes=10), "10m", id="10m"),
        pytest.param("1h", timedelta(hours=1), "1h", id="1h"),
        pytest.param("1h30m", timedelta(hours=1, minutes=30), "1h30m", id="1h30m"),
        pytest.param("7d", timedelta(days=7), "7d", id="7d"),
        pytest.param("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4), "1d2h3m4s",
                     id="every unit"),
        pytest.param("0s", timedelta(0), "0s", id="zero"),
        pytest.param("90m", timedelta(minutes=90), "1h30m", id="90m normalises to 1h30m"),
        pytest.param("36h", timedelta(hours=36), "1d12h", id="36h normalises to 1d12h"),
        pytest.param("1H30M", timedelta(hours=1, minutes=30), "1h30m", id="upper case units"),
        pytest.param("  10m ", timedelta(minutes=10), "10m", id="surrounding spaces"),
    ],
)
def test_parse_and_format_duration(text: str, duration: timedelta, canonical: str) -> None:
    assert parse_duration(text) == duration
    assert format_duration(duration) == canonical
    assert parse_duration(format_duration(duration)) == duration


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("1x", id="unknown unit"),
        pytest.param("m", id="unit without a number"),
        pytest.param("10", id="number without a unit"),
        pytest.param("-1h", id="negative"),
        pytest.param("10 m", id="space inside"),
        pytest.param("1.5h", id="fraction"),
        pytest.param("30m1h", id="units out of order"),
        pytest.param("1h1h", id="unit repeated"),
    ],
)
def test_a_malformed_duration_is_refused_with_examples(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected a duration such as 45s, 10m, 1h30m or 7d"):
        parse_duration(text)


def test_format_duration_drops_fractions_of_a_second() -> None:
    assert format_duration(timedelta(minutes=1, seconds=0.9)) == "1m"


# --- rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param("FREQ=MONTHLY;BYDAY=+3TH", id="plain rule"),
        pytest.param("RRULE:FREQ=MONTHLY;BYDAY=+3TH", id="with the RRULE: label"),
        pytest.param("  rrule:FREQ=MONTHLY;BYDAY=+3TH  ", id="label in lower case, padded"),
    ],
)
def test_parse_rule_accepts_one_rule(rule: str) -> None:
    first = datetime(2021, 6, 17, 9, 0)
    assert list(parse_rule(rule, first).xafter(first, count=2, inc=True)) == [
        first, datetime(2021, 7, 15, 9, 0)]


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param("FREQ=WEEKLY\nFREQ=DAILY", id="two rules"),
        pytest.param("DTSTART:20210617T090000\nRRULE:FREQ=WEEKLY", id="a whole iCalendar block"),
        pytest.param("EXDATE:20210617T090000", id="another property"),
        pytest.param("FREQ=SOMETIMES", id="unknown frequency"),
        pytest.param("FREQ=WEEKLY;FOO=1", id="unknown part"),
    ],
)
def test_parse_rule_refuses_anything_but_one_rrule(rule: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(rule, datetime(2021, 6, 17, 9, 0))


# --- occurrences --------------------------------------------------------------------------------


def test_monthly_on_the_third_thursday() -> None:
    schedule = Schedule(datetime(2021, 6, 17, 9, 0), LONDON, "FREQ=MONTHLY;BYDAY=+3TH", HOUR)
    assert local_starts(schedule, utc(2021, 7, 1), 5) == [
        "2021-07-15 09:00 BST",
        "2021-08-19 09:00 BST",
        "2021-09-16 09:00 BST",
        "2021-10-21 09:00 BST",
        "2021-11-18 09:00 GMT",
    ]


def test_the_first_occurrence_counts_from_the_rule_start() -> None:
    schedule = Schedule(datetime(2021, 6, 17, 9, 0), LONDON, "FREQ=MONTHLY;BYDAY=+3TH", HOUR)
    assert local_starts(schedule, utc(2020, 1, 1), 2) == [
        "2021-06-17 09:00 BST", "2021-07-15 09:00 BST",
    ]


@pytest.mark.parametrize(
    ("now", "first"),
    [
        pytest.param(utc(2021, 7, 15, 7, 59), "2021-07-15 08:00", id="just before the start"),
        pytest.param(utc(2021, 7, 15, 8, 30), "2021-07-15 08:00", id="in progress"),
        pytest.param(utc(2021, 7, 15, 8, 59, 59), "2021-07-15 08:00", id="last second"),
        pytest.param(utc(2021, 7, 15, 9, 0), "2021-08-19 08:00", id="at its end it is over"),
    ],
)
def test_an_occurrence_is_next_until_it_has_ended(now: datetime, first: str) -> None:
    schedule = Schedule(datetime(2021, 6, 17, 9, 0), LONDON, "FREQ=MONTHLY;BYDAY=+3TH", HOUR)
    assert utc_starts(schedule, now, 1) == [first]


def test_occurrences_carry_the_meeting_zone_and_length() -> None:
    schedule = Schedule(datetime(2021, 6, 17, 9, 0), LONDON, "FREQ=MONTHLY;BYDAY=+3TH",
                        timedelta(minutes=45))
    (occurrence,) = schedule.next_occurrences(utc(2021, 7, 1), 1)
    assert occurrence.start.tzinfo is LONDON
    assert occurrence.end - occurrence.start == timedelta(minutes=45)


@pytest.mark.parametrize(
    ("zone", "first", "now", "expected_utc"),
    [
        pytest.param(LONDON, datetime(2026, 1, 1, 9, 0), utc(2026, 3, 18),
                     ["2026-03-19 09:00", "2026-03-26 09:00", "2026-04-02 08:00"],
                     id="London spring forward 29 Mar 2026"),
        pytest.param(LONDON, datetime(2026, 1, 1, 9, 0), utc(2026, 10, 20),
                     ["2026-10-22 08:00", "2026-10-29 09:00", "2026-11-05 09:00"],
                     id="London fall back 25 Oct 2026"),
        pytest.param(LOS_ANGELES, datetime(2026, 1, 1, 9, 0), utc(2026, 10, 20),
                     ["2026-10-22 16:00", "2026-10-29 16:00", "2026-11-05 17:00"],
                     id="Los Angeles fall back 1 Nov 2026"),
        pytest.param(LOS_ANGELES, datetime(2026, 1, 1, 9, 0), utc(2027, 3, 1),
                     ["2027-03-04 17:00", "2027-03-11 17:00", "2027-03-18 16:00"],
                     id="Los Angeles spring forward 14 Mar 2027"),
    ],
)
def test_a_weekly_meeting_keeps_its_local_time_across_daylight_saving(
    zone: ZoneInfo, first: datetime, now: datetime, expected_utc: list[str]
) -> None:
    schedule = Schedule(first, zone, "FREQ=WEEKLY;BYDAY=TH", HOUR)
    occurrences = schedule.next_occurrences(now, 3)
    assert [f"{o.start:%H:%M}" for o in occurrences] == ["09:00"] * 3
    assert utc_starts(schedule, now, 3) == expected_utc


def test_a_start_skipped_by_spring_forward_moves_to_the_real_instant() -> None:
    # Los Angeles jumps from 02:00 PST to 03:00 PDT on 8 March 2026: 02:30 never happens.
    schedule = Schedule(datetime(2026, 3, 1, 2, 30), LOS_ANGELES, "FREQ=WEEKLY", HOUR)
    occurrences = schedule.next_occurrences(utc(2026, 3, 2), 2)
    assert [f"{o.start:%Y-%m-%d %H:%M %Z}" for o in occurrences] == [
        "2026-03-08 03:30 PDT", "2026-03-15 02:30 PDT",
    ]
    assert occurrences[0].start.astimezone(UTC) == utc(2026, 3, 8, 10, 30)
    assert occurrences[0].start.utcoffset() == timedelta(hours=-7)


def test_an_ambiguous_start_on_fall_back_day_is_the_first_of_the_two() -> None:
    # 01:30 happens twice on 1 November 2026 in Los Angeles; the earlier (PDT) one is meant.
    schedule = Schedule(datetime(2026, 11, 1, 1, 30), LOS_ANGELES, None, HOUR)
    (occurrence,) = schedule.next_occurrences(utc(2026, 10, 1), 3)
    assert occurrence.start.astimezone(UTC) == utc(2026, 11, 1, 8, 30)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(datetime(2026, 3, 29, 0, 30), id="London spring forward"),
        pytest.param(datetime(2026, 10, 25, 0, 30), id="London fall back"),
    ],
)
def test_a_meeting_across_a_clock_change_lasts_its_duration(first: datetime) -> None:
    schedule = Schedule(first, LONDON, None, timedelta(minutes=90))
    (occurrence,) = schedule.next_occurrences(utc(2026, 1, 1), 1)
    assert occurrence.end.astimezone(UTC) - occurrence.start.astimezone(UTC) == timedelta(
        minutes=90)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(utc(2021, 6, 1), ["2021-06-17 08:00"], id="before it"),
        pytest.param(utc(2021, 6, 17, 8, 30), ["2021-06-17 08:00"], id="while it runs"),
        pytest.param(utc(2021, 6, 17, 9, 0), [], id="once it has ended"),
        pytest.param(utc(2022, 1, 1), [], id="long after"),
    ],
)
def test_a_single_meeting_without_a_rule(now: datetime, expected: list[str]) -> None:
    schedule = Schedule(datetime(2021, 6, 17, 9, 0), LONDON, None, HOUR)
    assert utc_starts(schedule, now, 3) == expected


@pytest.mark.parametrize(
    ("rule", "now", "expected"),
    [
        pytest.param("FREQ=WEEKLY;COUNT=3", utc(2026, 1, 1),
                     ["2026-03-05 09:00", "2026-03-12 09:00", "2026-03-19 09:00"],
                     id="COUNT=3 from the start"),
        pytest.param("FREQ=WEEKLY;COUNT=3", utc(2026, 3, 13),
                     ["2026-03-19 09:00"], id="COUNT=3 counts from the first, not from now"),
        pytest.param("FREQ=WEEKLY;COUNT=3", utc(2026, 3, 19, 10), [], id="COUNT=3 used up"),
        pytest.param("FREQ=WEEKLY;UNTIL=20260319T090000", utc(2026, 1, 1),
                     ["2026-03-05 09:00", "2026-03-12 09:00", "2026-03-19 09:00"],
                     id="UNTIL local time is inclusive"),
        pytest.param("FREQ=WEEKLY;UNTIL=20260318", utc(2026, 1, 1),
                     ["2026-03-05 09:00", "2026-03-12 09:00"], id="UNTIL a date"),
        pytest.param("FREQ=WEEKLY;UNTIL=20260318", utc(2026, 3, 13), [], id="UNTIL passed"),
    ],
)
def test_a_rule_that_ends(rule: str, now: datetime, expected: list[str]) -> None:
    schedule = Schedule(datetime(2026, 3, 5, 9, 0), LONDON, rule, HOUR)
    assert utc_starts(schedule, now, 10) == expected


def test_a_rule_with_until_in_utc_ends() -> None:
    schedule = Schedule(datetime(2026, 3, 5, 9, 0), LONDON, "FREQ=WEEKLY;UNTIL=20260319T090000Z",
                        HOUR)
    assert utc_starts(schedule, utc(2026, 1, 1), 10) == [
        "2026-03-05 09:00", "2026-03-12 09:00", "2026-03-19 09:00",
    ]


# --- reminders ---------------------------------------------------------------------------------

START = utc(2026, 6, 18, 9, 0)
LEADS = (timedelta(days=1), HOUR, timedelta(minutes=10))


@pytest.mark.parametrize(
    ("lead", "now", "started", "decision"),
    [
        pytest.param(HOUR, START - timedelta(hours=2), False, ReminderDecision.NOT_YET,
                     id="1h lead, 2h before: not yet due"),
        pytest.param(HOUR, START - HOUR - timedelta(seconds=1), False, ReminderDecision.NOT_YET,
                     id="1h lead, a second early: not yet due"),
        pytest.param(HOUR, START - HOUR, False, ReminderDecision.SEND,
                     id="1h lead, exactly due: send"),
        pytest.param(HOUR, START - timedelta(minutes=30), False, ReminderDecision.SEND,
                     id="1h lead, late but before the 10m one: send"),
        pytest.param(timedelta(days=1), START - timedelta(hours=20), False,
                     ReminderDecision.SEND, id="1d lead, late but nothing shorter due: send"),
        pytest.param(timedelta(days=1), START - timedelta(minutes=30), False,
                     ReminderDecision.SKIP_SUPERSEDED, id="1d lead, the 1h one is due: superseded"),
        pytest.param(HOUR, START - timedelta(minutes=5), False, ReminderDecision.SKIP_SUPERSEDED,
                     id="1h lead, the 10m one is due: superseded"),
        pytest.param(timedelta(minutes=10), START - timedelta(minutes=5), False,
                     ReminderDecision.SEND, id="shortest lead is never superseded"),
        pytest.param(HOUR, START - timedelta(minutes=30), True, ReminderDecision.SKIP_STARTED,
                     id="meeting opened early: skip"),
        pytest.param(HOUR, START, False, ReminderDecision.SKIP_STARTED,
                     id="at the start time: skip"),
        pytest.param(HOUR, START + HOUR, False, ReminderDecision.SKIP_STARTED,
                     id="start passed: skip"),
        pytest.param(HOUR, START - timedelta(hours=2), True, ReminderDecision.NOT_YET,
                     id="not yet due wins over started"),
    ],
)
def test_decide_reminder(
    lead: timedelta, now: datetime, started: bool, decision: ReminderDecision
) -> None:
    assert decide_reminder(START, lead, LEADS, now, started=started) is decision


def test_decide_reminder_is_the_same_whatever_zone_the_start_is_in() -> None:
    start = START.astimezone(LOS_ANGELES)
    now = START - timedelta(minutes=30)
    assert decide_reminder(start, HOUR, LEADS, now, started=False) is ReminderDecision.SEND


def test_a_reminder_before_a_meeting_just_after_spring_forward_is_sent() -> None:
    # London jumps from 01:00 GMT to 02:00 BST on 29 March 2026; 02:30 BST is 01:30 UTC.
    (occurrence,) = Schedule(datetime(2026, 3, 29, 2, 30), LONDON, None, HOUR).next_occurrences(
        utc(2026, 3, 1), 1)
    assert occurrence.start.astimezone(UTC) == utc(2026, 3, 29, 1, 30)
    now = utc(2026, 3, 29, 0, 45)  # 45 minutes before the meeting, 15 after the 1h lead
    assert decide_reminder(occurrence.start, HOUR, (HOUR,), now,
                           started=False) is ReminderDecision.SEND


def test_a_bare_date_until_includes_that_day() -> None:
    schedule = Schedule(datetime(2026, 3, 5, 9, 0), LONDON, "FREQ=WEEKLY;UNTIL=20260319", HOUR)
    assert utc_starts(schedule, utc(2026, 1, 1), 10) == [
        "2026-03-05 09:00", "2026-03-12 09:00", "2026-03-19 09:00",
    ]


@pytest.mark.parametrize("rule", ["FREQ=DAILY", "FREQ=WEEKLY;INTERVAL=2",
                                  "FREQ=MONTHLY;BYDAY=2TU", "FREQ=WEEKLY;COUNT=400",
                                  "FREQ=WEEKLY;UNTIL=20261231T170000Z"])
def test_the_remembered_rule_finds_what_a_fresh_one_finds(rule: str) -> None:
    # A meeting begun years ago: its rule is parsed once and keeps the starts it found,
    # asked about times out of order, as the planner and commands ask.
    zone, first = ZoneInfo("America/New_York"), datetime(2019, 3, 5, 12, 0)
    schedule = Schedule(first, zone, rule, HOUR)
    assert remembered_rule(rule, first, zone) is remembered_rule(rule, first, zone)
    every_start = [localize(start, zone) for start in parse_rule(rule, first, zone).between(
        first, first + timedelta(days=3000), inc=True)]
    for days in (2500, 10, 2000, 2550, 0, 2700, 2800):
        after = utc(2019, 3, 1, 7) + timedelta(days=days)
        expected = [start for start in every_start if start + HOUR > after][:2]
        assert [o.start for o in islice(schedule.occurrences(ending_after=after), 2)] == (
            expected), f"after {after}"
