"""Domain types shared by the core and the edges: ids, meetings, roll call, entries."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import NewType

RoomId = NewType("RoomId", str)
UserId = NewType("UserId", str)
EventId = NewType("EventId", str)


class EntryKind(enum.StrEnum):
    UPDATE = "update"
    PASS = "pass"
    CELEBRATION = "celebration"
    AGENDA = "agenda"


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
    """Something a person contributed to a meeting: an update, a pass, a celebration, an item."""

    kind: EntryKind
    sender: UserId
    sender_name: str
    text: str
    minutes: int | None
    event_id: EventId
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MeetingRecord:
    """Everything the note is compiled from."""

    meeting: Meeting
    attendees: tuple[Attendee, ...]
    entries: tuple[Entry, ...]

    def of_kind(self, *kinds: EntryKind) -> list[Entry]:
        return [entry for entry in self.entries if entry.kind in kinds]
