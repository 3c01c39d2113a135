"""Who may do what: every command against a chair, a moderator, a member, a user on
another homeserver, a member writing in a room the bot is not configured for, and the
bot itself. The core runs on real SQLite; its transport only records what it would send.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chatbot.bot import IncomingMessage, MeetingBot
from chatbot.commands import REGISTRY
from chatbot.config import parse_config
from chatbot.matrix import incoming_event
from chatbot.meetings import Rooms
from chatbot.model import EventId, RoomId, UserId
from chatbot.store import OutboxItem, Store

ROOM = RoomId("!room:example.org")
ELSEWHERE = RoomId("!elsewhere:example.org")
BOT = "@bot:example.org"
CHAIR, MODERATOR = UserId("@chair:example.org"), UserId("@mod:example.org")
MEMBER, REMOTE = UserId("@member:example.org"), UserId("@eve:other.example")
NOW = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)

ARGUMENTS = {
    "iam": "Ada / Org / @ada", "update": "shipped it", "celebrate": "v2",
    "agenda": "(5 min) Budget", "item": "1", "note": "a note", "action": "write it",
    "agreed": "ship it", "chair": "@someone:example.org", "unchair": "@someone:example.org",
}
# (sender, room, may run chair commands)
SENDERS = {
    "configured chair": (CHAIR, ROOM, True),
    "moderator (power 50)": (MODERATOR, ROOM, True),
    "member": (MEMBER, ROOM, False),
    "user on another homeserver": (REMOTE, ROOM, False),
}


class RecordingTransport:
    """Power levels from a table; deliveries recorded instead of sent."""

    def __init__(self) -> None:
        self.sent: list[OutboxItem] = []

    async def deliver(self, item: OutboxItem) -> str:
        self.sent.append(item)
        return f"$sent{len(self.sent)}"

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        return {MODERATOR: 50}.get(user_id, 0) if room_id == ROOM else 0


async def make_bot(tmp_path: Path) -> MeetingBot:
    config = parse_config({
        "matrix": {"homeserver": "https://m.example.org", "user_id": BOT, "password": "x"},
        "meetings": [{"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
                      "start": (NOW + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M"),
                      "rrule": "FREQ=WEEKLY", "chairs": [CHAIR]}],
    })
    store = await Store.open(tmp_path / "bot.db")
    return MeetingBot(Rooms(config, {"team": ROOM}), store, tmp_path / "notes",
                      RecordingTransport(), clock=lambda: NOW)


async def answers(bot: MeetingBot, sender: UserId, room: RoomId, body: str) -> list[OutboxItem]:
    event = EventId(f"${abs(hash((sender, body)))}")
    await bot.handle(IncomingMessage(room, event, sender, sender[1:].split(":")[0], body))
    return [item for item in await bot.store.pending_outbox(limit=100)
            if item.payload.get("event_id") == event or item.payload.get("in_reply_to") == event]


CASES = [
    pytest.param(spec.name, who, id=f"{spec.name} by {who}")
    for spec in REGISTRY for who in SENDERS
]


@pytest.mark.parametrize(("command", "who"), CASES)
async def test_chair_commands_are_refused_to_non_chairs_and_others_are_open(
    tmp_path: Path, command: str, who: str
) -> None:
    bot = await make_bot(tmp_path)
    sender, room, is_chair = SENDERS[who]
    spec = next(spec for spec in REGISTRY if spec.name == command)
    replies = await answers(bot, sender, room, f"!{command} {ARGUMENTS.get(command, '')}")
    refused = [item for item in replies if "Only chairs" in item.payload.get("text", "")]
    assert replies, "every command gets an answer"
    if spec.chair_only and not is_chair:
        assert refused and "`!chair @user`" in refused[0].payload["text"]
    else:
        assert not refused
    await bot.store.close()


@pytest.mark.parametrize("command", [spec.name for spec in REGISTRY])
async def test_commands_in_a_room_that_is_not_configured_do_nothing(
    tmp_path: Path, command: str
) -> None:
    bot = await make_bot(tmp_path)
    replies = await answers(bot, CHAIR, ELSEWHERE, f"!{command} {ARGUMENTS.get(command, '')}")
    assert replies == []
    assert await bot.store.pending_outbox() == []
    await bot.store.close()


async def test_only_the_owner_or_a_chair_may_change_an_item(tmp_path: Path) -> None:
    bot = await make_bot(tmp_path)
    await answers(bot, MEMBER, ROOM, "!agenda (5 min) Mine")
    (refused,) = await answers(bot, REMOTE, ROOM, "!agenda edit 1 Theirs now")
    assert "Only the item's owner (member) or a chair" in refused.payload["text"]
    (moved,) = await answers(bot, MODERATOR, ROOM, "!agenda edit 1 (10 min) Tidied")
    assert moved.kind == "react"
    await bot.store.close()


def test_the_bots_own_messages_never_reach_the_core() -> None:
    event = {"type": "m.room.message", "sender": BOT, "event_id": "$1",
             "content": {"msgtype": "m.text", "body": "!endmeeting"}}
    assert incoming_event(event, ROOM, BOT, lambda user: user) is None
    assert incoming_event({**event, "sender": CHAIR}, ROOM, BOT, lambda user: user) is not None


async def test_an_edit_by_someone_else_changes_nothing(tmp_path: Path) -> None:
    bot = await make_bot(tmp_path)
    here = EventId("$member-here")
    await bot.handle(IncomingMessage(ROOM, here, MEMBER, "member", "!here"))
    # A crafted m.replace from another user pointing at the member's `!here`.
    await bot.handle(IncomingMessage(ROOM, EventId("$forged"), REMOTE, "eve", "just chatting",
                                     replaces=here))
    await bot.handle(IncomingMessage(ROOM, EventId("$forged-2"), REMOTE, "eve",
                                     "!update hijacked", replaces=here))
    meeting = await bot.store.open_meeting_in_room(ROOM) or (
        await bot.store.find_scheduled("team", NOW + timedelta(hours=1)))
    assert meeting is not None
    record = await bot.store.record(meeting)
    assert [a.user_id for a in record.attendees] == [MEMBER]
    assert record.entries == ()
    await bot.store.close()
