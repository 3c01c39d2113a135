"""The meetings as an iCalendar file: recurrence, time zone, title, links and next agenda.

Pure: configuration and agenda entries in, bytes out. The `icalendar` library does the
RFC 5545 escaping and line folding, so chat text in DESCRIPTION stays one property
value whatever it contains.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

from icalendar import Calendar, Event, vDuration, vRecur

from chatbot import __version__
from chatbot.config import MeetingConfig
from chatbot.model import Entry
from chatbot.recurrence import elapsed, localize
from chatbot.render import clean_text

PRODID = f"-//chatbot//Matrix meeting bot {__version__}//EN"
# How often subscribed calendars should fetch again, so the agenda stays current.
REFRESH = timedelta(hours=1)
# The VTIMEZONE carries transitions from the first meeting until this many years ahead.
ZONE_YEARS_AHEAD = 15

LINK_LABELS = (
    ("notes", "Notes"),
    ("issue", "GitHub issue"),
    ("calendar", "Calendar for future meetings"),
    ("code_of_conduct", "Code of Conduct"),
)


def build_calendar(
    meetings: Sequence[tuple[MeetingConfig, Sequence[Entry]]],
    *,
    now: datetime,
    prefix: str,
) -> bytes:
    """One VCALENDAR with a VEVENT per meeting series and a VTIMEZONE per zone (but UTC).

    Each pair is a series and the agenda of its next (or current) meeting; `prefix` is
    the configured command prefix, for the line that says how to add an item.
    """
    calendar = Calendar()
    calendar.add("PRODID", PRODID)
    calendar.add("VERSION", "2.0")
    calendar.add("CALSCALE", "GREGORIAN")
    if len(meetings) == 1:
        calendar.add("X-WR-CALNAME", meetings[0][0].title)
    calendar.add("REFRESH-INTERVAL", REFRESH, parameters={"VALUE": "DURATION"})
    calendar.add("X-PUBLISHED-TTL", vDuration(REFRESH))  # the same, for Outlook and Apple
    for series, agenda in meetings:
        calendar.add_component(_event(series, agenda, now=now, prefix=prefix))
    if meetings:
        starts = [series.start for series, _ in meetings]
        first = min(starts).date() - timedelta(days=1)
        last = date(max(now.year, *(start.year for start in starts)) + ZONE_YEARS_AHEAD, 1, 1)
        calendar.add_missing_timezones(first_date=first, last_date=last)
    return calendar.to_ical()


def _event(series: MeetingConfig, agenda: Sequence[Entry], *, now: datetime, prefix: str) -> Event:
    # DTSTART is the configured wall-clock time in the meeting's zone; DTEND is the
    # duration in real elapsed time, which RFC 5545 applies to every recurrence, as
    # the bot does.
    start = series.start.replace(tzinfo=series.timezone)
    end = elapsed(localize(series.start, series.timezone), series.duration)
    event = Event()
    event.add("UID", f"{series.id}@chatbot")
    event.add("DTSTAMP", now.astimezone(UTC))
    event.add("DTSTART", start)
    event.add("DTEND", end.astimezone(series.timezone))
    if series.rrule is not None:
        event.add("RRULE", recurrence_rule(series))
    event.add("SUMMARY", series.title)
    if series.links.notes:
        event.add("URL", series.links.notes)
    event.add("DESCRIPTION", describe(series, agenda, prefix=prefix))
    return event


def recurrence_rule(series: MeetingConfig) -> vRecur:
    """The configured RRULE as a structured value, with UNTIL as the UTC instant it means.

    The bot reads an UNTIL without `Z` (or a bare date, as its midnight) as the
    meeting's local time; RFC 5545 wants UTC when DTSTART has a zone, so it is converted
    here and both agree on the last meeting.
    """
    assert series.rrule is not None
    text = series.rrule.strip().upper().removeprefix("RRULE:")
    rule = vRecur.from_ical(text)
    if "UNTIL" in rule:
        rule["UNTIL"] = [_utc_until(until, series) for until in rule["UNTIL"]]
    return rule


def _utc_until(until: date | datetime, series: MeetingConfig) -> datetime:
    if isinstance(until, datetime):
        if until.tzinfo is not None:
            return until.astimezone(UTC)
        return localize(until, series.timezone).astimezone(UTC)
    # A bare date includes that day, as recurrence.parse_rule reads it.
    return localize(datetime.combine(until, time(23, 59, 59)), series.timezone).astimezone(UTC)


def describe(series: MeetingConfig, agenda: Sequence[Entry], *, prefix: str) -> str:
    """DESCRIPTION as plain text: the labelled links, then the next meeting's agenda."""
    links = series.links.by_name()
    lines = [f"{label}: {links[key]}" for key, label in LINK_LABELS if links.get(key)]
    if lines:
        lines.append("")
    if not agenda:
        lines.append(
            f"Agenda: nothing yet; add items in the chat room with {prefix}agenda (10 min) topic"
        )
    else:
        lines.append("Agenda:")
        lines += [f"{number}. {_agenda_line(item)}" for number, item in enumerate(agenda, 1)]
    return "\n".join(lines)


def _agenda_line(item: Entry) -> str:
    estimate = f" ({item.minutes} min)" if item.minutes is not None else ":"
    return f"{_one_line(item.sender_name)}{estimate} {_one_line(item.text)}"


def _one_line(text: str) -> str:
    """Chat text as one plain line: control characters dropped, line breaks as spaces."""
    return " ".join(clean_text(text).split())
