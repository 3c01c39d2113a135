"""The Matrix edge: the only package that imports nio.

By concern: `session` (logging in, keeping the login), `rooms` (the configured rooms'
ids, joins, invitations, upgrades, leaving, power levels), `intake` (the sync loop, events
in), `encryption` (keys, undecryptable messages, encrypting) and `sending` (outbox items
out). `MatrixEdge` puts them together for the composition root and serves as the core's
`Transport`. Requests made for the outbox fail fast as a `DeliveryError`, and the outbox
backs off; every other request to the homeserver goes through `chatbot.retry`.
"""

from __future__ import annotations

from datetime import datetime

from chatbot.bot import Clock
from chatbot.config import Config
from chatbot.matrix.encryption import Encryption, exchange_keys
from chatbot.matrix.intake import (
    SYNC_TOKEN_KEY,
    Intake,
    Listener,
    after_own_join,
    first_sync_filter,
    incoming_event,
    sent_since,
    sync_filter,
)
from chatbot.matrix.rooms import RoomDirectory, invitation, replacement_room
from chatbot.matrix.sending import Sender, message_content
from chatbot.matrix.session import (
    CRYPTO_DIR,
    SESSION_FILE,
    LoginFailed,
    Session,
    load_session,
    log_in,
    make_client,
    save_session,
)
from chatbot.metrics import Metrics
from chatbot.model import RoomId, UserId
from chatbot.store import OutboxItem, Store

__all__ = [
    "CRYPTO_DIR", "SESSION_FILE", "SYNC_TOKEN_KEY", "Listener", "LoginFailed", "MatrixEdge",
    "Session", "after_own_join", "exchange_keys", "first_sync_filter", "incoming_event",
    "invitation", "load_session", "message_content", "replacement_room", "save_session",
    "sent_since", "sync_filter",
]


class MatrixEdge:
    """One logged-in nio client serving the bot: sync in, outbox out."""

    def __init__(
        self, config: Config, store: Store, *, clock: Clock, timeline_limit: int = 50,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics(clock)
        self.client = make_client(config)
        self.rooms = RoomDirectory(self.client, config, store, clock=clock)
        self.encryption = Encryption(self.client, config, store, self.rooms, clock=clock)
        self.sender = Sender(self.client, self.encryption)
        self.intake = Intake(self.client, config, store, self.rooms, self.encryption,
                             clock=clock, metrics=self.metrics,
                             timeline_limit=timeline_limit)
        self.ready = self.intake.ready

    @property
    def user_id(self) -> str:
        return self.client.user_id

    def own_name(self, room_id: RoomId) -> str:
        """The bot's display name in a room (its user id's localpart if nio has not seen it)."""
        return self.rooms.display_name(room_id, self.client.user_id)

    @property
    def room_ids(self) -> dict[str, RoomId]:
        return self.rooms.room_ids

    async def login(self) -> None:
        await log_in(self.client, self.config)

    async def resolve_rooms(self) -> dict[str, RoomId]:
        return await self.rooms.resolve()

    async def sync_forever(self, listener: Listener) -> None:
        await self.intake.sync_forever(listener)

    async def close(self) -> None:
        await self.client.close()

    # --- the core's Transport ------------------------------------------------------------

    async def deliver(self, item: OutboxItem) -> str:
        if item.kind == "react":
            self.metrics.acknowledging(item.payload["event_id"])
        return await self.sender.deliver(item)

    async def open_direct(self, user_id: UserId) -> RoomId:
        return await self.rooms.open_direct(user_id)

    async def find_direct(self, user_id: UserId) -> RoomId | None:
        return await self.rooms.find_direct(user_id)

    async def event_time(self, room_id: RoomId, event_id: str) -> datetime:
        return await self.sender.event_time(room_id, event_id)

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        return await self.rooms.power_level(room_id, user_id)

    async def leave(self, room_id: RoomId) -> None:
        await self.rooms.leave(room_id)
