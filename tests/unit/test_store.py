"""The SQLite store, on a real database file: schema, idempotent writes, transactions, outbox."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import chatbot.store
from chatbot.model import EntryKind, EventId, Profile, RoomId, Standing, UserId
from chatbot.store import MIGRATIONS, Store, StoreError

ROOM = RoomId("!room:example.org")
ADA = UserId("@ada:example.org")
GRACE = UserId("@grace:example.org")
T0 = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def a_meeting(store: Store, start: datetime = T0, series: str = "team") -> int:
    async with store.transaction():
        return (await store.ensure_scheduled(series, ROOM, "Team Meeting", start)).id


def pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as connection:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]


# --- schema ----------------------------------------------------------------------------------


async def test_a_new_database_is_migrated_to_the_latest_version_in_wal_mode(
    tmp_path: Path,
) -> None:
    path = tmp_path / "nested" / "bot.db"
    store = await Store.open(path)
    await store.close()
    assert pragma(path, "user_version") == len(MIGRATIONS)
    assert pragma(path, "journal_mode") == "wal"


async def test_opening_again_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    store = await Store.open(path)
    async with store.transaction():
        assert await store.claim_event(EventId("$one"), ROOM, T0)
    await store.close()
    store = await Store.open(path)
    try:
        assert not await store.claim_event(EventId("$one"), ROOM, T0)  # the data is still there
    finally:
        await store.close()
    assert pragma(path, "user_version") == len(MIGRATIONS)


async def test_foreign_keys_are_enforced(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        async with store.transaction():
            await store.add_attendee(404, ADA, Profile("Ada"), EventId("$e"), T0)


async def test_a_database_from_a_newer_chatbot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match=rf"schema version {len(MIGRATIONS) + 1}, newer than"):
        await Store.open(path)
    assert pragma(path, "user_version") == len(MIGRATIONS) + 1  # left as it was


async def test_a_failing_migration_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bot.db"
    monkeypatch.setattr(chatbot.store, "MIGRATIONS",
                        (*MIGRATIONS,
                         ("CREATE TABLE half_done (x)", "INSERT INTO nowhere VALUES (1)")))
    with pytest.raises(sqlite3.OperationalError, match="no such table: nowhere"):
        await Store.open(path)
    assert pragma(path, "user_version") == len(MIGRATIONS)
    with sqlite3.connect(path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in tables and "meetings" in tables


# --- idempotent writes -----------------------------------------------------------------------


async def test_claim_event_is_true_once_then_false(store: Store) -> None:
    async with store.transaction():
        first = await store.claim_event(EventId("$e1"), ROOM, T0)
        second = await store.claim_event(EventId("$e1"), ROOM, at(1))
        other = await store.claim_event(EventId("$e2"), ROOM, at(1))
    assert (first, second, other) == (True, False, True)


async def test_the_same_event_adds_one_entry(store: Store) -> None:
    meeting_id = await a_meeting(store)
    async with store.transaction():
        for _ in range(2):
            await store.add_entry(meeting_id, EntryKind.UPDATE, ADA, "Ada", "shipped it", None,
                                  EventId("$u1"), T0)
        await store.add_entry(meeting_id, EntryKind.AGENDA, ADA, "Ada", "Release", 10,
                              EventId("$a1"), at(1))
    meeting = await store.get_meeting(meeting_id)
    assert meeting is not None
    record = await store.record(meeting)
    assert [(e.kind, e.text, e.minutes, e.event_id) for e in record.entries] == [
        (EntryKind.UPDATE, "shipped it", None, "$u1"),
        (EntryKind.AGENDA, "Release", 10, "$a1"),
    ]
    assert record.entries[0].created_at == T0


async def test_answering_roll_call_twice_keeps_one_line_in_arrival_order(store: Store) -> None:
    meeting_id = await a_meeting(store)
    async with store.transaction():
        await store.add_attendee(meeting_id, ADA, Profile("Ada"), EventId("$h1"), at(1))
        await store.add_attendee(meeting_id, GRACE, Profile("Grace Hopper", "US Navy", "@grace"),
                                 EventId("$h2"), at(2))
        await store.add_attendee(meeting_id, ADA, Profile("Ada Lovelace", "Engines", "@ada"),
                                 EventId("$h3"), at(3))
    meeting = await store.get_meeting(meeting_id)
    assert meeting is not None
    record = await store.record(meeting)
    assert [(a.user_id, a.profile) for a in record.attendees] == [
        (ADA, Profile("Ada Lovelace", "Engines", "@ada")),  # refreshed, still first
        (GRACE, Profile("Grace Hopper", "US Navy", "@grace")),
    ]


async def test_ensure_scheduled_is_idempotent_whatever_the_zone(store: Store) -> None:
    first = await a_meeting(store)
    again = await a_meeting(store, T0.astimezone(ZoneInfo("Europe/London")))
    later = await a_meeting(store, at(60 * 24 * 7))
    other_series = await a_meeting(store, T0, series="other")
    assert first == again
    assert len({first, later, other_series}) == 3
    meeting = await store.find_scheduled("team", T0)
    assert meeting is not None and meeting.id == first
    assert meeting.scheduled_start == T0 and meeting.started_at is None


async def test_naive_times_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        async with store.transaction():
            await store.claim_event(EventId("$e"), ROOM, datetime(2026, 6, 18, 8, 0))


# --- transactions ------------------------------------------------------------------------------


async def test_a_transaction_that_raises_leaves_nothing_behind(store: Store) -> None:
    meeting_id = await a_meeting(store)
    with pytest.raises(RuntimeError, match="handler failed"):
        async with store.transaction():
            assert await store.claim_event(EventId("$e1"), ROOM, T0)
            await store.add_entry(meeting_id, EntryKind.UPDATE, ADA, "Ada", "lost", None,
                                  EventId("$e1"), T0)
            await store.save_profile(ADA, Profile("Ada"), T0)
            await store.enqueue(ROOM, "react", {"key": "✅"}, T0)
            raise RuntimeError("handler failed")
    meeting = await store.get_meeting(meeting_id)
    assert meeting is not None
    assert (await store.record(meeting)).entries == ()
    assert await store.get_profile(ADA) is None
    assert await store.pending_outbox() == []
    async with store.transaction():  # the event can be handled again after the failure
        assert await store.claim_event(EventId("$e1"), ROOM, T0)


# --- meetings ---------------------------------------------------------------------------------


async def test_a_meeting_is_started_only_once_and_ended_only_when_open(store: Store) -> None:
    meeting_id = await a_meeting(store)
    async with store.transaction():
        ended_early = await store.mark_ended(meeting_id, at(1))
        first = await store.mark_started(meeting_id, at(1), at(90), "Team Meeting (17th)")
        second = await store.mark_started(meeting_id, at(5), at(95), "Another title")
    assert (ended_early, first, second) == (False, True, False)
    meeting = await store.get_meeting(meeting_id)
    assert meeting is not None and meeting.is_open
    assert (meeting.started_at, meeting.closes_at, meeting.title) == (
        at(1), at(90), "Team Meeting (17th)")
    assert await store.open_meeting_in_room(ROOM) == meeting
    async with store.transaction():
        assert await store.mark_ended(meeting_id, at(60))
        assert not await store.mark_ended(meeting_id, at(61))
    closed = await store.get_meeting(meeting_id)
    assert closed is not None and closed.is_closed and closed.ended_at == at(60)
    assert await store.open_meeting_in_room(ROOM) is None
    assert await store.meetings_of_series("team") == [closed]


async def test_a_new_profile_renames_only_in_meetings_not_yet_closed(store: Store) -> None:
    closed_id = await a_meeting(store, T0)
    open_id = await a_meeting(store, at(60 * 24 * 7))
    async with store.transaction():
        for number, meeting_id in enumerate((closed_id, open_id)):
            await store.add_attendee(meeting_id, ADA, Profile("Ada"), EventId(f"$h{number}"), T0)
            await store.add_entry(meeting_id, EntryKind.UPDATE, ADA, "Ada", "done", None,
                                  EventId(f"$u{number}"), T0)
            await store.add_attendee(meeting_id, GRACE, Profile("Grace"), EventId(f"$g{number}"),
                                     T0)
        await store.mark_started(closed_id, T0, at(60), "Held")
        await store.mark_ended(closed_id, at(60))
        await store.rename_in_unclosed(ADA, Profile("Ada Lovelace", "Engines", "@ada"))

    async def roll_call_and_names(meeting_id: int) -> tuple[list[Profile], list[str]]:
        meeting = await store.get_meeting(meeting_id)
        assert meeting is not None
        record = await store.record(meeting)
        return [a.profile for a in record.attendees], [e.sender_name for e in record.entries]

    assert await roll_call_and_names(closed_id) == ([Profile("Ada"), Profile("Grace")], ["Ada"])
    assert await roll_call_and_names(open_id) == (
        [Profile("Ada Lovelace", "Engines", "@ada"), Profile("Grace")], ["Ada Lovelace"])


async def test_profiles_are_saved_and_replaced(store: Store) -> None:
    async with store.transaction():
        await store.save_profile(ADA, Profile("Ada"), T0)
        await store.save_profile(ADA, Profile("Ada Lovelace", "Engines", "@ada"), at(1))
    assert await store.get_profile(ADA) == Profile("Ada Lovelace", "Engines", "@ada")
    assert await store.get_profile(GRACE) is None


async def test_a_reminder_is_decided_once(store: Store) -> None:
    async with store.transaction():
        first = await store.record_reminder("team", T0, 3600, "send", at(-60))
        again = await store.record_reminder("team", T0.astimezone(ZoneInfo("Asia/Tokyo")), 3600,
                                            "send", at(-59))
        other = await store.record_reminder("team", T0, 600, "send", at(-10))
    assert (first, again, other) == (True, False, True)
    assert await store.decided_reminders("team", T0) == {3600, 600}
    assert await store.decided_reminders("team", at(1)) == set()


# --- outbox -----------------------------------------------------------------------------------


async def test_the_outbox_hands_out_unsent_items_in_order(store: Store) -> None:
    async with store.transaction():
        await store.enqueue(ROOM, "text", {"body": "first ✅"}, T0)
        await store.enqueue(ROOM, "react", {"event_id": "$e", "key": "✅"}, T0)
        await store.enqueue(RoomId("!other:example.org"), "text", {"body": "third"}, at(1))
    pending = await store.pending_outbox()
    # Rooms take turns: each room's first item, then each room's second, and so on.
    assert [(item.room_id, item.kind, item.payload) for item in pending] == [
        (ROOM, "text", {"body": "first ✅"}),
        ("!other:example.org", "text", {"body": "third"}),
        (ROOM, "react", {"event_id": "$e", "key": "✅"}),
    ]
    assert pending[0].created_at == T0
    assert len({item.txn_id for item in pending}) == 3  # each send has its own transaction id
    assert await store.pending_outbox(limit=1) == pending[:1]

    first, third, second = pending
    async with store.transaction():
        await store.mark_sent(first, "$sent", at(2))
    assert await store.pending_outbox() == [second, third]  # both rooms are at their first again
    async with store.transaction():
        await store.mark_failed(second.id, "M_FORBIDDEN", at(3))
    assert await store.pending_outbox() == [third]
    async with store.transaction():
        await store.mark_sent(third, "$sent3", at(4))
    assert await store.pending_outbox() == []


async def test_a_busy_room_does_not_starve_another(store: Store) -> None:
    busy, quiet = ROOM, RoomId("!quiet:example.org")
    async with store.transaction():
        for n in range(30):
            await store.enqueue(busy, "text", {"body": f"flood {n}"}, T0)
        await store.enqueue(quiet, "text", {"body": "hello"}, at(1))
    pending = await store.pending_outbox(limit=5)
    assert [item.room_id for item in pending][:2] == [busy, quiet]
    # Within a room the order stays the order of enqueueing.
    bodies = [item.payload["body"] for item in pending if item.room_id == busy]
    assert bodies == sorted(bodies, key=lambda body: int(body.split()[1]))


async def test_retried_and_parked_items_wait_or_leave_the_queue(store: Store) -> None:
    async with store.transaction():
        await store.enqueue(ROOM, "text", {"body": "one"}, T0)
        await store.enqueue(ROOM, "text", {"body": "two"}, T0)
    one, two = await store.pending_outbox()
    async with store.transaction():
        await store.mark_retry(one.id, "disk full", at(60))
        await store.mark_parked(two.id, "gave up", at(1))
    [retried] = await store.pending_outbox()
    assert retried.attempts == 1 and retried.next_attempt_at == at(60)
    assert not retried.is_due(at(59)) and retried.is_due(at(60))
    assert await store.has_pending_outbox()
    async with store.transaction():
        await store.mark_sent(retried, "$ok", at(61))
    assert not await store.has_pending_outbox()


async def test_a_failed_commit_rolls_back_and_leaves_the_store_usable(store: Store) -> None:
    # A deferred foreign key fails only at COMMIT; the unit of work must roll back, not wedge.
    await store._db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    await store._db.execute(
        "CREATE TABLE child (parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    await store._db.execute("PRAGMA foreign_keys = ON")
    with pytest.raises(sqlite3.IntegrityError):
        async with store.transaction():
            await store.set_meta("lost", "yes")
            await store._db.execute("INSERT INTO child VALUES (42)")
    assert await store.get_meta("lost") is None
    async with store.transaction():
        await store.set_meta("kept", "yes")
    assert await store.get_meta("kept") == "yes"


async def test_save_meta_sets_every_key_at_once_and_commits_it(store: Store) -> None:
    await store.save_meta({"sync_token": "s1", "heard_at": "then"})
    await store.save_meta({"sync_token": "s2", "heard_at": "now"})  # both replaced
    assert await store.read.get_meta("sync_token") == "s2", "committed: the reader sees it"
    assert await store.read.get_meta("heard_at") == "now"
    assert not store._db.in_transaction


async def test_the_reader_never_sees_uncommitted_rows(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bot.db")
    try:
        async with store.transaction():
            await store.enqueue(ROOM, "text", {"body": "not yet"}, T0)
            assert await store.read.pending_outbox() == []
            assert len(await store.pending_outbox()) == 1  # the writer sees its own work
        assert len(await store.read.pending_outbox()) == 1
        with pytest.raises(sqlite3.OperationalError):
            async with store.read.transaction():
                await store.read.set_meta("x", "y")  # the reader is read-only
    finally:
        await store.close()


async def test_meta_values_are_upserted(store: Store) -> None:
    async with store.transaction():
        await store.set_meta("first_start", "2026-06-18")
        await store.set_meta("first_start", "2026-06-19")
    assert await store.get_meta("first_start") == "2026-06-19"
    assert await store.get_meta("missing") is None


async def test_an_online_backup_is_a_consistent_copy_even_mid_transaction(tmp_path: Path) -> None:
    from chatbot.store import backup_database

    path = tmp_path / "bot.db"
    store = await Store.open(path)
    async with store.transaction():
        await store.set_meta("committed", "yes")
    async with store.transaction():
        await store.set_meta("in flight", "not yet")
        version = backup_database(path, tmp_path / "copy.db")  # taken while this is open
    await store.close()
    copy = await Store.open(tmp_path / "copy.db")
    assert version == len(MIGRATIONS)
    assert await copy.get_meta("committed") == "yes"
    assert await copy.get_meta("in flight") is None
    await copy.close()
    with pytest.raises(StoreError, match="no database"):
        backup_database(tmp_path / "missing.db", tmp_path / "x.db")
    with pytest.raises(StoreError, match="cannot back up"):
        backup_database(path, tmp_path / "no such folder" / "x.db")


@pytest.mark.parametrize("version", range(len(MIGRATIONS)))
async def test_a_database_from_every_earlier_schema_version_migrates(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / f"v{version}.db"
    with sqlite3.connect(path) as old:
        for statements in MIGRATIONS[:version]:
            for statement in statements:
                old.execute(statement)
        old.execute(f"PRAGMA user_version = {version}")
    store = await Store.open(path)
    async with store.transaction():
        await store.set_meta("works", "yes")
    assert await store.get_meta("works") == "yes"
    await store.close()
    assert pragma(path, "user_version") == len(MIGRATIONS)


async def test_known_rooms_are_remembered_until_forgotten(store: Store) -> None:
    other = RoomId("!other:example.org")
    async with store.transaction():
        await store.add_known_rooms([ROOM, other], T0)
    assert await store.is_known_room(ROOM) and await store.is_known_room(other)
    async with store.transaction():
        await store.forget_known_room(ROOM)
    assert not await store.is_known_room(ROOM)
    assert await store.is_known_room(other)


async def test_a_known_room_written_in_a_rolled_back_transaction_stays_unknown(
        store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction():
            await store.add_known_room(ROOM, T0)
            assert await store.is_known_room(ROOM)  # its own write, not yet committed
            raise RuntimeError("rolled back")
    assert not await store.is_known_room(ROOM)


async def test_open_or_scheduled_brings_the_senders_profile_and_own_entries(
        store: Store) -> None:
    nothing = await store.open_or_scheduled(ROOM, [("team", T0)], ADA)
    assert (nothing.open, nothing.scheduled, nothing.profile, nothing.entries) == (
        None, {}, None, {}), "no sitting and no profile: nothing found, no error"
    assert nothing.standing(None) == Standing(None, 0)
    async with store.transaction():
        meeting = await store.create_adhoc("team", ROOM, "Team", T0, T0 + timedelta(hours=1))
        later = await store.ensure_scheduled("team", ROOM, "Team", T0 + timedelta(weeks=1))
        await store.save_profile(ADA, Profile("Ada L", "Org", "@ada"), T0)
        for n in range(2):
            await store.add_entry(meeting.id, EntryKind.UPDATE, ADA, "Ada", f"u{n}", None,
                                  EventId(f"$u{n}"), T0)
        await store.add_entry(meeting.id, EntryKind.AGENDA, ADA, "Ada", "old item", None,
                              EventId("$carried"), T0, carried_from="2026-06-11")
        await store.add_entry(meeting.id, EntryKind.UPDATE, GRACE, "Grace",
                              "not Ada's", None, EventId("$grace"), T0)
        await store.add_entry(later.id, EntryKind.AGENDA, ADA, "Ada", "next time", None,
                              EventId("$next"), T0)

    found = await store.open_or_scheduled(ROOM, [("team", T0 + timedelta(weeks=1))], ADA)
    assert found.open == meeting and found.scheduled == {("team", later.scheduled_start): later}
    assert found.standing(meeting) == Standing(Profile("Ada L", "Org", "@ada"), 2), (
        "her own entries, not Grace's and not the item carried over")
    assert found.standing(later) == Standing(Profile("Ada L", "Org", "@ada"), 1)
    assert await store.count_own_entries(meeting.id, ADA) == 2
    assert await store.count_own_entries(meeting.id, GRACE) == 1
    grace = await store.open_or_scheduled(ROOM, [], GRACE)
    assert grace.open == meeting and grace.standing(meeting) == Standing(None, 1)
