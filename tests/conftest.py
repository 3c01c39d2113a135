"""Shared fixtures: one real Synapse per test session, people on real clients, the bot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chatbot.app import BotApp
from chatbot.config import Config, parse_config
from chatbot.demo.homeserver import LocalHomeserver, RegisteredUser
from chatbot.demo.person import Person

from .support.botlog import LogWatcher

BOT_PASSWORD = "bot-password"


@pytest.fixture(scope="session")
def homeserver() -> Iterator[LocalHomeserver]:
    with LocalHomeserver.start() as hs:
        yield hs


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def minute_from_now(**delta: float) -> datetime:
    """A whole-second UTC time, relative to now."""
    return (datetime.now(UTC) + timedelta(**delta)).replace(microsecond=0)


class RunningBot:
    """The bot running in this event loop, as `chatbot run` would run it."""

    def __init__(self, config: Config, **options: Any) -> None:
        self.app = BotApp(config, **options)
        self.task = asyncio.create_task(self.app.run())

    async def ready(self, timeout: float = 30) -> None:
        ready = asyncio.create_task(self.app.ready.wait())
        done, _ = await asyncio.wait({ready, self.task}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self.task in done:
            self.task.result()
            raise AssertionError("the bot stopped before it was ready")
        if not done:
            raise TimeoutError("the bot was not ready in time")

    async def outbox_pending(self) -> bool:
        """Whether the running bot still has jobs to send (for `until_drained`)."""
        assert self.app.store is not None, "the bot has not opened its database yet"
        return await self.app.store.read.has_pending_outbox()

    async def stop(self) -> None:
        self.app.stop.set()
        await asyncio.wait_for(self.task, 15)


@dataclass
class World:
    """A room with a chair (its creator), two members and a bot account, on the real server."""

    hs: LocalHomeserver
    tmp: Path
    bot_user: RegisteredUser
    chair: Person
    ada: Person
    grace: Person
    room_id: str
    bots: list[RunningBot] = field(default_factory=list)

    def config(self, **meeting: Any) -> Config:
        entry: dict[str, Any] = {
            "id": "team",
            "title": "Example Team Meeting",
            "room": self.room_id,
            "timezone": "UTC",
            "start": minute_from_now(hours=2).strftime("%Y-%m-%d %H:%M:%S"),
            "rrule": "FREQ=WEEKLY",
            "duration": "60m",
            "chairs": [self.chair.user_id],
            "links": {
                "notes": "https://notes.example.org/team",
                "issue": "https://github.com/example/team/issues/12",
                "code_of_conduct": "https://example.org/conduct",
            },
        }
        entry.update(meeting)
        return parse_config({
            "matrix": {"homeserver": self.hs.url, "user_id": self.bot_user.user_id,
                       "password": BOT_PASSWORD},
            "data_dir": str(self.tmp / "data"),
            "meetings": [entry],
        })

    async def start_bot(self, config: Config, **options: Any) -> RunningBot:
        bot = RunningBot(config, **options)
        self.bots.append(bot)
        await bot.ready()
        return bot


async def make_person(hs: LocalHomeserver, name: str, display: str,
                      keys: Path | None = None) -> Person:
    """A new user on a real client; with `keys` (a folder) the client encrypts."""
    user = await hs.register_user(unique(name), displayname=display)
    PASSWORDS[user.user_id] = user.password
    return Person(hs.nio_client(user, store_path=keys / name if keys else None), display)


# Each person's password, for a test that logs in as them again (a second device).
PASSWORDS: dict[str, str] = {}


@contextlib.asynccontextmanager
async def make_world(hs: LocalHomeserver, tmp_path: Path, *,
                     encrypted: bool = False) -> AsyncIterator[World]:
    """A chair's room with two members and the bot invited; people on encrypting clients
    in an encrypted room when `encrypted`."""
    bot_user = await hs.register_user(unique("bot"), BOT_PASSWORD, displayname="Meeting Bot")
    keys = tmp_path / "people" if encrypted else None
    chair = await make_person(hs, "chair", "Sam Chair", keys)
    ada = await make_person(hs, "ada", "Ada", keys)
    grace = await make_person(hs, "grace", "Grace", keys)
    room_id = await chair.create_room(invite=[bot_user.user_id, ada.user_id, grace.user_id],
                                      encrypted=encrypted)
    for person in (ada, grace):
        await person.join(room_id)
    for person in (chair, ada, grace):
        await person.start()
    world = World(hs, tmp_path, bot_user, chair, ada, grace, room_id)
    try:
        yield world
    finally:
        for bot in world.bots:
            with contextlib.suppress(Exception):
                await bot.stop()
        for person in (chair, ada, grace):
            await person.close()


@pytest.fixture
async def world(homeserver: LocalHomeserver, tmp_path: Path) -> AsyncIterator[World]:
    async with make_world(homeserver, tmp_path) as made:
        yield made


@pytest.fixture
def bot_log() -> Iterator[LogWatcher]:
    """The log lines of the bot running in this test's event loop, at INFO and above."""
    watcher = LogWatcher()
    logger = logging.getLogger("chatbot")
    level = logger.level
    logger.addHandler(watcher)
    logger.setLevel(logging.INFO)
    try:
        yield watcher
    finally:
        logger.removeHandler(watcher)
        logger.setLevel(level)
