"""Restarts lose nothing and double nothing; the bot only acts where it is configured."""

from __future__ import annotations

import json
import stat
from typing import Any

import aiosqlite
import pytest
from msgspec.structs import replace

from chatbot.demo.person import body_of, is_reaction, is_reply
from chatbot.matrix import MatrixEdge

from .conftest import World
from .support.assertions import assert_handled_once, until_drained


async def acknowledged(person, room_id: str, text: str) -> str:
    event_id = await person.say(room_id, text)
    await person.wait_for(lambda e: is_reaction(e, event_id))
    return event_id


def reactions_to(person, event_id: str) -> int:
    return sum(is_reaction(e, event_id) for e in person.events)


async def test_commands_sent_while_down_are_handled_once_after_restart(world: World) -> None:
    # The commands sent while it is down all reach the bot when it starts again, and flood
    # control counts them then: more than its default 10 per 10 s, so it is raised here.
    config = world.config(limits={"commands": 20})
    # A tiny timeline limit makes the homeserver leave a gap the bot must page back through.
    bot = await world.start_bot(config, timeline_limit=3)
    before = await acknowledged(world.ada, world.room_id, "!update before the restart")
    session_file = config.data_dir / "session.json"
    device = json.loads(session_file.read_text())["device_id"]
    await bot.stop()

    while_down = [await world.ada.say(world.room_id, f"!update number {n}") for n in range(12)]
    # A refusal is a reply: were the command handled twice, it would be answered twice.
    refused = await world.ada.say(world.room_id, "!agenda (999 min) sent while down")
    bot = await world.start_bot(config, timeline_limit=3)
    for event_id in while_down:
        await world.ada.wait_for(lambda e, event_id=event_id: is_reaction(e, event_id))
    await world.ada.wait_for(lambda e: is_reply(e, refused))
    # Everything sent before this command is handled before it.
    last = await acknowledged(world.ada, world.room_id, "!here")

    await assert_handled_once(world.ada, world.room_id, world.bot_user.user_id,
                              [before, *while_down, last], [refused], pending=bot.outbox_pending)
    async with aiosqlite.connect(config.data_dir / "chatbot.db") as db:
        rows = await (await db.execute("SELECT text FROM entries ORDER BY id")).fetchall()
    assert [r[0] for r in rows] == ["before the restart"] + [f"number {n}" for n in range(12)]
    assert json.loads(session_file.read_text())["device_id"] == device, "no new device"
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600


async def test_history_from_before_the_bot_joined_is_ignored(world: World) -> None:
    early = await world.ada.say(world.room_id, "!here")
    await world.start_bot(world.config())
    await acknowledged(world.grace, world.room_id, "!here")
    assert reactions_to(world.ada, early) == 0


async def test_other_rooms_and_their_invites_are_left_alone(world: World) -> None:
    await world.start_bot(world.config())
    elsewhere = await world.grace.create_room(invite=[world.bot_user.user_id])
    await world.grace.say(elsewhere, "!help")
    # Once the bot has answered in its own room after the invite, it has seen the invite.
    await acknowledged(world.ada, world.room_id, "!here")
    members = await world.grace.client.joined_members(elsewhere)
    assert world.bot_user.user_id not in [m.user_id for m in members.members]
    assert not [e for e in world.grace.events
                if e.get("room_id") == elsewhere and e.get("sender") == world.bot_user.user_id]


async def test_malformed_and_unknown_commands_get_the_syntax(world: World) -> None:
    await world.start_bot(world.config())
    bad = await world.ada.say(world.room_id, "!agenda (999 min) far too long")
    reply = await world.ada.wait_for(
        lambda e: (e.get("content") or {}).get("m.relates_to", {}).get("m.in_reply_to", {})
        .get("event_id") == bad)
    assert "Usage: `!agenda [(N min)] text`" in body_of(reply)
    assert reply["content"]["msgtype"] == "m.notice"
    typo = await world.ada.say(world.room_id, "!updat hello")
    reply = await world.ada.wait_for(lambda e: "Did you mean `!update`?" in body_of(e))
    assert reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == typo


async def test_joins_a_configured_room_by_alias_when_invited_later(world: World) -> None:
    alias_name = f"later-{world.room_id[1:7].lower()}"
    room_id = await world.chair.create_room(invite=[world.ada.user_id], alias=alias_name)
    await world.ada.join(room_id)
    config = world.config(room=f"#{alias_name}:localhost")
    await world.start_bot(config)
    before_invite = await world.ada.say(room_id, "!here")
    await world.chair.client.room_invite(room_id, world.bot_user.user_id)
    joined = await world.ada.wait_for(
        lambda e: e.get("type") == "m.room.member" and e.get("state_key") == world.bot_user.user_id
        and e["content"].get("membership") == "join")
    assert joined["room_id"] == room_id
    await acknowledged(world.ada, room_id, "!update after the invite")
    assert reactions_to(world.ada, before_invite) == 0, "history before the join is not replayed"


async def test_logs_in_with_an_access_token_instead_of_a_password(world: World) -> None:
    token_user = await world.hs.register_user(f"tokenbot-{world.room_id[1:7].lower()}")
    await world.chair.client.room_invite(world.room_id, token_user.user_id)
    config = world.config()
    matrix = replace(config.matrix, user_id=token_user.user_id, password=None,
                     access_token=token_user.access_token)
    config = replace(config, matrix=matrix)
    await world.start_bot(config)
    command = await world.ada.say(world.room_id, "!here")
    reaction = await world.ada.wait_for(lambda e: is_reaction(e, command))
    assert reaction["sender"] == token_user.user_id
    saved = json.loads((config.data_dir / "session.json").read_text())
    assert saved["device_id"] == token_user.device_id


async def test_an_oversized_update_is_refused_with_the_limit(world: World) -> None:
    await world.start_bot(world.config())
    long = await world.ada.say(world.room_id, "!update " + "word " * 3000)
    reply = await world.ada.wait_for(
        lambda e: (e.get("content") or {}).get("m.relates_to", {}).get("m.in_reply_to", {})
        .get("event_id") == long)
    assert "that text is 14999 characters; the limit is 4000" in body_of(reply)


async def test_commands_sent_while_the_bot_first_starts_are_answered_once(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sent after the bot first started but before its first sync: they are in that sync
    (one event per room; the rest fetched back), and they are commands, not history."""
    early = await world.ada.say(world.room_id, "!here")
    sent: list[str] = []
    first_sync = MatrixEdge.sync_forever

    async def sync_after_commands(edge: MatrixEdge, listener: Any) -> None:
        if not sent:
            sent.append(await world.ada.say(world.room_id, "!update sent during the start"))
            sent.append(await world.grace.say(world.room_id, "!here"))
        await first_sync(edge, listener)

    monkeypatch.setattr(MatrixEdge, "sync_forever", sync_after_commands)
    bot = await world.start_bot(world.config())
    for event_id in sent:
        await world.ada.wait_for(lambda e, event_id=event_id: is_reaction(e, event_id))
    await until_drained(bot.outbox_pending)
    await acknowledged(world.chair, world.room_id, "!here")
    assert [reactions_to(world.ada, event_id) for event_id in sent] == [1, 1]
    assert reactions_to(world.ada, early) == 0, "sent before the first start: history"
