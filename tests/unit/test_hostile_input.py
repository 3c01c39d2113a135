"""Hostile and oversized chat input, case by case: each gets a sensible note or a clear
refusal that says the limit.

The bugs these cases once found are fixed; the last section keeps each one as an
ordinary test, so that it cannot come back. test_properties.py draws from the same
kinds of input, with nothing left out.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from chatbot.commands import MAX_TEXT, Invocation, UsageError, parse_invocation
from chatbot.model import Entry, EntryKind, EventId, Profile, UserId
from chatbot.render import escape_markdown, markdown_to_html, render_agenda, render_note
from tests.unit.note_shape import (
    HELD_AT,
    Act,
    HtmlShape,
    Item,
    Parts,
    check_html,
    check_note,
    check_note_html,
    record,
)

LONDON = ZoneInfo("Europe/London")
LINKS: dict[str, str | None] = {"code_of_conduct": "https://example.org/conduct"}
KIB_64 = 64 * 1024


def parsed(body: str) -> Any:
    invocation = parse_invocation(body, "!")
    assert isinstance(invocation, Invocation), body
    return invocation.spec.parse(invocation.arguments)


def placed(text: str, place: str) -> Parts:
    """A meeting with `text` in one place, and an ordinary entry after it in every section,
    so that text which broke out of its bullet would show."""
    after = Parts(
        attendees=(Profile("Grace", "Navy", "@grace"),),
        updates=(("Grace", "after"),), celebrations=(("Grace", "after"),),
        items=(Item("Grace", "after", 5, notes=("after",), decisions=("after",)),),
        notes=("after",), decisions=("after",), actions=(Act("Grace", None, "after"),),
    )
    fields: dict[str, Any] = {
        "update": {"updates": (("Ada", text), *after.updates)},
        "celebration": {"celebrations": (("Ada", text), *after.celebrations)},
        "agenda item": {"items": (Item("Ada", text, 10), *after.items)},
        "note under an item": {"items": (Item("Ada", "topic", notes=(text,)), *after.items)},
        "decision on an item": {"items": (Item("Ada", "topic", decisions=(text,)),
                                          *after.items)},
        "general note": {"notes": (text, *after.notes)},
        "action": {"actions": (Act("Ada", "@ada:example.org", text), *after.actions)},
        "display name": {"updates": ((text, "fine"), *after.updates),
                         "items": (Item(text, "topic"), *after.items),
                         "actions": (Act(text, None, "do it"), *after.actions)},
        "profile": {"attendees": (Profile(text, text, text), *after.attendees)},
    }[place]
    return dataclasses.replace(after, **fields)


def note_and_html(parts: Parts) -> tuple[str, HtmlShape]:
    note = render_note(record(parts), LONDON, LINKS)
    check_note(note, parts)
    return note, check_note_html(markdown_to_html(note), parts)


PLACES = ["update", "celebration", "agenda item", "note under an item", "decision on an item",
          "general note", "action", "display name", "profile"]


# --- markdown and HTML typed into a meeting ----------------------------------------------------

MARKDOWN = [
    pytest.param("## Injected heading\n# another", id="headings"),
    pytest.param("| a | b |\n|---|---|\n| 1 | 2 |", id="table"),
    pytest.param("<div>\n<script>alert(1)</script>\n</div>", id="html block"),
    pytest.param("```\nfenced code\n```", id="fenced code"),
    pytest.param("~~~\ntilde fence\n~~~", id="tilde fence"),
    pytest.param("> quoted\n> more", id="blockquote"),
    pytest.param("above\n\n---\n\nbelow", id="horizontal rule"),
    pytest.param("Setext title\n===", id="setext h1"),
    pytest.param("Setext title\n---", id="setext h2"),
    pytest.param("- one\n- two\n* three\n1. four\n2) five", id="lists"),
    pytest.param("    indented code\n\tafter a tab", id="indented code"),
    pytest.param("[ref]: https://example.org\n[ref] and ![img][ref]", id="reference links"),
    pytest.param("**bold** _em_ `code` ~~del~~", id="inline markup"),
]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("text", MARKDOWN)
def test_markdown_in_chat_text_shows_as_typed_and_leaves_the_note_alone(
    text: str, place: str
) -> None:
    _, shape = note_and_html(placed(text, place))
    for word in re.findall(r"[^\W_]+", text):
        assert word in shape.visible, f"{word!r} is not shown"
    assert shape.tags["h1"] == 1 and shape.tags["hr"] == 0 and shape.tags["code"] == 0


@pytest.mark.parametrize("place", PLACES)
def test_an_img_with_onerror_is_text_not_an_image(place: str) -> None:
    text = "<img src=x onerror=alert(1)>"
    note, shape = note_and_html(placed(text, place))
    assert "img" not in shape.tags and not any(n.startswith("on") for _, n, _ in shape.attributes)
    assert text in shape.visible
    assert "<img" not in note  # the saved markdown is inert too: `&lt;img`


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("text", [
    pytest.param("[x](javascript:alert(1))", id="inline link"),
    pytest.param("<javascript:alert(1)>", id="autolink"),
    pytest.param('<a href="javascript:alert(1)" onclick="alert(2)">x</a>', id="raw anchor"),
    pytest.param("JaVaScRiPt:alert(1) and data:text/html,<script>x</script>", id="bare schemes"),
])
def test_a_javascript_link_is_text_not_a_link(text: str, place: str) -> None:
    _, shape = note_and_html(placed(text, place))
    hrefs = [value for tag, name, value in shape.attributes if name == "href"]
    assert hrefs == ["https://example.org/conduct"]
    assert text in shape.visible


@pytest.mark.parametrize("name", ["**Boss**", "<b>x</b>", "_em_ `code`", "# Heading", "[x](y)"])
def test_a_display_name_that_is_markdown_or_html_is_shown_as_typed(name: str) -> None:
    note, shape = note_and_html(placed(name, "display name"))
    assert f"- **{escape_markdown(name)}:** fine" in note
    assert f"{name}: fine" in shape.visible
    assert "b" not in shape.tags and "em" not in shape.tags and "code" not in shape.tags
    _, plain = note_and_html(placed("Ada", "display name"))
    assert shape.tags == plain.tags  # the template's own bold, and nothing more


@pytest.mark.parametrize("title", [
    pytest.param("# Heading ## more", id="heading"),
    pytest.param("<img src=x onerror=alert(1)>", id="img onerror"),
    pytest.param("[x](javascript:alert(1))", id="javascript link"),
    pytest.param("**Boss** | a | b |", id="bold and table"),
    pytest.param("---", id="rule"),
    pytest.param("===", id="setext underline"),
])
def test_a_hostile_one_line_title_is_the_note_heading_as_typed(title: str) -> None:
    note, shape = note_and_html(Parts(title=title))
    assert shape.headings[0] == ("h1", title)
    assert note.startswith(f"# {escape_markdown(title)}\n")


def test_a_profile_that_is_markdown_or_html_is_one_roll_call_line() -> None:
    profile = Profile("**Boss** <b>x</b>", "# Org | Inc", "@boss [x](javascript:y)")
    note, shape = note_and_html(Parts(attendees=(profile,)))
    assert "**Boss** <b>x</b> / # Org | Inc / @boss [x](javascript:y)" in shape.visible
    assert note.split("## Roll call\n\n")[1].startswith("- \\*\\*Boss\\*\\* &lt;b>x&lt;/b> / ")


# --- characters that have no business in a note ------------------------------------------------

# C0 and C1 controls but tab, and line feed and carriage return (which are line breaks).
CONTROLS = "".join(map(chr, [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20),
                             *range(0x7F, 0xA0)]))


@pytest.mark.parametrize("place", PLACES)
def test_nul_and_control_characters_are_removed(place: str) -> None:
    text = f"before{CONTROLS}after\x00\x1b[31mred\x07"
    note, shape = note_and_html(placed(text, place))
    assert not set(CONTROLS) & set(note)
    assert "beforeafter[31mred" in shape.visible


BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_direction_overrides_and_isolates_are_removed() -> None:
    # "\u202e" would make "txt.exe" read as "exe.txt" in the rest of the line.
    note, shape = note_and_html(placed(f"invoice\u202etxt.exe {BIDI_CONTROLS}done", "update"))
    assert not set(BIDI_CONTROLS) & set(note)
    assert "invoicetxt.exe done" in shape.visible


@pytest.mark.parametrize(("text", "kept"), [
    pytest.param("\U0001f469\u200d\U0001f4bb shipped", "\u200d", id="ZWJ in an emoji sequence"),
    pytest.param("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "\u200c",
                 id="ZWNJ in Persian"),
    pytest.param("long\u200bword", "\u200b", id="zero-width space"),
    pytest.param("\ufeffbom", "\ufeff", id="zero-width no-break space"),
    pytest.param("abc \u200f\u05e2\u05d1\u05e8\u05d9\u05ea\u200e def", "\u200f\u200e",
                 id="LRM and RLM marks"),
])
def test_zero_width_and_direction_marks_are_kept(text: str, kept: str) -> None:
    # They are needed to write emoji and several scripts, and none can reorder text
    # beyond its own position as the overrides can.
    note, shape = note_and_html(placed(text, "update"))
    assert all(char in note and char in shape.visible for char in kept)


@pytest.mark.parametrize("invisible", ["\u200b", "\ufeff", "\u200d", "\u2060"])
def test_an_invisible_character_cannot_hide_markdown_from_the_escaper(invisible: str) -> None:
    text = f"{invisible}## heading\n{invisible}- item\n{invisible}<img src=x onerror=y>"
    _, shape = note_and_html(placed(text, "update"))
    assert "img" not in shape.tags and "## heading" in shape.visible


# --- size -----------------------------------------------------------------------------------------

TEXT_COMMANDS = ["update", "celebrate", "report", "note", "agreed", "decision", "agenda",
                 "agenda (5 min)", "action", "action @ada:example.org", "iam", "here"]


@pytest.mark.parametrize("command", TEXT_COMMANDS)
def test_a_64_kib_message_is_refused_with_the_limit(command: str) -> None:
    body = f"!{command} " + "x" * (KIB_64 - len(command) - 2)
    with pytest.raises(UsageError, match=rf"is \d+ characters; the limit is {MAX_TEXT}$"):
        parsed(body)


@pytest.mark.parametrize("command", TEXT_COMMANDS)
def test_text_up_to_the_limit_is_accepted_and_one_more_is_refused(command: str) -> None:
    # An estimate or an assignee in front is not part of the text the limit counts.
    parsed(f"!{command} " + "y" * MAX_TEXT)
    with pytest.raises(UsageError, match=f"is {MAX_TEXT + 1} characters; the limit is {MAX_TEXT}"):
        parsed(f"!{command} " + "y" * (MAX_TEXT + 1))


def test_a_ten_thousand_line_update_is_refused_by_the_parser_with_the_limit() -> None:
    text = "\n".join("x" for _ in range(10_000))
    with pytest.raises(UsageError, match=f"19999 characters; the limit is {MAX_TEXT}"):
        parsed(f"!update {text}")


def seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def test_a_ten_thousand_line_update_renders_inside_one_bullet() -> None:
    text = "\n".join(f"line {n}" for n in range(10_000))
    parts = placed(text, "update")
    assert seconds(lambda: markdown_to_html(render_note(record(parts), LONDON, LINKS))) < 2
    note, shape = note_and_html(parts)
    updates = note.split("## Quick updates\n\n")[1].split("\n\n")[0].split("\n")
    assert updates[0] == "- **Ada:** line 0  "
    assert updates[1:-1] == [f"    line {n}  " for n in range(1, 9_999)] + ["    line 9999"]
    assert updates[-1] == "- **Grace:** after"
    assert shape.tags["br"] == 9_999 and shape.items["Quick updates"][1] == 2


def agenda_entries(count: int) -> list[Entry]:
    return [Entry(EntryKind.AGENDA, UserId(f"@p{n % 7}:example.org"), f"Person {n % 7}",
                  f"topic {n + 1} **not bold** <i>not italic</i>", 1 + n % 15,
                  EventId(f"$a{n}"), HELD_AT, id=n + 1, position=n + 1)
            for n in range(count)]


def test_three_thousand_agenda_items_are_listed_quickly_and_numbered_to_the_end() -> None:
    items = agenda_entries(3_000)

    def agenda() -> str:
        return render_agenda(items, title="Team", held_at="Thursday 17th June 2021",
                             prefix="!", slot_minutes=60)

    assert seconds(lambda: markdown_to_html(agenda())) < 2
    message = agenda()
    html = markdown_to_html(message)
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", message, flags=re.M)]
    assert numbers == list(range(1, 3_001))
    shape = check_html(html)
    assert shape.tags["li"] == 3_000 and shape.tags["ol"] == 1 and "i" not in shape.tags
    assert message.splitlines()[-1] == f"**{sum(i.minutes or 0 for i in items)} min of items " \
                                       "for a 60 min meeting.**"


def test_three_thousand_agenda_items_make_a_note_quickly() -> None:
    parts = Parts(items=tuple(Item(entry.sender_name, entry.text, entry.minutes)
                              for entry in agenda_entries(3_000)))
    assert seconds(lambda: markdown_to_html(render_note(record(parts), LONDON, LINKS))) < 2
    note, shape = note_and_html(parts)
    assert shape.items["Agenda items"][1] == 3_000
    assert note.rstrip("\n").split("\n")[-1].startswith("- **Person 3** (15 min) topic 3000 ")


# --- once bugs, now fixed ---------------------------------------------------------------


def test_a_link_cannot_be_made_to_show_one_address_and_go_to_another() -> None:
    text = "see https://example.org/[paypal.com](https://phish.example/login)"
    shape = check_html(markdown_to_html(escape_markdown(text)))
    assert shape.links and all(href == shown for href, shown in shape.links), shape.links
    assert text in shape.visible


def test_angle_brackets_around_an_address_are_shown_not_linked() -> None:
    shape = check_html(markdown_to_html(escape_markdown("write to <0-ada@example.org>")))
    assert "a" not in shape.tags and "<0-ada@example.org>" in shape.visible


def test_an_entity_in_a_link_is_shown_as_typed() -> None:
    shape = check_html(markdown_to_html(escape_markdown("https://example.org/?q=a&lt;b")))
    assert "https://example.org/?q=a&lt;b" in shape.visible


def test_a_line_starting_with_a_pipe_shows_no_backslash() -> None:
    shape = check_html(markdown_to_html(escape_markdown("| a | b |")))
    assert shape.visible == "| a | b |"


@pytest.mark.parametrize("body", [
    pytest.param("!update \x00", id="update"),
    pytest.param("!celebrate \u202e", id="celebrate"),
    pytest.param("!agenda \u2066\u2069", id="agenda"),
    pytest.param("!agenda (5 min) \x07", id="agenda with estimate"),
    pytest.param("!iam \x1b", id="iam"),
    pytest.param("!action @ada:example.org \x7f", id="action"),
])
def test_text_that_is_only_control_characters_is_refused(body: str) -> None:
    with pytest.raises(UsageError):
        parsed(body)


def test_an_empty_entry_after_another_does_not_make_a_heading() -> None:
    note_and_html(Parts(celebrations=(("Ada", "v2 is out"), ("Ada", "\x00"))))


def test_a_lone_surrogate_does_not_break_the_note() -> None:
    note_and_html(placed("half a pair: \ud800", "update"))


def test_a_multi_line_title_stays_one_heading() -> None:
    _, shape = note_and_html(Parts(title="Team\n## Injected"))
    assert "pre" not in shape.tags


def test_a_64_kib_assignee_is_refused_with_the_limit() -> None:
    with pytest.raises(UsageError, match="the limit is 255"):
        parsed("!action @" + "a" * KIB_64 + ":example.org do it")


def test_a_64_kib_matrix_id_is_refused() -> None:
    with pytest.raises(UsageError):
        parsed("!chair @" + "a" * KIB_64 + ":example.org")
