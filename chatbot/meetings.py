"""Meeting lifecycle: which sitting a command belongs to, opening, closing, planning jobs.

Plain logic over the store and the configuration; what must happen in the room comes
back as effects for the edges to carry out.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import PurePosixPath

from chatbot.config import Config, MeetingConfig
from chatbot.model import EntryKind, Meeting, RoomId
from chatbot.recurrence import Occurrence, ReminderDecision, decide_reminder, elapsed
from chatbot.render import (
    render_closed,
    render_note,
    render_reminder,
    render_start,
)
from chatbot.store import Store

log = logging.getLogger(__name__)

# `!startmeeting` opens the room's next scheduled sitting only if it is this close;
# further ahead, a chair starting a meeting means an extra, ad hoc one.
EARLY_START_WINDOW = timedelta(hours=24)
LOOKAHEAD_OCCURRENCES = 4


# --- effects: what the core asks the edges to do ------------------------------------


@dataclass(frozen=True, slots=True)
class React:
    """A reaction on the message that triggered the command."""

    key: str = "✅"


@dataclass(frozen=True, slots=True)
class Reply:
    """A short notice in answer to the triggering message."""

    text: str


@dataclass(frozen=True, slots=True)
class Post:
    """A message of its own in a room (announcements, reminders, the note)."""

    room_id: RoomId
    text: str


@dataclass(frozen=True, slots=True)
class SaveNote:
    """Write the compiled note below `<data_dir>/notes/`."""

    relative_path: PurePosixPath
    text: str


Effect = React | Reply | Post | SaveNote


# --- which meeting ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rooms:
    """Configured series and the room ids their `room` settings resolved to."""

    config: Config
    room_of_series: Mapping[str, RoomId] = field(default_factory=dict)

    def series_in(self, room_id: RoomId) -> list[MeetingConfig]:
        return [m for m in self.config.meetings if self.room_of_series.get(m.id) == room_id]

    def is_configured(self, room_id: RoomId) -> bool:
        return room_id in self.room_of_series.values()

    def series(self, series_id: str) -> MeetingConfig | None:
        return self.config.meeting(series_id)


@dataclass(frozen=True, slots=True)
class Target:
    """The sitting a command applies to: open now, or the next one (row maybe not made yet)."""

    series: MeetingConfig
    start: datetime  # scheduled start, or the actual start of an ad hoc meeting
    meeting: Meeting | None

    @property
    def is_open(self) -> bool:
        return self.meeting is not None and self.meeting.is_open


async def upcoming(
    store: Store, series: MeetingConfig, now: datetime, count: int = LOOKAHEAD_OCCURRENCES
) -> list[tuple[Occurrence, Meeting | None]]:
    """Occurrences not over (end + grace still ahead) and not yet held, soonest first."""
    found = []
    for occurrence in series.schedule.occurrences(ending_after=now - series.grace):
        meeting = await store.find_scheduled(series.id, occurrence.start)
        if meeting is None or meeting.started_at is None:
            found.append((occurrence, meeting))
        if len(found) == count:
            break
    return found


async def resolve_target(
    store: Store, rooms: Rooms, room_id: RoomId, now: datetime
) -> Target | None:
    """The room's meeting in progress, else its next scheduled one, else None."""
    open_meeting = await store.open_meeting_in_room(room_id)
    if open_meeting is not None:
        series = rooms.series(open_meeting.series_id)
        if series is not None:
            return Target(series, open_meeting.held_at, open_meeting)
    candidates = []
    for series in rooms.series_in(room_id):
        pending = await upcoming(store, series, now, count=1)
        if pending:
            occurrence, meeting = pending[0]
            candidates.append(Target(series, occurrence.start, meeting))
    return min(candidates, key=lambda target: target.start, default=None)


async def materialize(store: Store, rooms: Rooms, target: Target) -> Meeting:
    """The database row for a target, created on first use."""
    if target.meeting is not None:
        return target.meeting
    return await store.ensure_scheduled(
        target.series.id, rooms.room_of_series[target.series.id], target.series.title, target.start
    )


def links_of(series: MeetingConfig) -> dict[str, str | None]:
    return series.links.model_dump()


# --- opening and closing ------------------------------------------------------------


async def open_meeting(
    store: Store, rooms: Rooms, series: MeetingConfig, meeting: Meeting, now: datetime,
    *, title: str | None = None,
) -> list[Effect]:
    """Open a scheduled sitting; it closes by itself at its scheduled end plus grace."""
    assert meeting.scheduled_start is not None
    closes_at = max(meeting.scheduled_start + series.duration, now) + series.grace
    title = title or meeting.title
    if not await store.mark_started(meeting.id, now, closes_at, title):
        return []
    log.info("meeting %s opened in %s (closes at %s)", meeting.id, meeting.room_id, closes_at)
    return [Post(meeting.room_id, render_start(
        title=title, links=links_of(series), closes_at=closes_at, zone=series.timezone,
        prefix=rooms.config.command_prefix,
    ))]


async def open_adhoc(
    store: Store, rooms: Rooms, series: MeetingConfig, title: str, now: datetime
) -> list[Effect]:
    """Open an extra meeting now, closing by itself after the series' duration plus grace."""
    room_id = rooms.room_of_series[series.id]
    closes_at = now + series.duration + series.grace
    meeting = await store.create_adhoc(series.id, room_id, title, now, closes_at)
    log.info("ad hoc meeting %s opened in %s", meeting.id, room_id)
    return [Post(room_id, render_start(
        title=title, links=links_of(series), closes_at=closes_at, zone=series.timezone,
        prefix=rooms.config.command_prefix,
    ))]


async def note_path(store: Store, series: MeetingConfig, meeting: Meeting) -> PurePosixPath:
    """`<meeting id>/<YYYY-MM-DD>.md`; a second sitting on the same day gets `-2`, and so on."""
    day = meeting.held_at.astimezone(series.timezone).date()
    same_day = [
        m.id for m in await store.meetings_of_series(series.id)
        if m.held_at.astimezone(series.timezone).date() == day
    ]
    position = same_day.index(meeting.id) + 1 if meeting.id in same_day else 1
    suffix = "" if position == 1 else f"-{position}"
    return PurePosixPath(series.id, f"{day.isoformat()}{suffix}.md")


async def compile_note(store: Store, series: MeetingConfig, meeting: Meeting) -> str:
    record = await store.record(meeting)
    return render_note(record, series.timezone, links_of(series))


async def close_meeting(
    store: Store, series: MeetingConfig, meeting: Meeting, now: datetime
) -> list[Effect]:
    """Close an open meeting: post the compiled note and save it."""
    if not await store.mark_ended(meeting.id, now):
        return []
    closed = await store.get_meeting(meeting.id)
    assert closed is not None
    note = await compile_note(store, series, closed)
    path = await note_path(store, series, closed)
    log.info("meeting %s closed in %s; note %s", meeting.id, meeting.room_id, path)
    return [
        Post(meeting.room_id, render_closed(closed.title, f"notes/{path}")),
        Post(meeting.room_id, note),
        SaveNote(path, note),
    ]


# --- scheduled work -----------------------------------------------------------------


class JobKind(enum.StrEnum):
    REMINDER = "reminder"
    START = "start"
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class Job:
    """One piece of scheduled work, with an id that is the same however often it is planned."""

    kind: JobKind
    run_at: datetime
    series_id: str
    start: datetime | None = None
    lead: timedelta | None = None
    meeting_id: int | None = None

    @property
    def id(self) -> str:
        if self.kind is JobKind.CLOSE:
            return f"close:{self.meeting_id}"
        lead = "" if self.lead is None else f":{int(self.lead.total_seconds())}"
        assert self.start is not None
        return f"{self.kind}:{self.series_id}:{self.start.isoformat()}{lead}"


def plan_series(
    series: MeetingConfig,
    next_occurrence: Occurrence,
    decided_leads: set[int],
    owed_since: datetime,
) -> list[Job]:
    """The reminders and start of a series' next sitting that is not yet held.

    Reminders that fell due before `owed_since` (the bot's first start) are not owed.
    """
    start = next_occurrence.start
    jobs = [Job(JobKind.START, start, series.id, start=start)]
    for lead in series.reminders:
        due = elapsed(start, -lead)
        if int(lead.total_seconds()) not in decided_leads and due >= owed_since:
            jobs.append(Job(JobKind.REMINDER, due, series.id, start=start, lead=lead))
    return jobs


async def plan_jobs(
    store: Store, rooms: Rooms, now: datetime, owed_since: datetime
) -> list[Job]:
    """Every job the schedule needs now, derived from the configuration and the database."""
    jobs = []
    for meeting in await store.open_meetings():
        if meeting.closes_at is not None:
            jobs.append(Job(JobKind.CLOSE, meeting.closes_at, meeting.series_id,
                            meeting_id=meeting.id))
    for series in rooms.config.meetings:
        if series.id not in rooms.room_of_series:
            continue
        pending = await upcoming(store, series, now, count=1)
        if pending:
            occurrence, _ = pending[0]
            decided = await store.decided_reminders(series.id, occurrence.start)
            jobs.extend(plan_series(series, occurrence, decided, owed_since))
    return jobs


async def run_reminder(
    store: Store, rooms: Rooms, series: MeetingConfig, start: datetime, lead: timedelta,
    now: datetime,
) -> list[Effect]:
    """Send the reminder if it is still worth sending; record its fate either way, once."""
    meeting = await store.find_scheduled(series.id, start)
    started = meeting is not None and meeting.started_at is not None
    decision = decide_reminder(start, lead, series.reminders, now, started=started)
    if decision is ReminderDecision.NOT_YET:
        return []
    lead_seconds = int(lead.total_seconds())
    if not await store.record_reminder(series.id, start, lead_seconds, decision.value, now):
        return []
    if decision is not ReminderDecision.SEND:
        log.info("reminder %s before %s of %s not sent: %s", lead, start, series.id,
                 decision.value)
        return []
    agenda: Sequence = ()
    if meeting is not None:
        agenda = (await store.record(meeting)).of_kind(EntryKind.AGENDA)
    room_id = rooms.room_of_series[series.id]
    log.info("reminder %s before %s of %s sent to %s", lead, start, series.id, room_id)
    return [Post(room_id, render_reminder(
        title=series.title, start=start, zone=series.timezone, now=now,
        links=links_of(series), agenda=agenda, prefix=rooms.config.command_prefix,
    ))]


async def run_start(
    store: Store, rooms: Rooms, series: MeetingConfig, start: datetime, now: datetime
) -> list[Effect]:
    """Open a scheduled sitting at its start time, unless a chair already did or it is over."""
    if now >= elapsed(start, series.duration + series.grace):
        log.info("meeting %s at %s was missed entirely (the bot was not running)", series.id, start)
        await store.ensure_scheduled(series.id, rooms.room_of_series[series.id], series.title,
                                     start)
        return []
    room_id = rooms.room_of_series[series.id]
    effects: list[Effect] = []
    previous = await store.open_meeting_in_room(room_id)
    if previous is not None:
        # Close the sitting still open here first, so that a room never has two
        # meetings collecting the same commands.
        effects = await run_close(store, rooms, previous.id, now, force=True)
    meeting = await store.ensure_scheduled(series.id, room_id, series.title, start)
    return effects + await open_meeting(store, rooms, series, meeting, now)


async def run_close(
    store: Store, rooms: Rooms, meeting_id: int, now: datetime, *, force: bool = False
) -> list[Effect]:
    """Close a meeting whose time is up (or now, with `force`)."""
    meeting = await store.get_meeting(meeting_id)
    if meeting is None or not meeting.is_open:
        return []
    if not force and meeting.closes_at is not None and now < meeting.closes_at:
        return []
    series = rooms.series(meeting.series_id)
    if series is None:
        log.warning("meeting %s belongs to %s, which is no longer configured; closing it",
                    meeting.id, meeting.series_id)
        await store.mark_ended(meeting.id, now)
        return []
    return await close_meeting(store, series, meeting, now)

