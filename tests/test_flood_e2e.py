"""Flood control against a real Synapse: a person sending commands too fast is told once to
slow down, then ignored until their bucket refills; everyone else is not held back."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

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
