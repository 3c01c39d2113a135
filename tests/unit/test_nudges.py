"""Nudges before a sitting and commands in direct chats, through the bot's core on a
real SQLite store with a manual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chatbot.bot import DIRECT, IncomingMessage, MeetingBot, direct_intent_key
from chatbot.config import parse_config
from chatbot.meetings import JobKind, Rooms
from chatbot.model import EventId, Profile, RoomId, UserId
from chatbot.store import Store
from tests.support.clock import ManualClock
from tests.support.transports import RecordingTransport

ROOM = RoomId("!room:example.org")
DIRECT_ROOM = RoomId("!ada-direct:example.org")
CHAIR = UserId("@chair:example.org")
ADA, BO, CY, DEE = (UserId(f"@{name}:example.org") for name in ("ada", "bo", "cy", "dee"))
FIRST = datetime(2026, 6, 4, 9, 0, tzinfo=UTC)  # the series' first sitting, weekly


def config(nudge: str | None = "1d") -> dict:
    meeting = {"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
               "start": "2026-06-04 09:00", "rrule": "FREQ=WEEKLY", "chairs": [CHAIR]}
    if nudge is not None:
        meeting["nudge"] = nudge
    return {"matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                       "password": "x"}, "meetings": [meeting]}


class Harness:
    def __init__(self, store: Store, *, nudge: str | None = "1d") -> None:
        self.store = store
        self.clock = ManualClock(FIRST - timedelta(days=2))
        self.transport = RecordingTransport()
        self.bot = MeetingBot(Rooms(parse_config(config(nudge)), {"team": ROOM}), store,
                              Path("/nonexistent"), self.transport, clock=self.clock)
        self.count = 0

    async def hold(self, start: datetime, *people: UserId) -> None:
        """A sitting held at `start` with `people` on its roll call."""
        async with self.store.transaction():
            meeting = await self.store.ensure_scheduled("team", ROOM, "Team", start)
            await self.store.mark_started(meeting.id, start, start + timedelta(hours=1),
                                          "Team")
            for person in people:
                await self.store.add_attendee(meeting.id, person, Profile(person[1:3]),
                                              EventId(f"$here-{start}-{person}"), start)
            await self.store.mark_ended(meeting.id, start + timedelta(hours=1))

    async def say(self, sender: UserId, body: str, *, room: RoomId = ROOM) -> None:
        self.count += 1
        message = IncomingMessage(room, EventId(f"$m{self.count}"), sender,
                                  sender[1:].split(":")[0].title(), body)
        if room == ROOM:
            await self.bot.handle(message)
        else:
            await self.bot.handle_direct(message)
        while (await self.bot.deliver_due())[0]:
            pass

    async def nudge_jobs(self) -> list[datetime]:
        return [job.run_at for job in await self.bot.plan() if job.kind is JobKind.NUDGE]

    async def run_nudges(self) -> list[str]:
        """Run the due nudge job; whom it messaged."""
        (job,) = [job for job in await self.bot.plan() if job.kind is JobKind.NUDGE]
        self.clock.now = max(self.clock.now, job.run_at)
        before = len(self.transport.sent)
        await self.bot.run_job(job)
        while (await self.bot.deliver_due())[0]:
            pass
        return [item.payload["user_id"] for item in self.transport.sent[before:]
                if item.kind == DIRECT]

    def replies(self) -> list[str]:
        return [str(item.payload.get("text")) for item in self.transport.sent
                if item.kind == "reply"]


@pytest.fixture
async def harness(store: Store) -> Harness:
    return Harness(store)


async def test_regulars_are_on_two_of_the_last_four_roll_calls(store: Store) -> None:
    harness = Harness(store)
    weeks = [FIRST + timedelta(weeks=n) for n in range(5)]
    await harness.hold(weeks[0], ADA, BO, CY)  # five sittings ago: no longer counted for Cy
    await harness.hold(weeks[1], ADA, CY)
    await harness.hold(weeks[2], ADA, DEE)
    await harness.hold(weeks[3], BO)
    await harness.hold(weeks[4])
    assert await store.regulars("team", weeks[4] + timedelta(weeks=1)) == {ADA}
    assert await store.regulars("team", weeks[4]) == {ADA, BO, CY}


async def test_a_nudge_goes_once_to_each_regular_without_an_update(harness: Harness) -> None:
    start = FIRST + timedelta(weeks=2)
    await harness.hold(FIRST, ADA, BO, CY)
    await harness.hold(FIRST + timedelta(weeks=1), ADA, BO, CY, DEE)
    harness.clock.now = start - timedelta(days=3)
    assert await harness.nudge_jobs() == [start - timedelta(days=1)]
    await harness.say(BO, "!update in the room already")
    await harness.say(CY, "!pass")
    await harness.say(DEE, "!nudge off")
    assert await harness.run_nudges() == [ADA]
    (item,) = [item for item in harness.transport.sent if item.kind == DIRECT]
    assert "`!update what you did`" in item.payload["text"]
    assert harness.transport.opened == [ADA], "a direct chat opened for Ada"
    assert await harness.nudge_jobs() == [], "decided once"


async def test_nudges_are_off_unless_configured(store: Store) -> None:
    harness = Harness(store, nudge=None)
    assert await harness.nudge_jobs() == []


async def test_a_nudge_reuses_the_direct_chat_and_none_goes_once_the_sitting_began(
        harness: Harness) -> None:
    await harness.hold(FIRST, ADA)
    await harness.hold(FIRST + timedelta(weeks=1), ADA)
    async with harness.store.transaction():
        await harness.store.touch_direct_room(DIRECT_ROOM, harness.clock(), ADA)
    harness.clock.now = FIRST + timedelta(weeks=2) - timedelta(hours=2)
    assert await harness.run_nudges() == [ADA]
    assert harness.transport.opened == []
    assert harness.transport.sent[-1].room_id == DIRECT_ROOM
    # Late for the next sitting (the bot was down): no nudge once it has begun.
    harness.clock.now = FIRST + timedelta(weeks=3, minutes=5)
    assert await harness.run_nudges() == []


async def test_an_update_in_a_direct_chat_counts_for_the_next_meeting(
        harness: Harness) -> None:
    await harness.say(ADA, "!update from the direct chat", room=DIRECT_ROOM)
    assert harness.replies()[-1].startswith("You are not a regular of a meeting I run yet")
    await harness.hold(FIRST, ADA)
    await harness.hold(FIRST + timedelta(weeks=1), ADA)
    harness.clock.now = FIRST + timedelta(weeks=1, days=2)
    await harness.say(ADA, "!update from the direct chat", room=DIRECT_ROOM)
    assert harness.replies()[-1].startswith("Noted for **Team**: Thursday 18th June 2026")
    meeting = await harness.store.find_scheduled("team", FIRST + timedelta(weeks=2))
    assert meeting is not None
    (entry,) = (await harness.store.record(meeting)).entries
    assert (entry.sender, entry.text) == (ADA, "from the direct chat")
    await harness.say(ADA, "!agenda a topic", room=DIRECT_ROOM)
    assert "`!update text` and `!pass` count for your next meeting" in harness.replies()[-1]


async def test_nudge_off_stops_the_next_nudge_and_on_brings_it_back(harness: Harness) -> None:
    await harness.hold(FIRST, ADA)
    await harness.hold(FIRST + timedelta(weeks=1), ADA)
    await harness.say(ADA, "!nudge off", room=DIRECT_ROOM)
    assert harness.replies()[-1].startswith("No more nudges from me")
    assert await harness.run_nudges() == []
    await harness.say(ADA, "!nudge on", room=DIRECT_ROOM)
    await harness.hold(FIRST + timedelta(weeks=2))
    assert await harness.run_nudges() == [ADA]
    await harness.say(ADA, "!nudge maybe", room=DIRECT_ROOM)
    assert "`!nudge off|on`" in harness.replies()[-1]


class CrashingTransport(RecordingTransport):
    """The homeserver makes the room, but the bot dies before it hears back."""

    def __init__(self) -> None:
        super().__init__()
        self.crash_after_open = True
        self.lookups: list[UserId] = []

    async def open_direct(self, user_id: UserId) -> RoomId:
        room_id = await super().open_direct(user_id)
        if self.crash_after_open:
            self.crash_after_open = False
            raise RuntimeError("the process died here")
        return room_id

    async def find_direct(self, user_id: UserId) -> RoomId | None:
        self.lookups.append(user_id)
        return await super().find_direct(user_id)


async def test_a_crash_between_opening_a_direct_chat_and_recording_it_opens_no_second(
        store: Store) -> None:
    harness = Harness(store)
    harness.transport = transport = CrashingTransport()
    harness.bot = MeetingBot(harness.bot.rooms, store, Path("/nonexistent"), transport,
                             clock=harness.clock)
    await harness.hold(FIRST, ADA)
    await harness.hold(FIRST + timedelta(weeks=1), ADA)
    harness.clock.now = FIRST + timedelta(weeks=2) - timedelta(hours=2)
    assert await harness.run_nudges() == [], "the first try died after the room was made"
    assert transport.opened == [ADA] and await store.direct_room_of(ADA) is None
    assert transport.lookups == [], "a first try looks for nothing"

    # After a restart, the retry finds the room the first try made.
    harness.bot = MeetingBot(harness.bot.rooms, store, Path("/nonexistent"), transport,
                             clock=harness.clock)
    harness.clock.advance(seconds=3600)
    while (await harness.bot.deliver_due())[0]:
        pass
    (item,) = [item for item in transport.sent if item.kind == DIRECT]
    assert item.room_id == RoomId("!direct-1:example.org")
    assert transport.opened == [ADA], "no second room"
    assert transport.lookups == [ADA]
    assert await store.direct_room_of(ADA) == item.room_id
    assert await store.get_meta(direct_intent_key(ADA)) is None, "the intent is done"


async def test_a_retry_opens_a_room_when_the_first_try_made_none(store: Store) -> None:
    harness = Harness(store)
    harness.transport = transport = CrashingTransport()
    transport.crash_after_open = False
    harness.bot = MeetingBot(harness.bot.rooms, store, Path("/nonexistent"), transport,
                             clock=harness.clock)
    async with store.transaction():  # a try that died before the homeserver made a room
        await store.set_meta(direct_intent_key(BO), "2026-06-01T00:00:00+00:00")
    await harness.hold(FIRST, BO)
    await harness.hold(FIRST + timedelta(weeks=1), BO)
    harness.clock.now = FIRST + timedelta(weeks=2) - timedelta(hours=2)
    assert await harness.run_nudges() == [BO]
    assert transport.lookups == [BO] and transport.opened == [BO]
