"""The meeting note and the room messages, as markdown, and how untrusted chat text is made safe."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from chatbot.model import (
    Attendee,
    Entry,
    EntryKind,
    EventId,
    Meeting,
    MeetingRecord,
    PassReason,
    Profile,
    RoomId,
    UserId,
)
from chatbot.publish.notes_page import page_regions
from chatbot.render import (
    escape_markdown,
    format_clock,
    format_date,
    format_span,
    format_time,
    markdown_to_html,
    render_agenda,
    render_note,
    time_zone_link,
)
from tests.unit.note_shape import check_html

GOLDEN = Path(__file__).parent.parent / "golden"
LONDON = ZoneInfo("Europe/London")
HELD_AT = datetime(2021, 6, 17, 8, 0, tzinfo=UTC)
LINKS: dict[str, str | None] = {
    "notes": "https://notes.example.org/team",
    "issue": "https://github.com/example/team/issues/12",
    "calendar": "https://example.org/calendar",
    "code_of_conduct": "https://example.org/conduct",
}
SECTIONS = ["Roll call", "Quick updates", "Reports and celebrations", "Agenda items"]
ADA = UserId("@ada:example.org")
GRACE = UserId("@grace:example.org")


def meeting(title: str = "Example Team Meeting") -> Meeting:
    return Meeting(id=1, series_id="team", room_id=RoomId("!room:example.org"), title=title,
                   scheduled_start=HELD_AT, started_at=HELD_AT,
                   ended_at=HELD_AT + timedelta(hours=1), closes_at=None)


def entry(kind: EntryKind, sender: UserId, name: str, text: str = "",
          minutes: int | None = None) -> Entry:
    entry.count += 1  # type: ignore[attr-defined]
    return Entry(kind=kind, sender=sender, sender_name=name, text=text, minutes=minutes,
                 event_id=EventId(f"$event{entry.count}"),  # type: ignore[attr-defined]
                 created_at=HELD_AT)


entry.count = 0  # type: ignore[attr-defined]


# --- the note, against golden files --------------------------------------------------------------


def test_the_note_matches_the_golden_example() -> None:
    record = MeetingRecord(
        meeting=meeting(),
        attendees=(
            Attendee(ADA, Profile("Ada Lovelace", "Analytical Engines", "@ada")),
            Attendee(GRACE, Profile("Grace Hopper", "US Navy", "@grace")),
        ),
        entries=(
            entry(EntryKind.UPDATE, ADA, "Ada Lovelace", "shipped the new parser"),
            entry(EntryKind.PASS, GRACE, "Grace Hopper"),
            entry(EntryKind.CELEBRATION, ADA, "Ada Lovelace", "Release 2.0 is out!"),
            entry(EntryKind.AGENDA, GRACE, "Grace Hopper", "Release planning", 10),
        ),
    )
    note = render_note(record, LONDON, LINKS)
    assert note == (GOLDEN / "note_example.md").read_text(encoding="utf-8")


def test_an_empty_note_has_placeholders_and_no_link_lines() -> None:
    note = render_note(MeetingRecord(meeting(), (), ()), LONDON, {})
    assert note == (GOLDEN / "note_empty.md").read_text(encoding="utf-8")


def test_entries_land_in_their_section_in_the_order_they_were_made() -> None:
    record = MeetingRecord(meeting(), (), (
        entry(EntryKind.AGENDA, ADA, "Ada", "first item"),
        entry(EntryKind.UPDATE, GRACE, "Grace", "grace's update"),
        entry(EntryKind.PASS, ADA, "Ada"),
        entry(EntryKind.AGENDA, GRACE, "Grace", "second item", 5),
    ))
    note = render_note(record, LONDON, {})
    updates = note.split("## Quick updates\n\n")[1].split("\n\n")[0]
    agenda = note.split("## Agenda items\n\n")[1]
    assert updates.splitlines() == ["- **Grace:** grace's update", "- **Ada:** pass"]
    assert agenda.splitlines() == ["- **Ada** first item", "- **Grace** (5 min) second item"]


def test_quick_updates_follow_the_roll_call_then_latecomers_in_the_order_they_came() -> None:
    # Updates come in any order; the note lists them as the roll call does (issue 13),
    # whatever they were: typed, a pass, spoke on the call, timed out, posted ahead.
    lin, min_, yuvi, zoe = (UserId(f"@{name}:example.org") for name in ("lin", "min", "yuvi",
                                                                          "zoe"))
    record = MeetingRecord(meeting(), (
        Attendee(GRACE, Profile("Grace")), Attendee(ADA, Profile("Ada")),
        Attendee(lin, Profile("Lin")), Attendee(min_, Profile("Min")),
        Attendee(yuvi, Profile("Yuvi")),
    ), (
        entry(EntryKind.UPDATE, zoe, "Zoe", "not on the roll call"),
        replace(entry(EntryKind.UPDATE, yuvi, "Yuvi", "early bird"),
                created_at=HELD_AT - timedelta(days=1)),
        entry(EntryKind.UPDATE, ADA, "Ada", "first of two"),
        replace(entry(EntryKind.PASS, min_, "Min"), pass_reason=PassReason.TIME_UP),
        entry(EntryKind.CELEBRATION, lin, "Lin", "not an update"),
        entry(EntryKind.PASS, GRACE, "Grace"),
        entry(EntryKind.UPDATE, ADA, "Ada", "second of two"),
        entry(EntryKind.UPDATE, UserId("@bo:example.org"), "Bo", "also not on it"),
        replace(entry(EntryKind.PASS, lin, "Lin"), pass_reason=PassReason.ON_CALL),
    ))
    expected = [
        "- **Grace:** pass",
        "- **Ada:** first of two",
        "- **Ada:** second of two",
        "- **Lin:** (spoke on the call)",
        "- **Min:** no update",
        "- **Yuvi:** early bird (posted ahead)",
        "- **Zoe:** not on the roll call",
        "- **Bo:** also not on it",
    ]
    note = render_note(record, LONDON, {})
    assert note.split("## Quick updates\n\n")[1].split("\n\n")[0].splitlines() == expected
    # The HackMD page's region comes from the same ordering.
    assert page_regions(record, LONDON, {})["updates"].splitlines() == expected


def test_only_the_links_that_are_set_are_listed() -> None:
    note = render_note(MeetingRecord(meeting(), (), ()), LONDON,
                       {"notes": None, "issue": "https://github.com/example/team/issues/12"})
    assert "- **GitHub issue:** <https://github.com/example/team/issues/12>" in note
    assert "**Notes:**" not in note
    assert "**Calendar for future meetings:**" not in note


def test_a_roll_call_line_leaves_out_blank_parts() -> None:
    record = MeetingRecord(meeting(), (
        Attendee(ADA, Profile("Ada Lovelace")),
        Attendee(GRACE, Profile("Grace Hopper", "", "@grace")),
    ), ())
    roll_call = render_note(record, LONDON, {}).split("## Roll call\n\n")[1].split("\n\n")[0]
    assert roll_call.splitlines() == ["- Ada Lovelace", "- Grace Hopper / @grace"]


# --- hostile text ---------------------------------------------------------------------------------

HOSTILE = [
    pytest.param("## heading", id="heading"),
    pytest.param("# top heading", id="top heading"),
    pytest.param("- item", id="bullet"),
    pytest.param("* item", id="star bullet"),
    pytest.param("+ item", id="plus bullet"),
    pytest.param("1. one", id="ordered item"),
    pytest.param("1) one", id="ordered item with bracket"),
    pytest.param("> quote", id="block quote"),
    pytest.param("<img src=x onerror=alert(1)>", id="img onerror"),
    pytest.param("<script>alert(1)</script>", id="script"),
    pytest.param("[x](javascript:alert(1))", id="javascript link"),
    pytest.param("[x]: javascript:alert(1)", id="javascript reference definition"),
    pytest.param("<javascript:alert(1)>", id="javascript autolink"),
    pytest.param("**bold** and _em_ and `code`", id="emphasis and code"),
    pytest.param("Title\n===", id="setext h1 underline"),
    pytest.param("Title\n---", id="setext h2 underline"),
    pytest.param("---", id="horizontal rule"),
    pytest.param("\tindented by a tab\n    indented by four spaces", id="indented code"),
    pytest.param("```\nfenced code\n```", id="fenced code"),
    pytest.param("first\n\n## after a blank line", id="blank line then heading"),
    pytest.param("|a|b|\n|-|-|", id="table"),
    pytest.param("&lt;script&gt; &#60;img&#62;", id="entities"),
    pytest.param("<!-- hidden -->visible", id="html comment"),
    pytest.param("nul\x00bell\x07escape\x1b[31mred\x7fdel\x85nel", id="control characters"),
    pytest.param("\u202eevil right-to-left override", id="right-to-left override"),
    pytest.param("crlf\r\n## heading\rafter cr", id="carriage returns"),
]
HUGE = "\n".join(f"w{n}" for n in range(10_000))


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def note_with(text: str, place: str) -> str:
    """A note with `text` as one update, celebration, agenda item or display name."""
    name, contributions = "Ada", []
    if place == "display name":
        name = text
        contributions = [entry(EntryKind.UPDATE, ADA, name, "fine")]
    else:
        kind = {"update": EntryKind.UPDATE, "celebration": EntryKind.CELEBRATION,
                "agenda item": EntryKind.AGENDA}[place]
        contributions = [entry(kind, ADA, name, text, 5 if kind is EntryKind.AGENDA else None)]
    attendees = (Attendee(ADA, Profile(name, "Engines", "@ada")),
                 Attendee(GRACE, Profile("Grace", "Navy", "@grace")))
    # Grace speaks after the hostile text in every section, so a section it broke shows.
    after = [entry(EntryKind.UPDATE, GRACE, "Grace", "after"),
             entry(EntryKind.CELEBRATION, GRACE, "Grace", "after"),
             entry(EntryKind.AGENDA, GRACE, "Grace", "after")]
    return render_note(MeetingRecord(meeting(), attendees, (*contributions, *after)), LONDON, LINKS)


def check_note_is_intact(text: str, note: str) -> None:
    # (a) the sections are exactly the four, in order
    assert [line[3:] for line in note.splitlines() if line.startswith("## ")] == SECTIONS
    # (b) the HTML has exactly the note's headings, and nothing executable
    html = markdown_to_html(note)
    headings = re.findall(r"<(h[1-6])>(.*?)</\1>", html, flags=re.DOTALL)
    assert headings == [
        ("h1", "Example Team Meeting"),
        ("h4", "By participating in this meeting, you are agreeing to abide by and uphold the "
               '<a href="https://example.org/conduct" rel="noopener noreferrer">'
               "Code of Conduct</a>."),
        *(("h2", section) for section in SECTIONS),
    ]
    lowered = html.lower()
    assert "<script" not in lowered and "<img" not in lowered
    parser = _Tags()
    parser.feed(html)
    for tag, attributes in parser.tags:
        for attribute, value in attributes:
            assert not attribute.startswith("on"), f"<{tag} {attribute}=...>"
            assert "javascript:" not in (value or "").lower(), f"<{tag} {attribute}={value!r}>"
    assert "<hr" not in lowered and "<pre" not in lowered and "<blockquote" not in lowered
    assert "<table" not in lowered and "<ol" not in lowered
    # (c) nothing was dropped: every word typed is still there, in the markdown and the HTML
    visible = "".join(parser.text)
    for word in re.findall(r"[^\W_]+", text):
        assert word in note, f"{word!r} missing from the note"
        assert word in visible, f"{word!r} missing from the HTML"
    # Grace's lines after the hostile text are still bullets of their own
    assert "- **Grace:** after" in note and "- **Grace** after" in note


@pytest.mark.parametrize("place", ["update", "celebration", "agenda item", "display name"])
@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_cannot_change_the_note(text: str, place: str) -> None:
    note = note_with(text, place)
    check_note_is_intact(text, note)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]", note)


@pytest.mark.parametrize("place", ["update", "celebration", "agenda item"])
def test_a_ten_thousand_line_text_stays_inside_its_bullet(place: str) -> None:
    note = note_with(HUGE, place)
    assert [line[3:] for line in note.splitlines() if line.startswith("## ")] == SECTIONS
    assert all(f"w{n}" in note for n in (0, 1, 5000, 9999))
    html = markdown_to_html(note)
    assert re.findall(r"<h2>(.*?)</h2>", html) == SECTIONS
    assert "w9999" in html and "- **Grace:** after" in note


def test_a_ten_thousand_line_display_name_stays_inside_its_bullets() -> None:
    # Markdown takes over a second to turn a bold 10,000-line name into HTML, so the HTML
    # is checked with 1,000 lines; Matrix caps display names far below either.
    note = note_with(HUGE, "display name")
    assert [line[3:] for line in note.splitlines() if line.startswith("## ")] == SECTIONS
    assert all(f"w{n}" in note for n in (0, 1, 5000, 9999))
    assert "- **Grace:** after" in note
    check_note_is_intact(HUGE[:HUGE.index("w1000")], note_with(HUGE[:HUGE.index("w1000")],
                                                                 "display name"))


def test_a_hostile_meeting_title_stays_one_heading() -> None:
    note = render_note(MeetingRecord(meeting("Team\n## Injected\n<script>x</script>"), (), ()),
                       LONDON, {})
    assert note.splitlines()[0].startswith("# Team")
    assert [line for line in note.splitlines() if line.startswith("## ")] == [
        f"## {section}" for section in SECTIONS
    ]
    assert "<script" not in markdown_to_html(note)


def test_markdown_to_html_keeps_safe_links_and_drops_unsafe_ones() -> None:
    html = markdown_to_html("[ok](https://example.org) [bad](javascript:alert(1)) "
                            "<a href=\"javascript:x\" onclick=\"y\">raw</a>")
    assert '<a href="https://example.org" rel="noopener noreferrer">ok</a>' in html
    shape = check_html(html)
    assert [value for _, name, value in shape.attributes if name == "href"] == [
        "https://example.org"]
    # Raw HTML is no markup at all: it shows as typed.
    assert shape.tags["a"] == 2 and '<a href="javascript:x" onclick="y">raw</a>' in shape.visible


@pytest.mark.parametrize("markdown", [
    pytest.param("<b>bold</b> and <i>italic</i>", id="inline tags"),
    pytest.param("<div>\n<script>alert(1)</script>\n</div>", id="html block"),
    pytest.param("<img src=x onerror=alert(1)>", id="img onerror"),
    pytest.param("before <!-- hidden --> after", id="comment"),
])
def test_raw_html_in_markdown_shows_as_typed(markdown: str) -> None:
    shape = check_html(markdown_to_html(markdown))
    assert set(shape.tags) == {"p"} and shape.visible == markdown


def test_entities_in_markdown_are_characters() -> None:
    # An operator's template may write `&lt;` or `&#61;`; raw HTML is gone, entities stay.
    assert markdown_to_html("1 &lt; 2 &amp; 3 &#61; 3, AT&T") == (
        "<p>1 &lt; 2 &amp; 3 = 3, AT&amp;T</p>")


def test_an_entity_without_its_semicolon_shows_as_typed() -> None:
    # python-markdown's raw HTML step once turned `&#60` into a `<`.
    shape = check_html(markdown_to_html(escape_markdown("x &#60 y &lt z")))
    assert shape.visible == "x &#60 y &lt z"


# --- dates and times --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        pytest.param(1, "Tuesday 1st June 2021", id="1st"),
        pytest.param(2, "Wednesday 2nd June 2021", id="2nd"),
        pytest.param(3, "Thursday 3rd June 2021", id="3rd"),
        pytest.param(4, "Friday 4th June 2021", id="4th"),
        pytest.param(11, "Friday 11th June 2021", id="11th"),
        pytest.param(12, "Saturday 12th June 2021", id="12th"),
        pytest.param(13, "Sunday 13th June 2021", id="13th"),
        pytest.param(17, "Thursday 17th June 2021", id="17th"),
        pytest.param(21, "Monday 21st June 2021", id="21st"),
        pytest.param(22, "Tuesday 22nd June 2021", id="22nd"),
        pytest.param(23, "Wednesday 23rd June 2021", id="23rd"),
        pytest.param(30, "Wednesday 30th June 2021", id="30th"),
    ],
)
def test_format_date(day: int, expected: str) -> None:
    assert format_date(datetime(2021, 6, day, 9, 0, tzinfo=LONDON)) == expected


def test_format_date_31st() -> None:
    assert format_date(datetime(2021, 12, 31, tzinfo=UTC)) == "Friday 31st December 2021"


@pytest.mark.parametrize(
    ("hour", "minute", "expected"),
    [
        pytest.param(9, 0, "9AM", id="9AM"),
        pytest.param(9, 30, "9:30AM", id="9:30AM"),
        pytest.param(9, 5, "9:05AM", id="9:05AM"),
        pytest.param(12, 0, "12PM", id="noon is 12PM"),
        pytest.param(0, 0, "12AM", id="midnight is 12AM"),
        pytest.param(0, 15, "12:15AM", id="a quarter past midnight"),
        pytest.param(13, 0, "1PM", id="1PM"),
        pytest.param(23, 59, "11:59PM", id="11:59PM"),
    ],
)
def test_format_clock(hour: int, minute: int, expected: str) -> None:
    assert format_clock(datetime(2021, 6, 17, hour, minute, tzinfo=UTC)) == expected


@pytest.mark.parametrize(
    ("when", "zone", "expected"),
    [
        pytest.param(HELD_AT, LONDON, "9AM Europe/London (08:00 UTC)", id="London in summer"),
        pytest.param(datetime(2021, 12, 16, 9, 0, tzinfo=UTC), LONDON,
                     "9AM Europe/London (09:00 UTC)", id="London in winter"),
        pytest.param(datetime(2021, 12, 17, 8, 30, tzinfo=UTC), ZoneInfo("America/New_York"),
                     "3:30AM America/New_York (08:30 UTC)", id="New York"),
        pytest.param(datetime(2021, 12, 17, 8, 30, tzinfo=UTC), ZoneInfo("Asia/Kolkata"),
                     "2PM Asia/Kolkata (08:30 UTC)", id="half-hour offset"),
        pytest.param(datetime(2021, 6, 17, 9, 0, tzinfo=LONDON), ZoneInfo("UTC"),
                     "8AM UTC (08:00 UTC)", id="input in another zone"),
    ],
)
def test_format_time(when: datetime, zone: ZoneInfo, expected: str) -> None:
    assert format_time(when, zone) == expected


def test_time_zone_link_is_the_instant_in_utc() -> None:
    assert time_zone_link(datetime(2021, 6, 17, 9, 0, tzinfo=LONDON)) == (
        "https://www.timeanddate.com/worldclock/fixedtime.html?iso=20210617T0800&p1=1440"
    )


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        pytest.param(timedelta(days=7), "7 days", id="7 days"),
        pytest.param(timedelta(days=1), "1 day", id="1 day"),
        pytest.param(timedelta(hours=1), "1 hour", id="1 hour"),
        pytest.param(timedelta(hours=1, minutes=30), "1 hour 30 minutes", id="1 hour 30 minutes"),
        pytest.param(timedelta(minutes=1), "1 minute", id="1 minute"),
        pytest.param(timedelta(seconds=45), "45 seconds", id="45 seconds"),
        pytest.param(timedelta(days=1, hours=2, minutes=3), "1 day 2 hours",
                     id="only the two largest units"),
        pytest.param(timedelta(seconds=59.6), "1 minute", id="rounded to the second"),
        pytest.param(timedelta(0), "now", id="zero is now"),
        pytest.param(timedelta(seconds=-5), "now", id="negative is now"),
    ],
)
def test_format_span(span: timedelta, expected: str) -> None:
    assert format_span(span) == expected


# --- the agenda message ------------------------------------------------------------------------


def test_render_agenda_numbers_the_items_with_a_running_total_against_the_slot() -> None:
    items = [entry(EntryKind.AGENDA, GRACE, "Grace Hopper", "Release planning", 10),
             entry(EntryKind.AGENDA, ADA, "Ada Lovelace", "Parser review", 5)]
    assert render_agenda(items, title="Example Team Meeting", held_at="Thursday 17th June 2021",
                         prefix="!", slot_minutes=60) == (
        "**Agenda for Example Team Meeting, Thursday 17th June 2021** (60 min slot):\n"
        "\n"
        "1. **Grace Hopper** (10 min) Release planning · 10 of 60 min\n"
        "2. **Ada Lovelace** (5 min) Parser review · 15 of 60 min\n"
        "\n"
        "Total: 15 of 60 min."
    )


@pytest.mark.parametrize(
    ("minutes", "total"),
    [
        pytest.param([10, None], "Total: 10 of 60 min, plus 1 item without an estimate.",
                     id="one"),
        pytest.param([10, None, None], "Total: 10 of 60 min, plus 2 items without an estimate.",
                     id="two"),
        pytest.param([None], "Total: 0 of 60 min, plus 1 item without an estimate.",
                     id="none estimated"),
    ],
)
def test_render_agenda_counts_items_without_an_estimate_as_such(
    minutes: list[int | None], total: str
) -> None:
    items = [entry(EntryKind.AGENDA, ADA, "Ada", f"topic {n}", m) for n, m in enumerate(minutes)]
    message = render_agenda(items, title="Team", held_at="today", prefix="!", slot_minutes=60)
    assert message.splitlines()[-1] == total
    last = len(minutes)
    assert f"\n{last}. **Ada** topic {last - 1} · no estimate\n" in message


def test_render_agenda_warns_when_the_estimates_exceed_the_slot() -> None:
    items = [entry(EntryKind.AGENDA, ADA, "Ada", f"topic {n}", 25) for n in range(3)]
    message = render_agenda(items, title="Team", held_at="today", prefix="!", slot_minutes=60)
    assert message.splitlines()[-1] == "**75 min of items for a 60 min meeting.**"
    assert "3. **Ada** (25 min) topic 2 · 75 of 60 min" in message


def test_render_agenda_when_empty_says_how_to_add_with_the_prefix() -> None:
    assert render_agenda([], title="Team *one*", held_at="Thursday 17th June 2021",
                         prefix="?", slot_minutes=30) == (
        "**Agenda for Team \\*one\\*, Thursday 17th June 2021** (30 min slot): nothing yet. "
        "Add an item with `?agenda (10 min) topic`."
    )
