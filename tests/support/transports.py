"""A transport for the bot's core in unit tests: it records what would be sent."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from chatbot.model import RoomId, UserId
from chatbot.store import OutboxItem


class RecordingTransport:
    """Deliveries recorded instead of sent; power levels from a table (others: 0)."""

    def __init__(self, power: Mapping[UserId, float] | None = None) -> None:
        self.power = dict(power or {})
        self.sent: list[OutboxItem] = []
        self.left: list[RoomId] = []
        self.sent_at: datetime | None = None
        self.opened: list[UserId] = []

    async def deliver(self, item: OutboxItem) -> str:
        self.sent.append(item)
        return f"$sent{len(self.sent)}"

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        return self.power.get(user_id, 0)

    async def open_direct(self, user_id: UserId) -> RoomId:
        self.opened.append(user_id)
        return RoomId(f"!direct-{len(self.opened)}:example.org")

    async def find_direct(self, user_id: UserId) -> RoomId | None:
        """The latest direct chat opened with the person (the homeserver keeps them)."""
        numbers = [n for n, opened in enumerate(self.opened, 1) if opened == user_id]
        return RoomId(f"!direct-{numbers[-1]}:example.org") if numbers else None

    async def event_time(self, room_id: RoomId, event_id: str) -> datetime:
        """When the homeserver would have stamped an event: `sent_at`, else now."""
        return self.sent_at or datetime.now(UTC)

    async def leave(self, room_id: RoomId) -> None:
        self.left.append(room_id)

    def texts(self) -> list[str]:
        return [str(item.payload.get("text", "")) for item in self.sent]

    def chairs_told(self) -> list[str]:
        return [text for text in self.texts() if text.startswith("**Chairs:**")]
