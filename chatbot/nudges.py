"""Updates ahead of a meeting: the nudge to regulars, and which meeting a command sent
in a direct chat with the bot counts for.

A regular of a meeting series is someone on at least 2 of the roll calls of its last 4
sittings. `nudge: 1d` sends, that long before each sitting, one direct message to each
regular who has posted neither an update nor a pass for it (and has not said
`!nudge off`).
"""

from __future__ import annotations

import logging
from datetime import datetime

from chatbot.config import MeetingConfig
from chatbot.meetings import DirectMessage, Effect, Rooms, Target, resolve_target
from chatbot.model import UserId
from chatbot.render import escape_markdown, format_date, format_time
from chatbot.store import Store

log = logging.getLogger(__name__)

# The commands that work in a direct chat with the bot, for its next meeting.
DIRECT_COMMANDS = frozenset({"update", "pass", "nudge"})


def nudge_text(series: MeetingConfig, start: datetime, prefix: str) -> str:
    local = start.astimezone(series.timezone)
    return (
        f"Hello! **{escape_markdown(series.title)}** meets on {format_date(local)} at "
        f"{format_time(start, series.timezone)}, and you have not posted a quick update "
        f"for it yet. You can post it right here: `{prefix}update what you did` (or "
        f"`{prefix}pass`), and it goes into that meeting's note, marked as posted ahead. "
        f"`{prefix}nudge off` stops these messages."
    )


async def run_nudges(store: Store, rooms: Rooms, series: MeetingConfig, start: datetime,
                     now: datetime) -> list[Effect]:
    """Nudge the sitting's regulars without an update, once; none once it has begun."""
    if not await store.decide_nudges(series.id, start, now):
        return []
    meeting = await store.find_scheduled(series.id, start)
    if now >= start or (meeting is not None and meeting.started_at is not None):
        log.info("nudges before %s of %s not sent: the meeting has begun", start, series.id)
        return []
    posted = await store.quick_update_senders(meeting.id) if meeting is not None else set()
    regulars = await store.regulars(series.id, start)
    nudged = sorted(regulars - posted - await store.nudge_opt_outs())
    log.info("nudging %s of %s regulars of %s before %s", len(nudged), len(regulars),
             series.id, start)
    text = nudge_text(series, start, rooms.config.command_prefix)
    return [DirectMessage(user_id, text) for user_id in nudged]


async def direct_target(store: Store, rooms: Rooms, user_id: UserId,
                        now: datetime) -> Target | None:
    """The meeting a command in `user_id`'s direct chat counts for: among the series
    whose regular they are, one open now, else the one that meets soonest. None if
    they are a regular of none."""
    candidates = []
    for series in rooms.config.meetings:
        room_id = rooms.room_of_series.get(series.id)
        if room_id is None or user_id not in await store.regulars(series.id, now):
            continue
        target = await resolve_target(store, rooms, room_id, now)
        if target is not None and target.series.id == series.id:
            candidates.append(target)
    return min(candidates, key=lambda target: (not target.is_open, target.start), default=None)
