"""The benchmark: chatbot and the baseline bot side by side on one throwaway Synapse.

    .venv/bin/python -m benchmarks [--quick] [--rooms N] [--latency N] [--idle SECONDS]

Both bots run as their own processes (`chatbot run`, `benchmarks/baseline_bot.py`) in
the same rooms, and commands to the one and to the other are interleaved: both see every
message, the same load, room sizes and history, and each message is answered by one bot.
(When both answered the same message, the second ✅ waited for Synapse to persist the
first: two copies of the baseline measured 1.27x to 1.31x apart that way, 1.00x this way.)
Both have encryption on and share an encrypted room. People are real nio clients;
everything is on 127.0.0.1. Prints progress and a table in which every figure has its
ratio to the baseline and its target; writes `benchmarks/results/latest.json`.
About five minutes on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import json
import logging
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

from benchmarks.growth import growth
from chatbot.demo.homeserver import LocalHomeserver, RegisteredUser
from chatbot.demo.person import Person
from chatbot.matrix import first_sync_filter, sync_filter

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
BOT_PASSWORD = "benchmark-bot-password"
PROCESS_START_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class Counts:
    latency: int = 1_000  # sequential commands, half !here and half !update
    encrypted: int = 200  # sequential commands in the encrypted room
    burst_people: int = 50
    burst_each: int = 5
    rooms: int = 40
    meetings: int = 10
    history: int = 3
    starts: int = 3  # starts of each bot in the 40 rooms; the median is the figure
    big_rooms: int = 1_000
    big_meetings: int = 50
    idle: float = 15.0
    growth_commands: int = 10_000  # a month, in simulated time
    growth_months: int = 2


QUICK = Counts(latency=100, encrypted=20, burst_people=10, burst_each=3, rooms=20, meetings=5,
               history=1, starts=1, big_rooms=100, big_meetings=10, idle=3.0,
               growth_commands=1_000)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def bounded_gather(jobs: Iterable[Callable[[], Awaitable[T]]], limit: int = 20) -> list[T]:
    """Run the jobs at most `limit` at a time, keeping their order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


# --- processes ------------------------------------------------------------------------


class BotProcess:
    """A bot in its own process; its standard error is read so it never blocks."""

    def __init__(self, name: str, argv: list[str], ready_text: str,
                 marker: str = "own time per command", env: dict[str, str] | None = None,
                 prefix: str = "!") -> None:
        self.name, self.argv, self.ready_text, self.marker = name, argv, ready_text, marker
        self.env = env or {}
        self.prefix = prefix  # what this bot answers; the other bot ignores it
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.listening_at = 0.0
        self.tail: list[str] = []
        self.marked: list[str] = []  # lines with `marker`, kept apart from the tail
        self._listening = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._listening.clear()
        self.started_at = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        self._reader = reader = asyncio.create_task(self._read())
        listening = asyncio.create_task(self._listening.wait())
        await asyncio.wait({listening, reader}, timeout=PROCESS_START_TIMEOUT,
                           return_when=asyncio.FIRST_COMPLETED)
        if not listening.done():  # it ended, or took too long
            listening.cancel()
            raise RuntimeError(f"{self.name} did not start:\n" + "".join(self.tail))

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            text = line.decode(errors="replace")
            self.tail = [*self.tail[-199:], text]
            if self.marker in text:
                self.marked.append(text)
            if not self._listening.is_set() and self.ready_text in text:
                self.listening_at = time.monotonic()
                self._listening.set()

    async def signalled_line(self, signum: int, timeout: float = 10.0) -> str:
        """Send `signum` and return the next line with the marker the bot logs for it."""
        seen = len(self.marked)
        os.kill(self.pid, signum)
        deadline = time.monotonic() + timeout
        while len(self.marked) == seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} logged no {self.marker!r} line")
            await asyncio.sleep(0.05)
        return self.marked[seen]

    def command(self, text: str) -> str:
        """`text` ("here", "update ...") as a command to this bot alone."""
        return self.prefix + text

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader


# --- seeing the acknowledgements ---------------------------------------------------------


@dataclass
class Acks:
    """Every ✅ the watching people see, by bot and by the message it acknowledges."""

    seen: dict[str, dict[str, float]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # (bot, room) where a ✅ came unencrypted: in the encrypted room, an unfair comparison.
    in_the_clear: set[tuple[str, str]] = field(default_factory=set)

    def on_event(self, event: dict[str, Any]) -> None:
        relation = (event.get("content") or {}).get("m.relates_to") or {}
        if event.get("type") == "m.reaction" and relation.get("key") == "✅":
            self.seen.setdefault(event["sender"], {}).setdefault(
                relation["event_id"], time.monotonic())
            if not event.get("decrypted"):
                self.in_the_clear.add((event["sender"], event.get("room_id", "")))
            self.changed.set()

    async def wait_all(self, bot: str, event_ids: Iterable[str], timeout: float) -> float:
        """When the last of `event_ids` was acknowledged by `bot`."""
        wanted = set(event_ids)
        deadline = time.monotonic() + timeout
        while True:
            acked = self.seen.get(bot, {})
            missing = wanted - acked.keys()
            if not missing:
                return max(acked[event_id] for event_id in wanted)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(missing)} of {len(wanted)} not acknowledged by {bot}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))


# --- the world ------------------------------------------------------------------------------


@dataclass
class Bots:
    """The two bots' accounts and processes, in one world of rooms."""

    chatbot_user: RegisteredUser
    baseline_user: RegisteredUser
    chatbot: BotProcess
    baseline: BotProcess

    def each(self) -> list[tuple[BotProcess, str]]:
        return [(self.chatbot, self.chatbot_user.user_id),
                (self.baseline, self.baseline_user.user_id)]


@dataclass
class World:
    hs: LocalHomeserver
    workdir: Path
    owner: Person
    crowd: list[Person]
    chatbot_user: RegisteredUser
    baseline_user: RegisteredUser
    rooms: list[str]  # both bots are in all; rooms[0] is where commands are sent
    acks: Acks
    keeper: Person  # on an encrypting client, in the encrypted room both bots are in
    secret_room: str

    @property
    def command_room(self) -> str:
        return self.rooms[0]


def register(hs: LocalHomeserver, name: str, password: str | None = None) -> Callable[
        [], Awaitable[RegisteredUser]]:
    return lambda: hs.register_user(name, password, displayname=name.title())


async def join_all(hs: LocalHomeserver, user: RegisteredUser, name: str,
                   rooms: list[str], limit: int = 8) -> None:
    joiner = Person(hs.nio_client(user), name)
    try:
        await bounded_gather([partial(joiner.join, room) for room in rooms], limit=limit)
    finally:
        await joiner.close()


async def build_world(hs: LocalHomeserver, workdir: Path, counts: Counts) -> World:
    progress(f"registering {counts.burst_people + 4} accounts")
    users = await bounded_gather([
        register(hs, "owner"), register(hs, "chatbot", BOT_PASSWORD), register(hs, "baseline"),
        register(hs, "keeper"),
        *(register(hs, f"person{n}") for n in range(counts.burst_people))])
    owner_user, chatbot_user, baseline_user, keeper_user, *crowd_users = users
    owner = Person(hs.nio_client(owner_user), "owner")
    crowd = [Person(hs.nio_client(user), f"person{n}") for n, user in enumerate(crowd_users)]
    bots = [chatbot_user.user_id, baseline_user.user_id]

    progress(f"creating {counts.rooms} rooms; both bots join all of them")
    crowd_ids = [p.user_id for p in crowd]
    rooms = await bounded_gather(
        [partial(owner.create_room, invite=[*bots, *crowd_ids] if n == 0 else bots)
         for n in range(counts.rooms)], limit=8)
    for user, name in ((chatbot_user, "chatbot"), (baseline_user, "baseline")):
        await join_all(hs, user, name, rooms)
    await bounded_gather([partial(p.join, rooms[0]) for p in crowd])
    progress(f"writing history: {counts.history} messages in each room")
    await bounded_gather([
        partial(owner.say, r, f"history message {n}: !update from before the bots ran")
        for r in rooms for n in range(counts.history)])
    progress("an encrypted room for both bots, with a person on an encrypting client")
    keeper = Person(hs.nio_client(keeper_user, store_path=workdir / "keeper-keys"), "keeper")
    secret_room = await keeper.create_room(invite=bots, encrypted=True)
    for user, name in ((chatbot_user, "chatbot"), (baseline_user, "baseline")):
        await join_all(hs, user, name, [secret_room])
    acks = Acks()
    owner.on_event = keeper.on_event = acks.on_event
    await owner.start()
    await keeper.start()
    return World(hs, workdir, owner, crowd, chatbot_user, baseline_user, rooms, acks, keeper,
                 secret_room)


BENCHMARK_LIMITS = {"commands": 1_000_000, "per": "1s", "agenda_items": 1_000_000,
                    "entries_per_person": 1_000_000}
RULES = ["FREQ=WEEKLY", "FREQ=WEEKLY;INTERVAL=2", "FREQ=DAILY", "FREQ=MONTHLY;BYDAY=2TU"]


def write_config(hs: LocalHomeserver, user: RegisteredUser, folder: Path, rooms: list[str],
                 meetings: int, chair: str, secret_room: str | None = None) -> Path:
    """chatbot's config: `meetings` meetings in the first rooms, rooms[0]'s two hours away
    (so commands collect updates and the roll call for it ahead of time)."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    configured = []
    for n in range(meetings):
        start = now + (timedelta(hours=2) if n == 0 else timedelta(days=n % 7, hours=3 + n))
        configured.append({
            "id": f"m{n}", "title": f"Meeting {n}", "room": rooms[n],
            "timezone": ["UTC", "Europe/London", "America/New_York"][n % 3],
            "start": start.strftime("%Y-%m-%d %H:%M:%S"), "rrule": RULES[n % len(RULES)],
            "duration": "60m", "chairs": [chair],
        })
    if secret_room is not None:
        configured.append({
            "id": "secret", "title": "Encrypted Meeting", "room": secret_room,
            "timezone": "UTC", "start": (now + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S"),
            "rrule": "FREQ=WEEKLY", "duration": "60m"})
    path = folder / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "matrix": {"homeserver": hs.url, "user_id": user.user_id, "password": BOT_PASSWORD},
        "data_dir": str(path.parent / "data"), "meetings": configured,
        # The runs measure how fast the bot answers one person's back-to-back commands
        # and a crowd's hundreds each; flood control (which the baseline lacks) would
        # refuse them, so it is set out of the way.
        "limits": BENCHMARK_LIMITS}), encoding="utf-8")
    return path


BASELINE_PREFIX = "+"


def bot_processes(hs: LocalHomeserver, workdir: Path, config: Path, chatbot_user: RegisteredUser,
                  baseline_user: RegisteredUser) -> Bots:
    chatbot = BotProcess("chatbot", [sys.executable, "-m", "chatbot.cli", "run", "-c",
                                     str(config)], "listening in")
    baseline = BotProcess("baseline", [
        sys.executable, "-m", "benchmarks.baseline_bot", hs.url, baseline_user.user_id,
        baseline_user.access_token, baseline_user.device_id,
        str(workdir / f"{baseline_user.user_id.split(':')[0][1:]}-keys")], "listening",
        # chatbot takes "+here" for chat (it is no command of its own) and ignores it.
        env={"ANSWER_PREFIX": BASELINE_PREFIX}, prefix=BASELINE_PREFIX)
    return Bots(chatbot_user, baseline_user, chatbot, baseline)


# --- the phases ---------------------------------------------------------------------------


async def first_ack(owner: Person, acks: Acks, bot: BotProcess, bot_user: str,
                    room: str) -> dict[str, float]:
    """Process start to listening, and to the first command's ✅."""
    event_id = await owner.say(room, bot.command("here"))
    acked = await acks.wait_all(bot_user, [event_id], 60)
    return {"listening_s": bot.listening_at - bot.started_at,
            "first_ack_s": acked - bot.started_at}


async def starts(owner: Person, acks: Acks, bots: Bots, room: str, times: int,
                 keep_running: bool) -> dict[str, Any]:
    """Each bot started `times` times, one after the other (the first of chatbot's is its
    first start ever; later ones resume); the median of each figure. With `keep_running`,
    both run afterwards and their RSS 5 s after the last start is taken."""
    runs: dict[str, list[dict[str, float]]] = {"chatbot": [], "baseline": []}
    for n in range(times):
        for bot, user in bots.each():
            await bot.start()
            runs[bot.name].append({**await first_ack(owner, acks, bot, user, room),
                                   "rss_mb": bot.rss_mb()})
            progress(f"  {bot.name} start {n + 1}: listening after "
                     f"{runs[bot.name][-1]['listening_s']:.2f} s, first ✅ after "
                     f"{runs[bot.name][-1]['first_ack_s']:.2f} s")
            if n < times - 1 or not keep_running:
                await bot.stop()
    result: dict[str, Any] = {
        name: {key: statistics.median(run[key] for run in values) for key in values[0]}
        | {"starts": len(values), "first_start": values[0]} for name, values in runs.items()}
    if keep_running:
        for bot, _ in bots.each():
            await asyncio.sleep(max(0.0, bot.started_at + 5 - time.monotonic()))
            result[bot.name]["rss_after_start_mb"] = bot.rss_mb()
    return result


async def initial_sync_bytes(hs: LocalHomeserver, user: RegisteredUser) -> dict[str, int]:
    """What a first sync costs chatbot's account, with chatbot's filter and without one."""
    url = f"{hs.url}/_matrix/client/v3/sync"
    headers = {"Authorization": f"Bearer {user.access_token}"}
    sizes = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        filters = {"first": first_sync_filter(user.user_id),
                   "steady_filter": sync_filter(50, user.user_id)}
        for name, params in (*((name, {"filter": json.dumps(definition)})
                               for name, definition in filters.items()),
                             ("unfiltered", {})):
            async with session.get(url, params={"timeout": "0", **params}) as response:
                sizes[name] = len(await response.read())
    return sizes


async def idle(bots: Bots, seconds: float) -> dict[str, float]:
    progress(f"idle: measuring CPU for {seconds:.0f} s")
    before = {bot.name: bot.cpu_seconds() for bot, _ in bots.each()}
    await asyncio.sleep(seconds)
    return {bot.name: bot.cpu_seconds() - before[bot.name] for bot, _ in bots.each()}


async def latency(person: Person, acks: Acks, bots: Bots, room: str, count: int,
                  what: str) -> dict[str, list[float]]:
    """Sequential commands from one person to the room both bots are in, `count` to each,
    interleaved (which bot goes first alternates): both see every message, under the same
    load, and each message is acknowledged by the bot it is for."""
    progress(f"latency: {count} sequential commands to each bot, interleaved, {what}")
    samples: dict[str, list[float]] = {"chatbot": [], "baseline": []}
    for n in range(count):
        text = "here" if n % 2 == 0 else f"update latency sample {n} ({what})"
        for bot, user in bots.each() if n % 4 < 2 else reversed(bots.each()):
            sent_at = time.monotonic()
            event_id = await person.say(room, bot.command(text))
            acked = await acks.wait_all(user, [event_id], 30)
            samples[bot.name].append((acked - sent_at) * 1000)
        if (n + 1) % 250 == 0:
            progress(f"  {n + 1}/{count}")
    return samples


OWN_TIME_FIGURE = re.compile(r"(\w+) median ([\d.]+) ms p95 ([\d.]+) ms over (\d+)")


async def own_time(bot: BotProcess) -> dict[str, dict[str, float]]:
    """The bot's own time per command, as it measured it (logged on SIGUSR1)."""
    line = await bot.signalled_line(signal.SIGUSR1)
    return {name: {"median_ms": float(median), "p95_ms": float(p95), "samples": int(count)}
            for name, median, p95, count in OWN_TIME_FIGURE.findall(line)}


async def burst(world: World, bots: Bots, each: int) -> dict[str, Any]:
    """The whole crowd sends `each` commands to each bot at once, interleaved; when each
    bot has acknowledged all of its own."""
    progress(f"burst: {len(world.crowd)} people x {each} commands to each bot, at once")

    async def person_sends(person: Person, index: int) -> dict[str, list[str]]:
        sent: dict[str, list[str]] = {"chatbot": [], "baseline": []}
        for n in range(each):
            text = "here" if n == 0 else f"update burst {index}.{n}"
            for bot, _ in bots.each():
                sent[bot.name].append(await person.say(world.command_room, bot.command(text)))
        return sent

    began = time.monotonic()
    batches = await asyncio.gather(*(person_sends(p, i) for i, p in enumerate(world.crowd)))
    result: dict[str, Any] = {}
    for bot, user in bots.each():
        sent = [event_id for batch in batches for event_id in batch[bot.name]]
        took = await world.acks.wait_all(user, sent, 300) - began
        result[bot.name] = {"commands": len(sent), "seconds": took,
                            "per_second": len(sent) / took}
        if bot.name == "chatbot":
            result["event_ids"] = sent
    return result


def recorded(database: Path, event_ids: list[str]) -> int:
    with sqlite3.connect(database) as db:
        db.execute("CREATE TEMP TABLE wanted (event_id TEXT PRIMARY KEY)")
        db.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", [(e,) for e in event_ids])
        return int(db.execute("SELECT count(*) FROM processed_events p JOIN wanted w "
                              "ON w.event_id = p.event_id").fetchone()[0])


async def big_world(hs: LocalHomeserver, owner: Person, workdir: Path,
                    counts: Counts) -> tuple[Bots, list[str]]:
    """Two more bots in `big_rooms` rooms each (the same ones), the first with the owner.

    The chatbot account creates the rooms itself, inviting the baseline, which then joins:
    three requests a room, not the owner's create, invite and two joins."""
    chatbot_user, baseline_user = await bounded_gather([
        register(hs, "chatbot-big", BOT_PASSWORD), register(hs, "baseline-big")])
    creator = Person(hs.nio_client(chatbot_user), "chatbot-big")
    try:
        rooms = await bounded_gather(
            [partial(creator.create_room,
                     invite=[baseline_user.user_id, *([owner.user_id] if n == 0 else [])])
             for n in range(counts.big_rooms)], limit=6)
    finally:
        await creator.close()
    await join_all(hs, baseline_user, "baseline-big", rooms, limit=6)
    await owner.join(rooms[0])
    config = write_config(hs, chatbot_user, workdir / "chatbot-big", rooms, counts.big_meetings,
                          owner.user_id)
    return bot_processes(hs, workdir, config, chatbot_user, baseline_user), rooms


async def growth_process(workdir: Path, counts: Counts) -> dict[str, Any]:
    """The growth phase in a process of its own: it runs beside the big world's setup, and
    its memory is the bot core's alone."""
    progress(f"growth (in the background): {counts.growth_commands:,} commands a month for "
             f"{counts.growth_months} months of simulated time, with and without pruning")
    output = workdir / "growth.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks", "--only", "growth", "--output", str(output),
        "--growth-commands", str(counts.growth_commands),
        "--growth-months", str(counts.growth_months), cwd=ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, errors = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the growth phase failed:\n{errors.decode(errors='replace')}")
    growth_result: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))["growth"]
    return growth_result


async def timed_cli(argv: list[str], runs: int = 5) -> tuple[float, int]:
    """The median wall time of a `chatbot` command (Python's start-up included), and the
    size of its output."""
    times = []
    completed = None
    for _ in range(runs):
        began = time.perf_counter()
        completed = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "chatbot.cli", *argv], capture_output=True, timeout=60,
            check=True, cwd=ROOT)
        times.append((time.perf_counter() - began) * 1000)
    assert completed is not None
    return statistics.median(times), len(completed.stdout)


async def notes(hs: LocalHomeserver, workdir: Path) -> dict[str, float]:
    """Render a meeting with 500 attendees, 2,000 updates and 100 agenda items."""
    from chatbot.config import load_config
    from chatbot.meetings import compile_note
    from chatbot.model import EntryKind, EventId, Profile, RoomId, UserId
    from chatbot.render import markdown_to_html, render_note
    from chatbot.store import Store

    progress("notes: building a meeting with 500 attendees, 2,000 updates, 100 agenda items")
    folder = workdir / "notes-bench"
    config_path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump({
        "matrix": {"homeserver": hs.url, "user_id": "@nobody:localhost",
                   "password": "unused"},
        "data_dir": str(folder / "data"),
        "meetings": [{"id": "big", "title": "Big Meeting", "room": "!big:localhost",
                      "timezone": "UTC", "start": "2030-01-01 10:00:00", "rrule": "FREQ=WEEKLY",
                      "links": {"notes": "https://notes.example.org/big"}}]}), encoding="utf-8")
    config = load_config(config_path)
    series = config.meetings[0]
    store = await Store.open(folder / "data" / "chatbot.db")
    now = datetime(2026, 1, 5, 10, tzinfo=UTC)
    async with store.transaction():
        meeting = await store.create_adhoc("big", RoomId("!big:localhost"), "Big Meeting", now,
                                           now + timedelta(hours=1))
        for n in range(500):
            await store.add_attendee(meeting.id, UserId(f"@p{n}:localhost"),
                                     Profile(f"Person {n}", f"Org {n % 17}", f"@p{n}"),
                                     EventId(f"$here{n}"), now + timedelta(seconds=n))
        for n in range(2000):
            await store.add_entry(meeting.id, EntryKind.UPDATE, UserId(f"@p{n % 500}:localhost"),
                                  f"Person {n % 500}", f"worked on https://example.org/{n} and "
                                  f"*more* things, number {n}", None, EventId(f"$u{n}"), now)
        for n in range(100):
            await store.add_entry(meeting.id, EntryKind.AGENDA, UserId(f"@p{n}:localhost"),
                                  f"Person {n}", f"agenda item {n} about `code`", 5,
                                  EventId(f"$a{n}"), now)
        await store.mark_ended(meeting.id, now + timedelta(hours=1))
    meeting_row = await store.get_meeting(meeting.id)
    assert meeting_row is not None
    record = await store.record(meeting_row)

    def best_ms(work: Callable[[], object], repeat: int = 7) -> float:
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            work()
            times.append((time.perf_counter() - began) * 1000)
        return statistics.median(times)

    from chatbot.meetings import links_of
    links = links_of(series)
    markdown = render_note(record, series.timezone, links)
    result = {
        "markdown_ms": best_ms(lambda: render_note(record, series.timezone, links)),
        "html_ms": best_ms(lambda: markdown_to_html(markdown)),
    }
    began = time.perf_counter()
    await compile_note(store, series, meeting_row)
    result["compile_with_query_ms"] = (time.perf_counter() - began) * 1000
    result["markdown_and_html_ms"] = result["markdown_ms"] + result["html_ms"]
    await store.close()
    result["cli_notes_ms"], result["cli_notes_bytes"] = await timed_cli(
        ["notes", "-c", str(config_path), "big"])
    result["cli_check_ms"], _ = await timed_cli(["check", "-c", str(config_path)])
    return result


# --- the report --------------------------------------------------------------------------


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def summary(samples: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(samples), "p95_ms": percentile(samples, 95),
            "samples": len(samples)}


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "synapse": version("matrix-synapse"), "matrix_nio": version("matrix-nio"),
            "platform": platform.platform()}


TARGET = re.compile(r"(<=|<|>=|=)\s*([\d.,]+)\s*(x|ms|s|MB)?")


def met(target: str, value: float | None, ratio: float | None) -> str:
    """"yes"/"NO" for a target such as "<= 1.10x" (on the ratio) or "< 3 ms" (on the value)."""
    found = TARGET.fullmatch(target.strip())
    if found is None:
        return ""
    operator, number, unit = found.group(1), float(found.group(2).replace(",", "")), found.group(3)
    subject = ratio if unit == "x" else value
    if subject is None:
        return ""
    ok = {"<=": subject <= number, "<": subject < number, ">=": subject >= number,
          "=": subject == number}[operator]
    return "yes" if ok else "NO"


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = []

    def row(what: str, chatbot: float | None, baseline: float | None, unit: str,
            target: str = "") -> None:
        ratio = chatbot / baseline if chatbot is not None and baseline else None

        def shown(value: float | None) -> str:
            if value is None:
                return "-"
            return f"{value:,} {unit}" if isinstance(value, int) else f"{value:,.1f} {unit}"

        rows.append((what, shown(chatbot), shown(baseline),
                     "" if ratio is None else f"{ratio:.2f}x", target,
                     met(target, chatbot, ratio) if target else ""))

    if "latency" in results:
        synapse_rows(results, row)
    if "notes" in results:
        notes_rows(results["notes"], row)
    if "growth" in results:
        growth_rows(results["growth"], row)
    header = ("measure", "chatbot", "baseline", "ratio", "target", "met")
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows]
    return "\n".join(lines)


def growth_rows(g: dict[str, Any], row: Callable[..., None]) -> None:
    """The baseline column is the same simulated use without the daily upkeep."""
    mib = 1024 * 1024
    pruned_run = g["pruned"]
    for pruned, unpruned in zip(pruned_run["checkpoints"], g["unpruned"]["checkpoints"],
                                strict=True):
        what = (f"database after {pruned['commands']:,} commands, {pruned['month']} "
                f"month{'s' if pruned['month'] > 1 else ''} (vs no pruning)")
        row(what, pruned["file_bytes"] / mib, unpruned["file_bytes"] / mib, "MiB")
        row("  of which in use", pruned["used_bytes"] / mib, unpruned["used_bytes"] / mib,
            "MiB")
        row("  handled-event ids kept", pruned["rows_processed_events"],
            unpruned["rows_processed_events"], "rows")
        row("  outbox jobs kept", pruned["rows_outbox"], unpruned["rows_outbox"], "rows")
        if "rss_mb" in pruned and "rss_start_mb" in pruned_run:
            row("  core's memory above its start (pruned)",
                pruned["rss_mb"] - pruned_run["rss_start_mb"], None, "MB", "<= 10 MB")


def notes_rows(n: dict[str, Any], row: Callable[..., None]) -> None:
    row("note render, markdown", n["markdown_ms"], None, "ms")
    row("note render, HTML", n["html_ms"], None, "ms")
    row("note render, markdown + HTML", n["markdown_and_html_ms"], None, "ms", "< 50 ms")
    row("`chatbot notes` end to end", n["cli_notes_ms"], None, "ms", "< 400 ms")
    row("`chatbot check` end to end", n["cli_check_ms"], None, "ms", "< 400 ms")


def synapse_rows(results: dict[str, Any], row: Callable[..., None]) -> None:
    lat = results["latency"]
    row("latency median (same commands, same room)", lat["chatbot"]["median_ms"],
        lat["baseline"]["median_ms"], "ms", "<= 1.10x")
    row("latency p95", lat["chatbot"]["p95_ms"], lat["baseline"]["p95_ms"], "ms", "<= 1.10x")
    if "cpu_per_command_ms" in results:
        cpu = results["cpu_per_command_ms"]
        row("CPU time per command (the whole process, sync to ✅ and after)", cpu["chatbot"],
            cpu["baseline"], "ms")
    enc = results["encrypted"]
    row("latency median, encrypted room (both decrypt and encrypt)",
        enc["chatbot"]["median_ms"], enc["baseline"]["median_ms"], "ms", "<= 1.10x")
    row("latency p95, encrypted room", enc["chatbot"]["p95_ms"], enc["baseline"]["p95_ms"],
        "ms", "<= 1.10x")
    for name, figures in results.get("own_time", {}).items():
        row(f"own time per command, !{name} median ({figures['samples']:,} commands)",
            figures["median_ms"], None, "ms", "< 3 ms" if name in ("here", "update") else "")
        row(f"own time per command, !{name} p95", figures["p95_ms"], None, "ms",
            "< 10 ms" if name in ("here", "update") else "")
    b = results["burst"]
    row(f"burst: {b['chatbot']['commands']} commands, all acked", b["chatbot"]["seconds"],
        b["baseline"]["seconds"], "s")
    row("burst throughput", b["chatbot"]["per_second"], b["baseline"]["per_second"], "cmd/s",
        ">= 0.9x")
    row("burst recorded by chatbot", b["chatbot"]["recorded"], None, "",
        f"= {b['chatbot']['commands']}")
    s = results["scale"]
    row(f"start to listening ({s['rooms']} rooms, median of {s['chatbot']['starts']})",
        s["chatbot"]["listening_s"], s["baseline"]["listening_s"], "s")
    row("start to first ✅", s["chatbot"]["first_ack_s"], s["baseline"]["first_ack_s"], "s",
        "<= 1.20x")
    row("  the first start ever (chatbot logs in)", s["chatbot"]["first_start"]["first_ack_s"],
        s["baseline"]["first_start"]["first_ack_s"], "s")
    row("RSS 5 s after start", s["chatbot"]["rss_after_start_mb"],
        s["baseline"]["rss_after_start_mb"], "MB", "<= 1.20x")
    m = results["memory"]
    row(f"RSS after {m['commands']:,} commands", m["chatbot"], m["baseline"], "MB")
    row("  above its own RSS after start", m["chatbot"] - s["chatbot"]["rss_after_start_mb"],
        m["baseline"] - s["baseline"]["rss_after_start_mb"], "MB", "<= 10 MB")
    if "big" in results:
        big = results["big"]
        row(f"start to first ✅, {big['rooms']:,} rooms and {big['meetings']} meetings "
            f"(median of {big['chatbot']['starts']})", big["chatbot"]["first_ack_s"],
            big["baseline"]["first_ack_s"], "s", "< 2.5 s")
        row("  the first start ever (chatbot logs in, learns every room)",
            big["chatbot"]["first_start"]["first_ack_s"],
            big["baseline"]["first_start"]["first_ack_s"], "s")
        row("  start to listening", big["chatbot"]["listening_s"],
            big["baseline"]["listening_s"], "s")
        row("  RSS at first ✅", big["chatbot"]["rss_mb"], big["baseline"]["rss_mb"], "MB")
        row(f"  creating the {big['rooms']:,} rooms (setup, not a result)",
            big["setup_s"], None, "s")
    sizes = s["initial_sync_bytes"]
    row("initial sync (chatbot's first-sync filter)", sizes["first"] / 1024, None, "KiB")
    row("initial sync (chatbot's steady filter)", sizes["steady_filter"] / 1024, None, "KiB")
    row("initial sync (no filter)", sizes["unfiltered"] / 1024, None, "KiB")
    i = results["idle"]
    row(f"idle CPU over {i['seconds']:.0f} s", i["chatbot"] * 1000, i["baseline"] * 1000, "ms")


async def run_benchmark(counts: Counts, workdir: Path) -> dict[str, Any]:
    began = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine(), "counts": {k: getattr(counts, k) for k in Counts.__slots__},
        "started": datetime.now(UTC).isoformat(timespec="seconds")}
    # Installing a package compiles its bytecode; a checkout run with
    # PYTHONDONTWRITEBYTECODE (as CI machines often are) would compile chatbot's source at
    # every start instead: CPU and memory neither an installed bot nor the baseline (one
    # small file, nio compiled when installed) pays.
    progress("compiling the bots' bytecode, as installing them does")
    for folder in (ROOT / "chatbot", ROOT / "benchmarks"):
        compileall.compile_dir(folder, quiet=1)
    progress("starting Synapse on 127.0.0.1")
    hs = await asyncio.to_thread(LocalHomeserver.start, workdir / "synapse")
    running: list[BotProcess] = []
    world: World | None = None
    try:
        world = await build_world(hs, workdir, counts)
        config = write_config(hs, world.chatbot_user, workdir / "chatbot", world.rooms,
                              counts.meetings, world.owner.user_id, world.secret_room)
        database = config.parent / "data" / "chatbot.db"
        bots = bot_processes(hs, workdir, config, world.chatbot_user, world.baseline_user)
        running += [bots.chatbot, bots.baseline]

        progress(f"start-up: each bot started {counts.starts} times in the same "
                 f"{counts.rooms} rooms ({counts.meetings} meetings for chatbot)")
        results["scale"] = {"rooms": counts.rooms, "meetings": counts.meetings,
                            **await starts(world.owner, world.acks, bots, world.command_room,
                                           counts.starts, keep_running=True),
                            "initial_sync_bytes": await initial_sync_bytes(
                                hs, world.chatbot_user)}
        results["idle"] = {"seconds": counts.idle, **await idle(bots, counts.idle)}

        # The first encrypted command also sets up Olm and Megolm sessions: not a sample.
        await latency(world.keeper, world.acks, bots, world.secret_room, 1, "warming up")
        cpu_before = {bot.name: bot.cpu_seconds() for bot, _ in bots.each()}
        samples = await latency(world.owner, world.acks, bots, world.command_room,
                                counts.latency, "plain room")
        results["latency"] = {name: summary(values) for name, values in samples.items()}
        # CPU time does not stretch when other processes load the machine, as latency does.
        results["cpu_per_command_ms"] = {
            bot.name: (bot.cpu_seconds() - cpu_before[bot.name]) * 1000 / counts.latency
            for bot, _ in bots.each()}
        results["own_time"] = await own_time(bots.chatbot)
        progress(f"  median {results['latency']['chatbot']['median_ms']:.1f} ms vs "
                 f"{results['latency']['baseline']['median_ms']:.1f} ms; chatbot's own time "
                 f"{results['own_time']}")
        secret = await latency(world.keeper, world.acks, bots, world.secret_room,
                               counts.encrypted, "encrypted room")
        results["encrypted"] = {name: summary(values) for name, values in secret.items()}
        if clear := sorted(bot for bot, room in world.acks.in_the_clear
                           if room == world.secret_room):
            raise RuntimeError(f"in the encrypted room, {', '.join(clear)} sent ✅ in the "
                               "clear: the encrypted comparison would not be like for like")

        outcome = await burst(world, bots, counts.burst_each)
        outcome["chatbot"]["recorded"] = recorded(database, outcome.pop("event_ids"))
        results["burst"] = outcome
        commands = 2 + counts.latency + counts.encrypted + len(world.crowd) * counts.burst_each
        results["memory"] = {"commands": commands, "chatbot": bots.chatbot.rss_mb(),
                             "baseline": bots.baseline.rss_mb()}
        for bot in running:
            await bot.stop()
        running.clear()

        progress(f"big: {counts.big_rooms:,} rooms for two more bots (setup)")
        setup_began = time.monotonic()
        growth_result, (big, big_rooms) = await asyncio.gather(
            growth_process(workdir, counts), big_world(hs, world.owner, workdir, counts))
        results["growth"] = growth_result
        setup_s = time.monotonic() - setup_began
        results["notes"] = await notes(hs, workdir)
        progress(f"big: starting each bot in {counts.big_rooms:,} rooms "
                 f"({counts.big_meetings} meetings for chatbot)")
        running += [big.chatbot, big.baseline]
        results["big"] = {"rooms": counts.big_rooms, "meetings": counts.big_meetings,
                          "setup_s": setup_s,
                          **await starts(world.owner, world.acks, big, big_rooms[0],
                                         counts.starts, keep_running=False)}
        results["exit_codes"] = {bot.name: bot.process.returncode
                                 for bot in (bots.chatbot, bots.baseline)
                                 if bot.process is not None}
    finally:
        for bot in running:
            await bot.stop()
        if world is not None:
            await world.owner.close()
            await world.keeper.close()
            await asyncio.gather(*(person.close() for person in world.crowd))
        await asyncio.to_thread(hs.stop)
    results["seconds"] = time.monotonic() - began
    return results


async def growth_phase(workdir: Path, counts: Counts) -> dict[str, Any]:
    progress(f"growth: {counts.growth_commands:,} commands a month for "
             f"{counts.growth_months} months of simulated time, with and without pruning")
    return await growth(workdir, commands=counts.growth_commands, months=counts.growth_months)


async def growth_only(counts: Counts, workdir: Path) -> dict[str, Any]:
    """The growth phase alone: it needs no homeserver."""
    return {"machine": machine(), "counts": {k: getattr(counts, k) for k in Counts.__slots__},
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "growth": await growth_phase(workdir, counts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts, a fast check")
    parser.add_argument("--rooms", type=int, help="rooms both bots are joined to")
    parser.add_argument("--big-rooms", type=int,
                        help="rooms of the second pair of bots, for the start-up at scale")
    parser.add_argument("--idle", type=float, help="seconds of the idle phase")
    parser.add_argument("--latency", type=int, help="sequential commands in the plain room")
    parser.add_argument("--growth-commands", type=int,
                        help="commands a month in the growth phase (simulated time)")
    parser.add_argument("--growth-months", type=int, help="months the growth phase simulates")
    parser.add_argument("--only", choices=["growth"],
                        help="run one phase alone (growth needs no homeserver)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    # The people's nio clients warn while encryption sessions are set up; not a result.
    logging.getLogger("nio").setLevel(logging.ERROR)
    counts = QUICK if args.quick else Counts()
    overrides = {name: getattr(args, name) for name in (
        "rooms", "big_rooms", "idle", "latency", "growth_commands", "growth_months")
                 if getattr(args, name) is not None}
    counts = Counts(**{**{k: getattr(counts, k) for k in Counts.__slots__}, **overrides})
    if counts.rooms < counts.meetings or counts.big_rooms < counts.big_meetings:
        parser.error("--rooms and --big-rooms must be at least the number of meetings")
    with tempfile.TemporaryDirectory(prefix="chatbot-bench-") as folder:
        run = growth_only if args.only == "growth" else run_benchmark
        if args.only and args.output == RESULTS:  # a part does not replace the whole run's
            args.output = RESULTS.with_name(f"{args.only}.json")
        results = asyncio.run(run(counts, Path(folder)))
    results["table"] = table(results)
    print()
    print(results["table"])
    print(f"\nmachine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
          f"Python {results['machine']['python']}, Synapse {results['machine']['synapse']}"
          + (f"; the run took {results['seconds']:.0f} s" if "seconds" in results else ""))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    print(f"written to {args.output}")
    return 0
