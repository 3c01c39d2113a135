"""`/healthz` and `/metrics` over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatbot.config import MeetingConfig
from chatbot.metrics import CONTENT_TYPE, Metrics
from chatbot.model import Entry
from chatbot.web import WebServer
from tests.test_web import start_server

START = datetime(2026, 6, 17, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class Served:
    def __init__(self, base_url: str, session: aiohttp.ClientSession, server: WebServer,
                 clock: Clock) -> None:
        self.base_url, self.session, self.server, self.clock = base_url, session, server, clock
        self.metrics = server.metrics

    async def get(self, path: str) -> tuple[int, str, str]:
        async with self.session.get(self.base_url + path) as response:
            return response.status, response.headers["Content-Type"], await response.text()


async def no_agenda(series: MeetingConfig) -> Sequence[Entry]:
    return []


async def broken_agenda(series: MeetingConfig) -> Sequence[Entry]:
    raise RuntimeError("database is locked")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    clock = Clock()
    server = await start_server(tmp_path, broken_agenda, clock, Metrics(clock))
    assert server.config.http is not None
    try:
        async with aiohttp.ClientSession() as session:
            yield Served(server.config.http.base_url, session, server, clock)
    finally:
        await server.stop()


async def test_healthz_is_503_before_the_first_sync_and_ok_after_it(served: Served) -> None:
    assert await served.get("/healthz") == (
        503, "text/plain; charset=utf-8", "unhealthy: no successful sync yet\n")
    served.metrics.sync_succeeded(served.clock())
    assert await served.get("/healthz") == (200, "text/plain; charset=utf-8", "ok\n")


async def test_healthz_follows_failures_and_a_stuck_sync(served: Served) -> None:
    served.metrics.sync_succeeded(served.clock())
    served.metrics.sync_failed(served.clock())
    assert (await served.get("/healthz"))[::2] == (503, "unhealthy: the last sync failed\n")
    served.metrics.sync_succeeded(served.clock())
    assert (await served.get("/healthz"))[0] == 200
    served.clock.now += timedelta(minutes=5)
    assert (await served.get("/healthz"))[::2] == (
        503, "unhealthy: no successful sync for 300 s\n")


async def test_healthz_answers_head_for_probes(served: Served) -> None:
    served.metrics.sync_succeeded(served.clock())
    async with served.session.head(served.base_url + "/healthz") as response:
        assert response.status == 200


async def test_metrics_are_prometheus_text(served: Served) -> None:
    served.metrics.command_handled("here")
    served.metrics.reminder("missed")
    served.metrics.set_meetings_open(1)
    served.metrics.sync_succeeded(served.clock())
    served.clock.now += timedelta(seconds=12)
    status, content_type, text = await served.get("/metrics")
    assert (status, content_type) == (200, CONTENT_TYPE)
    values = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
              for family in text_string_to_metric_families(text) for sample in family.samples}
    assert values[("chatbot_commands_total", (("command", "here"),))] == 1
    assert values[("chatbot_reminders_total", (("outcome", "missed"),))] == 1
    assert values[("chatbot_reminders_total", (("outcome", "sent"),))] == 0
    assert values[("chatbot_meetings_open", ())] == 1
    assert values[("chatbot_sync_lag_seconds", ())] == 12
    assert values[("chatbot_healthy", ())] == 1


async def test_a_failed_request_counts_as_an_http_error(served: Served) -> None:
    assert (await served.get("/calendar/team.ics"))[0] == 500
    text = (await served.get("/metrics"))[2]
    assert 'chatbot_errors_total{where="http"} 1.0' in text.splitlines()


async def test_without_a_metrics_object_the_server_makes_its_own(tmp_path: Path) -> None:
    server = await start_server(tmp_path, no_agenda, lambda: START)
    assert server.config.http is not None
    base_url = server.config.http.base_url
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base_url}/healthz") as response:
                assert response.status == 503
            async with session.get(f"{base_url}/metrics") as response:
                assert response.status == 200
                assert "chatbot_meetings_open 0.0" in await response.text()
    finally:
        await server.stop()
