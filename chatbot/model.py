"""Domain types shared by the core and the edges: ids, meetings, roll call, entries."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NewType

RoomId = NewType("RoomId", str)
UserId = NewType("UserId", str)
EventId = NewType("EventId", str)


def utc_now() -> datetime:
    """The default clock; tests and simulations inject their own."""
    return datetime.now(UTC)


class EntryKind(enum.StrEnum):
    UPDATE = "update"
    PASS = "pass"
    CELEBRATION = "celebration"
    AGENDA = "agenda"
    NOTE = "note"
    ACTION = "action"
    DECISION = "decision"


@dataclass(frozen=True, slots=True)
class Profile:
    """How a person appears in roll calls: `Name / Affiliation / @handle`."""

    name: str
    affiliation: str = ""
    handle: str = ""


@dataclass(frozen=True, slots=True)
class Meeting:
    """One sitting of a configured meeting series, scheduled or ad hoc."""

    id: int
    series_id: str
    room_id: RoomId
    title: str
    scheduled_start: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    closes_at: datetime | None
    current_item_id: int | None = None

    @property
    def is_open(self) -> bool:
        return self.started_at is not None and self.ended_at is None

    @property
    def is_closed(self) -> bool:
        return self.ended_at is not None

    @property
    def held_at(self) -> datetime:
        """The time the note is dated by: the scheduled start, else the actual one."""
        when = self.scheduled_start or self.started_at
        assert when is not None, "an ad hoc meeting always has a start"
        return when


@dataclass(frozen=True, slots=True)
class Attendee:
    """One roll-call line, in order of arrival."""

    user_id: UserId
    profile: Profile


@dataclass(frozen=True, slots=True)
class Entry:
    """Something a person contributed to a meeting: an update, an agenda item, a note ..."""

    kind: EntryKind
    sender: UserId
    sender_name: str
    text: str
    minutes: int | None
    event_id: EventId
    created_at: datetime
    id: int = 0
    item_id: int | None = None
    assignee: str | None = None
    position: int | None = None
    item_started_at: datetime | None = None
    took_seconds: int = 0
    overrun_noted: bool = False
    dropped: bool = False
    carried_from: str | None = None

    @property
    def visited(self) -> bool:
        """An agenda item the meeting has reached."""
        return self.item_started_at is not None or self.took_seconds > 0


@dataclass(frozen=True, slots=True)
class MeetingRecord:
    """Everything the note is compiled from."""

    meeting: Meeting
    attendees: tuple[Attendee, ...]
    entries: tuple[Entry, ...]

    def of_kind(self, *kinds: EntryKind) -> list[Entry]:
        return [entry for entry in self.entries if entry.kind in kinds]

    @property
    def agenda(self) -> list[Entry]:
        """Agenda items in their running order."""
        items = self.of_kind(EntryKind.AGENDA)
        return sorted(items, key=lambda item: (item.position or 0, item.id))

    @property
    def current_item(self) -> Entry | None:
        wanted = self.meeting.current_item_id
        return next((item for item in self.agenda if item.id == wanted), None)
