"""The Matrix edge: login, rooms, the sync loop, and sending. The only module that imports nio.

Sync responses become `IncomingMessage`s for the core; outbox items become Matrix
events. The sync position is saved only after every message in a response has been
handled (and so committed), which is what makes a crash lose nothing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from nio import (
    Api,
    AsyncClient,
    AsyncClientConfig,
    EncryptionError,
    ForwardedRoomKeyEvent,
    JoinedMembersResponse,
    JoinedRoomsResponse,
    JoinResponse,
    KeysQueryResponse,
    KeysUploadError,
    LocalProtocolError,
    LoginResponse,
    MatrixRoom,
    MegolmEvent,
    MessageDirection,
    RoomGetStateEventResponse,
    RoomGetStateResponse,
    RoomKeyEvent,
    RoomMessagesResponse,
    RoomResolveAliasResponse,
    RoomSendResponse,
    SyncResponse,
    UploadFilterResponse,
    WhoamiResponse,
)

from chatbot.bot import (
    Backoff,
    Clock,
    DeliveryError,
    Incoming,
    IncomingMessage,
    IncomingReaction,
    IncomingRedaction,
)
from chatbot.config import Config
from chatbot.metrics import Metrics
from chatbot.model import EventId, RoomId, UserId
from chatbot.power import RoomAuthority
from chatbot.render import markdown_to_html
from chatbot.store import OutboxItem, Store, Undecrypted

log = logging.getLogger(__name__)

SYNC_TOKEN_KEY = "sync_token"
SESSION_FILE = "session.json"
# nio's crypto store (the device's keys and every room key received), beside the login.
CRYPTO_DIR = "crypto"
# A message no key ever came for is answered, then kept this long in case one does.
UNDECRYPTED_KEPT_FOR = timedelta(days=7)
LONG_POLL_MS = 30_000
GAP_FILL_LIMIT = 5_000
# Errors that retrying the same request cannot fix.
_PERMANENT = {"M_FORBIDDEN", "M_NOT_FOUND", "M_BAD_JSON", "M_NOT_JSON", "M_TOO_LARGE",
              "M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"}
_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, OSError)


class Listener(Protocol):
    """What the sync loop reports to: the bot's core."""

    async def handle(self, event: Incoming) -> None: ...

    async def handle_direct(self, message: IncomingMessage) -> None: ...

    async def follow_upgrade(self, old_room_id: RoomId, new_room_id: RoomId) -> None: ...

    async def cannot_read(self, room_id: RoomId, sender: UserId, display_name: str,
                          event_ids: list[EventId]) -> None: ...


class LoginFailed(Exception):
    """The homeserver refused our credentials; the message says what to check."""


def sync_filter(timeline_limit: int) -> dict[str, Any]:
    """Only what the bot reads: messages, memberships and power levels, members lazily."""
    return {
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "room": {
            "account_data": {"not_types": ["*"]},
            "ephemeral": {"not_types": ["*"]},
            "state": {"lazy_load_members": True},
            "timeline": {
                "limit": timeline_limit,
                "types": ["m.room.message", "m.room.encrypted", "m.room.member",
                          "m.room.power_levels", "m.reaction", "m.room.redaction",
                          "m.room.tombstone", "m.room.encryption"],
                "lazy_load_members": True,
            },
        },
    }


def first_sync_filter() -> dict[str, Any]:
    """The very first sync only learns which rooms the bot is in (all else predates it):
    one timeline event and its sender per room, however many rooms there are."""
    first = sync_filter(1)
    first["room"]["state"] = {"types": ["m.room.member", "m.room.encryption"],
                              "lazy_load_members": True}
    return first


@dataclass(frozen=True, slots=True)
class Session:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str


def load_session(path: Path, homeserver: str, user_id: str) -> Session | None:
    """The saved login, if it is for this homeserver and account."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        session = Session(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        log.warning("ignoring unreadable saved login %s", path)
        return None
    if session.homeserver != homeserver or session.user_id != user_id:
        log.info("saved login is for another account; logging in again")
        return None
    return session


def save_session(path: Path, session: Session) -> None:
    """Write the login readable by this user only (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(asdict(session), handle)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def message_content(item: OutboxItem) -> tuple[str, dict[str, Any]]:
    """The Matrix event type and content for an outbox item. Markdown becomes HTML here only."""
    payload = item.payload
    if item.kind == "react":
        return "m.reaction", {"m.relates_to": {
            "rel_type": "m.annotation", "event_id": payload["event_id"], "key": payload["key"],
        }}
    text = payload["text"]
    content: dict[str, Any] = {
        # Replies are notices (no notifications, and other bots ignore them);
        # announcements, reminders and notes are ordinary messages so people are pinged.
        "msgtype": "m.notice" if item.kind == "reply" else "m.text",
        "body": text,
        "format": "org.matrix.custom.html",
        # Rendered when queued (to size the message); older rows have only the text.
        "formatted_body": payload.get("html") or markdown_to_html(text),
    }
    relation: dict[str, Any] = {}
    if item.kind == "reply" and payload.get("in_reply_to"):
        relation["m.in_reply_to"] = {"event_id": payload["in_reply_to"]}
    if item.kind == "reply" and payload.get("thread_root"):
        # Answer inside the thread the command came from, every part of a long answer.
        relation |= {"rel_type": "m.thread", "event_id": payload["thread_root"],
                     "is_falling_back": not payload.get("in_reply_to")}
        relation.setdefault("m.in_reply_to", {"event_id": payload["thread_root"]})
    if relation:
        content["m.relates_to"] = relation
    return "m.room.message", content


def _relation(content: dict[str, Any]) -> dict[str, Any]:
    relation = content.get("m.relates_to")
    return relation if isinstance(relation, dict) else {}


def incoming_event(
    event: dict[str, Any], room_id: RoomId, own_user_id: str, display_name: Callable[[str], str]
) -> Incoming | None:
    """A person's message, edit, redaction or reaction as the core sees it; None otherwise."""
    sender, event_id = event.get("sender"), event.get("event_id")
    if not isinstance(sender, str) or not isinstance(event_id, str) or sender == own_user_id:
        return None
    content = event.get("content")
    content = content if isinstance(content, dict) else {}
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
    return None


def invitation(invite_state: list[Any], own_user_id: str) -> tuple[str | None, bool]:
    """Who invited the bot, and whether they flagged it a direct chat."""
    for event in invite_state:
        source = getattr(event, "source", event)
        if (isinstance(source, dict) and source.get("type") == "m.room.member"
                and source.get("state_key") == own_user_id):
            # nio keeps an invite member event's content as an attribute, not in `source`.
            content = getattr(event, "content", None) or source.get("content") or {}
            return source.get("sender"), content.get("is_direct") is True
    return None, False


def replacement_room(event: dict[str, Any]) -> RoomId | None:
    """The room a tombstone points to, if the event is one."""
    if event.get("type") != "m.room.tombstone" or event.get("state_key") != "":
        return None
    content = event.get("content")
    replacement = content.get("replacement_room") if isinstance(content, dict) else None
    return RoomId(replacement) if isinstance(replacement, str) and replacement else None


def after_own_join(events: list[dict[str, Any]], own_user_id: str) -> list[dict[str, Any]]:
    """The events after the bot's latest join: history before it is not the bot's business."""
    for index in range(len(events) - 1, -1, -1):
        event = events[index]
        if (event.get("type") == "m.room.member" and event.get("state_key") == own_user_id
                and (event.get("content") or {}).get("membership") == "join"):
            return events[index + 1:]
    return []


async def exchange_keys(
    client: AsyncClient, on_device_keys: Callable[[KeysQueryResponse], None] | None = None,
) -> KeysUploadError | None:
    """What an encrypting client owes the homeserver after each sync (nio's own
    sync_forever does the same): its one-time keys, the device lists of people it shares
    encrypted rooms with, Olm sessions, and queued to-device messages (room keys, key
    requests). `on_device_keys` sees each device-list answer; a refused upload is returned.
    """
    if client.olm is None:
        return None
    refused = None
    if client.should_upload_keys:
        uploaded = await client.keys_upload()
        refused = uploaded if isinstance(uploaded, KeysUploadError) else None
    if client.should_query_keys:
        queried = await client.keys_query()
        if on_device_keys is not None and isinstance(queried, KeysQueryResponse):
            on_device_keys(queried)
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
    await client.send_to_device_messages()
    return refused


class MatrixEdge:
    """One logged-in nio client serving the bot: sync in, outbox out."""

    def __init__(
        self, config: Config, store: Store, *, clock: Clock, timeline_limit: int = 50,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.timeline_limit = timeline_limit
        self.metrics = metrics or Metrics(clock)
        # nio logs every response it validates at DEBUG, the login's access token
        # included; no level of our logging may show a credential.
        logging.getLogger("nio.responses").setLevel(logging.INFO)
        self.encrypting = config.encryption.enabled
        self.crypto_dir = config.data_dir / CRYPTO_DIR
        if self.encrypting:
            self.crypto_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.crypto_dir, 0o700)  # private keys live here
        self.client = AsyncClient(
            config.matrix.homeserver,
            config.matrix.user_id,
            store_path=str(self.crypto_dir) if self.encrypting else None,
            config=AsyncClientConfig(
                # 429s: nio waits the retry_after_ms the server asks for, as often as needed.
                # Network errors: raised at once, so our loops can back off with a cap.
                max_limit_exceeded=None,
                max_timeouts=0,
                request_timeout=60,
                store_sync_tokens=False,
                encryption_enabled=self.encrypting,
            ),
        )
        self.room_ids: dict[str, RoomId] = {}
        self.direct_rooms: set[RoomId] = set()
        self.ready = asyncio.Event()
        self._authority: dict[RoomId, RoomAuthority] = {}
        # Rooms found unencrypted by asking the homeserver (rooms this run has not synced).
        self._plain_rooms: set[RoomId] = set()
        # When the oldest unanswered undecryptable message is due its answer.
        self._key_deadline: datetime | None = None

    @property
    def user_id(self) -> str:
        return self.client.user_id

    async def close(self) -> None:
        await self.client.close()

    # --- login and rooms -----------------------------------------------------------

    async def login(self) -> None:
        """Reuse the saved login, else log in once and save it (0600) for next time."""
        matrix = self.config.matrix
        path = self.config.data_dir / SESSION_FILE
        session = load_session(path, matrix.homeserver, matrix.user_id)
        if session is not None and self.encrypting and not self._crypto_store(session).exists():
            if matrix.password:
                log.warning("the encryption keys of device %s are not in %s; logging in as a "
                            "new device", session.device_id, self.crypto_dir)
                session = None
            else:
                log.warning("the encryption keys of device %s are not in %s; starting it with "
                            "new keys. If the homeserver refuses them, give a new "
                            "matrix.access_token (a new device)", session.device_id,
                            self.crypto_dir)
        if session is None and matrix.access_token:
            self.client.access_token = matrix.access_token
            whoami = await self._retrying("checking the access token", self.client.whoami)
            if not isinstance(whoami, WhoamiResponse):
                raise LoginFailed(f"the access token was refused ({whoami.message}); "
                                  "check matrix.access_token")
            session = Session(matrix.homeserver, whoami.user_id, whoami.device_id or "",
                              matrix.access_token)
            save_session(path, session)
        elif session is None:
            response = await self._retrying("logging in", lambda: self.client.login(
                password=matrix.password, device_name=matrix.device_name))
            if not isinstance(response, LoginResponse):
                raise LoginFailed(f"login as {matrix.user_id} failed ({response.message}); "
                                  "check matrix.user_id and matrix.password")
            session = Session(matrix.homeserver, response.user_id, response.device_id,
                              response.access_token)
            save_session(path, session)
            log.info("logged in as %s with new device %s", session.user_id, session.device_id)
            if self.encrypting:
                log.info("encrypted messages sent before device %s existed cannot be read by "
                         "it; the bot answers commands sent from now on", session.device_id)
        self.client.restore_login(session.user_id, session.device_id, session.access_token)

    def _crypto_store(self, session: Session) -> Path:
        """nio's file for this device's keys (its own naming)."""
        return self.crypto_dir / f"{session.user_id}_{session.device_id}.db"

    async def resolve_rooms(self) -> dict[str, RoomId]:
        """Room ids for each meeting's `room`, joining it (or waiting for an invite)."""
        resolved: dict[str, RoomId] = {}
        by_reference: dict[str, RoomId | None] = {}
        # One request instead of a join per room: a restart finds them all joined.
        joined = await self._retrying("listing joined rooms", self.client.joined_rooms)
        already = set(joined.rooms) if isinstance(joined, JoinedRoomsResponse) else set()
        for meeting in self.config.meetings:
            if meeting.room not in by_reference:
                by_reference[meeting.room] = await self._join(meeting.room, already)
            room_id = by_reference[meeting.room]
            if room_id is not None:
                resolved[meeting.id] = await self._latest_room(room_id, already)
        self.room_ids = resolved
        return resolved

    async def _latest_room(self, room_id: RoomId, already: set[str]) -> RoomId:
        """The room's latest upgrade the bot has followed, joined."""
        latest = await self.store.replacement_room(room_id)
        if latest != room_id and latest not in already:
            joined = await self._retrying("joining " + latest, lambda: self.client.join(latest))
            if not isinstance(joined, JoinResponse):
                log.warning("cannot join %s (the upgrade of %s) yet: %s", latest, room_id,
                            joined.message)
        return latest

    async def _join(self, reference: str, already: set[str]) -> RoomId | None:
        room_id = reference
        if reference.startswith("#"):
            alias = await self._retrying("resolving " + reference,
                                         lambda: self.client.room_resolve_alias(reference))
            if not isinstance(alias, RoomResolveAliasResponse):
                log.error("room %s cannot be found (%s); check the meeting's `room`",
                          reference, alias.message)
                return None
            room_id = alias.room_id
        if room_id in already:
            return RoomId(room_id)
        joined = await self._retrying("joining " + reference, lambda: self.client.join(room_id))
        if not isinstance(joined, JoinResponse):
            log.warning("cannot join %s yet (%s); will join when invited", reference,
                        joined.message)
        return RoomId(room_id)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Retry a request through network outages, with a capped backoff."""
        backoff = Backoff()
        while True:
            try:
                return await call()
            except _NETWORK_ERRORS as error:
                delay = backoff.next_delay()
                if backoff.failures == 1:
                    log.warning("%s: homeserver unreachable (%s); retrying", what, error)
                await asyncio.sleep(delay)

    # --- power levels ------------------------------------------------------------------

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        authority = self._authority.get(room_id)
        if authority is None:
            response = await self.client.room_get_state(room_id)
            if not isinstance(response, RoomGetStateResponse):
                log.warning("cannot read power levels in %s: %s", room_id, response.message)
                return 0
            authority = RoomAuthority.from_state(response.events)
            self._authority[room_id] = authority
        return authority.level(user_id)

    # --- sync ------------------------------------------------------------------------------

    async def sync_forever(self, listener: Listener) -> None:
        """Follow the homeserver until cancelled, handing each new event to `listener`."""
        token = await self.store.get_meta(SYNC_TOKEN_KEY)
        self.direct_rooms = await self.store.direct_rooms()
        backoff = Backoff()
        filter_ = await self._stored_filter(sync_filter(self.timeline_limit))
        first_filter = first_sync_filter()
        await self._note_pending_keys()
        while True:
            try:
                response = await self.client.sync(
                    timeout=self._long_poll_ms() if token is not None and self.ready.is_set()
                    else 0,
                    since=token, sync_filter=first_filter if token is None else filter_,
                )
            except _NETWORK_ERRORS as error:
                self.metrics.sync_failed(self.clock())
                delay = backoff.next_delay()
                if backoff.failures == 1:
                    log.warning("sync failed: homeserver unreachable (%s); retrying with "
                                "backoff up to %ss", error, backoff.cap)
                await asyncio.sleep(delay)
                continue
            if not isinstance(response, SyncResponse):
                if response.status_code in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
                    raise LoginFailed(f"the homeserver no longer accepts our login "
                                      f"({response.message}); delete "
                                      f"{self.config.data_dir / SESSION_FILE} to log in again")
                self.metrics.sync_failed(self.clock())
                delay = backoff.next_delay()
                if backoff.failures == 1:
                    log.warning("sync failed (%s %s); retrying", response.status_code,
                                response.message)
                await asyncio.sleep(delay)
                continue
            if backoff.failures:
                log.warning("sync works again after %s failed attempts", backoff.failures)
                backoff.reset()
            await self._process(response, token, listener)
            token = response.next_batch
            async with self.store.transaction():
                await self.store.set_meta(SYNC_TOKEN_KEY, token)
            self.metrics.sync_succeeded(self.clock())
            if self.client.olm is not None:
                await self._crypto_upkeep()
                if not self.ready.is_set() or any(
                        isinstance(event, RoomKeyEvent | ForwardedRoomKeyEvent)
                        for event in response.to_device_events):
                    await self._retry_undecrypted(listener)
                await self._answer_undecrypted(listener)
            if not self.ready.is_set():
                log.info("listening in %s rooms", len(set(self.room_ids.values())))
                self.ready.set()

    async def _stored_filter(self, definition: dict[str, Any]) -> str | dict[str, Any]:
        """The filter's id on the homeserver, else the definition itself.

        A stored filter is parsed and validated once; one sent inline is parsed and
        validated again on every sync, which is CPU the homeserver spends per message.
        """
        try:
            response = await self.client.upload_filter(
                presence=definition["presence"], account_data=definition["account_data"],
                room=definition["room"])
        except _NETWORK_ERRORS:
            return definition
        return response.filter_id if isinstance(response, UploadFilterResponse) else definition

    async def _process(
        self, response: SyncResponse, since: str | None, listener: Listener
    ) -> None:
        configured = set(self.room_ids.values())
        now = self.clock()
        for room_id, invite in response.rooms.invite.items():
            await self._answer_invite(RoomId(room_id), invite.invite_state, configured, now)
        if since is None:
            # The first sync: everything in it predates the bot.
            first_seen = [RoomId(room_id) for room_id in response.rooms.join
                          if room_id in configured or room_id in self.direct_rooms]
            async with self.store.transaction():
                for room_id in first_seen:
                    await self.store.add_known_room(room_id, now)
            return
        for room_id, info in response.rooms.join.items():
            room_id = RoomId(room_id)
            if room_id not in configured and room_id not in self.direct_rooms:
                continue
            events = [event.source for event in info.timeline.events]
            state = [getattr(event, "source", {}) for event in info.state]
            if any(e.get("type") == "m.room.power_levels" for e in events + state):
                self._authority.pop(room_id, None)  # re-read on the next chair command
            if not await self.store.is_known_room(room_id):
                events = after_own_join(events, self.user_id)
                async with self.store.transaction():
                    await self.store.add_known_room(room_id, now)
            elif info.timeline.limited and info.timeline.prev_batch:
                missed = await self._missed_events(room_id, info.timeline.prev_batch, since)
                events = missed + events
            for event in events:
                if (successor := replacement_room(event)) is not None:
                    await self._follow_upgrade(room_id, successor, listener)
                elif event.get("type") == "m.room.encrypted":
                    await self._keep_undecrypted(room_id, event)  # nio could not decrypt it
                else:
                    await self._hand_over(room_id, event, listener, configured)

    async def _hand_over(self, room_id: RoomId, event: dict[str, Any], listener: Listener,
                         configured: set[RoomId]) -> None:
        room_names = functools.partial(self._display_name, room_id)
        incoming = incoming_event(event, room_id, self.user_id, room_names)
        if incoming is None:
            return
        if room_id in configured:
            await listener.handle(incoming)
        elif isinstance(incoming, IncomingMessage):
            await listener.handle_direct(incoming)

    async def _answer_invite(
        self, room_id: RoomId, invite_state: list[Any], configured: set[RoomId], now: datetime
    ) -> None:
        """Join configured rooms, direct chats, and rooms an allowed inviter asks for."""
        inviter, direct = invitation(invite_state, self.user_id)
        if room_id in configured:
            reason = "a configured room"
        elif direct:
            reason = f"a direct chat with {inviter}"
        elif inviter in self.config.allowed_inviters:
            reason = f"invited by {inviter}, an allowed inviter"
        else:
            log.info("not joining %s: not configured, and %s is not an allowed inviter",
                     room_id, inviter)
            return
        joined = await self.client.join(room_id)
        if not isinstance(joined, JoinResponse):
            log.warning("could not join %s (%s): %s", room_id, reason, joined.message)
            return
        log.info("joined %s: %s", room_id, reason)
        if direct and room_id not in configured:
            self.direct_rooms.add(room_id)
            async with self.store.transaction():
                await self.store.add_direct_room(room_id, now)

    async def _follow_upgrade(self, old: RoomId, new: RoomId, listener: Listener) -> None:
        """Move every meeting of an upgraded room to its successor, and join it."""
        if new in self.room_ids.values():
            return
        self.room_ids = {series: new if room == old else room
                         for series, room in self.room_ids.items()}
        await listener.follow_upgrade(old, new)
        joined = await self.client.join(new)
        if not isinstance(joined, JoinResponse):
            log.warning("cannot join %s, the upgrade of %s, yet (%s); will join when invited",
                        new, old, joined.message)

    async def _missed_events(
        self, room_id: RoomId, before: str, since: str
    ) -> list[dict[str, Any]]:
        """Events the sync left out between our last position and the timeline it returned."""
        missed: list[dict[str, Any]] = []
        start = before
        while len(missed) < GAP_FILL_LIMIT:
            response = await self.client.room_messages(
                room_id, start=start, end=since, direction=MessageDirection.back, limit=100,
                message_filter={"types": ["m.room.message", "m.room.encrypted", "m.reaction",
                                          "m.room.redaction", "m.room.tombstone"]},
            )
            if not isinstance(response, RoomMessagesResponse) or not response.chunk:
                break
            missed.extend(event.source for event in response.chunk)
            if not response.end or response.end == start:
                break
            start = response.end
        if len(missed) >= GAP_FILL_LIMIT:
            log.warning("more than %s messages missed in %s; handling the latest",
                        GAP_FILL_LIMIT, room_id)
        log.info("fetched %s messages sent in %s while the bot was away", len(missed), room_id)
        return list(reversed(missed))

    def _display_name(self, room_id: RoomId, user_id: str) -> str:
        room = self.client.rooms.get(room_id)
        user = room.users.get(user_id) if room is not None else None
        if user is not None and user.display_name:
            return user.display_name
        return user_id.removeprefix("@").split(":", 1)[0]

    # --- encryption ----------------------------------------------------------------------

    async def _crypto_upkeep(self) -> None:
        """Keys owed after a sync (`exchange_keys`); failures wait for the next sync."""
        try:
            refused = await exchange_keys(self.client, self._apply_trust)
            if refused is not None:
                log.error("the homeserver refused this device's encryption keys (%s); "
                          "delete %s and %s to start as a new device", refused.message,
                          self.config.data_dir / SESSION_FILE, self.crypto_dir)
        except _NETWORK_ERRORS as error:
            log.debug("encryption upkeep postponed: %s", error)
        except Exception:  # nio's crypto state is not worth the sync loop: retry next time
            log.exception("encryption upkeep failed; trying again after the next sync")

    async def _query_keys(self) -> None:
        response = await self.client.keys_query()
        if isinstance(response, KeysQueryResponse):
            self._apply_trust(response)

    def _apply_trust(self, response: KeysQueryResponse) -> None:
        """Trust people's devices by the configured policy (see `encryption.trust`)."""
        olm = self.client.olm
        assert olm is not None
        tofu = self.config.encryption.trust == "tofu"
        for user_id, devices in response.device_keys.items():
            for device_id, keys in devices.items():
                known = (olm.device_store[user_id].get(device_id)
                         if user_id in olm.device_store.users else None)
                offered = (keys.get("keys") or {}).get(f"ed25519:{device_id}")
                if known is not None and offered and known.ed25519 != offered:
                    # nio keeps the key it saw first; say why this device's messages fail.
                    log.warning("device %s of %s presents a different identity key than "
                                "when first seen; keeping the first", device_id, user_id)
        for user_id in list(olm.device_store.users):
            devices = list(olm.device_store.active_user_devices(user_id))
            known_user = any(device.verified for device in devices)
            for device in devices:
                # Not `ignored`: nio marks undecided devices so when it shares a room key.
                if (device.verified or device.blacklisted
                        or (user_id == self.user_id and device.id == self.client.device_id)):
                    continue
                if tofu and known_user:
                    log.warning("%s added device %s (%s); trusting it on first use",
                                user_id, device.id, device.display_name or "no name")
                self.client.verify_device(device)

    async def _keep_undecrypted(self, room_id: RoomId, event: dict[str, Any]) -> None:
        """Keep a message nio could not decrypt, ask for its key, and answer it later."""
        content = event.get("content") or {}
        sender, event_id = event.get("sender"), event.get("event_id")
        session_id = content.get("session_id") if isinstance(content, dict) else None
        if (not isinstance(sender, str) or not isinstance(event_id, str)
                or sender == self.user_id or not isinstance(session_id, str)):
            return
        message = Undecrypted(EventId(event_id), room_id, UserId(sender), session_id, event,
                              self.clock())
        async with self.store.transaction():
            if await self.store.sender_of(message.event_id) is not None:
                return  # a replay of a message already decrypted and handled
            kept = await self.store.add_undecrypted(message)
        if not kept:
            return
        log.warning("cannot decrypt %s in %s from %s (session %s); asking for its key",
                    event_id, room_id, sender, session_id,
                    extra={"room_id": room_id, "event_id": event_id})
        await self._request_key(message)
        self._set_key_deadline(message.received_at)

    async def _request_key(self, message: Undecrypted) -> None:
        """Ask the sender's devices, and the bot's own other devices, for the room key."""
        event = self._megolm_event(message)
        if event is None or self.client.olm is None:
            return
        assert self.client.device_id is not None
        try:
            await self.client.to_device(event.as_key_request(
                message.sender, self.client.device_id, device_id=event.device_id or "*"))
            # nio's own request (to our devices) is also what makes it accept a forward.
            await self.client.request_room_key(event)
        except LocalProtocolError:
            pass  # already asked for this session
        except _NETWORK_ERRORS as error:
            log.info("could not ask for the key of %s yet: %s", message.event_id, error)

    @staticmethod
    def _megolm_event(message: Undecrypted) -> MegolmEvent | None:
        event = MegolmEvent.from_dict(message.source)
        if not isinstance(event, MegolmEvent):
            return None
        event.room_id = message.room_id
        return event

    async def _retry_undecrypted(self, listener: Listener) -> None:
        """Room keys arrived: handle every kept message they unlock, as if just received."""
        configured = set(self.room_ids.values())
        for message in await self.store.undecrypted():
            event = self._megolm_event(message)
            if event is None:
                continue
            try:
                decrypted = self.client.decrypt_event(event)
            except EncryptionError:
                continue
            source = getattr(decrypted, "source", None)
            if isinstance(source, dict):
                log.info("the key for %s from %s arrived; handling it now", message.event_id,
                         message.sender)
                await self._hand_over(message.room_id, source, listener, configured)
            async with self.store.transaction():
                await self.store.forget_undecrypted(message.event_id)

    async def _note_pending_keys(self) -> None:
        """After a restart: when the oldest unanswered kept message is due its answer."""
        unanswered = [m for m in await self.store.undecrypted() if not m.answered]
        if unanswered:
            self._set_key_deadline(unanswered[0].received_at)

    def _set_key_deadline(self, received_at: datetime) -> None:
        due = received_at + self.config.encryption.key_wait
        if self._key_deadline is None or due < self._key_deadline:
            self._key_deadline = due

    def _long_poll_ms(self) -> int:
        """A long poll, cut short when a kept message is due its answer."""
        if self._key_deadline is None:
            return LONG_POLL_MS
        left = (self._key_deadline - self.clock()).total_seconds() * 1000
        return max(0, min(LONG_POLL_MS, int(left) + 1))

    async def _answer_undecrypted(self, listener: Listener) -> None:
        """Once the key wait is over, say once per sender which messages stayed unreadable."""
        now = self.clock()
        if self._key_deadline is None or self._key_deadline > now:
            return
        self._key_deadline = None
        overdue: dict[tuple[RoomId, UserId], list[EventId]] = {}
        for message in await self.store.undecrypted():
            if message.answered:
                if now - message.received_at > UNDECRYPTED_KEPT_FOR:
                    async with self.store.transaction():
                        await self.store.forget_undecrypted(message.event_id)
            elif message.received_at + self.config.encryption.key_wait <= now:
                overdue.setdefault((message.room_id, message.sender), []).append(
                    message.event_id)
            else:
                self._set_key_deadline(message.received_at)
        for (room_id, sender), event_ids in overdue.items():
            log.warning("no key came for %s message(s) from %s in %s; telling the room",
                        len(event_ids), sender, room_id)
            await listener.cannot_read(room_id, sender, self._display_name(room_id, sender),
                                       event_ids)

    async def _is_encrypted(self, room_id: RoomId) -> bool:
        """Whether sending to the room must encrypt.

        nio knows a room is encrypted only from state it has synced; a new crypto store
        resuming an old sync position has seen none. So a room nio does not call
        encrypted is asked about once per run: nothing goes out in the clear by mistake.
        """
        if self.client.olm is None:
            return False
        room = self.client.rooms.get(room_id)
        if (room is not None and room.encrypted) or room_id in self.client.encrypted_rooms:
            return True
        if room_id in self._plain_rooms:
            return False
        response = await self.client.room_get_state_event(room_id, "m.room.encryption")
        if isinstance(response, RoomGetStateEventResponse):
            self.client.encrypted_rooms.add(room_id)
            if self.client.store is not None:
                self.client.store.save_encrypted_rooms({room_id})
            if room is not None:
                room.encrypted = True
            return True
        if response.status_code != "M_NOT_FOUND":
            raise DeliveryError(f"cannot tell whether {room_id} is encrypted "
                                f"({response.status_code} {response.message})", permanent=False)
        self._plain_rooms.add(room_id)
        return False

    async def _send_encrypted(self, room_id: RoomId, event_type: str, content: dict[str, Any],
                              tx_id: str) -> Any:
        """Encrypt and send any event, reactions included (nio 0.26 sends those in the
        clear); the relation stays outside the ciphertext, as the spec asks, so the
        homeserver can group reactions and threads."""
        room = self.client.rooms.get(room_id)
        if room is None:
            room = self.client.rooms[room_id] = MatrixRoom(room_id, self.user_id, encrypted=True)
        room.encrypted = True
        if not room.members_synced:
            members = await self.client.joined_members(room_id)
            if not isinstance(members, JoinedMembersResponse):
                raise DeliveryError(f"cannot list the members of {room_id} "
                                    f"({members.message})", permanent=False)
            if self.client.should_query_keys:
                await self._query_keys()
        if self.client.olm is not None and self.client.olm.should_share_group_session(room_id):
            sharing = self.client.sharing_session.get(room_id)
            if sharing is not None:
                await sharing.wait()
            else:
                await self.client.share_group_session(room_id, ignore_unverified_devices=True)
        content = dict(content)
        relation = content.pop("m.relates_to", None)
        try:
            encrypted_type, encrypted = self.client.encrypt(room_id, event_type, content)
        except (EncryptionError, LocalProtocolError) as error:
            raise DeliveryError(f"cannot encrypt for {room_id} yet ({error})",
                                permanent=False) from error
        if relation is not None:
            encrypted["m.relates_to"] = relation
        return await self._send_as_is(room_id, encrypted_type, encrypted, tx_id)

    async def _send_as_is(self, room_id: RoomId, event_type: str, content: dict[str, Any],
                          tx_id: str) -> Any:
        # nio's room_send refuses, when encryption is on, a room this run has not synced;
        # the request itself is the same.
        method, path, data = Api.room_send(self.client.access_token, room_id, event_type,
                                           content, tx_id)
        return await self.client._send(RoomSendResponse, method, path, data, (room_id,))

    # --- sending -------------------------------------------------------------------------------

    async def deliver(self, item: OutboxItem) -> str:
        event_type, content = message_content(item)
        try:
            if await self._is_encrypted(item.room_id):
                response = await self._send_encrypted(item.room_id, event_type, content,
                                                      item.txn_id)
            else:
                response = await self._send_as_is(item.room_id, event_type, content,
                                                  item.txn_id)
        except _NETWORK_ERRORS as error:
            raise DeliveryError(f"homeserver unreachable ({error})", permanent=False) from error
        if isinstance(response, RoomSendResponse):
            return response.event_id
        if response.status_code == "M_DUPLICATE_ANNOTATION":
            return ""  # this ✅ is already there: a re-send after an edit, or a retry
        permanent = response.status_code in _PERMANENT
        raise DeliveryError(f"{response.status_code} {response.message}", permanent=permanent)
