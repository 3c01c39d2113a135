"""Items a meeting did not reach go to the next one, on real SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from chatbot.config import parse_config
from chatbot.meetings import Rooms, carry_over, upcoming
from chatbot.model import EntryKind, EventId, RoomId, UserId
from chatbot.store import Store

ROOM = RoomId("!room:example.org")
ADA = UserId("@ada:example.org")
NOW = datetime(2026, 6, 18, 9, 30, tzinfo=UTC)


def rooms() -> Rooms:
    config = parse_config({
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "meetings": [{"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
                      "start": "2026-06-18 09:00", "rrule": "FREQ=WEEKLY"}],
    })
    return Rooms(config, {"team": ROOM})


async def test_unreached_items_move_to_the_next_meeting_unless_dropped(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bot.db")
    directory = rooms()
    series = directory.config.meetings[0]
    async with store.transaction():
        meeting = await store.ensure_scheduled("team", ROOM, "Team", NOW - timedelta(minutes=30))
        for number, text in enumerate(["reached", "missed", "dropped", "missed too"], 1):
            await store.add_entry(meeting.id, EntryKind.AGENDA, ADA, "Ada", text, number,
                                  EventId(f"${number}"), NOW)
        record = await store.record(meeting)
        first, _, third, _ = record.agenda
        await store.start_item(first.id, NOW)
        await store.set_dropped(third.id, True)
        await store.mark_started(meeting.id, NOW, NOW + timedelta(hours=1), "Team")
        await store.mark_ended(meeting.id, NOW)
        moved = await carry_over(store, directory, series, await store.record(meeting), NOW)
        (occurrence, following), = await upcoming(store, series, NOW, count=1)
    assert moved == 2
    assert following is not None and occurrence.start == datetime(2026, 6, 25, 9, tzinfo=UTC)
    carried = (await store.record(following)).agenda
    assert [(item.text, item.minutes, item.carried_from) for item in carried] == [
        ("missed", 2, "Thursday 18th June 2026"), ("missed too", 4, "Thursday 18th June 2026")]
    async with store.transaction():  # carrying again is idempotent: keyed by event id
        await carry_over(store, directory, series, await store.record(meeting), NOW)
    assert len((await store.record(following)).agenda) == 2
    await store.close()
