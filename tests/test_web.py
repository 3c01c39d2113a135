"""Calendar feeds over real HTTP on loopback, and `chatbot ics` as a real process."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from icalendar import Calendar, vRecur

from chatbot.agenda_feed import next_agenda
from chatbot.app import database_path
from chatbot.config import Config, MeetingConfig, parse_config
from chatbot.meetings import upcoming
from chatbot.metrics import Metrics
from chatbot.model import Entry, EntryKind, EventId, RoomId, UserId
from chatbot.store import Store
from chatbot.web import AgendaSource, ListenFailed, WebServer

from .support.ports import on_a_free_port

NOW = datetime(2026, 6, 17, 12, 0, tzinfo=UTC)
NEXT = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)  # 09:00 in London, summer time


def config_data(data_dir: Path, **top: Any) -> dict[str, Any]:
    return {
        "matrix": {"homeserver": "https://matrix.example.org", "user_id": "@bot:example.org",
                   "password": "secret"},
        "data_dir": str(data_dir),
        "meetings": [
            {"id": "team", "title": "Example Team Meeting", "room": "#team:example.org",
             "timezone": "Europe/London", "start": "2026-06-18 09:00",
             "rrule": "FREQ=MONTHLY;BYDAY=+3TH", "archive": "public",
             "links": {"notes": "https://notes.example.org/team"}},
            {"id": "docs", "title": "Docs", "room": "#docs:example.org", "timezone": "UTC",
             "start": "2026-07-01 15:00", "archive": "public"},
        ],
        **top,
    }


async def add_agenda_item(store: Store, text: str, minutes: int | None = 10) -> None:
    async with store.transaction():
        meeting = await store.ensure_scheduled("team", RoomId("!team:example.org"),
                                               "Example Team Meeting", NEXT)
        await store.add_entry(meeting.id, EntryKind.AGENDA, UserId("@grace:example.org"),
                              "Grace Hopper", text, minutes, EventId(f"${text}"), NOW)


async def never(series: MeetingConfig) -> Sequence[Entry]:
    raise AssertionError("no request was expected")


class Served:
    def __init__(self, config: Config, server: WebServer, session: aiohttp.ClientSession):
        self.config, self.server, self.session = config, server, session

    def url(self, path: str) -> str:
        assert self.config.http is not None
        return f"{self.config.http.base_url}{path}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "data" / "chatbot.db")
    try:
        yield opened
    finally:
        await opened.close()


async def start_server(tmp_path: Path, agenda_for: AgendaSource,
                       clock: Callable[[], datetime] = lambda: NOW,
                       metrics: Metrics | None = None) -> WebServer:
    """A web server listening on a free port, answering before it is returned."""

    async def start(port: int) -> WebServer:
        config = parse_config(config_data(tmp_path, http={"listen": f"127.0.0.1:{port}"}))
        server = WebServer(config, agenda_for, clock, metrics)
        await server.start()
        return server

    return await on_a_free_port(start, ListenFailed)


@pytest.fixture
async def served(tmp_path: Path, store: Store) -> AsyncIterator[Served]:
    server = await start_server(tmp_path / "data",
                                lambda series: next_agenda(store, series, NOW))
    config = server.config
    try:
        async with aiohttp.ClientSession() as session:
            yield Served(config, server, session)
    finally:
        await server.stop()


# --- over HTTP ------------------------------------------------------------------------------


async def test_a_meetings_calendar_is_served_with_its_next_agenda(
    served: Served, store: Store
) -> None:
    await add_agenda_item(store, "Release planning; v2, maybe")
    async with served.session.get(served.url("/calendar/team.ics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/calendar; charset=utf-8"
        body = await response.read()
    calendar = Calendar.from_ical(body)
    (event,) = calendar.walk("VEVENT")
    assert event["UID"] == "team@chatbot"
    assert event["SUMMARY"] == "Example Team Meeting"
    assert event.decoded("DTSTAMP") == NOW
    assert "1. Grace Hopper (10 min) Release planning; v2, maybe" in str(event["DESCRIPTION"])
    assert [str(tz["TZID"]) for tz in calendar.walk("VTIMEZONE")] == ["Europe/London"]


async def test_each_meeting_has_its_own_calendar(served: Served) -> None:
    async with served.session.get(served.url("/calendar/docs.ics")) as response:
        assert response.status == 200
        (event,) = Calendar.from_ical(await response.read()).walk("VEVENT")
    assert event["UID"] == "docs@chatbot"
    assert "RRULE" not in event
    assert str(event["DESCRIPTION"]).startswith("Agenda: nothing yet; add items")


@pytest.mark.parametrize("path", [
    "/calendar/nope.ics",
    "/calendar/TEAM.ics",
    "/calendar/..%2Fchatbot.db.ics",
    "/calendar/team.ics.ics",
    "/calendar/team",
    "/calendar/",
])
async def test_anything_but_a_configured_meeting_is_not_found(served: Served, path: str) -> None:
    async with served.session.get(served.url(path)) as response:
        assert response.status == 404
        assert response.content_type == "text/plain"


async def test_a_failing_agenda_is_a_plain_500_and_a_logged_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(series: MeetingConfig) -> Sequence[Entry]:
        raise RuntimeError("database is locked")

    server = await start_server(tmp_path, broken)
    assert server.config.http is not None
    url = f"{server.config.http.base_url}/calendar/team.ics"
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 500
            assert "database is locked" not in await response.text()
    finally:
        await server.stop()
    failures = [r for r in caplog.records if r.name == "chatbot.web" and r.levelno == logging.ERROR]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "/calendar/team.ics" in failures[0].getMessage()


async def test_without_an_http_section_nothing_listens(tmp_path: Path) -> None:
    server = WebServer(parse_config(config_data(tmp_path)), never, lambda: NOW)
    await server.start()
    await server.stop()


async def test_an_address_in_use_is_one_line_naming_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = parse_config(config_data(tmp_path, http={"listen": f"127.0.0.1:{port}"}))
        server = WebServer(config, never, lambda: NOW)
        expected = rf"^http\.listen: cannot listen on 127\.0\.0\.1:{port} \(.+\)$"
        with pytest.raises(ListenFailed, match=expected):
            await server.start()
        await server.stop()


# --- chatbot ics ------------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_data(Path("data"))), encoding="utf-8")
    return path


async def chatbot(*args: str) -> tuple[int, bytes, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatbot.cli", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out, err.decode()


async def test_ics_writes_one_meetings_calendar_without_creating_a_database(
    tmp_path: Path,
) -> None:
    config_file = write_config(tmp_path)
    output = tmp_path / "out.ics"
    status, out, err = await chatbot("ics", "-c", str(config_file), "team", "-o", str(output))
    assert (status, out, err) == (0, b"", "")
    (event,) = Calendar.from_ical(output.read_bytes()).walk("VEVENT")
    assert event["UID"] == "team@chatbot"
    assert event["RRULE"] == vRecur.from_ical("FREQ=MONTHLY;BYDAY=+3TH")
    # No database yet: empty agenda, and none is created (nor any leftover partial file).
    assert "Agenda: nothing yet" in str(event["DESCRIPTION"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "out.ics"]


async def test_ics_reads_the_next_agenda_and_prints_every_meeting_without_a_file(
    tmp_path: Path,
) -> None:
    config_file = write_config(tmp_path)
    config = parse_config(config_data(tmp_path / "data"))
    store = await Store.open(database_path(config))
    try:
        # The process reads the real clock: add to the sitting that is next by it.
        ((occurrence, _),) = await upcoming(store, config.meetings[0], datetime.now(UTC), 1)
        async with store.transaction():
            meeting = await store.ensure_scheduled("team", RoomId("!team:example.org"), "T",
                                                   occurrence.start)
            await store.add_entry(meeting.id, EntryKind.AGENDA, UserId("@ada:example.org"),
                                  "Ada", "Roadmap", None, EventId("$roadmap"), NOW)
    finally:
        await store.close()
    status, out, err = await chatbot("ics", "-c", str(config_file))
    assert (status, err) == (0, "")
    events = {str(e["UID"]): e for e in Calendar.from_ical(out).walk("VEVENT")}
    assert set(events) == {"team@chatbot", "docs@chatbot"}
    assert "1. Ada: Roadmap" in str(events["team@chatbot"]["DESCRIPTION"])


async def test_ics_with_an_unknown_meeting_is_one_line_and_status_2(tmp_path: Path) -> None:
    status, out, err = await chatbot("ics", "-c", str(write_config(tmp_path)), "nope",
                                     "-o", str(tmp_path / "out.ics"))
    assert (status, out) == (2, b"")
    assert err == "chatbot: no meeting 'nope' in the config; known: team, docs\n"
    assert not (tmp_path / "out.ics").exists()


async def test_ics_to_a_missing_folder_is_one_line_and_status_1(tmp_path: Path) -> None:
    status, _, err = await chatbot("ics", "-c", str(write_config(tmp_path)), "team",
                                   "-o", str(tmp_path / "missing" / "out.ics"))
    assert status == 1
    assert err.count("\n") == 1 and "cannot be written" in err, err


def test_ics_help_names_the_arguments() -> None:
    result = subprocess.run([sys.executable, "-m", "chatbot.cli", "ics", "--help"],
                            capture_output=True, text=True, check=True, timeout=30)
    text = " ".join(result.stdout.split())
    assert "usage: chatbot ics [-h] [-c CONFIG] [-o FILE] [MEETING_ID]" in text
    assert "MEETING_ID the meeting's `id` in the config (default: every meeting)" in text
    assert "-o FILE, --output FILE write to FILE (default: standard output)" in text
