"""The bot's core loop: a message or a due job in, effects recorded, the outbox drained.

Knows nothing of nio or APScheduler: the Matrix edge hands it `IncomingMessage`s and
sends what it queues through a `Transport`; the scheduler edge runs its `Job`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeGuard

from chatbot.archive import note_sections
from chatbot.commands import (
    Context,
    Invocation,
    NoArguments,
    Unknown,
    UsageError,
    chairs_are,
    handle_help,
    parse_agenda_item,
    parse_invocation,
    pills_as_ids,
    strip_reply_fallback,
)
from chatbot.limits import Decision, FloodGate, Verdict, slow_down_text
from chatbot.meetings import (
    CallTurn,
    DirectMessage,
    Effect,
    Job,
    JobKind,
    PollEvent,
    Post,
    PublishNote,
    QueueIssue,
    QueuePage,
    React,
    ReadPageBack,
    Reply,
    Rooms,
    SaveLog,
    SaveNote,
    UpdateIssueBody,
    WritePageRegions,
    compile_log,
    end_poll,
    forget_in_log,
    keep_in_log,
    logging_sitting,
    logs_room,
    note_effects,
    plan_jobs,
    resolve_target,
    run_close,
    run_issue,
    run_issue_body,
    run_notes_page,
    run_notes_regions,
    run_overrun,
    run_reminder,
    run_start,
    take_issue_comments,
    take_labelled_issues,
)
from chatbot.metrics import Metrics
from chatbot.model import Entry, EventId, LogLine, Meeting, Pill, RoomId, UserId, utc_now
from chatbot.nudges import DIRECT_COMMANDS, direct_target, run_nudges
from chatbot.polls import POLL_END, refer_to
from chatbot.power import CHAIR_LEVEL
from chatbot.publish import (
    GITHUB_ISSUE,
    GITHUB_ISSUE_BODY,
    HACKMD_FINAL,
    HACKMD_NOTE,
    HACKMD_REGIONS,
    PUBLISH_KINDS,
    TARGET_KINDS,
    PublishFailed,
    Sitting,
    Target,
)
from chatbot.publish.github import Comment, Issue, Polled
from chatbot.publish.issue import GitHubIssues, OpenIssue
from chatbot.publish.notes_page import FINAL_WAIT, HackMDPages, MakePage
from chatbot.recurrence import ReminderDecision, format_duration
from chatbot.render import (
    escape_markdown,
    message_parts,
    render_when_line,
    roll_call_profile,
)
from chatbot.retry import backoff_delay
from chatbot.rounds import resume_rounds, run_time_up
from chatbot.store import OutboxItem, Store, is_storage_full
from chatbot.upkeep import LEAVE, hand_back_free_memory, run_upkeep

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
OWED_SINCE_KEY = "first_started_at"


def direct_intent_key(user_id: UserId) -> str:
    """The `meta` key saying a direct chat with the person is being opened."""
    return f"opening_direct:{user_id}"


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A text message from a person in a configured room, or an edit of one.

    An edit carries the id of the message it `replaces` and its new body.
    """

    room_id: RoomId
    event_id: EventId
    sender: UserId
    display_name: str
    body: str
    thread_root: EventId | None = None
    replaces: EventId | None = None
    # When the sender's homeserver says it was sent (None: unknown). The intake replaces
    # it with the time the core may pace commands by; `server_time` stays as it was.
    sent_at: datetime | None = None
    server_time: datetime | None = None
    # The people mentioned as pills, in the order they appear in the message.
    pills: tuple[Pill, ...] = ()


@dataclass(frozen=True, slots=True)
class IncomingChat:
    """Any other message in a meeting room: the bot's own, a notice, an emote, a file.

    No command comes from it; a sitting that keeps a full log keeps it (or the edit of
    a message it `replaces`).
    """

    room_id: RoomId
    event_id: EventId
    sender: UserId
    display_name: str
    body: str
    server_time: datetime | None = None
    replaces: EventId | None = None


@dataclass(frozen=True, slots=True)
class IncomingRedaction:
    """Someone removed an event (a command message, or a reaction)."""

    room_id: RoomId
    event_id: EventId
    sender: UserId
    redacts: EventId


@dataclass(frozen=True, slots=True)
class IncomingReaction:
    room_id: RoomId
    event_id: EventId
    sender: UserId
    display_name: str
    target: EventId
    key: str


@dataclass(frozen=True, slots=True)
class IncomingPollResponse:
    """An answer to a poll, from a client's poll (either event form).

    `answer` is the first selection (None: an empty one); `sent_at` as for messages.
    """

    room_id: RoomId
    event_id: EventId
    sender: UserId
    poll_start: EventId
    answer: str | None
    sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IncomingPollEnd:
    """Someone ended a poll from their client (either event form)."""

    room_id: RoomId
    event_id: EventId
    sender: UserId
    poll_start: EventId
    sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IncomingDeparture:
    """Someone left the room, or was removed from it (`user_id`: who)."""

    room_id: RoomId
    event_id: EventId
    user_id: UserId


Incoming = (IncomingMessage | IncomingRedaction | IncomingReaction | IncomingChat
            | IncomingPollResponse | IncomingPollEnd | IncomingDeparture)
# Raised hands on a start announcement count as `!here`; skin tones and gendered
# variants start with the same code point.
HAND_RAISES = frozenset({"\u270b", "\U0001f64b"})


class DeliveryError(Exception):
    """Sending failed. `permanent` means retrying the same request cannot succeed;
    `retry_at`, that the other side asked not to be tried again before then (a rate
    limit): the retry waits for the later of it and the job's own backoff."""

    def __init__(self, message: str, *, permanent: bool,
                 retry_at: datetime | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_at = retry_at


class HomeserverUnavailable(Exception):
    """The homeserver stayed unreachable (or answered only transient errors) for as
    long as the caller could wait. Nothing was consumed: hand the event over again later."""


class Transport(Protocol):
    async def deliver(self, item: OutboxItem) -> str:
        """Send one outbox item; return the event id or raise DeliveryError."""

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        """The user's power level in the room; raises HomeserverUnavailable rather
        than guess one."""

    async def leave(self, room_id: RoomId) -> None:
        """Leave the room and forget it; a room the bot is not in is already left.
        Raises DeliveryError."""

    async def event_time(self, room_id: RoomId, event_id: str) -> datetime:
        """The homeserver's timestamp of an event the bot sent; raises DeliveryError."""

    async def open_direct(self, user_id: UserId) -> RoomId:
        """Open a direct chat with a person (invited, flagged direct); raises DeliveryError."""

    async def find_direct(self, user_id: UserId) -> RoomId | None:
        """A direct chat with the person that `open_direct` made before and the bot did
        not get to record; None if there is none. Raises DeliveryError."""


# Enough concurrent sends to hide one request's round trip behind others, few enough
# that a burst does not trip the homeserver's rate limits all at once.
MAX_SENDS_IN_FLIGHT = 4
# One pass of the outbox runner reads at most this many jobs, this many of one room.
OUTBOX_READ, OUTBOX_PER_ROOM = 50, 10
# Outbox job kinds that are not a place in a room's timeline: each runs on its own.
NOTE_FILE = "note_file"
LOG_FILE = "log_file"
# A turn's line in the update round: a message, whose server time starts the turn's clock.
ROUND_TURN = "round_turn"
# The jobs that are messages in a meeting's room, as a full log keeps them.
LOGGED_KINDS = frozenset({"reply", "post", ROUND_TURN})
# A message to one person, in their direct chat with the bot; queued under their user id
# (the chat may not exist yet), one lane each.
DIRECT = "direct"
INDEPENDENT_KINDS = frozenset({"react", NOTE_FILE, LOG_FILE, DIRECT}) | PUBLISH_KINDS
# How many commands answered "storage is full" are remembered, so that a sync batch
# handled again after a failed save does not answer them twice.
STORAGE_FULL_MEMORY = 1000

Carrier = Callable[[OutboxItem], Awaitable[str]]
_NOTES_FOLDER_HINT = ("Whoever runs this bot: check that its notes folder is writable (a file "
                      "in the way, a read-only volume or a full disk). I will keep trying.")


class Failure(enum.Enum):
    """How far a job's failure has gone, for telling the chairs."""

    RETRYING = "retrying"  # the first failure; backing off
    PARKED = "parked"  # failed for `jobs.park_after`; no longer tried
    REFUSED = "refused"  # failed for good at once (a permanent DeliveryError)


class Admission(enum.Enum):
    """What the flood check made of a command."""

    CHARGED = "charged"  # took a token; given back if the claim finds it handled before
    REPLAY = "replay"  # handled before (the database said so): the claim turns it away
    REFUSED = "refused"  # too fast: claimed and maybe answered "slow down"


# What to tell the chairs in the room about a failing job, or None to stay quiet.
ChairsNotice = Callable[[OutboxItem, str, Failure], str | None]


def delivery_lanes(items: Sequence[OutboxItem]) -> list[list[OutboxItem]]:
    """Split queued jobs into lanes that may run side by side.

    Each room's messages form one lane, kept in queue order (a note posted in parts,
    a reminder then the start). Each reaction is a lane of its own: a ✅ belongs to
    its command's event, not to a place in the room's timeline; so is each note file.
    Lanes come in the order of `items`, which the store interleaves between rooms.
    """
    lanes: list[list[OutboxItem]] = []
    messages_of: dict[RoomId, list[OutboxItem]] = {}
    for item in items:
        if item.kind in INDEPENDENT_KINDS:
            lanes.append([item])
        elif item.room_id in messages_of:
            messages_of[item.room_id].append(item)
        else:
            messages_of[item.room_id] = lane = [item]
            lanes.append(lane)
    return lanes


def _recorded_fields(command: object, entry: Entry) -> tuple[str, int | None, str | None]:
    """What an edited command changes in the entry it recorded: text, estimate, assignee."""
    text = getattr(command, "text", entry.text)
    minutes = getattr(command, "minutes", entry.minutes)
    assignee = getattr(command, "assignee", None) or entry.assignee
    return text, minutes, assignee


@dataclass(frozen=True, slots=True)
class IssuePoll:
    """What one poll of a sitting's GitHub issue found: its comments and the labelled
    issues (None where not read), the issue's number, and the time GitHub asked not to be
    called before, if a read was refused for its rate limit."""

    comments: Polled[Comment] | None = None
    labelled: Polled[Issue] | None = None
    number: int | None = None
    retry_at: datetime | None = None


@contextlib.contextmanager
def publish_failures_as_delivery_errors() -> Iterator[None]:
    """A target's failure as the outbox runner knows failures: retried or given up."""
    try:
        yield
    except PublishFailed as error:
        raise DeliveryError(str(error), permanent=error.permanent,
                            retry_at=error.retry_at) from error


def _reply_payload(text: str, html: str, in_reply_to: EventId | None,
                   thread_root: EventId | None) -> dict[str, Any]:
    return {"text": text, "html": html, "thread_root": thread_root, "in_reply_to": in_reply_to}


def _answers(invocation: Invocation | Unknown | None) -> TypeGuard[Invocation | Unknown]:
    """Whether a message is a command the bot answers: a known one, or a close misspelling.
    Other unknown commands belong to other bots in the room."""
    return isinstance(invocation, Invocation) or (
        isinstance(invocation, Unknown) and invocation.suggestion is not None)


class MeetingBot:
    """Turns messages and due jobs into recorded state and queued replies."""

    def __init__(
        self, rooms: Rooms, store: Store, notes_dir: Path, transport: Transport,
        *, clock: Clock = utc_now,
        on_schedule_change: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None, targets: Sequence[Target] = (),
        own_name: Callable[[RoomId], str] | None = None,
    ) -> None:
        self.rooms = rooms
        self.store = store
        self.notes_dir = notes_dir
        self.transport = transport
        self.clock = clock
        self.on_schedule_change = on_schedule_change
        self.metrics = metrics or Metrics(clock)
        # The bot's name in a room, for the full log's lines of its own messages (without
        # a Matrix edge to ask, its user id's localpart, as the edge falls back to).
        localpart = rooms.config.matrix.user_id.removeprefix("@").split(":", 1)[0]
        self.own_name = own_name or (lambda room_id: localpart)
        self.jobs = rooms.config.jobs
        self._outbox_ready = asyncio.Event()
        # While the outbox runner knows every job the queue holds (`_wake_outbox`), the
        # jobs handed to it since its last pass: it runs them without reading the queue.
        self._knows_queue = False
        self._handed: list[OutboxItem] = []
        # One interface for every kind of job: Matrix events go through the transport.
        self._carriers: dict[str, Carrier] = {NOTE_FILE: self._save_note_file,
                                              LOG_FILE: self._save_log_file,
                                              LEAVE: self._leave_room,
                                              ROUND_TURN: self._call_turn,
                                              DIRECT: self._send_direct}
        self._chairs_notices: dict[str, ChairsNotice] = {NOTE_FILE: self._note_file_notice,
                                                         LOG_FILE: self._log_file_notice}
        self._targets = {target.kind: target for target in targets}
        # Every kind that publishes a note, configured or not: a job queued before its
        # target was taken out of the config must fail here, never reach the transport.
        for kind in set(TARGET_KINDS.values()) | self._targets.keys():
            self._carriers[kind] = self._publish
            self._chairs_notices[kind] = self._publish_notice
        # The GitHub issue's own jobs carry no note (their payloads are not a Sitting).
        self._issues = next((target for target in targets
                             if isinstance(target, GitHubIssues)), None)
        self._carriers[GITHUB_ISSUE] = self._open_issue
        self._chairs_notices[GITHUB_ISSUE] = self._issue_notice
        self._carriers[POLL_END] = self._end_poll
        # Not told when it fails: the agenda's next change writes the body again.
        self._carriers[GITHUB_ISSUE_BODY] = self._update_issue_body
        # The HackMD page's jobs: made ahead, regions rewritten, read back at the close.
        self._pages = next((target for target in targets
                            if isinstance(target, HackMDPages)), None)
        self._carriers[HACKMD_NOTE] = self._make_page
        self._chairs_notices[HACKMD_NOTE] = self._page_notice
        # Not told when it fails: the next change writes again, and the close tells.
        self._carriers[HACKMD_REGIONS] = self._write_page_regions
        self._chairs_notices[HACKMD_REGIONS] = lambda item, error, failure: None
        # Never fails for good: past FINAL_WAIT the note is the bot's own (and told).
        self._carriers[HACKMD_FINAL] = self._read_page_back
        self._chairs_notices[HACKMD_FINAL] = lambda item, error, failure: None
        # Scheduled jobs that failed: how often in a row, and when to try again.
        self._job_failures: dict[str, tuple[int, datetime]] = {}
        self._told_storage_full: OrderedDict[EventId, None] = OrderedDict()
        limits = rooms.config.limits
        self._flood_gate = FloodGate(limits.commands, limits.per)

    # --- what happens in the room --------------------------------------------------

    async def handle(self, event: Incoming) -> None:
        """Handle one event once, however often it is delivered.

        Raises only HomeserverUnavailable (a chair check could not be made): the event
        is then left unclaimed, for the caller to hand over again later.
        """
        if not self.rooms.is_configured(event.room_id):
            return
        try:
            match event:
                case IncomingMessage(replaces=None):
                    await self._handle_message(event)
                case IncomingMessage():
                    await self._handle_edit(event)
                case IncomingRedaction():
                    await self._handle_redaction(event)
                case IncomingReaction():
                    await self._handle_reaction(event)
                case IncomingChat():
                    await self._log_alone(event)
                case IncomingPollResponse():
                    await self._handle_poll_response(event)
                case IncomingPollEnd():
                    await self._handle_poll_end(event)
                case IncomingDeparture():
                    await self._handle_departure(event)
        except HomeserverUnavailable:
            raise
        except Exception as error:
            self.metrics.error("message")
            if is_storage_full(error):
                log.error("cannot record %s in %s: the database is full",
                          event.event_id, event.room_id,
                          extra={"room_id": event.room_id, "event_id": event.event_id})
                if isinstance(event, IncomingMessage):
                    await self._say_storage_full(event)
                return
            log.exception("failed to handle %s in %s", event.event_id, event.room_id,
                          extra={"room_id": event.room_id, "event_id": event.event_id})
            if isinstance(event, IncomingMessage):
                await self._apologise(event)

    async def handle_direct(self, message: IncomingMessage) -> None:
        """A direct chat: a quick update or pass there counts for the sender's next
        meeting (`nudges.direct_target`), `nudge off|on` sets their nudges; anything
        else gets help."""
        if message.replaces is not None:
            return
        try:
            admission = await self._admit(message)
            if admission is Admission.REFUSED:
                return
            invocation = parse_invocation(strip_reply_fallback(message.body),
                                          self.rooms.config.command_prefix)
            async with self.store.transaction():
                now = self.clock()
                if not await self.store.claim_event(message.event_id, message.room_id, now,
                                                    message.sender):
                    self._unadmit(message, admission)
                    return
                await self.store.touch_direct_room(message.room_id, now, message.sender)
                effects = await self._direct_effects(message, invocation, now)
                await self._record(effects, message.room_id, message.event_id, now)
            self._after(effects)
        except Exception:
            log.exception("failed to answer %s in direct chat %s", message.event_id,
                          message.room_id)

    async def _direct_effects(self, message: IncomingMessage,
                              invocation: Invocation | Unknown | None,
                              now: datetime) -> list[Effect]:
        context = Context(self.rooms, message.room_id, message.sender, message.display_name,
                          message.event_id, now)
        prefix = context.prefix
        if isinstance(invocation, Invocation) and invocation.spec.name == "nudge":
            return await self._dispatch(invocation, context)
        if isinstance(invocation, Invocation) and invocation.spec.name in DIRECT_COMMANDS:
            target = await direct_target(self.store, self.rooms, message.sender, now)
            if target is None:
                return [Reply(
                    "You are not a regular of a meeting I run yet (on the roll call of "
                    "2 of its last 4 sittings), so I cannot tell which meeting this is "
                    "for: please post it in the meeting's room.")]
            context = replace(context, room_id=self.rooms.room_of_series[target.series.id])
            effects = await self._dispatch(invocation, context)
            if any(isinstance(effect, React) for effect in effects):
                when = render_when_line(target.series.title, target.start,
                                        target.series.timezone)
                effects.append(Reply(f"Noted for {when}."))
            return effects
        rooms = ", ".join(sorted({series.room for series in self.rooms.config.meetings}))
        (help_reply,) = await handle_help(NoArguments(), context, self.store)
        assert isinstance(help_reply, Reply)
        return [Reply(
            f"I run team meetings in {escape_markdown(rooms)}; commands work there. Here, "
            f"`{prefix}update text` and `{prefix}pass` count for your next meeting, and "
            f"`{prefix}nudge off` stops my reminders to post one.\n\n{help_reply.text}")]

    async def cannot_read(self, room_id: RoomId, sender: UserId, display_name: str,
                          event_ids: Sequence[EventId]) -> None:
        """Say once that messages from `sender` could not be decrypted, so none is lost
        silently: the sender can send it again. Marks them answered in the same commit."""
        if not event_ids:
            return
        count = "a message" if len(event_ids) == 1 else f"{len(event_ids)} messages"
        async with self.store.transaction():
            now = self.clock()
            await self.store.mark_undecrypted_answered(event_ids, now)
            if not self.rooms.is_configured(room_id):
                return  # a direct chat: commands do nothing there, so nothing was lost
            await self._record([Reply(
                f"I could not read {count} from {escape_markdown(display_name)}: the "
                "encryption key never reached me. If it was a command, please send it again.")],
                room_id, event_ids[-1], now)
        self._wake_outbox()

    async def _context(self, message: IncomingMessage, invocation: Invocation | Unknown,
                       event_id: EventId) -> Context:
        is_chair = False
        if isinstance(invocation, Invocation) and (
                invocation.spec.chair_only or invocation.spec.chair_aware):
            is_chair = await self._is_chair(message.room_id, message.sender)
        return Context(self.rooms, message.room_id, message.sender, message.display_name,
                       event_id, self.clock(), is_chair)

    async def _handle_message(self, message: IncomingMessage) -> None:
        prefix = self.rooms.config.command_prefix
        invocation = parse_invocation(strip_reply_fallback(message.body), prefix)
        if not _answers(invocation):
            await self._log_alone(message)
            return
        admission = await self._admit(message)
        if admission is Admission.REFUSED:
            await self._log_alone(message)
            return
        context = await self._context(message, invocation, message.event_id)
        async with self.store.transaction():
            # Before the command runs: an `!endmeeting` closes the log it belongs in.
            await self._log_message(message, context.now)
            if not await self.store.claim_event(message.event_id, message.room_id, context.now,
                                                message.sender):
                self._unadmit(message, admission)
                log.debug("%s in %s was handled before", message.event_id, message.room_id)
                return
            effects = await self._dispatch(invocation, context, message.pills)
            queued = await self._record(effects, message.room_id, message.event_id,
                                        context.now, thread_root=message.thread_root)
        name = invocation.spec.name if isinstance(invocation, Invocation) else "unknown"
        self.metrics.command_handled(name, message.event_id)  # before the ✅: its own time
        # Handed over at once: after the commit (in the same step of the event loop, so
        # before the runner can read the queue again); then the runner gets its turn, so
        # the ✅ is on its way before the logging and the rest of the sync.
        self._after(effects, queued)
        await asyncio.sleep(0)
        log.info("handled %s (%s) from %s in %s", message.event_id, name, message.sender,
                 message.room_id, extra={"room_id": message.room_id,
                                         "event_id": message.event_id})

    async def _handle_edit(self, edit: IncomingMessage) -> None:
        """Make what an edited command recorded match its new text."""
        assert edit.replaces is not None
        original = edit.replaces
        invocation = parse_invocation(strip_reply_fallback(edit.body),
                                      self.rooms.config.command_prefix)
        editable = (invocation if isinstance(invocation, Invocation)
                    and invocation.spec.editable else None)
        admission = await self._admit(edit) if _answers(invocation) else None
        if admission is Admission.REFUSED:
            await self._log_alone(edit)
            return
        context = await self._context(edit, editable or Unknown("", None), original)
        async with self.store.transaction():
            await self._log_message(edit, context.now)
            if not await self.store.claim_event(edit.event_id, edit.room_id, context.now,
                                                edit.sender):
                self._unadmit(edit, admission)
                return
            if await self.store.sender_of(original) != edit.sender:
                # Only the author's edits of a command the bot handled count (the Matrix
                # rule for m.replace); a crafted edit can point at anyone's message.
                return
            product = await self.store.entry_by_event(original)
            entry = product[1] if product is not None else None
            effects: list[Effect] = []
            if editable is not None:
                try:
                    command = editable.spec.parse(editable.arguments)
                except UsageError as error:
                    effects = [Reply(f"Sorry, I kept the message as it was: {error}. "
                                     f"{editable.spec.usage(context.prefix)}")]
                else:
                    if (entry is not None and entry.kind is editable.spec.entry_kind
                            and entry.pass_reason is editable.spec.pass_reason):
                        text, minutes, assignee = _recorded_fields(command, entry)
                        await self.store.update_entry(entry.id, text, minutes, assignee)
                    else:
                        if entry is not None:
                            await self.store.delete_entry(entry.id)
                        if editable.spec.name != "here":
                            await self.store.withdraw_attendance(original)
                        effects = await self._dispatch(editable, context)
            else:
                if entry is not None:
                    await self.store.delete_entry(entry.id)
                await self.store.withdraw_attendance(original)
            await self._record(effects, edit.room_id, original, context.now,
                               thread_root=edit.thread_root)
        log.info("applied edit %s of %s in %s", edit.event_id, original, edit.room_id,
                 extra={"room_id": edit.room_id, "event_id": edit.event_id})
        self._after(effects)

    async def _admit(self, message: IncomingMessage) -> Admission:
        """Take a command from the sender's bucket, or refuse it (REFUSED: it must not run).

        Checked before anything costly (a power-level lookup) happens. A replay takes
        no token: while the bucket has one, the command takes it without asking the
        database (a trip while the ✅ waits), and the claim gives it back when it finds
        the command handled before (`_unadmit`); a command the bucket would refuse is
        first looked up, so a replay is never refused either. A refused command is
        claimed all the same, so it is never answered later, and only the first
        refusal of a flood is answered, with when to go on.
        """
        now = self.clock()
        # Paced by when commands were sent, so a backlog handled at once after an outage
        # or a restart is not taken for a flood. Never later than now, and the bucket
        # never runs backwards, so a forged time cannot earn more than real time does.
        sent_at = min(now, message.sent_at or now)
        key = (message.room_id, message.sender)
        if not self._flood_gate.would_allow(key, sent_at) and (
                await self.store.read.sender_of(message.event_id) is not None):
            return Admission.REPLAY  # the claim turns it away
        decision = self._flood_gate.take(key, sent_at)
        if decision.allowed:
            return Admission.CHARGED
        await self._refuse_flood(message, decision, now)
        return Admission.REFUSED

    def _unadmit(self, message: IncomingMessage, admission: Admission | None) -> None:
        """The claim found `message` handled before: the token it took goes back."""
        if admission is Admission.CHARGED:
            self._flood_gate.give_back((message.room_id, message.sender))

    async def _refuse_flood(self, message: IncomingMessage, decision: Decision,
                            now: datetime) -> None:
        assert decision.resume_at is not None
        async with self.store.transaction():
            if not await self.store.claim_event(message.event_id, message.room_id, now,
                                                message.sender):
                return
            if decision.verdict is Verdict.SLOW_DOWN:
                limits = self.rooms.config.limits
                await self._record(
                    [Reply(slow_down_text(limits.commands, limits.per, decision.resume_at, now))],
                    message.room_id, message.event_id, now, thread_root=message.thread_root)
        self.metrics.command_throttled()
        ids = {"room_id": message.room_id, "event_id": message.event_id}
        if decision.verdict is Verdict.SLOW_DOWN:
            self._wake_outbox()
            log.info("%s sends commands too fast in %s; told to slow down until %s",
                     message.sender, message.room_id, decision.resume_at.isoformat(), extra=ids)
        else:
            log.debug("ignored %s from %s in %s: still too fast", message.event_id,
                      message.sender, message.room_id, extra=ids)

    async def _handle_redaction(self, redaction: IncomingRedaction) -> None:
        now = self.clock()
        async with self.store.transaction():
            if not await self.store.claim_event(redaction.event_id, redaction.room_id, now,
                                                redaction.sender):
                return
            product = await self.store.entry_by_event(redaction.redacts)
            if product is not None:
                await self.store.delete_entry(product[1].id)
            withdrawn = await self.store.withdraw_attendance(redaction.redacts)
            withdrawn = await self.store.withdraw_poll_response(redaction.redacts) or withdrawn
            rewrite = await forget_in_log(self.store, self.rooms, redaction.redacts)
            await self._record(rewrite, redaction.room_id, None, now)
        if rewrite:
            self._wake_outbox()
        if product is not None or withdrawn:
            log.info("%s redacted %s in %s; its record is removed", redaction.sender,
                     redaction.redacts, redaction.room_id)

    async def _log_message(self, message: IncomingMessage | IncomingChat,
                           now: datetime) -> None:
        """Keep a message (or apply an edit of one) in the full log of the room's open
        sitting, if it keeps one; in the caller's transaction, once however often the
        message is handed over (the log is keyed by its event id)."""
        if not logs_room(self.rooms, message.room_id):
            return
        said_at = message.server_time or now
        body = strip_reply_fallback(message.body)
        if message.replaces is not None:
            await self.store.edit_log_line(message.replaces, message.sender, body, said_at)
        else:
            await keep_in_log(self.store, self.rooms, message.room_id, LogLine(
                message.event_id, message.sender, message.display_name, said_at, body))

    async def _log_alone(self, message: IncomingMessage | IncomingChat) -> None:
        """`_log_message` for a message that is no command the bot runs: its own commit.

        Asked first through the read-only connection, so chat in a logged meeting's room
        between sittings takes no write lock.
        """
        if await logging_sitting(self.store.read, self.rooms, message.room_id) is not None:
            async with self.store.transaction():
                await self._log_message(message, self.clock())

    async def _handle_reaction(self, reaction: IncomingReaction) -> None:
        if not reaction.key or reaction.key[0] not in HAND_RAISES:
            return
        now = self.clock()
        async with self.store.transaction():
            if not await self.store.claim_event(reaction.event_id, reaction.room_id, now,
                                                reaction.sender):
                return
            meeting = await self.store.meeting_announced_by(reaction.target)
            if meeting is None or not meeting.is_open:
                return
            profile = roll_call_profile(await self.store.get_profile(reaction.sender),
                                        reaction.display_name, reaction.sender)
            await self.store.add_attendee(meeting.id, reaction.sender, profile,
                                          reaction.event_id, now, reaction=True)
        log.info("%s joined the roll call of meeting %s with a reaction", reaction.sender,
                 meeting.id)

    async def _handle_poll_response(self, response: IncomingPollResponse) -> None:
        """Keep an answer to one of the bot's open polls; the count comes at the close.
        Answers to other polls, and answers that come after the close, are not kept."""
        ids = {"room_id": response.room_id, "event_id": response.event_id}
        async with self.store.transaction():
            now = self.clock()
            poll = await self.store.poll_started_by(response.poll_start)
            if poll is None or poll.room_id != response.room_id:
                return
            if poll.closed_at is not None:
                log.info("%s answered poll %s after its close; not counted", response.sender,
                         poll.id, extra=ids)
                return
            kept = await self.store.add_poll_response(
                poll.id, response.event_id, response.sender, response.answer,
                min(now, response.sent_at or now))
        if kept:
            log.info("%s answered poll %s", response.sender, poll.id, extra=ids)

    async def _handle_poll_end(self, end: IncomingPollEnd) -> None:
        """A poll ended from a client closes the bot's count as `!vote close` would, at
        the end event's time; only its asker or a chair may (MSC3381 lets the poll's
        sender, the bot, or those who may redact others' messages end it)."""
        poll = await self.store.read.poll_started_by(end.poll_start)
        if poll is None or poll.room_id != end.room_id or poll.closed_at is not None:
            return
        ids = {"room_id": end.room_id, "event_id": end.event_id}
        if end.sender != poll.asker and not await self._is_chair(end.room_id, end.sender):
            log.info("%s may not end poll %s; ignored", end.sender, poll.id, extra=ids)
            return
        async with self.store.transaction():
            now = self.clock()
            meeting = await self.store.get_meeting(poll.meeting_id)
            item_id = meeting.current_item_id if meeting is not None else None
            effects = await end_poll(self.store, poll, item_id, min(now, end.sent_at or now))
            await self._record(effects, end.room_id, None, now)
        log.info("%s ended poll %s from their client", end.sender, poll.id, extra=ids)
        self._after(effects)

    async def _handle_departure(self, departure: IncomingDeparture) -> None:
        """Answers from people no longer in the room do not count in its open poll."""
        async with self.store.transaction():
            withdrawn = await self.store.withdraw_poll_answers_of(departure.room_id,
                                                                  departure.user_id)
        if withdrawn:
            log.info("%s left %s; their answer to the open poll no longer counts",
                     departure.user_id, departure.room_id,
                     extra={"room_id": departure.room_id, "event_id": departure.event_id})

    async def follow_upgrade(self, old_room_id: RoomId, new_room_id: RoomId) -> None:
        """A configured room was upgraded: its meetings, past and future, move along."""
        async with self.store.transaction():
            await self.store.record_upgrade(old_room_id, new_room_id, self.clock())
        moved = {series: (new_room_id if room == old_room_id else room)
                 for series, room in self.rooms.room_of_series.items()}
        self.rooms = Rooms(self.rooms.config, moved)
        log.info("room %s was upgraded to %s; following it", old_room_id, new_room_id)
        self.on_schedule_change()

    def _after(self, effects: Sequence[Effect],
               queued: Sequence[OutboxItem] | None = None) -> None:
        """What follows a handled event's commit: its jobs (`queued`, when the caller has
        them) handed to the outbox runner, and the schedule planned again if the event
        may have changed it."""
        self._wake_outbox(queued)
        # Opening, closing and moving between items are what post to the room, and
        # they are also what changes the schedule.
        # With GitHub issues or HackMD pages, any command may change what they show.
        if (self._issues is not None or self._pages is not None
                or any(isinstance(effect, Post | CallTurn) for effect in effects)):
            self.on_schedule_change()

    def _wake_outbox(self, queued: Sequence[OutboxItem] | None = None) -> None:
        """Tell the outbox runner that jobs were committed to the queue.

        `queued` are all the jobs that were: while the runner knows every job the queue
        holds, it runs them as handed, without a trip to the database while a ✅ waits.
        None (jobs queued elsewhere, a retry) makes the runner read the queue.
        """
        if queued is None or not self._knows_queue:
            self._knows_queue = False
            self._handed.clear()
        else:
            self._handed.extend(queued)
        self._outbox_ready.set()

    async def _dispatch(self, invocation: Invocation | Unknown, context: Context,
                        pills: Sequence[Pill] = ()) -> list[Effect]:
        prefix = context.prefix
        if isinstance(invocation, Unknown):
            # Inline code cannot escape a backtick, so the name loses any it has.
            name = invocation.name.replace("`", "")
            return [Reply(f"Unknown command `{prefix}{name}`. "
                          f"Did you mean `{prefix}{invocation.suggestion}`? "
                          f"`{prefix}help` lists them all.")]
        spec = invocation.spec
        if spec.chair_only and not context.is_chair:
            return [Reply(f"Only chairs can use `{prefix}{spec.name}`: {chairs_are(prefix)}.")]
        arguments = invocation.arguments
        if spec.takes_people:
            arguments = pills_as_ids(arguments, pills)
        try:
            command = spec.parse(arguments)
            return await spec.handle(command, context, self.store)
        except UsageError as error:
            return [Reply(f"Sorry, {error}. {spec.usage(prefix)}")]

    async def _is_chair(self, room_id: RoomId, user_id: UserId) -> bool:
        if any(user_id in series.chairs for series in self.rooms.series_in(room_id)):
            return True
        reader = self.store.read
        target = await resolve_target(reader, self.rooms, room_id, self.clock())
        if target is not None and target.meeting is not None and (
                await reader.is_meeting_chair(target.meeting.id, user_id)):
            return True
        return await self.transport.power_level(room_id, user_id) >= CHAIR_LEVEL

    async def _say_storage_full(self, message: IncomingMessage) -> None:
        """Tell the sender their command was not kept. Sent directly, not queued: the
        outbox lives in the database that is full. Nothing is claimed, so nothing of
        the command is half-recorded; each command is answered once per run."""
        if message.event_id in self._told_storage_full:
            return
        self._told_storage_full[message.event_id] = None
        while len(self._told_storage_full) > STORAGE_FULL_MEMORY:
            self._told_storage_full.popitem(last=False)
        text = ("Sorry, I could not record that: my storage is full, so nothing of it was "
                "kept. Please send it again later, and tell whoever runs this bot.")
        (part,) = message_parts(text)
        item = OutboxItem(0, message.room_id, "reply", _reply_payload(
            part.text, part.html, message.event_id, message.thread_root), self.clock())
        try:
            await self.transport.deliver(item)
        except Exception as error:  # best effort: the log already says what happened
            log.warning("could not tell %s that storage is full: %s", message.sender, error)

    async def _apologise(self, message: IncomingMessage) -> None:
        try:
            async with self.store.transaction():
                now = self.clock()
                if not await self.store.claim_event(message.event_id, message.room_id, now,
                                                    message.sender):
                    return  # handled before (a replay): it was answered then
                await self._record(
                    [Reply("Sorry, something went wrong with that command. It is logged; "
                           "please tell whoever runs this bot.")],
                    message.room_id, message.event_id, now, thread_root=message.thread_root,
                )
            self._wake_outbox()
        except Exception:
            log.exception("could not record the apology for %s", message.event_id)

    # --- effects -----------------------------------------------------------------

    async def _record(
        self, effects: Sequence[Effect], room_id: RoomId, event_id: EventId | None,
        now: datetime, *, thread_root: EventId | None = None,
    ) -> list[OutboxItem]:
        """Queue messages in the outbox and write notes, inside the caller's transaction;
        the jobs queued (for `_after`, once the transaction has committed)."""
        queued: list[OutboxItem] = []
        logging: dict[RoomId, Meeting | None] = {}

        async def enqueue(room: RoomId, kind: str, payload: dict[str, Any], now: datetime,
                          *, not_before: datetime | None = None) -> None:
            if kind in LOGGED_KINDS and logs_room(self.rooms, room):
                # The sync leaves the bot's own messages out: one sent during a logged
                # sitting goes in its log when it is marked sent (`Store.mark_sent`).
                if room not in logging:
                    logging[room] = await logging_sitting(self.store, self.rooms, room)
                if (sitting := logging[room]) is not None:
                    payload["log_in"] = {"meeting_id": sitting.id,
                                         "sender": self.rooms.config.matrix.user_id,
                                         "name": self.own_name(room)}
            queued.append(await self.store.enqueue(room, kind, payload, now,
                                                   not_before=not_before))

        for effect in effects:
            match effect:
                case React(key):
                    assert event_id is not None
                    await enqueue(room_id, "react", {"event_id": event_id, "key": key}, now)
                case Reply(text):
                    for number, part in enumerate(message_parts(text)):
                        await enqueue(room_id, "reply", _reply_payload(
                            part.text, part.html, event_id if number == 0 else None,
                            thread_root), now)
                case Post(post_room, text, announces):
                    # A big meeting's note is posted in parts; the first is the announcement.
                    for number, part in enumerate(message_parts(text)):
                        await enqueue(post_room, "post", {
                            "text": part.text, "html": part.html,
                            "announces": announces if number == 0 else None,
                        }, now)
                case CallTurn(turn_room, text, meeting_id, user_id, mention):
                    (part,) = message_parts(text)  # one line: never split
                    await enqueue(turn_room, ROUND_TURN, {
                        "text": part.text, "html": part.html,
                        "mentions": [mention] if mention is not None else [],
                        "meeting_id": meeting_id, "user_id": user_id,
                    }, now)
                case DirectMessage(user_id, text):
                    (part,) = message_parts(text)
                    await enqueue(RoomId(user_id), DIRECT, {
                        "user_id": user_id, "text": part.text, "html": part.html}, now)
                case SaveNote(relative_path, text):
                    # A job like any message: written after the close commits, retried
                    # if the disk refuses, never holding the close itself back.
                    await enqueue(room_id, NOTE_FILE, {
                        "path": relative_path.as_posix(), "text": text}, now)
                case SaveLog(relative_path, meeting_id, text):
                    await enqueue(room_id, LOG_FILE, {
                        "path": relative_path.as_posix(), "meeting_id": meeting_id,
                        "text": text}, now)
                case PublishNote(kind, sitting):
                    await enqueue(room_id, kind, sitting.payload(), now)
                case QueueIssue(job):
                    await enqueue(room_id, GITHUB_ISSUE, job.payload(), now)
                case PollEvent(kind, poll_id, event_type, content):
                    await enqueue(room_id, kind, {
                        "poll_id": poll_id, "type": event_type, "content": content}, now)
                case UpdateIssueBody(series_id, meeting_id, repo, number, body):
                    await enqueue(room_id, GITHUB_ISSUE_BODY, {
                        "series": series_id, "meeting_id": meeting_id, "repo": repo,
                        "number": number, "body": body}, now)
                case QueuePage(page_job):
                    await enqueue(room_id, HACKMD_NOTE, page_job.payload(), now)
                case WritePageRegions(series_id, meeting_id, note_id, regions):
                    await enqueue(room_id, HACKMD_REGIONS, {
                        "series": series_id, "meeting_id": meeting_id, "note_id": note_id,
                        "regions": dict(regions)}, now)
                case ReadPageBack(sitting, meeting_id, note_id, regions, path, not_before):
                    await enqueue(room_id, HACKMD_FINAL, {
                        "sitting": sitting.payload(), "meeting_id": meeting_id,
                        "note_id": note_id, "regions": dict(regions),
                        "path": path.as_posix()}, now, not_before=not_before)
        return queued

    async def _call_turn(self, item: OutboxItem) -> str:
        """Post a turn's line, then start the turn's clock at the homeserver's time of it,
        so the time-up is counted from when the room saw the line."""
        event_id = await self.transport.deliver(item)
        try:
            sent_at = await self.transport.event_time(item.room_id, event_id)
        except DeliveryError as error:
            # Later than the server's time, never earlier: the turn is not cut short.
            sent_at = self.clock()
            log.warning("no server time for turn %s in %s (%s); counting from now",
                        event_id, item.room_id, error, extra={"room_id": item.room_id})
        payload = item.payload
        async with self.store.transaction():
            started = await self.store.start_turn_clock(
                payload["meeting_id"], UserId(payload["user_id"]), sent_at)
        if started:
            self.on_schedule_change()
        return event_id

    async def _send_direct(self, item: OutboxItem) -> str:
        """Send a message to a person in their direct chat with the bot, opening one if
        there is none. Opening is idempotent: the intent is recorded first, so a retry
        after a crash (or a lost answer) between creating the room and recording it
        finds that room instead of opening a second one."""
        user_id = UserId(item.payload["user_id"])
        room_id = await self.store.read.direct_room_of(user_id)
        if room_id is not None:
            return await self.transport.deliver(replace(item, room_id=room_id))
        intent = direct_intent_key(user_id)
        if await self.store.read.get_meta(intent) is not None:
            room_id = await self.transport.find_direct(user_id)
            if room_id is not None:
                log.info("found direct chat %s with %s, opened before a restart", room_id,
                         user_id, extra={"room_id": room_id})
        if room_id is None:
            async with self.store.transaction():
                await self.store.set_meta(intent, self.clock().isoformat())
            room_id = await self.transport.open_direct(user_id)
            log.info("opened direct chat %s with %s", room_id, user_id,
                     extra={"room_id": room_id})
        async with self.store.transaction():
            await self.store.touch_direct_room(room_id, self.clock(), user_id)
            await self.store.delete_meta(intent)
        return await self.transport.deliver(replace(item, room_id=room_id))

    async def resume(self) -> None:
        """At start: each update round's current turn gets its time again."""
        async with self.store.transaction():
            now = self.clock()
            effects = await resume_rounds(self.store, self.rooms, now)
            for effect in effects:
                assert isinstance(effect, CallTurn)
                await self._record([effect], effect.room_id, None, now)
        if effects:
            self._wake_outbox()

    async def _save_note_file(self, item: OutboxItem) -> str:
        relative_path = item.payload["path"]
        try:
            await asyncio.to_thread(self._write_note, relative_path, item.payload["text"])
        except OSError as error:
            raise DeliveryError(f"cannot write notes/{relative_path} "
                                f"({error.strerror or error})", permanent=False) from error
        except ValueError as error:  # a path outside the notes folder: never retried
            raise DeliveryError(str(error), permanent=True) from error
        return relative_path

    async def _save_log_file(self, item: OutboxItem) -> str:
        """Write a sitting's log as it reads now: a log job retried late must not bring
        back a line redacted since (a later job rewrites the file without it)."""
        meeting = await self.store.read.get_meeting(item.payload["meeting_id"])
        series = self.rooms.series(meeting.series_id) if meeting is not None else None
        if meeting is not None and series is not None:
            text = await compile_log(self.store.read, series, meeting)
            item = replace(item, payload={**item.payload, "text": text})
        return await self._save_note_file(item)

    async def _publish(self, item: OutboxItem) -> str:
        target = self._targets.get(item.kind)
        if target is None:
            raise DeliveryError(f"{item.kind} is no longer in the config's `publish:`",
                                permanent=True)
        with publish_failures_as_delivery_errors():
            return await target.publish(Sitting.from_payload(item.payload))

    async def _open_issue(self, item: OutboxItem) -> str:
        """Open a sitting's GitHub issue (or find it again) and remember its link."""
        job = OpenIssue.from_payload(item.payload)
        with publish_failures_as_delivery_errors():
            issue = await self._github_issues().open_issue(job)
        async with self.store.transaction():
            await self.store.set_github_issue(job.meeting_id, issue.repo, issue.number,
                                              issue.html_url, self.clock())
        log.info("the GitHub issue of meeting %s is %s", job.meeting_id, issue.html_url,
                 extra={"room_id": item.room_id, "meeting_id": job.meeting_id})
        # Its polls and body updates are planned from the stored number: plan them now,
        # not at whatever change comes next.
        self.on_schedule_change()
        return issue.html_url

    async def _poll_issue(self, meeting_id: int) -> IssuePoll:
        """The issue's comments, and the issues with the meeting's `agenda_label`, each
        where it changed since the last poll. A read that fails is logged and left to the
        next poll, which waits for the time GitHub named, if it named one."""
        issue = next((row for row in await self.store.read.open_github_issues()
                      if row[0] == meeting_id), None)
        meeting = await self.store.read.get_meeting(meeting_id)
        if issue is None or meeting is None or self._issues is None:
            return IssuePoll()
        _, repo, number, _, _ = issue
        _, comments_etag = await self.store.read.github_issue_poll(meeting_id)
        labels_etag = await self.store.read.github_labels_etag(meeting_id)
        comments = labelled = None
        try:
            comments = await self._issues.comments(meeting.series_id, repo, number,
                                                   comments_etag)
            if self._issues.agenda_label(meeting.series_id) is not None:
                labelled = await self._issues.labelled(meeting.series_id, labels_etag)
        except PublishFailed as error:
            log.warning("could not poll %s#%s for agenda items: %s", repo, number, error,
                        extra={"room_id": meeting.room_id, "meeting_id": meeting_id})
            return IssuePoll(comments, labelled, number, error.retry_at)
        return IssuePoll(comments, labelled, number)

    async def _take_poll(self, meeting_id: int, poll: IssuePoll, now: datetime) -> None:
        """Record a poll: its time and ETags, the `!agenda` comments and the labelled
        issues it found."""
        _, etag = await self.store.github_issue_poll(meeting_id)
        polled = poll.comments
        if polled is not None and polled.changed:
            prefix = self.rooms.config.command_prefix
            items = [(comment, item.text, item.minutes) for comment in polled.items
                     if (item := parse_agenda_item(comment.body, prefix)) is not None]
            await take_issue_comments(self.store, self.rooms, meeting_id, items, now)
            etag = polled.etag
        await self.store.set_github_issue_poll(meeting_id, now, etag)
        if poll.labelled is not None and poll.labelled.changed:
            await take_labelled_issues(self.store, self.rooms, meeting_id, poll.number,
                                       poll.labelled.items, now)
            await self.store.set_github_labels_etag(meeting_id, poll.labelled.etag)

    async def _update_issue_body(self, item: OutboxItem) -> str:
        """Write the issue's body, unless a newer one was queued since (body jobs run
        side by side, and an older one retried late must not undo a newer one)."""
        payload = item.payload
        if await self.store.read.github_issue_body(payload["meeting_id"]) != payload["body"]:
            return "superseded"
        with publish_failures_as_delivery_errors():
            return await self._github_issues().update_body(
                payload["series"], payload["repo"], payload["number"], payload["body"])

    def _github_issues(self) -> GitHubIssues:
        if self._issues is None:
            raise DeliveryError("`publish.github` is no longer in the config", permanent=True)
        return self._issues

    async def _end_poll(self, item: OutboxItem) -> str:
        """Send a poll's end event, referring to its start. The start was queued before
        it in the same room's lane, so it has been sent, unless it failed for good."""
        poll = await self.store.read.get_poll(item.payload["poll_id"])
        if poll is None or poll.start_event_id is None:
            raise DeliveryError("the poll's start was never sent", permanent=True)
        payload = item.payload | {"content": refer_to(item.payload["content"],
                                                      poll.start_event_id)}
        return await self.transport.deliver(replace(item, payload=payload))

    # --- the HackMD page ---------------------------------------------------------------

    def _hackmd_pages(self) -> HackMDPages:
        if self._pages is None:
            raise DeliveryError("`publish.hackmd` is no longer in the config", permanent=True)
        return self._pages

    def _count_hackmd_calls(self) -> None:
        if self._pages is not None:
            self.metrics.hackmd_calls(self._pages.calls_made, self._pages.calls_left)

    async def _make_page(self, item: OutboxItem) -> str:
        """Make a sitting's HackMD page (or find it again) and remember it and its link."""
        job = MakePage.from_payload(item.payload)
        meeting = await self.store.read.get_meeting(job.meeting_id)
        if meeting is None or meeting.ended_at is not None:
            return "the sitting is over"
        if (page := await self.store.read.hackmd_note(job.meeting_id)) is not None:
            return page.url
        try:
            with publish_failures_as_delivery_errors():
                made = await self._hackmd_pages().make(job)
        finally:
            self._count_hackmd_calls()
        async with self.store.transaction():
            await self.store.set_hackmd_note(job.meeting_id, made.note_id, made.url,
                                             sorted(made.placed), job.regions, self.clock())
        log.info("the HackMD page of meeting %s is %s", job.meeting_id, made.url,
                 extra={"room_id": item.room_id, "meeting_id": job.meeting_id})
        # Its regions may have changed since the job was queued: plan their write.
        self.on_schedule_change()
        return made.url

    async def _write_page_regions(self, item: OutboxItem) -> str:
        """Rewrite the page's regions, unless newer ones were queued since (an older job
        retried late must not undo a newer one) or the meeting closed meanwhile (the
        close's read-back writes them)."""
        payload = item.payload
        page = await self.store.read.hackmd_note(payload["meeting_id"])
        if page is None or page.regions != payload["regions"] or page.final_text is not None:
            return "superseded"
        meeting = await self.store.read.get_meeting(page.meeting_id)
        if meeting is None or meeting.ended_at is not None:
            return "superseded"
        try:
            with publish_failures_as_delivery_errors():
                placed = await self._hackmd_pages().write(
                    payload["series"], payload["note_id"], payload["regions"], page.placed)
        finally:
            self._count_hackmd_calls()
        if placed != page.placed:
            async with self.store.transaction():
                await self.store.set_hackmd_placed(page.meeting_id, placed)
        return payload["note_id"]

    async def _read_page_back(self, item: OutboxItem) -> str:
        """Read the page back at the close, and queue the note that is that page: posted,
        saved and published, in the transaction that keeps it. HackMD unreadable past
        FINAL_WAIT, or refusing for good: the note is the bot's own, and the chairs are
        told."""
        payload = item.payload
        meeting_id = payload["meeting_id"]
        sitting = Sitting.from_payload(payload["sitting"])
        page = await self.store.read.hackmd_note(meeting_id)
        if page is None or page.final_text is not None:
            return "kept before"
        source, notice = "page", None
        try:
            try:
                text = await self._hackmd_pages().read_back(
                    sitting.series_id, payload["note_id"], payload["regions"], page.placed)
            finally:
                self._count_hackmd_calls()
        except (PublishFailed, DeliveryError) as error:
            waited = self.clock() - item.created_at
            # Well before the outbox would park the job: the note must go out.
            if not error.permanent and waited < min(FINAL_WAIT, self.jobs.park_after / 2):
                raise DeliveryError(str(error), permanent=False,
                                    retry_at=getattr(error, "retry_at", None)) from error
            log.error("could not read the HackMD page of meeting %s back: %s; the note is "
                      "the bot's own", meeting_id, error,
                      extra={"room_id": item.room_id, "meeting_id": meeting_id})
            text, source = sitting.text, "bot"
            notice = (f"**Chairs:** I could not read the meeting's HackMD page back "
                      f"({escape_markdown(str(error))}), so the note below is my own record "
                      "of the meeting, without what was typed on the page. The page "
                      "itself is unchanged.")
        series = self.rooms.series(sitting.series_id)
        async with self.store.transaction():
            now = self.clock()
            if not await self.store.set_hackmd_final(meeting_id, text, source):
                return "kept before"
            # The search finds the note as it went out, the page's bullets included.
            await self.store.index_note(meeting_id, sitting.series_id, note_sections(text))
            final = replace(sitting, text=text)
            effects: list[Effect] = [Post(item.room_id, notice)] if notice else []
            if series is not None:
                effects += note_effects(series, item.room_id, PurePosixPath(payload["path"]),
                                        final)
            await self._record(effects, item.room_id, None, now)
        self._wake_outbox()
        log.info("the note of meeting %s is %s", meeting_id,
                 "the HackMD page read back" if source == "page" else "the bot's own",
                 extra={"room_id": item.room_id, "meeting_id": meeting_id})
        return source

    def _page_notice(self, item: OutboxItem, error: str, failure: Failure) -> str | None:
        """Told once, when making the page failed for good or for too long."""
        if failure is Failure.RETRYING:
            return None
        job = MakePage.from_payload(item.payload)
        where = escape_markdown(self._pages.label(job.series_id)
                                if self._pages is not None else "HackMD")
        return (f"**Chairs:** I could not make the notes page of the meeting on {job.name} "
                f"on {where}: {escape_markdown(error)}. The meeting goes ahead without it, "
                "and its note is my own record, as without HackMD.")

    async def _leave_room(self, item: OutboxItem) -> str:
        """Leave an idle direct chat; never a meeting room, nor a chat used since the
        leave was queued (someone wrote in it meanwhile)."""
        room_id = item.room_id
        if self.rooms.is_configured(room_id):
            log.warning("not leaving %s: it is a meeting room", room_id,
                        extra={"room_id": room_id})
            return ""
        last_used = await self.store.read.direct_room_last_used(room_id)
        if last_used is not None and last_used >= item.created_at:
            log.info("not leaving direct chat %s: used again since", room_id,
                     extra={"room_id": room_id})
            return ""
        await self.transport.leave(room_id)
        async with self.store.transaction():
            await self.store.forget_known_room(room_id)
        self.metrics.left_direct_chat()
        log.info("left direct chat %s: nobody used it for %s", room_id,
                 self.rooms.config.retention.direct_chats, extra={"room_id": room_id})
        return ""

    def _write_note(self, relative_path: str, text: str) -> None:
        # The path is built from the configured meeting id and a date, never from
        # chat text; the check keeps it that way.
        path = (self.notes_dir / relative_path).resolve()
        if not path.is_relative_to(self.notes_dir.resolve()):
            raise ValueError(f"note path {relative_path!r} leaves the notes folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".md.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
        log.info("note saved to %s", path)

    # --- jobs ----------------------------------------------------------------------

    async def owed_since(self) -> datetime:
        """When the bot first ran: reminders due before then were never owed."""
        stored = await self.store.read.get_meta(OWED_SINCE_KEY)
        if stored is not None:
            return datetime.fromisoformat(stored)
        now = self.clock()
        async with self.store.transaction():
            await self.store.set_meta(OWED_SINCE_KEY, now.isoformat())
        return now

    async def plan(self) -> list[Job]:
        """The jobs the schedule needs now; also refreshes the open-meetings gauge.

        A job that failed waits out its backoff (`retry_at`) instead of running again
        at once: its time is past, and the scheduler runs a past job immediately.
        """
        reader = self.store.read
        self.metrics.set_meetings_open(len(await reader.open_meetings()))
        jobs = await plan_jobs(reader, self.rooms, self.clock(), await self.owed_since())
        return [replace(job, retry_at=self._job_failures[job.id][1])
                if job.id in self._job_failures else job for job in jobs]

    async def run_job(self, job: Job) -> None:
        """Carry out a due job. Never raises: a failure is logged and retried with backoff."""
        try:
            now = self.clock()
            if job.kind is JobKind.UPKEEP:
                await self._upkeep(now)
                self._job_failures.pop(job.id, None)
                return
            # Polling the issue is the one job that talks to another service itself:
            # a read changes nothing there, and what it finds is recorded below.
            poll = (await self._poll_issue(job.meeting_id)
                    if job.kind is JobKind.ISSUE_POLL and job.meeting_id is not None
                    else IssuePoll())
            async with self.store.transaction():
                effects: list[Effect] = []
                series = self.rooms.series(job.series_id)
                if job.kind is JobKind.CLOSE and job.meeting_id is not None:
                    effects = await run_close(self.store, self.rooms, job.meeting_id, now)
                elif job.kind is JobKind.ISSUE_POLL and job.meeting_id is not None:
                    await self._take_poll(job.meeting_id, poll, now)
                elif job.kind is JobKind.ISSUE_BODY and job.meeting_id is not None:
                    effects = await run_issue_body(self.store, self.rooms, job.meeting_id, now)
                elif job.kind is JobKind.TIME_UP and job.meeting_id and job.user_id:
                    effects = await run_time_up(self.store, self.rooms, job.meeting_id,
                                                UserId(job.user_id), now)
                elif job.kind is JobKind.NOTES_REGIONS and job.meeting_id is not None:
                    effects = await run_notes_regions(self.store, self.rooms, job.meeting_id,
                                                      now)
                elif job.kind is JobKind.OVERRUN and job.meeting_id and job.item_id:
                    effects = await run_overrun(self.store, job.meeting_id, job.item_id, now)
                elif series is not None and job.start is not None:
                    if job.kind is JobKind.ISSUE:
                        effects = await run_issue(self.store, self.rooms, series, job.start,
                                                  now)
                    elif job.kind is JobKind.NUDGE:
                        effects = await run_nudges(self.store, self.rooms, series, job.start,
                                                   now)
                    elif job.kind is JobKind.NOTES_PAGE:
                        effects = await run_notes_page(self.store, self.rooms, series,
                                                       job.start, now)
                    elif job.kind is JobKind.START:
                        effects = await run_start(self.store, self.rooms, series, job.start, now)
                    elif job.lead is not None:
                        decision, effects = await run_reminder(
                            self.store, self.rooms, series, job.start, job.lead, now)
                        if decision is not None:
                            self.metrics.reminder(
                                "sent" if decision is ReminderDecision.SEND else "missed")
                room_id = self.rooms.room_of_series.get(job.series_id)
                if room_id is not None:
                    await self._record(effects, room_id, None, now)
            if poll.retry_at is not None:
                # GitHub named a time: the next poll waits for it, however soon it is due.
                self._job_failures[job.id] = (1, poll.retry_at)
            else:
                self._job_failures.pop(job.id, None)
            self._wake_outbox()
        except Exception as error:
            self.metrics.error("job")
            failures = self._job_failures.get(job.id, (0, now))[0] + 1
            delay = backoff_delay(failures, cap=self.jobs.retry_cap.total_seconds())
            self._job_failures[job.id] = (failures, now + timedelta(seconds=delay))
            if failures == 1:
                log.exception("scheduled job %s failed; retrying with backoff up to %s",
                              job.id, self.jobs.retry_cap)
            else:
                log.warning("scheduled job %s failed again (%s attempts): %s", job.id,
                            failures, error)
        finally:
            self.on_schedule_change()

    async def _upkeep(self, now: datetime) -> None:
        done = await run_upkeep(self.store, self.rooms, self.rooms.config.retention, now)
        pruned = done.pruned
        self.metrics.pruned(events=pruned.events, jobs=pruned.jobs,
                            undecrypted=pruned.undecrypted)
        log.info("upkeep: pruned %s handled events (from before %s), %s finished jobs and "
                 "%s undecryptable messages; leaving %s idle direct chats", pruned.events,
                 done.keys_before.isoformat(timespec="seconds"), pruned.jobs,
                 pruned.undecrypted, len(done.leaving))
        hand_back_free_memory()
        if done.leaving:
            self._wake_outbox()

    # --- the outbox: every job, carried out after the commit that queued it --------------------

    async def deliver_forever(self) -> None:
        """Run queued jobs as they become due, until cancelled.

        Messages to a room go one at a time, in order; reactions and note files are
        independent, so they go alongside, a few at once. A job that fails waits out
        its own backoff (kept in the database, so a restart keeps it too), and holds
        back only the messages queued after it in the same room. When nothing is due,
        this waits for a new job or the next retry: it never spins.
        """
        in_flight = asyncio.Semaphore(MAX_SENDS_IN_FLIGHT)
        while True:
            self._outbox_ready.clear()
            if self._knows_queue:
                handed, self._handed = self._handed, []
                progressed, next_due, settled = await self._run_jobs(handed, in_flight)
            else:
                progressed, next_due, settled = await self._deliver_pass(in_flight)
            # The queue is known again once a pass has run all it saw, none failed, none
            # waits for later, and nothing was queued meanwhile but jobs handed over.
            self._knows_queue = (settled and next_due is None
                                 and (self._knows_queue or not self._outbox_ready.is_set()))
            # A pass that saw the whole queue and ran it without a failure leaves nothing
            # to read again: a job queued since then set `_outbox_ready` (it was cleared
            # before the read), so reading the queue once more (a database trip after
            # every ✅) would only find it empty.
            if progressed and not (settled and not self._outbox_ready.is_set()):
                continue
            timeout = (max(0.0, (next_due - self.clock()).total_seconds())
                       if next_due is not None else None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox_ready.wait(), timeout)

    async def deliver_due(
        self, in_flight: asyncio.Semaphore | None = None,
    ) -> tuple[bool, datetime | None]:
        """One pass over the queue: run every job that is due, lanes side by side.

        Returns whether any job was tried, and when the earliest waiting job falls due
        (None: nothing waits on a retry).
        """
        # It reads the queue, so what was handed to the runner is run here, not again there.
        self._knows_queue = False
        self._handed.clear()
        progressed, next_due, _ = await self._deliver_pass(
            in_flight or asyncio.Semaphore(MAX_SENDS_IN_FLIGHT))
        return progressed, next_due

    async def _deliver_pass(
        self, in_flight: asyncio.Semaphore,
    ) -> tuple[bool, datetime | None, bool]:
        """`deliver_due`, and whether the pass settled the queue as read: it saw every
        waiting job (fewer than any of the read's limits) and none failed."""
        items = await self.store.read.pending_outbox(limit=OUTBOX_READ, per_room=OUTBOX_PER_ROOM)
        progressed, next_due, settled = await self._run_jobs(items, in_flight)
        return progressed, next_due, settled and len(items) < OUTBOX_PER_ROOM

    async def _run_jobs(
        self, items: Sequence[OutboxItem], in_flight: asyncio.Semaphore,
    ) -> tuple[bool, datetime | None, bool]:
        """Run `items` in their lanes, side by side: whether any job was tried, when the
        earliest waiting one falls due, and whether none failed."""
        lanes = delivery_lanes(items)
        # One lane (a command's ✅) runs in this task: a task of its own would wait a
        # turn of the event loop to start.
        outcomes = ([await self._run_lane(lanes[0], in_flight)] if len(lanes) == 1 else
                    await asyncio.gather(*(self._run_lane(lane, in_flight) for lane in lanes)))
        waits = [due for _, due, _ in outcomes if due is not None]
        return (any(progressed for progressed, _, _ in outcomes), min(waits, default=None),
                not any(failed for _, _, failed in outcomes))

    async def _run_lane(
        self, lane: Sequence[OutboxItem], in_flight: asyncio.Semaphore,
    ) -> tuple[bool, datetime | None, bool]:
        """Run a lane's due jobs in order; stop at one that failed or is not due yet.

        Returns whether any job was tried, when the lane's next job falls due, and
        whether a job failed.
        """
        progressed = failed = False
        for item in lane:
            if not item.is_due(self.clock()):
                return progressed, item.next_attempt_at, failed
            progressed = True
            carrier = self._carriers.get(item.kind, self.transport.deliver)
            # Publishing talks to other services, for minutes at worst: it must not
            # take the places of messages to the homeserver.
            limit = contextlib.nullcontext() if item.kind in PUBLISH_KINDS else in_flight
            try:
                async with limit:
                    result = await carrier(item)
            except DeliveryError as error:
                if not error.permanent:
                    await self._retry_later(item, str(error), error.retry_at)
                    return progressed, None, True
                self.metrics.error("delivery")
                log.error("giving up on outbox item %s (%s) for %s: %s", item.id, item.kind,
                          item.room_id, error)
                async with self.store.transaction():
                    now = self.clock()
                    await self.store.mark_failed(item.id, str(error), now)
                    await self._tell_chairs(item, str(error), Failure.REFUSED, now)
                failed = True
                continue
            except Exception as error:  # a bug in a carrier: retried like any failure
                log.exception("outbox item %s (%s) failed", item.id, item.kind)
                await self._retry_later(item, f"{type(error).__name__}: {error}")
                return progressed, None, True
            await self.store.record_sent(item, result, self.clock())
            if item.attempts:
                log.warning("outbox item %s (%s) done after %s failed attempts", item.id,
                            item.kind, item.attempts)
        return progressed, None, failed

    async def _retry_later(self, item: OutboxItem, error: str,
                           retry_at: datetime | None = None) -> None:
        """Back off before the job's next attempt (no earlier than `retry_at`, when the
        other side named a time), or park it once it has failed too long. The time is
        stored with the job, so a restart waits for it too.

        The first failure and the parking are logged; a note that cannot be saved is
        also told to the room, where the chairs are waiting for it.
        """
        now = self.clock()
        self.metrics.job_failed(item.kind)
        async with self.store.transaction():
            if now - item.created_at >= self.jobs.park_after:
                await self.store.mark_parked(item.id, error, now)
                self.metrics.job_parked(item.kind)
                log.error("outbox item %s (%s) for %s parked after %s attempts over %s: %s",
                          item.id, item.kind, item.room_id, item.attempts + 1,
                          self.jobs.park_after, error)
                await self._tell_chairs(item, error, Failure.PARKED, now)
                return
            delay = backoff_delay(item.attempts + 1, cap=self.jobs.retry_cap.total_seconds())
            next_attempt = now + timedelta(seconds=delay)
            if retry_at is not None and retry_at > next_attempt:
                next_attempt = retry_at
            await self.store.mark_retry(item.id, error, next_attempt)
            if item.attempts == 0:
                self.metrics.error("delivery")
                log.warning("outbox item %s (%s) for %s failed (%s); retrying with backoff "
                            "up to %s", item.id, item.kind, item.room_id, error,
                            self.jobs.retry_cap)
                await self._tell_chairs(item, error, Failure.RETRYING, now)
        self._wake_outbox()  # the chairs' message, if any

    async def _tell_chairs(self, item: OutboxItem, error: str, failure: Failure,
                           now: datetime) -> None:
        """Tell the room's chairs about a failing job, if its kind has something to say
        at this point; inside the caller's transaction, so it is said once."""
        notice = self._chairs_notices.get(item.kind)
        text = notice(item, error, failure) if notice is not None else None
        if text is not None and self.rooms.is_configured(item.room_id):
            await self._record([Post(item.room_id, text)], item.room_id, None, now)

    def _note_file_notice(self, item: OutboxItem, error: str, failure: Failure) -> str | None:
        # The path is built from the configured meeting id and a date, the error by
        # the operating system; escaped all the same.
        path, reason = escape_markdown(f"notes/{item.payload['path']}"), escape_markdown(error)
        if failure is Failure.PARKED:
            return (f"**Chairs:** I gave up saving the meeting note to {path} ({reason}). "
                    "It was posted here; whoever runs this bot can print it again with "
                    "`chatbot notes`.")
        if failure is Failure.RETRYING:
            return (f"**Chairs:** I could not save the meeting note to {path} ({reason}). "
                    f"{_NOTES_FOLDER_HINT}")
        return None

    def _log_file_notice(self, item: OutboxItem, error: str, failure: Failure) -> str | None:
        path, reason = escape_markdown(f"notes/{item.payload['path']}"), escape_markdown(error)
        if failure is Failure.PARKED:
            return (f"**Chairs:** I gave up saving the meeting's full log to {path} "
                    f"({reason}). Its lines stay in my database.")
        if failure is Failure.RETRYING:
            return (f"**Chairs:** I could not save the meeting's full log to {path} "
                    f"({reason}). {_NOTES_FOLDER_HINT}")
        return None

    def _publish_notice(self, item: OutboxItem, error: str, failure: Failure) -> str | None:
        """Transient failures are not told (they usually pass); one that lasts, or
        cannot pass, is told once with what to fix and how to publish again."""
        if failure is Failure.RETRYING:
            return None
        sitting = Sitting.from_payload(item.payload)
        target = self._targets.get(item.kind)
        where = escape_markdown(target.label(sitting.series_id) if target else item.kind)
        again = f"`chatbot publish {sitting.series_id} --date {sitting.held_on.isoformat()}`"
        if failure is Failure.PARKED:
            waited = format_duration(self.jobs.park_after)
            return (f"**Chairs:** I gave up publishing the note of {sitting.name} to {where} "
                    f"after trying for {waited} ({escape_markdown(error)}). "
                    f"Once that is fixed, whoever runs this bot can publish it with {again}.")
        return (f"**Chairs:** I could not publish the note of {sitting.name} to {where}: "
                f"{escape_markdown(error)}. Whoever runs this bot: once that is fixed, "
                f"{again} publishes it.")

    def _issue_notice(self, item: OutboxItem, error: str, failure: Failure) -> str | None:
        """Told once, when opening the issue failed for good or for too long."""
        if failure is Failure.RETRYING:
            return None
        job = OpenIssue.from_payload(item.payload)
        where = escape_markdown(self._issues.label(job.series_id)
                                if self._issues is not None else "GitHub")
        return (f"**Chairs:** I could not open the GitHub issue of the meeting on {job.name} "
                f"on {where}: {escape_markdown(error)}. The meeting goes ahead without it; "
                "whoever runs this bot: once that is fixed, the note is still posted there "
                "at the close (or with `chatbot publish`).")

    async def outbox_empty(self) -> bool:
        return not await self.store.read.has_pending_outbox()
