"""When the sync position is saved: after a sync whose handling wrote anything, and at
least every POSITION_SAVED_EVERY; a sync that changed nothing costs no database trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chatbot.matrix.intake import POSITION_SAVED_EVERY, position_owed
from chatbot.model import RoomId
from chatbot.store import Store

NOW = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)


def test_a_sync_that_wrote_nothing_waits_for_the_interval() -> None:
    recently = NOW - timedelta(seconds=1)
    assert not position_owed(False, False, recently, NOW)
    assert position_owed(False, False, NOW - POSITION_SAVED_EVERY, NOW), "the interval is up"


def test_a_write_the_first_sync_or_no_save_yet_is_saved_at_once() -> None:
    recently = NOW - timedelta(seconds=1)
    assert position_owed(True, False, recently, NOW)
    assert position_owed(False, True, recently, NOW)
    assert position_owed(False, False, None, NOW)


async def test_changes_made_tells_a_write_from_a_read(store: Store) -> None:
    before = store.changes_made()
    await store.is_known_room(RoomId("!room:example.org"))
    assert store.changes_made() == before, "a read is no change"
    async with store.transaction():
        await store.add_known_room(RoomId("!room:example.org"), NOW)
    assert store.changes_made() > before
