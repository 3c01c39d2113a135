"""How a chat message becomes a command: the prefix, the name, and each command's arguments."""

from __future__ import annotations

from typing import Any

import pytest

from chatbot.commands import (
    MAX_AGENDA_MINUTES,
    MAX_TEXT,
    REGISTRY,
    AgendaItem,
    Here,
    Invocation,
    ListAgenda,
    NoArguments,
    SetProfile,
    StartMeeting,
    Text,
    Unknown,
    UsageError,
    parse_invocation,
    strip_reply_fallback,
)
from chatbot.model import Profile


def parsed(body: str, prefix: str = "!") -> Any:
    """The typed command a message parses to (raises UsageError like the bot would see)."""
    invocation = parse_invocation(body, prefix)
    assert isinstance(invocation, Invocation), f"{body!r} is not a known command: {invocation}"
    return invocation.spec.parse(invocation.arguments)


# --- which command a message names ----------------------------------------------------------


def test_the_registry_is_the_documented_command_set() -> None:
    names = [spec.name for spec in REGISTRY]
    assert names == ["help", "when", "iam", "here", "update", "pass", "done", "celebrate",
                     "agenda", "next", "item", "note", "action", "agreed", "vote", "undo", "round",
                     "skip", "nudge", "chair", "unchair", "startmeeting", "endmeeting",
                     "archive"]
    assert {alias for spec in REGISTRY for alias in spec.aliases} == {"report", "decision"}
    assert {spec.name for spec in REGISTRY if spec.chair_only} == {
        "next", "item", "round", "skip", "chair", "unchair", "startmeeting", "endmeeting"}


@pytest.mark.parametrize(
    ("body", "prefix", "command"),
    [
        pytest.param("!help", "!", "help", id="help"),
        pytest.param("!when", "!", "when", id="when"),
        pytest.param("!iam Ada", "!", "iam", id="iam"),
        pytest.param("!here", "!", "here", id="here"),
        pytest.param("!update shipped it", "!", "update", id="update"),
        pytest.param("!pass", "!", "pass", id="pass"),
        pytest.param("!celebrate v2 is out", "!", "celebrate", id="celebrate"),
        pytest.param("!report v2 is out", "!", "celebrate", id="alias report is celebrate"),
        pytest.param("!agenda", "!", "agenda", id="agenda"),
        pytest.param("!startmeeting", "!", "startmeeting", id="startmeeting"),
        pytest.param("!endmeeting", "!", "endmeeting", id="endmeeting"),
        pytest.param("!HELP", "!", "help", id="upper case name"),
        pytest.param("!StartMeeting", "!", "startmeeting", id="mixed case name"),
        pytest.param("!REPORT x", "!", "celebrate", id="upper case alias"),
        pytest.param("   !here", "!", "here", id="leading spaces before the prefix"),
        pytest.param("?here", "?", "here", id="custom prefix ?"),
        pytest.param("bot:here", "bot:", "here", id="multi-character prefix bot:"),
        pytest.param("BOT:here", "BOT:", "here", id="multi-character prefix is literal"),
    ],
)
def test_a_message_names_its_command(body: str, prefix: str, command: str) -> None:
    invocation = parse_invocation(body, prefix)
    assert isinstance(invocation, Invocation)
    assert invocation.spec.name == command


@pytest.mark.parametrize(
    ("body", "prefix"),
    [
        pytest.param("hello everyone", "!", id="plain text"),
        pytest.param("", "!", id="empty message"),
        pytest.param("!", "!", id="prefix alone"),
        pytest.param("!   ", "!", id="prefix and spaces"),
        pytest.param("!\nhere", "!", id="prefix then a new line"),
        pytest.param("say !here please", "!", id="prefix mid-sentence"),
        pytest.param("!here", "?", id="another bot's prefix"),
        pytest.param("?here", "bot:", id="single character of a longer prefix"),
        pytest.param("bot here", "bot:", id="prefix without its colon"),
    ],
)
def test_a_message_that_is_not_a_command_is_ignored(body: str, prefix: str) -> None:
    assert parse_invocation(body, prefix) is None


@pytest.mark.parametrize(
    ("body", "prefix"),
    [
        pytest.param("! here", "!", id="! here"),
        pytest.param("bot: here", "bot:", id="bot: here"),
    ],
)
def test_a_space_between_prefix_and_name_is_not_a_command(body: str, prefix: str) -> None:
    assert parse_invocation(body, prefix) is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("!update\tshipped it", id="tab"),
        pytest.param("!update\u00a0shipped it", id="no-break space"),
    ],
)
def test_any_whitespace_separates_the_name_from_its_arguments(body: str) -> None:
    assert parsed(body) == Text("shipped it")


@pytest.mark.parametrize(
    ("body", "unknown"),
    [
        pytest.param("!updat", Unknown("updat", "update"), id="updat suggests update"),
        pytest.param("!UPDAT", Unknown("updat", "update"), id="suggestion ignores case"),
        pytest.param("!agend x", Unknown("agend", "agenda"), id="agend suggests agenda"),
        pytest.param("!celebrat", Unknown("celebrat", "celebrate"), id="celebrat"),
        pytest.param("!reprot", Unknown("reprot", "report"), id="aliases are suggested too"),
        pytest.param("!endmeetin", Unknown("endmeetin", "endmeeting"), id="endmeetin"),
        pytest.param("!xyzzy", Unknown("xyzzy", None), id="far name has no suggestion"),
        pytest.param("!end", Unknown("end", None), id="too short to guess"),
    ],
)
def test_an_unknown_name_is_reported_with_the_closest_command(body: str, unknown: Unknown) -> None:
    assert parse_invocation(body, "!") == unknown


# --- the raw arguments handed to the command ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "arguments"),
    [
        pytest.param("!here", "", id="none"),
        pytest.param("!update shipped   it", "shipped   it", id="inner spacing kept as typed"),
        pytest.param("!update line one\nline two\n\nline four",
                     "line one\nline two\n\nline four", id="text lines after the first kept"),
        pytest.param("!update\nonly on the next line", "\nonly on the next line",
                     id="text starting on the next line"),
    ],
)
def test_arguments_are_everything_after_the_name(body: str, arguments: str) -> None:
    invocation = parse_invocation(body, "!")
    assert isinstance(invocation, Invocation)
    assert invocation.arguments == arguments


# --- each command's own syntax -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "command"),
    [
        pytest.param("!help", NoArguments(), id="help"),
        pytest.param("!when", NoArguments(), id="when"),
        pytest.param("!pass", NoArguments(), id="pass"),
        pytest.param("!endmeeting", NoArguments(), id="endmeeting"),
        pytest.param("!pass   ", NoArguments(), id="trailing spaces are not arguments"),
        pytest.param("!iam Ada Lovelace / Analytical Engines / @ada",
                     SetProfile(Profile("Ada Lovelace", "Analytical Engines", "@ada")),
                     id="iam name / affiliation / handle"),
        pytest.param("!iam Ada Lovelace", SetProfile(Profile("Ada Lovelace", "", "")),
                     id="iam name only"),
        pytest.param("!iam Ada/Engines/@ada", SetProfile(Profile("Ada", "Engines", "@ada")),
                     id="iam without spaces round the slashes"),
        pytest.param("!iam Ada / / @ada", SetProfile(Profile("Ada", "", "@ada")),
                     id="iam empty affiliation"),
        pytest.param("!iam Ada / Engines / @ada/extra/bits",
                     SetProfile(Profile("Ada", "Engines", "@ada/extra/bits")),
                     id="iam extra slashes stay in the handle"),
        pytest.param("!iam   Ada    Lovelace  /  Engines ",
                     SetProfile(Profile("Ada Lovelace", "Engines", "")),
                     id="iam runs of spaces collapse"),
        pytest.param("!here", Here(None), id="here alone uses the saved profile"),
        pytest.param("!here Grace Hopper / US Navy / @grace",
                     Here(Profile("Grace Hopper", "US Navy", "@grace")), id="here with a profile"),
        pytest.param("!update shipped the new parser", Text("shipped the new parser"),
                     id="update"),
        pytest.param("!update   padded   ", Text("padded"), id="update text is stripped"),
        pytest.param("!update first\nsecond\n\nfourth", Text("first\nsecond\n\nfourth"),
                     id="update keeps every line"),
        pytest.param("!celebrate Release 2.0 is out!", Text("Release 2.0 is out!"),
                     id="celebrate"),
        pytest.param("!report Release 2.0 is out!", Text("Release 2.0 is out!"), id="report"),
        pytest.param("!agenda", ListAgenda(), id="agenda alone lists the agenda"),
        pytest.param("!agenda   ", ListAgenda(), id="agenda with only spaces lists"),
        pytest.param("!agenda (10 min) Topic", AgendaItem("Topic", 10), id="agenda (10 min)"),
        pytest.param("!agenda (10min) Topic", AgendaItem("Topic", 10), id="agenda (10min)"),
        pytest.param("!agenda (10 mins) Topic", AgendaItem("Topic", 10), id="agenda (10 mins)"),
        pytest.param("!agenda (10 minutes) Topic", AgendaItem("Topic", 10),
                     id="agenda (10 minutes)"),
        pytest.param("!agenda (10 m) Topic", AgendaItem("Topic", 10), id="agenda (10 m)"),
        pytest.param("!agenda (10 MIN) Topic", AgendaItem("Topic", 10), id="agenda unit any case"),
        pytest.param("!agenda (10) Topic", AgendaItem("Topic", 10), id="agenda (10) bare number"),
        pytest.param("!agenda ( 10 min )Topic", AgendaItem("Topic", 10),
                     id="agenda spaces inside the brackets"),
        pytest.param("!agenda (1 min) Topic", AgendaItem("Topic", 1), id="agenda lowest estimate"),
        pytest.param(f"!agenda ({MAX_AGENDA_MINUTES} min) Topic",
                     AgendaItem("Topic", MAX_AGENDA_MINUTES), id="agenda highest estimate"),
        pytest.param("!agenda Release planning", AgendaItem("Release planning", None),
                     id="agenda without an estimate"),
        pytest.param("!agenda Topic (10 min)", AgendaItem("Topic (10 min)", None),
                     id="agenda estimate only counts at the start"),
        pytest.param("!agenda (1.5 min) Topic", AgendaItem("(1.5 min) Topic", None),
                     id="agenda a fraction is part of the topic"),
        pytest.param("!startmeeting", StartMeeting(None), id="startmeeting without a title"),
        pytest.param("!startmeeting  Extra   sync ", StartMeeting("Extra sync"),
                     id="startmeeting with a title"),
    ],
)
def test_each_command_parses_its_arguments(body: str, command: Any) -> None:
    assert parsed(body) == command


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("!help extra", "no arguments", id="help takes no arguments"),
        pytest.param("!when tomorrow", "no arguments", id="when takes no arguments"),
        pytest.param("!pass because", "no arguments", id="pass takes no arguments"),
        pytest.param("!endmeeting now", "no arguments", id="endmeeting takes no arguments"),
        pytest.param("!iam", "say how you want to appear", id="iam needs a profile"),
        pytest.param("!iam / Engines / @ada", "name comes first", id="iam leading slash"),
        pytest.param("!here / Engines", "name comes first", id="here leading slash"),
        pytest.param("!update", "text is missing", id="update without text"),
        pytest.param("!update    \n  ", "text is missing", id="update with only blanks"),
        pytest.param("!celebrate", "text is missing", id="celebrate without text"),
        pytest.param("!agenda (10 min)", "topic is missing", id="agenda estimate without topic"),
        pytest.param("!agenda (10 min)   ", "topic is missing",
                     id="agenda estimate and spaces"),
        pytest.param("!agenda (0 min) Topic", f"between 1 and {MAX_AGENDA_MINUTES}",
                     id="agenda zero minutes"),
        pytest.param(f"!agenda ({MAX_AGENDA_MINUTES + 1} min) Topic",
                     f"between 1 and {MAX_AGENDA_MINUTES}", id="agenda over the longest estimate"),
        pytest.param("!startmeeting " + "t" * 201, "200 characters", id="startmeeting long title"),
    ],
)
def test_bad_arguments_are_a_usage_error_that_says_why(body: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parsed(body)


def test_an_estimate_too_long_to_read_is_refused_like_any_other_too_large_one() -> None:
    with pytest.raises(UsageError, match=f"between 1 and {MAX_AGENDA_MINUTES}"):
        parsed("!agenda (10000 min) Topic")


@pytest.mark.parametrize(
    ("body", "what"),
    [
        pytest.param("!update ", "text", id="update"),
        pytest.param("!celebrate ", "text", id="celebrate"),
        pytest.param("!agenda ", "agenda item", id="agenda"),
        pytest.param("!agenda (5 min) ", "agenda item", id="agenda with an estimate"),
        pytest.param("!iam ", "profile", id="iam"),
    ],
)
def test_text_over_the_limit_is_refused_naming_the_limit(body: str, what: str) -> None:
    assert parsed(body + "x" * MAX_TEXT) is not None  # exactly at the limit is fine
    with pytest.raises(UsageError) as error:
        parsed(body + "x" * (MAX_TEXT + 1))
    assert str(error.value) == (
        f"that {what} is {MAX_TEXT + 1} characters; the limit is {MAX_TEXT}"
    )


# --- replies from older clients ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "stripped"),
    [
        pytest.param("> <@a:b> quoted\n\n!here", "!here", id="fallback then blank line"),
        pytest.param("> <@a:b> quoted\n> second quoted line\n\n!update done\nmore",
                     "!update done\nmore", id="several quoted lines, text keeps its lines"),
        pytest.param("> <@a:b> quoted\n!here", "!here", id="fallback without a blank line"),
        pytest.param("> <@a:b> quoted", "", id="only a fallback"),
        pytest.param("!here", "!here", id="no fallback"),
        pytest.param("!update > not a quote", "!update > not a quote",
                     id="a > later in the line is text"),
        pytest.param(">not a fallback", ">not a fallback", id="> without a space"),
    ],
)
def test_strip_reply_fallback(body: str, stripped: str) -> None:
    assert strip_reply_fallback(body) == stripped


def test_a_reply_to_a_message_still_reaches_its_command() -> None:
    body = strip_reply_fallback("> <@ada:example.org> can you add yourself?\n\n!here")
    invocation = parse_invocation(body, "!")
    assert isinstance(invocation, Invocation)
    assert invocation.spec.name == "here"
