"""The update round on a real Synapse: turns called with real mentions, timed by the
homeserver's clock, and carried through a restart."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from chatbot.demo.person import Person, body_of, is_reaction, is_reply

from .conftest import World, make_person

# How late a time-up may land after its deadline (server time), in milliseconds.
TIME_UP_SLACK_MS = 1500


async def command(person: Person, room_id: str, text: str) -> str:
    event_id = await person.say(room_id, text)
    await person.wait_for(lambda e: is_reaction(e, event_id))
    return event_id


@contextlib.asynccontextmanager
async def more_people(world: World, *names: str) -> AsyncIterator[list[Person]]:
    """People beyond the world's three, in its room and following it."""
    people = []
    try:
        for name in names:
            person = await make_person(world.hs, name.lower(), name)
            people.append(person)
            await world.chair.client.room_invite(world.room_id, person.user_id)
            await person.join(world.room_id)
            await person.start()
        yield people
    finally:
        for person in people:
            await person.close()


def mentions(event: dict[str, Any]) -> list[str]:
    return event.get("content", {}).get("m.mentions", {}).get("user_ids", [])


def is_turn_of(event: dict[str, Any], bot: str, person: Person) -> bool:
    return event.get("sender") == bot and "seconds (" in body_of(event) and (
        person.user_id in mentions(event))


async def turn_seen_by(person: Person, bot: str, after: int) -> dict[str, Any]:
    """The turn line calling `person`, as their own client received it: a real mention,
    in `m.mentions` and as a pill in the HTML."""
    turn = await person.wait_for(lambda e: is_turn_of(e, bot, person), after=after)
    assert mentions(turn) == [person.user_id]
    pill = f'<a href="https://matrix.to/#/{person.user_id}"'
    assert pill in turn["content"]["formatted_body"], turn["content"]["formatted_body"]
    assert f">{person.name}</a>" in turn["content"]["formatted_body"]
    return turn


async def say_with_pills(person: Person, room_id: str, before: str,
                         people: list[Person]) -> str:
    """Send `before` and the people as Element does when they are picked from its @ list:
    display names in the body, pills in the HTML, the ids in `m.mentions` (a set there, so
    not in the order they were named)."""
    links = " ".join(f'<a href="https://matrix.to/#/{p.user_id}">{p.name}</a>' for p in people)
    return await person.send(room_id, "m.room.message", {
        "msgtype": "m.text", "body": before + " ".join(p.name for p in people),
        "format": "org.matrix.custom.html", "formatted_body": before + links,
        "m.mentions": {"user_ids": sorted(p.user_id for p in people)}})


def lateness_ms(turn: dict[str, Any], time_up: dict[str, Any], seconds: int) -> int:
    """How long after the turn's deadline (its line's server time plus `seconds`) the
    time-up reached the homeserver."""
    return time_up["origin_server_ts"] - (turn["origin_server_ts"] + seconds * 1000)


async def test_a_round_over_five_people(world: World) -> None:
    seconds = 6
    await world.start_bot(world.config(update_seconds=seconds))
    room, bot = world.room_id, world.bot_user.user_id
    ada, grace, chair = world.ada, world.grace, world.chair
    async with more_people(world, "Cy", "Dee") as (cy, dee):
        await command(chair, room, "!startmeeting")
        order = [ada, grace, cy, dee, chair]
        for person in order:
            await command(person, room, "!here")
        mark = len(chair.events)
        await command(chair, room, "!round")

        turn = await turn_seen_by(ada, bot, mark)
        assert body_of(turn).endswith(f"your {seconds} seconds (1 of 5; next: Grace)")
        asked = await chair.say(room, "!round")
        status = await chair.wait_for(lambda e: is_reply(e, asked))
        assert body_of(status) == ("**Update round:** Ada is on. "
                                   "Still to come: Grace, Cy, Dee, Sam Chair.")
        await command(ada, room, "!update shipped the parser")
        await turn_seen_by(grace, bot, mark)
        await command(grace, room, "!pass")
        await turn_seen_by(cy, bot, mark)
        await command(cy, room, "!done")
        dee_turn = await turn_seen_by(dee, bot, mark)
        assert "(4 of 5; next: Sam Chair)" in body_of(dee_turn)

        # Dee says nothing: the time-up comes once, then the chair's turn, in one line.
        chair_turn = await turn_seen_by(chair, bot, mark)
        assert body_of(chair_turn).startswith("⏱ Time is up, Dee. ")
        assert body_of(chair_turn).endswith("(5 of 5, last)")
        late = lateness_ms(dee_turn, chair_turn, seconds)
        print(f"time-up lateness: {late} ms")  # for the accuracy figures in the report
        assert 0 <= late <= TIME_UP_SLACK_MS, f"time-up {late} ms after the deadline"

        await command(chair, room, "!update reviewed the release")
        await chair.wait_for(lambda e: e.get("sender") == bot and "the update round is over"
                             in body_of(e), after=mark)
        calls = [e for e in chair.events[mark:] if e.get("sender") == bot and mentions(e)]
        assert [mentions(e) for e in calls] == [[p.user_id] for p in order], "once each"
        assert sum("Time is up" in body_of(e) for e in chair.events[mark:]) == 1

        await command(chair, room, "!endmeeting")
        note = await ada.wait_for(lambda e: body_of(e).startswith("# Example Team Meeting"))
        assert ("## Quick updates\n\n"
                "- **Ada:** shipped the parser\n"
                "- **Grace:** pass\n"
                "- **Cy:** (spoke on the call)\n"
                "- **Dee:** no update\n"
                "- **Sam Chair:** reviewed the release\n") in body_of(note)


async def test_a_round_goes_on_after_a_restart_without_calling_anyone_twice(
        world: World) -> None:
    seconds = 10
    config = world.config(update_seconds=seconds)
    first = await world.start_bot(config)
    room, bot = world.room_id, world.bot_user.user_id
    ada, grace, chair = world.ada, world.grace, world.chair
    await command(chair, room, "!startmeeting")
    await command(grace, room, "!update posted before the round")
    for person in (ada, grace, chair):
        await command(person, room, "!here")
    mark = len(chair.events)
    await command(chair, room, "!round")
    first_turn = await turn_seen_by(ada, bot, mark)
    assert "Grace is done already" not in body_of(first_turn)  # only said when reached
    await command(ada, room, "!pass")
    # Grace posted hers before the round: passed over, with a note; the chair is next.
    chair_turn = await turn_seen_by(chair, bot, mark)
    assert body_of(chair_turn).startswith("Grace is done already (update posted). ")
    await first.stop()

    await world.start_bot(config)
    resumed = await chair.wait_for(lambda e: e.get("sender") == bot
                                   and "update round goes on" in body_of(e), after=mark)
    assert mentions(resumed) == [], "named again, not called again"
    assert f"Sam Chair, your {seconds} seconds start again now" in body_of(resumed)
    # The clock restarted with the resumed line: the time-up counts from it.
    over = await chair.wait_for(lambda e: e.get("sender") == bot and "Time is up" in body_of(e),
                                after=mark, timeout=seconds + 20)
    late = lateness_ms(resumed, over, seconds)
    print(f"resumed time-up lateness: {late} ms")
    assert 0 <= late <= TIME_UP_SLACK_MS, f"time-up {late} ms after the resumed deadline"
    assert "the update round is over" in body_of(over)
    calls = [e for e in chair.events[mark:] if e.get("sender") == bot and mentions(e)]
    assert [mentions(e) for e in calls] == [[ada.user_id], [chair.user_id]]


async def test_a_round_in_the_order_of_pills_and_a_note_in_roll_call_order(
        world: World) -> None:
    seconds = 4
    await world.start_bot(world.config(update_seconds=seconds))
    room, bot = world.room_id, world.bot_user.user_id
    ada, grace, chair = world.ada, world.grace, world.chair
    await command(chair, room, "!startmeeting")
    for person in (ada, grace, chair):
        await command(person, room, "!here")

    # A name that is no pill and no Matrix id is named back.
    asked = await say_with_pills(chair, room, "!round Nobody ", [grace])
    refused = await chair.wait_for(lambda e: is_reply(e, asked))
    assert body_of(refused).startswith("Sorry, I could not match “Nobody” to anyone: name "
                                       "each person with a pill"), body_of(refused)

    mark = len(chair.events)
    started = await say_with_pills(chair, room, "!round ", [grace, chair, ada])
    await chair.wait_for(lambda e: is_reaction(e, started))
    turn = await turn_seen_by(grace, bot, mark)
    assert body_of(turn).endswith(f"your {seconds} seconds (1 of 3; next: Sam Chair)")
    await command(grace, room, "!update wrote the docs")
    await turn_seen_by(chair, bot, mark)
    await command(chair, room, "!pass")
    await turn_seen_by(ada, bot, mark)  # Ada lets the time run out
    await chair.wait_for(lambda e: e.get("sender") == bot and "the update round is over"
                         in body_of(e), after=mark, timeout=seconds + 20)
    calls = [e for e in chair.events[mark:] if e.get("sender") == bot and mentions(e)]
    assert [mentions(e) for e in calls] == [[grace.user_id], [chair.user_id], [ada.user_id]]

    await command(chair, room, "!endmeeting")
    note = await ada.wait_for(lambda e: body_of(e).startswith("# Example Team Meeting"))
    # The note follows the roll call, not the round's order.
    assert ("## Quick updates\n\n"
            "- **Ada:** no update\n"
            "- **Grace:** wrote the docs\n"
            "- **Sam Chair:** pass\n") in body_of(note)
