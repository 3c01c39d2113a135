"""The bot's core loop: a message or a due job in, effects recorded, the outbox drained.

Knows nothing of nio or APScheduler: the Matrix edge hands it `IncomingMessage`s and
sends what it queues through a `Transport`; the scheduler edge runs its `Job`s.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from chatbot.commands import Context, Invocation, Unknown, UsageError, parse_invocation
from chatbot.meetings import (
    Effect,
    Job,
    JobKind,
    Post,
    React,
    Reply,
    Rooms,
    SaveNote,
    plan_jobs,
    run_close,
    run_reminder,
    run_start,
)
from chatbot.model import EventId, RoomId, UserId
from chatbot.power import CHAIR_LEVEL
from chatbot.store import OutboxItem, Store

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
OWED_SINCE_KEY = "first_started_at"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A text message from a person in a configured room."""

    room_id: RoomId
    event_id: EventId
    sender: UserId
    display_name: str
    body: str


class DeliveryError(Exception):
    """Sending failed. `permanent` means retrying the same request cannot succeed."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    async def deliver(self, item: OutboxItem) -> str:
        """Send one outbox item; return the event id or raise DeliveryError."""

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        """The user's power level in the room."""


class Backoff:
    """Capped exponential delays: 1 s, 2 s, 4 s … up to `cap`, reset on success."""

    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first, self.cap, self.failures = first, cap, 0

    def next_delay(self) -> float:
        self.failures += 1
        return min(self.cap, self.first * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0


class MeetingBot:
    """Turns messages and due jobs into recorded state and queued replies."""

    def __init__(
        self, rooms: Rooms, store: Store, notes_dir: Path, transport: Transport,
        *, clock: Clock = utc_now,
        on_schedule_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.rooms = rooms
        self.store = store
        self.notes_dir = notes_dir
        self.transport = transport
        self.clock = clock
        self.on_schedule_change = on_schedule_change
        self._outbox_ready = asyncio.Event()

    # --- messages ----------------------------------------------------------------

    async def handle_message(self, message: IncomingMessage) -> None:
        """Handle one message once, however often it is delivered. Never raises."""
        try:
            await self._handle_message(message)
        except Exception:
            log.exception("failed to handle %s in %s", message.event_id, message.room_id)
            await self._apologise(message)

    async def _handle_message(self, message: IncomingMessage) -> None:
        if not self.rooms.is_configured(message.room_id):
            return
        prefix = self.rooms.config.command_prefix
        invocation = parse_invocation(message.body, prefix)
        if invocation is None or (isinstance(invocation, Unknown) and not invocation.suggestion):
            return
        is_chair = False
        if isinstance(invocation, Invocation) and invocation.spec.chair_only:
            is_chair = await self._is_chair(message.room_id, message.sender)
        now = self.clock()
        context = Context(self.rooms, message.room_id, message.sender, message.display_name,
                          message.event_id, now, is_chair)
        schedule_changed = False
        async with self.store.transaction():
            if not await self.store.claim_event(message.event_id, message.room_id, now):
                log.debug("%s in %s was handled before", message.event_id, message.room_id)
                return
            effects = await self._dispatch(invocation, context)
            await self._record(effects, message.room_id, message.event_id, now)
            schedule_changed = any(isinstance(effect, Post) for effect in effects)
        name = invocation.spec.name if isinstance(invocation, Invocation) else "unknown"
        log.info("handled %s (%s) from %s in %s", message.event_id, name, message.sender,
                 message.room_id)
        self._outbox_ready.set()
        if schedule_changed:
            self.on_schedule_change()

    async def _dispatch(self, invocation: Invocation | Unknown, context: Context) -> list[Effect]:
        prefix = context.prefix
        if isinstance(invocation, Unknown):
            return [Reply(f"Unknown command `{prefix}{invocation.name}`. "
                          f"Did you mean `{prefix}{invocation.suggestion}`? "
                          f"`{prefix}help` lists them all.")]
        spec = invocation.spec
        if spec.chair_only and not context.is_chair:
            return [Reply(f"Only chairs can use `{prefix}{spec.name}`: the meeting's configured "
                          f"chairs and room moderators (power level {CHAIR_LEVEL} or more).")]
        try:
            command = spec.parse(invocation.arguments)
        except UsageError as error:
            return [Reply(f"Sorry, {error}. {spec.usage(prefix)}")]
        return await spec.handle(command, context, self.store)

    async def _is_chair(self, room_id: RoomId, user_id: UserId) -> bool:
        if any(user_id in series.chairs for series in self.rooms.series_in(room_id)):
            return True
        return await self.transport.power_level(room_id, user_id) >= CHAIR_LEVEL

    async def _apologise(self, message: IncomingMessage) -> None:
        try:
            async with self.store.transaction():
                now = self.clock()
                await self.store.claim_event(message.event_id, message.room_id, now)
                await self._record(
                    [Reply("Sorry, something went wrong with that command. It is logged; "
                           "please tell whoever runs this bot.")],
                    message.room_id, message.event_id, now,
                )
            self._outbox_ready.set()
        except Exception:
            log.exception("could not record the apology for %s", message.event_id)

    # --- effects -----------------------------------------------------------------

    async def _record(
        self, effects: Sequence[Effect], room_id: RoomId, event_id: EventId | None,
        now: datetime,
    ) -> None:
        """Queue messages in the outbox and write notes, inside the caller's transaction."""
        for effect in effects:
            match effect:
                case React(key):
                    assert event_id is not None
                    await self.store.enqueue(room_id, "react", {"event_id": event_id, "key": key},
                                             now)
                case Reply(text):
                    await self.store.enqueue(room_id, "reply",
                                             {"text": text, "in_reply_to": event_id}, now)
                case Post(post_room, text):
                    await self.store.enqueue(post_room, "post", {"text": text}, now)
                case SaveNote(relative_path, text):
                    self._write_note(relative_path.as_posix(), text)

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
        stored = await self.store.get_meta(OWED_SINCE_KEY)
        if stored is not None:
            return datetime.fromisoformat(stored)
        now = self.clock()
        async with self.store.transaction():
            await self.store.set_meta(OWED_SINCE_KEY, now.isoformat())
        return now

    async def plan(self) -> list[Job]:
        return await plan_jobs(self.store, self.rooms, self.clock(), await self.owed_since())

    async def run_job(self, job: Job) -> None:
        """Carry out a due job. Never raises: a failure is logged and the next plan retries."""
        try:
            now = self.clock()
            async with self.store.transaction():
                effects: list[Effect] = []
                series = self.rooms.series(job.series_id)
                if job.kind is JobKind.CLOSE and job.meeting_id is not None:
                    effects = await run_close(self.store, self.rooms, job.meeting_id, now)
                elif series is not None and job.start is not None:
                    if job.kind is JobKind.START:
                        effects = await run_start(self.store, self.rooms, series, job.start, now)
                    elif job.lead is not None:
                        effects = await run_reminder(self.store, self.rooms, series, job.start,
                                                     job.lead, now)
                room_id = self.rooms.room_of_series.get(job.series_id)
                if room_id is not None:
                    await self._record(effects, room_id, None, now)
            self._outbox_ready.set()
        except Exception:
            log.exception("scheduled job %s failed", job.id)
        finally:
            self.on_schedule_change()

    # --- the outbox ----------------------------------------------------------------------

    async def deliver_forever(self) -> None:
        """Send queued items in order, waiting out outages with a capped backoff."""
        backoff = Backoff()
        while True:
            items = await self.store.pending_outbox()
            if not items:
                self._outbox_ready.clear()
                # Re-check after clearing, or an item queued in between would wait.
                if await self.store.pending_outbox(limit=1):
                    continue
                await self._outbox_ready.wait()
                continue
            for item in items:
                try:
                    event_id = await self.transport.deliver(item)
                except DeliveryError as error:
                    if error.permanent:
                        log.error("giving up on outbox item %s for %s: %s", item.id,
                                  item.room_id, error)
                        async with self.store.transaction():
                            await self.store.mark_failed(item.id, str(error), self.clock())
                        continue
                    delay = backoff.next_delay()
                    if backoff.failures == 1:
                        log.warning("sending to %s failed (%s); retrying with backoff up to %ss",
                                    item.room_id, error, backoff.cap)
                    await asyncio.sleep(delay)
                    break
                if backoff.failures:
                    log.warning("sending works again after %s failed attempts", backoff.failures)
                    backoff.reset()
                async with self.store.transaction():
                    await self.store.mark_sent(item.id, event_id, self.clock())

    async def outbox_empty(self) -> bool:
        return not await self.store.pending_outbox(limit=1)
