"""Who can reach the bot: configured rooms drive it, direct chats get help (and take
updates, see test_nudge_e2e), other invites are declined unless the inviter is allowed."""

from __future__ import annotations

from msgspec.structs import replace

from chatbot.config import Config
from chatbot.demo.person import body_of, is_reply

from .conftest import World


def bot_joined(world: World, room_id: str):
    return lambda e: (e.get("room_id") == room_id and e.get("type") == "m.room.member"
                      and e.get("state_key") == world.bot_user.user_id
                      and e["content"].get("membership") == "join")


async def test_a_direct_chat_gets_help_and_nothing_else(world: World) -> None:
    await world.start_bot(world.config())
    response = await world.grace.client.room_create(is_direct=True,
                                                    invite=[world.bot_user.user_id])
    direct = response.room_id
    await world.grace.wait_for(bot_joined(world, direct))
    asked = await world.grace.say(direct, "!here")
    reply = await world.grace.wait_for(lambda e: is_reply(e, asked))
    assert "commands work there. Here, `!update text` and `!pass` count" in body_of(reply)
    assert "`!here [Name / Affiliation / @handle]`" in body_of(reply)
    # Nothing was recorded: the meeting room's next meeting has nobody on its roll call.
    await world.chair.say(world.room_id, "!startmeeting")
    mark = len(world.ada.events)
    await world.chair.say(world.room_id, "!endmeeting")
    note = await world.ada.wait_for(lambda e: "## Roll call" in body_of(e), after=mark)
    assert "## Roll call\n\n-\n" in body_of(note)


async def test_an_allowed_inviter_can_bring_the_bot_into_a_room(world: World) -> None:
    config: Config = replace(world.config(), allowed_inviters=(world.ada.user_id,))
    await world.start_bot(config)
    from_ada = await world.ada.create_room(invite=[world.bot_user.user_id])
    from_grace = await world.grace.create_room(invite=[world.bot_user.user_id])
    await world.ada.wait_for(bot_joined(world, from_ada))
    # The bot answers in its own room after seeing both invites; Grace's is still pending.
    asked = await world.grace.say(world.room_id, "!when")
    await world.grace.wait_for(lambda e: is_reply(e, asked))
    members = await world.grace.client.joined_members(from_grace)
    assert world.bot_user.user_id not in [m.user_id for m in members.members]
    # A room the bot was merely allowed into does not drive it.
    await world.ada.say(from_ada, "!help")
    asked = await world.ada.say(world.room_id, "!when")
    await world.ada.wait_for(lambda e: is_reply(e, asked))
    assert not [e for e in world.ada.events if e.get("room_id") == from_ada
                and e.get("sender") == world.bot_user.user_id and e.get("type") != "m.room.member"]
