"""What `chatbot run` loads before it listens: nothing a bot without a web server, a custom
template or a mistyped command may never need (issue 14's memory and start-up).

Each case runs in a fresh interpreter, since this one has imported everything already."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

# Imported on first use only: /metrics, the web archive's pages, a note or a formatted
# message, the calendar, a mistyped command's suggestion, the median of the own times.
NOT_AT_START = ("prometheus_client", "http.server", "wsgiref", "jinja2", "markupsafe",
                "markdown", "nh3", "icalendar", "aiohttp.web", "chatbot.web",
                "chatbot.calendar", "chatbot.demo", "difflib", "statistics")

# `chatbot run` itself up to logging in (which needs a homeserver: a stop comes then, and
# it ends cleanly); then what it does once logged in, by hand: the core and the scheduler
# made, the schedule planned, and the metrics' path of one command from arrival to ✅.
START = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path

    from chatbot import cli
    from chatbot.config import load_config
    from chatbot.app import BotApp, database_path, notes_dir, publish_targets

    logging_in = []

    async def stop_at_login(self, edge):
        logging_in.append(edge)
        self.stop.set()
        return await log_in(self, edge)

    log_in, BotApp._connect = BotApp._connect, stop_at_login
    assert asyncio.run(cli.run(load_config(Path(sys.argv[1])))) == 0 and logging_in
    BotApp._connect = log_in

    from chatbot.agenda_feed import next_agenda
    from chatbot.bot import MeetingBot
    from chatbot.matrix import MatrixEdge
    from chatbot.meetings import Rooms, index_missing_notes
    from chatbot.scheduler import JobScheduler
    from chatbot.store import Store
    from chatbot.supervise import supervise

    async def start() -> None:
        config = load_config(Path(sys.argv[1]))
        app = BotApp(config)
        store = await Store.open(database_path(config))
        await index_missing_notes(store, config)
        edge = MatrixEdge(config, store, clock=app.clock, metrics=app.metrics)
        bot = MeetingBot(Rooms(config, {}), store, notes_dir(config), edge, clock=app.clock,
                         metrics=app.metrics, targets=publish_targets(config, app.clock))
        await bot.resume()
        scheduler = JobScheduler(bot.run_job)
        scheduler.start()
        scheduler.replace_all(await bot.plan())
        app.metrics.message_arrived("$here", 1.0)
        app.metrics.command_handled("here", "$here")
        app.metrics.acknowledging("$here")
        scheduler.shutdown()
        await edge.close()
        await store.close()
        if len(sys.argv) > 2:  # and then what is asked for
            exec(sys.argv[2])

    asyncio.run(start())
    print(json.dumps(sorted(set(sys.modules) & set(json.loads(sys.argv[-1])))))
""")


def write_config(folder: Path, **more: object) -> Path:
    """A bot's config; its homeserver is never reached (nothing listens on port 9)."""
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({
        "matrix": {"homeserver": "http://127.0.0.1:9", "user_id": "@bot:example.org",
                   "password": "secret"},
        "data_dir": str(folder / "data"),
        "meetings": [{"id": "team", "title": "Team", "room": "#team:example.org",
                      "timezone": "Europe/London", "start": "2021-06-17 09:00",
                      "rrule": "FREQ=WEEKLY", "duration": "1h", "reminders": ["1h"],
                      "chairs": ["@chair:example.org"]}],
        **more,
    }), encoding="utf-8")
    return config


def python(folder: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *arguments], cwd=folder, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def loaded_after_start(tmp_path: Path, then: str | None = None) -> list[str]:
    """Which of NOT_AT_START a fresh `chatbot run` has loaded once started (and `then` run)."""
    config = write_config(tmp_path)
    result = python(tmp_path, "-c", START, str(config), *([then] if then else []),
                    json.dumps(NOT_AT_START))
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_a_started_bot_has_loaded_none_of_what_it_may_never_need(tmp_path: Path) -> None:
    assert loaded_after_start(tmp_path) == []


def test_what_was_left_out_is_loaded_once_used(tmp_path: Path) -> None:
    used = ("app.metrics.render(); from chatbot import archive; "
            "archive.render_page('note_body.html.j2', note='Minutes', now_item=None)")
    loaded = loaded_after_start(tmp_path, used)
    assert {"prometheus_client", "http.server", "jinja2", "markupsafe",
            "statistics"} <= set(loaded)


def test_with_a_web_server_a_port_in_use_still_stops_the_bot_with_one_line(
        tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        config = write_config(tmp_path, http={"listen": listen})
        result = python(tmp_path, "-m", "chatbot.cli", "run", "-c", str(config))
    assert result.returncode == 1
    assert f"chatbot: http.listen: cannot listen on {listen}" in result.stderr
