"""The baseline: a minimal matrix-nio bot that reacts ✅ to each text message, and nothing else.

It is the floor chatbot is measured against: one long-poll sync loop, one reaction per
message, no parsing, no database. With ANSWER_PREFIX in the environment it answers only
the messages that start with it, so that the benchmark can address each message to one of
the two bots in a room they share. Like chatbot it asks for the last 50 events per room
and pages back through what a limited sync left out, so that it loses nothing either.
With a key store (DEVICE_ID and STORE_DIR) it also decrypts, as nio does for any client
with encryption on, and its ✅ in an encrypted room goes out encrypted: the floor for
chatbot in the same encrypted room. Run as its own process, as chatbot is:

    python -m benchmarks.baseline_bot HOMESERVER USER_ID ACCESS_TOKEN [DEVICE_ID STORE_DIR]

It prints `listening` on standard error once its first sync is done; history from
before that is ignored, as chatbot ignores it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any
from uuid import uuid4

from nio import (
    Api,
    AsyncClient,
    AsyncClientConfig,
    MessageDirection,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
)

SYNC_FILTER: dict[str, Any] = {
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
    "room": {
        "account_data": {"not_types": ["*"]},
        "ephemeral": {"not_types": ["*"]},
        "state": {"lazy_load_members": True},
        "timeline": {"limit": 50, "types": ["m.room.message", "m.room.encrypted"],
                     "lazy_load_members": True},
    },
}


async def missed(client: AsyncClient, room_id: str, before: str,
                 since: str) -> list[dict[str, Any]]:
    """Messages a limited sync left out (a burst outgrows any timeline limit), oldest first."""
    found: list[dict[str, Any]] = []
    start = before
    for _ in range(100):
        response = await client.room_messages(
            room_id, start=start, end=since, direction=MessageDirection.back, limit=100,
            message_filter={"types": ["m.room.message", "m.room.encrypted"]})
        if not isinstance(response, RoomMessagesResponse) or not response.chunk:
            break
        found.extend(event.source for event in response.chunk)
        if not response.end or response.end == start:
            break
        start = response.end
    return list(reversed(found))


async def exchange_keys(client: AsyncClient) -> None:
    """What an encrypting nio client owes after each sync (as nio's own sync_forever)."""
    if client.olm is None:
        return
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
    await client.send_to_device_messages()


async def react(client: AsyncClient, room_id: str, event_id: str) -> None:
    """✅ on a message; encrypted in an encrypted room, as chatbot's is. nio's room_send
    (0.26) sends reactions in the clear, so the encrypted ones take its steps by hand:
    the members' keys, the Megolm session, the ciphertext (the relation stays outside,
    as the spec asks), the send."""
    relation = {"rel_type": "m.annotation", "event_id": event_id, "key": "✅"}
    room = client.rooms.get(room_id)
    if client.olm is None or room is None or not room.encrypted:
        await client.room_send(room_id, "m.reaction", {"m.relates_to": relation})
        return
    if not room.members_synced:
        await client.joined_members(room_id)
        if client.should_query_keys:
            await client.keys_query()
    if client.olm.should_share_group_session(room_id):
        await client.share_group_session(room_id, ignore_unverified_devices=True)
    event_type, content = client.encrypt(room_id, "m.reaction", {})
    content["m.relates_to"] = relation
    method, path, data = Api.room_send(client.access_token, room_id, event_type, content,
                                       uuid4())
    await client._send(RoomSendResponse, method, path, data, (room_id,))


async def run(homeserver: str, user_id: str, access_token: str, device_id: str | None = None,
              store_dir: str | None = None) -> None:
    client = AsyncClient(homeserver, user_id, device_id=device_id, store_path=store_dir or "",
                         config=AsyncClientConfig(
                             max_limit_exceeded=None, max_timeouts=None, request_timeout=60,
                             encryption_enabled=store_dir is not None,
                             store_sync_tokens=False))
    client.access_token = access_token
    client.user_id = user_id
    if store_dir is not None and device_id is not None:
        Path(store_dir).mkdir(parents=True, exist_ok=True)
        client.device_id = device_id
        client.load_store()
    answer_prefix = os.environ.get("ANSWER_PREFIX", "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        first = await client.sync(timeout=0, sync_filter=SYNC_FILTER)
        assert isinstance(first, SyncResponse), first
        await exchange_keys(client)
        token = first.next_batch
        print("listening", file=sys.stderr, flush=True)
        while not stop.is_set():
            sync = asyncio.ensure_future(
                client.sync(timeout=30_000, since=token, sync_filter=SYNC_FILTER))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({sync, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not sync.done():
                sync.cancel()
                break
            stopped.cancel()
            response = sync.result()
            if not isinstance(response, SyncResponse):
                await asyncio.sleep(0.5)
                continue
            for room_id, info in response.rooms.join.items():
                events = [event.source for event in info.timeline.events]
                if info.timeline.limited and info.timeline.prev_batch:
                    events = await missed(client, room_id, info.timeline.prev_batch,
                                          token) + events
                for source in events:
                    content = source.get("content") or {}
                    if (source.get("type") == "m.room.message" and source.get("sender") != user_id
                            and content.get("msgtype") == "m.text"
                            and str(content.get("body", "")).startswith(answer_prefix)):
                        await react(client, room_id, source["event_id"])
            token = response.next_batch
            await exchange_keys(client)
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(run(*sys.argv[1:6]))
