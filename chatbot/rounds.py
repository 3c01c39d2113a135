"""The update round (`!round`): the facilitator who calls on each person in turn.

The order and each turn's fate are plain functions over `RoundPlace`s; the rest reads
and writes the round in the store, inside the caller's transaction, and returns the
lines to post. A turn's clock starts when its line reaches the homeserver (the bot
records that event's server time), so its time-up is a scheduled job derived from the
database, like every other.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime

from chatbot.config import MeetingConfig
from chatbot.meetings import CallTurn, Effect, Post, Rooms
from chatbot.model import (
    EntryKind,
    EventId,
    Meeting,
    PassReason,
    RoundOutcome,
    RoundPlace,
    UpdateRound,
    UserId,
)
from chatbot.render import escape_markdown, mention, update_time
from chatbot.store import Store

log = logging.getLogger(__name__)


# --- pure: the order, and whose turn comes next -------------------------------------------


def round_order(
    roll_call: Sequence[tuple[UserId, str]], *, explicit: Sequence[UserId] = (),
    shuffle_seed: str | None = None,
) -> list[RoundPlace]:
    """The round's places: the roll call in arrival order, shuffled (deterministically
    by `shuffle_seed`, so a replayed command gives the same order), or the people named
    in `explicit` (once each; names from the roll call, else the id)."""
    names = dict(roll_call)
    if explicit:
        people = list(dict.fromkeys(explicit))
        return [RoundPlace(user, names.get(user, user)) for user in people]
    places = [RoundPlace(user, name) for user, name in roll_call]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(places)
    return places


def next_turn(
    places: Sequence[RoundPlace], done: Collection[UserId],
) -> tuple[tuple[RoundPlace, ...], list[RoundPlace], RoundPlace | None]:
    """Walk to the next person whose turn has not ended.

    People in `done` (their update or pass is in already) are passed over and marked
    AHEAD. Returns the places as changed, those just passed over, and the next person
    (None: the round is over).
    """
    changed = list(places)
    passed_over = []
    for index, place in enumerate(changed):
        if place.outcome is not None:
            continue
        if place.user_id in done:
            changed[index] = replace(place, outcome=RoundOutcome.AHEAD)
            passed_over.append(changed[index])
            continue
        return tuple(changed), passed_over, place
    return tuple(changed), passed_over, None


def end_turn(places: Sequence[RoundPlace], user_id: UserId,
             outcome: RoundOutcome) -> tuple[RoundPlace, ...]:
    return tuple(replace(place, outcome=outcome)
                 if place.user_id == user_id and place.outcome is None else place
                 for place in places)


def still_to_come(places: Sequence[RoundPlace], current: UserId | None,
                  done: Collection[UserId]) -> list[RoundPlace]:
    """Who the round will still call after `current`, in order."""
    users = [place.user_id for place in places]
    after = users.index(current) + 1 if current in users else 0
    return [place for place in places[after:] if place.outcome is None
            and place.user_id not in done]


def turn_line(places: Sequence[RoundPlace], current: RoundPlace, seconds: int,
              done: Collection[UserId]) -> str:
    """`@Min, your 60 seconds (3 of 11; next: Yuvi)`, the name a mention."""
    number = next(index for index, place in enumerate(places, start=1)
                  if place.user_id == current.user_id)
    coming = still_to_come(places, current.user_id, done)
    after = f"; next: {escape_markdown(coming[0].name)}" if coming else ", last"
    return (f"{mention(current.user_id, current.name)}, your {update_time(seconds)} "
            f"({number} of {len(places)}{after})")


def names_of(places: Sequence[RoundPlace]) -> str:
    return ", ".join(escape_markdown(place.name) for place in places)


def passed_over_line(places: Sequence[RoundPlace]) -> str:
    if not places:
        return ""
    verb = "is" if len(places) == 1 else "are"
    return f"{names_of(places)} {verb} done already (update posted). "


# --- the round in a meeting -------------------------------------------------------------


async def _advance(
    store: Store, series: MeetingConfig, meeting: Meeting, found: UpdateRound, now: datetime,
    lead: str = "",
) -> list[Effect]:
    """Call the next person (their line starts with `lead`), or end the round."""
    places = found.places
    for user_id, name in await store.arrivals_since(meeting.id, found.started_at):
        if all(place.user_id != user_id for place in places):
            late = RoundPlace(user_id, name)
            await store.add_round_place(meeting.id, late)
            places = (*places, late)
    done = await store.quick_update_senders(meeting.id)
    places, passed_over, following = next_turn(places, done)
    for place in passed_over:
        await store.set_round_outcome(meeting.id, place.user_id, RoundOutcome.AHEAD)
    lead += passed_over_line(passed_over)
    if following is None:
        await store.end_round(meeting.id, now)
        log.info("meeting %s: the update round is over", meeting.id,
                 extra={"room_id": meeting.room_id, "meeting_id": meeting.id})
        return [Post(meeting.room_id, f"{lead}That was everyone: the update round is over.")]
    await store.set_round_turn(meeting.id, following.user_id)
    return [CallTurn(meeting.room_id,
                     lead + turn_line(places, following, series.update_seconds, done),
                     meeting.id, following.user_id, mention=following.user_id)]


async def start_round(
    store: Store, series: MeetingConfig, meeting: Meeting, places: Sequence[RoundPlace],
    now: datetime,
) -> list[Effect]:
    """Start a round over `places` and call its first person."""
    await store.start_round(meeting.id, now, places)
    found = await store.get_round(meeting.id)
    assert found is not None
    log.info("meeting %s: update round of %s people started", meeting.id, len(places),
             extra={"room_id": meeting.room_id, "meeting_id": meeting.id})
    return await _advance(store, series, meeting, found, now,
                          lead=f"**Update round** ({len(places)} people). ")


async def active_round(store: Store, meeting: Meeting) -> UpdateRound | None:
    found = await store.get_round(meeting.id)
    return found if found is not None and found.is_active else None


async def end_current_turn(
    store: Store, series: MeetingConfig, meeting: Meeting, sender: UserId,
    outcome: RoundOutcome, now: datetime, lead: str = "",
) -> list[Effect]:
    """End `sender`'s turn, if it is theirs now, and call the next person."""
    found = await active_round(store, meeting)
    if found is None or found.current != sender:
        return []
    await store.set_round_outcome(meeting.id, sender, outcome)
    return await _advance(store, series, meeting,
                          replace(found, places=end_turn(found.places, sender, outcome)),
                          now, lead)


def status_line(found: UpdateRound, done: Collection[UserId]) -> str:
    """Who is speaking and who is left."""
    current = next((place for place in found.places if place.user_id == found.current), None)
    left = still_to_come(found.places, found.current, done)
    now_on = f"{escape_markdown(current.name)} is on. " if current is not None else ""
    coming = f"Still to come: {names_of(left)}." if left else "Nobody else is left."
    return f"**Update round:** {now_on}{coming}"


async def run_time_up(
    store: Store, rooms: Rooms, meeting_id: int, user_id: UserId, now: datetime,
) -> list[Effect]:
    """Say once that a turn's time is up, note "no update" if nothing came, call the next."""
    meeting = await store.get_meeting(meeting_id)
    series = rooms.series(meeting.series_id) if meeting is not None else None
    if meeting is None or series is None or not meeting.is_open:
        return []
    found = await active_round(store, meeting)
    deadline = found.time_up_at(series.update_seconds) if found is not None else None
    if found is None or found.current != user_id or deadline is None or now < deadline:
        return []
    place = next(place for place in found.places if place.user_id == user_id)
    if user_id not in await store.quick_update_senders(meeting.id):
        await store.add_entry(meeting.id, EntryKind.PASS, user_id, place.name, "", None,
                              EventId(f"round-time-up:{meeting.id}:{user_id}"), now,
                              pass_reason=PassReason.TIME_UP)
    log.info("meeting %s: %s's turn timed out", meeting.id, user_id,
             extra={"room_id": meeting.room_id, "meeting_id": meeting.id})
    return await end_current_turn(store, series, meeting, user_id, RoundOutcome.TIME_UP, now,
                                  lead=f"⏱ Time is up, {escape_markdown(place.name)}. ")


async def resume_rounds(store: Store, rooms: Rooms, now: datetime) -> list[Effect]:
    """After a restart, each current turn starts its clock again, from a line that
    names the person without calling them a second time."""
    effects: list[Effect] = []
    for found in await store.active_rounds():
        meeting = await store.get_meeting(found.meeting_id)
        series = rooms.series(meeting.series_id) if meeting is not None else None
        if meeting is None or series is None or found.current is None:
            continue
        if found.clock_at is None:
            continue  # its line is still queued: sent, it starts the clock
        place = next(place for place in found.places if place.user_id == found.current)
        await store.set_round_turn(meeting.id, found.current)
        effects.append(CallTurn(meeting.room_id, (
            f"I was restarted; the update round goes on. {escape_markdown(place.name)}, "
            f"your {update_time(series.update_seconds)} start again now."),
            meeting.id, found.current))
    return effects
