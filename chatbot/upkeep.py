"""Daily upkeep: old bookkeeping is pruned and idle direct chats are left, so the
database stops growing with use.

Meetings, their entries and notes are kept for good; what goes is what only mattered
for a while: the ids of handled events, finished outbox jobs, messages that could not
be decrypted. Leaving a room is a job in the outbox like any other effect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from chatbot.config import RetentionConfig
from chatbot.meetings import LAST_UPKEEP_KEY, Rooms
from chatbot.model import RoomId
from chatbot.store import PRUNE_BATCH, Pruned, Store

log = logging.getLogger(__name__)

# The outbox job kind that makes the bot leave a room (payload empty).
LEAVE = "leave"


def hand_back_free_memory() -> bool:
    """Return the heap memory the process has freed to the operating system; whether the
    C library could (glibc's `malloc_trim`; others have no such call).

    glibc keeps freed memory for reuse, and in a long-running process with threads (the
    database's) that only grows: over a month of use that was about 2 MB of the bot's
    resident memory, given back by this call after the daily upkeep's deletions.
    """
    import ctypes

    # The process's own symbols, the C library's among them (no search on disk).
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


@dataclass(frozen=True, slots=True)
class Upkept:
    """What one upkeep did: rows pruned, direct chats it queued a leave for, and the age
    before which handled events were forgotten."""

    pruned: Pruned
    leaving: tuple[RoomId, ...]
    keys_before: datetime


def prune_before(now: datetime, newest_handled: datetime | None,
                 retention: timedelta) -> datetime:
    """The age before which the ids of handled events (and kept undecryptable messages,
    which stand for events not handled yet) may go.

    Those ids are what stops a replayed event from counting twice, so one may go only
    once nothing can replay its event. The Matrix edge saves its sync position right
    after handling the events it covers; a crash in between replays them (and the gap
    fill pages back only to that saved position), so a replay repeats only the events
    handled last before a stop: seconds, at most minutes, before the newest handled
    one. Events older than the bot's first start are history, never handled, never
    keyed. While running, `now - retention` is therefore days clear of any replay
    (retention is at least a day). After a long stop it might not be: the upkeep owed
    runs at start, before the first sync has replayed anything. Counting the retention
    back from the newest handled event instead keeps the ids a restart can replay,
    however long the bot was down. (A bot nobody writes to keeps its last ids longer;
    nothing new is keyed then either.)
    """
    cutoff = now - retention
    if newest_handled is not None:
        cutoff = min(cutoff, newest_handled - retention)
    return cutoff


async def run_upkeep(store: Store, rooms: Rooms, retention: RetentionConfig,
                     now: datetime, *, batch: int = PRUNE_BATCH) -> Upkept:
    """Prune in short transactions of at most `batch` rows a table, then queue a leave for
    each direct chat idle for `retention.direct_chats` and forget it. Never a meeting room.

    Safe to run again after a crash part way: each step is idempotent.
    """
    keys_before = prune_before(now, await store.read.newest_processed_at(), retention.events)
    pruned = Pruned()
    while True:
        async with store.transaction():
            # Finished jobs are not what makes a replay count once: they go by the clock.
            step = await store.prune(now - retention.events, keys_before=keys_before,
                                     limit=batch)
        pruned += step
        if not step.reached(batch):
            break
    leaving: list[RoomId] = []
    async with store.transaction():
        for room_id in await store.idle_direct_rooms(now - retention.direct_chats):
            await store.forget_direct_room(room_id)
            if rooms.is_configured(room_id):
                # A direct chat that became a meeting room is a meeting room now.
                log.info("%s is a meeting room now; no longer a direct chat", room_id,
                         extra={"room_id": room_id})
                continue
            await store.enqueue(room_id, LEAVE, {}, now)
            leaving.append(room_id)
        await store.set_meta(LAST_UPKEEP_KEY, now.isoformat())
    return Upkept(pruned, tuple(leaving), keys_before)
