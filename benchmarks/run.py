"""The benchmark: chatbot and the baseline bot side by side on one throwaway Synapse.

    .venv/bin/python -m benchmarks [--quick] [--commands N] [--rooms N] [--idle SECONDS]

Both bots run as their own processes (`chatbot run`, `benchmarks/baseline_bot.py`),
joined to the same number of rooms, driven by people on real nio clients, all on
127.0.0.1. Prints progress and a table; writes `benchmarks/results/latest.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
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
    latency: int = 300
    burst_people: int = 100
    burst_each: int = 5
    rooms: int = 200
    meetings: int = 20
    history: int = 3
    commands: int = 10_000
    idle: float = 60.0
    growth_commands: int = 10_000  # a month, in simulated time
    growth_months: int = 2


QUICK = Counts(latency=40, burst_people=20, burst_each=5, rooms=40, meetings=10, history=1,
               commands=1_000, idle=10.0, growth_commands=1_000)


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

    def __init__(self, name: str, argv: list[str], ready_text: str) -> None:
        self.name, self.argv, self.ready_text = name, argv, ready_text
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.listening_at = 0.0
        self.tail: list[str] = []
        self._listening = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.started_at = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self._listening.wait(), PROCESS_START_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"{self.name} did not start:\n" + "".join(self.tail)) from None

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            text = line.decode(errors="replace")
            self.tail = [*self.tail[-199:], text]
            if not self._listening.is_set() and self.ready_text in text:
                self.listening_at = time.monotonic()
                self._listening.set()

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
    """Every ✅ the watching person sees, by bot and by the message it acknowledges."""

    seen: dict[str, dict[str, float]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, event: dict[str, Any]) -> None:
        relation = (event.get("content") or {}).get("m.relates_to") or {}
        if event.get("type") == "m.reaction" and relation.get("key") == "✅":
            self.seen.setdefault(event["sender"], {}).setdefault(
                relation["event_id"], time.monotonic())
            self.changed.set()

    def time_of(self, bot: str, event_id: str) -> float | None:
        return self.seen.get(bot, {}).get(event_id)

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
class World:
    hs: LocalHomeserver
    workdir: Path
    owner: Person
    crowd: list[Person]
    chatbot_user: RegisteredUser
    baseline_user: RegisteredUser
    rooms: list[str]  # rooms[0] is chatbot's command room, rooms[1] the baseline's; both
    # bots share the others
    acks: Acks
    keeper: Person  # on an encrypting client, in chatbot's encrypted room
    secret_room: str

    @property
    def chatbot_room(self) -> str:
        return self.rooms[0]

    @property
    def baseline_room(self) -> str:
        return self.rooms[1]


def register(hs: LocalHomeserver, name: str, password: str | None = None) -> Callable[
        [], Awaitable[RegisteredUser]]:
    return lambda: hs.register_user(name, password, displayname=name.title())


async def build_world(hs: LocalHomeserver, workdir: Path, counts: Counts) -> World:
    progress(f"registering {counts.burst_people + 3} accounts")
    users = await bounded_gather([
        register(hs, "owner"), register(hs, "chatbot", BOT_PASSWORD), register(hs, "baseline"),
        *(register(hs, f"person{n}") for n in range(counts.burst_people))])
    owner_user, chatbot_user, baseline_user, *crowd_users = users
    owner = Person(hs.nio_client(owner_user), "owner")
    crowd = [Person(hs.nio_client(user), f"person{n}") for n, user in enumerate(crowd_users)]
    bots = [chatbot_user.user_id, baseline_user.user_id]

    # Each bot has a command room of its own (so neither hears the other's traffic) and
    # shares the rest: both are in `counts.rooms` rooms.
    progress(f"creating {counts.rooms + 1} rooms")
    crowd_ids = [p.user_id for p in crowd]
    rooms = await bounded_gather(
        [partial(owner.create_room, invite=[bots[n], *crowd_ids] if n < 2 else bots)
         for n in range(counts.rooms + 1)], limit=8)
    progress("the bots join their rooms; the crowd joins the two command rooms")
    joiners = [Person(hs.nio_client(chatbot_user), "chatbot"),
               Person(hs.nio_client(baseline_user), "baseline")]
    await bounded_gather([partial(j.join, r) for n, j in enumerate(joiners)
                          for r in [rooms[n], *rooms[2:]]])
    await bounded_gather([partial(p.join, r) for p in crowd for r in rooms[:2]])
    for joiner in joiners:
        await joiner.close()
    progress(f"writing history: {counts.history} messages in each room")
    await bounded_gather([
        partial(owner.say, r, f"history message {n}: !update from before the bots ran")
        for r in rooms for n in range(counts.history)])
    progress("an encrypted room for chatbot, with a person on an encrypting client")
    keeper_user = await register(hs, "keeper")()
    keeper = Person(hs.nio_client(keeper_user, store_path=workdir / "keeper-keys"), "keeper")
    secret_room = await keeper.create_room(invite=[chatbot_user.user_id], encrypted=True)
    joiner = Person(hs.nio_client(chatbot_user), "chatbot")
    await joiner.join(secret_room)
    await joiner.close()
    acks = Acks()
    owner.on_event = keeper.on_event = acks.on_event
    await owner.start()
    await keeper.start()
    return World(hs, workdir, owner, crowd, chatbot_user, baseline_user, rooms, acks, keeper,
                 secret_room)


BENCHMARK_LIMITS = {"commands": 1_000_000, "per": "1s", "agenda_items": 1_000_000,
                    "entries_per_person": 1_000_000}


def chatbot_config(world: World, counts: Counts) -> Path:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    rules = ["FREQ=WEEKLY", "FREQ=WEEKLY;INTERVAL=2", "FREQ=DAILY", "FREQ=MONTHLY;BYDAY=2TU"]
    meetings = []
    for n in range(counts.meetings):
        # Meeting 0 is the command room's: its next sitting is two hours away, so
        # commands collect updates and the roll call for it ahead of time.
        start = now + (timedelta(hours=2) if n == 0 else timedelta(days=n % 7, hours=3 + n))
        meetings.append({
            "id": f"m{n}", "title": f"Meeting {n}", "room": world.rooms[0 if n == 0 else n + 1],
            "timezone": ["UTC", "Europe/London", "America/New_York"][n % 3],
            "start": start.strftime("%Y-%m-%d %H:%M:%S"), "rrule": rules[n % len(rules)],
            "duration": "60m", "chairs": [world.owner.user_id],
        })
    meetings.append({"id": "secret", "title": "Encrypted Meeting", "room": world.secret_room,
                     "timezone": "UTC", "start": (now + timedelta(hours=2)).strftime(
                         "%Y-%m-%d %H:%M:%S"), "rrule": "FREQ=WEEKLY", "duration": "60m"})
    path = world.workdir / "chatbot" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "matrix": {"homeserver": world.hs.url, "user_id": world.chatbot_user.user_id,
                   "password": BOT_PASSWORD},
        "data_dir": str(path.parent / "data"), "meetings": meetings,
        # The runs measure how fast the bot answers one person's back-to-back commands
        # and a crowd's hundreds each; flood control (which the baseline lacks) would
        # refuse them, so it is set out of the way.
        "limits": BENCHMARK_LIMITS}), encoding="utf-8")
    return path


# --- the phases ---------------------------------------------------------------------------


async def first_ack(world: World, bot: BotProcess, bot_user: str, room: str) -> dict[str, float]:
    """Process start to listening, and to the first command's ✅."""
    event_id = await world.owner.say(room, "!here")
    acked = await world.acks.wait_all(bot_user, [event_id], 60)
    return {"listening_s": bot.listening_at - bot.started_at,
            "first_ack_s": acked - bot.started_at, "rss_after_start_mb": bot.rss_mb()}


async def initial_sync_bytes(world: World) -> dict[str, int]:
    """What a first sync costs chatbot's account, with chatbot's filter and without one."""
    url = f"{world.hs.url}/_matrix/client/v3/sync"
    headers = {"Authorization": f"Bearer {world.chatbot_user.access_token}"}
    sizes = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for name, params in (("first", {"filter": json.dumps(first_sync_filter())}),
                             ("steady_filter", {"filter": json.dumps(sync_filter(50))}),
                             ("unfiltered", {})):
            async with session.get(url, params={"timeout": "0", **params}) as response:
                sizes[name] = len(await response.read())
    return sizes


async def idle(bots: list[BotProcess], seconds: float) -> dict[str, float]:
    progress(f"idle: measuring CPU for {seconds:.0f} s")
    before = [bot.cpu_seconds() for bot in bots]
    await asyncio.sleep(seconds)
    return {bot.name: bot.cpu_seconds() - cpu for bot, cpu in zip(bots, before, strict=True)}


async def latency(world: World, count: int) -> dict[str, list[float]]:
    """Sequential commands from one person, alternating between the bots so drift hits both."""
    progress(f"latency: {count} sequential commands to each bot")
    samples: dict[str, list[float]] = {"chatbot": [], "baseline": []}
    targets = (("chatbot", world.chatbot_user.user_id, world.chatbot_room),
               ("baseline", world.baseline_user.user_id, world.baseline_room))
    for n in range(count):
        text = "!here" if n % 2 == 0 else f"!update latency sample {n}"
        for name, user, room in targets:
            sent_at = time.monotonic()
            event_id = await world.owner.say(room, text)
            acked = await world.acks.wait_all(user, [event_id], 30)
            samples[name].append((acked - sent_at) * 1000)
        if (n + 1) % 50 == 0:
            progress(f"  {n + 1}/{count}")
    return samples


async def encrypted_latency(world: World, count: int) -> list[float]:
    """Sequential commands to chatbot in its encrypted room; the ✅ comes back encrypted."""
    progress(f"latency: {count} sequential commands to chatbot in an encrypted room")
    samples = []
    for n in range(count):
        text = "!here" if n % 2 == 0 else f"!update encrypted sample {n}"
        sent_at = time.monotonic()
        event_id = await world.keeper.say(world.secret_room, text)
        acked = await world.acks.wait_all(world.chatbot_user.user_id, [event_id], 30)
        samples.append((acked - sent_at) * 1000)
    return samples


async def burst(world: World, bot_user: str, room: str, each: int, tag: str) -> dict[str, Any]:
    """Every person sends `each` commands at once; the time until all are acknowledged."""
    async def person_sends(person: Person, index: int) -> list[str]:
        return [await person.say(room, "!here" if n == 0 else f"!update {tag} {index}.{n}")
                for n in range(each)]

    began = time.monotonic()
    batches = await asyncio.gather(*(person_sends(p, i) for i, p in enumerate(world.crowd)))
    sent = [event_id for batch in batches for event_id in batch]
    done = await world.acks.wait_all(bot_user, sent, 300)
    took = done - began
    return {"commands": len(sent), "seconds": took, "per_second": len(sent) / took,
            "event_ids": sent}


def recorded(database: Path, event_ids: list[str]) -> int:
    with sqlite3.connect(database) as db:
        db.execute("CREATE TEMP TABLE wanted (event_id TEXT PRIMARY KEY)")
        db.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", [(e,) for e in event_ids])
        return int(db.execute("SELECT count(*) FROM processed_events p JOIN wanted w "
                              "ON w.event_id = p.event_id").fetchone()[0])


def acknowledged_count(database: Path) -> int:
    with sqlite3.connect(database) as db:
        return int(db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL "
                              "AND failure IS NULL").fetchone()[0])


async def many_commands(world: World, bot: BotProcess, database: Path,
                        total: int) -> dict[str, Any]:
    """`total` commands from the whole crowd in parallel; RSS once all are acknowledged.

    Each person waits for the ✅ before sending again. Open-loop senders outrun a
    SQLite Synapse: a hundred concurrent senders in one room pile up forward
    extremities, and the bot's reactions queue behind thousands of messages.
    """
    progress(f"memory: {total} commands from {len(world.crowd)} people in parallel, "
             f"each waiting for its ✅")
    bot_user = world.chatbot_user.user_id
    base = acknowledged_count(database)
    per_person = -(-total // len(world.crowd))
    began = time.monotonic()

    async def person_sends(person: Person, index: int) -> int:
        sent = 0
        for n in range(per_person):
            if index * per_person + n >= total:
                break
            event_id = await person.say(
                world.chatbot_room, "!here" if n % 10 == 0 else f"!update load {index}.{n}")
            await world.acks.wait_all(bot_user, [event_id], 120)
            sent += 1
        return sent

    sending = asyncio.ensure_future(
        asyncio.gather(*(person_sends(p, i) for i, p in enumerate(world.crowd))))
    while not sending.done():
        await asyncio.wait({sending}, timeout=10)
        done = acknowledged_count(database) - base
        progress(f"  {done}/{total} acknowledged, RSS {bot.rss_mb():.1f} MB")
    sent_total = sum(sending.result())
    took = time.monotonic() - began
    return {"commands": sent_total, "acknowledged": acknowledged_count(database) - base,
            "seconds": took, "per_second": sent_total / took, "rss_mb": bot.rss_mb()}


async def notes(world: World) -> dict[str, float]:
    """Render a meeting with 500 attendees, 2,000 updates and 100 agenda items."""
    from chatbot.config import load_config
    from chatbot.meetings import compile_note
    from chatbot.model import EntryKind, EventId, Profile, RoomId, UserId
    from chatbot.render import markdown_to_html, render_note
    from chatbot.store import Store

    progress("notes: building a meeting with 500 attendees, 2,000 updates, 100 agenda items")
    folder = world.workdir / "notes-bench"
    config_path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump({
        "matrix": {"homeserver": world.hs.url, "user_id": "@nobody:localhost",
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
    runs = []
    for _ in range(3):
        began = time.perf_counter()
        completed = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "chatbot.cli", "notes", "-c", str(config_path), "big"],
            capture_output=True, timeout=60, check=True, cwd=ROOT)
        runs.append((time.perf_counter() - began) * 1000)
    result["cli_notes_ms"] = statistics.median(runs)
    result["cli_notes_bytes"] = len(completed.stdout)
    return result


# --- the report --------------------------------------------------------------------------


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "synapse": version("matrix-synapse"), "matrix_nio": version("matrix-nio"),
            "platform": platform.platform()}


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str, str]] = []

    def row(what: str, chatbot: float | None, baseline: float | None, unit: str,
            target: str = "", higher_is_better: bool = False) -> None:
        ratio = ""
        if chatbot is not None and baseline:
            ratio = f"{chatbot / baseline:.2f}x"
        def shown(value: float | None) -> str:
            if value is None:
                return "-"
            return f"{value:,} {unit}" if isinstance(value, int) else f"{value:,.1f} {unit}"

        rows.append((what, shown(chatbot), shown(baseline), ratio, target))

    if "latency" in results:
        synapse_rows(results, row, rows)
    if "growth" in results:
        growth_rows(results["growth"], row)
    header = ("measure", "chatbot", "baseline", "ratio", "target")
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(5)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows]
    return "\n".join(lines)


def growth_rows(g: dict[str, Any], row: Callable[..., None]) -> None:
    """The baseline column is the same simulated use without the daily upkeep."""
    mib = 1024 * 1024
    for pruned, unpruned in zip(g["pruned"]["checkpoints"], g["unpruned"]["checkpoints"],
                                strict=True):
        what = (f"database after {pruned['commands']:,} commands, {pruned['month']} "
                f"month{'s' if pruned['month'] > 1 else ''} (vs no pruning)")
        row(what, pruned["file_bytes"] / mib, unpruned["file_bytes"] / mib, "MiB")
        row("  of which in use", pruned["used_bytes"] / mib, unpruned["used_bytes"] / mib,
            "MiB")
        row("  handled-event ids kept", pruned["rows_processed_events"],
            unpruned["rows_processed_events"], "rows")
        row("  outbox jobs kept", pruned["rows_outbox"], unpruned["rows_outbox"], "rows")


def synapse_rows(results: dict[str, Any], row: Callable[..., None],
                 rows: list[tuple[str, str, str, str, str]]) -> None:
    lat = results["latency"]
    row("latency median", lat["chatbot"]["median_ms"], lat["baseline"]["median_ms"], "ms",
        "<= 1.10x")
    row("latency p95", lat["chatbot"]["p95_ms"], lat["baseline"]["p95_ms"], "ms", "<= 1.10x")
    # The baseline stays the plain one: the ratio is what encryption costs over the floor.
    row("latency median, encrypted room", lat["chatbot_encrypted"]["median_ms"],
        lat["baseline"]["median_ms"], "ms")
    row("latency p95, encrypted room", lat["chatbot_encrypted"]["p95_ms"],
        lat["baseline"]["p95_ms"], "ms")
    b = results["burst"]
    row(f"burst: {b['chatbot']['commands']} commands, all acked", b["chatbot"]["seconds"],
        b["baseline"]["seconds"], "s")
    row("burst throughput", b["chatbot"]["per_second"], b["baseline"]["per_second"], "cmd/s",
        ">= 0.9x")
    rows.append(("burst recorded by chatbot", f"{b['chatbot']['recorded']}",
                 "", "", f"= {b['chatbot']['commands']}"))
    s = results["scale"]
    row(f"start to listening ({s['rooms']} rooms)", s["chatbot"]["listening_s"],
        s["baseline"]["listening_s"], "s")
    row("start to first ✅", s["chatbot"]["first_ack_s"], s["baseline"]["first_ack_s"], "s",
        "< 2 s")
    sizes = s["initial_sync_bytes"]
    row("initial sync (chatbot's first-sync filter)", sizes["first"] / 1024, None, "KiB")
    row("initial sync (chatbot's steady filter)", sizes["steady_filter"] / 1024, None, "KiB")
    row("initial sync (no filter)", sizes["unfiltered"] / 1024, None, "KiB")
    row("RSS after start", s["chatbot"]["rss_after_start_mb"],
        s["baseline"]["rss_after_start_mb"], "MB")
    m = s["memory"]
    row(f"RSS after {m['commands']:,} commands", m["rss_mb"], None, "MB", "< 100 MB")
    row(f"{m['commands']:,} commands, all acked", m["seconds"], None, "s")
    n = results["notes"]
    row("note render, markdown", n["markdown_ms"], None, "ms")
    row("note render, HTML", n["html_ms"], None, "ms")
    row("note render, markdown + HTML", n["markdown_and_html_ms"], None, "ms", "< 100 ms")
    row("`chatbot notes` end to end", n["cli_notes_ms"], None, "ms")
    i = results["idle"]
    row(f"idle CPU over {i['seconds']:.0f} s", i["chatbot"] * 1000, i["baseline"] * 1000, "ms")


async def run_benchmark(counts: Counts, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": machine(), "counts": {k: getattr(counts, k) for k in Counts.__slots__},
        "started": datetime.now(UTC).isoformat(timespec="seconds")}
    progress("starting Synapse on 127.0.0.1")
    hs = await asyncio.to_thread(LocalHomeserver.start, workdir / "synapse")
    bots: list[BotProcess] = []
    world: World | None = None
    try:
        world = await build_world(hs, workdir, counts)
        config = chatbot_config(world, counts)
        database = config.parent / "data" / "chatbot.db"
        chatbot = BotProcess("chatbot", [sys.executable, "-m", "chatbot.cli", "run", "-c",
                                         str(config)], "listening in")
        baseline = BotProcess("baseline", [
            sys.executable, "-m", "benchmarks.baseline_bot", hs.url,
            world.baseline_user.user_id, world.baseline_user.access_token], "listening")
        bots = [chatbot, baseline]

        progress(f"scale: starting chatbot ({counts.rooms} rooms, {counts.meetings} meetings)")
        await chatbot.start()
        chatbot_start = await first_ack(world, chatbot, world.chatbot_user.user_id,
                                        world.chatbot_room)
        progress(f"  chatbot listening after {chatbot_start['listening_s']:.2f} s, first ✅ "
                 f"after {chatbot_start['first_ack_s']:.2f} s")
        progress("scale: starting the baseline")
        await baseline.start()
        baseline_start = await first_ack(world, baseline, world.baseline_user.user_id,
                                         world.baseline_room)
        progress(f"  baseline listening after {baseline_start['listening_s']:.2f} s, first ✅ "
                 f"after {baseline_start['first_ack_s']:.2f} s")
        sizes = await initial_sync_bytes(world)
        results["scale"] = {"rooms": counts.rooms, "meetings": counts.meetings,
                            "chatbot": chatbot_start, "baseline": baseline_start,
                            "initial_sync_bytes": sizes}

        idle_cpu = await idle(bots, counts.idle)
        results["idle"] = {"seconds": counts.idle, **idle_cpu}

        samples = await latency(world, counts.latency)
        results["latency"] = {name: {"median_ms": statistics.median(values),
                                     "p95_ms": percentile(values, 95),
                                     "samples": len(values)}
                              for name, values in samples.items()}
        progress(f"  median {results['latency']['chatbot']['median_ms']:.1f} ms vs "
                 f"{results['latency']['baseline']['median_ms']:.1f} ms")
        # The first encrypted command also sets up Olm and Megolm sessions: not a sample.
        await encrypted_latency(world, 1)
        secret = await encrypted_latency(world, counts.latency)
        results["latency"]["chatbot_encrypted"] = {
            "median_ms": statistics.median(secret), "p95_ms": percentile(secret, 95),
            "samples": len(secret)}

        results["burst"] = {}
        for name, user, room in (("chatbot", world.chatbot_user.user_id, world.chatbot_room),
                                 ("baseline", world.baseline_user.user_id,
                                  world.baseline_room)):
            progress(f"burst: {len(world.crowd)} people x {counts.burst_each} commands "
                     f"to {name}")
            outcome = await burst(world, user, room, counts.burst_each, f"burst-{name}")
            if name == "chatbot":
                outcome["recorded"] = recorded(database, outcome["event_ids"])
            del outcome["event_ids"]
            results["burst"][name] = outcome
            progress(f"  {outcome['commands']} in {outcome['seconds']:.2f} s "
                     f"({outcome['per_second']:.0f}/s)")

        results["scale"]["memory"] = await many_commands(world, chatbot, database,
                                                         counts.commands)
        results["notes"] = await notes(world)
        results["growth"] = await growth_phase(workdir, counts)
        for bot in bots:
            await bot.stop()
        results["exit_codes"] = {bot.name: bot.process.returncode for bot in bots
                                 if bot.process is not None}
    finally:
        for bot in bots:
            await bot.stop()
        if world is not None:
            await world.owner.close()
            await world.keeper.close()
            await asyncio.gather(*(person.close() for person in world.crowd))
        await asyncio.to_thread(hs.stop)
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
    parser.add_argument("--commands", type=int, help="commands in the memory phase")
    parser.add_argument("--rooms", type=int, help="rooms both bots are joined to")
    parser.add_argument("--idle", type=float, help="seconds of the idle phase")
    parser.add_argument("--latency", type=int, help="sequential commands per bot")
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
        "commands", "rooms", "idle", "latency", "growth_commands", "growth_months")
                 if getattr(args, name) is not None}
    counts = Counts(**{**{k: getattr(counts, k) for k in Counts.__slots__}, **overrides})
    if counts.rooms < counts.meetings + 1:
        parser.error("--rooms must exceed the number of meetings")
    with tempfile.TemporaryDirectory(prefix="chatbot-bench-") as folder:
        run = growth_only if args.only == "growth" else run_benchmark
        if args.only and args.output == RESULTS:  # a part does not replace the whole run's
            args.output = RESULTS.with_name(f"{args.only}.json")
        results = asyncio.run(run(counts, Path(folder)))
    results["table"] = table(results)
    print()
    print(results["table"])
    print(f"\nmachine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
          f"Python {results['machine']['python']}, Synapse {results['machine']['synapse']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    print(f"written to {args.output}")
    return 0
