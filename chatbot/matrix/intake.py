"""Sync intake: follow the homeserver, and hand each new event in the bot's rooms to the
core as an `Incoming`. The sync position is saved only after every event in a response
has been handled (and so committed), which is what makes a crash lose nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any, Protocol
from urllib.parse import unquote

from nio import (
    AsyncClient,
    MessageDirection,
    RoomMessagesResponse,
    SyncResponse,
    UploadFilterResponse,
)

from chatbot.bot import (
    Clock,
    HomeserverUnavailable,
    Incoming,
    IncomingChat,
    IncomingDeparture,
    IncomingMessage,
    IncomingPollEnd,
    IncomingPollResponse,
    IncomingReaction,
    IncomingRedaction,
)
from chatbot.config import Config
from chatbot.matrix.encryption import Encryption
from chatbot.matrix.rooms import RoomDirectory, replacement_room
from chatbot.matrix.session import login_withdrawn
from chatbot.metrics import Metrics
from chatbot.model import EventId, Pill, RoomId, UserId
from chatbot.polls import END_TYPES, RESPONSE_TYPES, response_selection
from chatbot.retry import CAP_DELAY, NETWORK_ERRORS, backoff_delay, call_homeserver
from chatbot.store import Store

log = logging.getLogger(__name__)

SYNC_TOKEN_KEY = "sync_token"
# When the bot last heard its rooms (the sync that `sync_token` came from): whatever was
# sent after it is a backlog the bot can take at the pace it was sent.
HEARD_AT_KEY = "sync_heard_at"
LONG_POLL_MS = 30_000
# The sync position is saved after a sync whose handling wrote anything, and at least
# this often: a sync that changed nothing (the bot's own ✅ coming back, chat that is no
# command) then costs no trip to the database. A restart goes back at most this far, to
# events whose handling is keyed by their ids: nothing is done twice.
POSITION_SAVED_EVERY = timedelta(seconds=30)
GAP_FILL_LIMIT = 5_000
GAP_FILL_FILTER = {"types": ["m.room.message", "m.room.encrypted", "m.reaction",
                             "m.room.redaction", "m.room.tombstone", *RESPONSE_TYPES,
                             *END_TYPES]}
# How long (seconds) storing the sync filter is retried before syncing without it.
FILTER_PATIENCE = 10.0


class Listener(Protocol):
    """What the sync loop reports to: the bot's core."""

    async def handle(self, event: Incoming) -> None: ...

    async def handle_direct(self, message: IncomingMessage) -> None: ...

    async def follow_upgrade(self, old_room_id: RoomId, new_room_id: RoomId) -> None: ...

    async def cannot_read(self, room_id: RoomId, sender: UserId, display_name: str,
                          event_ids: list[EventId]) -> None: ...

    async def owed_since(self) -> datetime: ...


def position_owed(wrote: bool, first: bool, last_saved: datetime | None,
                  now: datetime) -> bool:
    """Whether to save the sync position after a sync (see POSITION_SAVED_EVERY)."""
    return (wrote or first or last_saved is None
            or now - last_saved >= POSITION_SAVED_EVERY)


# The events the bot reads in a room's timeline.
TIMELINE_TYPES = ["m.room.message", "m.room.encrypted", "m.room.member", "m.room.power_levels",
                  "m.reaction", "m.room.redaction", "m.room.tombstone", "m.room.encryption",
                  *RESPONSE_TYPES, *END_TYPES]
# Looking back for the bot's join to a room new to it: pages of 100 events, at most.
JOIN_LOOKUP_PAGES = 5


def sync_filter(timeline_limit: int, own_user_id: str) -> dict[str, Any]:
    """Only what the bot reads: messages, memberships and power levels, members lazily.

    Not the bot's own events: each ✅ it sends would wake its long poll once more, a
    response to fetch, parse and (in an encrypted room) decrypt for nothing. The one own
    event it needs, its join to a room new to it, is looked up (`Intake._since_own_join`).
    """
    return {
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "room": {
            "account_data": {"not_types": ["*"]},
            "ephemeral": {"not_types": ["*"]},
            "state": {"lazy_load_members": True},
            "timeline": {
                "limit": timeline_limit,
                "types": TIMELINE_TYPES,
                "not_senders": [own_user_id],
                "lazy_load_members": True,
            },
        },
    }


def first_sync_filter(own_user_id: str) -> dict[str, Any]:
    """The very first sync learns which rooms the bot is in, and little else (nearly all
    predates the bot): one timeline event and its sender per room, however many rooms
    there are. Only when that event is newer than the bot's first start are the events
    before it fetched (`Intake._since_first_start`)."""
    first = sync_filter(1, own_user_id)
    first["room"]["state"] = {"types": ["m.room.member", "m.room.encryption"],
                              "lazy_load_members": True}
    return first


def _relation(content: dict[str, Any]) -> dict[str, Any]:
    relation = content.get("m.relates_to")
    return relation if isinstance(relation, dict) else {}


# A message names at most this many people that the core is told of.
MAX_PILLS = 100
_PERMALINK = re.compile(r"https://matrix\.to/#/([^/?#]+)")


class _PillFinder(HTMLParser):
    """The user links in a message's HTML, in order, with their text; a reply's quoted
    fallback (`<mx-reply>`) is the earlier message's, so its links are not this one's."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, list[str]]] = []
        self._open: tuple[str, list[str]] | None = None
        self._in_reply = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "mx-reply":
            self._in_reply += 1
        elif tag == "a" and not self._in_reply and self._open is None:
            match = _PERMALINK.match(dict(attrs).get("href") or "")
            target = unquote(match.group(1)) if match is not None else ""
            if target.startswith("@"):  # a person; "!" and "#" link to rooms
                self._open = (target, [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "mx-reply":
            self._in_reply = max(0, self._in_reply - 1)
        elif tag == "a" and self._open is not None:
            self.found.append(self._open)
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[1].append(data)


def pills_of(content: dict[str, Any]) -> tuple[Pill, ...]:
    """The people a message mentions as pills (`<a href="https://matrix.to/#/@id">Name</a>`
    in `formatted_body`), in the order they appear. When the message lists its mentions
    in `m.mentions` (Element does, for every pill), a link not listed there is no pill."""
    html = content.get("formatted_body")
    if (content.get("format") != "org.matrix.custom.html" or not isinstance(html, str)
            or "matrix.to" not in html):  # most messages: no parsing needed
        return ()
    finder = _PillFinder()
    try:
        finder.feed(html)
        finder.close()
    except Exception:  # malformed HTML from a client: no pills rather than no message
        return ()
    mentions = content.get("m.mentions")
    listed = None  # no m.mentions: an older client, whose links are all pills
    if isinstance(mentions, dict):
        user_ids = mentions.get("user_ids")
        listed = user_ids if isinstance(user_ids, list) else []
    pills = []
    for user_id, parts in finder.found[:MAX_PILLS]:
        if listed is not None and user_id not in listed:
            continue
        pills.append(Pill(UserId(user_id), " ".join("".join(parts).split())))
    return tuple(pills)


def incoming_event(
    event: dict[str, Any], room_id: RoomId, own_user_id: str, display_name: Callable[[str], str]
) -> Incoming | None:
    """A person's message, edit, redaction, reaction, poll answer or departure as the core
    sees it; None otherwise."""
    sender, event_id = event.get("sender"), event.get("event_id")
    if not isinstance(sender, str) or not isinstance(event_id, str):
        return None
    content = event.get("content")
    content = content if isinstance(content, dict) else {}
    if event.get("type") == "m.room.member":
        # A departure matters whoever sent it (a kick or ban comes from a moderator).
        user = event.get("state_key")
        if (content.get("membership") not in ("leave", "ban") or not isinstance(user, str)
                or user == own_user_id):
            return None
        return IncomingDeparture(room_id, EventId(event_id), UserId(user))
    if sender == own_user_id:
        return None
    relation = _relation(content)
    match event.get("type"):
        case "m.room.message":
            replaces = None
            if relation.get("rel_type") == "m.replace":
                replaces = relation.get("event_id")
                content = content.get("m.new_content") or {}
                if not isinstance(content, dict) or not isinstance(replaces, str):
                    return None
            body = content.get("body")
            # Notices come from bots (the bot's own included); only text is a command.
            if content.get("msgtype") != "m.text" or not isinstance(body, str):
                return None
            thread = relation.get("event_id") if relation.get("rel_type") == "m.thread" else None
            return IncomingMessage(
                room_id=room_id, event_id=EventId(event_id), sender=UserId(sender),
                display_name=display_name(sender), body=body,
                thread_root=EventId(thread) if isinstance(thread, str) else None,
                replaces=EventId(replaces) if replaces else None,
                sent_at=_sent_at(event), server_time=_sent_at(event),
                pills=pills_of(content),
            )
        case "m.room.redaction":
            # Room version 11 moved `redacts` into the content.
            redacts = content.get("redacts") or event.get("redacts")
            if not isinstance(redacts, str):
                return None
            return IncomingRedaction(room_id, EventId(event_id), UserId(sender), EventId(redacts))
        case "m.reaction":
            target, key = relation.get("event_id"), relation.get("key")
            if (relation.get("rel_type") != "m.annotation" or not isinstance(target, str)
                    or not isinstance(key, str)):
                return None
            return IncomingReaction(room_id, EventId(event_id), UserId(sender),
                                    display_name(sender), EventId(target), key)
        case str(event_type) if event_type in RESPONSE_TYPES:
            # In an encrypted room nio hands these over decrypted (an UnknownEvent whose
            # source has the clear type, content and relation).
            poll = relation.get("event_id")
            if relation.get("rel_type") != "m.reference" or not isinstance(poll, str):
                return None
            return IncomingPollResponse(room_id, EventId(event_id), UserId(sender),
                                        EventId(poll), response_selection(event_type, content),
                                        sent_at=_sent_at(event))
        case str(event_type) if event_type in END_TYPES:
            poll = relation.get("event_id")
            if relation.get("rel_type") != "m.reference" or not isinstance(poll, str):
                return None
            return IncomingPollEnd(room_id, EventId(event_id), UserId(sender), EventId(poll),
                                   sent_at=_sent_at(event))
    return None


# How a message that is not text reads in a meeting's full log: what it is, then its
# body (for a file, its name).
_NOT_TEXT = {"m.image": "image", "m.file": "file", "m.video": "video", "m.audio": "audio",
             "m.location": "location"}


def chat_event(
    event: dict[str, Any], room_id: RoomId, display_name: Callable[[str], str]
) -> IncomingChat | None:
    """Any message `incoming_event` leaves out (the bot's own, a notice, an emote, a
    file), for the full log of a meeting that keeps one; None for what is no message.

    A redacted message has no body left, so it is never logged again when replayed.
    """
    sender, event_id = event.get("sender"), event.get("event_id")
    content = event.get("content")
    if (event.get("type") != "m.room.message" or not isinstance(sender, str)
            or not isinstance(event_id, str) or not isinstance(content, dict)):
        return None
    relation = _relation(content)
    replaces = relation.get("event_id") if relation.get("rel_type") == "m.replace" else None
    if replaces is not None:
        content = content.get("m.new_content")
        if not isinstance(content, dict) or not isinstance(replaces, str):
            return None
    body, kind = content.get("body"), content.get("msgtype")
    if not isinstance(body, str):
        return None
    if kind == "m.emote":
        body = f"* {display_name(sender)} {body}"
    elif isinstance(kind, str) and kind in _NOT_TEXT:
        body = f"({_NOT_TEXT[kind]}) {body}"
    return IncomingChat(room_id, EventId(event_id), UserId(sender), display_name(sender), body,
                        server_time=_sent_at(event),
                        replaces=EventId(replaces) if replaces is not None else None)


def is_own_join(event: dict[str, Any], own_user_id: str) -> bool:
    return (event.get("type") == "m.room.member" and event.get("state_key") == own_user_id
            and (event.get("content") or {}).get("membership") == "join")


def after_own_join(events: list[dict[str, Any]], own_user_id: str) -> list[dict[str, Any]]:
    """The events after the bot's latest join: history before it is not the bot's business."""
    for index in range(len(events) - 1, -1, -1):
        if is_own_join(events[index], own_user_id):
            return events[index + 1:]
    return []


def sent_since(events: list[dict[str, Any]], started_at: datetime) -> list[dict[str, Any]]:
    """The events sent at or after `started_at`: on the bot's very first sync, what was
    sent before the bot first started is history, and what came after is for it.

    Compares the sender's homeserver clock with ours; an event that has no time is history.
    """
    return [event for event in events
            if (sent_at := _sent_at(event)) is not None and sent_at >= started_at]


def _sent_at(event: dict[str, Any]) -> datetime | None:
    """When the sender's homeserver says the event was sent; None if it does not say."""
    stamp = event.get("origin_server_ts")
    if not isinstance(stamp, int | float) or isinstance(stamp, bool):
        return None
    try:
        return datetime.fromtimestamp(stamp / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def trusted_send_time(sent_at: datetime, heard_at: datetime, now: datetime) -> datetime:
    """The send time the core may pace a person's commands by.

    The sender's homeserver sets it, so it is trusted only within the span the bot was
    not listening (since `heard_at`, the sync before): a backlog after an outage keeps
    its pace, while a forged time cannot earn a flood more than real time does.
    """
    return min(now, max(heard_at, sent_at))


class Intake:
    """The sync loop: new events in, handed to the core in each room's order."""

    def __init__(self, client: AsyncClient, config: Config, store: Store, rooms: RoomDirectory,
                 encryption: Encryption, *, clock: Clock, metrics: Metrics,
                 timeline_limit: int) -> None:
        self.client = client
        self.config = config
        self.store = store
        self.rooms = rooms
        self.encryption = encryption
        self.clock = clock
        self.metrics = metrics
        self.timeline_limit = timeline_limit
        self.ready = asyncio.Event()
        self._heard_at: datetime | None = None
        # When nio handed over the sync response in hand (the metrics' timer), for the
        # bot's own time per command.
        self._arrived_at = 0.0

    async def sync_forever(self, listener: Listener) -> None:
        """Follow the homeserver until cancelled, handing each new event to `listener`.

        Faults are waited out (backoff with jitter, as `retry` does); only a login the
        homeserver no longer accepts ends it.
        """
        token = await self.store.get_meta(SYNC_TOKEN_KEY)
        await self.rooms.load_direct_rooms()
        started_at = await listener.owed_since()
        stored_heard_at = await self.store.get_meta(HEARD_AT_KEY)
        self._heard_at = (datetime.fromisoformat(stored_heard_at) if stored_heard_at
                          else started_at)
        filter_ = await self._stored_filter(sync_filter(self.timeline_limit,
                                                        self.client.user_id))
        first_filter = first_sync_filter(self.client.user_id)
        await self.encryption.note_pending_keys()
        failures = 0
        position_saved_at: datetime | None = None
        while True:
            response: Any = None
            problem: str | None
            try:
                response = await self.client.sync(
                    timeout=self.encryption.long_poll_ms(LONG_POLL_MS)
                    if token is not None and self.ready.is_set() else 0,
                    since=token, sync_filter=first_filter if token is None else filter_,
                )
            except NETWORK_ERRORS as error:
                problem = f"homeserver unreachable ({error or type(error).__name__})"
            else:
                problem = (None if isinstance(response, SyncResponse)
                           else f"{response.status_code} {response.message}")
            if problem is not None:
                if (withdrawn := login_withdrawn(response, self.config)) is not None:
                    raise withdrawn
                self.metrics.sync_failed(self.clock())
                failures += 1
                if failures == 1:
                    log.warning("sync failed: %s; retrying with backoff up to %ss", problem,
                                CAP_DELAY)
                await asyncio.sleep(backoff_delay(failures))
                continue
            if failures:
                log.warning("sync works again after %s failed attempts", failures)
                failures = 0
            heard_at = self.clock()
            self._arrived_at = self.metrics.own_time.timer()
            changes_before = self.store.changes_made()
            await self._process(response, token, listener, started_at)
            if position_owed(self.store.changes_made() != changes_before, token is None,
                             position_saved_at, heard_at):
                await self.store.save_meta({SYNC_TOKEN_KEY: response.next_batch,
                                            HEARD_AT_KEY: heard_at.isoformat()})
                position_saved_at = heard_at
            token = response.next_batch
            self._heard_at = heard_at
            self.metrics.sync_succeeded(self.clock())
            if self.rooms.joins_owed:
                await self.rooms.join_owed()
            if self.encryption.enabled:
                await self.encryption.upkeep(
                    response, listener, functools.partial(self._hand_over, listener=listener),
                    first=not self.ready.is_set())
            if not self.ready.is_set():
                log.info("listening in %s rooms", len(self.rooms.configured()))
                self.ready.set()

    async def _stored_filter(self, definition: dict[str, Any]) -> str | dict[str, Any]:
        """The filter's id on the homeserver, else the definition itself.

        A stored filter is parsed and validated once; one sent inline is parsed and
        validated again on every sync, which is CPU the homeserver spends per message.
        """
        try:
            response = await call_homeserver("storing the sync filter", lambda: (
                self.client.upload_filter(
                    presence=definition["presence"], account_data=definition["account_data"],
                    room=definition["room"])), give_up_after=FILTER_PATIENCE)
        except NETWORK_ERRORS:
            return definition
        return response.filter_id if isinstance(response, UploadFilterResponse) else definition

    async def _process(
        self, response: SyncResponse, since: str | None, listener: Listener,
        started_at: datetime,
    ) -> None:
        now = self.clock()
        for room_id, invite in response.rooms.invite.items():
            await self.rooms.answer_invite(RoomId(room_id), invite.invite_state)
        if since is None:
            # The first sync may bring a thousand rooms: one commit for all, not one each
            # (its events are handed over after; the sync position is saved after that).
            async with self.store.transaction():
                await self.store.add_known_rooms(
                    [RoomId(room_id) for room_id in response.rooms.join
                     if self.rooms.is_ours(RoomId(room_id))], now)
        for room_id, info in response.rooms.join.items():
            room_id = RoomId(room_id)
            if not self.rooms.is_ours(room_id):
                continue
            events = [event.source for event in info.timeline.events]
            state = [getattr(event, "source", {}) for event in info.state]
            if any(e.get("type") == "m.room.power_levels" for e in events + state):
                self.rooms.power_changed(room_id)
            if since is None:
                events = await self._since_first_start(room_id, info.timeline, started_at)
            elif not await self.store.is_known_room(room_id):
                events = await self._since_own_join(room_id, response.next_batch)
                async with self.store.transaction():
                    await self.store.add_known_room(room_id, now)
            elif info.timeline.limited and info.timeline.prev_batch:
                missed = await self._missed_events(room_id, info.timeline.prev_batch, since)
                events = missed + events
            for event in events:
                if (successor := replacement_room(event)) is not None:
                    await self._follow_upgrade(room_id, successor, listener)
                elif event.get("type") == "m.room.encrypted":
                    # nio could not decrypt it
                    await self.encryption.keep_undecrypted(room_id, event)
                else:
                    await self._hand_over(room_id, event, listener=listener)

    async def _since_first_start(self, room_id: RoomId, timeline: Any,
                                 started_at: datetime) -> list[dict[str, Any]]:
        """On the very first sync, the room's events sent since the bot first started.

        That sync asks for one event per room; only if even that one is new is there
        more to fetch, back to the first start.
        """
        events = [event.source for event in timeline.events]
        recent = sent_since(events, started_at)
        if recent and len(recent) == len(events) and timeline.limited and timeline.prev_batch:
            earlier = await self._missed_events(room_id, timeline.prev_batch, None,
                                                not_before=started_at)
            recent = sent_since(earlier, started_at) + recent
        if recent:
            log.info("%s event(s) in %s were sent after the bot first started; handling them",
                     len(recent), room_id)
        return recent

    async def _hand_over(self, room_id: RoomId, event: dict[str, Any], *,
                         listener: Listener) -> None:
        room_names = functools.partial(self.rooms.display_name, room_id)
        incoming: Incoming | None = incoming_event(event, room_id, self.client.user_id,
                                                   room_names)
        if incoming is None and room_id in self.rooms.configured():
            incoming = chat_event(event, room_id, room_names)
        if incoming is None:
            return
        if isinstance(incoming, IncomingMessage):
            self.metrics.message_arrived(incoming.event_id, self._arrived_at)
        if (isinstance(incoming, IncomingMessage | IncomingPollResponse | IncomingPollEnd)
                and incoming.sent_at is not None):
            now = self.clock()
            incoming = dataclasses.replace(
                incoming, sent_at=trusted_send_time(incoming.sent_at, self._heard_at or now, now))
        if room_id in self.rooms.configured():
            await self._until_taken(listener, incoming)
        elif isinstance(incoming, IncomingMessage):
            await listener.handle_direct(incoming)

    async def _until_taken(self, listener: Listener, incoming: Incoming) -> None:
        """Hand an event to the core until it takes it. A command whose chair check could
        not reach the homeserver is left unclaimed; it is handed over again after a
        backoff, before any later event (the room's order matters), and the sync
        position stays put meanwhile, so a restart hands it over too."""
        failures = 0
        while True:
            try:
                await listener.handle(incoming)
            except HomeserverUnavailable as error:
                failures += 1
                if failures == 1:
                    log.warning("%s in %s waits for the homeserver: %s", incoming.event_id,
                                incoming.room_id, error,
                                extra={"room_id": incoming.room_id,
                                       "event_id": incoming.event_id})
                await asyncio.sleep(backoff_delay(failures))
            else:
                if failures:
                    log.info("%s in %s handled after %s attempts", incoming.event_id,
                             incoming.room_id, failures + 1)
                return

    async def _follow_upgrade(self, old: RoomId, new: RoomId, listener: Listener) -> None:
        """Move every meeting of an upgraded room to its successor, and join it."""
        if self.rooms.move(old, new):
            await listener.follow_upgrade(old, new)
            await self.rooms.join(new, f"the upgrade of {old}")

    async def _since_own_join(self, room_id: RoomId, end: str) -> list[dict[str, Any]]:
        """In a room new to the bot, the events up to the sync position `end` that came
        after the bot's latest join; history before it is not the bot's business.

        The sync leaves the bot's own events out, its join too, so the room's latest
        events are fetched back to that join, with nobody left out.
        """
        fetched: list[dict[str, Any]] = []  # newest first
        start = end
        for _ in range(JOIN_LOOKUP_PAGES):
            response = await call_homeserver(
                f"finding the bot's join to {room_id}",
                functools.partial(self.client.room_messages, room_id, start=start,
                                  direction=MessageDirection.back, limit=100,
                                  message_filter={"types": TIMELINE_TYPES}))
            if not isinstance(response, RoomMessagesResponse) or not response.chunk:
                break
            page = [event.source for event in response.chunk]
            fetched.extend(page)
            if any(is_own_join(event, self.client.user_id) for event in page):
                break
            if not response.end or response.end == start:
                break
            start = response.end
        return after_own_join(fetched[::-1], self.client.user_id)

    async def _missed_events(
        self, room_id: RoomId, before: str, since: str | None, *,
        not_before: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Events the sync left out between our last position (or, with `not_before`,
        that time) and the timeline it returned.

        Each page is retried for as long as the homeserver has trouble: the room's
        later events must wait for the ones in the gap.
        """
        missed: list[dict[str, Any]] = []
        start = before
        while len(missed) < GAP_FILL_LIMIT:
            response = await call_homeserver(
                f"fetching missed messages in {room_id}",
                functools.partial(self.client.room_messages, room_id, start=start, end=since,
                                  direction=MessageDirection.back, limit=100,
                                  message_filter=GAP_FILL_FILTER))
            if not isinstance(response, RoomMessagesResponse) or not response.chunk:
                break
            page = [event.source for event in response.chunk]
            missed.extend(page)
            if not_before is not None and len(sent_since(page, not_before)) < len(page):
                break  # reached what was sent before the bot first started
            if not response.end or response.end == start:
                break
            start = response.end
        if len(missed) >= GAP_FILL_LIMIT:
            log.warning("more than %s messages missed in %s; handling the latest",
                        GAP_FILL_LIMIT, room_id)
        log.info("fetched %s messages sent in %s while the bot was away", len(missed), room_id)
        return list(reversed(missed))
