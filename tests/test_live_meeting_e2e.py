"""Running a meeting live on a real Synapse: the agenda flow, notes, chairs, and Matrix
as people really use it (edits, redactions, reactions, threads, room upgrades)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import icalendar
from msgspec.structs import replace

from chatbot.config import HttpConfig
from chatbot.demo.person import Person, body_of, is_reaction, is_reply
from chatbot.render import format_date, format_time
from chatbot.web import ListenFailed

from .conftest import World, minute_from_now
from .support.ports import on_a_free_port

GOLDEN = Path(__file__).parent / "golden"


async def ok(person: Person, room: str, text: str, **options: str) -> str:
    """Send a command and wait for the bot's ✅."""
    event_id = await person.say(room, text, **options)
    await person.wait_for(lambda e: is_reaction(e, event_id))
    return event_id


async def answer(person: Person, room: str, text: str, **options: str) -> dict:
    """Send a command and return the bot's reply to it."""
    event_id = await person.say(room, text, **options)
    return await person.wait_for(lambda e: is_reply(e, event_id))


def bot_says(world: World, text: str):
    return lambda e: e.get("sender") == world.bot_user.user_id and text in body_of(e)


async def closing_note(world: World) -> str:
    mark = len(world.ada.events)
    await ok(world.chair, world.room_id, "!endmeeting")
    note = await world.ada.wait_for(bot_says(world, "## Roll call"), after=mark)
    return body_of(note)


async def test_a_full_meeting_with_an_item_carried_over_matches_the_golden_note(
    world: World,
) -> None:
    # Hourly sittings, so the next one is within reach of !startmeeting.
    config = world.config(rrule="FREQ=HOURLY", duration="30m", timezone="Europe/London",
                          start=minute_from_now(minutes=90).strftime("%Y-%m-%d %H:%M:%S"))
    await world.start_bot(config)
    room, ada, grace, chair = world.room_id, world.ada, world.grace, world.chair

    # The first sitting reaches one of its two items; the other is carried over.
    await ok(grace, room, "!agenda (15 min) Release planning")
    await ok(ada, room, "!agenda (10 min) Docs sprint")
    await ok(chair, room, "!startmeeting")
    await ok(chair, room, "!next")
    first_note = await closing_note(world)
    assert "**Grace** (15 min, took 1 min) Release planning" in first_note
    assert any(bot_says(world, "1 agenda item not reached carried over")(e) for e in ada.events)

    listing = body_of(await answer(ada, room, "!agenda"))
    assert "1. **Ada** (10 min) Docs sprint (carried over from" in listing

    # The second sitting: four items, notes, actions and decisions.
    await ok(ada, room, "!iam Ada Lovelace / Analytical Engines / @ada")
    await ok(grace, room, "!iam Grace Hopper / US Navy / @grace")
    await ok(grace, room, "!agenda (20 min) CI costs")
    await ok(chair, room, "!agenda Community call")
    await ok(ada, room, "!agenda (5 min) Blog post https://blog.example.org/draft_1")
    await ok(chair, room, "!startmeeting")
    await ok(ada, room, "!here")
    await ok(grace, room, "!here")
    await ok(ada, room, "!update docs build is green")
    await ok(grace, room, "!pass")
    await ok(ada, room, "!celebrate 1,000 stars!")
    await ok(chair, room, "!next")
    await ok(ada, room, "!note two chapters left")
    await ok(grace, room, f"!action {ada.user_id} merge the sprint branch")
    await ok(chair, room, "!next")
    await ok(grace, room, "!agreed move CI to the new runners")
    await ok(grace, room, "!action ask for the quota")
    await ok(chair, room, "!item 4")
    await ok(ada, room, "!note see https://blog.example.org/draft_1")
    await ok(chair, room, "!agenda drop 3")
    note = await closing_note(world)
    # Every item was reached but the dropped one, so nothing is carried this time.
    assert "nothing yet" in body_of(await answer(ada, room, "!agenda"))

    meeting = config.meetings[0]
    first, second = meeting.schedule.next_occurrences(datetime.now(UTC), 2)
    expected = (GOLDEN / "note_live_meeting.md").read_text().format(
        date=format_date(second.start), time=format_time(second.start, meeting.timezone),
        carried_from=format_date(first.start),
    )
    assert note == expected


async def test_agenda_permissions_and_running_total(world: World) -> None:
    await world.start_bot(world.config(duration="30m"))
    room, ada, grace, chair = world.room_id, world.ada, world.grace, world.chair
    await ok(ada, room, "!agenda (20 min) First")
    await ok(grace, room, "!agenda (15 min) Second")
    await ok(grace, room, "!agenda Third")
    listing = body_of(await answer(ada, room, "!agenda"))
    assert "2. **Grace** (15 min) Second · 35 of 30 min" in listing
    assert "3. **Grace** Third · no estimate" in listing
    assert "**35 min of items for a 30 min meeting.**" in listing

    assert "Only the item's owner (Ada) or a chair" in body_of(
        await answer(grace, room, "!agenda remove 1"))
    assert "Only chairs can move" in body_of(await answer(ada, room, "!agenda move 3 1"))
    await ok(ada, room, "!agenda edit 1 (5 min) First, shorter")
    await ok(chair, room, "!agenda move 3 1")
    await ok(chair, room, "!agenda remove 2")
    listing = body_of(await answer(ada, room, "!agenda"))
    assert "1. **Grace** Third · no estimate" in listing
    assert "2. **Grace** (15 min) Second · 15 of 30 min" in listing
    assert "First" not in listing
    assert "There is no item 9" in body_of(await answer(ada, room, "!agenda remove 9"))


async def test_undo_and_added_chairs(world: World) -> None:
    await world.start_bot(world.config())
    room, ada, grace, chair = world.room_id, world.ada, world.grace, world.chair
    await ok(ada, room, "!update first")
    await ok(ada, room, "!update second")
    undone = await answer(ada, room, "!undo")
    assert body_of(undone) == "Removed your update: “second”"
    await ok(grace, room, "!celebrate shipped")
    assert body_of(await answer(chair, room, "!undo")) == "Removed Grace's celebration: “shipped”"

    refused = body_of(await answer(grace, room, "!startmeeting"))
    assert "Only chairs can use `!startmeeting`" in refused and "`!chair @user`" in refused
    await ok(chair, room, f"!chair {grace.user_id}")
    await ok(grace, room, "!startmeeting")
    await ok(chair, room, f"!unchair {grace.user_id}")
    assert "Only chairs" in body_of(await answer(grace, room, "!endmeeting"))
    note = await closing_note(world)
    assert "- **Ada:** first (posted ahead)\n" in note
    assert "second" not in note and "shipped" not in note


async def test_an_item_past_its_time_box_is_noted_once(world: World) -> None:
    class ShiftedClock:
        """The real time plus an offset the test moves, to make a minute pass at once."""

        def __init__(self) -> None:
            self.offset = timedelta(0)

        def __call__(self) -> datetime:
            return datetime.now(UTC) + self.offset

    clock = ShiftedClock()
    await world.start_bot(world.config(), clock=clock)
    room, ada, chair = world.room_id, world.ada, world.chair
    await ok(ada, room, "!agenda (1 min) Quick one")
    await ok(chair, room, "!startmeeting")
    # The item starts 59 s "in the past", so its one-minute box ends a second from now.
    clock.offset = timedelta(seconds=-59)
    await ok(chair, room, "!next")
    clock.offset = timedelta(0)
    notice = await ada.wait_for(bot_says(world, "is past its 1 min time box"))
    assert body_of(notice) == "⏱ Item 1, Quick one, is past its 1 min time box."
    await ok(ada, room, "!note sentinel")
    assert sum(bot_says(world, "time box.")(e) for e in ada.events) == 1


async def test_edits_update_or_remove_what_a_command_recorded(world: World) -> None:
    await world.start_bot(world.config())
    room, ada, grace = world.room_id, world.ada, world.grace
    update = await ok(ada, room, "!update shipped teh parser")
    cheer = await ok(ada, room, "!celebrate wrong room")
    typo = await answer(grace, room, "!agenda (999 min) too long")
    assert "Usage" in body_of(typo)
    bad = typo["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]

    await ada.edit(room, update, "!update shipped the parser")
    await ada.edit(room, cheer, "never mind, just chatting")
    await grace.edit(room, bad, "!agenda (20 min) Right size")
    await grace.wait_for(lambda e: is_reaction(e, bad))  # the fixed command is acknowledged
    await grace.edit(room, update, "!update hijacked")  # not Grace's message: ignored
    await ok(world.chair, room, "!startmeeting")
    note = await closing_note(world)
    assert "- **Ada:** shipped the parser (posted ahead)\n" in note
    assert "teh" not in note and "hijacked" not in note and "wrong room" not in note
    assert "- **Grace** (20 min) Right size\n" in note


async def test_redactions_remove_entries_but_not_when_a_bot_reaction_goes(world: World) -> None:
    await world.start_bot(world.config())
    room, ada, chair = world.room_id, world.ada, world.chair
    secret = await ok(ada, room, "!update the password is hunter2")
    kept = await ok(ada, room, "!update this stays")
    await ada.redact(room, secret)
    check = next(e for e in ada.events if is_reaction(e, kept))
    await chair.redact(room, check["event_id"])  # a moderator removes the bot's ✅
    await ok(chair, room, "!startmeeting")
    note = await closing_note(world)
    assert "hunter2" not in note
    assert "- **Ada:** this stays (posted ahead)\n" in note


async def test_a_raised_hand_on_the_announcement_joins_the_roll_call(world: World) -> None:
    await world.start_bot(world.config())
    room, ada, grace, chair = world.room_id, world.ada, world.grace, world.chair
    await ok(chair, room, "!startmeeting")
    announcement = await ada.wait_for(bot_says(world, "is starting now"))
    hand = await ada.react(room, announcement["event_id"], "✋")
    await grace.react(room, announcement["event_id"], "🙋🏽‍♀️")
    await ok(grace, room, "!here")
    await ok(chair, room, "!note both hands are in")  # everything before is handled
    await ada.redact(room, hand)
    grace_hand = next(e for e in grace.events if e.get("type") == "m.reaction"
                      and e.get("sender") == grace.user_id)
    await grace.redact(room, grace_hand["event_id"])
    note = await closing_note(world)
    roll_call = note.split("## Roll call\n\n")[1].split("\n\n")[0]
    assert roll_call == f"- Grace / {grace.user_id}"


async def test_commands_in_a_thread_are_answered_in_that_thread(world: World) -> None:
    await world.start_bot(world.config())
    room, ada = world.room_id, world.ada
    root = await ada.say(room, "Thread for the release")
    await ok(ada, room, "!agenda (5 min) Threaded item", thread_root=root)
    reply = await answer(ada, room, "!agenda", thread_root=root)
    relation = reply["content"]["m.relates_to"]
    assert relation["rel_type"] == "m.thread" and relation["event_id"] == root
    assert "Threaded item" in body_of(reply)


async def test_a_room_upgrade_is_followed_with_the_meeting_history(world: World) -> None:
    await world.start_bot(world.config())
    room, ada, chair = world.room_id, world.ada, world.chair
    await ok(ada, room, "!update before the upgrade")
    upgraded = await chair.client.room_upgrade(room, "12")
    new_room = upgraded.room_id
    for user in (world.bot_user.user_id, ada.user_id):
        await chair.client.room_invite(new_room, user)
    await ada.join(new_room)
    await ada.wait_for(lambda e: e.get("room_id") == new_room and e.get("type") == "m.room.member"
                       and e.get("state_key") == world.bot_user.user_id
                       and e["content"].get("membership") == "join")
    await ok(ada, new_room, "!update after the upgrade")
    await ok(chair, new_room, "!startmeeting")
    mark = len(ada.events)
    await ok(chair, new_room, "!endmeeting")
    note = body_of(await ada.wait_for(bot_says(world, "## Roll call"), after=mark))
    assert ("- **Ada:** before the upgrade (posted ahead)\n"
            "- **Ada:** after the upgrade (posted ahead)\n") in note


async def test_the_running_bot_serves_its_calendar_health_and_metrics(
    world: World,
) -> None:
    # A public meeting: anyone may subscribe to its calendar (a private one needs the
    # `!archive` link's key, tested with the web archive).
    async def start(port: int) -> int:
        await world.start_bot(replace(world.config(archive="public"),
                                      http=HttpConfig(listen=f"127.0.0.1:{port}")))
        return port

    port = await on_a_free_port(start, ListenFailed)
    await ok(world.ada, world.room_id, "!agenda (10 min) Release; planning")
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/calendar/team.ics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/calendar")
        calendar = icalendar.Calendar.from_ical(await response.read())
    (event,) = calendar.walk("VEVENT")
    assert "1. Ada (10 min) Release; planning" in str(event["DESCRIPTION"])
    assert str(event["SUMMARY"]) == "Example Team Meeting"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200 and await response.text() == "ok\n"
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            metrics = await response.text()
    assert 'chatbot_commands_total{command="agenda"} 1.0' in metrics
    assert "chatbot_meetings_open 0.0" in metrics


async def test_a_command_sent_as_a_reply_with_a_quote_fallback_works(world: World) -> None:
    await world.start_bot(world.config())
    room, ada, grace = world.room_id, world.ada, world.grace
    question = await grace.say(room, "Who is around today?")
    reply = await ada.send(room, "m.room.message", {
        "msgtype": "m.text",
        "body": f"> <{grace.user_id}> Who is around today?\n\n!here",
        "m.relates_to": {"m.in_reply_to": {"event_id": question}},
    })
    await ada.wait_for(lambda e: is_reaction(e, reply))
