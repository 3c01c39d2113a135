"""SQLite, the source of truth. The only module that speaks SQL.

Every write that follows from a Matrix event happens inside one `transaction()`
together with the claim of that event's id, so a replayed event can never be
recorded twice, and whatever the bot owes in answer (messages, the note file) sits
in the same transaction as a job in the outbox, so none is lost to a crash either.

Writers share one connection and one unit of work at a time. Whatever only reads
(the job runner, the planner, the chair check, the web server) reads through
`Store.read`, a second, query-only connection: with WAL it sees committed rows
only, never another task's transaction that may yet roll back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from chatbot.model import (
    Attendee,
    Entry,
    EntryKind,
    EventId,
    Meeting,
    MeetingRecord,
    Profile,
    RoomId,
    UserId,
)

log = logging.getLogger(__name__)

# Append-only: each migration is a tuple of statements that run once, in one
# transaction together with the user_version bump.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the first schema
        """
        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE processed_events (
            event_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            processed_at TEXT NOT NULL,
            sender TEXT
        )
        """,
        """
        CREATE TABLE known_rooms (
            room_id TEXT PRIMARY KEY,
            joined_at TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE profiles (
            user_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            affiliation TEXT NOT NULL,
            handle TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE meetings (
            id INTEGER PRIMARY KEY,
            series_id TEXT NOT NULL,
            room_id TEXT NOT NULL,
            title TEXT NOT NULL,
            scheduled_start TEXT,
            started_at TEXT,
            ended_at TEXT,
            closes_at TEXT,
            current_item_id INTEGER REFERENCES entries (id) ON DELETE SET NULL,
            UNIQUE (series_id, scheduled_start)
        )
        """,
        """
        CREATE INDEX meetings_open_by_room ON meetings (room_id) WHERE ended_at IS NULL
        """,
        """
        CREATE INDEX meetings_by_series ON meetings (series_id, started_at)
        """,
        """
        CREATE TABLE attendees (
            meeting_id INTEGER NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            name TEXT NOT NULL,
            affiliation TEXT NOT NULL,
            handle TEXT NOT NULL,
            event_id TEXT NOT NULL,
            arrived_at TEXT NOT NULL,
            typed INTEGER NOT NULL DEFAULT 1,
            reaction_event_id TEXT,
            PRIMARY KEY (meeting_id, user_id)
        )
        """,
        """
        CREATE INDEX attendees_by_event ON attendees (event_id)
        """,
        """
        CREATE INDEX attendees_by_reaction ON attendees (reaction_event_id)
            WHERE reaction_event_id IS NOT NULL
        """,
        """
        CREATE TABLE meeting_chairs (
            meeting_id INTEGER NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            PRIMARY KEY (meeting_id, user_id)
        )
        """,
        """
        CREATE TABLE announcements (
            event_id TEXT PRIMARY KEY,
            meeting_id INTEGER NOT NULL REFERENCES meetings (id) ON DELETE CASCADE
        )
        """,
        """
        CREATE TABLE direct_rooms (
            room_id TEXT PRIMARY KEY,
            joined_at TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE room_upgrades (
            old_room_id TEXT PRIMARY KEY,
            new_room_id TEXT NOT NULL,
            upgraded_at TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE entries (
            id INTEGER PRIMARY KEY,
            meeting_id INTEGER NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN (
                'update', 'pass', 'celebration', 'agenda', 'note', 'action', 'decision')),
            sender TEXT NOT NULL,
            sender_name TEXT NOT NULL,
            text TEXT NOT NULL,
            minutes INTEGER,
            event_id TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            -- notes and decisions: the agenda item that was current
            item_id INTEGER REFERENCES entries (id) ON DELETE SET NULL,
            -- action items: whom it is for (a Matrix id, or the text after @)
            assignee TEXT,
            -- agenda items: order, time spent, and where a carried-over item came from
            position INTEGER,
            item_started_at TEXT,
            took_seconds INTEGER NOT NULL DEFAULT 0,
            overrun_noted INTEGER NOT NULL DEFAULT 0,
            dropped INTEGER NOT NULL DEFAULT 0,
            carried_from TEXT
        )
        """,
        """
        CREATE INDEX entries_by_meeting ON entries (meeting_id, id)
        """,
        """
        CREATE INDEX agenda_by_meeting ON entries (meeting_id, position)
            WHERE kind = 'agenda'
        """,
        """
        CREATE INDEX entries_by_sender ON entries (sender, meeting_id)
        """,
        """
        CREATE TABLE reminders (
            series_id TEXT NOT NULL,
            scheduled_start TEXT NOT NULL,
            lead_seconds INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            decided_at TEXT NOT NULL,
            PRIMARY KEY (series_id, scheduled_start, lead_seconds)
        )
        """,
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            room_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            sent_at TEXT,
            sent_event_id TEXT,
            failure TEXT
        )
        """,
        """
        CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL
        """,
    ),
    (  # 2: encrypted messages waiting for their key
        """
        CREATE TABLE undecrypted (
            event_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            session_id TEXT NOT NULL,
            source TEXT NOT NULL,
            received_at TEXT NOT NULL,
            answered_at TEXT
        )
        """,
        """
        CREATE INDEX undecrypted_unanswered ON undecrypted (received_at)
            WHERE answered_at IS NULL
        """,
    ),
    (  # 3: the outbox becomes durable jobs with backoff; what upkeep prunes by
        "ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        # When the next attempt may run; NULL: at once.
        "ALTER TABLE outbox ADD COLUMN next_attempt_at TEXT",
        # Set when retrying stopped (the job is parked, not done); sent_at stays NULL.
        "ALTER TABLE outbox ADD COLUMN parked_at TEXT",
        "ALTER TABLE outbox ADD COLUMN last_error TEXT",
        "DROP INDEX outbox_pending",
        "CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL AND parked_at IS NULL",
        "CREATE INDEX outbox_done ON outbox (sent_at) WHERE sent_at IS NOT NULL",
        "CREATE INDEX processed_events_by_age ON processed_events (processed_at)",
        "ALTER TABLE direct_rooms ADD COLUMN last_used_at TEXT",
    ),
    (  # 4: each sitting's GitHub issue: queued once, then where it is
        """
        CREATE TABLE github_issues (
            meeting_id INTEGER PRIMARY KEY REFERENCES meetings (id) ON DELETE CASCADE,
            queued_at TEXT NOT NULL,
            repo TEXT,
            number INTEGER,
            html_url TEXT,
            -- the body last queued for the issue, and when: it follows the agenda
            body TEXT,
            body_at TEXT,
            -- polling its comments for `!agenda`: when last, and the answer's ETag
            polled_at TEXT,
            comments_etag TEXT
        )
        """,
    ),
)


# Rows deleted per table and transaction when pruning: each batch holds the writer's
# lock for milliseconds, so commands are not kept waiting behind a big first prune.
PRUNE_BATCH = 5_000


class StoreError(Exception):
    """The database cannot be used; the message says why and what to do."""


def _stamp(when: datetime | None) -> str | None:
    """One text form for every instant, so equal times compare equal in SQL."""
    if when is None:
        return None
    if when.tzinfo is None:
        raise ValueError("naive datetimes are not stored")
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A job the bot owes: a message or reaction for a room, the note file, a leave.

    `txn_id` makes re-sending a message harmless; `attempts` counts failed tries so
    far and `next_attempt_at` is when the next may run (None: at once).
    """

    id: int
    room_id: RoomId
    kind: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int = 0
    next_attempt_at: datetime | None = None

    @property
    def txn_id(self) -> str:
        return f"chatbot.{int(self.created_at.timestamp() * 1000)}.{self.id}"

    def is_due(self, now: datetime) -> bool:
        return self.next_attempt_at is None or self.next_attempt_at <= now


@dataclass(frozen=True, slots=True)
class Undecrypted:
    """An encrypted message whose key has not arrived; `source` is the event as received."""

    event_id: EventId
    room_id: RoomId
    sender: UserId
    session_id: str
    source: dict[str, Any]
    received_at: datetime
    answered: bool = False


@dataclass(frozen=True, slots=True)
class Pruned:
    """How many rows one prune deleted, by what they were."""

    events: int = 0
    jobs: int = 0
    undecrypted: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.events + other.events, self.jobs + other.jobs,
                      self.undecrypted + other.undecrypted)

    def reached(self, limit: int) -> bool:
        """Whether any table gave a full batch, so more may be left to prune."""
        return max(self.events, self.jobs, self.undecrypted) >= limit


_MEETING_COLUMNS = (
    "id, series_id, room_id, title, scheduled_start, started_at, ended_at, closes_at, "
    "current_item_id"
)
_ENTRY_COLUMNS = (
    "id, kind, sender, sender_name, text, minutes, event_id, created_at, item_id, assignee, "
    "position, item_started_at, took_seconds, overrun_noted, dropped, carried_from"
)


def _meeting_from_row(row: aiosqlite.Row) -> Meeting:
    return Meeting(
        id=row["id"],
        series_id=row["series_id"],
        room_id=RoomId(row["room_id"]),
        title=row["title"],
        scheduled_start=_instant(row["scheduled_start"]),
        started_at=_instant(row["started_at"]),
        ended_at=_instant(row["ended_at"]),
        closes_at=_instant(row["closes_at"]),
        current_item_id=row["current_item_id"],
    )


def _entry_from_row(row: aiosqlite.Row) -> Entry:
    return Entry(
        kind=EntryKind(row["kind"]),
        sender=UserId(row["sender"]),
        sender_name=row["sender_name"],
        text=row["text"],
        minutes=row["minutes"],
        event_id=EventId(row["event_id"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        id=row["id"],
        item_id=row["item_id"],
        assignee=row["assignee"],
        position=row["position"],
        item_started_at=_instant(row["item_started_at"]),
        took_seconds=row["took_seconds"],
        overrun_noted=bool(row["overrun_noted"]),
        dropped=bool(row["dropped"]),
        carried_from=row["carried_from"],
    )


def is_storage_full(error: BaseException) -> bool:
    """Whether SQLite refused a write for want of space (a full disk, or a size cap)."""
    return (isinstance(error, sqlite3.OperationalError)
            and getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL)


class Store:
    """Async access to the bot's SQLite database; `read` is its query-only twin."""

    def __init__(self, connection: aiosqlite.Connection,
                 reader: aiosqlite.Connection | None = None) -> None:
        self._db = connection
        # One connection serves every writer; the lock keeps one task's transaction
        # from swallowing another task's statements.
        self._lock = asyncio.Lock()
        self.read: Store = Store(reader) if reader is not None else self
        # Rooms read as known: asked after every sync, and only forgetting a room (this
        # store's own write) makes a known room unknown again.
        self._known_rooms: set[RoomId] = set()

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating if needed) and migrate the database at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path, isolation_level=None)
        connection.row_factory = aiosqlite.Row
        reader: aiosqlite.Connection | None = None
        try:
            await connection.execute("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA foreign_keys = ON")
            await connection.execute("PRAGMA busy_timeout = 5000")
            await connection.execute("PRAGMA synchronous = NORMAL")
            await cls(connection)._migrate()
            reader = await aiosqlite.connect(path, isolation_level=None)
            reader.row_factory = aiosqlite.Row
            await reader.execute("PRAGMA query_only = ON")
            await reader.execute("PRAGMA busy_timeout = 5000")
        except BaseException:
            await connection.close()
            if reader is not None:
                await reader.close()
            raise
        return cls(connection, reader)

    async def close(self) -> None:
        if self.read is not self:
            await self.read.close()
        await self._db.close()

    async def _migrate(self) -> None:
        version = await self._scalar("PRAGMA user_version")
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the database is at schema version {version}, newer than this chatbot "
                f"understands ({len(MIGRATIONS)}); upgrade chatbot or restore a backup"
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            log.info("migrating database to schema version %s", number)
            # Not executescript: it commits on its own, and the migration must share
            # one transaction with its version bump.
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version = {number}")
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        """All writes in the block commit together or not at all. Every write goes in one."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self
                # Inside the try: a COMMIT that fails (a full disk) must roll back too,
                # or the open transaction would make every later BEGIN fail.
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    # Each is one trip to the connection's thread: a cursor's execute, fetch and close
    # would be three, and a command makes a dozen queries while its ✅ waits.

    async def _scalar(self, sql: str, *args: Any) -> Any:
        rows = await self._db.execute_fetchall(sql, args)
        return next(iter(rows), (None,))[0]

    async def _rows(self, sql: str, *args: Any) -> list[aiosqlite.Row]:
        return list(await self._db.execute_fetchall(sql, args))

    async def _changes(self, sql: str, *args: Any) -> int:
        cursor = await self._db.execute(sql, args)
        return cursor.rowcount

    # --- meta -------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        return await self._scalar("SELECT value FROM meta WHERE key = ?", key)

    async def set_meta(self, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- events and rooms -------------------------------------------------------

    async def claim_event(
        self, event_id: EventId, room_id: RoomId, now: datetime, sender: UserId | None = None
    ) -> bool:
        """Mark an event as handled; False if it already was (a replay)."""
        inserted = await self._changes(
            "INSERT OR IGNORE INTO processed_events (event_id, room_id, processed_at, sender) "
            "VALUES (?, ?, ?, ?)",
            event_id,
            room_id,
            _stamp(now),
            sender,
        )
        return inserted == 1

    async def sender_of(self, event_id: EventId) -> UserId | None:
        """Who sent an event the bot handled; None for one it never handled."""
        sender = await self._scalar(
            "SELECT sender FROM processed_events WHERE event_id = ?", event_id)
        return UserId(sender) if sender is not None else None

    async def add_direct_room(self, room_id: RoomId, now: datetime) -> None:
        await self._db.execute(
            "INSERT OR IGNORE INTO direct_rooms (room_id, joined_at) VALUES (?, ?)",
            (room_id, _stamp(now)))

    async def direct_rooms(self) -> set[RoomId]:
        return {RoomId(row["room_id"]) for row in await self._rows(
            "SELECT room_id FROM direct_rooms")}

    async def touch_direct_room(self, room_id: RoomId, now: datetime) -> None:
        """Someone used a direct chat: it is not idle. A chat forgotten by upkeep while
        its leave was still queued is remembered again, which calls the leave off."""
        await self._db.execute(
            "INSERT INTO direct_rooms (room_id, joined_at, last_used_at) VALUES (?, ?, ?) "
            "ON CONFLICT (room_id) DO UPDATE SET last_used_at = excluded.last_used_at",
            (room_id, _stamp(now), _stamp(now)))

    async def direct_room_last_used(self, room_id: RoomId) -> datetime | None:
        """When a direct chat was last used (else joined); None for one not recorded."""
        return _instant(await self._scalar(
            "SELECT coalesce(last_used_at, joined_at) FROM direct_rooms WHERE room_id = ?",
            room_id))

    async def idle_direct_rooms(self, before: datetime) -> list[RoomId]:
        """Direct chats nobody used (nor joined, if never used) since `before`."""
        return [RoomId(row["room_id"]) for row in await self._rows(
            "SELECT room_id FROM direct_rooms WHERE coalesce(last_used_at, joined_at) < ? "
            "ORDER BY room_id", _stamp(before))]

    async def forget_direct_room(self, room_id: RoomId) -> None:
        await self._db.execute("DELETE FROM direct_rooms WHERE room_id = ?", (room_id,))

    async def is_known_room(self, room_id: RoomId) -> bool:
        if room_id in self._known_rooms:
            return True
        known = await self._scalar("SELECT 1 FROM known_rooms WHERE room_id = ?", room_id) == 1
        if known and not self._db.in_transaction:  # committed, not a write that may roll back
            self._known_rooms.add(room_id)
        return known

    async def forget_known_room(self, room_id: RoomId) -> None:
        """A room the bot left: if it joins again, what was said meanwhile is history."""
        self._known_rooms.discard(room_id)
        await self._db.execute("DELETE FROM known_rooms WHERE room_id = ?", (room_id,))

    async def add_known_room(self, room_id: RoomId, now: datetime) -> None:
        await self.add_known_rooms([room_id], now)

    async def add_known_rooms(self, room_ids: Sequence[RoomId], now: datetime) -> None:
        """Many at once (the first sync's rooms, a thousand perhaps): one statement."""
        await self._db.executemany(
            "INSERT OR IGNORE INTO known_rooms (room_id, joined_at) VALUES (?, ?)",
            [(room_id, _stamp(now)) for room_id in room_ids],
        )

    # --- encrypted messages waiting for their key ------------------------------------

    async def add_undecrypted(self, message: Undecrypted) -> bool:
        """Keep a message the bot cannot read yet; False if it was already kept."""
        return await self._changes(
            "INSERT OR IGNORE INTO undecrypted "
            "(event_id, room_id, sender, session_id, source, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            message.event_id, message.room_id, message.sender, message.session_id,
            json.dumps(message.source), _stamp(message.received_at),
        ) == 1

    async def undecrypted(self) -> list[Undecrypted]:
        """Every kept message, oldest first: few, since each waits only for its key."""
        rows = await self._rows(
            "SELECT event_id, room_id, sender, session_id, source, received_at, answered_at "
            "FROM undecrypted ORDER BY received_at, event_id")
        return [Undecrypted(
            event_id=EventId(r["event_id"]), room_id=RoomId(r["room_id"]),
            sender=UserId(r["sender"]), session_id=r["session_id"],
            source=json.loads(r["source"]),
            received_at=datetime.fromisoformat(r["received_at"]),
            answered=r["answered_at"] is not None,
        ) for r in rows]

    async def mark_undecrypted_answered(self, event_ids: Sequence[EventId],
                                        now: datetime) -> None:
        await self._db.executemany(
            "UPDATE undecrypted SET answered_at = ? WHERE event_id = ?",
            [(_stamp(now), event_id) for event_id in event_ids])

    async def forget_undecrypted(self, event_id: EventId) -> None:
        await self._db.execute("DELETE FROM undecrypted WHERE event_id = ?", (event_id,))

    # --- profiles ---------------------------------------------------------------

    async def save_profile(self, user_id: UserId, profile: Profile, now: datetime) -> None:
        await self._db.execute(
            "INSERT INTO profiles (user_id, name, affiliation, handle, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
            "name = excluded.name, affiliation = excluded.affiliation, "
            "handle = excluded.handle, updated_at = excluded.updated_at",
            (user_id, profile.name, profile.affiliation, profile.handle, _stamp(now)),
        )

    async def rename_in_unclosed(self, user_id: UserId, profile: Profile) -> None:
        """Show a changed profile in every meeting not yet closed; closed notes stay as held."""
        unclosed = "SELECT id FROM meetings WHERE ended_at IS NULL"
        await self._db.execute(
            f"UPDATE entries SET sender_name = ? WHERE sender = ? AND meeting_id IN ({unclosed})",
            (profile.name, user_id),
        )
        await self._db.execute(
            "UPDATE attendees SET name = ?, affiliation = ?, handle = ? "
            f"WHERE user_id = ? AND meeting_id IN ({unclosed})",
            (profile.name, profile.affiliation, profile.handle, user_id),
        )

    async def get_profile(self, user_id: UserId) -> Profile | None:
        rows = await self._rows(
            "SELECT name, affiliation, handle FROM profiles WHERE user_id = ?", user_id
        )
        return Profile(rows[0]["name"], rows[0]["affiliation"], rows[0]["handle"]) if rows else None

    # --- meetings ---------------------------------------------------------------

    async def get_meeting(self, meeting_id: int) -> Meeting | None:
        rows = await self._rows(f"SELECT {_MEETING_COLUMNS} FROM meetings WHERE id = ?", meeting_id)
        return _meeting_from_row(rows[0]) if rows else None

    async def open_meeting_in_room(self, room_id: RoomId) -> Meeting | None:
        rows = await self._rows(
            f"SELECT {_MEETING_COLUMNS} FROM meetings WHERE room_id = ? "
            "AND ended_at IS NULL AND started_at IS NOT NULL ORDER BY started_at LIMIT 1",
            room_id,
        )
        return _meeting_from_row(rows[0]) if rows else None

    async def open_meetings(self) -> list[Meeting]:
        rows = await self._rows(
            f"SELECT {_MEETING_COLUMNS} FROM meetings "
            "WHERE ended_at IS NULL AND started_at IS NOT NULL ORDER BY id"
        )
        return [_meeting_from_row(row) for row in rows]

    async def find_scheduled(self, series_id: str, scheduled_start: datetime) -> Meeting | None:
        rows = await self._rows(
            f"SELECT {_MEETING_COLUMNS} FROM meetings "
            "WHERE series_id = ? AND scheduled_start = ?",
            series_id,
            _stamp(scheduled_start),
        )
        return _meeting_from_row(rows[0]) if rows else None

    async def ensure_scheduled(
        self, series_id: str, room_id: RoomId, title: str, scheduled_start: datetime
    ) -> Meeting:
        """The row for one scheduled occurrence, created on first use."""
        await self._db.execute(
            "INSERT OR IGNORE INTO meetings (series_id, room_id, title, scheduled_start) "
            "VALUES (?, ?, ?, ?)",
            (series_id, room_id, title, _stamp(scheduled_start)),
        )
        meeting = await self.find_scheduled(series_id, scheduled_start)
        assert meeting is not None
        return meeting

    async def create_adhoc(
        self, series_id: str, room_id: RoomId, title: str, started_at: datetime,
        closes_at: datetime,
    ) -> Meeting:
        async with self._db.execute(
            "INSERT INTO meetings (series_id, room_id, title, started_at, closes_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (series_id, room_id, title, _stamp(started_at), _stamp(closes_at)),
        ) as cursor:
            meeting_id = cursor.lastrowid
        assert meeting_id is not None
        meeting = await self.get_meeting(meeting_id)
        assert meeting is not None
        return meeting

    async def mark_started(
        self, meeting_id: int, started_at: datetime, closes_at: datetime, title: str
    ) -> bool:
        """Open a meeting that is not open yet; False if it already was opened."""
        return (
            await self._changes(
                "UPDATE meetings SET started_at = ?, closes_at = ?, title = ? "
                "WHERE id = ? AND started_at IS NULL",
                _stamp(started_at),
                _stamp(closes_at),
                title,
                meeting_id,
            )
            == 1
        )

    async def mark_ended(self, meeting_id: int, ended_at: datetime) -> bool:
        """Close an open meeting; False if it was not open."""
        return (
            await self._changes(
                "UPDATE meetings SET ended_at = ? "
                "WHERE id = ? AND started_at IS NOT NULL AND ended_at IS NULL",
                _stamp(ended_at),
                meeting_id,
            )
            == 1
        )

    async def meetings_of_series(self, series_id: str) -> list[Meeting]:
        """Every sitting of a series that was held or is being held, oldest first."""
        rows = await self._rows(
            f"SELECT {_MEETING_COLUMNS} FROM meetings "
            "WHERE series_id = ? AND started_at IS NOT NULL ORDER BY started_at, id",
            series_id,
        )
        return [_meeting_from_row(row) for row in rows]

    # --- roll call and entries ----------------------------------------------------

    async def add_attendee(
        self, meeting_id: int, user_id: UserId, profile: Profile, event_id: EventId,
        now: datetime, *, reaction: bool = False,
    ) -> None:
        """Join the roll call once; answering again only refreshes how the line reads.

        A line from a ✋ reaction remembers the reaction, so that taking it back
        removes the line, unless the person also typed `!here`.
        """
        typed, reaction_event_id = (0, event_id) if reaction else (1, None)
        await self._db.execute(
            "INSERT INTO attendees (meeting_id, user_id, name, affiliation, handle, event_id, "
            "arrived_at, typed, reaction_event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (meeting_id, user_id) DO UPDATE SET "
            "name = excluded.name, affiliation = excluded.affiliation, handle = excluded.handle, "
            "typed = max(typed, excluded.typed), "
            "reaction_event_id = coalesce(excluded.reaction_event_id, reaction_event_id), "
            "event_id = CASE WHEN excluded.typed = 1 THEN excluded.event_id ELSE event_id END",
            (meeting_id, user_id, profile.name, profile.affiliation, profile.handle, event_id,
             _stamp(now), typed, reaction_event_id),
        )

    async def withdraw_attendance(self, event_id: EventId) -> bool:
        """Undo the `!here` or ✋ that `event_id` was; the line goes once neither is left."""
        touched = await self._rows(
            "UPDATE attendees SET typed = 0 WHERE event_id = ? AND typed = 1 "
            "RETURNING meeting_id, user_id", event_id)
        touched += await self._rows(
            "UPDATE attendees SET reaction_event_id = NULL WHERE reaction_event_id = ? "
            "RETURNING meeting_id, user_id", event_id)
        # Only the lines just changed can have lost their last reason to stay.
        for row in touched:
            await self._db.execute(
                "DELETE FROM attendees WHERE meeting_id = ? AND user_id = ? "
                "AND typed = 0 AND reaction_event_id IS NULL",
                (row["meeting_id"], row["user_id"]))
        return bool(touched)

    async def add_entry(
        self, meeting_id: int, kind: EntryKind, sender: UserId, sender_name: str, text: str,
        minutes: int | None, event_id: EventId, now: datetime, *, item_id: int | None = None,
        assignee: str | None = None, carried_from: str | None = None,
    ) -> None:
        position = None
        if kind is EntryKind.AGENDA:
            position = await self._scalar(
                "SELECT coalesce(max(position), 0) + 1 FROM entries "
                "WHERE meeting_id = ? AND kind = 'agenda'", meeting_id)
        await self._db.execute(
            "INSERT OR IGNORE INTO entries (meeting_id, kind, sender, sender_name, text, minutes, "
            "event_id, created_at, item_id, assignee, position, carried_from) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (meeting_id, kind.value, sender, sender_name, text, minutes, event_id, _stamp(now),
             item_id, assignee, position, carried_from),
        )

    async def count_agenda(self, meeting_id: int) -> int:
        """Agenda items in a meeting, carried-over ones included."""
        return await self._scalar(
            "SELECT count(*) FROM entries WHERE meeting_id = ? AND kind = 'agenda'", meeting_id)

    async def count_entries_by(self, meeting_id: int, sender: UserId) -> int:
        """Entries `sender` added to a meeting; items carried over from earlier ones not."""
        return await self._scalar(
            "SELECT count(*) FROM entries WHERE sender = ? AND meeting_id = ? "
            "AND carried_from IS NULL", sender, meeting_id)

    async def entry_by_event(self, event_id: EventId) -> tuple[int, Entry] | None:
        """The entry a message created, with its meeting's id."""
        rows = await self._rows(
            f"SELECT meeting_id, {_ENTRY_COLUMNS} FROM entries WHERE event_id = ?", event_id)
        return (rows[0]["meeting_id"], _entry_from_row(rows[0])) if rows else None

    async def update_entry(
        self, entry_id: int, text: str, minutes: int | None, assignee: str | None
    ) -> None:
        await self._db.execute(
            "UPDATE entries SET text = ?, minutes = ?, assignee = ? WHERE id = ?",
            (text, minutes, assignee, entry_id),
        )

    async def delete_entry(self, entry_id: int) -> None:
        await self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))

    async def last_entry(self, meeting_id: int, sender: UserId | None) -> Entry | None:
        """The latest entry in a meeting, by `sender` or (None) by anyone."""
        rows = await self._rows(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE meeting_id = ? "
            "AND (? IS NULL OR sender = ?) AND carried_from IS NULL ORDER BY id DESC LIMIT 1",
            meeting_id, sender, sender,
        )
        return _entry_from_row(rows[0]) if rows else None

    # --- the agenda in a meeting ------------------------------------------------------

    async def reorder_agenda(self, ordered_item_ids: list[int]) -> None:
        for position, item_id in enumerate(ordered_item_ids, start=1):
            await self._db.execute("UPDATE entries SET position = ? WHERE id = ?",
                                   (position, item_id))

    async def set_current_item(self, meeting_id: int, item_id: int | None) -> None:
        await self._db.execute("UPDATE meetings SET current_item_id = ? WHERE id = ?",
                               (item_id, meeting_id))

    async def start_item(self, item_id: int, now: datetime) -> None:
        await self._db.execute(
            "UPDATE entries SET item_started_at = ? WHERE id = ? AND item_started_at IS NULL",
            (_stamp(now), item_id))

    async def stop_item(self, item: Entry, now: datetime) -> None:
        """Add the time since the item was (re)started to the time it took."""
        if item.item_started_at is None:
            return
        # At least a second, so that an item reached at all never reads as unreached.
        spent = max(1, round((now - item.item_started_at).total_seconds()))
        await self._db.execute(
            "UPDATE entries SET took_seconds = took_seconds + ?, item_started_at = NULL "
            "WHERE id = ?", (spent, item.id))

    async def mark_overrun_noted(self, item_id: int) -> bool:
        return await self._changes(
            "UPDATE entries SET overrun_noted = 1 WHERE id = ? AND overrun_noted = 0",
            item_id) == 1

    async def set_dropped(self, item_id: int, dropped: bool) -> None:
        await self._db.execute("UPDATE entries SET dropped = ? WHERE id = ?",
                               (int(dropped), item_id))

    # --- chairs, announcements, upgraded rooms ------------------------------------------

    async def add_meeting_chair(self, meeting_id: int, user_id: UserId) -> None:
        await self._db.execute(
            "INSERT OR IGNORE INTO meeting_chairs (meeting_id, user_id) VALUES (?, ?)",
            (meeting_id, user_id))

    async def remove_meeting_chair(self, meeting_id: int, user_id: UserId) -> bool:
        return await self._changes(
            "DELETE FROM meeting_chairs WHERE meeting_id = ? AND user_id = ?",
            meeting_id, user_id) == 1

    async def is_meeting_chair(self, meeting_id: int, user_id: UserId) -> bool:
        return await self._scalar(
            "SELECT 1 FROM meeting_chairs WHERE meeting_id = ? AND user_id = ?",
            meeting_id, user_id) == 1

    async def meeting_announced_by(self, event_id: str) -> Meeting | None:
        rows = await self._rows(
            f"SELECT {', '.join('m.' + c.strip() for c in _MEETING_COLUMNS.split(','))} "
            "FROM announcements a JOIN meetings m ON m.id = a.meeting_id WHERE a.event_id = ?",
            event_id)
        return _meeting_from_row(rows[0]) if rows else None

    async def record_upgrade(self, old_room_id: RoomId, new_room_id: RoomId,
                             now: datetime) -> bool:
        """Note that a room was replaced, and move its meetings along; False if known."""
        if not await self._changes(
            "INSERT OR IGNORE INTO room_upgrades (old_room_id, new_room_id, upgraded_at) "
            "VALUES (?, ?, ?)", old_room_id, new_room_id, _stamp(now)):
            return False
        await self._db.execute("UPDATE meetings SET room_id = ? WHERE room_id = ?",
                               (new_room_id, old_room_id))
        return True

    async def replacement_room(self, room_id: RoomId) -> RoomId:
        """The room that `room_id` was upgraded into, following every upgrade since."""
        seen = {room_id}
        while True:
            newer = await self._scalar(
                "SELECT new_room_id FROM room_upgrades WHERE old_room_id = ?", room_id)
            if newer is None or newer in seen:
                return room_id
            room_id = RoomId(newer)
            seen.add(room_id)

    async def record(self, meeting: Meeting) -> MeetingRecord:
        """The meeting with its roll call (in order of arrival) and entries (in order)."""
        attendee_rows = await self._rows(
            "SELECT user_id, name, affiliation, handle FROM attendees "
            "WHERE meeting_id = ? ORDER BY arrived_at, rowid",
            meeting.id,
        )
        entry_rows = await self._rows(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE meeting_id = ? ORDER BY id", meeting.id)
        return MeetingRecord(
            meeting=meeting,
            attendees=tuple(
                Attendee(UserId(r["user_id"]), Profile(r["name"], r["affiliation"], r["handle"]))
                for r in attendee_rows
            ),
            entries=tuple(_entry_from_row(r) for r in entry_rows),
        )

    # --- the meeting's GitHub issue ---------------------------------------------------

    async def queue_github_issue(self, meeting_id: int, now: datetime, body: str) -> bool:
        """Note that the sitting's issue is being opened with `body`; False if it was
        before."""
        return await self._changes(
            "INSERT OR IGNORE INTO github_issues (meeting_id, queued_at, body, body_at) "
            "VALUES (?, ?, ?, ?)", meeting_id, _stamp(now), body, _stamp(now)) == 1

    async def open_github_issues(self) -> list[tuple[int, str, int, str | None, datetime]]:
        """Issues of sittings not yet closed: meeting id, repository, number, the body
        last queued and when."""
        rows = await self._rows(
            "SELECT g.meeting_id, g.repo, g.number, g.body, COALESCE(g.body_at, g.queued_at) "
            "AS body_at FROM github_issues g JOIN meetings m ON m.id = g.meeting_id "
            "WHERE g.number IS NOT NULL AND m.ended_at IS NULL ORDER BY g.meeting_id")
        return [(row[0], row[1], row[2], row[3], _instant(row[4]) or datetime.min)
                for row in rows]

    async def github_issue_poll(self, meeting_id: int) -> tuple[datetime | None, str | None]:
        """When the issue's comments were last polled, and the ETag of that answer."""
        rows = await self._rows(
            "SELECT polled_at, comments_etag FROM github_issues WHERE meeting_id = ?",
            meeting_id)
        return (_instant(rows[0][0]), rows[0][1]) if rows else (None, None)

    async def set_github_issue_poll(self, meeting_id: int, now: datetime,
                                    etag: str | None) -> None:
        await self._db.execute(
            "UPDATE github_issues SET polled_at = ?, comments_etag = ? WHERE meeting_id = ?",
            (_stamp(now), etag, meeting_id))

    async def github_issue_body(self, meeting_id: int) -> str | None:
        return await self._scalar(
            "SELECT body FROM github_issues WHERE meeting_id = ?", meeting_id)

    async def set_github_issue_body(self, meeting_id: int, body: str, now: datetime) -> None:
        await self._db.execute(
            "UPDATE github_issues SET body = ?, body_at = ? WHERE meeting_id = ?",
            (body, _stamp(now), meeting_id))

    async def github_issue_queued(self, meeting_id: int) -> bool:
        return await self._scalar(
            "SELECT COUNT(*) FROM github_issues WHERE meeting_id = ?", meeting_id) > 0

    async def set_github_issue(self, meeting_id: int, repo: str, number: int,
                               html_url: str, now: datetime) -> None:
        await self._db.execute(
            "INSERT INTO github_issues (meeting_id, queued_at, repo, number, html_url) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (meeting_id) DO UPDATE SET "
            "repo = excluded.repo, number = excluded.number, html_url = excluded.html_url",
            (meeting_id, _stamp(now), repo, number, html_url))

    async def github_issue_url(self, meeting_id: int) -> str | None:
        """The sitting's issue link once it is open (GitHub's `html_url`)."""
        return await self._scalar(
            "SELECT html_url FROM github_issues WHERE meeting_id = ?", meeting_id)

    # --- reminders ----------------------------------------------------------------

    async def decided_reminders(self, series_id: str, scheduled_start: datetime) -> set[int]:
        """Lead times (seconds) already sent or skipped for one occurrence."""
        rows = await self._rows(
            "SELECT lead_seconds FROM reminders WHERE series_id = ? AND scheduled_start = ?",
            series_id,
            _stamp(scheduled_start),
        )
        return {row["lead_seconds"] for row in rows}

    async def record_reminder(
        self, series_id: str, scheduled_start: datetime, lead_seconds: int, outcome: str,
        now: datetime,
    ) -> bool:
        """Record a reminder's fate once; False if it was already decided."""
        return (
            await self._changes(
                "INSERT OR IGNORE INTO reminders "
                "(series_id, scheduled_start, lead_seconds, outcome, decided_at) "
                "VALUES (?, ?, ?, ?, ?)",
                series_id,
                _stamp(scheduled_start),
                lead_seconds,
                outcome,
                _stamp(now),
            )
            == 1
        )

    # --- outbox -------------------------------------------------------------------

    async def enqueue(
        self, room_id: RoomId, kind: str, payload: dict[str, Any], now: datetime
    ) -> None:
        await self._db.execute(
            "INSERT INTO outbox (room_id, kind, payload, created_at) VALUES (?, ?, ?, ?)",
            (room_id, kind, json.dumps(payload, ensure_ascii=False), _stamp(now)),
        )

    async def pending_outbox(self, limit: int = 50, per_room: int = 10) -> list[OutboxItem]:
        """Jobs not done and not parked, due or not, taken round-robin between rooms:
        each room's oldest first, at most `per_room` of one room before any other's, so
        one flooded room cannot hold back the rest."""
        rows = await self._rows(
            "SELECT id, room_id, kind, payload, created_at, attempts, next_attempt_at FROM ("
            "  SELECT *, row_number() OVER (PARTITION BY room_id ORDER BY id) AS place"
            "  FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL"
            ") WHERE place <= ? ORDER BY place, id LIMIT ?",
            per_room, limit,
        )
        return [
            OutboxItem(
                id=r["id"],
                room_id=RoomId(r["room_id"]),
                kind=r["kind"],
                payload=json.loads(r["payload"]),
                created_at=datetime.fromisoformat(r["created_at"]),
                attempts=r["attempts"],
                next_attempt_at=_instant(r["next_attempt_at"]),
            )
            for r in rows
        ]

    async def has_pending_outbox(self) -> bool:
        return await self._scalar(
            "SELECT 1 FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL LIMIT 1") == 1

    async def mark_sent(self, item: OutboxItem, event_id: str, now: datetime) -> None:
        """Record delivery; a start announcement is remembered for ✋ reactions to it."""
        await self._db.execute(
            "UPDATE outbox SET sent_at = ?, sent_event_id = ? WHERE id = ?",
            (_stamp(now), event_id, item.id),
        )
        if (meeting_id := item.payload.get("announces")) is not None:
            await self._db.execute(
                "INSERT OR IGNORE INTO announcements (event_id, meeting_id) VALUES (?, ?)",
                (event_id, meeting_id))

    async def mark_failed(self, item_id: int, failure: str, now: datetime) -> None:
        """Give up on an item the homeserver refuses for good, so it blocks nothing behind it."""
        await self._db.execute(
            "UPDATE outbox SET sent_at = ?, failure = ? WHERE id = ?",
            (_stamp(now), failure, item_id),
        )

    async def mark_retry(self, item_id: int, error: str, next_attempt_at: datetime) -> None:
        """One more failed attempt; the job waits until `next_attempt_at`."""
        await self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
            "WHERE id = ?", (error, _stamp(next_attempt_at), item_id))

    async def mark_parked(self, item_id: int, error: str, now: datetime) -> None:
        """Stop retrying a job that kept failing; it stays, undone, for a person to see."""
        await self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, parked_at = ? "
            "WHERE id = ?", (error, _stamp(now), item_id))

    # --- upkeep: what keeps the database from growing forever -------------------------

    async def newest_processed_at(self) -> datetime | None:
        """When the latest event was handled; None before the first."""
        return _instant(await self._scalar("SELECT max(processed_at) FROM processed_events"))

    async def prune(self, before: datetime, *, keys_before: datetime | None = None,
                    limit: int = PRUNE_BATCH) -> Pruned:
        """Delete, in the caller's transaction, at most `limit` rows of each kind: finished
        outbox jobs (delivered, or refused for good) older than `before`; handled events'
        ids and kept undecryptable messages (answered or not, encryption on or off) older
        than `keys_before` (default `before`).

        The ids and the kept messages are what makes a replayed event count once, so
        their cutoff is the caller's to make safe (see `chatbot.upkeep.prune_before`).
        Parked jobs stay: they are what the bot never managed to do, kept for a person
        to look into (and few: a job parks only after failing for `jobs.park_after`).
        """
        keys = _stamp(keys_before or before)
        events = await self._changes(
            "DELETE FROM processed_events WHERE rowid IN (SELECT rowid FROM processed_events "
            "WHERE processed_at < ? LIMIT ?)", keys, limit)
        # An outbox id may be used again once the newest row is gone; the transaction id
        # of a send also carries the row's creation time, so it stays unique.
        jobs = await self._changes(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox "
            "WHERE sent_at IS NOT NULL AND sent_at < ? LIMIT ?)", _stamp(before), limit)
        undecrypted = await self._changes(
            "DELETE FROM undecrypted WHERE rowid IN (SELECT rowid FROM undecrypted "
            "WHERE received_at < ? LIMIT ?)", keys, limit)
        return Pruned(events, jobs, undecrypted)


def backup_database(source: Path, target: Path) -> int:
    """Copy a live database consistently (SQLite's online backup); returns its schema version.

    The source is opened read-only and never migrated; the copy is written beside the
    target and renamed into place, so a half-written backup never replaces a good one.
    """
    if not source.exists():
        raise StoreError(f"no database at {source}; run the bot first")
    partial = target.with_name(target.name + ".partial")
    try:
        partial.unlink(missing_ok=True)
        origin = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        copy = sqlite3.connect(partial)
        try:
            origin.backup(copy)
            version = int(copy.execute("PRAGMA user_version").fetchone()[0])
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            copy.close()
            origin.close()
        os.replace(partial, target)
    except (sqlite3.Error, OSError) as error:
        partial.unlink(missing_ok=True)
        raise StoreError(f"cannot back up {source} to {target}: {error}") from None
    return version
