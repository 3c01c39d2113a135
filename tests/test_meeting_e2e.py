"""A whole meeting, run by people on real Matrix clients against a real Synapse."""

from __future__ import annotations

import re

from chatbot.demo.person import body_of, is_reaction, is_reply

from .conftest import World


async def command(person, room_id: str, text: str) -> str:
    """Send a command and wait for the bot's ✅ on it."""
    event_id = await person.say(room_id, text)
    await person.wait_for(lambda e: is_reaction(e, event_id))
    return event_id


async def test_a_whole_meeting(world: World) -> None:
    config = world.config()
    await world.start_bot(config)
    room = world.room_id
    ada, grace, chair = world.ada, world.grace, world.chair

    await command(ada, room, "!iam Ada Lovelace / Analytical Engines / @ada")
    await command(grace, room, "!agenda (10 min) Release planning")
    mark = len(chair.events)
    await command(chair, room, "!startmeeting")
    start = await chair.wait_for(lambda e: "is starting now" in body_of(e), after=mark)
    assert "[Code of Conduct](https://example.org/conduct)" in body_of(start)

    await command(ada, room, "!here")
    await command(grace, room, "!here Grace Hopper / US Navy / @grace")
    await command(ada, room, "!here")
    await command(ada, room, "!update shipped the new parser\n## not a heading")
    await command(grace, room, "!pass")
    await command(ada, room, "!celebrate Release 2.0 is out!")

    refused = await grace.say(room, "!endmeeting")
    reply = await grace.wait_for(lambda e: is_reply(e, refused))
    assert "Only chairs" in body_of(reply)

    mark = len(ada.events)
    await command(chair, room, "!endmeeting")
    note = await ada.wait_for(lambda e: body_of(e).startswith("# Example Team Meeting"), after=mark)
    text = body_of(note)
    assert ("## Roll call\n\n- Ada Lovelace / Analytical Engines / @ada\n"
            "- Grace Hopper / US Navy / @grace\n") in text
    assert ("- **Ada Lovelace:** shipped the new parser  \n    \\## not a heading\n"
            "- **Grace Hopper:** pass\n") in text
    assert "## Reports and celebrations\n\n- Release 2.0 is out!\n" in text
    assert "## Agenda items\n\n- **Grace Hopper** (10 min) Release planning\n" in text
    html = note["content"]["formatted_body"]
    assert "<h2>Roll call</h2>" in html and "<h2>not" not in html
    saved = list((world.tmp / "data" / "notes" / "team").glob("*.md"))
    assert len(saved) == 1 and saved[0].read_text() == text


async def test_a_note_too_big_for_one_event_is_posted_in_parts(world: World) -> None:
    """Synapse refuses events over 64 KiB; a big meeting's note must still reach the room."""
    # Twelve updates each, as fast as the ✅s come: more than flood control's 10 per 10 s.
    await world.start_bot(world.config(limits={"commands": 30}))
    room, ada, grace, chair = world.room_id, world.ada, world.grace, world.chair
    await command(chair, room, "!startmeeting")
    said = []
    for n in range(24):
        person = ada if n % 2 else grace
        text = f"update {n}: " + " ".join(f"word{n}x{k}" for k in range(160))
        said.append(text)
        await command(person, room, f"!update {text}")
    mark = len(ada.events)
    await command(chair, room, "!endmeeting")
    last = await ada.wait_for(lambda e: re.match(r"\*\(continued, part (\d+) of \1\)\*",
                                                 body_of(e)) is not None, after=mark, timeout=30)
    count = int(re.match(r"\*\(continued, part (\d+)", body_of(last))[1])
    parts = [e for e in ada.events[mark:] if e.get("sender") == world.bot_user.user_id
             and (body_of(e).startswith("# Example Team Meeting")
                  or body_of(e).startswith("*(continued, part"))]
    assert len(parts) == count >= 2
    assert body_of(parts[0]).startswith("# Example Team Meeting")
    for number, part in enumerate(parts[1:], start=2):
        assert body_of(part).startswith(f"*(continued, part {number} of {count})*")
    posted = "".join(body_of(part) for part in parts)
    assert all(posted.count(text) == 1 for text in said), "every update posted exactly once"
