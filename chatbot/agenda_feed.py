"""The agenda a calendar feed shows for a meeting series: the current or next sitting's."""

from __future__ import annotations

from datetime import datetime

from chatbot.config import MeetingConfig
from chatbot.meetings import upcoming
from chatbot.model import Entry
from chatbot.store import Store


async def next_agenda(store: Store, series: MeetingConfig, now: datetime) -> list[Entry]:
    """The agenda of the series' meeting in progress, else of its next scheduled one.

    A sitting nobody has added anything to yet may have no database row: empty agenda.
    """
    # By series, not by room: the config may name the room by alias, and a room may
    # hold several series, so the room's open meeting need not be this series'.
    meeting = next((m for m in await store.open_meetings() if m.series_id == series.id), None)
    if meeting is None:
        pending = await upcoming(store, series, now, count=1)
        meeting = pending[0][1] if pending else None
    if meeting is None:
        return []
    return (await store.record(meeting)).agenda  # in running order, as the reminders show it
