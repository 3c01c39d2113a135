"""The HTTP edge (the only module with aiohttp.web): the archive, calendar feeds, health
and metrics.

- `/`, `/meetings/<id>/`, `/meetings/<id>/<date>` (and `.md`, `.log.md`, `/live`),
  `/search?q=`: the archive's pages (see `chatbot.archive`), with a database;
- `/calendar/<meeting id>.ics`: each meeting's calendar with its next agenda;
- `/healthz`: 200 "ok" while syncing is healthy (see `chatbot.metrics`), else 503 and why;
- `/metrics`: the bot's metrics in the Prometheus text format.

A private meeting's pages and feed answer 404 (as for no such meeting) unless the URL
carries its token (`?key=`), 403 for a token retired by `!archive reset`. Handlers are
thin: they read through `Store.read` and render `chatbot.archive`'s views.

It listens only when the config has `http.listen`. Routes are added before `start()`;
later ones go through `add_routes`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Middleware
from markupsafe import Markup

from chatbot import archive
from chatbot.archive import Access
from chatbot.config import Config, MeetingConfig
from chatbot.meetings import compile_note, final_note_of, upcoming
from chatbot.metrics import CONTENT_TYPE as METRICS_TYPE
from chatbot.metrics import Metrics
from chatbot.model import Entry, Meeting
from chatbot.store import Store

log = logging.getLogger(__name__)

AgendaSource = Callable[[MeetingConfig], Awaitable[Sequence[Entry]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CALENDAR_TYPE = "text/calendar"
# In-flight requests are short; do not hold up the bot's shutdown for long.
SHUTDOWN_TIMEOUT_SECONDS = 2.0
# Nothing but our own styles and script; no framing, no forms elsewhere, no referrer
# (a private meeting's link carries its token).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Wrong tokens per client address before it is refused for a while.
WRONG_TOKENS = 20
WRONG_TOKENS_PER = timedelta(minutes=10)
SEARCH_RESULTS = 50
BODIES_KEPT = 32
MAX_QUERY = 200
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}
SITTING = r"{name:\d{4}-\d{2}-\d{2}(?:-\d{1,4})?}"


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


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def client_address(request: web.Request) -> str:
    """Whom to rate-limit: the peer, or behind a reverse proxy on this machine the
    address that proxy saw (the last one it appended to X-Forwarded-For)."""
    remote = request.remote or "unknown"
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
    try:
        local = ipaddress.ip_address(remote).is_loopback
    except ValueError:
        local = False
    return forwarded if local and forwarded else remote


def _with_keys(path: str, keys: Sequence[str]) -> str:
    return f"{path}?{urlencode([('key', key) for key in keys])}" if keys else path


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
        *,
        store: Store | None = None,
        notes_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.agenda_for = agenda_for
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics(clock)
        self.store = store
        self.notes_dir = notes_dir
        self.wrong_tokens = archive.FailureLimit(WRONG_TOKENS, WRONG_TOKENS_PER)
        # Rendered note bodies by meeting id: (version, HTML, ETag), oldest first.
        self._bodies: dict[int, tuple[object, str, str]] = {}
        self.app = web.Application(middlewares=[_errors(self.metrics)])
        self.app.on_response_prepare.append(_security_headers)
        self._runner: web.AppRunner | None = None
        self.add_routes([
            web.get("/calendar/{meeting_id}.ics", self._calendar),
            web.get("/healthz", self._health),
            web.get("/metrics", self._metrics),
        ])
        if store is not None:
            self._static = {
                name: (resources.files("chatbot") / "static" / name).read_bytes()
                for name in ("style.css", "archive.js")
            }
            self.add_routes([
                web.get("/", self._index),
                web.get("/search", self._search),
                web.get("/static/{name}", self._static_file),
                web.get("/meetings/{meeting_id}", self._series_slash),
                web.get("/meetings/{meeting_id}/", self._series),
                web.get(f"/meetings/{{meeting_id}}/{SITTING}", self._sitting),
                web.get(f"/meetings/{{meeting_id}}/{SITTING}.md", self._raw_note),
                web.get(f"/meetings/{{meeting_id}}/{SITTING}.log.md", self._raw_log),
                web.get(f"/meetings/{{meeting_id}}/{SITTING}/live", self._live),
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
                 "at /metrics%s", http.base_url, f"{{{ids}}}" if many else ids,
                 ", the archive at /" if self.store is not None else "")

    async def stop(self) -> None:
        """Stop listening; safe to call when not started."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _calendar(self, request: web.Request) -> web.Response:
        # Matched against the configured ids only; the id never reaches a path or a query.
        series, _ = await self._readable(request)
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

    # --- the archive -----------------------------------------------------------------

    @property
    def _read(self) -> Store:
        assert self.store is not None
        return self.store.read

    async def _readable(self, request: web.Request) -> tuple[MeetingConfig, list[str]]:
        """The meeting in the URL and the keys its links carry, or 404/403/429.

        A private meeting without a valid token answers exactly as an unknown id does.
        """
        series = self.config.meeting(request.match_info["meeting_id"])
        if series is None:
            raise web.HTTPNotFound(text="no such meeting\n")
        if series.archive == "public":
            return series, []
        key = request.query.get("key")
        address = client_address(request)
        now = self.clock()
        if key and self.wrong_tokens.blocked(address, now):
            raise web.HTTPTooManyRequests(text="too many wrong links; try again later\n")
        access = Access.UNKNOWN
        if key and self.store is not None:
            access = archive.check_token(
                key, await self._read.archive_token(series.id),
                await self._read.retired_archive_digests(series.id))
        if access is Access.GRANTED:
            return series, [key] if key else []
        if key:
            self.wrong_tokens.failed(address, now)
        if access is Access.REVOKED:
            raise web.HTTPForbidden(text="this link was replaced; ask for a new one with "
                                         f"{self.config.command_prefix}archive\n")
        raise web.HTTPNotFound(text="no such meeting\n")

    def _page(self, name: str, **context: object) -> web.Response:
        return web.Response(text=archive.render_page(name, **context),
                            content_type="text/html", charset="utf-8")

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            raise web.HTTPNotFound(text="not found\n")
        return web.Response(body=body, content_type=STATIC_TYPES[PurePosixPath(name).suffix],
                            charset="utf-8", headers={"Cache-Control": "max-age=300"})

    async def _next(self, series: MeetingConfig) -> dict[str, str] | None:
        found = await upcoming(self._read, series, self.clock(), count=1)
        return archive.next_occurrence(found[0][0].start, series) if found else None

    async def _index(self, request: web.Request) -> web.Response:
        meetings = [{
            "title": series.title,
            "url": f"/meetings/{series.id}/",
            "calendar": f"/calendar/{series.id}.ics",
            "next": await self._next(series),
        } for series in self.config.meetings if series.archive == "public"]
        return self._page("index.html.j2", meetings=meetings,
                          prefix=self.config.command_prefix)

    async def _series_slash(self, request: web.Request) -> web.Response:
        await self._readable(request)
        raise web.HTTPPermanentRedirect(
            f"{request.path}/" + (f"?{request.query_string}" if request.query_string else ""))

    async def _sittings(self, series: MeetingConfig) -> tuple[list[Meeting], dict[int, str]]:
        meetings = await self._read.meetings_of_series(series.id)
        return meetings, archive.note_stems(
            series, await self._read.sittings_of_series(series.id))

    async def _series(self, request: web.Request) -> web.Response:
        series, keys = await self._readable(request)
        now = self.clock()
        meetings, stems = await self._sittings(series)
        counts = await self._read.sitting_counts(series.id)
        rows = [
            {**{field: getattr(row, field) for field in row.__slots__},
             "url": _with_keys(f"/meetings/{series.id}/{row.name}", keys)}
            for row in archive.sitting_rows(series, meetings, stems, counts, now)
        ]
        recent = meetings[-archive.PICTURE_SITTINGS:]
        grid = archive.attendance_grid([(m.id, stems[m.id]) for m in recent],
                                       await self._read.attendance([m.id for m in recent]))
        spans = [(stems[m.id], archive.duration_of(m, now) or timedelta(0)) for m in recent]
        return self._page(
            "series.html.j2", title=series.title, keys=keys, rows=rows,
            series_url=_with_keys(f"/meetings/{series.id}/", keys),
            calendar=_with_keys(f"/calendar/{series.id}.ics", keys),
            next=await self._next(series),
            attendance=archive.attendance_svg(grid),
            durations=archive.durations_svg(spans, series.duration),
            slot=round(series.duration.total_seconds() / 60),
        )

    async def _find_sitting(self, request: web.Request) -> tuple[
            MeetingConfig, list[str], Meeting, PurePosixPath]:
        series, keys = await self._readable(request)
        name = request.match_info["name"]
        meetings, stems = await self._sittings(series)
        meeting = next((m for m in meetings if stems[m.id] == name), None)
        if meeting is None:
            raise web.HTTPNotFound(text="no such sitting\n")
        # Built from the configured id and a date the route matched, never from chat text.
        return series, keys, meeting, PurePosixPath(series.id, f"{name}.md")

    async def _file(self, relative: PurePosixPath) -> str | None:
        if self.notes_dir is None:
            return None
        path = self.notes_dir / relative
        try:
            return await asyncio.to_thread(path.read_text, encoding="utf-8")
        except FileNotFoundError:
            return None

    async def _note_text(self, series: MeetingConfig, meeting: Meeting,
                         path: PurePosixPath) -> str:
        """The saved note file; while the sitting is open, or before its file is written,
        the note as it stands in the database."""
        if meeting.is_open:
            return await compile_note(self._read, series, meeting)
        saved = await self._file(path)
        return saved if saved is not None else await final_note_of(self._read, series, meeting)

    async def _note_body(self, series: MeetingConfig, meeting: Meeting,
                         path: PurePosixPath) -> tuple[str, str]:
        """The note's HTML (with the item under discussion while open) and its ETag.

        Rendering a big note takes a while and a live page asks every second, so the
        result is kept until the database changes (or, while open, the minute turns:
        the time box can run over without a write)."""
        now = self.clock()
        version = (await self._read.data_version(), meeting.ended_at,
                   now.replace(second=0, microsecond=0) if meeting.is_open else None)
        cached = self._bodies.get(meeting.id)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        note = archive.note_html(await self._note_text(series, meeting, path))
        now_item = None
        if meeting.is_open:
            record = await self._read.record(meeting)
            now_item = archive.now_view(record, series, now)
        body = archive.render_page("note_body.html.j2", note=note, now_item=now_item)
        etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'
        if len(self._bodies) >= BODIES_KEPT:
            self._bodies.pop(next(iter(self._bodies)))
        self._bodies[meeting.id] = (version, body, etag)
        return body, etag

    async def _sitting(self, request: web.Request) -> web.Response:
        series, keys, meeting, path = await self._find_sitting(request)
        base = f"/meetings/{series.id}/{path.stem}"
        log_text = await self._file(archive.log_path_of(path))
        body, _ = await self._note_body(series, meeting, path)
        return self._page(
            "sitting.html.j2", keys=keys, title=meeting.title, series_title=series.title,
            date=path.stem, series_url=_with_keys(f"/meetings/{series.id}/", keys),
            live=meeting.is_open, live_url=_with_keys(f"{base}/live", keys),
            raw_url=None if meeting.is_open else _with_keys(f"{base}.md", keys),
            log_url=_with_keys(f"{base}.log.md", keys) if log_text is not None else None,
            log_html=archive.note_html(log_text) if log_text is not None else None,
            note_body=Markup(body),
        )

    async def _live(self, request: web.Request) -> web.Response:
        series, _, meeting, path = await self._find_sitting(request)
        body, etag = await self._note_body(series, meeting, path)
        headers = {"Cache-Control": "no-store", "ETag": etag,
                   "X-Sitting-Open": "1" if meeting.is_open else "0"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(text=body, content_type="text/html", charset="utf-8",
                            headers=headers)

    async def _raw_note(self, request: web.Request) -> web.Response:
        series, _, meeting, path = await self._find_sitting(request)
        return web.Response(text=await self._note_text(series, meeting, path),
                            content_type="text/plain", charset="utf-8")

    async def _raw_log(self, request: web.Request) -> web.Response:
        _, _, _, path = await self._find_sitting(request)
        text = await self._file(archive.log_path_of(path))
        if text is None:
            raise web.HTTPNotFound(text="this sitting has no log\n")
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _granted(self, request: web.Request) -> dict[str, str]:
        """The private meetings the URL's keys open: meeting id -> its key."""
        keys = list(dict.fromkeys(key for key in request.query.getall("key", []) if key))[:8]
        if not keys:
            return {}
        address, now = client_address(request), self.clock()
        if self.wrong_tokens.blocked(address, now):
            raise web.HTTPTooManyRequests(text="too many wrong links; try again later\n")
        granted: dict[str, str] = {}
        for series in self.config.meetings:
            if series.archive == "private":
                token = await self._read.archive_token(series.id)
                key = next((key for key in keys if archive.check_token(key, token, ())
                            is Access.GRANTED), None)
                if key is not None:
                    granted[series.id] = key
        if len(granted) < len(keys):
            self.wrong_tokens.failed(address, now)
        return granted

    async def _search(self, request: web.Request) -> web.Response:
        query = request.query.get("q", "").strip()[:MAX_QUERY]
        granted = await self._granted(request)
        readable = [series.id for series in self.config.meetings
                    if series.archive == "public" or series.id in granted]
        found: list[tuple[int, str, str, str]] = []
        error = None
        if query:
            try:
                found = await self._read.search_notes(query, readable, marks=archive.MARKS,
                                                      limit=SEARCH_RESULTS)
            except sqlite3.OperationalError as problem:
                if not _is_query_error(problem):
                    raise
                error = archive.search_error(problem)
        sittings = {series.id: await self._sittings(series) for series in self.config.meetings
                    if series.id in {series_id for _, series_id, _, _ in found}}
        results = []
        for meeting_id, series_id, section, snippet in found:
            meetings, stems = sittings[series_id]
            title = next((m.title for m in meetings if m.id == meeting_id), None)
            if title is None:  # indexed, but no longer a held sitting of the series
                continue
            keys = [granted[series_id]] if series_id in granted else []
            results.append({
                "title": title, "date": stems[meeting_id], "section": section,
                "snippet": archive.highlight(snippet),
                "url": _with_keys(f"/meetings/{series_id}/{stems[meeting_id]}", keys),
            })
        return self._page("search.html.j2", query=query, keys=list(granted.values()),
                          results=results, error=error, limit=SEARCH_RESULTS)


def _is_query_error(error: sqlite3.OperationalError) -> bool:
    """FTS5's complaints about a query (as opposed to a database that cannot be read)."""
    text = str(error)
    return text.startswith(("fts5:", "no such column", "unknown special query",
                            "unterminated string"))
