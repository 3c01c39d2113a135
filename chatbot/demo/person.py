"""A person on a real Matrix client, for the demo and the tests: sends, and waits to see."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from nio import AsyncClient, RoomCreateResponse, RoomSendResponse, SyncResponse

from chatbot.matrix import exchange_keys

Event = dict[str, Any]
# A homeserver returns only the last few events of a busy room per sync unless asked
# for more; a person who must see every ✅ of a burst asks for plenty.
SEE_EVERYTHING = {"room": {"timeline": {"limit": 1000}}}


class Person:
    """Wraps a logged-in nio client; a background long-poll sync collects room events."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self.client = client
        self.name = name
        self.events: list[Event] = []
        self.on_event: Callable[[Event], None] | None = None
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._sent_to_devices = 0

    @property
    def user_id(self) -> str:
        return self.client.user_id

    async def start(self) -> None:
        """Catch up once (history is not collected), then follow new events."""
        first = await self.client.sync(timeout=0, sync_filter=SEE_EVERYTHING)
        if not isinstance(first, SyncResponse):
            raise RuntimeError(f"{self.name} cannot sync: {first}")
        await exchange_keys(self.client)
        self._task = asyncio.create_task(self._follow(), name=f"sync {self.name}")

    async def _follow(self) -> None:
        while True:
            try:
                response = await self.client.sync(timeout=10_000, sync_filter=SEE_EVERYTHING)
            except (aiohttp.ClientError, TimeoutError):
                response = None  # the homeserver is down: keep trying, like a real client
            if not isinstance(response, SyncResponse):
                await asyncio.sleep(0.5)  # do not hammer a server that is failing
                continue
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await exchange_keys(self.client)
            async with self._changed:
                self._changed.notify_all()  # for `wait_until`: state other than events
            fresh = []
            for room_id, info in response.rooms.join.items():
                for event in info.timeline.events:
                    # `decrypted` tells a test the event travelled encrypted.
                    fresh.append({**event.source, "room_id": room_id,
                                  "decrypted": getattr(event, "decrypted", False)})
            for room_id in response.rooms.invite:
                fresh.append({"type": "invite", "room_id": room_id})
            if fresh:
                async with self._changed:
                    self.events.extend(fresh)
                    self._changed.notify_all()
                if self.on_event is not None:
                    for event in fresh:
                        with contextlib.suppress(Exception):  # a watcher must not end the sync
                            self.on_event(event)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.client.close()

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 20.0,
                       *, after: int = 0) -> Event:
        """The first event (from index `after`) matching `predicate`; TimeoutError if none comes."""

        async def find() -> Event:
            async with self._changed:
                while True:
                    for event in self.events[after:]:
                        if predicate(event):
                            return event
                    await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    async def wait_until(self, check: Callable[[], bool], timeout: float = 20.0) -> None:
        """Return once `check()` holds after one of this person's syncs; TimeoutError if not."""

        async def until() -> None:
            async with self._changed:
                while not check():
                    await self._changed.wait()

        await asyncio.wait_for(until(), timeout)

    # --- actions -------------------------------------------------------------------

    async def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Send any room event; return its event id."""
        response = await self.client.room_send(room_id, event_type, content,
                                               ignore_unverified_devices=True)
        if not isinstance(response, RoomSendResponse):
            raise RuntimeError(f"{self.name} could not send {event_type}: {response}")
        return response.event_id

    async def say(self, room_id: str, text: str, *, thread_root: str | None = None) -> str:
        """Send a plain text message (in a thread, if given); return its event id."""
        content: dict[str, Any] = {"msgtype": "m.text", "body": text}
        if thread_root is not None:
            content["m.relates_to"] = {"rel_type": "m.thread", "event_id": thread_root}
        return await self.send(room_id, "m.room.message", content)

    async def say_with_late_key(
        self, room_id: str, text: str, *, late_for: str,
    ) -> tuple[str, Callable[[], Awaitable[None]]]:
        """Say `text` in an encrypted room, holding back its room key from `late_for`'s
        devices; the returned callable delivers it, as a slow to-device path would."""
        client = self.client
        assert client.olm is not None, "an encrypting client is needed"
        if not client.rooms[room_id].members_synced:
            await client.joined_members(room_id)
        if client.should_query_keys:
            await client.keys_query()
        if missing := client.get_missing_sessions(room_id):
            await client.keys_claim(missing)
        held: dict[str, Any] = {}
        members = list(client.rooms[room_id].users)
        for shared_with, to_device in client.olm.share_group_session_parallel(
                room_id, members, ignore_unverified_devices=True):
            if late := to_device["messages"].pop(late_for, None):
                held[late_for] = late
            if to_device["messages"]:
                await self._to_device(to_device)
            client.olm.outbound_group_sessions[room_id].users_shared_with.update(shared_with)
        client.olm.outbound_group_sessions[room_id].shared = True
        event_id = await self.say(room_id, text)

        async def deliver_key() -> None:
            await self._to_device({"messages": held})

        return event_id, deliver_key

    async def _to_device(self, messages: dict[str, Any]) -> None:
        """Send Olm-encrypted to-device messages as they are (nio only sends its own)."""
        self._sent_to_devices += 1
        txn = f"held-{self._sent_to_devices}-{secrets.token_hex(4)}"
        url = f"{self.client.homeserver}/_matrix/client/v3/sendToDevice/m.room.encrypted/{txn}"
        async with aiohttp.ClientSession() as session, session.put(
                url, json=messages,
                headers={"Authorization": f"Bearer {self.client.access_token}"}) as response:
            if response.status != 200:
                raise RuntimeError(f"{self.name} could not send to devices: "
                                   f"{await response.text()}")

    async def edit(self, room_id: str, event_id: str, text: str) -> str:
        """Edit one of this person's messages the way Matrix clients do (m.replace)."""
        return await self.send(room_id, "m.room.message", {
            "msgtype": "m.text", "body": f"* {text}",
            "m.new_content": {"msgtype": "m.text", "body": text},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        })

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        return await self.send(room_id, "m.reaction", {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}})

    async def redact(self, room_id: str, event_id: str) -> None:
        response = await self.client.room_redact(room_id, event_id)
        if not hasattr(response, "event_id"):
            raise RuntimeError(f"{self.name} could not redact {event_id}: {response}")

    async def create_room(self, *, invite: list[str], alias: str | None = None,
                          power: dict[str, int] | None = None, encrypted: bool = False) -> str:
        encryption = [{"type": "m.room.encryption", "state_key": "",
                       "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]
        response = await self.client.room_create(
            alias=alias, invite=invite, name=alias,
            power_level_override={"users": power} if power else None,
            initial_state=encryption if encrypted else ())
        if not isinstance(response, RoomCreateResponse):
            raise RuntimeError(f"{self.name} could not create a room: {response}")
        return response.room_id

    async def join(self, room_id: str) -> None:
        response = await self.client.join(room_id)
        if not hasattr(response, "room_id"):
            raise RuntimeError(f"{self.name} could not join {room_id}: {response}")


def is_reaction(event: Event, to_event: str, key: str = "✅") -> bool:
    relation = (event.get("content") or {}).get("m.relates_to") or {}
    return (event.get("type") == "m.reaction" and relation.get("event_id") == to_event
            and relation.get("key") == key)


def is_reply(event: Event, to_event: str) -> bool:
    relation = (event.get("content") or {}).get("m.relates_to") or {}
    return (relation.get("m.in_reply_to") or {}).get("event_id") == to_event


def body_of(event: Event) -> str:
    return str((event.get("content") or {}).get("body", ""))
