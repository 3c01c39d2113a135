"""The rooms the bot is in: its configured rooms (the one place their ids live), direct
chats, joins, invitations, upgrades, leaving, and who outranks whom in each."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from nio import (
    AsyncClient,
    ErrorResponse,
    JoinedRoomsResponse,
    JoinResponse,
    RoomCreateResponse,
    RoomGetStateEventResponse,
    RoomGetStateResponse,
    RoomLeaveResponse,
    RoomPreset,
    RoomResolveAliasResponse,
)

from chatbot.bot import Clock, DeliveryError, HomeserverUnavailable
from chatbot.config import Config
from chatbot.model import RoomId, UserId
from chatbot.power import RoomAuthority
from chatbot.retry import NETWORK_ERRORS, backoff_delay, call_homeserver, is_transient
from chatbot.store import Store

log = logging.getLogger(__name__)

# How long (seconds) a call is retried in place before its caller moves on: the sync
# loop waits for it, and with it every room's next command.
CHAIR_CHECK_PATIENCE = 30.0
JOIN_PATIENCE = 30.0
# A join still failing after JOIN_PATIENCE is tried again after later syncs, this far
# apart at most (an invitation comes in one sync only).
JOIN_RETRY_CAP = 300.0
# A state event in each direct chat the bot opens, naming the person it is with.
DIRECT_MARK = "org.chatbot.direct"


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


def _not_in_room(response: ErrorResponse) -> bool:
    """Whether a leave or forget was refused because the bot is not in the room: for
    leaving, that is success (a leave job run again, a room left by hand)."""
    return response.status_code in ("M_FORBIDDEN", "M_NOT_FOUND") and not is_transient(response)


@dataclass(frozen=True, slots=True)
class _OwedJoin:
    reason: str
    direct: bool
    failures: int
    retry_at: datetime


class RoomDirectory:
    """Which rooms are the bot's, and getting into and out of them."""

    def __init__(self, client: AsyncClient, config: Config, store: Store, *,
                 clock: Clock) -> None:
        self.client = client
        self.config = config
        self.store = store
        self.clock = clock
        # Each meeting's room, following upgrades.
        self.room_ids: dict[str, RoomId] = {}
        self.direct_rooms: set[RoomId] = set()
        # Joins that kept failing, tried again after later syncs.
        self.joins_owed: dict[RoomId, _OwedJoin] = {}
        self._authority: dict[RoomId, RoomAuthority] = {}

    def configured(self) -> set[RoomId]:
        return set(self.room_ids.values())

    def is_ours(self, room_id: RoomId) -> bool:
        """A configured room or a direct chat: the rooms whose events the bot reads."""
        return room_id in self.direct_rooms or room_id in self.room_ids.values()

    async def load_direct_rooms(self) -> None:
        self.direct_rooms = await self.store.direct_rooms()

    async def resolve(self) -> dict[str, RoomId]:
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
            await self.join(latest, f"the upgrade of {room_id}")
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
            await self.join(RoomId(room_id), "a configured room")
        return RoomId(room_id)

    def move(self, old: RoomId, new: RoomId) -> bool:
        """Move every meeting of an upgraded room to its successor; False if done before."""
        if new in self.room_ids.values():
            return False
        self.room_ids = {series: new if room == old else room
                         for series, room in self.room_ids.items()}
        return True

    async def answer_invite(self, room_id: RoomId, invite_state: list[Any]) -> None:
        """Join configured rooms, direct chats, and rooms an allowed inviter asks for."""
        inviter, direct = invitation(invite_state, self.client.user_id)
        configured = room_id in self.room_ids.values()
        if configured:
            reason = "a configured room"
        elif direct:
            reason = f"a direct chat with {inviter}"
        elif inviter in self.config.allowed_inviters:
            reason = f"invited by {inviter}, an allowed inviter"
        else:
            log.info("not joining %s: not configured, and %s is not an allowed inviter",
                     room_id, inviter)
            return
        await self.join(room_id, reason, direct=direct and not configured)

    async def join(self, room_id: RoomId, reason: str, *, direct: bool = False,
                   patience: float | None = None) -> bool:
        """Join a room, retried through faults for `patience` seconds. A join that still
        cannot be made then is owed, and tried again after later syncs; a refusal
        (not invited, banned) waits for an invitation."""
        try:
            response: Any = await call_homeserver(
                "joining " + room_id, lambda: self.client.join(room_id),
                give_up_after=JOIN_PATIENCE if patience is None else patience)
            problem = None if isinstance(response, JoinResponse) else response.message
            transient = is_transient(response)
        except NETWORK_ERRORS as error:
            problem, transient = str(error) or type(error).__name__, True
        if problem is None:
            self.joins_owed.pop(room_id, None)
            log.info("joined %s: %s", room_id, reason)
            if direct and room_id not in self.room_ids.values():
                self.direct_rooms.add(room_id)
                async with self.store.transaction():
                    await self.store.add_direct_room(room_id, self.clock())
            return True
        if not transient:
            self.joins_owed.pop(room_id, None)
            log.warning("cannot join %s (%s) yet: %s; will join when invited", room_id, reason,
                        problem)
            return False
        owed = self.joins_owed.get(room_id)
        failures = owed.failures + 1 if owed is not None else 1
        retry_at = self.clock() + timedelta(seconds=backoff_delay(failures, cap=JOIN_RETRY_CAP))
        self.joins_owed[room_id] = _OwedJoin(reason, direct, failures, retry_at)
        if failures == 1:
            log.warning("cannot join %s (%s) yet: %s; trying again after later syncs",
                        room_id, reason, problem)
        return False

    async def join_owed(self) -> None:
        """Try once more each join that kept failing, as its backoff allows."""
        now = self.clock()
        for room_id, owed in list(self.joins_owed.items()):
            if owed.retry_at <= now:
                await self.join(room_id, owed.reason, direct=owed.direct, patience=0)

    async def open_direct(self, user_id: UserId) -> RoomId:
        """Open a direct chat with a person: a private room they are invited to, flagged
        direct so their client lists it with their direct messages, and marked as the
        bot's chat with them (`find_direct` looks for the mark). Unencrypted: the
        invitee has no session to share keys with until they join. Raises DeliveryError."""
        mark = {"type": DIRECT_MARK, "state_key": "", "content": {"user_id": user_id}}
        try:
            created = await call_homeserver(
                "opening a direct chat with " + user_id,
                lambda: self.client.room_create(is_direct=True, invite=[user_id],
                                                preset=RoomPreset.trusted_private_chat,
                                                initial_state=[mark]),
                give_up_after=JOIN_PATIENCE)
        except NETWORK_ERRORS as error:
            raise DeliveryError(f"homeserver unreachable ({error})", permanent=False) from error
        if not isinstance(created, RoomCreateResponse):
            raise DeliveryError(f"cannot open a direct chat with {user_id} "
                                f"({created.status_code} {created.message})",
                                permanent=not is_transient(created))
        room_id = RoomId(created.room_id)
        self.direct_rooms.add(room_id)
        return room_id

    async def find_direct(self, user_id: UserId) -> RoomId | None:
        """A direct chat with the person the bot opened before and is still in, with
        them invited or joined: what an `open_direct` cut short by a crash (or whose
        answer was lost) left behind. Reads the state of each joined room but the meeting
        rooms (only after such a cut, so rarely); raises DeliveryError."""
        try:
            joined = await call_homeserver("listing joined rooms", self.client.joined_rooms,
                                           give_up_after=JOIN_PATIENCE)
            if not isinstance(joined, JoinedRoomsResponse):
                raise DeliveryError(f"cannot list joined rooms ({joined.message})",
                                    permanent=False)
            meeting_rooms = set(self.room_ids.values())
            for room_id in joined.rooms:
                if room_id in meeting_rooms:
                    continue
                mark = await self._state_content(room_id, DIRECT_MARK, "")
                if mark is None or mark.get("user_id") != user_id:
                    continue
                member = await self._state_content(room_id, "m.room.member", user_id)
                if member is not None and member.get("membership") in ("invite", "join"):
                    self.direct_rooms.add(RoomId(room_id))
                    return RoomId(room_id)
        except NETWORK_ERRORS as error:
            raise DeliveryError(f"homeserver unreachable ({error})", permanent=False) from error
        return None

    async def _state_content(self, room_id: str, event_type: str,
                             state_key: str) -> dict[str, Any] | None:
        """A state event's content; None when the room has none (or hides it)."""
        response = await call_homeserver(
            f"reading {event_type} in {room_id}",
            lambda: self.client.room_get_state_event(room_id, event_type, state_key),
            give_up_after=JOIN_PATIENCE)
        if isinstance(response, RoomGetStateEventResponse):
            return response.content
        if is_transient(response):
            raise DeliveryError(f"cannot read {event_type} in {room_id} "
                                f"({response.message})", permanent=False)
        return None

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
        self.joins_owed.pop(room_id, None)
        log.info("left %s", room_id)

    # --- power levels ------------------------------------------------------------------

    def power_changed(self, room_id: RoomId) -> None:
        """The room's power levels changed: read them again on the next chair command."""
        self._authority.pop(room_id, None)

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

    def display_name(self, room_id: RoomId, user_id: str) -> str:
        """The member's name in the room as nio knows it, else their user id's localpart."""
        room = self.client.rooms.get(room_id)
        user = room.users.get(user_id) if room is not None else None
        if user is not None and user.display_name:
            return user.display_name
        return user_id.removeprefix("@").split(":", 1)[0]
