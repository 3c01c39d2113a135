"""The iCalendar file: what calendars read back, and chat text that cannot break it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrulestr
from icalendar import Calendar, Event, vRecur

from chatbot.calendar import build_calendar
from chatbot.config import MeetingConfig, parse_config
from chatbot.model import Entry, EntryKind, EventId, UserId

LONDON = ZoneInfo("Europe/London")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def series(**changes: Any) -> MeetingConfig:
    meeting: dict[str, Any] = {
        "id": "team",
        "title": "Example Team Meeting",
        "room": "#team:example.org",
        "timezone": "Europe/London",
        "start": "2021-06-17 09:00",
        "rrule": "FREQ=MONTHLY;BYDAY=+3TH",
        "duration": "1h30m",
        "links": {
            "notes": "https://notes.example.org/team",
            "issue": "https://github.com/example/team/issues/12",
            "calendar": "https://example.org/calendar",
            "code_of_conduct": "https://example.org/conduct",
        },
    }
    meeting.update(changes)
    return parse_config({
        "matrix": {"homeserver": "https://matrix.example.org", "user_id": "@bot:example.org",
                   "password": "secret"},
        "meetings": [meeting],
    }).meetings[0]


def item(sender_name: str, text: str, minutes: int | None = None) -> Entry:
    return Entry(EntryKind.AGENDA, UserId("@someone:example.org"), sender_name, text, minutes,
                 EventId(f"${sender_name}:{text}"), NOW)


def build(
    *meetings: tuple[MeetingConfig, Sequence[Entry]], prefix: str = "!"
) -> tuple[bytes, Calendar]:
    data = build_calendar(meetings, now=NOW, prefix=prefix)
    return data, Calendar.from_ical(data)


def only_event(calendar: Calendar) -> Event:
    (event,) = calendar.walk("VEVENT")
    assert isinstance(event, Event)
    return event


def rule_text(event: Event) -> str:
    rule = event["RRULE"]
    assert isinstance(rule, vRecur)
    return str(rule.to_ical().decode())


def unfolded_lines(data: bytes) -> list[str]:
    return data.decode().replace("\r\n ", "").split("\r\n")


# --- the calendar and its event --------------------------------------------------------------


def test_one_meeting_is_one_named_calendar_with_one_event() -> None:
    data, calendar = build((series(), []))
    assert data.startswith(b"BEGIN:VCALENDAR\r\n") and data.endswith(b"END:VCALENDAR\r\n")
    assert calendar["VERSION"] == "2.0"
    assert str(calendar["PRODID"]).startswith("-//chatbot//")
    assert calendar["X-WR-CALNAME"] == "Example Team Meeting"
    # Subscribers fetch it again hourly, so the agenda they see stays current.
    assert "REFRESH-INTERVAL;VALUE=DURATION:PT1H" in unfolded_lines(data)
    assert "X-PUBLISHED-TTL:PT1H" in unfolded_lines(data)
    event = only_event(calendar)
    assert event["UID"] == "team@chatbot"
    assert event["SUMMARY"] == "Example Team Meeting"
    assert event["URL"] == "https://notes.example.org/team"
    assert event.decoded("DTSTAMP") == NOW


def test_several_meetings_share_one_unnamed_calendar() -> None:
    other = series(id="docs", title="Docs Meeting", timezone="America/New_York", rrule=None)
    _, calendar = build((series(), []), (other, []))
    assert "X-WR-CALNAME" not in calendar
    assert [str(e["UID"]) for e in calendar.walk("VEVENT")] == ["team@chatbot", "docs@chatbot"]
    assert {str(tz["TZID"]) for tz in calendar.walk("VTIMEZONE")} == {
        "Europe/London", "America/New_York",
    }


def test_dtstart_is_the_configured_local_time_in_the_meetings_zone() -> None:
    data, calendar = build((series(), []))
    assert "DTSTART;TZID=Europe/London:20210617T090000" in unfolded_lines(data)
    event = only_event(calendar)
    assert event.decoded("DTSTART") == datetime(2021, 6, 17, 9, 0, tzinfo=LONDON)
    assert event.decoded("DTEND") - event.decoded("DTSTART") == timedelta(hours=1, minutes=30)


def test_the_zone_is_described_by_a_vtimezone_with_its_summer_and_winter_offsets() -> None:
    data, calendar = build((series(), []))
    (zone,) = calendar.walk("VTIMEZONE")
    assert zone["TZID"] == "Europe/London"
    assert calendar.get_missing_tzids() == set()
    offsets = {(c.name, c.decoded("TZOFFSETTO")) for c in zone.subcomponents}
    assert ("STANDARD", timedelta(0)) in offsets
    assert ("DAYLIGHT", timedelta(hours=1)) in offsets
    # Transitions are listed until well after now, so the coming years' meetings are right.
    zone_text = data.decode().replace("\r\n ", "").split("END:VTIMEZONE")[0]
    assert "20311026T020000" in zone_text  # the end of summer time 2031


def test_a_meeting_far_ahead_still_has_its_zone_transitions() -> None:
    data, _ = build((series(start="2060-06-17 09:00", rrule=None), []))
    zone_text = data.decode().replace("\r\n ", "").split("END:VTIMEZONE")[0]
    assert "20601031T020000" in zone_text  # the end of summer time 2060


def test_a_utc_meeting_uses_utc_times_and_needs_no_vtimezone() -> None:
    data, calendar = build((series(timezone="UTC"), []))
    assert "DTSTART:20210617T090000Z" in unfolded_lines(data)
    assert calendar.walk("VTIMEZONE") == []
    assert calendar.get_missing_tzids() == set()


def test_the_url_is_left_out_without_a_notes_link() -> None:
    _, calendar = build((series(links={}), []))
    assert "URL" not in only_event(calendar)


# --- the recurrence ----------------------------------------------------------------------------


def test_the_rule_round_trips() -> None:
    _, calendar = build((series(), []))
    assert rule_text(only_event(calendar)) == "FREQ=MONTHLY;BYDAY=+3TH"


def test_a_single_meeting_has_no_rule() -> None:
    _, calendar = build((series(rrule=None), []))
    assert "RRULE" not in only_event(calendar)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("FREQ=MONTHLY;BYDAY=+3TH", "FREQ=MONTHLY;BYDAY=+3TH"),
        ("rrule:freq=weekly;interval=2;byday=tu,th", "FREQ=WEEKLY;INTERVAL=2;BYDAY=TU,TH"),
        ("FREQ=WEEKLY;COUNT=5", "FREQ=WEEKLY;COUNT=5"),
        # Local time without Z, as the bot reads it: 09:00 BST is 08:00 UTC.
        ("FREQ=WEEKLY;UNTIL=20210708T090000", "FREQ=WEEKLY;UNTIL=20210708T080000Z"),
        ("FREQ=WEEKLY;UNTIL=20210708T080000Z", "FREQ=WEEKLY;UNTIL=20210708T080000Z"),
        # A bare date is its local midnight to the bot, so that day is not included.
        ("FREQ=DAILY;UNTIL=20210620", "FREQ=DAILY;UNTIL=20210620T225959Z"),
        ("FREQ=MONTHLY;BYDAY=+3TH;UNTIL=20230101",
         "FREQ=MONTHLY;UNTIL=20230101T235959Z;BYDAY=+3TH"),
    ],
)
def test_the_rule_in_the_file_gives_the_meetings_the_bot_holds(rule: str, expected: str) -> None:
    meeting = series(rrule=rule)
    _, calendar = build((meeting, []))
    event = only_event(calendar)
    written = rule_text(event)
    assert written == expected
    # What a calendar expands from DTSTART and RRULE (dateutil refuses a local UNTIL
    # with a zoned DTSTART, as RFC 5545 does) matches the bot's own schedule.
    from_file = list(islice(rrulestr(written, dtstart=event.decoded("DTSTART")), 40))
    from_bot = [o.start for o in meeting.schedule.next_occurrences(
        datetime(2021, 1, 1, tzinfo=UTC), 40)]
    assert from_file == from_bot


# --- the description ----------------------------------------------------------------------------


def test_the_description_has_the_labelled_links_and_the_numbered_agenda() -> None:
    agenda = [item("Grace Hopper", "Release planning", 10), item("Ada Lovelace", "Parser")]
    _, calendar = build((series(), agenda))
    assert only_event(calendar)["DESCRIPTION"] == "\n".join([
        "Notes: https://notes.example.org/team",
        "GitHub issue: https://github.com/example/team/issues/12",
        "Calendar for future meetings: https://example.org/calendar",
        "Code of Conduct: https://example.org/conduct",
        "",
        "Agenda:",
        "1. Grace Hopper (10 min) Release planning",
        "2. Ada Lovelace: Parser",
    ])


def test_an_empty_agenda_says_how_to_add_an_item_with_the_configured_prefix() -> None:
    _, calendar = build((series(links={}), []), prefix="?")
    assert only_event(calendar)["DESCRIPTION"] == (
        "Agenda: nothing yet; add items in the chat room with ?agenda (10 min) topic"
    )


HOSTILE = [
    "evil\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:pwned",
    "line\nATTENDEE:mailto:victim@example.org",
    "semi;colon,comma\\backslash\\n\\;",
    "carriage\rreturn\x00nul\u202eoverride",
    ":DESCRIPTION:x\r\n SUMMARY:folded",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_agenda_text_cannot_add_events_or_properties(text: str) -> None:
    data, calendar = build((series(), [item(text, text, 5)]))
    lines = unfolded_lines(data)
    assert lines.count("END:VEVENT") == 1
    assert lines.count("BEGIN:VEVENT") == 1
    names = [line.split(":")[0].split(";")[0] for line in lines if line]
    assert "ATTENDEE" not in names and names.count("UID") == 1 and names.count("SUMMARY") == 1
    event = only_event(calendar)
    assert event["UID"] == "team@chatbot"
    assert event["SUMMARY"] == "Example Team Meeting"
    # The item stays on its one line of the description, with its text intact but for
    # line breaks (now spaces) and control and direction-override characters (dropped).
    last = str(event["DESCRIPTION"]).split("\n")[-1]
    flat = " ".join(text.replace("\x00", "").replace("\u202e", "").split())
    assert last == f"1. {flat} (5 min) {flat}"


def test_special_characters_survive_in_the_title() -> None:
    title = "Team; meeting, with \\ backslash"
    _, calendar = build((series(title=title), []))
    assert only_event(calendar)["SUMMARY"] == title
    assert calendar["X-WR-CALNAME"] == title
