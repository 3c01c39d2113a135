"""Domain types shared by the core and the edges: ids, meetings, roll call, entries."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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


class PassReason(enum.StrEnum):
    """Why a quick update is a pass without text, when it is not a typed `!pass`."""

    ON_CALL = "on_call"  # `!done`: spoke on the call without typing
    TIME_UP = "time_up"  # the update round's turn ran out with nothing said


class RoundOutcome(enum.StrEnum):
    """How a person's place in an update round ended."""

    SPOKE = "spoke"  # an update, a pass or `!done` in their turn
    AHEAD = "ahead"  # done before their turn came: skipped, with a note
    SKIPPED = "skipped"  # a chair's `!skip`
    TIME_UP = "time_up"


@dataclass(frozen=True, slots=True)
class Profile:
    """How a person appears in roll calls: `Name / Affiliation / @handle`."""

    name: str
    affiliation: str = ""
    handle: str = ""


@dataclass(frozen=True, slots=True)
class Standing:
    """What a new entry asks about its sender: their saved profile (None until they set
    one) and how many entries they have added to the sitting (the limit per person)."""

    profile: Profile | None = None
    entries: int = 0


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
    pass_reason: PassReason | None = None

    @property
    def visited(self) -> bool:
        """An agenda item the meeting has reached."""
        return self.item_started_at is not None or self.took_seconds > 0


@dataclass(frozen=True, slots=True)
class VoteResult:
    """A closed poll's counted result line, under the agenda item current at its close."""

    result: str
    item_id: int | None = None


@dataclass(frozen=True, slots=True)
class MeetingRecord:
    """Everything the note is compiled from."""

    meeting: Meeting
    attendees: tuple[Attendee, ...]
    entries: tuple[Entry, ...]
    votes: tuple[VoteResult, ...] = ()

    def of_kind(self, *kinds: EntryKind) -> list[Entry]:
        return [entry for entry in self.entries if entry.kind in kinds]

    @property
    def quick_updates(self) -> list[Entry]:
        """Updates and passes in roll-call order (arrival on the roll call), then those of
        people not on the roll call in the order their first one came; a person's own
        in the order they came. Every rendering of the note lists them this way."""
        places: dict[UserId, int] = {}
        for attendee in self.attendees:
            places.setdefault(attendee.user_id, len(places))
        updates = self.of_kind(EntryKind.UPDATE, EntryKind.PASS)
        for entry in updates:
            places.setdefault(entry.sender, len(places))
        return sorted(updates, key=lambda entry: places[entry.sender])

    @property
    def agenda(self) -> list[Entry]:
        """Agenda items in their running order."""
        items = self.of_kind(EntryKind.AGENDA)
        return sorted(items, key=lambda item: (item.position or 0, item.id))

    @property
    def current_item(self) -> Entry | None:
        wanted = self.meeting.current_item_id
        return next((item for item in self.agenda if item.id == wanted), None)


@dataclass(frozen=True, slots=True)
class LogLine:
    """One message in a logged sitting's full log, as it reads now (edits applied)."""

    event_id: EventId
    sender: UserId
    display_name: str
    # When the sender's homeserver says it was sent.
    sent_at: datetime
    body: str
    edited: bool = False


@dataclass(frozen=True, slots=True)
class Pill:
    """A mention as a client shows it: the person's id, and the text that stands for it
    in the message's plain body (Element puts the display name there)."""

    user_id: UserId
    text: str


@dataclass(frozen=True, slots=True)
class RoundPlace:
    """One person's place in an update round; `outcome` None: their turn has not ended."""

    user_id: UserId
    name: str
    outcome: RoundOutcome | None = None


@dataclass(frozen=True, slots=True)
class UpdateRound:
    """A meeting's update round: the order, whose turn it is, and since when.

    `clock_at` is the homeserver's time of the message that started the current turn's
    clock (None until that message is sent).
    """

    meeting_id: int
    started_at: datetime
    places: tuple[RoundPlace, ...]
    current: UserId | None = None
    clock_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def is_active(self) -> bool:
        return self.ended_at is None

    def time_up_at(self, seconds: int) -> datetime | None:
        """When the current turn's time is up (None: no turn, or its clock not started)."""
        if not self.is_active or self.current is None or self.clock_at is None:
            return None
        return self.clock_at + timedelta(seconds=seconds)
