"""Flood control against a real Synapse: a person sending commands too fast is told once to
slow down, then ignored until their bucket refills; everyone else is not held back."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import pytest

from chatbot.demo.person import Person, body_of, is_reaction, is_reply

from .conftest import World


async def room_history(world: World, person: Person) -> list[dict[str, Any]]:
    """The room's latest events as the homeserver has them, not as a client has synced."""
    url = f"{world.hs.url}/_matrix/client/v3/rooms/{world.room_id}/messages"
    headers = {"Authorization": f"Bearer {person.client.access_token}"}
    async with aiohttp.ClientSession(headers=headers) as session, session.get(
            url, params={"dir": "b", "limit": "500"}) as response:
        assert response.status == 200, await response.text()
        return list((await response.json())["chunk"])


async def drained(world: World) -> None:
    """Wait until the bot has nothing left to send."""
    (bot,) = world.bots
    for _ in range(200):
        if not await bot.app.store.read.has_pending_outbox():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the bot's outbox did not drain")


async def test_fifteen_commands_at_once_get_ten_answers_one_slow_down_then_silence(
    world: World,
) -> None:
    # 10 commands, then one more every 6 s: sending 15 takes well under 6 s.
    await world.start_bot(world.config(limits={"commands": 10, "per": "60s"}))
    room, ada, bot_id = world.room_id, world.ada, world.bot_user.user_id
    commands = [await ada.say(room, f"!update number {n}") for n in range(15)]
    reply = await ada.wait_for(lambda e: is_reply(e, commands[10]))
    other = await world.grace.say(room, "!update others are not held back")
    await world.grace.wait_for(lambda e: is_reaction(e, other))
    await drained(world)

    history = await room_history(world, ada)
    from_bot = [e for e in history if e.get("sender") == bot_id]
    acked = [e["content"]["m.relates_to"]["event_id"] for e in from_bot
             if e.get("type") == "m.reaction"]
    answered = [e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] for e in from_bot
                if (e.get("content") or {}).get("m.relates_to", {}).get("m.in_reply_to")]
    assert sorted(acked) == sorted([*commands[:10], other]), "ten answered, once each"
    assert answered == [commands[10]], "exactly one reply: the slow down"
    text = body_of(reply)
    assert text.startswith("Slow down, please: I take 10 commands per 60 seconds"), text
    assert not set(commands[11:]) & {*acked, *answered}, "the rest are silent"

    wait = re.search(r"again in (\d+) seconds?", text)
    assert wait is not None, text
    await asyncio.sleep(int(wait[1]))  # the refill the bot announced, not a sync
    again = await ada.say(room, "!update after the wait")
    await ada.wait_for(lambda e: is_reaction(e, again), timeout=20)
    metrics = world.bots[0].app.metrics.render().decode()
    assert "chatbot_commands_throttled_total 5.0" in metrics


async def acknowledged_within(person: Person, room_id: str, text: str) -> float:
    """Seconds from sending a command to seeing the bot's ✅ on it."""
    began = time.monotonic()
    event_id = await person.say(room_id, text)
    await person.wait_for(lambda e: is_reaction(e, event_id), timeout=30)
    return time.monotonic() - began


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param({"entries_per_person": 1000}, id="flood control on"),
        pytest.param({"commands": 1000, "entries_per_person": 1000},
                     id="flood control out of the way: the round-robin outbox alone"),
    ],
)
async def test_a_flood_from_one_person_does_not_hold_up_others(
    world: World, limits: dict[str, Any],
) -> None:
    """200 commands as fast as the homeserver takes them; meanwhile another person's command
    is answered within 3 s in another room, within 8 s in the flooded one (the homeserver
    orders a room's events, so that one waits behind the flood there)."""
    quiet = await world.chair.create_room(invite=[world.bot_user.user_id, world.grace.user_id])
    await world.grace.join(quiet)
    config = world.config(limits=limits)
    (team,) = config.meetings
    config = config.model_copy(update={"meetings": (
        team, team.model_copy(update={"id": "quiet", "room": quiet}))})
    await world.start_bot(config)
    room, ada, grace = world.room_id, world.ada, world.grace
    await acknowledged_within(grace, quiet, "!here")  # the bot is in the quiet room too

    sent: list[str] = []

    async def flood() -> None:
        for n in range(200):
            sent.append(await ada.say(room, f"!update flood {n}"))

    began = time.monotonic()
    flooding = asyncio.create_task(flood())
    await ada.wait_until(lambda: len(sent) >= 50, timeout=60)
    elsewhere = await acknowledged_within(grace, quiet, "!update from the quiet room")
    same_room = await acknowledged_within(grace, room, "!update from the flooded room")
    await flooding
    assert elsewhere < 3, f"another room waited {elsewhere:.1f} s"
    assert same_room < 8, f"the same room waited {same_room:.1f} s"
    if "commands" not in limits:
        await ada.wait_for(lambda e: body_of(e).startswith("Slow down")
                           and any(is_reply(e, event) for event in sent))
        await drained(world)
        handling_seconds = time.monotonic() - began
        from_bot = [e for e in await room_history(world, ada)
                    if e.get("sender") == world.bot_user.user_id]
        acked = {e["content"]["m.relates_to"]["event_id"] for e in from_bot
                 if e.get("type") == "m.reaction"} & set(sent)
        replies = [e for e in from_bot if e.get("type") == "m.room.message"]
        assert [body_of(e)[:10] for e in replies] == ["Slow down,"], "told once"
        answered = [e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] for e in replies]
        # Ten at once, then about one more per second the flood lasted (the bot counts
        # when it handles them); one slow down only, to the first one refused.
        first_refused = next(event for event in sent if event not in acked)
        assert set(sent[:10]) <= acked
        assert len(acked) <= 10 + handling_seconds + 1, (len(acked), handling_seconds)
        assert [event for event in answered if event in sent] == [first_refused]
