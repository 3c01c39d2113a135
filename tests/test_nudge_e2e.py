"""Updates ahead of a meeting on a real Synapse: the nudge reaches exactly the regulars
without an update, an update sent in the direct chat lands in the next meeting's note
marked as posted ahead, and `!nudge off` holds across a restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chatbot.bot import DeliveryError
from chatbot.demo.person import Person, body_of, is_reaction, is_reply
from chatbot.matrix.rooms import RoomDirectory
from chatbot.model import EntryKind, EventId, Profile, RoomId, UserId
from chatbot.store import Store

from .conftest import World, minute_from_now

# When the nudge before the sitting after next falls due, from the test's start.
SECOND_NUDGE_AFTER = timedelta(seconds=45)


def is_nudge(event: dict[str, Any], bot: str) -> bool:
    return event.get("sender") == bot and "you have not posted a quick update" in body_of(event)


async def seed_history(world: World, store: Store, start: datetime) -> None:
    """Two sittings held before, with Ada and Grace on both roll calls (regulars), and
    Grace's update for the coming sitting already in."""
    room = RoomId(world.room_id)
    for weeks in (2, 1):
        held = datetime.now(UTC) - timedelta(weeks=weeks)
        meeting = await store.create_adhoc("team", room, "Example Team Meeting", held,
                                           held + timedelta(hours=1))
        for person in (world.ada, world.grace):
            await store.add_attendee(meeting.id, UserId(person.user_id), Profile(person.name),
                                     EventId(f"$here-{weeks}-{person.name}"), held)
        await store.mark_ended(meeting.id, held + timedelta(hours=1))
    coming = await store.ensure_scheduled("team", room, "Example Team Meeting", start)
    await store.add_entry(coming.id, EntryKind.UPDATE, UserId(world.grace.user_id), "Grace",
                          "posted in the room", None, EventId("$grace-update"),
                          datetime.now(UTC))


async def direct_chat(person: Person, bot: str) -> str:
    """Join the direct chat the bot opened with `person`; its room id."""
    invite = await person.wait_for(lambda e: e.get("type") == "invite", timeout=90)
    await person.join(invite["room_id"])
    await person.wait_for(lambda e: e.get("room_id") == invite["room_id"] and is_nudge(e, bot))
    return invite["room_id"]


async def test_nudges_direct_updates_and_opting_out(world: World) -> None:
    start = minute_from_now(hours=2)
    # The nudge before the sitting after `start` falls due SECOND_NUDGE_AFTER from now;
    # the one before `start` is long overdue, so it goes out as the bot starts.
    lead = start + timedelta(weeks=1) - (datetime.now(UTC) + SECOND_NUDGE_AFTER)
    config = world.config(start=start.strftime("%Y-%m-%d %H:%M:%S"),
                          nudge=f"{int(lead.total_seconds())}s")
    store = await Store.open(config.data_dir / "chatbot.db")
    async with store.transaction():
        await seed_history(world, store, start)
    await store.close()
    bot_id, room = world.bot_user.user_id, world.room_id
    ada, grace, chair = world.ada, world.grace, world.chair

    first = await world.start_bot(config)
    direct = await direct_chat(ada, bot_id)
    nudge = next(e for e in ada.events if e.get("room_id") == direct and is_nudge(e, bot_id))
    assert "`!update what you did`" in body_of(nudge) and "`!nudge off`" in body_of(nudge)

    sent = await ada.say(direct, "!update wrote the docs, from the direct chat")
    await ada.wait_for(lambda e: is_reaction(e, sent))
    noted = await ada.wait_for(lambda e: is_reply(e, sent))
    assert body_of(noted).startswith("Noted for **Example Team Meeting**")
    off = await ada.say(direct, "!nudge off")
    await ada.wait_for(lambda e: is_reaction(e, off))
    await first.stop()

    await world.start_bot(config)
    await chair.say(room, "!startmeeting")
    for person in (ada, grace):
        here = await person.say(room, "!here")
        await person.wait_for(lambda e, here=here: is_reaction(e, here))
    mark = len(ada.events)
    await chair.say(room, "!endmeeting")
    note = body_of(await ada.wait_for(
        lambda e: body_of(e).startswith("# Example Team Meeting"), after=mark))
    # In roll-call order (Ada said !here first), though Grace's update came first.
    assert ("## Quick updates\n\n"
            "- **Ada:** wrote the docs, from the direct chat (posted ahead)\n"
            "- **Grace:** posted in the room (posted ahead)\n") in note

    # The next sitting's nudge: Grace (a regular, no update for it) gets one; Ada said
    # `!nudge off` before the restart, the chair is no regular.
    await direct_chat(grace, bot_id)
    for person in (ada, grace, chair):
        nudges = [e for e in person.events if is_nudge(e, bot_id)]
        assert len(nudges) == (1 if person is not chair else 0), person.name


async def test_a_direct_chat_made_but_not_recorded_is_found_not_made_twice(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The homeserver makes the direct chat but its answer is lost (as when the bot dies
    before recording it): the retry finds that room by its mark instead of making a
    second one."""
    made: list[RoomId] = []
    original = RoomDirectory.open_direct

    async def made_but_lost_once(directory: RoomDirectory, user_id: UserId) -> RoomId:
        room_id = await original(directory, user_id)
        made.append(room_id)
        if len(made) == 1:
            raise DeliveryError("the answer was lost", permanent=False)
        return room_id

    monkeypatch.setattr(RoomDirectory, "open_direct", made_but_lost_once)
    start = minute_from_now(hours=2)
    config = world.config(start=start.strftime("%Y-%m-%d %H:%M:%S"), nudge="1d")
    store = await Store.open(config.data_dir / "chatbot.db")
    async with store.transaction():
        await seed_history(world, store, start)
    await store.close()
    bot_id, ada = world.bot_user.user_id, world.ada

    await world.start_bot(config)  # the nudge is overdue: it goes out at once
    direct = await direct_chat(ada, bot_id)
    assert made == [direct], "one room made, and the nudge came in it"
    assert [e["room_id"] for e in ada.events if e.get("type") == "invite"] == [direct]
    store = await Store.open(config.data_dir / "chatbot.db")
    try:
        assert await store.read.direct_room_of(UserId(ada.user_id)) == direct
    finally:
        await store.close()
