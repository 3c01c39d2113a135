"""The HTTP edge (the only module with aiohttp.web): calendar feeds, health and metrics.

- `/calendar/<meeting id>.ics`: each meeting's calendar with its next agenda;
- `/healthz`: 200 "ok" while syncing is healthy (see `chatbot.metrics`), else 503 and why;
- `/metrics`: the bot's metrics in the Prometheus text format.

It listens only when the config has `http.listen`. Routes are added before `start()`;
later ones go through `add_routes`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime

from aiohttp import web
from aiohttp.typedefs import Middleware

from chatbot.config import Config, MeetingConfig
from chatbot.metrics import CONTENT_TYPE as METRICS_TYPE
from chatbot.metrics import Metrics
from chatbot.model import Entry

log = logging.getLogger(__name__)

AgendaSource = Callable[[MeetingConfig], Awaitable[Sequence[Entry]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CALENDAR_TYPE = "text/calendar"
# In-flight requests are short; do not hold up the bot's shutdown for long.
SHUTDOWN_TIMEOUT_SECONDS = 2.0


class ListenFailed(Exception):
    """The web server cannot listen at `http.listen`; the message is one line for the user."""


def _errors(metrics: Metrics) -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        """The HTTP door for errors: the log gets the traceback, the client a plain 500."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            metrics.error("http")
            return web.Response(status=500, text="internal error; see the bot's log\n")

    return errors


class WebServer:
    """Serves each meeting's calendar (with its next agenda), health and metrics.

    Without `metrics` it makes its own, which reports unhealthy until told of a sync.
    """

    def __init__(
        self,
        config: Config,
        agenda_for: AgendaSource,
        clock: Callable[[], datetime],
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.agenda_for = agenda_for
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics(clock)
        self.app = web.Application(middlewares=[_errors(self.metrics)])
        self._runner: web.AppRunner | None = None
        self.add_routes([
            web.get("/calendar/{meeting_id}.ics", self._calendar),
            web.get("/healthz", self._health),
            web.get("/metrics", self._metrics),
        ])

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Serve more routes (call before `start()`)."""
        self.app.add_routes(routes)

    async def start(self) -> None:
        """Listen at `http.listen`; does nothing when the config has no `http` section."""
        http = self.config.http
        if http is None:
            return
        runner = web.AppRunner(self.app, access_log=None,
                               shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
        await runner.setup()
        site = web.TCPSite(runner, http.host, http.port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise ListenFailed(
                f"http.listen: cannot listen on {http.listen} ({error.strerror or error})"
            ) from None
        self._runner = runner
        ids = ",".join(m.id for m in self.config.meetings)
        many = len(self.config.meetings) > 1
        log.info("serving calendars at %s/calendar/%s.ics, health at /healthz and metrics "
                 "at /metrics", http.base_url, f"{{{ids}}}" if many else ids)

    async def stop(self) -> None:
        """Stop listening; safe to call when not started."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _calendar(self, request: web.Request) -> web.Response:
        # Matched against the configured ids only; the id never reaches a path or a query.
        series = self.config.meeting(request.match_info["meeting_id"])
        if series is None:
            return web.Response(status=404, text="no such meeting\n")
        agenda = await self.agenda_for(series)
        from chatbot.calendar import build_calendar  # icalendar: ~2 MB, only once asked

        body = build_calendar([(series, agenda)], now=self.clock(),
                              prefix=self.config.command_prefix)
        return web.Response(
            body=body,
            content_type=CALENDAR_TYPE,
            charset="utf-8",
            headers={"Content-Disposition": f'inline; filename="{series.id}.ics"'},
        )

    async def _health(self, request: web.Request) -> web.Response:
        reason = self.metrics.unhealthy_reason(self.clock())
        if reason is not None:
            return web.Response(status=503, text=f"unhealthy: {reason}\n")
        return web.Response(text="ok\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        # aiohttp's `content_type` cannot carry parameters; Prometheus wants its version.
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_TYPE})
