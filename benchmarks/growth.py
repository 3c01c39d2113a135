"""Database growth: months of steady use in simulated time, with the daily upkeep and without.

No homeserver: the bot's core (`MeetingBot`) runs on a real SQLite file with a clock the
simulation moves and a transport that takes every send at once. The scheduled jobs the
core plans (reminders, starts, closes and the daily upkeep) run when the simulated
clock reaches them, as the scheduler edge would run them. The same workload runs twice,
with the upkeep and with the upkeep skipped (the bot before pruning existed, the
baseline); each month's end is measured: the database file (after a WAL checkpoint) and
the bytes in use (its pages less the free ones SQLite keeps for reuse).

    .venv/bin/python -m benchmarks --only growth [--growth-commands N] [--growth-months N]
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chatbot.bot import IncomingMessage, MeetingBot
from chatbot.config import parse_config
from chatbot.meetings import Job, JobKind, Rooms
from chatbot.metrics import Metrics
from chatbot.model import EventId, RoomId, UserId
from chatbot.store import OutboxItem, Store, Undecrypted

ROOM = RoomId("!team:bench.example")
START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
MONTH = timedelta(days=30)
PEOPLE = 60
DIRECT_CHATS = 40  # people who also write to the bot directly, each for a week or so
# One command in this many is in a direct chat (answered with help) instead of the room.
DIRECT_EVERY = 50
# One message in this many comes encrypted and cannot be decrypted.
UNDECRYPTABLE_EVERY = 100


class Transport:
    """Takes every send at once; remembers the rooms it left."""

    def __init__(self) -> None:
        self.sent = 0
        self.left: list[RoomId] = []

    async def deliver(self, item: OutboxItem) -> str:
        self.sent += 1
        return f"$sent{self.sent}"

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        return 100

    async def leave(self, room_id: RoomId) -> None:
        self.left.append(room_id)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def config(data_dir: Path) -> dict[str, Any]:
    return {
        "matrix": {"homeserver": "http://127.0.0.1:1", "user_id": "@bot:bench.example",
                   "password": "unused"},
        "data_dir": str(data_dir),
        "meetings": [{"id": "team", "title": "Team Meeting", "room": ROOM, "timezone": "UTC",
                      "start": "2026-01-06 10:00", "rrule": "FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR",
                      "duration": "45m", "reminders": ["1d", "10m"],
                      "links": {"notes": "https://notes.example.org/team"}}],
    }


def command(n: int) -> str:
    """A plausible mix: mostly roll calls and updates, some notes, actions, celebrations.

    No agenda items: nobody here moves through the agenda, so each would be carried
    over to every later meeting, which is growth of another kind (limits per meeting).
    """
    match n % 10:
        case 0 | 1:
            return "!here"
        case 2 | 3 | 4 | 5 | 6:
            return (f"!update worked on the release checklist, reviewed #{n} and fixed the "
                    f"flaky test in the importer (run {n})")
        case 7:
            return f"!note we agreed to look at the dashboard numbers again next time ({n})"
        case 8:
            return f"!action @person{n % PEOPLE} write up the plan for #{n}"
        case _:
            return f"!celebrate release {n // 10} is out"


def rss_mb() -> float:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        rows = {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("processed_events", "outbox", "undecrypted", "direct_rooms",
                              "entries", "meetings")}
    return {"file_bytes": database.stat().st_size, "used_bytes": (pages - free) * page_size,
            **{f"rows_{table}": count for table, count in rows.items()}}


async def simulate(folder: Path, *, commands: int, months: int, upkeep: bool) -> dict[str, Any]:
    """`commands` a month, evenly spread, for `months`; measured at each month's end."""
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "chatbot.db"
    store = await Store.open(database)
    clock, transport = Clock(), Transport()
    replan = True

    def schedule_changed() -> None:
        nonlocal replan
        replan = True

    rooms = Rooms(parse_config(config(folder)), {"team": ROOM})
    bot = MeetingBot(rooms, store, folder / "notes", transport, clock=clock,
                     on_schedule_change=schedule_changed, metrics=Metrics(clock))
    jobs: list[Job] = []
    skipped: set[str] = set()

    async def run_due() -> None:
        nonlocal jobs, replan
        while True:
            if replan:
                replan = False
                jobs = sorted(await bot.plan(), key=lambda job: job.due_at)
            due = [job for job in jobs if job.due_at <= clock.now and job.id not in skipped]
            if not due:
                return
            job = due[0]
            if job.kind is JobKind.UPKEEP and not upkeep:
                # The bot without pruning: the day passes, nothing is deleted.
                skipped.add(job.id)
                jobs = [j for j in jobs if j.id != job.id]
                continue
            await bot.run_job(job)
            jobs = [j for j in jobs if j.id != job.id]
            await drain()

    async def drain() -> None:
        while (await bot.deliver_due())[0]:
            pass

    step = MONTH / commands
    checkpoints = []
    rss_start = rss_mb()
    began = time.perf_counter()
    for month in range(months):
        for n in range(commands):
            number = month * commands + n
            clock.now = START + month * MONTH + n * step
            await run_due()
            person = number % PEOPLE
            if number % DIRECT_EVERY == 0:
                # Each direct chat is busy for a stretch, then falls quiet for good.
                chat = (number // DIRECT_EVERY) * DIRECT_CHATS // (
                    commands * months // DIRECT_EVERY) % DIRECT_CHATS
                chat_room = RoomId(f"!dm{chat}:bench.example")
                async with store.transaction():
                    await store.add_direct_room(chat_room, clock.now)
                await bot.handle_direct(IncomingMessage(
                    chat_room, EventId(f"$dm{number}"), UserId(f"@person{person}:bench.example"),
                    f"Person {person}", "!help"))
            else:
                await bot.handle(IncomingMessage(
                    ROOM, EventId(f"$cmd{number}"), UserId(f"@person{person}:bench.example"),
                    f"Person {person}", command(number)))
            if number % UNDECRYPTABLE_EVERY == 0:
                # As the Matrix edge keeps a message it cannot decrypt (encryption off,
                # or the key never came): the whole event, about a kilobyte.
                async with store.transaction():
                    await store.add_undecrypted(Undecrypted(
                        EventId(f"$secret{number}"), ROOM,
                        UserId(f"@person{person}:bench.example"), "session",
                        {"type": "m.room.encrypted", "content": {"ciphertext": "x" * 800}},
                        clock.now))
            if n % 20 == 0:
                await drain()
        clock.now = START + (month + 1) * MONTH
        await run_due()
        await drain()
        checkpoints.append({"month": month + 1, "commands": (month + 1) * commands,
                            "left_direct_chats": len(transport.left), "rss_mb": rss_mb(),
                            **measure(database)})
    await store.close()
    return {"seconds": time.perf_counter() - began, "rss_start_mb": rss_start,
            "checkpoints": checkpoints}


async def growth(workdir: Path, *, commands: int = 10_000, months: int = 2) -> dict[str, Any]:
    """The same months of use with the daily upkeep and without it.

    The pruned run goes first, so the process's memory at its checkpoints is the bot
    core's own growth over the simulated months (the process is the benchmark's)."""
    runs = {}
    for name, upkeep in (("pruned", True), ("unpruned", False)):
        runs[name] = await simulate(workdir / f"growth-{name}", commands=commands,
                                    months=months, upkeep=upkeep)
    return {"commands_per_month": commands, "months": months, **runs}
