"""A chair check that cannot reach the homeserver waits for it: a moderator's command is
neither refused nor apologised for, and is carried out once the homeserver answers."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from nio import AsyncClient, RoomPutStateResponse

from chatbot.demo.person import body_of, is_reaction, is_reply
from chatbot.matrix import rooms

from .conftest import World
from .support.assertions import until_drained


async def test_a_moderators_command_waits_out_a_failing_power_level_lookup(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    moderator = await world.chair.client.room_put_state(
        world.room_id, "m.room.power_levels",
        {"users": {world.grace.user_id: 50}, "users_default": 0})
    assert isinstance(moderator, RoomPutStateResponse), moderator
    # Give up on each lookup quickly, so the command is handed over again several times.
    monkeypatch.setattr(rooms, "CHAIR_CHECK_PATIENCE", 0.5)
    faulty, resets = True, 0
    room_get_state = AsyncClient.room_get_state

    async def reset_for_the_bot(client: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        nonlocal resets
        if faulty and client.user_id == world.bot_user.user_id:
            resets += 1
            raise aiohttp.ClientOSError(104, "Connection reset by peer")
        return await room_get_state(client, *args, **kwargs)

    monkeypatch.setattr(AsyncClient, "room_get_state", reset_for_the_bot)
    bot = await world.start_bot(world.config(chairs=[]))
    command = await world.grace.say(world.room_id, "!startmeeting Planning")
    await world.grace.wait_until(lambda: resets >= 3)
    assert not [e for e in world.grace.events
                if is_reaction(e, command) or is_reply(e, command)], "nothing yet"

    faulty = False
    # The intake's backoff (up to 15 s) and the next lookup's own.
    await world.grace.wait_for(lambda e: is_reaction(e, command), timeout=40)
    await world.grace.wait_for(lambda e: "is starting now" in body_of(e))
    await until_drained(bot.outbox_pending)
    here = await world.ada.say(world.room_id, "!here")
    await world.ada.wait_for(lambda e: is_reaction(e, here))
    assert sum(is_reaction(e, command) for e in world.grace.events) == 1
    assert not [e for e in world.grace.events if is_reply(e, command)], (
        "neither refused nor apologised for")
    assert bot.task.done() is False
