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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from nio import (
    Api,
    AsyncClient,
    AsyncClientConfig,
    EncryptionError,
    ErrorResponse,
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
    RoomLeaveResponse,
    RoomMessagesResponse,
    RoomResolveAliasResponse,
    RoomSendResponse,
    SyncResponse,
    UploadFilterResponse,
    WhoamiResponse,
)

from chatbot.bot import (
    Clock,
    DeliveryError,
    HomeserverUnavailable,
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
from chatbot.retry import CAP_DELAY, NETWORK_ERRORS, backoff_delay, call_homeserver, is_transient
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
# How long (seconds) a call is retried in place before its caller moves on and tries
# again later: the sync loop waits for it, and so does every room's next command.
CHAIR_CHECK_PATIENCE = 30.0
JOIN_PATIENCE = 30.0
KEYS_PATIENCE = 15.0
FILTER_PATIENCE = 10.0
# A join still failing after JOIN_PATIENCE is tried again after later syncs, this far apart at most.
JOIN_RETRY_CAP = 300.0
# A failed "could not read" answer is tried again this much later.
ANSWER_RETRY = timedelta(minutes=1)


class Listener(Protocol):
    """What the sync loop reports to: the bot's core."""

    async def handle(self, event: Incoming) -> None: ...

    async def handle_direct(self, message: IncomingMessage) -> None: ...

    async def follow_upgrade(self, old_room_id: RoomId, new_room_id: RoomId) -> None: ...

    async def cannot_read(self, room_id: RoomId, sender: UserId, display_name: str,
                          event_ids: list[EventId]) -> None: ...

    async def owed_since(self) -> datetime: ...


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
class _OwedJoin:
    reason: str
    direct: bool
    failures: int
    retry_at: datetime


def _not_in_room(response: ErrorResponse) -> bool:
    """Whether a leave or forget was refused because the bot is not in the room: for
    leaving, that is success (a repeated leave job, a room left by hand)."""
    return response.status_code in ("M_FORBIDDEN", "M_NOT_FOUND") and not is_transient(response)


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


def sent_since(events: list[dict[str, Any]], started_at: datetime) -> list[dict[str, Any]]:
    """The events sent at or after `started_at`: on the bot's very first sync, what was
    sent before the bot first started is history, and what came after is for it.

    Compares the sender's homeserver clock with ours; an event that has no time is history.
    """
    threshold = started_at.timestamp() * 1000
    return [event for event in events
            if isinstance(stamp := event.get("origin_server_ts"), int | float)
            and not isinstance(stamp, bool) and stamp >= threshold]


async def exchange_keys(
    client: AsyncClient, on_device_keys: Callable[[KeysQueryResponse], None] | None = None,
    *, patience: float | None = KEYS_PATIENCE,
) -> KeysUploadError | None:
    """What an encrypting client owes the homeserver after each sync (nio's own
    sync_forever does the same): its one-time keys, the device lists of people it shares
    encrypted rooms with, Olm sessions, and queued to-device messages (room keys, key
    requests). `on_device_keys` sees each device-list answer; a refused upload is returned.

    Each call is retried through faults for `patience` seconds; what is still owed then
    (nio remembers) waits for the next sync, and a network error is raised.
    """
    if client.olm is None:
        return None
    refused = None
    if client.should_upload_keys:
        uploaded = await call_homeserver("uploading encryption keys", client.keys_upload,
                                         give_up_after=patience)
        if is_transient(uploaded):
            return None  # not a refusal: the homeserver is having trouble
        refused = uploaded if isinstance(uploaded, KeysUploadError) else None
    if client.should_query_keys:
        queried = await call_homeserver("querying device keys", client.keys_query,
                                        give_up_after=patience)
        if is_transient(queried):
            return refused
        if on_device_keys is not None and isinstance(queried, KeysQueryResponse):
            on_device_keys(queried)
    if client.should_claim_keys:
        users = client.get_users_for_key_claiming()
        claimed = await call_homeserver("claiming one-time keys",
                                        lambda: client.keys_claim(users),
                                        give_up_after=patience)
        if is_transient(claimed):
            return refused
    # nio drops each message from its queue once sent, so a retry sends only the rest.
    await call_homeserver("sending to-device messages", client.send_to_device_messages,
                          give_up_after=patience)
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
        # Joins that kept failing: tried again after later syncs (an invite comes once).
        self._joins_owed: dict[RoomId, _OwedJoin] = {}
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
            whoami = await call_homeserver("checking the access token", self.client.whoami)
            if not isinstance(whoami, WhoamiResponse):
                raise LoginFailed(f"the access token was refused ({whoami.message}); "
                                  "check matrix.access_token")
            session = Session(matrix.homeserver, whoami.user_id, whoami.device_id or "",
                              matrix.access_token)
            save_session(path, session)
        elif session is None:
            response = await call_homeserver("logging in", lambda: self.client.login(
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
        joined = await call_homeserver("listing joined rooms", self.client.joined_rooms)
        already = set(joined.rooms) if isinstance(joined, JoinedRoomsResponse) else set()
        for meeting in self.config.meetings:
            if meeting.room not in by_reference:
                by_reference[meeting.room] = await self._configured_room(meeting.room, already)
            room_id = by_reference[meeting.room]
            if room_id is not None:
                resolved[meeting.id] = await self._latest_room(room_id, already)
        self.room_ids = resolved
        return resolved

    async def _latest_room(self, room_id: RoomId, already: set[str]) -> RoomId:
        """The room's latest upgrade the bot has followed, joined."""
        latest = await self.store.replacement_room(room_id)
        if latest != room_id and latest not in already:
            await self._join(latest, f"the upgrade of {room_id}")
        return latest

    async def _configured_room(self, reference: str, already: set[str]) -> RoomId | None:
        """The room a meeting's `room` names, joined if the homeserver lets the bot in."""
        room_id = reference
        if reference.startswith("#"):
            # Retried for as long as it takes: the bot has nothing to do without its rooms.
            alias = await call_homeserver("resolving " + reference,
                                          lambda: self.client.room_resolve_alias(reference))
            if not isinstance(alias, RoomResolveAliasResponse):
                log.error("room %s cannot be found (%s); check the meeting's `room`",
                          reference, alias.message)
                return None
            room_id = alias.room_id
        if room_id not in already:
            await self._join(RoomId(room_id), "a configured room")
        return RoomId(room_id)

    async def _join(self, room_id: RoomId, reason: str, *, direct: bool = False,
                    patience: float | None = None) -> bool:
        """Join a room, retried through faults for `patience` seconds. A join that still
        cannot be made then is owed, and tried again after later syncs; a refusal
        (not invited, banned) waits for an invite."""
        try:
            response: Any = await call_homeserver(
                "joining " + room_id, lambda: self.client.join(room_id),
                give_up_after=JOIN_PATIENCE if patience is None else patience)
            problem = None if isinstance(response, JoinResponse) else response.message
            transient = is_transient(response)
        except NETWORK_ERRORS as error:
            problem, transient = str(error) or type(error).__name__, True
        if problem is None:
            self._joins_owed.pop(room_id, None)
            log.info("joined %s: %s", room_id, reason)
            if direct and room_id not in self.room_ids.values():
                self.direct_rooms.add(room_id)
                async with self.store.transaction():
                    await self.store.add_direct_room(room_id, self.clock())
            return True
        if not transient:
            self._joins_owed.pop(room_id, None)
            log.warning("cannot join %s (%s) yet: %s; will join when invited", room_id, reason,
                        problem)
            return False
        owed = self._joins_owed.get(room_id)
        failures = owed.failures + 1 if owed is not None else 1
        retry_at = self.clock() + timedelta(seconds=backoff_delay(failures, cap=JOIN_RETRY_CAP))
        self._joins_owed[room_id] = _OwedJoin(reason, direct, failures, retry_at)
        if failures == 1:
            log.warning("cannot join %s (%s) yet: %s; trying again after later syncs",
                        room_id, reason, problem)
        return False

    async def _join_owed(self) -> None:
        """Try once more each join that kept failing, as its backoff allows."""
        now = self.clock()
        for room_id, owed in list(self._joins_owed.items()):
            if owed.retry_at <= now:
                await self._join(room_id, owed.reason, direct=owed.direct, patience=0)

    async def leave(self, room_id: RoomId) -> None:
        """Leave the room and forget it; a room the bot is not in counts as left."""
        try:
            left = await call_homeserver("leaving " + room_id,
                                         lambda: self.client.room_leave(room_id),
                                         give_up_after=JOIN_PATIENCE)
        except NETWORK_ERRORS as error:
            raise DeliveryError(f"homeserver unreachable ({error})", permanent=False) from error
        if not isinstance(left, RoomLeaveResponse) and not _not_in_room(left):
            raise DeliveryError(f"cannot leave {room_id} ({left.status_code} {left.message})",
                                permanent=not is_transient(left))
        # Forgetting only tidies the bot's room list on the homeserver: not worth a retry.
        try:
            forgot = await call_homeserver("forgetting " + room_id,
                                           lambda: self.client.room_forget(room_id),
                                           give_up_after=JOIN_PATIENCE)
        except NETWORK_ERRORS as error:
            log.info("left %s but could not forget it: %s", room_id, error)
        else:
            if isinstance(forgot, ErrorResponse) and not _not_in_room(forgot):
                log.info("left %s but could not forget it: %s", room_id, forgot.message)
        self.direct_rooms.discard(room_id)
        self._authority.pop(room_id, None)
        self._joins_owed.pop(room_id, None)
        log.info("left %s", room_id)

    # --- power levels ------------------------------------------------------------------

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        """The user's power level, from the room's state (kept until it changes).

        Retried through faults for a while; then HomeserverUnavailable, so the command
        waits for the homeserver instead of refusing a real chair.
        """
        authority = self._authority.get(room_id)
        if authority is None:
            try:
                response = await call_homeserver(
                    "reading power levels in " + room_id,
                    lambda: self.client.room_get_state(room_id),
                    give_up_after=CHAIR_CHECK_PATIENCE)
            except NETWORK_ERRORS as error:
                raise HomeserverUnavailable(
                    f"cannot read power levels in {room_id} ({error})") from error
            if is_transient(response):
                raise HomeserverUnavailable(
                    f"cannot read power levels in {room_id} ({response.message})")
            if not isinstance(response, RoomGetStateResponse):
                # Refused, say because the bot is no longer in the room: nobody there
                # outranks anyone as far as the bot can tell.
                log.warning("cannot read power levels in %s: %s", room_id, response.message)
                return 0
            authority = RoomAuthority.from_state(response.events)
            self._authority[room_id] = authority
        return authority.level(user_id)

    # --- sync ------------------------------------------------------------------------------

    async def sync_forever(self, listener: Listener) -> None:
        """Follow the homeserver until cancelled, handing each new event to `listener`.

        Faults are waited out (backoff with jitter, as `retry` does); only a login the
        homeserver no longer accepts ends it.
        """
        token = await self.store.get_meta(SYNC_TOKEN_KEY)
        self.direct_rooms = await self.store.direct_rooms()
        started_at = await listener.owed_since()
        filter_ = await self._stored_filter(sync_filter(self.timeline_limit))
        first_filter = first_sync_filter()
        await self._note_pending_keys()
        failures = 0
        while True:
            response: Any = None
            try:
                response = await self.client.sync(
                    timeout=self._long_poll_ms() if token is not None and self.ready.is_set()
                    else 0,
                    since=token, sync_filter=first_filter if token is None else filter_,
                )
            except NETWORK_ERRORS as error:
                problem = f"homeserver unreachable ({error or type(error).__name__})"
            else:
                problem = (None if isinstance(response, SyncResponse)
                           else f"{response.status_code} {response.message}")
            if problem is not None:
                if isinstance(response, ErrorResponse) and response.status_code in (
                        "M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
                    raise LoginFailed(f"the homeserver no longer accepts our login "
                                      f"({response.message}); delete "
                                      f"{self.config.data_dir / SESSION_FILE} to log in again")
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
            await self._process(response, token, listener, started_at)
            token = response.next_batch
            async with self.store.transaction():
                await self.store.set_meta(SYNC_TOKEN_KEY, token)
            self.metrics.sync_succeeded(self.clock())
            if self._joins_owed:
                await self._join_owed()
            if self.client.olm is not None:
                await self._crypto_upkeep(response, listener)
            if not self.ready.is_set():
                log.info("listening in %s rooms", len(set(self.room_ids.values())))
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
        configured = set(self.room_ids.values())
        now = self.clock()
        for room_id, invite in response.rooms.invite.items():
            await self._answer_invite(RoomId(room_id), invite.invite_state, configured)
        for room_id, info in response.rooms.join.items():
            room_id = RoomId(room_id)
            if room_id not in configured and room_id not in self.direct_rooms:
                continue
            events = [event.source for event in info.timeline.events]
            state = [getattr(event, "source", {}) for event in info.state]
            if any(e.get("type") == "m.room.power_levels" for e in events + state):
                self._authority.pop(room_id, None)  # re-read on the next chair command
            if since is None:
                events = await self._since_first_start(room_id, info.timeline, started_at)
                async with self.store.transaction():
                    await self.store.add_known_room(room_id, now)
            elif not await self.store.is_known_room(room_id):
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

    async def _hand_over(self, room_id: RoomId, event: dict[str, Any], listener: Listener,
                         configured: set[RoomId]) -> None:
        room_names = functools.partial(self._display_name, room_id)
        incoming = incoming_event(event, room_id, self.user_id, room_names)
        if incoming is None:
            return
        if room_id in configured:
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

    async def _answer_invite(
        self, room_id: RoomId, invite_state: list[Any], configured: set[RoomId]
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
        await self._join(room_id, reason, direct=direct and room_id not in configured)

    async def _follow_upgrade(self, old: RoomId, new: RoomId, listener: Listener) -> None:
        """Move every meeting of an upgraded room to its successor, and join it."""
        if new in self.room_ids.values():
            return
        self.room_ids = {series: new if room == old else room
                         for series, room in self.room_ids.items()}
        await listener.follow_upgrade(old, new)
        await self._join(new, f"the upgrade of {old}")

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
            page_start = start
            response = await call_homeserver(f"fetching missed messages in {room_id}", lambda: (
                self.client.room_messages(
                    room_id, start=page_start, end=since, direction=MessageDirection.back,
                    limit=100, message_filter={"types": [
                        "m.room.message", "m.room.encrypted", "m.reaction",
                        "m.room.redaction", "m.room.tombstone"]})))
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

    def _display_name(self, room_id: RoomId, user_id: str) -> str:
        room = self.client.rooms.get(room_id)
        user = room.users.get(user_id) if room is not None else None
        if user is not None and user.display_name:
            return user.display_name
        return user_id.removeprefix("@").split(":", 1)[0]

    # --- encryption ----------------------------------------------------------------------

    async def _crypto_upkeep(self, response: SyncResponse, listener: Listener) -> None:
        """After a sync: keys owed (`exchange_keys`), kept messages that new room keys
        unlock, and the answer for those no key came for. The sync position is saved
        already, so a failure here waits for the next sync rather than end the loop."""
        try:
            refused = await exchange_keys(self.client, self._apply_trust)
            if refused is not None:
                log.error("the homeserver refused this device's encryption keys (%s); "
                          "delete %s and %s to start as a new device", refused.message,
                          self.config.data_dir / SESSION_FILE, self.crypto_dir)
        except NETWORK_ERRORS as error:
            log.info("encryption upkeep postponed: homeserver unreachable (%s)", error)
        except Exception:  # nio's crypto state is not worth the sync loop: retry next time
            log.exception("encryption upkeep failed; trying again after the next sync")
        try:
            if not self.ready.is_set() or any(
                    isinstance(event, RoomKeyEvent | ForwardedRoomKeyEvent)
                    for event in response.to_device_events):
                await self._retry_undecrypted(listener)
            await self._answer_undecrypted(listener)
        except Exception:  # the store, say: the messages stay kept for the next pass
            log.exception("handling undecryptable messages failed; trying again later")
            self._answer_due(self.clock() + ANSWER_RETRY)

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
        request = event.as_key_request(message.sender, self.client.device_id,
                                       device_id=event.device_id or "*")
        try:
            await call_homeserver("asking for a room key", lambda: self.client.to_device(request),
                                  give_up_after=KEYS_PATIENCE)
            # nio's own request (to our devices) is also what makes it accept a forward.
            await call_homeserver("asking our devices for a room key",
                                  lambda: self.client.request_room_key(event),
                                  give_up_after=KEYS_PATIENCE)
        except LocalProtocolError:
            pass  # already asked for this session
        except NETWORK_ERRORS as error:
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
        self._answer_due(received_at + self.config.encryption.key_wait)

    def _answer_due(self, due: datetime) -> None:
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
            try:
                await listener.cannot_read(room_id, sender,
                                           self._display_name(room_id, sender), event_ids)
            except Exception:  # the store, say: still unanswered, so tried again later
                log.exception("could not answer the unreadable messages from %s in %s; "
                              "trying again in %s", sender, room_id, ANSWER_RETRY)
                self._answer_due(now + ANSWER_RETRY)

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
        except NETWORK_ERRORS as error:
            raise DeliveryError(f"homeserver unreachable ({error})", permanent=False) from error
        if isinstance(response, RoomSendResponse):
            return response.event_id
        if response.status_code == "M_DUPLICATE_ANNOTATION":
            return ""  # this ✅ is already there: a re-send after an edit, or a retry
        permanent = response.status_code in _PERMANENT
        raise DeliveryError(f"{response.status_code} {response.message}", permanent=permanent)
