"""Properties that hold for any chat text: the parser raises nothing but UsageError, and
the note keeps its structure and posts only allow-listed HTML.

Every input is allowed, lone surrogates (which JSON can carry as `\ud800`) included:
the bugs these properties once found are fixed and pinned in test_hostile_input.py.
"""

from __future__ import annotations

import contextlib
import re
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatbot.commands import (
    MAX_TEXT,
    REGISTRY,
    Action,
    AgendaChange,
    AgendaItem,
    Invocation,
    Text,
    UsageError,
    _agenda,
    parse_invocation,
)
from chatbot.model import Entry, EntryKind, EventId, Profile, UserId
from chatbot.render import (
    clean_text,
    escape_markdown,
    markdown_to_html,
    render_agenda,
    render_note,
)
from tests.unit.note_shape import (
    HELD_AT,
    Act,
    Item,
    Parts,
    check_html,
    check_note,
    check_note_html,
    record,
)

LONDON = ZoneInfo("Europe/London")
LINKS: dict[str, str | None] = {
    "notes": "https://notes.example.org/team",
    "code_of_conduct": "https://example.org/conduct",
}
# The runs stay fast and leave no example database behind in the working tree.
QUICK = settings(max_examples=150, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
NOTES = settings(QUICK, max_examples=120)

# Pieces of markdown, HTML, links and characters that have caused trouble elsewhere.
FRAGMENTS = [
    "#", "## ", "###### ", "\n", "\r\n", "\r", "\n\n", "- ", "* ", "+ ", "1. ", "2) ", "> ",
    "|", "| a | b |\n|---|---|", "---", "***", "___", "===", "```", "~~~", "    ", "\t", "  ",
    "<", ">", "&", "&amp;", "&#60;", "&lt;script&gt;", "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>", "<div>", "</div>", "<!-- ", " -->", "<?php ", "<![CDATA[",
    "<a href=\"javascript:alert(1)\" onclick=\"x\">", "[x](javascript:alert(1))",
    "![i](https://evil.example/i.png)", "[x]: https://example.org", "[x][y]", "javascript:",
    "JaVaScRiPt:", "data:text/html,<script>", "vbscript:", "https://example.org/a_b*c*",
    "http://example.org/(x)", "https://a.example/[x](javascript:alert(1))", "mailto:a@b.org",
    "<https://example.org>", "<1@example.org>", "@ada:example.org", "\\", "`", "``", "*", "**",
    "_", "__", "~~", "[", "]", "(", ")", "{", "}", "!", "=", "-", ".", ":",
    "\x00", "\x07", "\x08", "\x0b", "\x0c", "\x1b[31m", "\x7f", "\x85", "\x9f",
    "\u202e", "\u202d", "\u2066", "\u2069", "\u200b", "\u200c", "\u200d", "\u200e", "\ufeff",
    "\u2028", "\u2029", "\u00a0", "\u3000", "\u0301", "\U0001f469\u200d\U0001f4bb", "١٢",
]
# Lone surrogates (category Cs) included: JSON can carry them, and they are cleaned.
ANY_CHARACTER = st.characters()


hostile = st.one_of(
    st.text(ANY_CHARACTER),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(ANY_CHARACTER, max_size=3)),
             max_size=12).map("".join),
)
# Entries whose text is empty once control characters go, and multi-line titles, are
# included: the note labels the one and joins the other.
said = hostile
short = st.lists(said, max_size=3)
one_line = hostile


# --- the parser ---------------------------------------------------------------------------

NAMES = [name for spec in REGISTRY for name in (spec.name, *spec.aliases)]


@QUICK
@given(name=st.sampled_from(NAMES), text=hostile, prefix=st.sampled_from(["!", "?", "bot: "]))
def test_every_command_parses_any_text_or_says_why_not(name: str, text: str, prefix: str) -> None:
    invocation = parse_invocation(f"{prefix}{name} {text}", prefix)
    assert isinstance(invocation, Invocation) and name in (invocation.spec.name,
                                                            *invocation.spec.aliases)
    try:
        command = invocation.spec.parse(invocation.arguments)
    except UsageError as error:
        assert str(error), "a usage error must say what was wrong"
        return
    if isinstance(command, AgendaChange) and command.text is not None:
        with contextlib.suppress(UsageError):  # `agenda edit N text` parses it again
            _agenda(command.text)
    if isinstance(command, Text | AgendaItem | Action):
        assert command.text and command.text == command.text.strip()
        assert len(command.text) <= MAX_TEXT


@QUICK
@given(body=hostile, prefix=st.sampled_from(["!", "!!", "."]))
def test_any_message_is_a_command_an_unknown_name_or_nothing(body: str, prefix: str) -> None:
    result = parse_invocation(body, prefix)
    if result is not None and not isinstance(result, Invocation):
        assert result.suggestion is None or result.suggestion in NAMES


# --- the note ----------------------------------------------------------------------------

minutes = st.one_of(st.none(), st.integers(1, 600))
items = st.builds(Item, owner=hostile, text=said, minutes=minutes,
                  notes=short.map(tuple), decisions=short.map(tuple),
                  took_seconds=st.sampled_from([0, 1, 59, 3600]),
                  carried_from=st.sampled_from([None, "Thursday 10th June 2021"]))
actions = st.builds(Act, sender_name=hostile, assignee=st.one_of(st.none(), hostile),
                    text=said)
profiles = st.builds(Profile, name=said, affiliation=hostile, handle=hostile)
meetings = st.builds(
    Parts,
    title=one_line,
    attendees=st.lists(profiles, max_size=3).map(tuple),
    updates=st.lists(st.tuples(hostile, said), max_size=3).map(tuple),
    passes=st.lists(hostile, max_size=3).map(tuple),
    celebrations=st.lists(st.tuples(hostile, said), max_size=2).map(tuple),
    items=st.lists(items, max_size=3).map(tuple),
    notes=short.map(tuple),
    decisions=short.map(tuple),
    actions=st.lists(actions, max_size=3).map(tuple),
)


@NOTES
@given(parts=meetings)
def test_any_text_anywhere_leaves_the_note_its_structure(parts: Parts) -> None:
    note = render_note(record(parts), LONDON, LINKS)
    check_note(note, parts)
    check_note_html(markdown_to_html(note), parts)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", note)


@QUICK
@given(text=hostile)
def test_escaped_text_is_one_paragraph_showing_what_was_typed(text: str) -> None:
    html = markdown_to_html(escape_markdown(text))
    shape = check_html(html)
    assert set(shape.tags) <= {"p", "br", "a"}, html
    assert shape.tags["p"] <= 1
    # A link shows where it goes: chat text cannot label a link with another address.
    # (nh3 drops an href it cannot parse, like `http://:0`, leaving an inert <a>.)
    assert all(href in (None, shown) for href, shown in shape.links), shape.links
    # Nothing typed is lost or added, apart from control characters and blank lines.
    lines = [line.strip() for line in clean_text(text).split("\n")]
    typed = "".join(lines)
    assert "".join(shape.visible.split()) == "".join(typed.split())


agenda_items = st.lists(
    st.tuples(hostile, hostile, minutes, st.sampled_from([0, 0, 120]),
              st.sampled_from([None, "Thursday 10th June 2021"])),
    max_size=6)


@QUICK
@given(title=hostile, rows=agenda_items, current=st.integers(0, 6))
def test_the_agenda_message_numbers_every_item_and_posts_safe_html(
    title: str, rows: list[tuple[str, str, int | None, int, str | None]], current: int
) -> None:
    entries = [Entry(EntryKind.AGENDA, UserId(f"@owner{n}:example.org"), owner, text, estimate,
                     EventId(f"$a{n}"), HELD_AT, id=n + 1, position=n + 1, took_seconds=took,
                     carried_from=carried)
               for n, (owner, text, estimate, took, carried) in enumerate(rows)]
    message = render_agenda(entries, title=title, held_at="Thursday 17th June 2021", prefix="!",
                            slot_minutes=60, current_id=current)
    numbers = [int(m[1]) for m in re.finditer(r"^(\d+)\. ", message, flags=re.M)]
    assert numbers == list(range(1, len(rows) + 1))
    shape = check_html(markdown_to_html(message))
    assert shape.items.get("", {}).get(1, 0) == len(rows)
    assert shape.tags["ol"] == (1 if rows else 0)
    assert shape.tags["ul"] == shape.tags["pre"] == shape.tags["blockquote"] == 0
    assert not any(tag.startswith("h") and tag != "hr" for tag in shape.tags)


def test_the_case_hypothesis_found_people_with_empty_profiles() -> None:
    """Two roll-call lines with nothing visible once escaped: no empty bullets."""
    parts = Parts(attendees=(Profile("", "", ""), Profile("\x00", "", "")))
    note = render_note(record(parts), LONDON, LINKS)
    check_note(note, parts)
    check_note_html(markdown_to_html(note), parts)
    assert "- (no name)\n- (no name)\n" in note
