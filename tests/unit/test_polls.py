"""Votes as Matrix polls: parsing `!vote`, the poll events' shapes (MSC3381, as Element
sends them), counting by the MSC's rules, and the bot's whole flow on real SQLite with a
transport that records what it would send."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from chatbot.bot import (
    IncomingDeparture,
    IncomingMessage,
    IncomingPollEnd,
    IncomingPollResponse,
    IncomingRedaction,
    MeetingBot,
)
from chatbot.commands import (
    AskVote,
    CastVote,
    CloseVote,
    UsageError,
    parse_invocation,
    text_vote_answer,
)
from chatbot.config import parse_config
from chatbot.matrix import incoming_event, message_content
from chatbot.meetings import Rooms
from chatbot.model import (
    Attendee,
    Entry,
    EntryKind,
    EventId,
    Meeting,
    MeetingRecord,
    Profile,
    RoomId,
    UserId,
    VoteResult,
)
from chatbot.polls import (
    END_TYPE,
    START_TYPE,
    TEXT_BLOCK,
    YES_NO_ABSTAIN,
    Answer,
    Ballot,
    count,
    end_content,
    option_answers,
    refer_to,
    response_selection,
    result_line,
    start_content,
)
from chatbot.render import note_context
from chatbot.store import Store

from ..support.clock import ManualClock
from ..support.transports import RecordingTransport

ROOM = RoomId("!room:example.org")
BOT = "@bot:example.org"
CHAIR = UserId("@chair:example.org")
T0 = datetime(2026, 6, 18, 9, 0, tzinfo=UTC)
A, B, C, D = (UserId(f"@{name}:example.org") for name in ("ada", "bob", "cy", "dee"))


def parsed(body: str) -> Any:
    invocation = parse_invocation(body, "!")
    assert invocation is not None and hasattr(invocation, "spec"), body
    return invocation.spec.parse(invocation.arguments)


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "command"),
    [
        pytest.param("!vote Ship on Friday?", AskVote("Ship on Friday?", YES_NO_ABSTAIN),
                     id="no options: yes / no / abstain"),
        pytest.param("!vote Lunch? / Pizza / Sushi",
                     AskVote("Lunch?", (Answer("option-1", "Pizza"), Answer("option-2", "Sushi"))),
                     id="options"),
        pytest.param("!vote  Lunch?  /Pizza/   Sushi  ", AskVote("Lunch?", option_answers(
            ["Pizza", "Sushi"])), id="spacing around slashes"),
        pytest.param("!vote close", CloseVote(), id="close"),
        pytest.param("!vote CLOSE", CloseVote(), id="close in capitals"),
        pytest.param("!vote +1", CastVote("+1"), id="text vote yes"),
        pytest.param("!vote -1", CastVote("-1"), id="text vote no"),
        pytest.param("!vote 0", CastVote("0"), id="text vote abstain"),
        pytest.param("!vote 2", CastVote("2"), id="text vote by number"),
    ],
)
def test_vote_parses(body: str, command: Any) -> None:
    assert parsed(body) == command


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("!vote", "say the question", id="nothing"),
        pytest.param("!vote \u202e", "say the question", id="only a control character"),
        pytest.param("!vote / A / B", "the question comes first", id="no question"),
        pytest.param("!vote Lunch? / Pizza", "at least two options", id="one option"),
        pytest.param("!vote Lunch? / Pizza / ", "an option is empty", id="an empty option"),
        pytest.param("!vote Lunch? / Pizza / pizza", "the same", id="the same option twice"),
        pytest.param("!vote Q? / " + " / ".join(f"o{n}" for n in range(21)),
                     "21 options; the limit is 20", id="too many options"),
        pytest.param("!vote " + "q" * 301, "the limit is 300", id="a long question"),
        pytest.param("!vote Q? / A / " + "b" * 101, "the limit is 100", id="a long option"),
    ],
)
def test_a_malformed_vote_says_why(body: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parsed(body)


@pytest.mark.parametrize(
    ("choice", "answers", "picked"),
    [
        ("+1", YES_NO_ABSTAIN, "yes"), ("-1", YES_NO_ABSTAIN, "no"),
        ("0", YES_NO_ABSTAIN, "abstain"), ("2", YES_NO_ABSTAIN, "no"),
        ("2", option_answers(["a", "b"]), "option-2"),
        ("3", option_answers(["a", "b"]), None), ("+1", option_answers(["a", "b"]), None),
        ("0", option_answers(["a", "b"]), None),
    ],
)
def test_a_text_vote_picks_an_answer_of_the_open_poll(
    choice: str, answers: tuple[Answer, ...], picked: str | None,
) -> None:
    assert text_vote_answer(choice, answers) == picked


# --- the events' shapes ------------------------------------------------------------------------


def test_the_start_event_is_the_msc3381_form_element_renders() -> None:
    content = start_content("Lunch?", option_answers(["Pizza", "Sushi"]), "!")
    # As in MSC3381's unstable examples (and matrix-js-sdk's PollStartEvent).
    assert content[START_TYPE] == {
        "question": {TEXT_BLOCK: "Lunch?"},
        "kind": "org.matrix.msc3381.poll.disclosed",
        "max_selections": 1,
        "answers": [{"id": "option-1", TEXT_BLOCK: "Pizza"},
                    {"id": "option-2", TEXT_BLOCK: "Sushi"}],
    }
    assert content[TEXT_BLOCK].startswith("Lunch?\n1. Pizza\n2. Sushi\n")
    assert "`!vote N`" in content[TEXT_BLOCK] and content["body"] == content[TEXT_BLOCK]
    yes_no = start_content("Ship?", YES_NO_ABSTAIN, "!")
    assert [a[TEXT_BLOCK] for a in yes_no[START_TYPE]["answers"]] == ["yes", "no", "abstain"]
    assert "`!vote +1` (yes)" in yes_no[TEXT_BLOCK]


def test_the_end_event_refers_to_the_start_and_says_the_result() -> None:
    tally = count(YES_NO_ABSTAIN, [Ballot(A, "yes", T0)], None)
    content = refer_to(end_content("Ship?", tally), "$start")
    assert content["m.relates_to"] == {"rel_type": "m.reference", "event_id": "$start"}
    assert content[END_TYPE] == {}
    assert content[TEXT_BLOCK] == "The poll has closed. Ship? — yes 1, no 0, abstain 0 (1 voter)"


def test_poll_jobs_are_sent_as_their_own_event_type() -> None:
    from chatbot.store import OutboxItem
    item = OutboxItem(1, ROOM, "poll_start", {"poll_id": 1, "type": START_TYPE,
                                              "content": {"x": 1}}, T0)
    assert message_content(item) == (START_TYPE, {"x": 1})


@pytest.mark.parametrize(
    ("event_type", "content", "selection"),
    [
        ("org.matrix.msc3381.poll.response",
         {"org.matrix.msc3381.poll.response": {"answers": ["yes"]}}, "yes"),
        ("m.poll.response", {"m.selections": ["no"]}, "no"),
        ("m.poll.response", {"m.selections": ["no", "yes"]}, "no"),
        ("m.poll.response", {"m.selections": []}, None),
        ("org.matrix.msc3381.poll.response", {"org.matrix.msc3381.poll.response": {}}, None),
        ("m.poll.response", {"m.selections": [7]}, ""),
    ],
    ids=["unstable", "stable", "truncated to one", "empty", "no answers", "not a string"],
)
def test_a_response_names_its_first_selection(
    event_type: str, content: dict[str, Any], selection: str | None,
) -> None:
    assert response_selection(event_type, content) == selection


def test_poll_responses_reach_the_core_in_either_form() -> None:
    relation = {"rel_type": "m.reference", "event_id": "$poll"}
    unstable = {"type": "org.matrix.msc3381.poll.response", "sender": A, "event_id": "$r1",
                "origin_server_ts": 1_780_000_000_000, "content": {
                    "m.relates_to": relation,
                    "org.matrix.msc3381.poll.response": {"answers": ["yes"]}}}
    incoming = incoming_event(unstable, ROOM, BOT, lambda user: user)
    assert isinstance(incoming, IncomingPollResponse)
    assert (incoming.poll_start, incoming.answer, incoming.sender) == ("$poll", "yes", A)
    assert incoming.sent_at == datetime.fromtimestamp(1_780_000_000, UTC)
    stable = unstable | {"type": "m.poll.response",
                         "content": {"m.relates_to": relation, "m.selections": ["no"]}}
    parsed_stable = incoming_event(stable, ROOM, BOT, lambda user: user)
    assert isinstance(parsed_stable, IncomingPollResponse) and parsed_stable.answer == "no"
    unrelated = unstable | {"content": {"org.matrix.msc3381.poll.response": {"answers": ["y"]}}}
    assert incoming_event(unrelated, ROOM, BOT, lambda user: user) is None
    for end_type in ("org.matrix.msc3381.poll.end", "m.poll.end"):
        end = {"type": end_type, "sender": CHAIR, "event_id": "$end",
               "content": {"m.relates_to": relation, END_TYPE: {}}}
        assert incoming_event(end, ROOM, BOT, lambda user: user) == IncomingPollEnd(
            ROOM, EventId("$end"), CHAIR, EventId("$poll"))


@pytest.mark.parametrize(
    ("sender", "user", "membership", "departs"),
    [(A, A, "leave", True), (CHAIR, A, "leave", True), (CHAIR, A, "ban", True),
     (A, A, "join", False), (CHAIR, BOT, "leave", False)],
    ids=["left", "kicked", "banned", "joined", "the bot itself"],
)
def test_a_departure_reaches_the_core(sender: str, user: str, membership: str,
                                      departs: bool) -> None:
    event = {"type": "m.room.member", "sender": sender, "state_key": user, "event_id": "$m",
             "content": {"membership": membership}}
    incoming = incoming_event(event, ROOM, BOT, lambda user: user)
    assert incoming == (IncomingDeparture(ROOM, EventId("$m"), UserId(user)) if departs
                        else None)


# --- counting ----------------------------------------------------------------------------------


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_the_latest_answer_of_each_person_counts() -> None:
    ballots = [Ballot(A, "no", at(1)), Ballot(A, "yes", at(3)), Ballot(B, "no", at(2)),
               Ballot(B, "yes", at(1))]  # an older answer arriving later does not win
    tally = count(YES_NO_ABSTAIN, ballots, at(10))
    assert dict((a.id, n) for a, n in tally.counts) == {"yes": 1, "no": 1, "abstain": 0}
    assert tally.voters == 2


def test_equal_send_times_go_by_arrival() -> None:
    ballots = [Ballot(A, "no", at(1), order=2), Ballot(A, "yes", at(1), order=1)]
    assert count(YES_NO_ABSTAIN, ballots, None).counts[1][1] == 1


def test_answers_after_the_close_and_from_non_members_do_not_count() -> None:
    ballots = [Ballot(A, "yes", at(1)), Ballot(A, "no", at(11)),  # changed too late
               Ballot(B, "no", at(12)),  # answered too late
               Ballot(C, "yes", at(2))]  # not in the room
    tally = count(YES_NO_ABSTAIN, ballots, at(10), members={A, B})
    assert [n for _, n in tally.counts] == [1, 0, 0] and tally.voters == 1


def test_a_spoiled_or_empty_latest_answer_is_no_vote() -> None:
    ballots = [Ballot(A, "yes", at(1)), Ballot(A, "bogus", at(2)),
               Ballot(B, "no", at(1)), Ballot(B, None, at(2)), Ballot(C, "", at(1))]
    tally = count(YES_NO_ABSTAIN, ballots, None)
    assert [n for _, n in tally.counts] == [0, 0, 0] and tally.voters == 0


def test_the_result_line() -> None:
    answers = (*option_answers(["Option A", "Option B"]), Answer("abstain", "abstain"))
    ballots = ([Ballot(UserId(f"@a{n}:x"), "option-1", at(1)) for n in range(5)]
               + [Ballot(UserId(f"@b{n}:x"), "option-2", at(1)) for n in range(2)]
               + [Ballot(UserId("@c:x"), "abstain", at(1))])
    assert result_line("Question?", count(answers, ballots, None)) == (
        "Question? — Option A 5, Option B 2, abstain 1 (8 voters)")


# --- the note ------------------------------------------------------------------------------


def test_votes_go_under_their_item_or_among_the_decisions_escaped() -> None:
    meeting = Meeting(1, "team", ROOM, "Team", T0, T0, at(30), None)
    item = Entry(EntryKind.AGENDA, A, "Ada", "Release", 10, EventId("$i"), T0, id=7)
    record = MeetingRecord(meeting, (Attendee(A, Profile("Ada")),), (item,), votes=(
        VoteResult("Ship *now*? — yes 2, no 0, abstain 0 (2 voters)", item_id=7),
        VoteResult("[Lunch](http://x)? — a 1, b 0 (1 voter)", item_id=None),
    ))
    context = note_context(record, ZoneInfo("UTC"), {})
    assert context["agenda"][0].details == (
        r"**Vote:** Ship \*now\*? — yes 2, no 0, abstain 0 (2 voters)",)
    assert context["decisions"] == [r"**Vote:** \[Lunch\](http://x)? — a 1, b 0 (1 voter)"]


# --- the bot's flow on real SQLite -------------------------------------------------------------


class PollWorld:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clock = ManualClock(T0)
        self.transport = RecordingTransport()
        self.config = parse_config({
            "matrix": {"homeserver": "https://m.example.org", "user_id": BOT, "password": "x"},
            "meetings": [{"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
                          "start": "2026-06-18 09:00", "rrule": "FREQ=WEEKLY",
                          "chairs": [CHAIR]}],
        })
        self.events = 0
        self.stores: list[Store] = []

    async def start(self) -> MeetingBot:
        store = await Store.open(self.tmp_path / "bot.db")
        self.stores.append(store)
        self.bot = MeetingBot(Rooms(self.config, {"team": ROOM}), store,
                              self.tmp_path / "notes", self.transport, clock=self.clock)
        return self.bot

    async def say(self, sender: UserId, body: str) -> EventId:
        self.events += 1
        event_id = EventId(f"$m{self.events}")
        await self.bot.handle(IncomingMessage(ROOM, event_id, sender, sender[1:4], body,
                                              sent_at=self.clock()))
        await self.bot.deliver_due()
        return event_id

    async def answer(self, sender: UserId, poll: EventId, answer: str | None,
                     event_id: str | None = None) -> EventId:
        self.events += 1
        response = EventId(event_id or f"$r{self.events}")
        await self.bot.handle(IncomingPollResponse(ROOM, response, sender, poll, answer,
                                                   sent_at=self.clock()))
        return response

    def sent(self, kind: str) -> list[tuple[str, Any]]:
        return [(f"$sent{number}", item) for number, item in enumerate(self.transport.sent, 1)
                if item.kind == kind]

    def replies(self) -> list[str]:
        return [item.payload["text"] for item in self.transport.sent if item.kind == "reply"]


@pytest.fixture
async def poll_world(tmp_path: Path) -> AsyncIterator[PollWorld]:
    world = PollWorld(tmp_path)
    try:
        yield world
    finally:
        for store in world.stores:  # a store closed by the test closes again harmlessly
            await store.close()


async def test_a_poll_from_ask_to_note(poll_world: PollWorld) -> None:
    world = poll_world
    await world.start()
    await world.say(CHAIR, "!startmeeting")
    await world.say(A, "!agenda Release")
    await world.say(CHAIR, "!next")
    await world.say(A, "!vote Ship on Friday?")
    ((start_id, start),) = world.sent("poll_start")
    assert start.payload["type"] == START_TYPE
    assert start.payload["content"][START_TYPE]["question"] == {TEXT_BLOCK: "Ship on Friday?"}

    await world.say(B, "!vote Another question?")
    assert "A vote is open already" in world.replies()[-1]

    world.clock.advance(seconds=5)
    await world.answer(A, EventId(start_id), "no")
    world.clock.advance(seconds=5)
    await world.answer(A, EventId(start_id), "yes")  # changed their mind: this one counts
    await world.answer(B, EventId(start_id), "no")
    await world.answer(C, EventId("$some-other-event"), "no")  # not this poll
    await world.say(C, "!vote +1")  # a text vote
    await world.say(D, "!vote 0")
    await world.say(D, "!vote -1")  # text votes change like poll answers
    await world.say(B, "!vote 7")
    assert "This vote takes `!vote +1` (yes)" in world.replies()[-1]

    await world.say(B, "!vote close")
    assert "Only the vote's asker or a chair" in world.replies()[-1]
    world.clock.advance(seconds=5)
    await world.say(A, "!vote close")
    ((_, end),) = world.sent("poll_end")
    assert end.payload["type"] == END_TYPE
    assert end.payload["content"]["m.relates_to"] == {"rel_type": "m.reference",
                                                      "event_id": start_id}
    expected = "Ship on Friday? — yes 2, no 2, abstain 0 (4 voters)"
    assert end.payload["content"][TEXT_BLOCK] == f"The poll has closed. {expected}"

    await world.answer(C, EventId(start_id), "no")  # after the close: not counted
    await world.say(C, "!vote -1")
    assert "No vote is open here" in world.replies()[-1]
    await world.say(CHAIR, "!endmeeting")
    note = next(item.payload["text"] for item in world.transport.sent
                if "## Roll call" in item.payload.get("text", ""))
    assert f"    - **Vote:** {expected}" in note
    assert "## Decisions" not in note


async def test_the_meeting_end_closes_the_open_poll_into_decisions(
        poll_world: PollWorld) -> None:
    world = poll_world
    await world.start()
    await world.say(CHAIR, "!startmeeting")
    await world.say(A, "!vote Lunch? / Pizza / Sushi")
    ((start_id, _),) = world.sent("poll_start")
    await world.answer(B, EventId(start_id), "option-2")
    await world.answer(C, EventId(start_id), "option-9")  # no such answer: spoiled
    await world.say(CHAIR, "!endmeeting")
    ((_, end),) = world.sent("poll_end")
    expected = "Lunch? — Pizza 0, Sushi 1 (1 voter)"
    assert end.payload["content"][TEXT_BLOCK].endswith(expected)
    note = next(item.payload["text"] for item in world.transport.sent
                if "## Roll call" in item.payload.get("text", ""))
    assert f"## Decisions\n\n- **Vote:** {expected}" in note


async def test_a_restart_mid_poll_loses_nothing_and_replays_count_once(
        poll_world: PollWorld) -> None:
    world = poll_world
    bot = await world.start()
    await world.say(CHAIR, "!startmeeting")
    await world.say(A, "!vote Ship?")
    ((start_id, _),) = world.sent("poll_start")
    await world.answer(A, EventId(start_id), "yes", event_id="$a")
    await world.answer(B, EventId(start_id), "no", event_id="$b")
    await world.say(C, "!vote +1")
    await bot.store.close()

    bot = await world.start()
    await world.answer(A, EventId(start_id), "yes", event_id="$a")  # replayed after restart
    await world.answer(B, EventId(start_id), "no", event_id="$b")
    await bot.handle(IncomingRedaction(ROOM, EventId("$redact"), B, EventId("$b")))
    await world.say(D, "!vote -1")
    await world.say(UserId("@eve:example.org"), "!vote -1")
    await bot.handle(IncomingDeparture(ROOM, EventId("$left"), UserId("@eve:example.org")))
    await world.say(CHAIR, "!vote close")
    ((_, end),) = world.sent("poll_end")
    assert end.payload["content"][TEXT_BLOCK].endswith(
        "Ship? — yes 2, no 1, abstain 0 (3 voters)")
    await bot.store.close()


async def test_no_poll_without_an_open_meeting(poll_world: PollWorld) -> None:
    world = poll_world
    await world.start()
    await world.say(A, "!vote Ship?")
    assert world.sent("poll_start") == []
    assert "No meeting is open here" in world.replies()[-1]
    await world.bot.store.close()


async def test_a_poll_ended_from_a_chairs_client_is_counted_up_to_that_end(
    poll_world: PollWorld,
) -> None:
    world = poll_world
    bot = await world.start()
    await world.say(CHAIR, "!startmeeting")
    await world.say(A, "!vote Ship?")
    ((start_id, _),) = world.sent("poll_start")
    await world.answer(A, EventId(start_id), "yes")
    ended_at = world.clock()
    world.clock.advance(seconds=2)
    await world.answer(B, EventId(start_id), "no")  # sent after the end event: not counted

    await bot.handle(IncomingPollEnd(ROOM, EventId("$end1"), C, EventId(start_id), ended_at))
    await bot.deliver_due()
    assert world.sent("poll_end") == [], "someone neither asker nor chair cannot end it"

    await bot.handle(IncomingPollEnd(ROOM, EventId("$end2"), CHAIR, EventId(start_id), ended_at))
    await bot.deliver_due()
    ((_, end),) = world.sent("poll_end")
    assert end.payload["content"][TEXT_BLOCK].endswith("Ship? — yes 1, no 0, abstain 0 (1 voter)")
    await bot.handle(IncomingPollEnd(ROOM, EventId("$end3"), CHAIR, EventId(start_id), ended_at))
    await bot.deliver_due()
    assert len(world.sent("poll_end")) == 1, "a poll ends once"
    await bot.store.close()
