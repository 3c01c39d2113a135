"""Faults on the wire between the bot and a real Synapse, and on its disk.

The bot runs as a real `chatbot run` process whose homeserver is our fault proxy
(tests/support/faultproxy.py); people's clients talk to Synapse directly. Each test
injects one fault, sends commands while it lasts, lifts it, and then checks what a
room would see: the process still runs, each command has exactly one ✅, nothing is
posted twice, and the bot's CPU over the fault window (from /proc) stayed under 5%.
What was measured is printed (`pytest -s`) for the closing note.

Duplicates are counted on the homeserver after the bot has drained (its outbox has
nothing left to send), not from what a person's sync happened to deliver by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from chatbot.app import DATABASE_FILE
from chatbot.config import Config
from chatbot.demo.homeserver import LocalHomeserver, RegisteredUser
from chatbot.demo.person import Event, Person, body_of, is_reaction, is_reply

from .conftest import RunningBot, World, minute_from_now, unique
from .support.assertions import (
    assert_handled_once,
    checks_on,
    messages_from,
    pending_in_database,
    until_drained,
)
from .support.faultproxy import Action, FaultProxy, Rule
from .test_faults_e2e import BotProcess, people

BOT_PASSWORD = "wire-fault-bot-password"
# How long each fault is held while the bot's CPU is measured.
FAULT_WINDOW = 5.0
CPU_LIMIT_PERCENT = 5.0
# Short waits between retries keep the recovery, and this file, quick.
RETRY_CAP = "2s"
# Flood control and per-meeting caps (`limits:`, where the bot has them) would refuse
# the bursts from one person that these tests send on purpose; only the flood test
# keeps them.
NO_FLOOD_CONTROL: dict[str, Any] = (
    {"limits": {"commands": 1000, "per": "1s", "entries_per_person": 1000}}
    if "limits" in Config.__struct_fields__ else {})


# --- what the tests measure -------------------------------------------------------------


@dataclass
class Measured:
    """One fault's numbers, as the closing note quotes them."""

    fault: str
    commands: int = 0
    handled: int = 0
    duplicates: int = 0
    cpu_percent: float = 0.0
    recovery_seconds: float = 0.0
    detail: str = ""

    def report(self) -> None:
        print(f"\nFAULT {self.fault}: {self.handled}/{self.commands} commands handled once, "
              f"{self.duplicates} duplicate(s), CPU {self.cpu_percent:.2f}% over "
              f"{FAULT_WINDOW:.0f} s, recovered {self.recovery_seconds:.2f} s after the "
              f"fault was lifted; {self.detail}")


async def cpu_percent_over(process: BotProcess, seconds: float) -> float:
    """The bot's CPU (user + system) over the next `seconds`, as a share of one core."""
    cpu_before, began = process.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)  # sleep-ok: the fault window itself is what is measured
    return 100 * (process.cpu_seconds() - cpu_before) / (time.monotonic() - began)


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a state outside any event stream (a file, a row); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)  # sleep-ok: polling interval of a bounded wait


def query(data_dir: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the live bot's database as another process would (read-only, WAL)."""
    with contextlib.closing(sqlite3.connect(
            f"file:{data_dir / DATABASE_FILE}?mode=ro", uri=True, timeout=5)) as db:
        return db.execute(sql, args).fetchall()


async def drained(data_dir: Path, timeout: float = 30) -> None:
    """Until nothing is left to send: after this, any duplicate is on the homeserver."""
    await until_drained(pending_in_database(data_dir / DATABASE_FILE), timeout)


@dataclass
class Seen:
    """What the homeserver holds from the bot in a room: ✅s on the commands asked
    about, and the bot's messages."""

    checks: dict[str, int]
    messages: list[Event]

    @property
    def duplicates(self) -> int:
        posted = Counter((body_of(e), ((e["content"].get("m.relates_to") or {})
                                       .get("m.in_reply_to") or {}).get("event_id"))
                         for e in self.messages)
        return (sum(n - 1 for n in self.checks.values() if n > 1)
                + sum(n - 1 for n in posted.values() if n > 1))

    def bodies(self, text: str) -> list[str]:
        return [body_of(e) for e in self.messages if text in body_of(e)]


async def seen_in_room(person: Person, room_id: str, bot_id: str,
                       commands: Iterable[str]) -> Seen:
    """Ask the homeserver (relations, room history), a few requests at a time."""
    at_once = asyncio.Semaphore(16)

    async def checks(command: str) -> int:
        async with at_once:
            return await checks_on(person, room_id, command, bot_id)

    commands = list(commands)
    counts = await asyncio.gather(*(checks(command) for command in commands))
    return Seen(dict(zip(commands, counts, strict=True)),
                await messages_from(person, room_id, bot_id))


# --- the rig: Synapse, our proxy, people, and the bot behind the proxy -------------------------


@dataclass
class Rig:
    hs: LocalHomeserver
    proxy: FaultProxy
    tmp: Path
    bot_user: RegisteredUser
    chair: Person
    ada: Person
    room_id: str
    rooms: dict[str, str] = field(default_factory=dict)
    process: BotProcess | None = None

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    def write_config(self, *, flood_control: bool = False, **meeting: Any) -> Path:
        rooms = self.rooms or {"team": self.room_id}
        meetings = [{"id": series, "title": f"Wire Fault Meeting {series}", "room": room,
                     "timezone": "UTC", "rrule": "FREQ=WEEKLY",
                     "start": minute_from_now(hours=2).strftime("%Y-%m-%d %H:%M:%S"),
                     **meeting} for series, room in rooms.items()]
        path = self.tmp / "config.yaml"
        path.write_text(yaml.safe_dump({
            "matrix": {"homeserver": self.proxy.url, "user_id": self.bot_user.user_id,
                       "password": BOT_PASSWORD},
            "data_dir": str(self.data_dir),
            "jobs": {"retry_cap": RETRY_CAP},
            "meetings": meetings,
            **({} if flood_control else NO_FLOOD_CONTROL)}))
        return path

    async def start_bot(self, *, flood_control: bool = False, **meeting: Any) -> BotProcess:
        self.process = BotProcess(self.write_config(flood_control=flood_control, **meeting))
        await self.process.start()
        return self.process

    def assert_running(self) -> None:
        assert self.process is not None and self.process.process is not None
        assert self.process.process.returncode is None, (
            "the bot process ended:\n" + "".join(self.process.log[-40:]))

    async def acknowledged(self, person: Person, text: str, *, room: str | None = None,
                           timeout: float = 20) -> str:
        event_id = await person.say(room or self.room_id, text)
        await person.wait_for(lambda e: is_reaction(e, event_id), timeout=timeout)
        return event_id

    async def all_acknowledged(self, person: Person, event_ids: list[str],
                               timeout: float = 30) -> None:
        def acknowledged() -> set[str]:
            return {(e.get("content") or {}).get("m.relates_to", {}).get("event_id")
                    for e in person.events if e.get("type") == "m.reaction"}

        try:
            await person.wait_until(lambda: set(event_ids) <= acknowledged(), timeout=timeout)
        except TimeoutError:
            missing = [n for n, e in enumerate(event_ids) if e not in acknowledged()]
            log = "".join(self.process.log[-30:]) if self.process else ""
            raise AssertionError(f"commands {missing} of {len(event_ids)} got no ✅ in "
                                 f"{timeout} s; the bot's log ends:\n{log}") from None

    async def seen(self, commands: Iterable[str], room: str | None = None) -> Seen:
        return await seen_in_room(self.chair, room or self.room_id, self.bot_user.user_id,
                                  commands)

    def updates_recorded(self) -> Counter[str]:
        return Counter(text for (text,) in query(
            self.data_dir, "SELECT text FROM entries WHERE kind = 'update'"))


@pytest.fixture
async def rig(homeserver: LocalHomeserver, tmp_path: Path) -> AsyncIterator[Rig]:
    bot_user = await homeserver.register_user(unique("wirebot"), BOT_PASSWORD)
    chair, ada = await people(homeserver, 2, "w")
    room_id = await chair.create_room(invite=[bot_user.user_id, ada.user_id])
    await ada.join(room_id)
    await asyncio.gather(chair.start(), ada.start())
    async with FaultProxy.to(homeserver.url) as proxy:
        made = Rig(homeserver, proxy, tmp_path, bot_user, chair, ada, room_id)
        try:
            yield made
        finally:
            if (made.process is not None and made.process.process is not None
                    and made.process.process.returncode is None):
                await made.process.terminate()
            await asyncio.gather(chair.close(), ada.close())


async def fault_window(rig: Rig, rule: Rule, measured: Measured) -> None:
    """Hold an injected fault for the window, measuring CPU; then lift it."""
    assert rig.process is not None
    await rig.proxy.wait_for_hits(rule, 1, timeout=30)
    measured.cpu_percent = await cpu_percent_over(rig.process, FAULT_WINDOW)
    measured.detail = f"{rule.hits} request(s) caught by the fault"
    rig.assert_running()
    rig.proxy.lift(rule)


async def check_handled_once(rig: Rig, commands: list[str], measured: Measured,
                             replied: Iterable[str] = ()) -> Seen:
    """Report the fault's numbers, then hold the bot to them."""
    await drained(rig.data_dir)
    seen = await rig.seen(commands)
    measured.commands = len(commands)
    measured.handled = sum(seen.checks[c] == 1 for c in commands)
    measured.duplicates = seen.duplicates
    measured.report()
    rig.assert_running()
    await assert_handled_once(rig.chair, rig.room_id, rig.bot_user.user_id, commands, replied,
                              pending=pending_in_database(rig.data_dir / DATABASE_FILE))
    assert measured.cpu_percent < CPU_LIMIT_PERCENT, "busy while the fault lasted"
    return seen


# --- one fault per homeserver call ---------------------------------------------------------


async def test_a_reset_join_after_an_invite_is_retried(rig: Rig) -> None:
    measured = Measured("reset POST /join (after an invite)")
    # The bot is configured for a room it is not invited to yet: it waits for the invite.
    room_id = await rig.chair.create_room(invite=[])
    rig.room_id = room_id
    await rig.start_bot()
    rule = rig.proxy.add("POST", r"/join/", Action.RESET)
    invited = await rig.chair.client.room_invite(room_id, rig.bot_user.user_id)
    assert not hasattr(invited, "status_code"), invited
    await fault_window(rig, rule, measured)
    lifted = time.monotonic()
    await rig.chair.wait_for(lambda e: e.get("room_id") == room_id
                             and e.get("type") == "m.room.member"
                             and e.get("state_key") == rig.bot_user.user_id
                             and (e.get("content") or {}).get("membership") == "join",
                             timeout=30)
    measured.recovery_seconds = time.monotonic() - lifted
    # Messages from before the bot joined are not its business; these come after.
    commands = [await rig.chair.say(room_id, f"!update after the join {n}") for n in range(3)]
    await rig.all_acknowledged(rig.chair, commands)
    await check_handled_once(rig, commands, measured)


async def test_a_reset_gap_fill_loses_no_command(rig: Rig) -> None:
    measured = Measured("reset GET /messages (filling a gap)")
    await rig.start_bot()
    # Hold the bot's long poll while more commands arrive than one sync returns (50),
    # so the homeserver leaves a gap the bot must page back through.
    held = rig.proxy.add("GET", r"/sync$", Action.STALL)
    await rig.proxy.wait_for_hits(held)
    commands = [await rig.ada.say(rig.room_id, f"!update in the gap {n}") for n in range(60)]
    rule = rig.proxy.add("GET", r"/messages$", Action.RESET)
    rig.proxy.lift(held)
    await fault_window(rig, rule, measured)
    lifted = time.monotonic()
    await rig.all_acknowledged(rig.ada, commands)
    measured.recovery_seconds = time.monotonic() - lifted
    await check_handled_once(rig, commands, measured)
    assert rig.updates_recorded() == Counter(f"in the gap {n}" for n in range(60))


async def test_a_chair_check_that_cannot_reach_the_homeserver_is_retried(rig: Rig) -> None:
    measured = Measured("reset GET /state (power levels for !endmeeting)")
    # Ada chairs by configuration (no lookup); the room's creator is a chair by power
    # level, which the bot must look up, and has not yet.
    await rig.start_bot(chairs=[rig.ada.user_id])
    started = await rig.acknowledged(rig.ada, "!startmeeting")
    rule = rig.proxy.add("GET", r"/rooms/[^/]+/state$", Action.RESET)
    ending = await rig.chair.say(rig.room_id, "!endmeeting")
    updates = [await rig.ada.say(rig.room_id, f"!update while the lookup fails {n}")
               for n in range(2)]
    await fault_window(rig, rule, measured)
    lifted = time.monotonic()
    answer = await rig.chair.wait_for(
        lambda e: is_reaction(e, ending) or is_reply(e, ending), timeout=30)
    assert is_reaction(answer, ending), f"the chair was answered {body_of(answer)!r}"
    measured.recovery_seconds = time.monotonic() - lifted
    commands = [started, ending, *updates]
    await rig.all_acknowledged(rig.ada, commands)
    seen = await check_handled_once(rig, commands, measured)
    assert len(seen.bodies("is closed")) == 1, "the meeting closed once"
    assert seen.bodies("something went wrong") == [], "the chair check was not a failure"
    assert [m for m in seen.messages if is_reply(m, ending)] == [], "no refusal or apology"


@pytest.mark.parametrize("action", [Action.RESET, Action.DROP_ANSWER],
                         ids=["reset", "answer-lost"])
async def test_failed_sends_are_retried_without_doubling(rig: Rig, action: Action) -> None:
    measured = Measured({Action.RESET: "reset PUT /send",
                         Action.DROP_ANSWER: "answers to PUT /send lost (sent all the same)"
                         }[action])
    await rig.start_bot()
    rule = rig.proxy.add("PUT", r"/send/", action)
    commands = [await rig.ada.say(rig.room_id, f"!update while sends fail {n}")
                for n in range(5)]
    commands.append(await rig.ada.say(rig.room_id, "!agenda (999 min) gets a reply"))
    await fault_window(rig, rule, measured)
    lifted = time.monotonic()
    await drained(rig.data_dir)
    measured.recovery_seconds = time.monotonic() - lifted
    await rig.all_acknowledged(rig.ada, commands[:5])
    await check_handled_once(rig, commands[:5], measured, replied=commands[5:])


async def test_a_sync_answered_502_is_waited_out(rig: Rig) -> None:
    measured = Measured("502 on GET /sync")
    await rig.start_bot()
    rule = rig.proxy.add("GET", r"/sync$", Action.BAD_GATEWAY)
    # The long poll already under way ends with this command; the next sync meets the 502.
    commands = [await rig.ada.say(rig.room_id, "!update as the proxy broke")]
    await rig.proxy.wait_for_hits(rule)
    commands += [await rig.ada.say(rig.room_id, f"!update during the 502s {n}")
                 for n in range(4)]
    await fault_window(rig, rule, measured)
    lifted = time.monotonic()
    await rig.all_acknowledged(rig.ada, commands)
    measured.recovery_seconds = time.monotonic() - lifted
    await check_handled_once(rig, commands, measured)


async def test_a_reset_key_upload_is_done_later(rig: Rig) -> None:
    measured = Measured("reset POST /keys/upload")
    rule = rig.proxy.add("POST", r"/keys/upload$", Action.RESET)
    await rig.start_bot()
    device_id = json.loads((rig.data_dir / "session.json").read_text())["device_id"]

    async def uploaded() -> bool:
        async with aiohttp.ClientSession() as http, http.post(
                f"{rig.hs.url}/_matrix/client/v3/keys/query",
                headers={"Authorization": f"Bearer {rig.chair.client.access_token}"},
                json={"device_keys": {rig.bot_user.user_id: []}}) as response:
            keys = (await response.json())["device_keys"].get(rig.bot_user.user_id, {})
        return device_id in keys

    commands = [await rig.ada.say(rig.room_id, f"!update keys not uploaded {n}")
                for n in range(3)]
    await rig.proxy.wait_for_hits(rule)
    assert not await uploaded(), "the fault kept the keys from the homeserver"
    await fault_window(rig, rule, measured)
    lifted = time.monotonic()
    # The next sync (this command ends the long poll) uploads the keys.
    commands.append(await rig.ada.say(rig.room_id, "!update after the key fault"))
    while not await uploaded():
        assert time.monotonic() - lifted < 30, "the keys were never uploaded"
        await asyncio.sleep(0.1)  # sleep-ok: polling interval of a bounded wait
    measured.recovery_seconds = time.monotonic() - lifted
    await rig.all_acknowledged(rig.ada, commands)
    await check_handled_once(rig, commands, measured)


# --- faults on the bot's own disk, a kill, and a flood ---------------------------------------


def note_files(data_dir: Path) -> list[Path]:
    folder = data_dir / "notes" / "team"
    return sorted(folder.iterdir()) if folder.is_dir() else []


async def test_an_unwritable_notes_folder_is_retried_and_the_chairs_told(rig: Rig) -> None:
    measured = Measured("notes/<meeting id> is a file (note cannot be saved)")
    process = await rig.start_bot(chairs=[rig.chair.user_id])
    started = await rig.acknowledged(rig.chair, "!startmeeting")
    update = await rig.acknowledged(rig.ada, "!update written into the note")
    in_the_way = rig.data_dir / "notes" / "team"
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_text("a file where the meeting's notes folder should be\n")
    ending = await rig.chair.say(rig.room_id, "!endmeeting")
    told = await rig.chair.wait_for(
        lambda e: "**Chairs:** I could not save the meeting note" in body_of(e), timeout=30)
    measured.cpu_percent = await cpu_percent_over(process, FAULT_WINDOW)
    rig.assert_running()
    assert not in_the_way.is_dir(), "the bot must not remove what is in the way itself"
    in_the_way.unlink()
    lifted = time.monotonic()
    await eventually(lambda: bool(note_files(rig.data_dir)), 30, "the note file")
    measured.recovery_seconds = time.monotonic() - lifted
    await eventually(lambda: bool(process.lines("done after")), 10, "the job's success logged")
    (retried,) = process.lines("done after")
    measured.detail = "note file job " + retried.split("done after", 1)[1].strip()
    seen = await check_handled_once(rig, [started, update, ending], measured)
    (note,) = note_files(rig.data_dir)
    assert note.suffix == ".md" and "written into the note" in note.read_text()
    assert f"notes/team/{note.name}" in body_of(told), "the chairs are told which file"
    assert len(seen.bodies("I could not save the meeting note")) == 1, "the chairs told once"
    assert len(seen.bodies("is closed")) == 1, "the meeting closed once"
    assert seen.bodies(note.read_text()) == [note.read_text()], "the note posted once"
    assert query(rig.data_dir, "SELECT count(*) FROM meetings WHERE ended_at IS NOT NULL") == [
        (1,)]
    assert process.lines("Traceback") == [], "a failing note is no crash"


async def test_a_full_database_refuses_commands_whole_and_recovers(world: World) -> None:
    # max_page_count holds per connection, so the limit is set on the live bot's own
    # writer: the bot runs in this process for this test.
    bot: RunningBot = await world.start_bot(world.config())
    before = await world.ada.say(world.room_id, "!update before the disk filled")
    await world.ada.wait_for(lambda e: is_reaction(e, before))
    store = bot.app.store
    assert store is not None
    db = store._db

    async def pragma(sql: str) -> int:
        async with db.execute(sql) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    assert await pragma("PRAGMA freelist_count") == 0, "no free pages to grow into"
    size = await pragma("PRAGMA page_count")
    assert await pragma(f"PRAGMA max_page_count = {size}") == size
    # Too long for any page's spare room (an overflow page is always a new page), so
    # each of these needs the database to grow.
    texts = [f"full {n} " + "€" * 1500 for n in range(3)]
    refused = [await world.ada.say(world.room_id, f"!update {text}") for text in texts]
    for event_id in refused:
        reply = await world.ada.wait_for(lambda e, event_id=event_id: is_reply(e, event_id))
        assert "storage is full" in body_of(reply)
    assert bot.task.done() is False

    await pragma("PRAGMA max_page_count = 1073741823")
    after = await world.ada.say(world.room_id, "!update after space returned")
    await world.ada.wait_for(lambda e: is_reaction(e, after), timeout=30)
    database = world.config().data_dir / DATABASE_FILE
    await assert_handled_once(world.chair, world.room_id, world.bot_user.user_id,
                              [before, after], refused, pending=pending_in_database(database))
    seen = await seen_in_room(world.chair, world.room_id, world.bot_user.user_id, refused)
    assert set(seen.checks.values()) == {0}, "no ✅ for what was not kept"
    with contextlib.closing(sqlite3.connect(database)) as check:
        kept = [text for (text,) in check.execute("SELECT text FROM entries")]
        claimed = {event_id for (event_id,) in check.execute(
            "SELECT event_id FROM processed_events")}
        queued = "".join(payload for (payload,) in check.execute("SELECT payload FROM outbox"))
    assert kept == ["before the disk filled", "after space returned"], "nothing half-kept"
    assert not claimed & set(refused), "a refused command is not marked handled"
    assert not any(event_id in queued for event_id in refused), "nothing queued for them"
    print(f"\nFAULT database full (max_page_count): {len(refused)} commands refused with "
          f"'storage is full', 0 recorded, 0 duplicates; recovered on the next command")


async def test_a_bot_killed_while_closing_posts_the_note_once(rig: Rig) -> None:
    process = await rig.start_bot(chairs=[rig.chair.user_id])
    started = await rig.acknowledged(rig.chair, "!startmeeting")
    update = await rig.acknowledged(rig.ada, "!update the note has this")
    # Hold the closing messages at the proxy, so the kill falls while they are on the wire.
    held = rig.proxy.add("PUT", r"/send/m\.room\.message/", Action.STALL)
    ending = await rig.chair.say(rig.room_id, "!endmeeting")
    await rig.chair.wait_for(lambda e: is_reaction(e, ending))
    await rig.proxy.wait_for_hits(held)
    await process.kill()  # SIGKILL
    # The held message now reaches the homeserver; the killed bot never heard it went.
    rig.proxy.lift(held)
    began = time.monotonic()
    await process.start()
    await eventually(lambda: bool(note_files(rig.data_dir)), 30, "the note file")
    await drained(rig.data_dir)
    recovery = time.monotonic() - began
    seen = await rig.seen([started, update, ending])
    (note,) = note_files(rig.data_dir)
    assert "the note has this" in note.read_text()
    assert len(seen.bodies("is closed")) == 1, "the closing message once"
    assert seen.bodies(note.read_text()) == [note.read_text()], "the note posted once"
    assert list(seen.checks.values()) == [1, 1, 1] and seen.duplicates == 0
    assert query(rig.data_dir, "SELECT count(*) FROM meetings WHERE ended_at IS NOT NULL") == [
        (1,)]
    print(f"\nFAULT SIGKILL while the close was being posted ({held.hits} message(s) on the "
          f"wire): one closing message, one note post, one note file; 0 duplicates; "
          f"restart to drained in {recovery:.2f} s")


async def test_a_flood_from_one_person_does_not_hold_up_others(rig: Rig) -> None:
    other_room = await rig.chair.create_room(invite=[rig.bot_user.user_id])
    rig.rooms = {"team": rig.room_id, "other": other_room}
    process = await rig.start_bot(flood_control=True)
    await rig.acknowledged(rig.chair, "!here", room=other_room)
    sent: list[str] = []
    lane = asyncio.Semaphore(8)

    async def flood(n: int) -> None:
        async with lane:
            sent.append(await rig.ada.say(rig.room_id, f"!update flood {n}"))

    flooding = asyncio.gather(*(flood(n) for n in range(200)))
    await rig.ada.wait_until(lambda: len(sent) >= 100, timeout=30)

    async def acknowledged_after(room: str, text: str) -> float:
        event_id = await rig.chair.say(room, text)
        began = time.monotonic()
        await rig.chair.wait_for(lambda e: is_reaction(e, event_id), timeout=30)
        return time.monotonic() - began

    elsewhere, same_room = await asyncio.gather(
        acknowledged_after(other_room, "!update from another room"),
        acknowledged_after(rig.room_id, "!update from the flooded room"))
    await flooding
    await drained(rig.data_dir, timeout=60)
    seen = await rig.seen(sent)
    flood_acks = sum(seen.checks.values())
    slow_down = [m for m in seen.messages if "slow down" in body_of(m).lower()]
    print(f"\nFAULT flood of {len(sent)} commands from one person: another room's command "
          f"acknowledged in {elapsed_text(elsewhere)}, the flooded room's in "
          f"{elapsed_text(same_room)}; {flood_acks} flood commands acknowledged, "
          f"{len(slow_down)} 'slow down' repl(ies); {seen.duplicates} duplicates; bot CPU "
          f"total {process.cpu_seconds():.2f} s")
    rig.assert_running()
    assert seen.duplicates == 0, "nothing twice: no ✅, no reply"
    assert elsewhere < 3, f"another room waited {elsewhere:.2f} s behind the flood"
    assert same_room < 8, f"the flooded room's other person waited {same_room:.2f} s"


def elapsed_text(seconds: float) -> str:
    return f"{seconds:.2f} s"
