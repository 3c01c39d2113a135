"""The HTTP edge: calendar feeds at `/calendar/<meeting id>.ics` (only module with aiohttp.web).

It listens only when the config has `http.listen`. Routes are added before `start()`;
the calendar route is the first, later ones (health, metrics) go through `add_routes`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime

from aiohttp import web

from chatbot.calendar import build_calendar
from chatbot.config import Config, MeetingConfig
from chatbot.model import Entry

log = logging.getLogger(__name__)

AgendaSource = Callable[[MeetingConfig], Awaitable[Sequence[Entry]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CALENDAR_TYPE = "text/calendar"
# In-flight requests are short; do not hold up the bot's shutdown for long.
SHUTDOWN_TIMEOUT_SECONDS = 2.0


class ListenFailed(Exception):
    """The web server cannot listen at `http.listen`; the message is one line for the user."""


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The HTTP door for errors: the log gets the traceback, the client a plain 500."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.Response(status=500, text="internal error; see the bot's log\n")


class WebServer:
    """Serves each configured meeting's calendar, with the agenda of its next sitting."""

    def __init__(
        self,
        config: Config,
        agenda_for: AgendaSource,
        clock: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.agenda_for = agenda_for
        self.clock = clock
        self.app = web.Application(middlewares=[_errors])
        self._runner: web.AppRunner | None = None
        self.add_routes([web.get("/calendar/{meeting_id}.ics", self._calendar)])

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
        log.info("serving calendars at %s/calendar/%s.ics", http.base_url,
                 f"{{{ids}}}" if many else ids)

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
        body = build_calendar([(series, agenda)], now=self.clock(),
                              prefix=self.config.command_prefix)
        return web.Response(
            body=body,
            content_type=CALENDAR_TYPE,
            charset="utf-8",
            headers={"Content-Disposition": f'inline; filename="{series.id}.ics"'},
        )
