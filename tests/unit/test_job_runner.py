"""The outbox runner: every job after its commit, retried with backoff, parked when it
keeps failing, never in a tight loop; and the supervisor that keeps tasks alive.

The core runs on real SQLite and a real notes folder; the transport records sends and
fails on request, as a homeserver that cannot be reached would.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chatbot.bot import NOTE_FILE, DeliveryError, MeetingBot
from chatbot.config import ConfigError, parse_config
from chatbot.meetings import Rooms
from chatbot.metrics import Metrics
from chatbot.model import RoomId, UserId
from chatbot.store import OutboxItem, Store
from chatbot.supervise import supervise

from ..support.clock import ManualClock
from ..support.waiting import eventually

ROOM, OTHER = RoomId("!room:example.org"), RoomId("!other:example.org")
T0 = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)


class FlakyTransport:
    """Sends succeed, except to rooms listed in `down` (transient) or `refused` (permanent)."""

    def __init__(self) -> None:
        self.sent: list[OutboxItem] = []
        self.tries: list[OutboxItem] = []
        self.down: set[RoomId] = set()
        self.refused: set[RoomId] = set()

    async def deliver(self, item: OutboxItem) -> str:
        self.tries.append(item)
        if item.room_id in self.refused:
            raise DeliveryError("M_FORBIDDEN", permanent=True)
        if item.room_id in self.down:
            raise DeliveryError("502 Bad Gateway", permanent=False)
        self.sent.append(item)
        return f"$sent{len(self.sent)}"

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        return 0


def config(**jobs: str) -> dict:
    return {
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "meetings": [{"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
                      "start": "2026-06-18 09:00", "rrule": "FREQ=WEEKLY",
                      "chairs": ["@chair:example.org"]}],
        **({"jobs": jobs} if jobs else {}),
    }


@pytest.fixture
async def world(tmp_path: Path):
    store = await Store.open(tmp_path / "bot.db")
    clock, transport = ManualClock(T0), FlakyTransport()
    bot = MeetingBot(Rooms(parse_config(config(retry_cap="10s", park_after="1h")),
                           {"team": ROOM}),
                     store, tmp_path / "notes", transport, clock=clock, metrics=Metrics(clock))
    yield bot, clock, transport, tmp_path / "notes"
    await store.close()


async def queue(bot: MeetingBot, room: RoomId, kind: str, payload: dict) -> None:
    async with bot.store.transaction():
        await bot.store.enqueue(room, kind, payload, bot.clock())


async def note_jobs(bot: MeetingBot) -> list[OutboxItem]:
    return [item for item in await bot.store.read.pending_outbox() if item.kind == NOTE_FILE]


def texts(transport: FlakyTransport) -> list[str]:
    return [item.payload.get("text", "") for item in transport.sent]


async def test_a_note_that_cannot_be_saved_waits_tells_the_chairs_once_then_lands(
    world,
) -> None:
    bot, clock, transport, notes = world
    notes.mkdir()
    (notes / "team").write_text("a file where the meeting's folder should be")
    await queue(bot, ROOM, NOTE_FILE, {"path": "team/2026-06-18.md", "text": "# Note\n"})

    assert (await bot.deliver_due())[0]
    [waiting] = await note_jobs(bot)
    assert waiting.attempts == 1
    assert T0 + timedelta(seconds=0.5) <= waiting.next_attempt_at <= T0 + timedelta(seconds=1)

    # The chairs' message goes out in the next pass; the note itself is not tried again
    # before its time, however often the runner looks.
    for _ in range(5):
        progressed, next_due = await bot.deliver_due()
    assert not progressed and next_due == waiting.next_attempt_at
    [told] = [text for text in texts(transport) if text.startswith("**Chairs:**")]
    assert "notes/team/2026-06-18.md" in told and "I will keep trying" in told

    for _ in range(4):  # failing again: the waits grow, the chairs are not told again
        clock.now = (await note_jobs(bot))[0].next_attempt_at
        await bot.deliver_due()
    [again] = await note_jobs(bot)
    assert again.attempts == 5
    assert again.next_attempt_at - clock.now >= timedelta(seconds=4)
    assert len([text for text in texts(transport) if text.startswith("**Chairs:**")]) == 1

    (notes / "team").unlink()
    clock.now = again.next_attempt_at
    await bot.deliver_due()
    assert (notes / "team" / "2026-06-18.md").read_text() == "# Note\n"
    assert await bot.outbox_empty()


async def test_a_job_failing_past_park_after_is_parked_and_the_chairs_are_told(world) -> None:
    bot, clock, transport, notes = world
    notes.mkdir()
    (notes / "team").write_text("in the way")
    await queue(bot, ROOM, NOTE_FILE, {"path": "team/2026-06-18.md", "text": "# Note\n"})
    await bot.deliver_due()
    clock.advance(hours=1)
    await bot.deliver_due()
    await bot.deliver_due()
    assert await bot.outbox_empty()  # parked: no longer pending
    assert any("I gave up saving the meeting note" in text for text in texts(transport))
    assert 'chatbot_jobs_parked_total{kind="note_file"} 1.0' in bot.metrics.render().decode()


async def test_a_room_that_cannot_be_reached_holds_back_only_its_own_messages(world) -> None:
    bot, clock, transport, _ = world
    transport.down.add(ROOM)
    await queue(bot, ROOM, "message", {"text": "first", "html": "first"})
    await queue(bot, ROOM, "message", {"text": "second", "html": "second"})
    await queue(bot, OTHER, "message", {"text": "elsewhere", "html": "elsewhere"})
    await bot.deliver_due()
    assert texts(transport) == ["elsewhere"]
    # "second" waits behind "first": a room's messages keep their order.
    assert [item.payload["text"] for item in transport.tries if item.room_id == ROOM] == [
        "first"]

    transport.down.clear()
    clock.advance(seconds=1)
    await bot.deliver_due()
    assert texts(transport) == ["elsewhere", "first", "second"]


async def test_a_permanent_refusal_is_given_up_at_once_and_the_queue_moves_on(world) -> None:
    bot, _, transport, _ = world
    transport.refused.add(ROOM)
    await queue(bot, ROOM, "message", {"text": "refused", "html": "refused"})
    await queue(bot, OTHER, "message", {"text": "fine", "html": "fine"})
    await bot.deliver_due()
    assert texts(transport) == ["fine"]
    assert await bot.outbox_empty()


async def test_the_runner_sleeps_until_the_next_retry_instead_of_spinning(world) -> None:
    bot, _, transport, _ = world
    bot.clock = lambda: datetime.now(UTC)  # real time: the runner really waits here
    transport.down.add(ROOM)
    await queue(bot, ROOM, "message", {"text": "hello", "html": "hello"})
    tried_at: list[float] = []
    deliver = transport.deliver

    async def timed(item: OutboxItem) -> str:
        tried_at.append(time.monotonic())
        return await deliver(item)

    transport.deliver = timed  # type: ignore[method-assign]
    runner = asyncio.create_task(bot.deliver_forever())
    try:
        await eventually(lambda: len(tried_at) >= 3, "three tries", timeout=10)
    finally:
        runner.cancel()
    # First try at once, the retry after 0.5 to 1 s, the next after 1 to 2 s; a spinning
    # runner would try hundreds of times in that span.
    first_wait, second_wait = tried_at[1] - tried_at[0], tried_at[2] - tried_at[1]
    assert first_wait >= 0.45 and second_wait >= 0.95, (first_wait, second_wait)


class RateLimitedTransport(FlakyTransport):
    """Answers the first `limited` sends as a rate-limited service does: try again at
    `retry_at`, not before."""

    def __init__(self, retry_at: datetime, limited: int = 1) -> None:
        super().__init__()
        self.retry_at, self.limited = retry_at, limited

    async def deliver(self, item: OutboxItem) -> str:
        if self.limited > 0:
            self.limited -= 1
            self.tries.append(item)
            raise DeliveryError("429 Too Many Requests", permanent=False,
                                retry_at=self.retry_at)
        return await super().deliver(item)


@pytest.mark.parametrize(("wait", "expected_wait"), [
    # Longer than the backoff (0.5 to 1 s for a first failure): the service's time wins.
    (timedelta(minutes=5), timedelta(minutes=5)),
    # Shorter than the backoff, or already past: the backoff still applies.
    (timedelta(seconds=0), None),
])
async def test_a_retry_comes_no_earlier_than_the_time_the_service_named(
        tmp_path: Path, wait: timedelta, expected_wait: timedelta | None) -> None:
    clock = ManualClock(T0)
    transport = RateLimitedTransport(T0 + wait)
    rooms = Rooms(parse_config(config(retry_cap="10s", park_after="1h")), {"team": ROOM})
    store = await Store.open(tmp_path / "bot.db")
    try:
        bot = MeetingBot(rooms, store, tmp_path / "notes", transport, clock=clock)
        await queue(bot, ROOM, "message", {"text": "hello", "html": "hello"})
        await bot.deliver_due()
        [waiting] = await store.read.pending_outbox()
        assert waiting.attempts == 1
        if expected_wait is None:
            assert T0 + timedelta(seconds=0.5) <= waiting.next_attempt_at <= \
                T0 + timedelta(seconds=1)
        else:
            assert waiting.next_attempt_at == T0 + expected_wait
        clock.now = waiting.next_attempt_at - timedelta(seconds=1)
        for _ in range(3):
            await bot.deliver_due()
        assert len(transport.tries) == 1  # not a try before the time
    finally:
        await store.close()

    # The time is the job's, in the database: a restarted bot waits for it too.
    store = await Store.open(tmp_path / "bot.db")
    try:
        bot = MeetingBot(rooms, store, tmp_path / "notes", transport, clock=clock)
        await bot.deliver_due()
        assert len(transport.tries) == 1
        clock.now = waiting.next_attempt_at
        await bot.deliver_due()
        assert texts(transport) == ["hello"]
        assert await bot.outbox_empty()
    finally:
        await store.close()


async def test_a_failing_scheduled_job_waits_out_its_backoff(world) -> None:
    bot, clock, _, _ = world
    [job] = [job for job in await bot.plan() if job.due_at <= clock.now + timedelta(days=1)][:1]
    await bot.store._db.execute("PRAGMA query_only = ON")  # every write now fails
    clock.now = job.due_at
    await bot.run_job(job)
    [planned] = [again for again in await bot.plan() if again.id == job.id]
    assert planned.retry_at is not None
    assert clock.now + timedelta(seconds=0.5) <= planned.due_at <= clock.now + timedelta(seconds=1)

    await bot.store._db.execute("PRAGMA query_only = OFF")
    clock.now = planned.due_at
    await bot.run_job(planned)
    assert all(again.retry_at is None for again in await bot.plan())


@pytest.mark.parametrize(("jobs", "message"), [
    ({"retry_cap": "2h", "park_after": "1h"}, "jobs: expected `retry_cap` no longer than"),
    ({"retry_cap": "soon"}, "jobs.retry_cap"),
    ({"park_after": "0s"}, "jobs.park_after"),
])
def test_bad_jobs_settings_name_the_key(jobs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("`", ".")):
        parse_config(config(**jobs))


# --- the supervisor ----------------------------------------------------------------------


async def test_a_crashing_task_is_restarted_counted_and_reported_until_it_recovers() -> None:
    metrics = Metrics(lambda: T0)
    runs: list[int] = []
    recovered = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        assert metrics.unhealthy_reason(T0) == (
            "task outbox is failing (RuntimeError: boom 2, since 08:00:00 UTC)")
        await recovered.wait()

    task = asyncio.create_task(supervise("outbox", flaky, metrics=metrics, clock=lambda: T0,
                                         healthy_after=0.05, cap=0.01))
    await eventually(lambda: len(runs) == 3, "the third run", timeout=5)
    await eventually(lambda: metrics.unhealthy_reason(T0) is None or "task" not in
                     metrics.unhealthy_reason(T0), "the task counted as working again", 5)
    assert 'chatbot_task_crashes_total{task="outbox"} 2.0' in metrics.render().decode()
    recovered.set()
    await task  # a task that returns is not restarted


async def test_a_fatal_error_ends_the_supervisor() -> None:
    class Refused(Exception):
        pass

    async def refused() -> None:
        raise Refused("login refused")

    with pytest.raises(Refused):
        await supervise("sync", refused, metrics=Metrics(lambda: T0), clock=lambda: T0,
                        fatal=(Refused,))
