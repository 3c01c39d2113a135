"""Votes as Matrix polls on a real Synapse: people answer by sending the poll response
events their clients send (Element's unstable form, and the stable one), or by text;
the bot counts them by MSC3381's rules, in a plain room and in an encrypted one."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatbot.demo.homeserver import LocalHomeserver
from chatbot.demo.person import Event, Person, body_of, is_reaction, is_reply

from .conftest import World, make_person, make_world

START = "org.matrix.msc3381.poll.start"
END = "org.matrix.msc3381.poll.end"
RESPONSE = "org.matrix.msc3381.poll.response"
TEXT = "org.matrix.msc1767.text"
QUESTION = "Ship the release on Friday?"
# chair and Ada (who changed her mind) and Vic (by text) yes, Grace no, Uma abstains;
# Xia answers and leaves the room before the close, Wes answers after the close.
RESULT = f"{QUESTION} — yes 3, no 1, abstain 1 (5 voters)"


@pytest.fixture
async def crypto_world(homeserver: LocalHomeserver, tmp_path: Path) -> AsyncIterator[World]:
    async with make_world(homeserver, tmp_path, encrypted=True) as made:
        yield made


@contextlib.asynccontextmanager
async def more_people(world: World, *names: str, encrypted: bool = False
                      ) -> AsyncIterator[list[Person]]:
    """People who join the world's room before the bot starts, on their own clients."""
    keys = world.tmp / "people" if encrypted else None
    people = [await make_person(world.hs, name.lower(), name, keys) for name in names]
    try:
        for person in people:
            await world.chair.client.room_invite(world.room_id, person.user_id)
            await person.join(world.room_id)
            await person.start()
        yield people
    finally:
        for person in people:
            await person.close()


async def command(person: Person, room_id: str, text: str, timeout: float = 30) -> str:
    event_id = await person.say(room_id, text)
    await person.wait_for(lambda e: is_reaction(e, event_id), timeout)
    return event_id


def answer(start_id: str, answer_id: str) -> dict[str, Any]:
    """A poll response as Element and Element X send it."""
    return {"m.relates_to": {"rel_type": "m.reference", "event_id": start_id},
            RESPONSE: {"answers": [answer_id]}}


def stable_answer(start_id: str, answer_id: str) -> dict[str, Any]:
    """A poll response in Matrix 1.7's stable form."""
    return {"m.relates_to": {"rel_type": "m.reference", "event_id": start_id},
            "m.selections": [answer_id]}


def relates_to(event: Event, start_id: str) -> bool:
    relation = (event.get("content") or {}).get("m.relates_to") or {}
    return relation.get("rel_type") == "m.reference" and relation.get("event_id") == start_id


async def run_vote(world: World, people: list[Person]) -> tuple[Event, Event, str]:
    """The issue's poll: six voters, one changing their answer, one by text, one after
    the close; and one who leaves the room before the close. Returns the poll's start
    and end events as Ada's client saw them, and the note's text."""
    room, chair, ada, grace = world.room_id, world.chair, world.ada, world.grace
    uma, vic, wes, xia = people
    bot = world.bot_user.user_id
    await world.start_bot(world.config())
    await command(chair, room, "!startmeeting")

    mark = len(ada.events)
    await ada.say(room, f"!vote {QUESTION}")
    start = await ada.wait_for(lambda e: e.get("type") == START and e.get("sender") == bot,
                               timeout=30, after=mark)
    start_id = start["event_id"]

    await chair.send(room, RESPONSE, answer(start_id, "yes"))
    await ada.send(room, RESPONSE, answer(start_id, "no"))
    await grace.send(room, RESPONSE, answer(start_id, "no"))
    await uma.send(room, "m.poll.response", stable_answer(start_id, "abstain"))
    await ada.send(room, RESPONSE, answer(start_id, "yes"))  # Ada changes her mind
    await command(vic, room, "!vote +1")
    await xia.send(room, RESPONSE, answer(start_id, "no"))
    await xia.client.room_leave(room)

    refused = await grace.say(room, "!vote close")
    reply = await grace.wait_for(lambda e: is_reply(e, refused), timeout=30)
    assert "Only the vote's asker or a chair" in body_of(reply)

    mark = len(ada.events)
    await command(ada, room, "!vote close")
    end = await ada.wait_for(lambda e: e.get("type") == END and relates_to(e, start_id),
                             timeout=30, after=mark)
    await wes.send(room, RESPONSE, answer(start_id, "no"))  # too late
    late = await wes.say(room, "!vote -1")
    reply = await wes.wait_for(lambda e: is_reply(e, late), timeout=30)
    assert "No vote is open here" in body_of(reply)

    mark = len(ada.events)
    await command(chair, room, "!endmeeting")
    note = await ada.wait_for(lambda e: body_of(e).startswith("# Example Team Meeting"),
                              timeout=30, after=mark)
    return start, end, body_of(note)


def assert_msc3381_start(start: Event) -> None:
    """The start event as MSC3381's unstable form has it (what Element renders)."""
    content = start["content"]
    assert content[START] == {
        "question": {TEXT: QUESTION},
        "kind": "org.matrix.msc3381.poll.disclosed",
        "max_selections": 1,
        "answers": [{"id": "yes", TEXT: "yes"}, {"id": "no", TEXT: "no"},
                    {"id": "abstain", TEXT: "abstain"}],
    }
    assert content[TEXT].startswith(f"{QUESTION}\n1. yes\n2. no\n3. abstain\n")


async def test_a_poll_counted_by_the_rules(world: World) -> None:
    async with more_people(world, "Uma", "Vic", "Wes", "Xia") as people:
        start, end, note = await run_vote(world, people)
    assert_msc3381_start(start)
    assert end["content"][END] == {}
    assert end["content"][TEXT] == f"The poll has closed. {RESULT}"
    assert f"## Decisions\n\n- **Vote:** {RESULT}" in note


async def test_a_poll_in_an_encrypted_room(crypto_world: World) -> None:
    world = crypto_world
    async with more_people(world, "Uma", "Vic", "Wes", "Xia", encrypted=True) as people:
        start, end, note = await run_vote(world, people)
    assert start["decrypted"] and end["decrypted"], "the poll travelled in the clear"
    assert_msc3381_start(start)
    assert end["content"][TEXT] == f"The poll has closed. {RESULT}"
    assert f"## Decisions\n\n- **Vote:** {RESULT}" in note
    # The answers travelled encrypted: the bot read them only by decrypting.
    sent = [e for e in world.ada.events if e.get("type") == RESPONSE
            and e.get("sender") == world.ada.user_id]
    assert sent and all(e["decrypted"] for e in sent)


async def test_a_chair_ends_the_poll_from_their_client(world: World) -> None:
    """Element offers "End poll" to those who may redact others' messages: the bot
    takes that end as the close, and posts the result."""
    room, chair, ada, grace = world.room_id, world.chair, world.ada, world.grace
    bot = world.bot_user.user_id
    await world.start_bot(world.config())
    await command(chair, room, "!agenda Lunch")
    await command(chair, room, "!startmeeting")
    await command(chair, room, "!next")
    mark = len(ada.events)
    await ada.say(room, "!vote Lunch? / Pizza / Sushi")
    start = await ada.wait_for(lambda e: e.get("type") == START and e.get("sender") == bot,
                               timeout=30, after=mark)
    start_id = start["event_id"]
    assert [a[TEXT] for a in start["content"][START]["answers"]] == ["Pizza", "Sushi"]
    await ada.send(room, RESPONSE, answer(start_id, "option-2"))
    await grace.send(room, RESPONSE, answer(start_id, "option-1"))
    mark = len(ada.events)
    await chair.send(room, END, {"m.relates_to": {"rel_type": "m.reference",
                                                  "event_id": start_id},
                                 END: {}, TEXT: "Ended poll"})
    result = "Lunch? — Pizza 1, Sushi 1 (2 voters)"
    await ada.wait_for(lambda e: e.get("type") == END and e.get("sender") == bot
                       and e["content"].get(TEXT) == f"The poll has closed. {result}",
                       timeout=30, after=mark)
    mark = len(ada.events)
    await command(chair, room, "!endmeeting")
    note = await ada.wait_for(lambda e: body_of(e).startswith("# Example Team Meeting"),
                              timeout=30, after=mark)
    assert f") Lunch\n    - **Vote:** {result}\n" in body_of(note)
    assert "## Decisions" not in body_of(note)
