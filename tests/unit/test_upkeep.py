"""Bounded growth: old bookkeeping is pruned, idle direct chats are left, daily.

On real SQLite: the store's prune, the upkeep that decides what is safe to prune, the
leave jobs it queues and their carrier, the retention settings and the daily plan.
"""

from __future__ import annotations

import platform
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chatbot.bot import IncomingMessage, MeetingBot
from chatbot.config import ConfigError, RetentionConfig, parse_config
from chatbot.meetings import JobKind, Rooms, plan_upkeep
from chatbot.metrics import Metrics
from chatbot.model import EventId, RoomId, UserId
from chatbot.store import Pruned, Store, Undecrypted
from chatbot.upkeep import LEAVE, hand_back_free_memory, prune_before, run_upkeep

from ..support.clock import ManualClock

ROOM = RoomId("!room:example.org")
DIRECT, QUIET = RoomId("!direct:example.org"), RoomId("!quiet:example.org")
ADA = UserId("@ada:example.org")
T0 = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)


class Transport:
    """Sends succeed; leaves are recorded."""

    def __init__(self) -> None:
        self.left: list[RoomId] = []

    async def deliver(self, item) -> str:
        return "$sent"

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        return 0

    async def leave(self, room_id: RoomId) -> None:
        self.left.append(room_id)


def config(**retention: str) -> dict:
    return {
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "meetings": [{"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
                      "start": "2026-06-18 09:00", "rrule": "FREQ=WEEKLY"}],
        **({"retention": retention} if retention else {}),
    }


ROOMS = Rooms(parse_config(config()), {"team": ROOM})


@pytest.fixture
async def store(tmp_path: Path):
    opened = await Store.open(tmp_path / "bot.db")
    yield opened
    await opened.close()


@pytest.fixture
async def world(store: Store, tmp_path: Path):
    clock, transport = ManualClock(T0), Transport()
    bot = MeetingBot(ROOMS, store, tmp_path / "notes", transport, clock=clock,
                     metrics=Metrics(clock))
    return bot, clock, transport


async def count(store: Store, table: str, where: str = "1") -> int:
    return await store._scalar(f"SELECT count(*) FROM {table} WHERE {where}")


async def handled(store: Store, event: str, when: datetime) -> None:
    async with store.transaction():
        assert await store.claim_event(EventId(event), ROOM, when, ADA)


def undecrypted(event: str, when: datetime) -> Undecrypted:
    return Undecrypted(EventId(event), ROOM, ADA, "session", {"type": "m.room.encrypted"},
                       when)


# --- the store -----------------------------------------------------------------------------


async def test_prune_deletes_what_is_older_than_the_cutoff_and_keeps_the_rest(
        store: Store) -> None:
    old, recent = T0 - 40 * DAY, T0 - DAY
    await handled(store, "$old", old)
    await handled(store, "$recent", recent)
    async with store.transaction():
        for name, when in (("old", old), ("recent", recent)):
            for job in ("sent", "failed", "parked", "pending"):
                await store.enqueue(ROOM, "reply", {"text": f"{name} {job}"}, when)
            await store.add_undecrypted(undecrypted(f"$secret-{name}", when))
            await store.add_undecrypted(undecrypted(f"$answered-{name}", when))
            await store.mark_undecrypted_answered([EventId(f"$answered-{name}")], when)
    async with store.transaction():
        for item in await store.pending_outbox():
            job = item.payload["text"].split()[1]
            if job == "sent":
                await store.mark_sent(item, "$e", item.created_at)
            elif job == "failed":
                await store.mark_failed(item.id, "M_FORBIDDEN", item.created_at)
            elif job == "parked":
                await store.mark_parked(item.id, "kept failing", item.created_at)

    async with store.transaction():
        pruned = await store.prune(T0 - 30 * DAY)

    assert pruned == Pruned(events=1, jobs=2, undecrypted=2)
    assert await store.sender_of(EventId("$old")) is None
    assert await store.sender_of(EventId("$recent")) == ADA
    left = await store._rows("SELECT payload FROM outbox ORDER BY id")
    assert sorted(row["payload"] for row in left) == sorted(
        ['{"text": "old parked"}', '{"text": "old pending"}', '{"text": "recent sent"}',
         '{"text": "recent failed"}', '{"text": "recent parked"}', '{"text": "recent pending"}'])
    assert {m.event_id for m in await store.undecrypted()} == {"$secret-recent",
                                                               "$answered-recent"}


async def test_a_recent_event_is_still_claimed_once_after_pruning(store: Store) -> None:
    await handled(store, "$recent", T0 - DAY)
    async with store.transaction():
        await store.prune(T0 - 30 * DAY)
        assert not await store.claim_event(EventId("$recent"), ROOM, T0, ADA)


async def test_prune_takes_at_most_a_batch_a_table_and_upkeep_repeats_until_done(
        store: Store) -> None:
    async with store.transaction():
        for n in range(7):
            assert await store.claim_event(EventId(f"$e{n}"), ROOM, T0 - 40 * DAY, ADA)
            await store.enqueue(ROOM, "react", {"n": n}, T0 - 40 * DAY)
        for item in await store.pending_outbox():
            await store.mark_sent(item, "$e", T0 - 40 * DAY)
    async with store.transaction():
        assert await store.prune(T0 - 30 * DAY, limit=3) == Pruned(events=3, jobs=3)
    async with store.transaction():
        assert await store.claim_event(EventId("$now"), ROOM, T0, ADA)

    done = await run_upkeep(store, ROOMS, RetentionConfig(), T0, batch=3)

    assert done.pruned == Pruned(events=4, jobs=4)
    assert await count(store, "processed_events") == 1
    assert await count(store, "outbox") == 0


# --- what is safe to prune --------------------------------------------------------------------


def test_the_cutoff_is_the_retention_before_now_while_the_bot_runs() -> None:
    assert prune_before(T0, T0, 30 * DAY) == T0 - 30 * DAY
    assert prune_before(T0, None, 30 * DAY) == T0 - 30 * DAY  # nothing handled yet


def test_after_a_long_stop_the_cutoff_counts_back_from_the_newest_handled_event() -> None:
    stopped = T0 - 45 * DAY
    assert prune_before(T0, stopped, 30 * DAY) == stopped - 30 * DAY


async def test_upkeep_at_start_after_a_long_stop_keeps_what_a_restart_can_replay(
        store: Store) -> None:
    # Handled just before a crash that kept the sync position from being saved; the
    # bot comes back 45 days later and runs the upkeep it owes before syncing.
    await handled(store, "$long-ago", T0 - 80 * DAY)
    await handled(store, "$before-crash", T0 - 45 * DAY)
    async with store.transaction():
        await store.enqueue(ROOM, "react", {"event_id": "$before-crash"}, T0 - 45 * DAY)
        [reaction] = await store.pending_outbox()
        await store.mark_sent(reaction, "$ack", T0 - 45 * DAY)

    done = await run_upkeep(store, ROOMS, RetentionConfig(), T0)

    async with store.transaction():
        assert not await store.claim_event(EventId("$before-crash"), ROOM, T0, ADA)
    assert await store.sender_of(EventId("$long-ago")) is None
    # Finished jobs are no replay's business: they go by the clock.
    assert done.pruned == Pruned(events=1, jobs=1)


# --- direct chats ----------------------------------------------------------------------------


async def test_idle_direct_chats_get_a_leave_job_and_are_forgotten(store: Store) -> None:
    async with store.transaction():
        await store.add_direct_room(DIRECT, T0 - 60 * DAY)
        await store.touch_direct_room(DIRECT, T0 - DAY)  # used yesterday
        await store.add_direct_room(QUIET, T0 - 60 * DAY)  # never used since joining
        await store.add_direct_room(RoomId("!new:example.org"), T0 - DAY)

    done = await run_upkeep(store, ROOMS, RetentionConfig(), T0)

    assert done.leaving == (QUIET,)
    [job] = await store.pending_outbox()
    assert (job.room_id, job.kind, job.payload) == (QUIET, LEAVE, {})
    assert await store.direct_rooms() == {DIRECT, RoomId("!new:example.org")}
    again = await run_upkeep(store, ROOMS, RetentionConfig(), T0)
    assert again.leaving == () and len(await store.pending_outbox()) == 1


async def test_a_meeting_room_is_never_left(store: Store) -> None:
    async with store.transaction():
        await store.add_direct_room(ROOM, T0 - 60 * DAY)  # a direct chat that became one

    done = await run_upkeep(store, ROOMS, RetentionConfig(), T0)

    assert done.leaving == ()
    assert await store.pending_outbox() == []


async def test_answering_in_a_direct_chat_keeps_it(world) -> None:
    bot, clock, _transport = world
    async with bot.store.transaction():
        await bot.store.add_direct_room(DIRECT, T0 - 60 * DAY)
    clock.now = T0 - DAY
    await bot.handle_direct(IncomingMessage(DIRECT, EventId("$hi"), ADA, "Ada", "!help"))
    assert await bot.store.direct_room_last_used(DIRECT) == T0 - DAY

    clock.now = T0
    done = await run_upkeep(bot.store, bot.rooms, RetentionConfig(), T0)
    assert done.leaving == ()


async def test_the_leave_job_leaves_the_room_once(world) -> None:
    bot, _clock, transport = world
    async with bot.store.transaction():
        await bot.store.add_direct_room(QUIET, T0 - 60 * DAY)
        await bot.store.add_known_room(QUIET, T0 - 60 * DAY)
    await bot.run_job(plan_upkeep(None, T0 - DAY))

    await bot.deliver_due()
    await bot.deliver_due()

    assert transport.left == [QUIET]
    # Invited again some day, the bot treats what was said meanwhile as history.
    assert not await bot.store.is_known_room(QUIET)
    assert await bot.outbox_empty()
    assert 'chatbot_direct_chats_left_total 1.0' in bot.metrics.render().decode()


async def test_a_leave_is_called_off_when_someone_writes_before_it_runs(world) -> None:
    bot, clock, transport = world
    async with bot.store.transaction():
        await bot.store.add_direct_room(QUIET, T0 - 60 * DAY)
    await run_upkeep(bot.store, bot.rooms, RetentionConfig(), T0)
    clock.now = T0 + timedelta(seconds=1)
    await bot.handle_direct(IncomingMessage(QUIET, EventId("$back"), ADA, "Ada", "hello"))

    await bot.deliver_due()

    assert transport.left == []
    assert await bot.store.direct_rooms() == {QUIET}
    assert await bot.outbox_empty()


async def test_a_leave_queued_for_a_room_configured_since_is_not_carried_out(world) -> None:
    bot, _clock, transport = world
    async with bot.store.transaction():
        await bot.store.enqueue(ROOM, LEAVE, {}, T0)  # say, queued before a config change

    await bot.deliver_due()

    assert transport.left == []
    assert await bot.outbox_empty()


# --- the daily job ----------------------------------------------------------------------------


async def test_the_upkeep_is_planned_a_day_after_the_first_start_then_daily(world) -> None:
    bot, clock, _transport = world
    first_start = await bot.owed_since()
    [upkeep] = [job for job in await bot.plan() if job.kind is JobKind.UPKEEP]
    assert upkeep.run_at == first_start + DAY
    assert upkeep.id == f"upkeep:{(first_start + DAY).isoformat()}"
    assert [j.id for j in await bot.plan() if j.kind is JobKind.UPKEEP] == [upkeep.id]

    clock.now = upkeep.run_at + timedelta(seconds=3)
    await bot.run_job(upkeep)

    [following] = [job for job in await bot.plan() if job.kind is JobKind.UPKEEP]
    assert following.run_at == clock.now + DAY and following.id != upkeep.id


async def test_the_upkeep_job_prunes_and_counts(world) -> None:
    bot, _clock, _transport = world
    await handled(bot.store, "$old", T0 - 40 * DAY)
    await handled(bot.store, "$new", T0)

    await bot.run_job(plan_upkeep(None, T0 - DAY))

    assert await bot.store.sender_of(EventId("$old")) is None
    assert 'chatbot_pruned_rows_total{table="events"} 1.0' in bot.metrics.render().decode()


async def test_an_upkeep_that_fails_is_retried_with_backoff(world, monkeypatch) -> None:
    bot, clock, _transport = world

    async def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("chatbot.bot.run_upkeep", broken)
    [job] = [j for j in await bot.plan() if j.kind is JobKind.UPKEEP]
    clock.now = job.run_at
    await bot.run_job(job)
    [planned] = [j for j in await bot.plan() if j.kind is JobKind.UPKEEP]
    assert planned.id == job.id and planned.retry_at is not None and planned.retry_at > clock.now


# --- the settings ------------------------------------------------------------------------------


def test_retention_defaults_to_thirty_days() -> None:
    retention = parse_config(config()).retention
    assert retention.events == retention.direct_chats == 30 * DAY
    assert parse_config(config(events="90d", direct_chats="1d")).retention == RetentionConfig(
        events=90 * DAY, direct_chats=DAY)


@pytest.mark.parametrize(("retention", "message"), [
    ({"events": "23h"}, "retention.events: expected at least 1d, got 23h"),
    ({"direct_chats": "0s"}, "retention.direct_chats: expected at least 1d, got 0s"),
    ({"events": "a month"}, "retention.events: expected a duration such as"),
    ({"rooms": "30d"}, "retention.rooms: is not a known key"),
])
def test_bad_retention_settings_name_the_key(retention: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(config(**retention))


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_memory_is_handed_back_to_the_system() -> None:
    # 40 MB in blocks below glibc's mmap threshold: they come from the heap, and stay
    # with the process once freed (the last one, kept, pins the heap's top).
    blocks = [bytearray(100_000) for _ in range(400)]
    kept = blocks[-1]
    del blocks
    before = _rss_mb()
    assert hand_back_free_memory()
    assert _rss_mb() < before - 20, "most of the 40 MB freed went back"
    assert len(kept) == 100_000
