"""Every query a command costs finds its rows through an index, never by reading a whole table.

The store's statements are captured while the per-command paths run on a real SQLite
database, then each is given to `EXPLAIN QUERY PLAN` with the same parameters: a
`SCAN` of a table that grows with use (events, meetings, entries, the outbox …) would
make each command slower as the bot ages.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chatbot.config import parse_config
from chatbot.meetings import Rooms, resolve_target
from chatbot.model import EntryKind, EventId, LogLine, Profile, RoomId, UserId
from chatbot.store import Store

ROOM = RoomId("!room:example.org")
ADA = UserId("@ada:example.org")
NOW = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)
GROWING = {"processed_events", "known_rooms", "profiles", "meetings", "attendees",
           "meeting_chairs", "announcements", "entries", "reminders", "outbox",
           "direct_rooms", "room_upgrades", "log_lines"}
# `SCAN t` reads the table; `SCAN t USING (COVERING) INDEX i` or `SEARCH` do not.
FULL_SCAN = re.compile(r"\bSCAN (\w+)(?! USING)")


class Recording:
    """Wraps the store's connection and keeps every statement it is given."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, sql: str, parameters: Any = ()) -> Any:
        self.statements.append((sql, tuple(parameters)))
        return self.connection.execute(sql, parameters)

    def execute_fetchall(self, sql: str, parameters: Any = ()) -> Any:
        self.statements.append((sql, tuple(parameters)))
        return self.connection.execute_fetchall(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)


def rooms() -> Rooms:
    config = parse_config({
        "matrix": {"homeserver": "http://127.0.0.1:1", "user_id": "@bot:example.org",
                   "password": "x"},
        "meetings": [{"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
                      "start": "2026-01-01 10:00:00", "rrule": "FREQ=WEEKLY"}]})
    return Rooms(config, {"team": ROOM})


async def history(store: Store) -> None:
    """Enough rows that a plan reading a whole table would show it."""
    async with store.transaction():
        for week in range(30):
            meeting = await store.ensure_scheduled("team", ROOM, "Team",
                                                   NOW - timedelta(weeks=week + 1))
            for n in range(20):
                event = EventId(f"$old{week}.{n}")
                await store.claim_event(event, ROOM, NOW, ADA)
                await store.add_entry(meeting.id, EntryKind.UPDATE, ADA, "Ada", "old", None,
                                      event, NOW)
                await store.add_attendee(meeting.id, UserId(f"@p{n}:example.org"),
                                         Profile("P", "", ""), event, NOW)
                await store.enqueue(ROOM, "react", {"event_id": event, "key": "✅"}, NOW)
                await store.add_log_line(meeting.id, LogLine(EventId(f"$said{week}.{n}"), ADA,
                                                             "Ada", NOW, "old"))


async def per_command_paths(store: Store) -> None:
    """What handling commands, reactions, edits, redactions and delivery ask of the store."""
    target = await resolve_target(store, rooms(), ROOM, NOW)
    assert target is not None
    async with store.transaction():
        await store.claim_event(EventId("$here"), ROOM, NOW, ADA)
        await store.is_known_room(ROOM)
        await store.sender_of(EventId("$here"))
        meeting = await store.ensure_scheduled("team", ROOM, "Team", target.start)
        await store.mark_started(meeting.id, NOW, NOW + timedelta(hours=1), "Team")
        await store.open_meeting_in_room(ROOM)
        await store.find_scheduled("team", target.start)
        await store.get_profile(ADA)
        await store.open_or_scheduled(ROOM, [("team", target.start)], ADA)
        await store.count_own_entries(meeting.id, ADA)
        await store.save_profile(ADA, Profile("Ada", "", ""), NOW)
        await store.rename_in_unclosed(ADA, Profile("Ada", "", ""))
        await store.add_attendee(meeting.id, ADA, Profile("Ada", "", ""), EventId("$here"), NOW)
        await store.add_attendee(meeting.id, ADA, Profile("Ada", "", ""), EventId("$hand"),
                                 NOW, reaction=True)
        await store.add_entry(meeting.id, EntryKind.UPDATE, ADA, "Ada", "text", None,
                              EventId("$update"), NOW)
        await store.add_entry(meeting.id, EntryKind.AGENDA, ADA, "Ada", "item", 5,
                              EventId("$agenda"), NOW)
        await store.count_agenda(meeting.id)
        found = await store.entry_by_event(EventId("$update"))
        assert found is not None
        await store.update_entry(found[1].id, "edited", None, None)
        await store.last_entry(meeting.id, ADA)
        await store.delete_entry(found[1].id)
        await store.withdraw_attendance(EventId("$hand"))
        await store.is_meeting_chair(meeting.id, ADA)
        await store.meeting_announced_by("$announcement")
        await store.replacement_room(ROOM)
        await store.touch_direct_room(RoomId("!direct:example.org"), NOW)
        await store.set_meta("sync_token", "s1")
        await store.get_meta("sync_token")
        await store.enqueue(ROOM, "react", {"event_id": "$here", "key": "✅"}, NOW)
        await store.add_log_line(meeting.id, LogLine(EventId("$said"), ADA, "Ada", NOW, "hi"))
        await store.edit_log_line(EventId("$said"), ADA, "hello", NOW)
        await store.forget_log_line(EventId("$said"))
        await store.log_lines(meeting.id)
    for item in await store.pending_outbox():
        async with store.transaction():
            await store.mark_sent(item, "$sent", NOW)
    await store.pending_outbox(limit=1)
    await store.decided_reminders("team", target.start)


def full_scans(path: Path, statements: list[tuple[str, tuple[Any, ...]]]) -> dict[str, str]:
    queries = [(sql, args) for sql, args in statements
               if not sql.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA"))]
    scans = {}
    with sqlite3.connect(path) as db:
        for sql, args in queries:
            plan = " / ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            if {match.group(1) for match in FULL_SCAN.finditer(plan)} & GROWING:
                scans[" ".join(sql.split())] = plan
    return scans


async def test_the_daily_upkeep_finds_what_to_prune_through_indexes(
    store: Store, tmp_path: Path
) -> None:
    from chatbot.config import RetentionConfig
    from chatbot.upkeep import run_upkeep

    await history(store)
    for item in await store.pending_outbox(limit=1000, per_room=1000):
        async with store.transaction():
            await store.mark_sent(item, "$sent", NOW)
    later = NOW + timedelta(days=60)
    async with store.transaction():
        await store.claim_event(EventId("$today"), ROOM, later, ADA)
    recording = Recording(store._db)
    store._db = recording  # type: ignore[assignment]
    await run_upkeep(store, rooms(), RetentionConfig(), later)
    store._db = recording.connection

    deletes = [sql for sql, _ in recording.statements if sql.startswith("DELETE")]
    assert len(deletes) >= 3
    assert full_scans(tmp_path / "bot.db", recording.statements) == {}
    assert await store._scalar("SELECT count(*) FROM processed_events") == 1


async def test_no_per_command_query_reads_a_whole_growing_table(
    store: Store, tmp_path: Path
) -> None:
    await history(store)
    recording = Recording(store._db)
    store._db = recording  # type: ignore[assignment]
    await per_command_paths(store)
    store._db = recording.connection

    queries = [(sql, args) for sql, args in recording.statements
               if not sql.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA"))]
    assert len(queries) > 25
    assert any(sql.startswith("SELECT") for sql, _ in queries), "reads are checked too"
    with sqlite3.connect(tmp_path / "bot.db") as db:
        scans = {}
        for sql, args in queries:
            plan = " / ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            tables = {match.group(1) for match in FULL_SCAN.finditer(plan)} & GROWING
            if tables:
                scans[" ".join(sql.split())] = plan
    assert scans == {}
