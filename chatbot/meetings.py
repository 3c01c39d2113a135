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
from typing import Any

from chatbot.archive import log_path_of, note_sections, note_stems
from chatbot.config import Config, MeetingConfig
from chatbot.model import (
    Entry,
    EntryKind,
    EventId,
    LogLine,
    Meeting,
    MeetingRecord,
    RoomId,
    Standing,
    UserId,
)
from chatbot.polls import END_TYPE, POLL_END, Poll, count, end_content, result_line
from chatbot.publish import Sitting, job_kinds, notes_page
from chatbot.publish.github import Comment, Issue
from chatbot.publish.issue import OpenIssue, issue_body, issue_title, sitting_marker
from chatbot.publish.notes_page import MakePage, keep_removed_items, page_content, page_regions
from chatbot.recurrence import Occurrence, ReminderDecision, decide_reminder, elapsed
from chatbot.render import (
    escape_markdown,
    format_date,
    format_time,
    render_closed,
    render_log,
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
UPKEEP_EVERY = timedelta(days=1)
# When the last upkeep ran (meta key), so the next is planned a day later.
LAST_UPKEEP_KEY = "last_upkeep_at"
# A logged message's time comes from its sender's homeserver, whose clock may be a
# little behind ours: the start announcement must not look older than the sitting.
LOG_CLOCK_SLACK = timedelta(minutes=1)


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
    """A message of its own in a room (announcements, reminders, the note).

    `announces` marks a meeting's start announcement, which people can answer with ✋.
    """

    room_id: RoomId
    text: str
    announces: int | None = None


@dataclass(frozen=True, slots=True)
class CallTurn:
    """A turn's line in the update round. Once it is sent, the homeserver's time of it
    starts the turn's clock; `mention` is pinged (a real Matrix mention), None for a
    line that only names someone called before."""

    room_id: RoomId
    text: str
    meeting_id: int
    user_id: UserId
    mention: UserId | None = None


@dataclass(frozen=True, slots=True)
class DirectMessage:
    """A message to one person in their direct chat with the bot (opened if need be)."""

    user_id: UserId
    text: str


@dataclass(frozen=True, slots=True)
class SaveNote:
    """Write the compiled note below `<data_dir>/notes/`."""

    relative_path: PurePosixPath
    text: str


@dataclass(frozen=True, slots=True)
class SaveLog:
    """Write a logged sitting's full log beside its note (`<date>.log.md`)."""

    relative_path: PurePosixPath
    meeting_id: int
    text: str


@dataclass(frozen=True, slots=True)
class PublishNote:
    """Publish a held sitting's note to one target (a `chatbot.publish` job kind)."""

    kind: str
    sitting: Sitting


@dataclass(frozen=True, slots=True)
class QueueIssue:
    """Open a scheduled sitting's GitHub issue (the `github_issue` job)."""

    job: OpenIssue


@dataclass(frozen=True, slots=True)
class UpdateIssueBody:
    """Make a sitting's GitHub issue body show the agenda as it is now."""

    series_id: str
    meeting_id: int
    repo: str
    number: int
    body: str


@dataclass(frozen=True, slots=True)
class QueuePage:
    """Make a scheduled sitting's HackMD page (the `hackmd_note` job)."""

    job: MakePage


@dataclass(frozen=True, slots=True)
class WritePageRegions:
    """Rewrite the bot's regions of a sitting's HackMD page (the `hackmd_regions` job)."""

    series_id: str
    meeting_id: int
    note_id: str
    regions: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ReadPageBack:
    """At the close of a sitting with a HackMD page: write its regions a last time, read
    it back, and post, save and publish that as the note (the `hackmd_final` job).
    `sitting` carries the bot's own note, used when HackMD stays unreadable; the job waits
    until `not_before`, so the page is written at most once a minute."""

    sitting: Sitting
    meeting_id: int
    note_id: str
    regions: Mapping[str, str]
    path: PurePosixPath
    not_before: datetime


@dataclass(frozen=True, slots=True)
class PollEvent:
    """A poll's start or end event (`kind` is its outbox job kind); an end's reference
    to the start is added when it is sent, once the start's event id is known."""

    kind: str
    poll_id: int
    event_type: str
    content: dict[str, Any]


Effect = (React | Reply | Post | CallTurn | DirectMessage | SaveNote | SaveLog | PublishNote
          | QueueIssue | UpdateIssueBody | PollEvent | QueuePage | WritePageRegions
          | ReadPageBack)
# The issue's body follows the agenda at most this often.
ISSUE_BODY_EVERY = timedelta(minutes=1)
# Its comments are read this often, and every minute from an hour before the start.
POLL_AHEAD_EVERY = timedelta(minutes=15)
POLL_CLOSE_EVERY = timedelta(minutes=1)
POLL_CLOSE_FROM = timedelta(hours=1)
# Whom an item added on GitHub belongs to: not a Matrix id, never a chair.
GITHUB_SENDER_PREFIX = "github:"
# The event ids of agenda items listed from issues with the `agenda_label`: one per
# sitting and issue, so a poll repeated (after a restart too) never adds one twice.
GITHUB_LABEL_PREFIX = "github-label:"


def labelled_item_key(meeting_id: int, repo: str, number: int) -> EventId:
    return EventId(f"{GITHUB_LABEL_PREFIX}{meeting_id}:{repo}#{number}")


def next_poll(polled_at: datetime | None, start: datetime, opened_at: datetime) -> datetime:
    """When to read an issue's comments next: at once the first time, then every 15
    minutes ahead of the sitting, every minute from an hour before it."""
    if polled_at is None:
        return opened_at
    closing_from = elapsed(start, -POLL_CLOSE_FROM)
    if polled_at >= closing_from:
        return polled_at + POLL_CLOSE_EVERY
    return min(polled_at + POLL_AHEAD_EVERY, max(closing_from, polled_at + POLL_CLOSE_EVERY))


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
    sender: Standing  # of the person whose command asked (`resolve_target`)

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
    store: Store, rooms: Rooms, room_id: RoomId, now: datetime, sender: UserId | None = None,
) -> Target | None:
    """The room's meeting in progress, else its next scheduled one, else None; with
    `sender`'s standing in it.

    Every command asks, while its ✅ waits: the open sitting, each series' next
    occurrence and the sender's standing are looked up in one query; only an occurrence
    already held sends a series on to `upcoming`.
    """
    nexts = {series.id: next(iter(series.schedule.occurrences(ending_after=now - series.grace)),
                             None)
             for series in rooms.series_in(room_id)}
    found = await store.open_or_scheduled(
        room_id, [(series_id, occurrence.start) for series_id, occurrence in nexts.items()
                  if occurrence is not None], sender)
    if found.open is not None:
        series = rooms.series(found.open.series_id)
        if series is not None:
            return Target(series, found.open.held_at, found.open, found.standing(found.open))
    candidates = []
    for series in rooms.series_in(room_id):
        occurrence = nexts[series.id]
        if occurrence is None:
            continue
        meeting = found.scheduled.get((series.id, occurrence.start))
        standing = found.standing(meeting)
        if meeting is not None and meeting.started_at is not None:
            pending = await upcoming(store, series, now, count=1)
            if not pending:
                continue
            occurrence, meeting = pending[0]
            standing = Standing(found.profile, await store.count_own_entries(meeting.id, sender)
                                if meeting is not None and sender is not None else 0)
        candidates.append(Target(series, occurrence.start, meeting, standing))
    return min(candidates, key=lambda target: target.start, default=None)


async def materialize(store: Store, rooms: Rooms, target: Target) -> Meeting:
    """The database row for a target, created on first use."""
    if target.meeting is not None:
        return target.meeting
    return await store.ensure_scheduled(
        target.series.id, rooms.room_of_series[target.series.id], target.series.title, target.start
    )


def links_of(series: MeetingConfig) -> dict[str, str | None]:
    return series.links.by_name()


async def sitting_links(store: Store, series: MeetingConfig,
                        meeting: Meeting | None) -> dict[str, str | None]:
    """The series' links, with the sitting's own GitHub issue once it is open and its
    HackMD page once it is made."""
    links = links_of(series)
    if meeting is not None and series.publish.github is not None:
        url = await store.github_issue_url(meeting.id)
        if url is not None:
            links["issue"] = url
    if meeting is not None and series.publish.hackmd is not None:
        page = await store.hackmd_url(meeting.id)
        if page:
            links["notes"] = page
    return links


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
    log.info("meeting %s opened in %s (closes at %s)", meeting.id, meeting.room_id, closes_at,
             extra={"room_id": meeting.room_id, "meeting_id": meeting.id})
    return [Post(meeting.room_id, render_start(
        title=title, links=await sitting_links(store, series, meeting), closes_at=closes_at,
        zone=series.timezone, prefix=rooms.config.command_prefix,
        update_seconds=series.update_seconds, logged=series.log,
    ), announces=meeting.id)]


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
        prefix=rooms.config.command_prefix, update_seconds=series.update_seconds,
        logged=series.log,
    ), announces=meeting.id)]


async def sitting_name(store: Store, series: MeetingConfig, meeting: Meeting) -> str:
    """The name every trace of a sitting goes by (its note file, its GitHub issue's
    marker, its HackMD page's key, its git path and branch): `YYYY-MM-DD`, with `-2`
    and on for later sittings on the same day."""
    sittings = await store.sittings_of_series(series.id)
    if all(named.id != meeting.id for named in sittings):
        sittings.append(meeting)  # not named yet: the name it gets when it is, now
    return note_stems(series, sittings)[meeting.id]


async def note_path(store: Store, series: MeetingConfig, meeting: Meeting) -> PurePosixPath:
    """`<meeting id>/<sitting name>.md`."""
    return PurePosixPath(series.id, f"{await sitting_name(store, series, meeting)}.md")


async def compile_log(store: Store, series: MeetingConfig, meeting: Meeting) -> str:
    """A sitting's full log as markdown (also for the web pages); one without a line if
    the sitting was not logged."""
    return render_log(meeting.title, meeting.held_at, series.timezone,
                      await store.log_lines(meeting.id))


def logs_room(rooms: Rooms, room_id: RoomId) -> bool:
    """Whether any meeting in the room keeps a full log: if none does, a message that is
    no command costs no query at all."""
    return any(series.log for series in rooms.series_in(room_id))


async def logging_sitting(store: Store, rooms: Rooms, room_id: RoomId) -> Meeting | None:
    """The sitting open in the room if its meeting keeps a full log, else None."""
    if not logs_room(rooms, room_id):
        return None
    meeting = await store.open_meeting_in_room(room_id)
    series = rooms.series(meeting.series_id) if meeting is not None else None
    return meeting if series is not None and series.log else None


async def keep_in_log(store: Store, rooms: Rooms, room_id: RoomId, line: LogLine) -> bool:
    """Add a message to the log of the room's open sitting, if it keeps one; once.

    A message sent before the sitting opened is not its business, even when it is
    handed over late (a backlog fetched after a restart).
    """
    meeting = await logging_sitting(store, rooms, room_id)
    if meeting is None or meeting.started_at is None:
        return False
    if line.sent_at < meeting.started_at - LOG_CLOCK_SLACK:
        return False
    return await store.add_log_line(meeting.id, line)


async def forget_in_log(store: Store, rooms: Rooms, event_id: EventId) -> list[Effect]:
    """Honour a redaction: the message leaves the log it is in. A sitting already closed
    has its log file written again without it."""
    meeting_id = await store.forget_log_line(event_id)
    meeting = await store.get_meeting(meeting_id) if meeting_id is not None else None
    series = rooms.series(meeting.series_id) if meeting is not None else None
    if meeting is None or series is None or not meeting.is_closed:
        return []
    path = log_path_of(await note_path(store, series, meeting))
    log.info("meeting %s: redacted %s removed from its saved log %s", meeting.id, event_id,
             path, extra={"room_id": meeting.room_id, "meeting_id": meeting.id})
    return [SaveLog(path, meeting.id, await compile_log(store, series, meeting))]


async def sitting_of(store: Store, series: MeetingConfig, meeting: Meeting,
                     path: PurePosixPath, note: str) -> Sitting:
    """A held meeting as the publishing targets see it; named like its note file, with
    its GitHub issue if one was opened for it."""
    held_on = meeting.held_at.astimezone(series.timezone).date()
    issue = (await store.github_issue_ref(meeting.id) if series.publish.github is not None
             else None)
    return Sitting(series.id, meeting.title, held_on, path.stem, note, issue)


async def compile_note(store: Store, series: MeetingConfig, meeting: Meeting) -> str:
    record = await store.record(meeting)
    return render_note(record, series.timezone, await sitting_links(store, series, meeting),
                       template=series.template_source)


async def index_missing_notes(store: Store, config: Config) -> int:
    """Index the notes of closed sittings the search does not know yet (those closed
    before the index existed); how many. Each in its own short transaction."""
    indexed = await store.read.indexed_meetings()
    count = 0
    for series in config.meetings:
        for meeting in await store.read.meetings_of_series(series.id):
            if meeting.is_closed and meeting.id not in indexed:
                note = await final_note_of(store.read, series, meeting)
                async with store.transaction():
                    await store.index_note(meeting.id, series.id, note_sections(note))
                count += 1
    if count:
        log.info("indexed the notes of %s earlier sittings for search", count)
    return count


async def final_note_of(store: Store, series: MeetingConfig, meeting: Meeting) -> str:
    """The note as it went out: the HackMD page read back at the close when there was
    one, else the bot's own rendering."""
    kept = await store.hackmd_final(meeting.id)
    return kept if kept is not None else await compile_note(store, series, meeting)


async def go_to_item(
    store: Store, series: MeetingConfig, record: MeetingRecord, item: Entry | None,
    now: datetime,
) -> list[Effect]:
    """Make `item` the one under discussion (None: no item), timing the one it replaces."""
    meeting = record.meeting
    current = record.current_item
    if current is not None:
        await store.stop_item(current, now)
    await store.set_current_item(meeting.id, item.id if item is not None else None)
    if item is None:
        return []
    await store.start_item(item.id, now)
    number = record.agenda.index(item) + 1
    box = ""
    if item.minutes is not None:
        remaining = timedelta(minutes=item.minutes) - timedelta(seconds=item.took_seconds)
        until = elapsed(now, max(remaining, timedelta(0)))
        box = f" ({item.minutes} min, until {format_time(until, series.timezone)})"
    return [Post(meeting.room_id, (
        f"**Item {number} of {len(record.agenda)}:** {escape_markdown(item.text)}, "
        f"led by **{escape_markdown(item.sender_name)}**{box}"
    ))]


async def carry_over(
    store: Store, rooms: Rooms, series: MeetingConfig, record: MeetingRecord, now: datetime
) -> int:
    """Put the items the meeting did not reach on the series' next meeting; how many."""
    # Items listed from labelled issues are not carried: the next sitting lists again
    # the issues that still carry the label, and only those.
    unreached = [item for item in record.agenda if not item.visited and not item.dropped
                 and not item.event_id.startswith(GITHUB_LABEL_PREFIX)]
    if not unreached:
        return 0
    pending = await upcoming(store, series, now, count=1)
    room_id = rooms.room_of_series.get(series.id)
    if not pending or room_id is None:
        log.info("meeting %s: %s unreached items stay here; no next meeting to carry them to",
                 record.meeting.id, len(unreached))
        return 0
    occurrence, _ = pending[0]
    following = await store.ensure_scheduled(series.id, room_id, series.title, occurrence.start)
    held = format_date(record.meeting.held_at.astimezone(series.timezone))
    for item in unreached:
        await store.add_entry(
            following.id, EntryKind.AGENDA, item.sender, item.sender_name, item.text,
            item.minutes, EventId(f"{item.event_id}#carried-to-{following.id}"), now,
            carried_from=item.carried_from or held,
        )
    log.info("meeting %s: carried %s items over to meeting %s", record.meeting.id,
             len(unreached), following.id)
    return len(unreached)


async def close_meeting(
    store: Store, rooms: Rooms, series: MeetingConfig, meeting: Meeting, now: datetime
) -> list[Effect]:
    """Close an open meeting: time the last item, carry unreached ones over, post the note."""
    if not await store.mark_ended(meeting.id, now):
        return []
    # Open votes end with the meeting, their results in its note.
    ended_polls = [effect for poll in await store.open_polls_of(meeting.id)
                   for effect in await end_poll(store, poll, meeting.current_item_id, now)]
    record = await store.record(meeting)
    if record.current_item is not None:
        await store.stop_item(record.current_item, now)
    carried = await carry_over(store, rooms, series, record, now)
    closed = await store.get_meeting(meeting.id)
    assert closed is not None
    note = await compile_note(store, series, closed)
    path = await note_path(store, series, closed)
    # The search index follows the note in the same commit (and a regenerated note
    # replaces its rows the same way).
    await store.index_note(closed.id, series.id, note_sections(note))
    log.info("meeting %s closed in %s; note %s", meeting.id, meeting.room_id, path,
             extra={"room_id": meeting.room_id, "meeting_id": meeting.id})
    closing = render_closed(closed.title, f"notes/{path}")
    if carried:
        closing += (f" {carried} agenda item{'s' if carried > 1 else ''} not reached "
                    "carried over to the next meeting.")
    sitting = await sitting_of(store, series, closed, path, note)
    saved_log = ([SaveLog(log_path_of(path), closed.id, await compile_log(store, series, closed))]
                 if series.log else [])
    page = (await store.hackmd_note(meeting.id) if series.publish.hackmd is not None
            else None)
    if page is not None and page.final_text is None:
        # The note is the page as the team leaves it: posted once it is read back.
        regions = await regions_of(store, series, closed, page.regions, final=True)
        last_write = page.regions_at or now
        return [*ended_polls, Post(meeting.room_id, closing), *saved_log, ReadPageBack(
            sitting, meeting.id, page.note_id, regions, path,
            max(now, last_write + notes_page.WRITE_EVERY))]
    return [*ended_polls, Post(meeting.room_id, closing),
            *note_effects(series, meeting.room_id, path, sitting), *saved_log]


def note_effects(series: MeetingConfig, room_id: RoomId, path: PurePosixPath,
                 sitting: Sitting) -> list[Effect]:
    """What a held sitting's note goes out as: posted, saved, published to each target."""
    return [
        Post(room_id, sitting.text),
        SaveNote(path, sitting.text),
        *(PublishNote(kind, sitting) for kind in job_kinds(series.publish)),
    ]


async def end_poll(store: Store, poll: Poll, item_id: int | None,
                   now: datetime) -> list[Effect]:
    """Close a poll: count its answers, keep the result for the note under `item_id`
    (the agenda item being discussed), and post the poll's end event."""
    tally = count(poll.answers, await store.poll_ballots(poll.id), now)
    if not await store.close_poll(poll.id, now, item_id, result_line(poll.question, tally)):
        return []
    log.info("poll %s closed in %s: %s voters", poll.id, poll.room_id, tally.voters,
             extra={"room_id": poll.room_id, "meeting_id": poll.meeting_id})
    return [PollEvent(POLL_END, poll.id, END_TYPE, end_content(poll.question, tally))]


async def page_links(store: Store, series: MeetingConfig, meeting: Meeting, *,
                     final: bool = False) -> dict[str, str | None]:
    """The links the sitting's HackMD page shows: not its own while people are on it
    (nor the static one it replaces); the final note links the page."""
    links = await sitting_links(store, series, meeting)
    if not final:
        links["notes"] = None
    return links


async def regions_of(store: Store, series: MeetingConfig, meeting: Meeting,
                     previous: Mapping[str, str] | None, *,
                     final: bool = False) -> dict[str, str]:
    """The bot's regions of the sitting's HackMD page as the meeting stands now."""
    record = await store.record(meeting)
    regions = page_regions(record, series.timezone,
                           await page_links(store, series, meeting, final=final))
    return keep_removed_items(previous, regions)


# --- scheduled work -----------------------------------------------------------------


class JobKind(enum.StrEnum):
    REMINDER = "reminder"
    START = "start"
    CLOSE = "close"
    OVERRUN = "overrun"
    UPKEEP = "upkeep"  # daily: prune old bookkeeping, leave idle direct chats
    ISSUE = "issue"  # `issue_ahead` before a sitting: open its GitHub issue
    ISSUE_BODY = "issue_body"  # the agenda changed: the issue's body follows
    ISSUE_POLL = "issue_poll"  # read the issue's comments for `!agenda`
    TIME_UP = "time_up"  # the update round's current turn runs out
    NUDGE = "nudge"  # `nudge` before a sitting: regulars without an update get a message
    NOTES_PAGE = "notes_page"  # `notes_ahead` before a sitting: make its HackMD page
    NOTES_REGIONS = "notes_regions"  # entries changed: the page's regions follow


@dataclass(frozen=True, slots=True)
class Job:
    """One piece of scheduled work, with an id that is the same however often it is planned."""

    kind: JobKind
    run_at: datetime
    series_id: str
    start: datetime | None = None
    lead: timedelta | None = None
    meeting_id: int | None = None

    item_id: int | None = None
    user_id: str | None = None
    # When a job that failed may run again (its backoff); not part of its id.
    retry_at: datetime | None = None

    @property
    def due_at(self) -> datetime:
        return self.run_at if self.retry_at is None else max(self.run_at, self.retry_at)

    @property
    def id(self) -> str:
        if self.kind is JobKind.CLOSE:
            return f"close:{self.meeting_id}"
        if self.kind is JobKind.OVERRUN:
            return f"overrun:{self.item_id}:{self.run_at.isoformat()}"
        if self.kind is JobKind.TIME_UP:
            return f"time_up:{self.meeting_id}:{self.user_id}:{self.run_at.isoformat()}"
        if self.kind is JobKind.UPKEEP:
            return f"upkeep:{self.run_at.isoformat()}"
        if self.kind in (JobKind.ISSUE_BODY, JobKind.ISSUE_POLL, JobKind.NOTES_REGIONS):
            return f"{self.kind}:{self.meeting_id}"
        lead = "" if self.lead is None else f":{int(self.lead.total_seconds())}"
        assert self.start is not None
        return f"{self.kind}:{self.series_id}:{self.start.isoformat()}{lead}"


def plan_series(
    series: MeetingConfig,
    next_occurrence: Occurrence,
    decided_leads: set[int],
    owed_since: datetime,
    *, issue_queued: bool = False, page_queued: bool = False, nudged: bool = False,
) -> list[Job]:
    """The reminders and start of a series' next sitting that is not yet held, the
    opening of its GitHub issue and the making of its HackMD page unless those were
    queued already, and its nudges unless they were decided already.

    Reminders that fell due before `owed_since` (the bot's first start) are not owed.
    An issue or a page is owed whenever: a bot started within `issue_ahead` (or
    `notes_ahead`) makes it at once.
    """
    start = next_occurrence.start
    jobs = [Job(JobKind.START, start, series.id, start=start)]
    github = series.publish.github
    if github is not None and not issue_queued:
        jobs.append(Job(JobKind.ISSUE, elapsed(start, -github.issue_ahead), series.id,
                        start=start))
    if series.nudge is not None and not nudged:
        # Owed whenever: a bot started within `nudge` of the sitting nudges at once.
        jobs.append(Job(JobKind.NUDGE, elapsed(start, -series.nudge), series.id, start=start))
    hackmd = series.publish.hackmd
    if hackmd is not None and not page_queued:
        jobs.append(Job(JobKind.NOTES_PAGE, elapsed(start, -hackmd.notes_ahead), series.id,
                        start=start))
    for lead in series.reminders:
        due = elapsed(start, -lead)
        if int(lead.total_seconds()) not in decided_leads and due >= owed_since:
            jobs.append(Job(JobKind.REMINDER, due, series.id, start=start, lead=lead))
    return jobs


def plan_upkeep(last_upkeep: datetime | None, owed_since: datetime) -> Job:
    """The next daily upkeep: a day after the last one, or after the bot first ran.

    One that fell due while the bot was down runs at once when it starts.
    """
    return Job(JobKind.UPKEEP, (last_upkeep or owed_since) + UPKEEP_EVERY, series_id="")


async def plan_jobs(
    store: Store, rooms: Rooms, now: datetime, owed_since: datetime
) -> list[Job]:
    """Every job the schedule needs now, derived from the configuration and the database."""
    jobs = []
    for meeting in await store.open_meetings():
        if meeting.closes_at is not None:
            jobs.append(Job(JobKind.CLOSE, meeting.closes_at, meeting.series_id,
                            meeting_id=meeting.id))
        if meeting.current_item_id is not None:
            item = (await store.record(meeting)).current_item
            if (item is not None and item.minutes is not None and not item.overrun_noted
                    and item.item_started_at is not None):
                box_left = timedelta(minutes=item.minutes, seconds=-item.took_seconds)
                jobs.append(Job(JobKind.OVERRUN, elapsed(item.item_started_at, box_left),
                                meeting.series_id, meeting_id=meeting.id, item_id=item.id))
        series_of_meeting = rooms.series(meeting.series_id)
        update_round = await store.get_round(meeting.id)
        if series_of_meeting is not None and update_round is not None and (
                time_up := update_round.time_up_at(series_of_meeting.update_seconds)):
            jobs.append(Job(JobKind.TIME_UP, time_up, meeting.series_id,
                            meeting_id=meeting.id, user_id=update_round.current))
    for series in rooms.config.meetings:
        if series.id not in rooms.room_of_series:
            continue
        pending = await upcoming(store, series, now, count=1)
        if pending:
            occurrence, _ = pending[0]
            decided = await store.decided_reminders(series.id, occurrence.start)
            queued = page_queued = False
            if series.publish.github is not None or series.publish.hackmd is not None:
                scheduled = await store.find_scheduled(series.id, occurrence.start)
                queued = (scheduled is not None
                          and await store.github_issue_queued(scheduled.id))
                page_queued = (scheduled is not None
                               and await store.hackmd_note_queued(scheduled.id))
            nudged = (series.nudge is not None
                      and await store.nudges_decided(series.id, occurrence.start))
            jobs.extend(plan_series(series, occurrence, decided, owed_since,
                                    issue_queued=queued, page_queued=page_queued,
                                    nudged=nudged))
    for meeting_id, _, _, body, body_at in await store.open_github_issues():
        held = await store.get_meeting(meeting_id)
        issue_series = rooms.series(held.series_id) if held is not None else None
        if held is None or issue_series is None or issue_series.id not in rooms.room_of_series:
            continue
        if await issue_body_of(store, rooms, issue_series, held) != body:
            jobs.append(Job(JobKind.ISSUE_BODY, body_at + ISSUE_BODY_EVERY, issue_series.id,
                            meeting_id=meeting_id))
        polled_at, _ = await store.github_issue_poll(meeting_id)
        jobs.append(Job(JobKind.ISSUE_POLL, next_poll(polled_at, held.held_at, body_at),
                        issue_series.id, meeting_id=meeting_id))
    for page in await store.open_hackmd_notes():
        held = await store.get_meeting(page.meeting_id)
        page_series = rooms.series(held.series_id) if held is not None else None
        if (held is None or page_series is None or page_series.publish.hackmd is None
                or page_series.id not in rooms.room_of_series):
            continue
        if await regions_of(store, page_series, held, page.regions) != page.regions:
            jobs.append(Job(JobKind.NOTES_REGIONS,
                            (page.regions_at or now) + notes_page.WRITE_EVERY,
                            page_series.id, meeting_id=page.meeting_id))
    last_upkeep = await store.get_meta(LAST_UPKEEP_KEY)
    jobs.append(plan_upkeep(datetime.fromisoformat(last_upkeep) if last_upkeep else None,
                            owed_since))
    return jobs


async def run_reminder(
    store: Store, rooms: Rooms, series: MeetingConfig, start: datetime, lead: timedelta,
    now: datetime,
) -> tuple[ReminderDecision | None, list[Effect]]:
    """Send the reminder if it is still worth sending; record its fate either way, once.

    Returns the decision made now (None if it was made before, or is not due yet).
    """
    meeting = await store.find_scheduled(series.id, start)
    started = meeting is not None and meeting.started_at is not None
    decision = decide_reminder(start, lead, series.reminders, now, started=started)
    if decision is ReminderDecision.NOT_YET:
        return None, []
    lead_seconds = int(lead.total_seconds())
    if not await store.record_reminder(series.id, start, lead_seconds, decision.value, now):
        return None, []
    if decision is not ReminderDecision.SEND:
        log.info("reminder %s before %s of %s not sent: %s", lead, start, series.id,
                 decision.value)
        return decision, []
    agenda: Sequence = ()
    if meeting is not None:
        agenda = (await store.record(meeting)).agenda
    room_id = rooms.room_of_series[series.id]
    log.info("reminder %s before %s of %s sent to %s", lead, start, series.id, room_id,
             extra={"room_id": room_id})
    return decision, [Post(room_id, render_reminder(
        title=series.title, start=start, zone=series.timezone, now=now,
        links=await sitting_links(store, series, meeting), agenda=agenda,
        prefix=rooms.config.command_prefix,
    ))]


async def issue_body_of(store: Store, rooms: Rooms, series: MeetingConfig,
                        meeting: Meeting) -> str:
    """The body of a sitting's GitHub issue, with its agenda as it is now (and its
    HackMD page as its notes link, once made)."""
    start = meeting.held_at
    agenda = (await store.record(meeting)).agenda
    links = await sitting_links(store, series, meeting)
    body = issue_body(title=series.title, start=start, zone=series.timezone,
                      duration=series.duration, links=links, agenda=agenda,
                      room=series.room, prefix=rooms.config.command_prefix,
                      closed_by_pull_request=series.publish.git is not None
                      and series.publish.git.pull_request)
    # The marker in the body as queued: a body update is then one write, no read first.
    marker = sitting_marker(series.id, await sitting_name(store, series, meeting))
    return f"{body.rstrip()}\n\n{marker}\n"


async def run_issue_body(store: Store, rooms: Rooms, meeting_id: int,
                         now: datetime) -> list[Effect]:
    """Queue the issue's new body if the agenda changed and a minute has passed since
    the last; record it as the body last queued."""
    for found_id, repo, number, body, body_at in await store.open_github_issues():
        if found_id != meeting_id:
            continue
        meeting = await store.get_meeting(meeting_id)
        series = rooms.series(meeting.series_id) if meeting is not None else None
        if meeting is None or series is None or now < body_at + ISSUE_BODY_EVERY:
            return []
        new = await issue_body_of(store, rooms, series, meeting)
        if new == body:
            return []
        await store.set_github_issue_body(meeting_id, new, now)
        return [UpdateIssueBody(series.id, meeting_id, repo, number, new)]
    return []


async def take_issue_comments(
    store: Store, rooms: Rooms, meeting_id: int,
    items: Sequence[tuple[Comment, str, int | None]], now: datetime,
) -> int:
    """Add each `!agenda` comment (with the topic and estimate parsed from it) as an item
    owned by its GitHub author, once (keyed by the comment's id); how many were added.
    The room's agenda limit applies."""
    meeting = await store.get_meeting(meeting_id)
    if meeting is None or meeting.ended_at is not None:
        return 0
    added = 0
    for comment, text, minutes in items:
        event_id = EventId(f"github-comment:{comment.id}")
        if await store.entry_by_event(event_id) is not None:
            continue
        if await store.count_agenda(meeting_id) >= rooms.config.limits.agenda_items:
            log.info("agenda of meeting %s full: GitHub comment %s not added", meeting_id,
                     comment.html_url)
            continue
        await store.add_entry(meeting_id, EntryKind.AGENDA,
                              UserId(f"{GITHUB_SENDER_PREFIX}{comment.author}"),
                              f"{comment.author} (GitHub)", text, minutes, event_id, now)
        added += 1
    if added:
        log.info("meeting %s: %s agenda items added from GitHub comments", meeting_id, added,
                 extra={"room_id": meeting.room_id, "meeting_id": meeting_id})
    return added


async def take_labelled_issues(
    store: Store, rooms: Rooms, meeting_id: int, own_number: int | None,
    issues: Sequence[Issue], now: datetime,
) -> tuple[int, int]:
    """Make the sitting's agenda list the open issues and pull requests that carry its
    `agenda_label` (`issues`, a whole fresh listing), each as an item owned by its GitHub
    author and linking to it; how many were added and removed.

    Until the sitting starts the agenda follows the label: an issue that lost it, or was
    closed, drops off, and a new title is taken. Once it has started, issues labelled
    meanwhile are still added but none is taken away: the chairs run that agenda now.
    The sitting's own issue is never an item. The room's agenda limit applies.
    """
    meeting = await store.get_meeting(meeting_id)
    if meeting is None or meeting.ended_at is not None:
        return 0, 0
    # In the order they were filed, whatever order GitHub listed them in.
    wanted = {labelled_item_key(meeting_id, issue.repo, issue.number): issue
              for issue in sorted(issues, key=lambda issue: issue.number)
              if issue.number != own_number and issue.state == "open"}
    listed = {item.event_id: item for item in (await store.record(meeting)).agenda
              if item.event_id.startswith(f"{GITHUB_LABEL_PREFIX}{meeting_id}:")}
    added = removed = 0
    if meeting.started_at is None:
        for key, item in listed.items():
            issue = wanted.get(key)
            if issue is None:
                await store.delete_entry(item.id)
                removed += 1
            elif item.text != labelled_item_text(issue):
                await store.update_entry(item.id, labelled_item_text(issue), item.minutes,
                                         item.assignee)
    for key, issue in wanted.items():
        if key in listed:
            continue
        if await store.count_agenda(meeting_id) >= rooms.config.limits.agenda_items:
            log.info("agenda of meeting %s full: labelled %s not added", meeting_id,
                     issue.html_url)
            continue
        await store.add_entry(meeting_id, EntryKind.AGENDA,
                              UserId(f"{GITHUB_SENDER_PREFIX}{issue.author}"),
                              f"{issue.author} (GitHub)", labelled_item_text(issue), None,
                              key, now)
        added += 1
    if added or removed:
        log.info("meeting %s: %s labelled issues added to the agenda, %s dropped off",
                 meeting_id, added, removed,
                 extra={"room_id": meeting.room_id, "meeting_id": meeting_id})
    return added, removed


def labelled_item_text(issue: Issue) -> str:
    """A labelled issue as an agenda item: its title and its link. The text is escaped
    wherever it is shown like any chat text; the link becomes an autolink there."""
    return f"{issue.title} {issue.html_url}"


async def run_issue(
    store: Store, rooms: Rooms, series: MeetingConfig, start: datetime, now: datetime
) -> list[Effect]:
    """Queue the opening of a scheduled sitting's GitHub issue, once, unless the sitting
    is already over; the body shows the agenda as it stands now."""
    github = series.publish.github
    if github is None or now >= elapsed(start, series.duration + series.grace):
        return []
    room_id = rooms.room_of_series[series.id]
    meeting = await store.ensure_scheduled(series.id, room_id, series.title, start)
    body = await issue_body_of(store, rooms, series, meeting)
    if not await store.queue_github_issue(meeting.id, now, body):
        return []
    day = start.astimezone(series.timezone).date()
    log.info("opening the GitHub issue of %s at %s in %s", series.id, start, github.repo,
             extra={"room_id": room_id, "meeting_id": meeting.id})
    # The issue cannot be older than this job: listing stops there (a minute of slack
    # for GitHub's clock).
    return [QueueIssue(OpenIssue(series.id, meeting.id,
                                 await sitting_name(store, series, meeting),
                                 issue_title(github, series.id, series.title, day), body,
                                 now - timedelta(minutes=1)))]


async def run_notes_page(
    store: Store, rooms: Rooms, series: MeetingConfig, start: datetime, now: datetime
) -> list[Effect]:
    """Queue the making of a scheduled sitting's HackMD page, once, unless the sitting
    is already over; the page shows the meeting as it stands now."""
    if series.publish.hackmd is None or now >= elapsed(start, series.duration + series.grace):
        return []
    room_id = rooms.room_of_series[series.id]
    meeting = await store.ensure_scheduled(series.id, room_id, series.title, start)
    if meeting.started_at is not None or not await store.queue_hackmd_note(meeting.id, now):
        return []
    record = await store.record(meeting)
    links = await page_links(store, series, meeting)
    day = start.astimezone(series.timezone).date()
    log.info("making the HackMD page of %s at %s", series.id, start,
             extra={"room_id": room_id, "meeting_id": meeting.id})
    return [QueuePage(MakePage(
        series.id, meeting.id, await sitting_name(store, series, meeting),
        f"{series.title}: {day.isoformat()}",
        page_content(record, series.timezone, links, series.template_source),
        page_regions(record, series.timezone, links)))]


async def run_notes_regions(store: Store, rooms: Rooms, meeting_id: int,
                            now: datetime) -> list[Effect]:
    """Queue a write of the page's regions if they changed and a minute has passed since
    the last; record them as the regions last queued."""
    page = await store.hackmd_note(meeting_id)
    meeting = await store.get_meeting(meeting_id)
    series = rooms.series(meeting.series_id) if meeting is not None else None
    if (page is None or meeting is None or series is None or meeting.ended_at is not None
            or page.final_text is not None):
        return []
    if page.regions_at is not None and now < page.regions_at + notes_page.WRITE_EVERY:
        return []
    regions = await regions_of(store, series, meeting, page.regions)
    if regions == page.regions:
        return []
    await store.set_hackmd_regions(meeting_id, regions, now)
    return [WritePageRegions(series.id, meeting_id, page.note_id, regions)]


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


async def run_overrun(
    store: Store, meeting_id: int, item_id: int, now: datetime
) -> list[Effect]:
    """Say once, briefly, that the item under discussion has run past its time box."""
    meeting = await store.get_meeting(meeting_id)
    if meeting is None or not meeting.is_open or meeting.current_item_id != item_id:
        return []
    record = await store.record(meeting)
    item = record.current_item
    if item is None or item.minutes is None or item.item_started_at is None:
        return []
    spent = item.took_seconds + (now - item.item_started_at).total_seconds()
    if spent < item.minutes * 60 or not await store.mark_overrun_noted(item.id):
        return []
    return [Post(meeting.room_id, (
        f"⏱ Item {record.agenda.index(item) + 1}, {escape_markdown(item.text)}, is past "
        f"its {item.minutes} min time box."
    ))]


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
    return await close_meeting(store, rooms, series, meeting, now)

