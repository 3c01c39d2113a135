"""Faults on a real Synapse: a crash mid-burst, a homeserver outage, tight rate limits.

Each test runs its own Synapse, since stopping or throttling the shared one would
disturb the others. The bot runs as a real `chatbot run` process where it is killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from chatbot.app import DATABASE_FILE
from chatbot.demo.homeserver import LocalHomeserver, RegisteredUser
from chatbot.demo.person import Person, body_of, is_reaction

from .conftest import minute_from_now, unique
from .support.assertions import assert_handled_once, pending_in_database

BOT_PASSWORD = "fault-bot-password"


class BotProcess:
    """`chatbot run` as an operator starts it; its log is kept for the test to read."""

    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self.process: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatbot.cli", "run", "-c", str(self.config_file),
            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        listening = asyncio.Event()
        mark = len(self.log)

        async def read() -> None:
            assert self.process is not None and self.process.stderr is not None
            while line := await self.process.stderr.readline():
                self.log.append(line.decode())
                if "listening in" in self.log[-1]:
                    listening.set()

        self._reader = asyncio.create_task(read())
        try:
            await asyncio.wait_for(listening.wait(), 60)
        except TimeoutError:
            raise AssertionError("the bot did not start:\n" + "".join(self.log[mark:])) from None

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()
        if self._reader is not None:
            await self._reader

    async def terminate(self) -> tuple[int, float]:
        """SIGTERM; the exit status and how long it took."""
        assert self.process is not None
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), 15)
        if self._reader is not None:
            await self._reader
        return code, time.monotonic() - began

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log if text in line]


def write_config(path: Path, hs: LocalHomeserver, bot: RegisteredUser, room_id: str,
                 **meeting: Any) -> Path:
    entry = {"id": "team", "title": "Fault Meeting", "room": room_id, "timezone": "UTC",
             "start": minute_from_now(hours=2).strftime("%Y-%m-%d %H:%M:%S"),
             "rrule": "FREQ=WEEKLY", **meeting}
    path.write_text(yaml.safe_dump({
        "matrix": {"homeserver": hs.url, "user_id": bot.user_id, "password": BOT_PASSWORD},
        "data_dir": str(path.parent / "data"), "meetings": [entry]}))
    return path


def recorded_updates(data_dir: Path) -> Counter[str]:
    with sqlite3.connect(data_dir / "chatbot.db") as db:
        return Counter(text for (text,) in db.execute(
            "SELECT text FROM entries WHERE kind = 'update'"))


@pytest.fixture
def own_homeserver() -> Iterator[LocalHomeserver]:
    with LocalHomeserver.start() as hs:
        yield hs


async def people(hs: LocalHomeserver, count: int, prefix: str) -> list[Person]:
    users = await asyncio.gather(*(hs.register_user(unique(f"{prefix}{n}")) for n in range(count)))
    return [Person(hs.nio_client(user), f"{prefix}{n}") for n, user in enumerate(users)]


@pytest.fixture
async def crowd(own_homeserver: LocalHomeserver) -> AsyncIterator[tuple[Person, list[Person]]]:
    chair, *members = await people(own_homeserver, 31, "p")
    yield chair, members
    await asyncio.gather(*(person.close() for person in [chair, *members]))


async def test_a_crash_mid_burst_loses_nothing_and_doubles_nothing(
    own_homeserver: LocalHomeserver, crowd: tuple[Person, list[Person]], tmp_path: Path,
) -> None:
    hs, (chair, members) = own_homeserver, crowd
    bot = await hs.register_user(unique("bot"), BOT_PASSWORD)
    room = await chair.create_room(invite=[bot.user_id, *(m.user_id for m in members)])
    await asyncio.gather(*(member.join(room) for member in members))
    await chair.start()
    config = write_config(tmp_path / "config.yaml", hs, bot, room)
    process = BotProcess(config)
    await process.start()

    def acknowledged() -> int:
        return sum(e.get("type") == "m.reaction" for e in chair.events)

    async def burst(member: Person, index: int) -> list[str]:
        return [await member.say(room, f"!update person {index} command {n}") for n in range(10)]

    sending = asyncio.gather(*(burst(member, i) for i, member in enumerate(members)))
    # Kill the bot part-way through: once it has acknowledged some, not all.
    while acknowledged() < 60:
        await chair.wait_for(lambda e: e.get("type") == "m.reaction", after=len(chair.events))
    await process.kill()
    acknowledged_before_crash = acknowledged()
    sent = [event_id for batch in await sending for event_id in batch]
    assert len(sent) == 300 and acknowledged_before_crash < 300

    await process.start()
    for event_id in sent:
        await chair.wait_for(lambda e, event_id=event_id: is_reaction(e, event_id), timeout=120)
    # Everything sent before this command is handled before it.
    sentinel = await chair.say(room, "!here")
    await chair.wait_for(lambda e: is_reaction(e, sentinel))

    await assert_handled_once(chair, room, bot.user_id, [*sent, sentinel],
                              pending=pending_in_database(tmp_path / "data" / DATABASE_FILE))
    recorded = recorded_updates(tmp_path / "data")
    assert len(recorded) == 300 and set(recorded.values()) == {1}
    code, took = await process.terminate()
    assert code == 0 and took < 5
    print(f"\ncrash test: 300 commands from 30 people; bot killed after "
          f"{acknowledged_before_crash} acknowledgements; all 300 recorded once, one ✅ each; "
          f"SIGTERM exit in {took:.2f} s")


async def test_a_homeserver_outage_is_waited_out_without_losing_anything(
    own_homeserver: LocalHomeserver, tmp_path: Path,
) -> None:
    hs = own_homeserver
    bot = await hs.register_user(unique("bot"), BOT_PASSWORD)
    chair, ada = await people(hs, 2, "o")
    room = await chair.create_room(invite=[bot.user_id, ada.user_id])
    await ada.join(room)
    await ada.start()
    # The 40 s reminder falls due during the outage; the meeting starts after it.
    config = write_config(tmp_path / "config.yaml", hs, bot, room, rrule=None,
                          start=minute_from_now(seconds=55).strftime("%Y-%m-%d %H:%M:%S"),
                          reminders=["40s"])
    process = BotProcess(config)
    await process.start()
    try:
        before = await ada.say(room, "!update before the outage")
        await ada.wait_for(lambda e: is_reaction(e, before))
        last_word = await ada.say(room, "!update sent as the server went down")
        await asyncio.to_thread(hs.stop_process)
        cpu_before = process.cpu_seconds()
        await asyncio.sleep(30)  # sleep-ok: the outage itself is what is being tested
        cpu_used = process.cpu_seconds() - cpu_before
        await asyncio.to_thread(hs.start_process)

        await ada.wait_for(lambda e: is_reaction(e, last_word), timeout=60)
        reminder = await ada.wait_for(lambda e: "**Reminder:**" in body_of(e), timeout=60)
        after = await ada.say(room, "!update after the outage")
        await ada.wait_for(lambda e: is_reaction(e, after), timeout=30)
        assert "starts in" in body_of(reminder)
        said = await assert_handled_once(
            ada, room, bot.user_id, [before, last_word, after],
            pending=pending_in_database(tmp_path / "data" / DATABASE_FILE))
        assert len([e for e in said if "**Reminder:**" in body_of(e)]) == 1
        assert recorded_updates(tmp_path / "data") == Counter(
            ["before the outage", "sent as the server went down", "after the outage"])
        assert cpu_used < 1.0, f"busy while waiting: {cpu_used:.2f} s of CPU in 30 s"
        assert len(process.lines("sync failed: homeserver unreachable")) == 1
        assert len(process.lines("sync works again")) == 1
        assert len(process.lines("Traceback")) == 0
    finally:
        code, _ = await process.terminate()
        await ada.close()
        await chair.close()
    assert code == 0
    print(f"\noutage test: 30 s down; {cpu_used:.3f} s CPU while waiting; "
          f"{len(process.lines('unreachable'))} warning line(s), "
          f"{len(process.lines('works again'))} recovery line(s)")


def answer_to(event: dict[str, Any], bot_id: str) -> str | None:
    """The command a bot's ✅ or reply answers, if the event is one."""
    if event.get("sender") != bot_id or event.get("type") not in ("m.reaction",
                                                                  "m.room.message"):
        return None
    relation = (event.get("content") or {}).get("m.relates_to") or {}
    return relation.get("event_id") or (relation.get("m.in_reply_to") or {}).get("event_id")


async def exempt_from_rate_limits(hs: LocalHomeserver, admin: RegisteredUser,
                                  user_id: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            f"{hs.url}/_synapse/admin/v1/users/{user_id}/override_ratelimit",
            headers={"Authorization": f"Bearer {admin.access_token}"},
            json={"messages_per_second": 0, "burst_count": 0}) as response:
        assert response.status == 200, await response.text()


async def test_rate_limits_are_honoured_without_losing_or_reordering_replies(
    tmp_path: Path,
) -> None:
    from chatbot.app import BotApp
    from chatbot.config import load_config

    with LocalHomeserver.start(
            rate_limits=True,
            config_overrides={"rc_message": {"per_second": 2, "burst_count": 2}}) as hs:
        admin = await hs.register_user(unique("admin"), admin=True)
        bot = await hs.register_user(unique("bot"), BOT_PASSWORD)
        (ada,) = await people(hs, 1, "r")
        await exempt_from_rate_limits(hs, admin, ada.user_id)
        room = await ada.create_room(invite=[bot.user_id])
        await ada.start()
        app = BotApp(load_config(write_config(tmp_path / "config.yaml", hs, bot, room)))
        running = asyncio.create_task(app.run())
        try:
            await asyncio.wait_for(app.ready.wait(), 60)
            commands = []
            for n in range(12):
                text = f"!agenda (999 min) too long {n}" if n % 4 == 3 else f"!update {n}"
                commands.append(await ada.say(room, text))
            await ada.wait_until(lambda: set(commands) <= {
                answer_to(e, bot.user_id) for e in ada.events}, timeout=90)
            refused = commands[3::4]
            assert app.store is not None
            said = await assert_handled_once(
                ada, room, bot.user_id, [c for c in commands if c not in refused], refused,
                pending=app.store.read.has_pending_outbox)
        finally:
            app.stop.set()
            await asyncio.wait_for(running, 20)
            await ada.close()
        # ✅s may overtake each other (they go side by side); replies keep their order.
        assert [answer_to(e, bot.user_id) for e in said] == refused, (
            "the replies came in the order of their commands")
