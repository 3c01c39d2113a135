"""Who may chair, and the `chatbot` command line as an operator runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from chatbot.demo.person import body_of, is_reaction, is_reply

from .conftest import BOT_PASSWORD, World


async def answer(person, room_id: str, text: str) -> dict:
    """Send a command; return the bot's ✅ or its reply, whichever it gives."""
    event_id = await person.say(room_id, text)
    return await person.wait_for(lambda e: is_reaction(e, event_id) or is_reply(e, event_id))


async def test_room_creators_and_moderators_chair_without_being_configured(world: World) -> None:
    await world.chair.client.room_put_state(
        world.room_id, "m.room.power_levels",
        {"users": {world.grace.user_id: 50}, "users_default": 0},
    )
    await world.start_bot(world.config(chairs=[]))
    refused = await answer(world.ada, world.room_id, "!startmeeting")
    assert "Only chairs" in body_of(refused)
    started = await answer(world.chair, world.room_id, "!startmeeting Planning")
    assert started["type"] == "m.reaction"
    announcement = await world.ada.wait_for(lambda e: "is starting now" in body_of(e))
    assert body_of(announcement).startswith("**Planning** is starting now.")
    assert (await answer(world.grace, world.room_id, "!endmeeting"))["type"] == "m.reaction"
    assert "No meeting is open" in body_of(await answer(world.chair, world.room_id, "!endmeeting"))


async def test_help_and_when_answer_in_the_room(world: World) -> None:
    await world.start_bot(world.config())
    help_text = body_of(await answer(world.ada, world.room_id, "!help"))
    for syntax in ("!here [Name / Affiliation / @handle]", "!agenda [(N min)] text",
                   "!celebrate text` (or `!report`)", "!endmeeting"):
        assert syntax in help_text
    when = body_of(await answer(world.ada, world.room_id, "!when"))
    assert when.count("**Example Team Meeting**") == 3
    assert "UTC" in when and "in your time zone" in when


def write_config(world: World, path: Path) -> Path:
    config = world.config()
    data = {
        "matrix": {"homeserver": world.hs.url, "user_id": world.bot_user.user_id,
                   "password": BOT_PASSWORD},
        "data_dir": "data",
        "meetings": [{
            "id": "team", "title": "Example Team Meeting", "room": world.room_id,
            "timezone": "Europe/London",
            "start": config.meetings[0].start.strftime("%Y-%m-%d %H:%M:%S"),
            "rrule": "FREQ=WEEKLY", "chairs": [world.chair.user_id],
        }],
    }
    path.write_text(yaml.safe_dump(data))
    return path


async def test_run_then_sigterm_exits_cleanly_and_notes_prints_the_meeting(world: World) -> None:
    config_file = write_config(world, world.tmp / "config.yaml")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatbot.cli", "run", "-c", str(config_file),
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log: list[str] = []
    try:
        # Commands sent before its first sync are history to the bot: wait until it listens.
        while not log or "listening in 1 rooms" not in log[-1]:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, "the bot exited early:\n" + "".join(log)
            log.append(line.decode())
        for text in ("!startmeeting", "!here", "!update from a real process", "!endmeeting"):
            person = world.chair if "meeting" in text else world.ada
            event_id = await person.say(world.room_id, text)
            await person.wait_for(lambda e, event_id=event_id: is_reaction(e, event_id),
                                  timeout=60)
        await world.ada.wait_for(lambda e: body_of(e).startswith("# Example Team Meeting"))
        # A backup while the bot runs is a consistent copy with everything recorded.
        backup = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatbot.cli", "backup", "-c", str(config_file),
            str(world.tmp / "backup.db"), stdout=subprocess.PIPE)
        out, _ = await asyncio.wait_for(backup.communicate(), 30)
        assert backup.returncode == 0 and "schema version" in out.decode()
        with sqlite3.connect(world.tmp / "backup.db") as copy:
            texts = [row[0] for row in copy.execute("SELECT text FROM entries")]
        assert texts == ["from a real process"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), 10)
    stderr = "".join(log) + rest.decode()
    assert process.returncode == 0, stderr
    assert BOT_PASSWORD not in stderr
    assert "stopped" in stderr
    notes = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatbot.cli", "notes", "-c", str(config_file), "team",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(notes.communicate(), 30)
    assert notes.returncode == 0, err.decode()
    assert "- **Ada:** from a real process" in out.decode()
    saved = list((world.tmp / "data" / "notes" / "team").glob("*.md"))
    assert [p.read_text() for p in saved] == [out.decode()]
