"""Parsing the commands that run a meeting live: agenda changes, items, notes, chairs."""

from __future__ import annotations

from typing import Any

import pytest

from chatbot.commands import (
    Action,
    AgendaChange,
    AgendaItem,
    ItemNumber,
    NoArguments,
    Person,
    Text,
    UsageError,
    parse_invocation,
)


def parsed(body: str) -> Any:
    invocation = parse_invocation(body, "!")
    assert invocation is not None and hasattr(invocation, "spec"), body
    return invocation.spec.parse(invocation.arguments)


@pytest.mark.parametrize(
    ("body", "command"),
    [
        pytest.param("!agenda remove 2", AgendaChange("remove", 2), id="remove"),
        pytest.param("!agenda REMOVE #2", AgendaChange("remove", 2), id="remove with #"),
        pytest.param("!agenda drop 3", AgendaChange("drop", 3), id="drop"),
        pytest.param("!agenda move 3 1", AgendaChange("move", 3, to=1), id="move"),
        pytest.param("!agenda edit 1 (5 min) Shorter",
                     AgendaChange("edit", 1, text="(5 min) Shorter"), id="edit"),
        pytest.param("!agenda remove the old CI", AgendaItem("remove the old CI", None),
                     id="a topic that starts with a verb is a new item"),
        pytest.param("!agenda (5) move 2 things", AgendaItem("move 2 things", 5),
                     id="estimate then a verb"),
        pytest.param("!next", NoArguments(), id="next"),
        pytest.param("!item 4", ItemNumber(4), id="item"),
        pytest.param("!item #4", ItemNumber(4), id="item with #"),
        pytest.param("!note two chapters left", Text("two chapters left"), id="note"),
        pytest.param("!agreed ship on Friday", Text("ship on Friday"), id="agreed"),
        pytest.param("!decision ship on Friday", Text("ship on Friday"), id="decision alias"),
        pytest.param("!action write the post", Action(None, "write the post"), id="action for me"),
        pytest.param("!action @ada:example.org write it", Action("@ada:example.org", "write it"),
                     id="action for a Matrix id"),
        pytest.param("!action @ada:example.org: write it", Action("@ada:example.org", "write it"),
                     id="a pill's trailing colon"),
        pytest.param("!action @ada write it", Action("@ada", "write it"), id="action for a handle"),
        pytest.param("!undo", NoArguments(), id="undo"),
        pytest.param("!chair @grace:example.org", Person("@grace:example.org"), id="chair"),
        pytest.param("!unchair @grace:example.org", Person("@grace:example.org"), id="unchair"),
    ],
)
def test_live_commands_parse(body: str, command: Any) -> None:
    assert parsed(body) == command


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("!agenda move 3", "say where to", id="move without a target"),
        pytest.param("!agenda move 3 up", "say where to", id="move to a word"),
        pytest.param("!agenda edit 2", "say the new text", id="edit without text"),
        pytest.param("!agenda remove 2 now", "takes only the item's number", id="remove extra"),
        pytest.param("!item", "say which item", id="item without a number"),
        pytest.param("!item two", "say which item", id="item with a word"),
        pytest.param("!note", "the text is missing", id="empty note"),
        pytest.param("!action @ada:example.org", "say what the action is", id="action no text"),
        pytest.param("!chair grace", "Matrix id", id="chair without an id"),
        pytest.param("!next now", "no arguments", id="next with arguments"),
    ],
)
def test_malformed_live_commands_say_why(body: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parsed(body)
