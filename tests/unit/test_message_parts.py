"""Long messages (the note of a big meeting) are posted in parts the homeserver accepts."""

from __future__ import annotations

import re

from chatbot.render import (
    MAX_MESSAGE_BYTES,
    escape_markdown,
    markdown_to_html,
    message_parts,
    message_size,
)

LABEL = re.compile(r"\A\*\(continued, part (\d+) of (\d+)\)\*\n\n")


def big_note(updates: int) -> str:
    said = [escape_markdown(f"worked on https://example.org/{n} and *more* things, {n}")
            for n in range(updates)]
    lines = "".join(f"- **Person {n}:** {text}\n" for n, text in enumerate(said))
    items = "".join(f"- **Owner {n}** (5 min) item {n}\n\n    - a note on item {n}\n"
                    f"    - **Decision:** decided {n}\n" for n in range(40))
    return (f"# Big Meeting\n\n- **Date:** today\n\n## Quick updates\n\n{lines}\n"
            f"## Agenda items\n\n{items}")


def unlabelled(text: str) -> str:
    return LABEL.sub("", text)


def test_a_short_message_is_one_part_with_its_html() -> None:
    (part,) = message_parts("**Ada** said hello")
    assert part.text == "**Ada** said hello"
    assert part.html == markdown_to_html("**Ada** said hello")


def test_a_big_note_is_cut_into_parts_under_the_limit_losing_nothing() -> None:
    note = big_note(2000)
    parts = message_parts(note)
    assert len(parts) > 1
    assert all(message_size(part.text, part.html) <= MAX_MESSAGE_BYTES for part in parts)
    for number, part in enumerate(parts[1:], start=2):
        label = LABEL.match(part.text)
        assert label is not None and label.groups() == (str(number), str(len(parts)))
    lines = [line for part in parts for line in unlabelled(part.text).splitlines() if line]
    assert lines == [line for line in note.splitlines() if line], "nothing lost or doubled"


def test_parts_are_full_not_many() -> None:
    note = big_note(2000)
    parts = message_parts(note)
    total = sum(message_size(part.text, part.html) for part in parts)
    assert len(parts) <= total // (MAX_MESSAGE_BYTES * 0.8) + 1


def test_an_item_stays_with_its_sub_bullets() -> None:
    parts = message_parts(big_note(1200), limit=20_000)
    for part in parts:
        assert not unlabelled(part.text).startswith("    "), "a part begins inside an item"
    joined = "".join(unlabelled(part.text) for part in parts)
    for n in range(40):
        item = f"- **Owner {n}** (5 min) item {n}\n\n    - a note on item {n}\n"
        assert item in joined


def test_each_parts_html_is_its_own_markdown_rendered() -> None:
    for part in message_parts(big_note(1500), limit=30_000):
        label = LABEL.match(part.text)
        rest = unlabelled(part.text)
        expected = markdown_to_html(rest)
        if label is not None:
            expected = markdown_to_html(label.group().strip()) + "\n" + expected
        assert part.html == expected
