"""Flood control: the token bucket's arithmetic, what a flooding person hears (once), and
the per-meeting caps, on the core with real SQLite and a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chatbot.bot import IncomingMessage, IncomingReaction, MeetingBot
from chatbot.config import parse_config
from chatbot.limits import Bucket, FloodGate, Verdict, refill, slow_down_text, spend
from chatbot.matrix.intake import trusted_send_time
from chatbot.meetings import Rooms
from chatbot.model import EventId, RoomId, UserId
from chatbot.store import OutboxItem, Store

from ..support.clock import ManualClock

T0 = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)
TEN_S = timedelta(seconds=10)
ROOM, OTHER_ROOM = RoomId("!room:example.org"), RoomId("!other:example.org")
ADA, GRACE = UserId("@ada:example.org"), UserId("@grace:example.org")
CHAIR = UserId("@chair:example.org")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- the bucket ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "elapsed", "expected"),
    [
        pytest.param(0.0, 0.0, 0.0, id="no time, no tokens"),
        pytest.param(0.0, 1.0, 1.0, id="one token a second at 10 per 10 s"),
        pytest.param(0.0, 2.5, 2.5, id="continuously, fractions too"),
        pytest.param(4.0, 3.0, 7.0, id="adds to what is left"),
        pytest.param(0.0, 10.0, 10.0, id="empty to full in `per`"),
        pytest.param(5.0, 3600.0, 10.0, id="never above capacity"),
        pytest.param(3.0, -5.0, 3.0, id="a clock that went back adds nothing"),
    ],
)
def test_refill_adds_capacity_per_period_continuously(
    tokens: float, elapsed: float, expected: float
) -> None:
    bucket = refill(Bucket(tokens, T0), at(elapsed), 10, TEN_S)
    assert bucket.tokens == pytest.approx(expected)


def test_a_full_bucket_forgets_the_warning_and_a_partial_one_keeps_it() -> None:
    assert refill(Bucket(0.0, T0, warned=True), at(5), 10, TEN_S).warned
    assert not refill(Bucket(0.0, T0, warned=True), at(10), 10, TEN_S).warned


def run(times: list[float], capacity: int = 10, per: timedelta = TEN_S) -> list[str]:
    """Spend from one bucket at each time; the verdicts, with when to go on."""
    bucket, said = None, []
    for seconds in times:
        bucket, decision = spend(bucket, at(seconds), capacity, per)
        said.append(decision.verdict.value if decision.resume_at is None else
                    f"{decision.verdict.value} until {(decision.resume_at - T0).total_seconds():g}")
    return said


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        pytest.param([0] * 10, ["allow"] * 10, id="ten at once are fine"),
        pytest.param([0] * 13, ["allow"] * 10 + ["slow down until 1"] + ["silent until 1"] * 2,
                     id="the 11th is told when to go on, later ones are silent"),
        pytest.param([0] * 11 + [0.5, 1.0], ["allow"] * 10 + ["slow down until 1",
                     "silent until 1", "allow"], id="answered again once a token is back"),
        pytest.param([0] * 11 + [1.0, 1.0, 1.5], ["allow"] * 10 + [
            "slow down until 1", "allow", "silent until 2", "silent until 2"],
            id="still flooding after going on: silent, not told twice"),
        pytest.param([0] * 11 + [10, *[10] * 10], ["allow"] * 10 + ["slow down until 1"]
                     + ["allow"] * 10 + ["slow down until 11"],
                     id="once full again, the next flood is told again"),
        pytest.param([n * 1.0 for n in range(30)], ["allow"] * 30,
                     id="one a second forever is fine"),
    ],
)
def test_a_flood_is_answered_once_then_silently_until_the_bucket_refills(
    times: list[float], expected: list[str]
) -> None:
    assert run(times) == expected


@pytest.mark.parametrize(
    ("capacity", "per", "times", "expected"),
    [
        pytest.param(2, 2, [0, 0, 0, 0.5, 1], ["allow", "allow", "slow down until 1",
                                               "silent until 1", "allow"], id="2 per 2 s"),
        pytest.param(3, 2, [0, 0, 0, 0, 0.7], ["allow"] * 3 + [
            "slow down until 0.666667", "allow"], id="3 per 2 s"),
        pytest.param(1, 60, [0, 0, 30, 60], ["allow", "slow down until 60", "silent until 60",
                                             "allow"], id="1 a minute"),
    ],
)
def test_other_rates(capacity: int, per: float, times: list[float],
                     expected: list[str]) -> None:
    assert run(times, capacity, timedelta(seconds=per)) == expected


def test_refused_commands_take_nothing_so_the_refill_pace_is_the_same() -> None:
    flood = run([0] * 110 + [10] * 11)
    assert flood[110:] == ["allow"] * 10 + ["slow down until 11"], "a full bucket at 10 s"


def test_each_person_in_each_room_has_a_bucket_of_their_own() -> None:
    gate = FloodGate(2, TEN_S)
    assert [gate.take((ROOM, ADA), T0).verdict for _ in range(3)] == [
        Verdict.ALLOW, Verdict.ALLOW, Verdict.SLOW_DOWN]
    assert gate.take((ROOM, GRACE), T0).allowed
    assert gate.take((OTHER_ROOM, ADA), T0).allowed


def test_memory_stays_bounded_by_dropping_buckets_that_are_full_again() -> None:
    gate = FloodGate(10, TEN_S)
    for n in range(1000):
        gate.take((ROOM, UserId(f"@p{n}:example.org")), at(n / 100))
    assert len(gate) <= 1000
    gate.take((ROOM, ADA), at(25))
    assert len(gate) == 1  # everyone else's bucket has been full for a while
    for n in range(10_000):  # a steady stream of new people: only the last `per` is kept
        gate.take((ROOM, UserId(f"@q{n}:example.org")), at(30 + n / 100))
    assert len(gate) <= 2 * 10 * 100


@pytest.mark.parametrize(
    ("capacity", "per", "wait", "expected"),
    [
        pytest.param(10, TEN_S, 1.0, "I take 10 commands per 10 seconds from each person. "
                     "I will answer yours again in 1 second;", id="default"),
        pytest.param(1, timedelta(minutes=5), 300.0, "I take 1 command per 5 minutes from each "
                     "person. I will answer yours again in 5 minutes;", id="minutes"),
        pytest.param(3, timedelta(seconds=2), 0.2, "again in 1 second;", id="rounded up"),
        pytest.param(3, timedelta(seconds=20), 6.1, "again in 7 seconds;", id="whole seconds"),
    ],
)
def test_the_slow_down_reply_says_the_limit_and_when_to_go_on(
    capacity: int, per: timedelta, wait: float, expected: str
) -> None:
    text = slow_down_text(capacity, per, at(wait), T0)
    assert text.startswith("Slow down, please: ") and expected in text


# --- in the bot -------------------------------------------------------------------------


class Transport:
    async def deliver(self, item: OutboxItem) -> str:
        raise AssertionError("the tests read the outbox; nothing is sent")

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        return 0


def config(**limits: Any) -> Any:
    return parse_config({
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "meetings": [{"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
                      "start": (T0 + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M"),
                      "rrule": "FREQ=WEEKLY", "chairs": [CHAIR]}],
        "limits": limits,
    })


class Room:
    """The bot on real SQLite; people's messages in, the outbox read back."""

    def __init__(self, store: Store, tmp_path: Path, **limits: Any) -> None:
        self.clock = ManualClock(T0)
        self.bot = MeetingBot(Rooms(config(**limits), {"team": ROOM}), store,
                              tmp_path / "notes", Transport(), clock=self.clock)
        self.sent = 0

    async def say(self, sender: UserId, body: str, *, event: str | None = None,
                  sent_at: datetime | None = None) -> list[str]:
        """What the bot answers a message: ✅ or the replies' text."""
        self.sent += 1
        event_id = EventId(event or f"$e{self.sent}")
        await self.bot.handle(IncomingMessage(ROOM, event_id, sender, sender[1:3], body,
                                              sent_at=sent_at))
        return [item.payload.get("key") or item.payload["text"]
                for item in await self.bot.store.pending_outbox(limit=1000, per_room=1000)
                if event_id in (item.payload.get("event_id"), item.payload.get("in_reply_to"))]

    async def updates(self) -> list[str]:
        meeting = await self.bot.store.find_scheduled("team", T0 + timedelta(hours=1))
        if meeting is None:
            return []
        record = await self.bot.store.record(meeting)
        return [entry.text for entry in record.entries]


async def test_fifteen_commands_at_once_ten_answered_one_slow_down_the_rest_silent(
    store: Store, tmp_path: Path
) -> None:
    room = Room(store, tmp_path)
    answers = [await room.say(ADA, f"!update number {n}") for n in range(15)]
    assert answers[:10] == [["✅"]] * 10
    assert len(answers[10]) == 1 and answers[10][0].startswith("Slow down, please:")
    assert "again in 1 second" in answers[10][0]
    assert answers[11:] == [[]] * 4
    assert await room.updates() == [f"number {n}" for n in range(10)], "nothing of a refused one"
    assert await room.say(GRACE, "!update mine") == ["✅"], "others are not held back"

    room.clock.now = at(1)
    assert await room.say(ADA, "!update after a second") == ["✅"]
    assert await room.say(ADA, "!update too soon again") == []


async def test_a_refused_command_is_claimed_so_a_replay_never_answers_it(
    store: Store, tmp_path: Path
) -> None:
    room = Room(store, tmp_path, commands=1, per="10s")
    assert await room.say(ADA, "!update first", event="$first") == ["✅"]
    assert await room.say(ADA, "!update refused", event="$refused") != ["✅"]
    assert await room.say(ADA, "!update silent", event="$silent") == []
    room.clock.now = at(60)
    for event in ("$first", "$refused", "$silent"):  # a restart's replay, a minute on
        await room.say(ADA, "!update replayed", event=event)
    assert await room.updates() == ["first"]
    outbox = await store.pending_outbox(limit=100, per_room=100)
    assert len(outbox) == 2, "one ✅ and one slow down, nothing more"
    assert await room.say(ADA, "!update a new one") == ["✅"], "a replay took no token"


async def test_a_replay_on_an_empty_bucket_is_neither_refused_nor_charged(
    store: Store, tmp_path: Path
) -> None:
    """The bucket has no token for it: the database says it was handled, so it is turned
    away by its claim, not taken for a flood (no "slow down" spent on it)."""
    room = Room(store, tmp_path, commands=1, per="10s")
    assert await room.say(ADA, "!update first", event="$first") == ["✅"]
    await room.say(ADA, "!update first", event="$first")  # a replay
    assert len(await store.pending_outbox(limit=100, per_room=100)) == 1, "only the first ✅"
    answer = await room.say(ADA, "!update too soon", event="$second")
    assert len(answer) == 1 and answer[0].startswith("Slow down, please:"), (
        "the first refusal is still told: the replay was not taken for one")
    assert await room.updates() == ["first"]


def test_a_token_given_back_is_there_for_the_next_command_but_never_above_capacity() -> None:
    gate = FloodGate(2, TEN_S)
    assert gate.would_allow("ada", T0), "a bucket never used is full"
    assert gate.take("ada", T0).allowed and gate.take("ada", T0).allowed
    assert not gate.would_allow("ada", T0)
    assert not gate.take("ada", T0).allowed, "would_allow took nothing, and said the truth"
    gate.give_back("ada")
    assert gate.would_allow("ada", T0) and gate.take("ada", T0).allowed
    for _ in range(5):
        gate.give_back("ada")
    assert [gate.take("ada", T0).allowed for _ in range(3)] == [True, True, False]


async def test_a_backlog_sent_at_a_calm_pace_is_not_a_flood(
    store: Store, tmp_path: Path
) -> None:
    """Commands sent one every 2 s while the bot was down all arrive in one sync: they are
    paced by when they were sent, not by when the bot gets to them."""
    room = Room(store, tmp_path)
    room.clock.now = at(600)
    answers = [await room.say(ADA, f"!update sent while down {n}", sent_at=at(2 * n))
               for n in range(30)]
    assert answers == [["✅"]] * 30


def test_a_send_time_is_trusted_only_while_the_bot_was_not_listening() -> None:
    heard_at, now = at(100), at(160)
    assert trusted_send_time(at(130), heard_at, now) == at(130)  # a backlog keeps its pace
    assert trusted_send_time(at(-3600), heard_at, now) == heard_at  # forged into the past
    assert trusted_send_time(at(10**6), heard_at, now) == now  # forged into the future


async def test_forged_send_times_earn_no_more_than_real_time(
    store: Store, tmp_path: Path
) -> None:
    """Times far apart, as a forger would set them, once the intake has clamped them to
    the span since the bot last listened (here: 5 s) and to now."""
    room = Room(store, tmp_path)
    heard_at = room.clock.now = at(5)
    forged = [at(-3600 + 100 * n) for n in range(15)] + [at(10**6 + n) for n in range(15)]
    answers = [await room.say(ADA, f"!update {n}",
                              sent_at=trusted_send_time(sent, at(0), heard_at))
               for n, sent in enumerate(forged)]
    assert answers.count(["✅"]) == 10 + 5  # ten, and one a second for the 5 s
    assert sum(1 for answer in answers if answer and answer[0].startswith("Slow down")) == 1


async def test_plain_messages_and_reactions_are_not_counted(
    store: Store, tmp_path: Path
) -> None:
    room = Room(store, tmp_path, commands=2, per="10s")
    for n in range(20):
        assert await room.say(ADA, f"just chatting {n}") == []
        await room.bot.handle(IncomingReaction(ROOM, EventId(f"$r{n}"), ADA, "ada",
                                               EventId("$anything"), "👍"))
    assert await room.say(ADA, "!update one") == ["✅"]
    assert await room.say(ADA, "!update two") == ["✅"]
    assert (await room.say(ADA, "!update three"))[0].startswith("Slow down")


async def test_an_edit_that_is_a_command_counts_like_one(store: Store, tmp_path: Path) -> None:
    room = Room(store, tmp_path, commands=2, per="10s")
    assert await room.say(ADA, "!update one", event="$one") == ["✅"]
    edit = IncomingMessage(ROOM, EventId("$edit1"), ADA, "ada", "!update one, edited",
                           replaces=EventId("$one"))
    await room.bot.handle(edit)
    assert await room.updates() == ["one, edited"]
    await room.bot.handle(IncomingMessage(ROOM, EventId("$edit2"), ADA, "ada",
                                          "!update one, edited again", replaces=EventId("$one")))
    assert await room.updates() == ["one, edited"], "the third command in 10 s is refused"


# --- per-meeting caps -------------------------------------------------------------------


async def test_agenda_items_per_meeting_are_capped_with_a_reply_saying_the_limit(
    store: Store, tmp_path: Path
) -> None:
    room = Room(store, tmp_path, agenda_items=3, commands=100)
    for n, person in enumerate([ADA, GRACE, ADA]):
        assert await room.say(person, f"!agenda item {n}") == ["✅"]
    (refused,) = await room.say(GRACE, "!agenda one too many")
    assert "the agenda is full: a meeting takes at most 3 agenda items" in refused
    assert "`!agenda remove N`" in refused
    assert await room.say(GRACE, "!update updates are not agenda items") == ["✅"]
    assert await room.say(ADA, "!agenda remove 1") == ["✅"]
    assert await room.say(GRACE, "!agenda now it fits") == ["✅"]
    assert await room.updates() == ["item 1", "item 2", "updates are not agenda items",
                                    "now it fits"]


@pytest.mark.parametrize(
    "command",
    ["!update more", "!pass", "!celebrate more", "!agenda more", "!note more",
     "!action more", "!agreed more"],
)
async def test_entries_per_person_per_meeting_are_capped_across_kinds(
    store: Store, tmp_path: Path, command: str
) -> None:
    room = Room(store, tmp_path, entries_per_person=3, commands=100)
    for body in ("!update one", "!celebrate two", "!agenda three"):
        assert await room.say(ADA, body) == ["✅"]
    (refused,) = await room.say(ADA, command)
    assert "you have reached the limit of 3 entries per person in this meeting" in refused
    assert await room.say(GRACE, command) == ["✅"], "the limit is per person"
    assert await room.say(ADA, "!here") == ["✅"], "the roll call is no entry"
    assert await room.say(ADA, "!undo") == ["✅", "Removed your agenda item: “three”"]
    assert await room.say(ADA, command) == ["✅"], "undo makes room"


async def test_the_cap_counts_in_the_next_sitting_once_this_weeks_has_ended_early(
    store: Store, tmp_path: Path
) -> None:
    room = Room(store, tmp_path, entries_per_person=2, commands=100)
    room.clock.now = T0 + timedelta(hours=1)
    await room.say(CHAIR, "!startmeeting")
    await room.say(CHAIR, "!endmeeting")
    this_week = await store.find_scheduled("team", T0 + timedelta(hours=1))
    assert this_week is not None and this_week.is_closed
    # This week's sitting is held and over before its scheduled end: entries now go to
    # next week's, and what Ada already gave that one counts.
    for body in ("!agenda one", "!agenda two"):
        assert await room.say(ADA, body) == ["✅"]
    (refused,) = await room.say(ADA, "!agenda three")
    assert "you have reached the limit of 2 entries per person in this meeting" in refused
    next_week = await store.find_scheduled("team", T0 + timedelta(hours=1, weeks=1))
    assert next_week is not None
    assert [entry.text for entry in (await store.record(next_week)).agenda] == ["one", "two"]


async def test_the_text_length_limit_is_answered_with_the_limit(
    store: Store, tmp_path: Path
) -> None:
    room = Room(store, tmp_path)
    (reply,) = await room.say(ADA, "!update " + "x" * 4500)
    assert reply.startswith("Sorry, that text is 4500 characters; the limit is 4000.")
    assert await room.updates() == []


async def test_a_direct_chat_flood_gets_help_ten_times_then_one_slow_down(
    store: Store, tmp_path: Path
) -> None:
    room, direct = Room(store, tmp_path), RoomId("!direct:example.org")
    for n in range(15):
        await room.bot.handle_direct(IncomingMessage(direct, EventId(f"$d{n}"), ADA, "ada",
                                                     f"hello {n}"))
    texts = [item.payload["text"] for item in
             await store.pending_outbox(limit=1000, per_room=1000) if item.room_id == direct]
    assert len(texts) == 11 and all("I run team meetings" in text for text in texts[:10])
    assert texts[10].startswith("Slow down, please:")
