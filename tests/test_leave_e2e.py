"""Leaving a room on a real Synapse: done once, and a room already left counts as left."""

from __future__ import annotations

from chatbot.bot import utc_now
from chatbot.matrix import MatrixEdge
from chatbot.model import RoomId
from chatbot.store import Store

from .conftest import World


async def test_the_bot_leaves_and_forgets_a_room_and_leaving_again_is_no_error(
    world: World,
) -> None:
    config = world.config()
    store = await Store.open(world.tmp / "leave.db")
    edge = MatrixEdge(config, store, clock=utc_now)
    try:
        await edge.login()
        await edge.resolve_rooms()
        room = RoomId(world.room_id)
        await edge.leave(room)
        await edge.leave(room)  # a leave job run again after a crash
        members = await world.chair.client.joined_members(world.room_id)
        assert world.bot_user.user_id not in [m.user_id for m in members.members]
        never_joined = RoomId(await world.grace.create_room(invite=[]))
        await edge.leave(never_joined)
        invited = RoomId(await world.grace.create_room(invite=[world.bot_user.user_id]))
        await edge.leave(invited)  # an invitation declined
        members = await world.grace.client.joined_members(invited)
        assert world.bot_user.user_id not in [m.user_id for m in members.members]
    finally:
        await edge.close()
        await store.close()
