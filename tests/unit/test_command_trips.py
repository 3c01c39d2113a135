"""What a command costs in trips to the database while its ✅ waits, and that the outbox
runner's shortcut (the jobs a command queued handed over, not read back) loses and doubles
nothing. The core runs on real SQLite with its real outbox runner; every statement either
connection runs is traced (sqlite3's trace callback), and the transport records sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chatbot.bot import DeliveryError, IncomingMessage, MeetingBot, Post
from chatbot.config import parse_config
from chatbot.meetings import Rooms
from chatbot.metrics import Metrics
from chatbot.model import EventId, RoomId, UserId
from chatbot.store import OutboxItem, Store
from tests.support.transports import RecordingTransport
from tests.support.waiting import eventually

ROOM = RoomId("!room:example.org")
BOT, CHAIR = "@bot:example.org", UserId("@chair:example.org")
MEMBER = UserId("@member:example.org")
NOW = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)
# What `!here` and `!update` run before their ✅ goes out, ahead of the sitting: BEGIN,
# the claim, finding the meeting with the sender's profile and count of entries (one
# query), the entry, the ✅'s job, COMMIT.
HERE_STATEMENTS, UPDATE_STATEMENTS = 6, 6


class TracingTransport(RecordingTransport):
    """Records, at each send, the statements run until then; fails when told to. Like the
    Matrix transport, it tells the metrics when a ✅ is being sent (the end of a command's
    own time)."""

    def __init__(self, statements: list[str]) -> None:
        super().__init__()
        self.statements = statements
        self.metrics: Metrics | None = None
        self.at_send: dict[str, list[str]] = {}
        self.failures_left = 0

    async def deliver(self, item: OutboxItem) -> str:
        if self.failures_left:
            self.failures_left -= 1
            raise DeliveryError("homeserver busy", permanent=False)
        self.at_send[str(item.payload.get("event_id", item.id))] = list(self.statements)
        if item.kind == "react" and self.metrics is not None:
            self.metrics.acknowledging(item.payload["event_id"])
        return await super().deliver(item)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[MeetingBot, TracingTransport,
                                                         list[str]]]:
    config = parse_config({
        "matrix": {"homeserver": "https://m.example.org", "user_id": BOT, "password": "x"},
        "meetings": [{"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
                      "start": (NOW + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M"),
                      "rrule": "FREQ=WEEKLY", "chairs": [CHAIR]}],
        "jobs": {"retry_cap": "1s"},
    })
    store = await Store.open(tmp_path / "bot.db")
    statements: list[str] = []
    await store._db.set_trace_callback(lambda sql: statements.append("write: " + sql))
    await store.read._db.set_trace_callback(lambda sql: statements.append("read: " + sql))
    transport = TracingTransport(statements)
    bot = MeetingBot(Rooms(config, {"team": ROOM}), store, tmp_path / "notes", transport,
                     clock=lambda: datetime.now(UTC))
    transport.metrics = bot.metrics
    runner = asyncio.create_task(bot.deliver_forever())
    try:
        yield bot, transport, statements
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await store.close()


async def say(bot: MeetingBot, body: str, tag: str) -> EventId:
    event_id = EventId(f"${tag}")
    bot.metrics.message_arrived(event_id, bot.metrics.own_time.timer())  # as the intake does
    await bot.handle(IncomingMessage(ROOM, event_id, MEMBER, "Member", body))
    return event_id


def acked(transport: RecordingTransport) -> list[str]:
    return [item.payload["event_id"] for item in transport.sent if item.kind == "react"]


async def command_statements(bot: MeetingBot, transport: TracingTransport,
                             statements: list[str], body: str, tag: str) -> list[str]:
    """The statements run from the command's arrival to its ✅'s send."""
    async def runner_idle() -> bool:
        return (bot._knows_queue and not bot._outbox_ready.is_set()
                and not await bot.store.read.has_pending_outbox())

    await eventually(runner_idle, "the runner idle, knowing the queue is empty", timeout=5)
    statements.clear()
    event_id = await say(bot, body, tag)
    await eventually(lambda: event_id in transport.at_send, f"the ✅ of {body}", timeout=5)
    return transport.at_send[event_id]


async def test_a_command_reaches_its_ack_in_few_statements_and_no_read_of_the_queue(
        running: tuple[MeetingBot, TracingTransport, list[str]]) -> None:
    bot, transport, statements = running
    await say(bot, "!here", "warm")  # the first pass reads the queue; later ones need not
    await eventually(lambda: acked(transport) == ["$warm"], "the first ✅", timeout=5)

    here = await command_statements(bot, transport, statements, "!here", "here")
    update = await command_statements(bot, transport, statements, "!update shipped it", "up")

    for name, ran, most in (("!here", here, HERE_STATEMENTS),
                            ("!update", update, UPDATE_STATEMENTS)):
        assert len(ran) <= most, f"{name} ran {len(ran)} statements before its ✅: {ran}"
        assert not [sql for sql in ran if sql.startswith("read:")], (
            f"{name}'s ✅ waited for a read of the queue: {ran}")
    assert acked(transport) == ["$warm", "$here", "$up"]
    own_time = bot.metrics.own_time.summary()
    assert own_time["here"]["count"] == 2 and own_time["update"]["count"] == 1, (
        "each command's own time is measured, up to its ✅'s send")


async def test_jobs_queued_elsewhere_and_failed_sends_are_read_from_the_queue(
        running: tuple[MeetingBot, TracingTransport, list[str]]) -> None:
    bot, transport, _ = running
    await say(bot, "!here", "first")
    await eventually(lambda: acked(transport) == ["$first"], "the first ✅", timeout=5)

    # A job queued outside a command (as the scheduler does) is read, not handed over.
    async with bot.store.transaction():
        await bot._record([Post(ROOM, "The meeting starts in 10 minutes.")], ROOM, None, NOW)
    bot._wake_outbox()
    await eventually(lambda: "The meeting starts in 10 minutes." in transport.texts(),
                     "the scheduled post", timeout=5)

    # A ✅ that fails is retried from the queue; the commands after it are not lost.
    transport.failures_left = 1
    for n in range(3):
        await say(bot, f"!update thing {n}", f"u{n}")
    await eventually(lambda: len(acked(transport)) == 4, "every ✅ after the retry",
                     timeout=10)
    assert sorted(acked(transport)) == sorted(["$first", "$u0", "$u1", "$u2"]), (
        "each command acknowledged exactly once")
    assert not await bot.store.read.has_pending_outbox()
