"""The full log of a meeting (`log: true`), kept by the bot on a real Synapse while people
talk, edit and redact on real Matrix clients, and saved beside the note at the close."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatbot.demo.homeserver import LocalHomeserver
from chatbot.demo.person import Person, body_of, is_reaction
from chatbot.render import LOGGED_NOTICE

from .conftest import World, make_world
from .support.waiting import eventually

# `- 09:00:05 **Ada:** text`: the time, who, and what they said.
BULLET = re.compile(r"^- \d\d:\d\d:\d\d \*\*(?P<name>.+?):\*\* (?P<text>.*)$")


async def command(person: Person, room_id: str, text: str, timeout: float = 20) -> str:
    """Send a command and wait for the bot's ✅ on it."""
    event_id = await person.say(room_id, text)
    await person.wait_for(lambda e: is_reaction(e, event_id), timeout)
    return event_id


def bullets(log: str) -> list[tuple[str, str]]:
    """(name, first line of text) of each message in a saved log, in order."""
    return [(match["name"], match["text"]) for line in log.split("\n")
            if (match := BULLET.match(line)) is not None]


async def saved_files(world: World, pattern: str) -> list[Path]:
    return sorted((world.tmp / "data" / "notes" / "team").glob(pattern))


async def run_logged_meeting(world: World) -> str:
    """People talk in a logged meeting, one edits and one redacts; the saved log."""
    room, ada, grace, chair = world.room_id, world.ada, world.grace, world.chair
    await ada.say(room, "said before the start")
    mark = len(chair.events)
    await command(chair, room, "!startmeeting")
    start = await chair.wait_for(lambda e: "is starting now" in body_of(e), after=mark)
    assert body_of(start).endswith(LOGGED_NOTICE)

    typo = await ada.say(room, "helo everyone <script>window.pwned = 1</script>")
    await command(ada, room, "!here")
    regret = await grace.say(room, "my password is hunter2")
    await grace.say(room, "# not a heading\n[click](javascript:alert(1))")
    await ada.edit(room, typo, "hello everyone <script>window.pwned = 1</script>")
    await grace.redact(room, regret)
    await command(chair, room, "!endmeeting")
    await ada.say(room, "said after the close")

    async def log_saved() -> bool:
        return bool(await saved_files(world, "*.log.md"))

    await eventually(log_saved, "the log file is saved", timeout=30)
    (log_file,) = await saved_files(world, "*.log.md")
    (note_file,) = [path for path in await saved_files(world, "*.md")
                    if not path.name.endswith(".log.md")]
    assert log_file.name == note_file.name.removesuffix(".md") + ".log.md"
    return log_file.read_text(encoding="utf-8")


async def test_a_logged_meeting_saves_every_message_beside_the_note(world: World) -> None:
    await world.start_bot(world.config(log=True))
    log = await run_logged_meeting(world)

    assert bullets(log) == [
        ("Meeting Bot", "\\*\\*Example Team Meeting\\*\\* is starting now.  "),
        ("Ada", "hello everyone &lt;script>window.pwned = 1&lt;/script> *(edited)*"),
        ("Ada", "!here"),
        ("Grace", "\\# not a heading  "),
        ("Sam Chair", "!endmeeting"),
    ]
    assert "    \\[click\\](javascript:alert(1))" in log
    assert LOGGED_NOTICE in log, "the whole announcement is logged"
    for absent in ("hunter2", "before the start", "after the close", "helo "):
        assert absent not in log
    store = world.bots[0].app.store
    assert store is not None
    (sitting,) = [m for m in await store.read.meetings_of_series("team") if m.is_closed]
    kept = await store.read.log_lines(sitting.id)
    assert len(kept) == 5 and all("hunter2" not in line.body for line in kept)


async def test_a_meeting_without_log_writes_no_log(world: World) -> None:
    await world.start_bot(world.config())
    room, ada, chair = world.room_id, world.ada, world.chair
    mark = len(chair.events)
    await command(chair, room, "!startmeeting")
    start = await chair.wait_for(lambda e: "is starting now" in body_of(e), after=mark)
    assert LOGGED_NOTICE not in body_of(start)
    await ada.say(room, "hello")
    await command(chair, room, "!endmeeting")

    async def note_saved() -> bool:
        return bool(await saved_files(world, "*.md"))

    await eventually(note_saved, "the note file is saved", timeout=30)
    bot = world.bots[0]

    async def drained() -> bool:
        return not await bot.outbox_pending()

    await eventually(drained, "every job of the close is done")
    assert await saved_files(world, "*.log.md") == []


@pytest.fixture
async def crypto_world(homeserver: LocalHomeserver, tmp_path: Path) -> AsyncIterator[World]:
    async with make_world(homeserver, tmp_path, encrypted=True) as made:
        yield made


async def test_an_encrypted_room_is_logged_as_it_reads_decrypted(crypto_world: World) -> None:
    world = crypto_world
    await world.start_bot(world.config(log=True))
    log = await run_logged_meeting(world)
    assert [name for name, _ in bullets(log)] == [
        "Meeting Bot", "Ada", "Ada", "Grace", "Sam Chair"]
    assert "hello everyone" in log and "hunter2" not in log
