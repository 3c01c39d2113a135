"""The update round: its order and turns as plain functions, its parsing, and its
states through the bot's core on a real SQLite store with a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from chatbot.bot import ROUND_TURN, IncomingMessage, MeetingBot
from chatbot.commands import (
    REGISTRY,
    Invocation,
    RoundCommand,
    UsageError,
    parse_invocation,
    pills_as_ids,
)
from chatbot.config import parse_config
from chatbot.matrix import message_content
from chatbot.matrix.intake import pills_of
from chatbot.meetings import JobKind, Rooms
from chatbot.model import EventId, Pill, RoomId, RoundOutcome, RoundPlace, UserId
from chatbot.render import message_parts, render_start, update_time
from chatbot.rounds import end_turn, next_turn, round_order, still_to_come, turn_line
from chatbot.store import OutboxItem, Store
from tests.support.clock import ManualClock
from tests.support.transports import RecordingTransport

ROOM = RoomId("!room:example.org")
CHAIR = UserId("@chair:example.org")
ADA, BO, CY, DEE = (UserId(f"@{name}:example.org") for name in ("ada", "bo", "cy", "dee"))
NOW = datetime(2026, 6, 18, 9, 0, tzinfo=UTC)
ROLL_CALL = [(ADA, "Ada"), (BO, "Bo"), (CY, "Cy")]


# --- pure ------------------------------------------------------------------------------


def test_the_order_is_the_roll_call_in_arrival_order() -> None:
    assert round_order(ROLL_CALL) == [RoundPlace(ADA, "Ada"), RoundPlace(BO, "Bo"),
                                      RoundPlace(CY, "Cy")]


def test_a_named_order_is_taken_as_given_once_each_with_roll_call_names() -> None:
    assert round_order(ROLL_CALL, explicit=[CY, DEE, CY, ADA]) == [
        RoundPlace(CY, "Cy"), RoundPlace(DEE, DEE), RoundPlace(ADA, "Ada")]


def test_a_shuffle_is_the_same_people_in_an_order_fixed_by_its_seed() -> None:
    people = [(UserId(f"@p{n}:example.org"), f"P{n}") for n in range(12)]
    shuffled = round_order(people, shuffle_seed="$event")
    assert sorted(place.user_id for place in shuffled) == sorted(user for user, _ in people)
    assert shuffled != round_order(people)
    assert shuffled == round_order(people, shuffle_seed="$event"), "a replay: the same order"


def test_the_next_turn_passes_over_who_is_done_and_marks_them() -> None:
    places = tuple(round_order(ROLL_CALL))
    changed, passed_over, following = next_turn(places, done={ADA})
    assert following == RoundPlace(BO, "Bo")
    assert passed_over == [RoundPlace(ADA, "Ada", RoundOutcome.AHEAD)]
    assert changed[0].outcome is RoundOutcome.AHEAD and changed[1].outcome is None


def test_the_round_is_over_when_every_turn_has_ended() -> None:
    places = end_turn(end_turn(tuple(round_order(ROLL_CALL[:2])), ADA, RoundOutcome.SPOKE),
                      BO, RoundOutcome.TIME_UP)
    assert next_turn(places, done=set()) == (places, [], None)
    assert end_turn(places, ADA, RoundOutcome.SKIPPED) == places, "an ended turn stays ended"


def test_the_turn_line_mentions_counts_and_names_who_is_next() -> None:
    places = tuple(round_order(ROLL_CALL))
    assert turn_line(places, places[0], 60, done=set()) == (
        "[Ada](https://matrix.to/#/@ada:example.org), your 60 seconds (1 of 3; next: Bo)")
    # Bo is done already, so Cy is named next; Cy's own turn is the last.
    assert turn_line(places, places[0], 60, done={BO}).endswith("(1 of 3; next: Cy)")
    assert turn_line(places, places[2], 45, done=set()).endswith("45 seconds (3 of 3, last)")
    assert still_to_come(places, ADA, {CY}) == [RoundPlace(BO, "Bo")]


def test_a_name_cannot_break_out_of_its_mention() -> None:
    place = RoundPlace(UserId("@x(y):example.org"), "Eve](https://evil.example)[")
    line = turn_line((place,), place, 60, done=set())
    assert line.startswith("[Eve\\](https://evil.example)\\[](https://matrix.to/#/@x%28y%29:")
    (part,) = message_parts(line)
    assert part.html.startswith('<p><a href="https://matrix.to/#/@x%28y%29:example.org" '
                                'rel="noopener noreferrer">Eve](https://evil.example)[</a>, ')


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("!round", RoundCommand("start")),
    ("!round shuffle", RoundCommand("shuffle")),
    ("!round STOP", RoundCommand("stop")),
    ("!round @ada:example.org @bo:example.org:", RoundCommand("start", (ADA, BO))),
    ("!round  @cy:example.org,", RoundCommand("start", (CY,))),
])
def test_round_commands_parse(text: str, expected: RoundCommand) -> None:
    invocation = parse_invocation(text, "!")
    assert isinstance(invocation, Invocation)
    assert invocation.spec.parse(invocation.arguments) == expected


@pytest.mark.parametrize("text", ["!round everyone", "!round shuffle stop",
                                  "!round @ada:example.org bo", "!round @" + "a" * 300 + ":x"])
def test_bad_round_commands_are_refused_with_the_syntax(text: str) -> None:
    invocation = parse_invocation(text, "!")
    assert isinstance(invocation, Invocation)
    with pytest.raises(UsageError):
        invocation.spec.parse(invocation.arguments)


@pytest.mark.parametrize("text", ["!done", "!skip"])
def test_done_and_skip_take_no_arguments(text: str) -> None:
    invocation = parse_invocation(text + " now", "!")
    assert isinstance(invocation, Invocation)
    with pytest.raises(UsageError):
        invocation.spec.parse(invocation.arguments)


# --- people named with pills --------------------------------------------------------------


def element_pills(*people: tuple[UserId, str], before: str = "!round ") -> dict[str, object]:
    """A message as Element sends it when people are picked from the @ list: the display
    names in the body, the pills in the HTML, the ids in `m.mentions` (as a set: sorted)."""
    links = " ".join(f'<a href="https://matrix.to/#/{user}">{name}</a>' for user, name in people)
    return {"msgtype": "m.text", "body": before + " ".join(name for _, name in people),
            "format": "org.matrix.custom.html", "formatted_body": before + links,
            "m.mentions": {"user_ids": sorted(user for user, _ in people)}}


def test_pills_are_read_in_the_order_they_stand_not_the_order_of_m_mentions() -> None:
    content = element_pills((CY, "Cy"), (ADA, "Ada Lovelace"), (BO, "Bo &amp; Co"))
    assert pills_of(content) == (Pill(CY, "Cy"), Pill(ADA, "Ada Lovelace"), Pill(BO, "Bo & Co"))


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param({"body": "!round Ada", "format": "org.matrix.custom.html",
                  "formatted_body": '!round <a href="https://matrix.to/#/%40ada%3Aexample.org'
                                    '?via=example.org">Ada</a>'},
                 (Pill(ADA, "Ada"),), id="percent-encoded, no m.mentions: every link"),
    pytest.param({"body": "> <@bo:example.org> hi\n\n!round Ada", "format":
                  "org.matrix.custom.html", "formatted_body":
                  '<mx-reply><blockquote><a href="https://matrix.to/#/@bo:example.org">Bo</a>'
                  '</blockquote></mx-reply>!round <a href="https://matrix.to/#/@ada:example.org">'
                  'Ada</a>', "m.mentions": {"user_ids": [BO, ADA]}},
                 (Pill(ADA, "Ada"),), id="a reply's quoted links are not this message's"),
    pytest.param({"body": "!round Ada", "format": "org.matrix.custom.html",
                  "formatted_body": '!round <a href="https://matrix.to/#/@ada:example.org">Ada'
                                    '</a>', "m.mentions": {}},
                 (), id="a link m.mentions does not list is no pill"),
    pytest.param({"body": "!round Ada", "formatted_body": "<a href='https://matrix.to/#/@a:b'>"},
                 (), id="no HTML format"),
    pytest.param({"body": "!round", "format": "org.matrix.custom.html",
                  "formatted_body": '<a href="https://evil.example/#/@ada:example.org">x</a>'
                                    '<a href="https://matrix.to/#/!room:example.org">r</a>'},
                 (), id="only user permalinks"),
])
def test_pills_of_other_shapes(content: dict[str, object], expected: tuple[Pill, ...]) -> None:
    assert pills_of(content) == expected


@pytest.mark.parametrize(("arguments", "pills", "expected"), [
    ("Cy Ada Lovelace", [Pill(CY, "Cy"), Pill(ADA, "Ada Lovelace")],
     RoundCommand("start", (CY, ADA))),
    ("@Bo, @cy:example.org and Ada", [Pill(BO, "Bo"), Pill(ADA, "Ada")],
     RoundCommand("start", (BO, CY, ADA))),
    ("Ada Ada", [Pill(ADA, "Ada"), Pill(BO, "Ada")], RoundCommand("start", (ADA, BO))),
    ("Bob: Bo", [Pill(CY, "Bob"), Pill(BO, "Bo")], RoundCommand("start", (CY, BO))),
    ("@Bob, Bo", [Pill(CY, "Bob"), Pill(BO, "Bo")], RoundCommand("start", (CY, BO))),
])
def test_pills_stand_for_their_people_where_they_are(
        arguments: str, pills: list[Pill], expected: RoundCommand) -> None:
    assert _round_of(pills_as_ids(arguments, pills)) == expected


def _round_of(arguments: str) -> RoundCommand:
    invocation = parse_invocation("!round " + arguments, "!")
    assert isinstance(invocation, Invocation)
    command = invocation.spec.parse(invocation.arguments)
    assert isinstance(command, RoundCommand)
    return command


def test_who_could_not_be_matched_is_named_back() -> None:
    with pytest.raises(UsageError) as refused:
        _round_of(pills_as_ids("Bo Cy Dee, Eve*", [Pill(BO, "Bo")]))
    assert str(refused.value).startswith("I could not match “Cy Dee”, “Eve\\*” to anyone: "
                                         "name each person with a pill")


# --- through the bot ---------------------------------------------------------------------


class Harness:
    def __init__(self, store: Store, clock: ManualClock) -> None:
        config = parse_config({
            "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                       "password": "x"},
            "meetings": [{"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
                          "start": "2026-06-18 09:00", "rrule": "FREQ=WEEKLY",
                          "chairs": [CHAIR], "update_seconds": 30}],
        })
        self.store, self.clock = store, clock
        self.transport = RecordingTransport()
        self.bot = MeetingBot(Rooms(config, {"team": ROOM}), store, Path("/nonexistent"),
                              self.transport, clock=clock)
        self.count = 0

    async def say(self, sender: UserId, body: str) -> None:
        self.count += 1
        name = sender.split(":")[0].lstrip("@").title()
        await self.bot.handle(IncomingMessage(ROOM, EventId(f"$m{self.count}"), sender, name,
                                              body))

    async def sent(self) -> list[str]:
        """The texts sent since the last call (turn lines' clocks start at the time of
        sending, which the transport reports as the clock's now)."""
        before = len(self.transport.sent)
        self.transport.sent_at = self.clock()
        while (await self.bot.deliver_due())[0]:
            pass
        return [str(item.payload.get("text", "")) for item in self.transport.sent[before:]
                if item.kind != "react"]

    async def time_up_jobs(self) -> list[tuple[datetime, str | None]]:
        return [(job.run_at, job.user_id) for job in await self.bot.plan()
                if job.kind is JobKind.TIME_UP]

    async def run_time_up(self) -> None:
        (job,) = [job for job in await self.bot.plan() if job.kind is JobKind.TIME_UP]
        await self.bot.run_job(job)


@pytest.fixture
async def harness(store: Store) -> AsyncIterator[Harness]:
    yield Harness(store, ManualClock(NOW))


async def test_a_round_from_start_to_end(harness: Harness) -> None:
    await harness.say(CHAIR, "!startmeeting")
    await harness.say(BO, "!update posted before the round")
    for person in (ADA, BO, CY):
        await harness.say(person, "!here")
    await harness.sent()

    await harness.say(CHAIR, "!round")
    (line,) = await harness.sent()
    assert line == ("**Update round** (3 people). [Ada](https://matrix.to/#/@ada:example.org), "
                    "your 30 seconds (1 of 3; next: Cy)")
    turn = next(item for item in harness.transport.sent if item.kind == ROUND_TURN)
    assert turn.payload["mentions"] == [ADA]
    assert await harness.time_up_jobs() == [(NOW + timedelta(seconds=30), ADA)]

    harness.clock.advance(seconds=5)
    await harness.say(DEE, "!here")  # a late arrival: added at the end
    await harness.say(ADA, "!update shipped")
    (line,) = await harness.sent()
    assert line.startswith("Bo is done already (update posted). [Cy]")
    assert line.endswith("(3 of 4; next: Dee)")

    await harness.say(CY, "!done")
    (line,) = await harness.sent()
    assert line.endswith("your 30 seconds (4 of 4, last)")
    (deadline, who), = await harness.time_up_jobs()
    assert who == DEE and deadline == harness.clock() + timedelta(seconds=30)

    harness.clock.advance(seconds=29)
    await harness.run_time_up()  # early: nothing
    assert await harness.sent() == []
    harness.clock.advance(seconds=1)
    await harness.run_time_up()
    assert await harness.sent() == [
        "⏱ Time is up, Dee. That was everyone: the update round is over."]
    assert await harness.time_up_jobs() == []

    meeting = await harness.store.open_meeting_in_room(ROOM)
    assert meeting is not None
    found = await harness.store.get_round(meeting.id)
    assert found is not None and not found.is_active
    assert [place.outcome for place in found.places] == [
        RoundOutcome.SPOKE, RoundOutcome.AHEAD, RoundOutcome.SPOKE, RoundOutcome.TIME_UP]

    await harness.say(CHAIR, "!endmeeting")
    note = next(text for text in await harness.sent() if text.startswith("# Team"))
    # In roll-call order, not the order the updates came (Bo's came first).
    assert ("## Quick updates\n\n- **Ada:** shipped\n- **Bo:** posted before the round\n"
            "- **Cy:** (spoke on the call)\n- **Dee:** no update\n") in note


@pytest.mark.parametrize(("seconds", "said"), [
    (1, "1 second"), (30, "30 seconds"), (60, "60 seconds"), (90, "90 seconds"),
    (120, "2 minutes"), (150, "2 minutes 30 seconds"), (3600, "1 hour"),
])
def test_the_update_time_reads_as_a_facilitator_says_it(seconds: int, said: str) -> None:
    assert update_time(seconds) == said
    start = render_start(title="T", links={}, closes_at=NOW, zone=ZoneInfo("UTC"), prefix="!",
                         update_seconds=seconds)
    assert f"- Quick update, {said}, you can pass: `!update text` or `!pass`" in start
    place = RoundPlace(ADA, "Ada")
    assert f"your {said} (1 of 1, last)" in turn_line((place,), place, seconds, done=set())


async def test_the_start_and_help_give_the_meetings_own_update_time(harness: Harness) -> None:
    await harness.say(ADA, "!help")
    (help_text,) = await harness.sent()
    assert "- `!update text`: adds your quick update (30 seconds)" in help_text
    await harness.say(CHAIR, "!startmeeting")
    (start,) = await harness.sent()
    assert "- Quick update, 30 seconds, you can pass:" in start
    assert "60 seconds" not in help_text + start
    # Where no meeting is near, help leaves the time out, as does a usage reply.
    (spec,) = [spec for spec in REGISTRY if spec.name == "update"]
    assert spec.described() == "adds your quick update"
    assert spec.described(120) == "adds your quick update (2 minutes)"
    assert spec.usage("!") == "Usage: `!update text` (adds your quick update)"


async def test_a_round_in_the_order_of_element_pills(harness: Harness) -> None:
    await harness.say(CHAIR, "!startmeeting")
    for person in (ADA, BO, CY):
        await harness.say(person, "!here")
    await harness.sent()
    content = element_pills((CY, "Cy"), (ADA, "Ada Lovelace"), (BO, "Bo"))
    await harness.bot.handle(IncomingMessage(ROOM, EventId("$pills"), CHAIR, "Chair",
                                             str(content["body"]), pills=pills_of(content)))
    (line,) = await harness.sent()
    assert line.startswith("**Update round** (3 people). [Cy](https://matrix.to/#/@cy:")
    assert line.endswith("(1 of 3; next: Ada)")

    await harness.say(CHAIR, "!round stop")
    await harness.sent()
    content = element_pills((BO, "Bo"), before="!round Dee ")
    await harness.bot.handle(IncomingMessage(ROOM, EventId("$unmatched"), CHAIR, "Chair",
                                             str(content["body"]), pills=pills_of(content)))
    (refused,) = await harness.sent()
    assert refused.startswith("Sorry, I could not match “Dee” to anyone: name each person "
                              "with a pill")


async def test_skip_stop_and_status(harness: Harness) -> None:
    await harness.say(CHAIR, "!startmeeting")
    await harness.say(CHAIR, "!round")
    assert (await harness.sent())[-1].startswith("Nobody is on the roll call yet")
    for person in (ADA, BO, CY):
        await harness.say(person, "!here")
    await harness.say(ADA, "!round")
    assert (await harness.sent())[-1].startswith("Only chairs can use `!round`")
    await harness.say(CHAIR, "!round @bo:example.org @ada:example.org")
    await harness.sent()
    await harness.say(CHAIR, "!round")
    assert (await harness.sent()) == ["**Update round:** Bo is on. Still to come: Ada."]
    await harness.say(CHAIR, "!round shuffle")
    assert (await harness.sent())[0].startswith("An update round is on already")
    await harness.say(ADA, "!pass")  # not Ada's turn: Bo stays on
    assert await harness.sent() == []
    await harness.say(CHAIR, "!skip")
    assert (await harness.sent()) == ["Skipping Bo. Ada is done already (update posted). "
                                      "That was everyone: the update round is over."]
    await harness.say(CHAIR, "!skip")
    assert (await harness.sent())[0].startswith("No update round is on")

    await harness.say(CHAIR, "!round shuffle")
    await harness.sent()
    await harness.say(CHAIR, "!round stop")
    assert await harness.sent() == ["The update round is stopped."]
    assert await harness.time_up_jobs() == []
    await harness.say(CHAIR, "!round stop")
    assert await harness.sent() == ["No update round is on."]


async def test_a_restart_restarts_the_clock_without_calling_anyone_again(
        harness: Harness) -> None:
    await harness.say(CHAIR, "!startmeeting")
    for person in (ADA, BO):
        await harness.say(person, "!here")
    await harness.say(CHAIR, "!round")
    await harness.sent()
    harness.clock.advance(seconds=20)

    restarted = MeetingBot(harness.bot.rooms, harness.store, Path("/nonexistent"),
                           harness.transport, clock=harness.clock)
    harness.bot = restarted
    await restarted.resume()
    assert await harness.time_up_jobs() == [], "the clock waits for the resumed line"
    (line,) = await harness.sent()
    assert line == ("I was restarted; the update round goes on. Ada, your 30 seconds "
                    "start again now.")
    assert harness.transport.sent[-1].payload["mentions"] == []
    assert await harness.time_up_jobs() == [(harness.clock() + timedelta(seconds=30), ADA)]


def test_a_turn_line_is_sent_with_its_mention_and_pill() -> None:
    (part,) = message_parts(turn_line((RoundPlace(ADA, "Ada"),), RoundPlace(ADA, "Ada"), 60,
                                      done=set()))
    item = OutboxItem(1, ROOM, ROUND_TURN, {"text": part.text, "html": part.html,
                                            "mentions": [ADA], "meeting_id": 1,
                                            "user_id": ADA}, NOW)
    event_type, content = message_content(item)
    assert event_type == "m.room.message" and content["msgtype"] == "m.text"
    assert content["m.mentions"] == {"user_ids": [ADA]}
    assert content["formatted_body"].startswith(
        '<p><a href="https://matrix.to/#/@ada:example.org" rel="noopener noreferrer">Ada</a>')
    # Other messages mention nobody on purpose: no m.mentions, as before.
    assert "m.mentions" not in message_content(
        OutboxItem(2, ROOM, "post", {"text": "hi", "html": "<p>hi</p>"}, NOW))[1]


async def test_a_late_update_replaces_no_update_and_edits_switch_pass_and_done(
        harness: Harness) -> None:
    await harness.say(CHAIR, "!startmeeting")
    for person in (ADA, BO):
        await harness.say(person, "!here")
    await harness.say(CHAIR, "!round")
    await harness.sent()
    harness.clock.advance(seconds=30)
    await harness.run_time_up()  # Ada said nothing in time
    await harness.say(ADA, "!update late, but here it is")
    await harness.say(BO, "!pass")
    pass_event = EventId(f"$m{harness.count}")
    await harness.bot.handle(IncomingMessage(ROOM, EventId("$edit"), BO, "Bo", "!done",
                                             replaces=pass_event))
    await harness.sent()
    await harness.say(CHAIR, "!endmeeting")
    note = next(text for text in await harness.sent() if text.startswith("# Team"))
    assert ("## Quick updates\n\n- **Ada:** late, but here it is\n"
            "- **Bo:** (spoke on the call)\n") in note


async def test_an_update_after_the_time_ran_out_replaces_the_no_update(
        harness: Harness) -> None:
    await harness.say(CHAIR, "!startmeeting")
    await harness.say(ADA, "!here")
    await harness.say(CHAIR, "!round")
    await harness.sent()
    harness.clock.advance(seconds=30)
    await harness.run_time_up()
    await harness.sent()

    await harness.say(ADA, "!update shipped it after all")
    await harness.say(CHAIR, "!endmeeting")
    note = next(text for text in await harness.sent() if text.startswith("# Team"))
    assert "- **Ada:** shipped it after all\n" in note
    assert "no update" not in note
