"""Flood control against a real Synapse: a person sending commands too fast is told once to
slow down, then ignored until their bucket refills; everyone else is not held back."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from msgspec.structs import replace

from chatbot.demo.person import Person, body_of, is_reaction, is_reply

from .conftest import World
from .support.assertions import (
    assert_handled_once,
    checks_on,
    messages_from,
    until_drained,
)


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
    (bot,) = world.bots
    said = await assert_handled_once(ada, room, bot_id, [*commands[:10], other],
                                     [commands[10]], pending=bot.outbox_pending)
    assert [body_of(e) for e in said] == [body_of(reply)], "one reply: the slow down"
    text = body_of(reply)
    assert text.startswith("Slow down, please: I take 10 commands per 60 seconds"), text
    for silent in commands[11:]:
        assert await checks_on(ada, room, silent, bot_id) == 0, "the rest are silent"

    wait = re.search(r"again in (\d+) seconds?", text)
    assert wait is not None, text
    await asyncio.sleep(int(wait[1]))  # sleep-ok: the refill the bot announced, not a sync
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
    config = replace(config, meetings=(team, replace(team, id="quiet", room=quiet)))
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
        await until_drained(world.bots[0].outbox_pending)
        handling_seconds = time.monotonic() - began
        replies = await messages_from(ada, room, world.bot_user.user_id)
        assert [body_of(e)[:10] for e in replies] == ["Slow down,"], "told once"
        answered = [e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] for e in replies]
        checks = await asyncio.gather(*(checks_on(ada, room, event, world.bot_user.user_id)
                                        for event in sent))
        assert set(checks) <= {0, 1}, "no command has two ✅"
        acked = {event for event, count in zip(sent, checks, strict=True) if count}
        # Ten at once, then about one more per second the flood lasted (the bot counts
        # when it handles them); one slow down only, to the first one refused.
        first_refused = next(event for event in sent if event not in acked)
        assert set(sent[:10]) <= acked
        assert len(acked) <= 10 + handling_seconds + 1, (len(acked), handling_seconds)
        assert [event for event in answered if event in sent] == [first_refused]
