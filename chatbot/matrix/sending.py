"""Sending: an outbox item becomes a Matrix event, encrypted where the room is."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nio import Api, AsyncClient, RoomGetEventResponse, RoomSendResponse

from chatbot.bot import DeliveryError
from chatbot.model import RoomId
from chatbot.polls import POLL_END, POLL_START
from chatbot.render import markdown_to_html
from chatbot.retry import NETWORK_ERRORS
from chatbot.store import OutboxItem

if TYPE_CHECKING:
    from chatbot.matrix.encryption import Encryption

# Errors that retrying the same request cannot fix.
_PERMANENT = {"M_FORBIDDEN", "M_NOT_FOUND", "M_BAD_JSON", "M_NOT_JSON", "M_TOO_LARGE",
              "M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"}


def message_content(item: OutboxItem) -> tuple[str, dict[str, Any]]:
    """The Matrix event type and content for an outbox item. Markdown becomes HTML here only."""
    payload = item.payload
    if item.kind in (POLL_START, POLL_END):
        return payload["type"], payload["content"]
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
    if payload.get("mentions") is not None:
        # Intentional mentions (Matrix 1.7): the people named are pinged, nobody else;
        # the pill in the HTML is what older clients go by.
        content["m.mentions"] = {"user_ids": list(payload["mentions"])}
    return "m.room.message", content


async def send_as_is(client: AsyncClient, room_id: RoomId, event_type: str,
                     content: dict[str, Any], tx_id: str) -> Any:
    """Send an event as it is (already encrypted, or for a room that is not)."""
    # nio's room_send refuses, when encryption is on, a room this run has not synced;
    # the request itself is the same.
    method, path, data = Api.room_send(client.access_token, room_id, event_type, content, tx_id)
    return await client._send(RoomSendResponse, method, path, data, (room_id,))


class Sender:
    """The outbox's door to Matrix: one item, one event, an idempotent transaction id."""

    def __init__(self, client: AsyncClient, encryption: Encryption) -> None:
        self.client = client
        self.encryption = encryption

    async def deliver(self, item: OutboxItem) -> str:
        """Send one outbox item; its event id, or DeliveryError."""
        event_type, content = message_content(item)
        try:
            if await self.encryption.is_encrypted(item.room_id):
                response = await self.encryption.send_encrypted(
                    item.room_id, event_type, content, item.txn_id)
            else:
                response = await send_as_is(self.client, item.room_id, event_type, content,
                                            item.txn_id)
        except NETWORK_ERRORS as error:
            raise DeliveryError(f"homeserver unreachable ({error})", permanent=False) from error
        if isinstance(response, RoomSendResponse):
            return response.event_id
        if response.status_code == "M_DUPLICATE_ANNOTATION":
            return ""  # this ✅ is already there: a re-send after an edit, or a retry
        permanent = response.status_code in _PERMANENT
        raise DeliveryError(f"{response.status_code} {response.message}", permanent=permanent)

    async def event_time(self, room_id: RoomId, event_id: str) -> datetime:
        """The homeserver's timestamp of an event (`origin_server_ts`), or DeliveryError."""
        try:
            response = await self.client.room_get_event(room_id, event_id)
        except NETWORK_ERRORS as error:
            raise DeliveryError(f"homeserver unreachable ({error})", permanent=False) from error
        if not isinstance(response, RoomGetEventResponse):
            raise DeliveryError(f"{response.status_code} {response.message}", permanent=False)
        stamp = response.event.source["origin_server_ts"]
        return datetime.fromtimestamp(stamp / 1000, UTC)
