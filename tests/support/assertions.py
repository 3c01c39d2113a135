"""What the homeserver itself recorded, checked once the bot has nothing left to send.

A person's own timeline is not a barrier: ✅s go out side by side (a few at a time) and
overtake replies queued before them, so one more (a duplicate) can still be on its way
when the last expected event arrives. These helpers wait until the bot's outbox is
drained and then ask the homeserver (relations and room history), which is final.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from nio import Event as NioEvent
from nio import MegolmEvent

from chatbot.demo.person import Event, Person, body_of

from .waiting import eventually

CHECK = "✅"
Pending = Callable[[], Awaitable[bool]]


async def until_drained(pending: Pending, timeout: float = 30) -> None:
    """Return once `pending()` is false: every queued job was sent (or given up on)."""

    async def drained() -> bool:
        return not await pending()

    await eventually(drained, "the bot's outbox drained", timeout)


def pending_in_database(database: Path) -> Pending:
    """`pending` for a bot in another process: its database, opened read-only each time."""

    def query() -> bool:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT 1 FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL"
                              " LIMIT 1").fetchone() is not None

    async def pending() -> bool:
        return await asyncio.to_thread(query)

    return pending


async def _paged(person: Person, path: str, params: dict[str, str]) -> list[Event]:
    """Every event of a paginated client-API list, asked as `person`."""
    url = f"{person.client.homeserver}/_matrix/client/{path}"
    headers = {"Authorization": f"Bearer {person.client.access_token}"}
    events: list[Event] = []
    page: str | None = None
    async with aiohttp.ClientSession() as session:
        while True:
            query = {**params, "limit": "100", **({"from": page} if page else {})}
            async with session.get(url, params=query, headers=headers) as response:
                assert response.status == 200, f"{path}: {response.status} {await response.text()}"
                answer: dict[str, Any] = await response.json()
            events.extend(answer["chunk"])
            page = answer.get("next_batch") or answer.get("end")
            if not answer["chunk"] or not page:
                return events


async def checks_on(person: Person, room_id: str, event_id: str, sender: str) -> int:
    """How many ✅ annotations from `sender` the homeserver holds on `event_id`."""
    related = await _paged(
        person, f"v1/rooms/{quote(room_id)}/relations/{quote(event_id)}/m.annotation", {})
    # An encrypted reaction keeps its relation in the clear, so this counts those too.
    return sum(e["sender"] == sender and e["content"]["m.relates_to"].get("key") == CHECK
               for e in related)


def _readable(person: Person, source: Event) -> Event:
    """The event as `person` reads it: decrypted when it travelled encrypted."""
    if source.get("type") != "m.room.encrypted":
        return source
    parsed = NioEvent.parse_event(source)
    decrypted = (person.client.decrypt_event(parsed)
                 if isinstance(parsed, MegolmEvent) and person.client.olm else None)
    assert decrypted is not None and not isinstance(decrypted, MegolmEvent), (
        f"{person.name} cannot read {source['event_id']}, so cannot tell if it is a duplicate")
    return dict(decrypted.source)


async def messages_from(person: Person, room_id: str, sender: str) -> list[Event]:
    """The room's messages from `sender` as the homeserver keeps them, oldest first."""
    history = await _paged(person, f"v3/rooms/{quote(room_id)}/messages",
                           {"dir": "b", "filter": '{"types": ["m.room.message", '
                                                  '"m.room.encrypted"]}'})
    readable = [_readable(person, e) for e in reversed(history) if e["sender"] == sender]
    # An encrypted ✅ is an m.room.encrypted event too, until decrypted.
    return [e for e in readable if e["type"] == "m.room.message"]


def _reply_to(event: Event) -> str | None:
    relation = (event.get("content") or {}).get("m.relates_to") or {}
    return (relation.get("m.in_reply_to") or {}).get("event_id")


def _signature(event: Event) -> tuple[str, str | None, str]:
    return str((event.get("content") or {}).get("msgtype")), _reply_to(event), body_of(event)


async def assert_handled_once(
    person: Person, room_id: str, bot_id: str, acknowledged: Iterable[str],
    replied: Iterable[str] = (), *, pending: Pending,
) -> list[Event]:
    """Once the outbox is drained: each `acknowledged` command has exactly one ✅ from the
    bot on the homeserver, each `replied` one exactly one reply, and no message from the
    bot is there twice (same kind, same text, same reply). Returns the bot's messages."""
    await until_drained(pending)
    acknowledged = list(acknowledged)
    counts = await asyncio.gather(*(checks_on(person, room_id, c, bot_id) for c in acknowledged))
    wrong = {command: count for command, count in zip(acknowledged, counts, strict=True)
             if count != 1}
    assert not wrong, f"commands without exactly one ✅ (event id: count): {wrong}"
    messages = await messages_from(person, room_id, bot_id)
    replies = Counter(_reply_to(e) for e in messages)
    wrong = {command: replies[command] for command in replied if replies[command] != 1}
    assert not wrong, f"commands without exactly one reply (event id: count): {wrong}"
    said = Counter(_signature(e) for e in messages)
    twice = [signature for signature, count in said.items() if count > 1]
    assert not twice, f"the bot posted these more than once: {twice}"
    return messages
