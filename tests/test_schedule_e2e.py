"""Reminders, the start announcement and the automatic close arrive on time, on a real server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from chatbot.demo.person import body_of, is_reaction, is_reply

from .conftest import World, minute_from_now
from .support.assertions import assert_handled_once
from .support.botlog import LogWatcher

TOLERANCE = timedelta(seconds=1.5)


def sent_at(event: dict) -> datetime:
    return datetime.fromtimestamp(event["origin_server_ts"] / 1000, UTC)


def from_bot(world: World, text: str):
    return lambda e: e.get("sender") == world.bot_user.user_id and text in body_of(e)


async def test_reminders_start_and_automatic_close_arrive_on_time(world: World) -> None:
    start = minute_from_now(seconds=8)
    config = world.config(start=start.strftime("%Y-%m-%d %H:%M:%S"), rrule=None,
                          duration="4s", grace="1s", reminders=["6s", "3s"])
    await world.start_bot(config)
    ada = world.ada
    item = await ada.say(world.room_id, "!agenda (5 min) Budget")
    await ada.wait_for(lambda e: is_reaction(e, item))

    first = await ada.wait_for(from_bot(world, "**Reminder:**"))
    second = await ada.wait_for(from_bot(world, "**Reminder:**"), after=ada.events.index(first) + 1)
    opened = await ada.wait_for(from_bot(world, "is starting now"))
    note = await ada.wait_for(from_bot(world, "# Example Team Meeting"))

    assert abs(sent_at(first) - (start - timedelta(seconds=6))) < TOLERANCE
    assert abs(sent_at(second) - (start - timedelta(seconds=3))) < TOLERANCE
    assert abs(sent_at(opened) - start) < TOLERANCE
    assert abs(sent_at(note) - (start + timedelta(seconds=5))) < TOLERANCE
    reminder = body_of(second)
    assert f"({start:%H:%M} UTC)" in reminder
    assert "timeanddate.com/worldclock/fixedtime.html?iso=" in reminder
    assert "**Ada** (5 min) Budget" in reminder
    assert "- **Notes:** <https://notes.example.org/team>" in reminder
    assert "!agenda (10 min) topic" in reminder
    assert "[Code of Conduct](https://example.org/conduct)" in body_of(opened)


async def test_a_reminder_missed_while_down_is_sent_late_once(world: World) -> None:
    start = minute_from_now(seconds=9)
    config = world.config(start=start.strftime("%Y-%m-%d %H:%M:%S"), rrule=None,
                          duration="30m", reminders=["7s", "5s"])
    bot = await world.start_bot(config)
    await bot.stop()
    # Let both reminders fall due while the bot is down.
    both_due = start - timedelta(seconds=4.5)
    # sleep-ok: wall-clock time must pass for the reminders to fall due
    await asyncio.sleep(max(0.0, (both_due - datetime.now(UTC)).total_seconds()))  # sleep-ok
    mark = len(world.ada.events)
    await world.start_bot(config)
    late = await world.ada.wait_for(from_bot(world, "**Reminder:**"), after=mark)
    assert "starts in" in body_of(late)
    opened = await world.ada.wait_for(from_bot(world, "is starting now"), after=mark)
    reminders = [e for e in world.ada.events[mark:] if from_bot(world, "**Reminder:**")(e)]
    assert reminders == [late], "only the latest missed reminder is sent"
    assert sent_at(late) < sent_at(opened)


class JumpingClock:
    """The wall clock, until told to jump ahead, as it does for a machine woken from sleep."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


async def test_a_meeting_missed_entirely_is_not_opened_late(
        world: World, bot_log: LogWatcher) -> None:
    start = minute_from_now(seconds=8)  # time enough for the bot to start and plan
    config = world.config(start=start.strftime("%Y-%m-%d %H:%M:%S"), rrule=None,
                          duration="30s", grace="10s")
    clock = JumpingClock()
    bot = await world.start_bot(config, clock=clock)
    assert datetime.now(UTC) < start, "the bot took too long to start for this test"
    # The machine sleeps through the whole meeting: the start job, planned for `start`,
    # runs when the meeting and its grace are long over.
    clock.ahead = timedelta(minutes=2)
    await bot_log.wait_for("was missed entirely", timeout=30)

    probe = await world.ada.say(world.room_id, "!when")
    reply = await world.ada.wait_for(lambda e: is_reply(e, probe))
    assert "No meetings are scheduled" in body_of(reply)
    said = await assert_handled_once(world.ada, world.room_id, world.bot_user.user_id, [],
                                     [probe], pending=bot.outbox_pending)
    assert not [e for e in said if "is starting now" in body_of(e)], "opened late"
