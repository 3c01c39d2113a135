"""Which agenda a calendar feed shows: the meeting in progress, else the next one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chatbot.agenda_feed import next_agenda
from chatbot.config import MeetingConfig, parse_config
from chatbot.model import EntryKind, EventId, RoomId, UserId
from chatbot.store import Store

ROOM = RoomId("!room:example.org")
ADA = UserId("@ada:example.org")
FIRST = datetime(2026, 6, 18, 9, 0, tzinfo=UTC)  # a Thursday; weekly after that
SECOND = FIRST + timedelta(weeks=1)


def weekly(series_id: str = "team") -> MeetingConfig:
    return parse_config({
        "matrix": {"homeserver": "https://matrix.example.org", "user_id": "@bot:example.org",
                   "password": "secret"},
        "meetings": [{"id": series_id, "title": "Team", "room": "#team:example.org",
                      "timezone": "UTC", "start": "2026-06-18 09:00", "rrule": "FREQ=WEEKLY"}],
    }).meetings[0]


async def add(store: Store, start: datetime, kind: EntryKind, text: str,
              series_id: str = "team") -> int:
    async with store.transaction():
        meeting = await store.ensure_scheduled(series_id, ROOM, "Team", start)
        await store.add_entry(meeting.id, kind, ADA, "Ada", text, 5, EventId(f"${text}"), start)
    return meeting.id


async def open_meeting(store: Store, meeting_id: int, at: datetime) -> None:
    async with store.transaction():
        await store.mark_started(meeting_id, at, at + timedelta(hours=2), "Team")


async def texts(store: Store, now: datetime, series: MeetingConfig | None = None) -> list[str]:
    return [item.text for item in await next_agenda(store, series or weekly(), now)]


async def test_a_meeting_nobody_has_added_to_has_an_empty_agenda(store: Store) -> None:
    assert await texts(store, FIRST - timedelta(days=1)) == []


async def test_before_a_meeting_its_agenda_items_in_order_and_nothing_else(store: Store) -> None:
    await add(store, FIRST, EntryKind.AGENDA, "release")
    await add(store, FIRST, EntryKind.UPDATE, "an update")
    await add(store, FIRST, EntryKind.AGENDA, "docs")
    await add(store, SECOND, EntryKind.AGENDA, "later")
    assert await texts(store, FIRST - timedelta(days=1)) == ["release", "docs"]


async def test_items_a_chair_moved_are_in_the_running_order(store: Store) -> None:
    await add(store, FIRST, EntryKind.AGENDA, "release")
    await add(store, FIRST, EntryKind.AGENDA, "docs")
    first, second = await next_agenda(store, weekly(), FIRST - timedelta(days=1))
    async with store.transaction():
        await store.reorder_agenda([second.id, first.id])
    assert await texts(store, FIRST - timedelta(days=1)) == ["docs", "release"]


async def test_during_a_meeting_its_own_agenda_even_after_its_scheduled_end(store: Store) -> None:
    first = await add(store, FIRST, EntryKind.AGENDA, "release")
    await add(store, SECOND, EntryKind.AGENDA, "later")
    await open_meeting(store, first, FIRST)
    assert await texts(store, FIRST + timedelta(minutes=10)) == ["release"]
    assert await texts(store, FIRST + timedelta(hours=5)) == ["release"]


async def test_after_a_meeting_closes_the_next_ones_agenda(store: Store) -> None:
    first = await add(store, FIRST, EntryKind.AGENDA, "release")
    await add(store, SECOND, EntryKind.AGENDA, "later")
    await open_meeting(store, first, FIRST)
    async with store.transaction():
        await store.mark_ended(first, FIRST + timedelta(minutes=50))
    assert await texts(store, FIRST + timedelta(minutes=55)) == ["later"]


async def test_another_series_open_in_the_same_room_does_not_count(store: Store) -> None:
    other = await add(store, FIRST, EntryKind.AGENDA, "theirs", series_id="docs")
    await open_meeting(store, other, FIRST)
    await add(store, SECOND, EntryKind.AGENDA, "ours")
    assert await texts(store, FIRST + timedelta(hours=3)) == ["ours"]
