"""Encrypted rooms: the device's keys, trust in people's devices, messages that cannot be
decrypted yet (kept, their keys asked for, answered once), and encrypting what is sent."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from nio import (
    AsyncClient,
    EncryptionError,
    ForwardedRoomKeyEvent,
    JoinedMembersResponse,
    KeysQueryResponse,
    KeysUploadError,
    LocalProtocolError,
    MatrixRoom,
    MegolmEvent,
    RoomGetStateEventResponse,
    RoomKeyEvent,
    SyncResponse,
)

from chatbot.bot import Clock, DeliveryError
from chatbot.config import Config
from chatbot.matrix.rooms import RoomDirectory
from chatbot.matrix.sending import send_as_is
from chatbot.matrix.session import SESSION_FILE, crypto_dir
from chatbot.model import EventId, RoomId, UserId
from chatbot.retry import NETWORK_ERRORS, call_homeserver, is_transient
from chatbot.store import Store, Undecrypted

if TYPE_CHECKING:
    from chatbot.matrix.intake import Listener

log = logging.getLogger(__name__)

# A message no key ever came for is answered, then kept this long in case one does.
UNDECRYPTED_KEPT_FOR = timedelta(days=7)
# How long (seconds) each key request is retried in place; what is still owed then
# waits for the next sync.
KEYS_PATIENCE = 15.0
# A failed "could not read" answer is tried again this much later.
ANSWER_RETRY = timedelta(minutes=1)

HandOver = Callable[[RoomId, dict[str, Any]], Awaitable[None]]


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


class Encryption:
    """The bot's device in encrypted rooms."""

    def __init__(self, client: AsyncClient, config: Config, store: Store, rooms: RoomDirectory,
                 *, clock: Clock) -> None:
        self.client = client
        self.config = config
        self.store = store
        self.rooms = rooms
        self.clock = clock
        # Rooms found unencrypted by asking the homeserver (rooms this run has not synced).
        self._plain_rooms: set[RoomId] = set()
        # When the oldest unanswered undecryptable message is due its answer.
        self._key_deadline: datetime | None = None

    @property
    def enabled(self) -> bool:
        return self.client.olm is not None

    async def upkeep(self, response: SyncResponse, listener: Listener,
                     hand_over: HandOver, *, first: bool) -> None:
        """After a sync: keys owed (`exchange_keys`), kept messages that new room keys
        unlock, and the answer for those no key came for. The sync position is saved
        already, so a failure here waits for the next sync rather than end the loop."""
        try:
            refused = await exchange_keys(self.client, self._apply_trust)
            if refused is not None:
                log.error("the homeserver refused this device's encryption keys (%s); "
                          "delete %s and %s to start as a new device", refused.message,
                          self.config.data_dir / SESSION_FILE, crypto_dir(self.config))
        except NETWORK_ERRORS as error:
            log.info("encryption upkeep postponed: homeserver unreachable (%s)", error)
        except Exception:  # nio's crypto state is not worth the sync loop: retry next time
            log.exception("encryption upkeep failed; trying again after the next sync")
        try:
            if first or any(
                    isinstance(event, RoomKeyEvent | ForwardedRoomKeyEvent)
                    for event in response.to_device_events):
                await self._retry_undecrypted(hand_over)
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
                        or (user_id == self.client.user_id and device.id == self.client.device_id)):
                    continue
                if tofu and known_user:
                    log.warning("%s added device %s (%s); trusting it on first use",
                                user_id, device.id, device.display_name or "no name")
                self.client.verify_device(device)

    async def keep_undecrypted(self, room_id: RoomId, event: dict[str, Any]) -> None:
        """Keep a message nio could not decrypt, ask for its key, and answer it later."""
        content = event.get("content") or {}
        sender, event_id = event.get("sender"), event.get("event_id")
        session_id = content.get("session_id") if isinstance(content, dict) else None
        if (not isinstance(sender, str) or not isinstance(event_id, str)
                or sender == self.client.user_id or not isinstance(session_id, str)):
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

    async def _retry_undecrypted(self, hand_over: HandOver) -> None:
        """Room keys arrived: handle every kept message they unlock, as if just received."""
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
                await hand_over(message.room_id, source)
            async with self.store.transaction():
                await self.store.forget_undecrypted(message.event_id)

    async def note_pending_keys(self) -> None:
        """After a restart: when the oldest unanswered kept message is due its answer."""
        unanswered = [m for m in await self.store.undecrypted() if not m.answered]
        if unanswered:
            self._set_key_deadline(unanswered[0].received_at)

    def _set_key_deadline(self, received_at: datetime) -> None:
        self._answer_due(received_at + self.config.encryption.key_wait)

    def _answer_due(self, due: datetime) -> None:
        if self._key_deadline is None or due < self._key_deadline:
            self._key_deadline = due

    def long_poll_ms(self, longest: int) -> int:
        """A long poll, cut short when a kept message is due its answer."""
        if self._key_deadline is None:
            return longest
        left = (self._key_deadline - self.clock()).total_seconds() * 1000
        return max(0, min(longest, int(left) + 1))

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
                                           self.rooms.display_name(room_id, sender), event_ids)
            except Exception:  # the store, say: still unanswered, so tried again later
                log.exception("could not answer the unreadable messages from %s in %s; "
                              "trying again in %s", sender, room_id, ANSWER_RETRY)
                self._answer_due(now + ANSWER_RETRY)

    async def is_encrypted(self, room_id: RoomId) -> bool:
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

    async def send_encrypted(self, room_id: RoomId, event_type: str, content: dict[str, Any],
                              tx_id: str) -> Any:
        """Encrypt and send any event, reactions included (nio 0.26 sends those in the
        clear); the relation stays outside the ciphertext, as the spec asks, so the
        homeserver can group reactions and threads."""
        room = self.client.rooms.get(room_id)
        if room is None:
            room = self.client.rooms[room_id] = MatrixRoom(room_id, self.client.user_id,
                                                           encrypted=True)
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
        return await send_as_is(self.client, room_id, encrypted_type, encrypted, tx_id)
