"""Secrets stay secret: the login file is private and no log line carries a credential."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import yaml

from chatbot.demo.person import is_reaction

from .conftest import BOT_PASSWORD, World


async def test_no_log_line_at_any_level_carries_the_password_or_token(
    world: World, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, nio and aiohttp included
    config = world.config()
    bot = await world.start_bot(config)
    command = await world.ada.say(world.room_id, "!here")
    await world.ada.wait_for(lambda e: is_reaction(e, command))
    await bot.stop()
    session = config.data_dir / "session.json"
    token = json.loads(session.read_text())["access_token"]
    assert stat.S_IMODE(session.stat().st_mode) == 0o600
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert len(caplog.records) > 20, "the capture really saw the bot's logging"
    assert BOT_PASSWORD not in logged and token not in logged


async def test_nor_does_the_command_line_at_debug_level(world: World) -> None:
    config = world.config()
    config_file = world.tmp / "config.yaml"
    config_file.write_text(yaml.safe_dump({
        "matrix": {"homeserver": world.hs.url, "user_id": world.bot_user.user_id,
                   "password": BOT_PASSWORD},
        "data_dir": str(config.data_dir),
        "meetings": [{"id": "team", "title": "Team", "room": world.room_id,
                      "timezone": "UTC", "start": "2030-01-01 09:00"}],
    }))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatbot.cli", "-v", "run", "-c", str(config_file),
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    assert process.stderr is not None
    while not lines or "listening in" not in lines[-1]:
        line = await asyncio.wait_for(process.stderr.readline(), 30)
        assert line, "".join(lines)
        lines.append(line.decode())
    command = await world.ada.say(world.room_id, "!when")
    await world.ada.wait_for(lambda e: (e.get("content") or {}).get("m.relates_to", {})
                             .get("m.in_reply_to", {}).get("event_id") == command)
    process.send_signal(signal.SIGTERM)
    _, rest = await asyncio.wait_for(process.communicate(), 15)
    log = "".join(lines) + rest.decode()
    token = json.loads((config.data_dir / "session.json").read_text())["access_token"]
    assert "DEBUG" in log
    assert BOT_PASSWORD not in log and token not in log


async def test_a_stop_ends_the_wait_for_an_unreachable_homeserver(world: World) -> None:
    config_file = world.tmp / "unreachable.yaml"
    config_file.write_text(yaml.safe_dump({
        "matrix": {"homeserver": "http://127.0.0.1:9", "user_id": "@bot:localhost",
                   "password": "x"},
        "data_dir": str(world.tmp / "unreachable"),
        "meetings": [{"id": "team", "title": "Team", "room": "#team:localhost",
                      "timezone": "UTC", "start": "2030-01-01 09:00"}],
    }))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatbot.cli", "run", "-c", str(config_file),
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stderr is not None
    line = ""
    while "unreachable" not in line:
        line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        assert line, "the bot exited instead of waiting"
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0 and time.monotonic() - began < 3
