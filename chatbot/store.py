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
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
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
    LogLine,
    Meeting,
    MeetingRecord,
    PassReason,
    Profile,
    RoomId,
    RoundOutcome,
    RoundPlace,
    Standing,
    UpdateRound,
    UserId,
    VoteResult,
)
from chatbot.polls import POLL_START, Answer, Ballot, Poll

log = logging.getLogger(__name__)

# Each connection's page cache (SQLite's default is 2 MiB). A bot's database is a few to
# tens of MB, and what a command walks (a few index pages) fits many times over; the rest
# is read from the operating system's cache of the file. Measured over a month of use
# (benchmarks/growth.py), the two caches at their default were 1.7 MB of the core's growth.
CACHE_SIZE = "PRAGMA cache_size = -1024"

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
    (  # 5: the full log of sittings whose meeting has `log: true`, a row per message
        # Keyed by the message's event id, so a replay never doubles a line; the rowid
        # keeps the order the room's timeline has. Kept as long as the meeting is (like
        # its entries), so a late redaction can still be honoured in the saved file.
        """
        CREATE TABLE log_lines (
            event_id TEXT PRIMARY KEY,
            meeting_id INTEGER NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
            sender TEXT NOT NULL,
            display_name TEXT NOT NULL,
            sent_at TEXT NOT NULL,
            body TEXT NOT NULL,
            -- the sender's server time of the edit shown; NULL: never edited
            edited_at TEXT
        )
        """,
        "CREATE INDEX log_lines_by_meeting ON log_lines (meeting_id)",
    ),
    (  # 6: votes as Matrix polls, and every answer to them, keyed by event id
        """
        CREATE TABLE polls (
            id INTEGER PRIMARY KEY,
            meeting_id INTEGER NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
            room_id TEXT NOT NULL,
            asker TEXT NOT NULL,
            question TEXT NOT NULL,
            -- JSON [[id, text], ...] in the poll's order
            answers TEXT NOT NULL,
            command_event_id TEXT NOT NULL UNIQUE,
            -- the poll start event, once the outbox has sent it
            start_event_id TEXT UNIQUE,
            opened_at TEXT NOT NULL,
            closed_at TEXT,
            -- at the close: the agenda item then current, and the counted result
            item_id INTEGER REFERENCES entries (id) ON DELETE SET NULL,
            result TEXT
        )
        """,
        # One open poll per room, so `!vote close` and text votes name no poll.
        "CREATE UNIQUE INDEX polls_open_in_room ON polls (room_id) WHERE closed_at IS NULL",
        "CREATE INDEX polls_by_meeting ON polls (meeting_id)",
        """
        CREATE TABLE poll_responses (
            event_id TEXT PRIMARY KEY,
            poll_id INTEGER NOT NULL REFERENCES polls (id) ON DELETE CASCADE,
            sender TEXT NOT NULL,
            -- the first selection; NULL: an empty one
            answer TEXT,
            sent_at TEXT NOT NULL
        )
        """,
        "CREATE INDEX poll_responses_by_poll ON poll_responses (poll_id)",
    ),
    (  # 7: the ETag of the last answer listing the issues with the meeting's
       # `agenda_label` (polled with the comments), so an unchanged list is a free 304
        "ALTER TABLE github_issues ADD COLUMN labels_etag TEXT",
    ),
    (  # 8: the web archive: each series' capability token, retired ones, the notes' index
        """
        CREATE TABLE archive_tokens (
            series_id TEXT PRIMARY KEY,
            token TEXT NOT NULL,
            created_at TEXT NOT NULL
        )
        """,
        # Only a digest of a retired token is kept: enough to answer 403, not to read.
        """
        CREATE TABLE retired_archive_tokens (
            series_id TEXT NOT NULL,
            digest TEXT NOT NULL,
            retired_at TEXT NOT NULL,
            PRIMARY KEY (series_id, digest)
        )
        """,
        # One row per section of each sitting's note; a regenerated note replaces its rows.
        """
        CREATE VIRTUAL TABLE note_search USING fts5(
            section, body, meeting_id UNINDEXED, series_id UNINDEXED,
            tokenize = 'unicode61 remove_diacritics 2'
        )
        """,
    ),
    (  # 9: the update round (`!round`), and why a quick update is a pass without text
        """
        CREATE TABLE update_rounds (
            meeting_id INTEGER PRIMARY KEY REFERENCES meetings (id) ON DELETE CASCADE,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            current_user_id TEXT,
            -- the homeserver's time of the message that started the current turn's clock
            clock_at TEXT
        )
        """,
        """
        CREATE TABLE round_places (
            meeting_id INTEGER NOT NULL
                REFERENCES update_rounds (meeting_id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            user_id TEXT NOT NULL,
            name TEXT NOT NULL,
            outcome TEXT,
            PRIMARY KEY (meeting_id, user_id)
        )
        """,
        # 'on_call' (`!done`) or 'time_up' (the round's turn ran out) for a pass.
        "ALTER TABLE entries ADD COLUMN pass_reason TEXT",
        # Nudges before a sitting: decided once per sitting; who said `!nudge off`.
        """
        CREATE TABLE nudges (
            series_id TEXT NOT NULL,
            scheduled_start TEXT NOT NULL,
            decided_at TEXT NOT NULL,
            PRIMARY KEY (series_id, scheduled_start)
        )
        """,
        """
        CREATE TABLE nudge_opt_outs (
            user_id TEXT PRIMARY KEY,
            opted_out_at TEXT NOT NULL
        )
        """,
        # Whom a direct chat is with, so a nudge finds it again.
        "ALTER TABLE direct_rooms ADD COLUMN user_id TEXT",
        "CREATE INDEX direct_rooms_by_user ON direct_rooms (user_id) WHERE user_id IS NOT NULL",
    ),
    (  # 10: each sitting's HackMD page: queued once, made once, its regions, the read-back
        """
        CREATE TABLE hackmd_notes (
            meeting_id INTEGER PRIMARY KEY REFERENCES meetings (id) ON DELETE CASCADE,
            queued_at TEXT NOT NULL,
            note_id TEXT,
            url TEXT,
            -- JSON list of the regions the bot has put on the page (one a person
            -- removed is not put back)
            placed TEXT NOT NULL DEFAULT '[]',
            -- JSON object of the regions last queued for writing, and when
            regions TEXT,
            regions_at TEXT,
            -- the final note: the page read back at the close ('page'), or the bot's own
            -- rendering when HackMD could not be read ('bot')
            final_text TEXT,
            final_source TEXT
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
class HackMDNoteRow:
    """A sitting's HackMD page as the database keeps it."""

    meeting_id: int
    note_id: str
    url: str
    placed: frozenset[str]
    regions: dict[str, str] | None
    regions_at: datetime | None
    final_text: str | None
    final_source: str | None

    @classmethod
    def from_row(cls, row: Any) -> HackMDNoteRow:
        return cls(row[0], row[1], row[2] or "", frozenset(json.loads(row[3] or "[]")),
                   json.loads(row[4]) if row[4] is not None else None,
                   _instant(row[5]), row[6], row[7])


@dataclass(frozen=True, slots=True)
class Sittings:
    """What `open_or_scheduled` found: the sitting open in a room, the scheduled ones asked
    for (by series and start), and a sender's profile and entries in each of them."""

    open: Meeting | None
    scheduled: dict[tuple[str, datetime], Meeting]
    profile: Profile | None
    entries: dict[int, int]  # meeting id: the sender's entries in it

    def standing(self, meeting: Meeting | None) -> Standing:
        """The sender's standing in `meeting` (none recorded in a sitting not yet made)."""
        return Standing(self.profile, self.entries.get(meeting.id, 0) if meeting else 0)


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
# The sitting open in a room (one at most; the earliest started, should there be two).
_OPEN_IN_ROOM = ("FROM meetings WHERE room_id = ? AND ended_at IS NULL "
                 "AND started_at IS NOT NULL ORDER BY started_at LIMIT 1")
_POLL_COLUMNS = ("id, meeting_id, room_id, asker, question, answers, start_event_id, "
                 "opened_at, closed_at")


def _poll_from_row(row: aiosqlite.Row) -> Poll:
    return Poll(
        id=row["id"], meeting_id=row["meeting_id"], room_id=RoomId(row["room_id"]),
        asker=UserId(row["asker"]), question=row["question"],
        answers=tuple(Answer(id_, text) for id_, text in json.loads(row["answers"])),
        start_event_id=EventId(row["start_event_id"]) if row["start_event_id"] else None,
        opened_at=datetime.fromisoformat(row["opened_at"]),
        closed_at=_instant(row["closed_at"]),
    )


_ENTRY_COLUMNS = (
    "id, kind, sender, sender_name, text, minutes, event_id, created_at, item_id, assignee, "
    "position, item_started_at, took_seconds, overrun_noted, dropped, carried_from, pass_reason"
)


def _meta_upsert(keys: int) -> str:
    """Set `keys` meta keys (parameters: key, value, key, value ...) in one statement."""
    return ("INSERT INTO meta (key, value) VALUES " + ", ".join("(?, ?)" for _ in range(keys))
            + " ON CONFLICT (key) DO UPDATE SET value = excluded.value")


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
        pass_reason=PassReason(row["pass_reason"]) if row["pass_reason"] else None,
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
            await connection.execute(CACHE_SIZE)
            await cls(connection)._migrate()
            reader = await aiosqlite.connect(path, isolation_level=None)
            reader.row_factory = aiosqlite.Row
            await reader.execute("PRAGMA query_only = ON")
            await reader.execute("PRAGMA busy_timeout = 5000")
            await reader.execute(CACHE_SIZE)
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

    async def delete_meta(self, key: str) -> None:
        await self._db.execute("DELETE FROM meta WHERE key = ?", (key,))

    async def set_meta(self, key: str, value: str) -> None:
        await self._db.execute(_meta_upsert(1), (key, value))

    def changes_made(self) -> int:
        """Rows this connection has changed since it opened (no trip to its thread): a
        caller compares two readings to learn whether anything was written between."""
        return self._db.total_changes

    async def save_meta(self, values: dict[str, str]) -> None:
        """Set several keys, committed together on their own: one statement, which SQLite
        commits alone, all or nothing, so one trip instead of four (BEGIN, a write per
        key, COMMIT). Under the lock, so it never lands in another task's transaction.
        The sync position is saved so, while a ✅ may be on its way."""
        async with self._lock:
            await self._db.execute(_meta_upsert(len(values)),
                                   tuple(item for pair in values.items() for item in pair))

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

    async def touch_direct_room(self, room_id: RoomId, now: datetime,
                                user_id: UserId | None = None) -> None:
        """Someone (`user_id`, if known) used a direct chat: it is not idle. A chat
        forgotten by upkeep while its leave was still queued is remembered again, which
        calls the leave off."""
        await self._db.execute(
            "INSERT INTO direct_rooms (room_id, joined_at, last_used_at, user_id) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (room_id) DO UPDATE SET "
            "last_used_at = excluded.last_used_at, "
            "user_id = coalesce(excluded.user_id, user_id)",
            (room_id, _stamp(now), _stamp(now), user_id))

    async def direct_room_of(self, user_id: UserId) -> RoomId | None:
        """The direct chat with a person the bot knows of, the latest used."""
        room_id = await self._scalar(
            "SELECT room_id FROM direct_rooms WHERE user_id = ? "
            "ORDER BY coalesce(last_used_at, joined_at) DESC LIMIT 1", user_id)
        return RoomId(room_id) if room_id is not None else None

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
        rows = await self._rows(f"SELECT {_MEETING_COLUMNS} {_OPEN_IN_ROOM}", room_id)
        return _meeting_from_row(rows[0]) if rows else None

    async def open_meetings(self) -> list[Meeting]:
        rows = await self._rows(
            f"SELECT {_MEETING_COLUMNS} FROM meetings "
            "WHERE ended_at IS NULL AND started_at IS NOT NULL ORDER BY id"
        )
        return [_meeting_from_row(row) for row in rows]

    async def open_or_scheduled(
        self, room_id: RoomId, sittings: Sequence[tuple[str, datetime]],
        sender: UserId | None = None,
    ) -> Sittings:
        """`open_meeting_in_room`, `find_scheduled` of each (series, start), and what a new
        entry asks about `sender` (`get_profile`, and their entries in each sitting
        found), in one query where a command would make three."""
        wanted = " OR ".join("(series_id = ? AND scheduled_start = ?)" for _ in sittings)
        # One row per sitting found, or a single row of NULLs when none is: the profile
        # comes either way.
        rows = await self._rows(
            f"WITH found AS (SELECT * FROM (SELECT 1 AS open, {_MEETING_COLUMNS} {_OPEN_IN_ROOM})"
            + (f" UNION ALL SELECT 0, {_MEETING_COLUMNS} FROM meetings WHERE {wanted}"
               if sittings else "")
            + ") SELECT found.*, (SELECT count(*) FROM entries WHERE sender = ? "
            "AND meeting_id = found.id AND carried_from IS NULL) AS taken, "
            "profiles.name AS profile_name, profiles.affiliation AS profile_affiliation, "
            "profiles.handle AS profile_handle "
            "FROM (SELECT 1) LEFT JOIN found ON 1 LEFT JOIN profiles ON profiles.user_id = ?",
            room_id, *(value for series_id, start in sittings
                       for value in (series_id, _stamp(start))), sender, sender)
        found = [(row["open"], _meeting_from_row(row), row["taken"])
                 for row in rows if row["id"] is not None]
        first = rows[0]
        return Sittings(
            open=next((meeting for is_open, meeting, _ in found if is_open), None),
            scheduled={(meeting.series_id, meeting.scheduled_start): meeting
                       for is_open, meeting, _ in found
                       if not is_open and meeting.scheduled_start is not None},
            profile=(Profile(first["profile_name"], first["profile_affiliation"],
                             first["profile_handle"])
                     if first["profile_name"] is not None else None),
            entries={meeting.id: taken for _, meeting, taken in found},
        )

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

    async def sittings_of_series(self, series_id: str) -> list[Meeting]:
        """Every sitting of a series that has a name, in the order they got it: what
        `archive.note_stems` counts. A sitting is named when it starts, or earlier when
        its GitHub issue or HackMD page is queued (they carry the name); since that
        moment never changes and later sittings are named later, a name never moves."""
        never = "'~'"  # after every timestamp
        rows = await self._rows(
            f"SELECT {_MEETING_COLUMNS} FROM (SELECT m.*, MIN("
            f"COALESCE(m.started_at, {never}), COALESCE(g.queued_at, {never}), "
            f"COALESCE(h.queued_at, {never})) AS named_at FROM meetings m "
            "LEFT JOIN github_issues g ON g.meeting_id = m.id "
            "LEFT JOIN hackmd_notes h ON h.meeting_id = m.id WHERE m.series_id = ?) "
            f"WHERE named_at <> {never} ORDER BY named_at, id",
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
        pass_reason: PassReason | None = None,
    ) -> bool:
        """Add an entry once (keyed by its event id); False if it was there already."""
        position = None
        if kind is EntryKind.AGENDA:
            position = await self._scalar(
                "SELECT coalesce(max(position), 0) + 1 FROM entries "
                "WHERE meeting_id = ? AND kind = 'agenda'", meeting_id)
        return await self._changes(
            "INSERT OR IGNORE INTO entries (meeting_id, kind, sender, sender_name, text, minutes, "
            "event_id, created_at, item_id, assignee, position, carried_from, pass_reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            meeting_id, kind.value, sender, sender_name, text, minutes, event_id, _stamp(now),
            item_id, assignee, position, carried_from,
            pass_reason.value if pass_reason is not None else None,
        ) == 1

    async def count_agenda(self, meeting_id: int) -> int:
        """Agenda items in a meeting, carried-over ones included."""
        return await self._scalar(
            "SELECT count(*) FROM entries WHERE meeting_id = ? AND kind = 'agenda'", meeting_id)

    async def count_own_entries(self, meeting_id: int, sender: UserId) -> int:
        """The entries `sender` added to a meeting (items carried over from earlier ones
        not): what the limit per person counts."""
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
            votes=tuple(VoteResult(r["result"], r["item_id"]) for r in await self._rows(
                "SELECT result, item_id FROM polls WHERE meeting_id = ? AND result IS NOT NULL "
                "ORDER BY closed_at, id", meeting.id)),
        )

    # --- polls ----------------------------------------------------------------------

    async def add_poll(self, meeting_id: int, room_id: RoomId, asker: UserId, question: str,
                       answers: Sequence[Answer], command_event_id: EventId,
                       now: datetime) -> Poll:
        cursor = await self._db.execute(
            "INSERT INTO polls (meeting_id, room_id, asker, question, answers, "
            "command_event_id, opened_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (meeting_id, room_id, asker, question,
             json.dumps([[a.id, a.text] for a in answers], ensure_ascii=False),
             command_event_id, _stamp(now)))
        assert cursor.lastrowid is not None
        return Poll(cursor.lastrowid, meeting_id, room_id, asker, question, tuple(answers),
                    None, now, None)

    async def open_poll_in_room(self, room_id: RoomId) -> Poll | None:
        rows = await self._rows(
            f"SELECT {_POLL_COLUMNS} FROM polls WHERE room_id = ? AND closed_at IS NULL",
            room_id)
        return _poll_from_row(rows[0]) if rows else None

    async def open_polls_of(self, meeting_id: int) -> list[Poll]:
        rows = await self._rows(
            f"SELECT {_POLL_COLUMNS} FROM polls WHERE meeting_id = ? AND closed_at IS NULL "
            "ORDER BY id", meeting_id)
        return [_poll_from_row(row) for row in rows]

    async def poll_started_by(self, start_event_id: EventId) -> Poll | None:
        rows = await self._rows(
            f"SELECT {_POLL_COLUMNS} FROM polls WHERE start_event_id = ?", start_event_id)
        return _poll_from_row(rows[0]) if rows else None

    async def get_poll(self, poll_id: int) -> Poll | None:
        rows = await self._rows(f"SELECT {_POLL_COLUMNS} FROM polls WHERE id = ?", poll_id)
        return _poll_from_row(rows[0]) if rows else None

    async def add_poll_response(self, poll_id: int, event_id: EventId, sender: UserId,
                                answer: str | None, sent_at: datetime) -> bool:
        """Record an answer once, however often its event comes; False if known."""
        return await self._changes(
            "INSERT OR IGNORE INTO poll_responses (event_id, poll_id, sender, answer, sent_at) "
            "VALUES (?, ?, ?, ?, ?)", event_id, poll_id, sender, answer, _stamp(sent_at)) > 0

    async def withdraw_poll_response(self, event_id: EventId) -> bool:
        """A redacted answer no longer counts: the person's earlier one does again."""
        return await self._changes(
            "DELETE FROM poll_responses WHERE event_id = ? AND poll_id IN "
            "(SELECT id FROM polls WHERE closed_at IS NULL)", event_id) > 0

    async def withdraw_poll_answers_of(self, room_id: RoomId, sender: UserId) -> int:
        """Someone left the room: none of their answers to its open poll counts."""
        return await self._changes(
            "DELETE FROM poll_responses WHERE sender = ? AND poll_id IN "
            "(SELECT id FROM polls WHERE room_id = ? AND closed_at IS NULL)", sender, room_id)

    async def poll_ballots(self, poll_id: int) -> list[Ballot]:
        rows = await self._rows(
            "SELECT sender, answer, sent_at, rowid FROM poll_responses WHERE poll_id = ? "
            "ORDER BY rowid", poll_id)
        return [Ballot(UserId(r["sender"]), r["answer"], datetime.fromisoformat(r["sent_at"]),
                       r["rowid"]) for r in rows]

    async def close_poll(self, poll_id: int, now: datetime, item_id: int | None,
                         result: str) -> bool:
        """Close an open poll with its result; False if it was closed already."""
        return await self._changes(
            "UPDATE polls SET closed_at = ?, item_id = ?, result = ? "
            "WHERE id = ? AND closed_at IS NULL", _stamp(now), item_id, result, poll_id) > 0

    # --- the web archive -------------------------------------------------------------

    async def archive_token(self, series_id: str) -> str | None:
        return await self._scalar(
            "SELECT token FROM archive_tokens WHERE series_id = ?", series_id)

    async def set_archive_token(self, series_id: str, token: str, digest_of_old: str | None,
                                now: datetime) -> None:
        """Make `token` the series' token; the old one (by its digest) answers 403 from now."""
        if digest_of_old is not None:
            await self._db.execute(
                "INSERT OR IGNORE INTO retired_archive_tokens (series_id, digest, retired_at) "
                "VALUES (?, ?, ?)", (series_id, digest_of_old, _stamp(now)))
        await self._db.execute(
            "INSERT INTO archive_tokens (series_id, token, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (series_id) DO UPDATE SET token = excluded.token, "
            "created_at = excluded.created_at", (series_id, token, _stamp(now)))

    async def retired_archive_digests(self, series_id: str) -> list[str]:
        rows = await self._rows(
            "SELECT digest FROM retired_archive_tokens WHERE series_id = ?", series_id)
        return [row["digest"] for row in rows]

    async def index_note(self, meeting_id: int, series_id: str,
                         sections: Sequence[tuple[str, str]]) -> None:
        """The note's sections as the search finds them, replacing what was indexed before."""
        await self._db.execute("DELETE FROM note_search WHERE meeting_id = ?", (meeting_id,))
        await self._db.executemany(
            "INSERT INTO note_search (section, body, meeting_id, series_id) VALUES (?, ?, ?, ?)",
            [(section, body, meeting_id, series_id) for section, body in sections])

    async def data_version(self) -> int:
        """Changes whenever another connection commits (on `read`: whenever anything was
        written), so what was read from an unchanged version can be reused."""
        return int(await self._scalar("PRAGMA data_version"))

    async def indexed_meetings(self) -> set[int]:
        rows = await self._rows("SELECT DISTINCT meeting_id FROM note_search")
        return {int(row["meeting_id"]) for row in rows}

    async def search_notes(self, query: str, series_ids: Sequence[str], *, marks: tuple[str, str],
                           limit: int = 50) -> list[tuple[int, str, str, str]]:
        """(meeting id, series id, section, snippet with `marks` around each hit), best
        first. Raises sqlite3.OperationalError for a query FTS5 cannot parse."""
        if not series_ids:
            return []
        places = ",".join("?" * len(series_ids))
        rows = await self._rows(
            "SELECT meeting_id, series_id, section, "
            "snippet(note_search, 1, ?, ?, '…', 16) AS snippet FROM note_search "
            f"WHERE note_search MATCH ? AND series_id IN ({places}) ORDER BY rank LIMIT ?",
            marks[0], marks[1], query, *series_ids, limit)
        return [(int(r["meeting_id"]), r["series_id"], r["section"], r["snippet"]) for r in rows]

    async def sitting_counts(self, series_id: str) -> dict[int, tuple[int, int, int, int]]:
        """Per held sitting: (people present, updates, agenda items reached, items not
        reached nor dropped, which a close carries over)."""
        rows = await self._rows(
            "SELECT m.id, "
            "(SELECT count(*) FROM attendees a WHERE a.meeting_id = m.id) AS present, "
            "(SELECT count(*) FROM entries e WHERE e.meeting_id = m.id "
            " AND e.kind = 'update') AS updates, "
            "(SELECT count(*) FROM entries e WHERE e.meeting_id = m.id AND e.kind = 'agenda' "
            " AND (e.item_started_at IS NOT NULL OR e.took_seconds > 0)) AS reached, "
            "(SELECT count(*) FROM entries e WHERE e.meeting_id = m.id AND e.kind = 'agenda' "
            " AND e.item_started_at IS NULL AND e.took_seconds = 0 AND e.dropped = 0) AS open "
            "FROM meetings m WHERE m.series_id = ? AND m.started_at IS NOT NULL",
            series_id)
        return {int(r["id"]): (r["present"], r["updates"], r["reached"], r["open"])
                for r in rows}

    async def attendance(self, meeting_ids: Sequence[int]) -> list[tuple[int, str, str, bool]]:
        """(meeting id, person, name, passed) for everyone on the roll call or passing."""
        if not meeting_ids:
            return []
        places = ",".join("?" * len(meeting_ids))
        rows = await self._rows(
            f"SELECT meeting_id, user_id, name, 0 AS passed FROM attendees "
            f"WHERE meeting_id IN ({places}) "
            f"UNION ALL SELECT meeting_id, sender, sender_name, 1 FROM entries "
            f"WHERE kind = 'pass' AND meeting_id IN ({places})",
            *meeting_ids, *meeting_ids)
        return [(int(r["meeting_id"]), r["user_id"], r["name"], bool(r["passed"]))
                for r in rows]

    async def arrivals_since(self, meeting_id: int, since: datetime) -> list[tuple[UserId, str]]:
        """Who joined the roll call after `since` (id and roll-call name), in arrival order."""
        rows = await self._rows(
            "SELECT user_id, name FROM attendees WHERE meeting_id = ? AND arrived_at > ? "
            "ORDER BY arrived_at, rowid", meeting_id, _stamp(since))
        return [(UserId(row["user_id"]), row["name"]) for row in rows]

    async def delete_timed_out(self, meeting_id: int, sender: UserId) -> None:
        """Remove the "no update" the round recorded for `sender` when their time ran out."""
        await self._db.execute(
            "DELETE FROM entries WHERE meeting_id = ? AND sender = ? AND kind = 'pass' "
            "AND pass_reason = 'time_up'", (meeting_id, sender))

    async def quick_update_senders(self, meeting_id: int) -> set[UserId]:
        """Who gave a quick update or a pass in a meeting (in any form)."""
        return {UserId(row["sender"]) for row in await self._rows(
            "SELECT DISTINCT sender FROM entries WHERE meeting_id = ? "
            "AND kind IN ('update', 'pass')", meeting_id)}

    async def regulars(self, series_id: str, before: datetime, *, of_last: int = 4,
                       at_least: int = 2) -> set[UserId]:
        """Who is on at least `at_least` of the roll calls of the series' last `of_last`
        sittings held before `before`."""
        rows = await self._rows(
            "SELECT user_id FROM attendees WHERE meeting_id IN ("
            "  SELECT id FROM meetings WHERE series_id = ? AND started_at IS NOT NULL"
            "  AND started_at < ? ORDER BY started_at DESC LIMIT ?"
            ") GROUP BY user_id HAVING count(*) >= ?",
            series_id, _stamp(before), of_last, at_least)
        return {UserId(row["user_id"]) for row in rows}

    # --- nudges -------------------------------------------------------------------------

    async def decide_nudges(self, series_id: str, scheduled_start: datetime,
                            now: datetime) -> bool:
        """Note that a sitting's nudges are decided; False if they were before."""
        return await self._changes(
            "INSERT OR IGNORE INTO nudges (series_id, scheduled_start, decided_at) "
            "VALUES (?, ?, ?)", series_id, _stamp(scheduled_start), _stamp(now)) == 1

    async def nudges_decided(self, series_id: str, scheduled_start: datetime) -> bool:
        return await self._scalar(
            "SELECT 1 FROM nudges WHERE series_id = ? AND scheduled_start = ?",
            series_id, _stamp(scheduled_start)) == 1

    async def set_nudges_wanted(self, user_id: UserId, wanted: bool, now: datetime) -> None:
        if wanted:
            await self._db.execute("DELETE FROM nudge_opt_outs WHERE user_id = ?", (user_id,))
        else:
            await self._db.execute(
                "INSERT OR IGNORE INTO nudge_opt_outs (user_id, opted_out_at) VALUES (?, ?)",
                (user_id, _stamp(now)))

    async def nudge_opt_outs(self) -> set[UserId]:
        return {UserId(row["user_id"]) for row in await self._rows(
            "SELECT user_id FROM nudge_opt_outs")}

    # --- the update round ---------------------------------------------------------------

    async def start_round(self, meeting_id: int, now: datetime,
                          places: Sequence[RoundPlace]) -> None:
        """A new round for the meeting, replacing any earlier one."""
        await self._db.execute("DELETE FROM update_rounds WHERE meeting_id = ?", (meeting_id,))
        await self._db.execute(
            "INSERT INTO update_rounds (meeting_id, started_at) VALUES (?, ?)",
            (meeting_id, _stamp(now)))
        for place in places:
            await self.add_round_place(meeting_id, place)

    async def add_round_place(self, meeting_id: int, place: RoundPlace) -> None:
        """Add a person at the end of the round, once."""
        await self._db.execute(
            "INSERT OR IGNORE INTO round_places (meeting_id, position, user_id, name, outcome) "
            "SELECT ?, coalesce(max(position), 0) + 1, ?, ?, ? FROM round_places "
            "WHERE meeting_id = ?",
            (meeting_id, place.user_id, place.name,
             place.outcome.value if place.outcome is not None else None, meeting_id))

    async def get_round(self, meeting_id: int) -> UpdateRound | None:
        rows = await self._rows(
            "SELECT started_at, ended_at, current_user_id, clock_at FROM update_rounds "
            "WHERE meeting_id = ?", meeting_id)
        if not rows:
            return None
        places = await self._rows(
            "SELECT user_id, name, outcome FROM round_places WHERE meeting_id = ? "
            "ORDER BY position", meeting_id)
        row = rows[0]
        return UpdateRound(
            meeting_id=meeting_id,
            started_at=datetime.fromisoformat(row["started_at"]),
            places=tuple(RoundPlace(UserId(p["user_id"]), p["name"],
                                    RoundOutcome(p["outcome"]) if p["outcome"] else None)
                         for p in places),
            current=UserId(row["current_user_id"]) if row["current_user_id"] else None,
            clock_at=_instant(row["clock_at"]),
            ended_at=_instant(row["ended_at"]),
        )

    async def active_rounds(self) -> list[UpdateRound]:
        """Rounds not ended, in meetings still open."""
        rows = await self._rows(
            "SELECT r.meeting_id FROM update_rounds r JOIN meetings m ON m.id = r.meeting_id "
            "WHERE r.ended_at IS NULL AND m.ended_at IS NULL ORDER BY r.meeting_id")
        found = [await self.get_round(row["meeting_id"]) for row in rows]
        return [found_round for found_round in found if found_round is not None]

    async def set_round_outcome(self, meeting_id: int, user_id: UserId,
                                outcome: RoundOutcome) -> None:
        await self._db.execute(
            "UPDATE round_places SET outcome = ? WHERE meeting_id = ? AND user_id = ?",
            (outcome.value, meeting_id, user_id))

    async def set_round_turn(self, meeting_id: int, user_id: UserId | None) -> None:
        """Whose turn it is now; its clock starts when the turn's message is sent."""
        await self._db.execute(
            "UPDATE update_rounds SET current_user_id = ?, clock_at = NULL "
            "WHERE meeting_id = ?", (user_id, meeting_id))

    async def start_turn_clock(self, meeting_id: int, user_id: UserId, at: datetime) -> bool:
        """Start the clock of `user_id`'s turn, if it is still theirs; False if not."""
        return await self._changes(
            "UPDATE update_rounds SET clock_at = ? WHERE meeting_id = ? "
            "AND current_user_id = ? AND ended_at IS NULL", _stamp(at), meeting_id,
            user_id) == 1

    async def end_round(self, meeting_id: int, now: datetime) -> bool:
        return await self._changes(
            "UPDATE update_rounds SET ended_at = ?, current_user_id = NULL, clock_at = NULL "
            "WHERE meeting_id = ? AND ended_at IS NULL", _stamp(now), meeting_id) == 1

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

    async def github_labels_etag(self, meeting_id: int) -> str | None:
        """The ETag of the last answer listing the issues with the `agenda_label`."""
        return await self._scalar(
            "SELECT labels_etag FROM github_issues WHERE meeting_id = ?", meeting_id)

    async def set_github_labels_etag(self, meeting_id: int, etag: str | None) -> None:
        await self._db.execute(
            "UPDATE github_issues SET labels_etag = ? WHERE meeting_id = ?", (etag, meeting_id))

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

    async def github_issue_ref(self, meeting_id: int) -> tuple[str, int] | None:
        """The repository and number of the sitting's issue once it is open."""
        rows = await self._rows(
            "SELECT repo, number FROM github_issues WHERE meeting_id = ? "
            "AND number IS NOT NULL", meeting_id)
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    async def github_issue_url(self, meeting_id: int) -> str | None:
        """The sitting's issue link once it is open (GitHub's `html_url`)."""
        return await self._scalar(
            "SELECT html_url FROM github_issues WHERE meeting_id = ?", meeting_id)

    # --- the meeting's HackMD page ---------------------------------------------------

    async def queue_hackmd_note(self, meeting_id: int, now: datetime) -> bool:
        """Note that the sitting's page is being made; False if it was before."""
        return await self._changes(
            "INSERT OR IGNORE INTO hackmd_notes (meeting_id, queued_at) VALUES (?, ?)",
            meeting_id, _stamp(now)) == 1

    async def hackmd_note_queued(self, meeting_id: int) -> bool:
        return await self._scalar(
            "SELECT COUNT(*) FROM hackmd_notes WHERE meeting_id = ?", meeting_id) > 0

    async def set_hackmd_note(self, meeting_id: int, note_id: str, url: str,
                              placed: Sequence[str], regions: Mapping[str, str],
                              now: datetime) -> None:
        """The page is made: its id and link, and the regions it was made with."""
        await self._db.execute(
            "INSERT INTO hackmd_notes (meeting_id, queued_at, note_id, url, placed, regions, "
            "regions_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (meeting_id) DO UPDATE SET "
            "note_id = excluded.note_id, url = excluded.url, placed = excluded.placed, "
            "regions = excluded.regions, regions_at = excluded.regions_at",
            (meeting_id, _stamp(now), note_id, url, json.dumps(sorted(placed)),
             json.dumps(dict(regions), ensure_ascii=False), _stamp(now)))

    async def hackmd_note(self, meeting_id: int) -> HackMDNoteRow | None:
        """The sitting's page once it is made; None before."""
        rows = await self._rows(
            "SELECT meeting_id, note_id, url, placed, regions, regions_at, final_text, "
            "final_source FROM hackmd_notes WHERE meeting_id = ? AND note_id IS NOT NULL",
            meeting_id)
        return HackMDNoteRow.from_row(rows[0]) if rows else None

    async def open_hackmd_notes(self) -> list[HackMDNoteRow]:
        """Pages of sittings not yet closed."""
        rows = await self._rows(
            "SELECT h.meeting_id, h.note_id, h.url, h.placed, h.regions, h.regions_at, "
            "h.final_text, h.final_source FROM hackmd_notes h "
            "JOIN meetings m ON m.id = h.meeting_id "
            "WHERE h.note_id IS NOT NULL AND m.ended_at IS NULL ORDER BY h.meeting_id")
        return [HackMDNoteRow.from_row(row) for row in rows]

    async def set_hackmd_regions(self, meeting_id: int, regions: Mapping[str, str],
                                 now: datetime) -> None:
        await self._db.execute(
            "UPDATE hackmd_notes SET regions = ?, regions_at = ? WHERE meeting_id = ?",
            (json.dumps(dict(regions), ensure_ascii=False), _stamp(now), meeting_id))

    async def set_hackmd_placed(self, meeting_id: int, placed: Collection[str]) -> None:
        await self._db.execute(
            "UPDATE hackmd_notes SET placed = ? WHERE meeting_id = ?",
            (json.dumps(sorted(placed)), meeting_id))

    async def set_hackmd_final(self, meeting_id: int, text: str, source: str) -> bool:
        """Keep the sitting's final note, once; False if it was kept before."""
        return await self._changes(
            "UPDATE hackmd_notes SET final_text = ?, final_source = ? "
            "WHERE meeting_id = ? AND final_text IS NULL", text, source, meeting_id) == 1

    async def hackmd_url(self, meeting_id: int) -> str | None:
        """The sitting's page link once it is made."""
        return await self._scalar(
            "SELECT url FROM hackmd_notes WHERE meeting_id = ?", meeting_id)

    async def hackmd_final(self, meeting_id: int) -> str | None:
        """The final note kept at the close (the page read back), if any."""
        return await self._scalar(
            "SELECT final_text FROM hackmd_notes WHERE meeting_id = ?", meeting_id)

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
        self, room_id: RoomId, kind: str, payload: dict[str, Any], now: datetime,
        *, not_before: datetime | None = None,
    ) -> OutboxItem:
        """Queue a job, due at once or from `not_before`; the job as the outbox holds it."""
        cursor = await self._db.execute(
            "INSERT INTO outbox (room_id, kind, payload, created_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (room_id, kind, json.dumps(payload, ensure_ascii=False), _stamp(now),
             _stamp(not_before) if not_before is not None else None),
        )
        assert cursor.lastrowid is not None
        return OutboxItem(cursor.lastrowid, room_id, kind, payload, now,
                          next_attempt_at=not_before)

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

    async def record_sent(self, item: OutboxItem, event_id: str, now: datetime) -> None:
        """`mark_sent` committed on its own. When it is a single statement (nearly every
        job) it needs no BEGIN and COMMIT around it, as SQLite commits one statement
        alone, all or nothing: one trip instead of three after every ✅. Under the lock,
        so it never lands in another task's transaction."""
        statements = self._sent_statements(item, event_id, now)
        if len(statements) > 1:
            async with self.transaction():
                for statement, arguments in statements:
                    await self._db.execute(statement, arguments)
            return
        async with self._lock:
            await self._db.execute(*statements[0])

    async def mark_sent(self, item: OutboxItem, event_id: str, now: datetime) -> None:
        """Record delivery, and what the sent event is for (`_sent_statements`)."""
        for statement, arguments in self._sent_statements(item, event_id, now):
            await self._db.execute(statement, arguments)

    @staticmethod
    def _sent_statements(item: OutboxItem, event_id: str,
                         now: datetime) -> list[tuple[str, tuple[Any, ...]]]:
        """What a sent job records: that it was sent; and for a start announcement, the
        event, for ✋ reactions to it; for a poll's start, the event the answers name; for
        a message in a logged sitting, its line in the log."""
        statements: list[tuple[str, tuple[Any, ...]]] = [(
            "UPDATE outbox SET sent_at = ?, sent_event_id = ? WHERE id = ?",
            (_stamp(now), event_id, item.id))]
        if (meeting_id := item.payload.get("announces")) is not None:
            statements.append((
                "INSERT OR IGNORE INTO announcements (event_id, meeting_id) VALUES (?, ?)",
                (event_id, meeting_id)))
        if item.kind == POLL_START and (poll_id := item.payload.get("poll_id")) is not None:
            statements.append((
                "UPDATE polls SET start_event_id = ? WHERE id = ?", (event_id or None, poll_id)))
        if (log := item.payload.get("log_in")) is not None and event_id:
            # The bot's own message, in the full log of the sitting it was queued in,
            # while that is still open (as a person's message said then would be).
            statements.append((
                "INSERT OR IGNORE INTO log_lines (event_id, meeting_id, sender, display_name, "
                "sent_at, body) SELECT ?, id, ?, ?, ?, ? FROM meetings "
                "WHERE id = ? AND ended_at IS NULL",
                (event_id, log["sender"], log["name"], _stamp(now), item.payload["text"],
                 log["meeting_id"])))
        return statements

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

    # --- the full log of a sitting ---------------------------------------------------

    async def add_log_line(self, meeting_id: int, line: LogLine) -> bool:
        """Keep a message in a sitting's log; False if it is kept already (a replay)."""
        return await self._changes(
            "INSERT OR IGNORE INTO log_lines (event_id, meeting_id, sender, display_name, "
            "sent_at, body) VALUES (?, ?, ?, ?, ?, ?)", line.event_id, meeting_id,
            line.sender, line.display_name, _stamp(line.sent_at), line.body) == 1

    async def edit_log_line(self, event_id: EventId, sender: UserId, body: str,
                            edited_at: datetime) -> bool:
        """Show an edit of a logged message while its sitting is open; only its sender's
        edits count (the Matrix rule for m.replace), and never one older than the edit
        shown, so a replayed old edit cannot undo a newer one."""
        return await self._changes(
            "UPDATE log_lines SET body = ?, edited_at = ? WHERE event_id = ? AND sender = ? "
            "AND (edited_at IS NULL OR edited_at <= ?) AND EXISTS (SELECT 1 FROM meetings "
            "WHERE meetings.id = log_lines.meeting_id AND ended_at IS NULL)",
            body, _stamp(edited_at), event_id, sender, _stamp(edited_at)) == 1

    async def forget_log_line(self, event_id: EventId) -> int | None:
        """Remove a redacted message from whichever log holds it; that sitting's id, or
        None if no log held it."""
        meeting_id = await self._scalar(
            "SELECT meeting_id FROM log_lines WHERE event_id = ?", event_id)
        if meeting_id is not None:
            await self._db.execute("DELETE FROM log_lines WHERE event_id = ?", (event_id,))
        return meeting_id

    async def log_lines(self, meeting_id: int) -> list[LogLine]:
        """A sitting's log in the order the room's timeline had it; empty if not logged."""
        rows = await self._rows(
            "SELECT event_id, sender, display_name, sent_at, body, edited_at FROM log_lines "
            "WHERE meeting_id = ? ORDER BY rowid", meeting_id)
        return [LogLine(EventId(row["event_id"]), UserId(row["sender"]), row["display_name"],
                        datetime.fromisoformat(row["sent_at"]), row["body"],
                        edited=row["edited_at"] is not None) for row in rows]

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
