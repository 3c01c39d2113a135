"""The composition root: builds the store, the Matrix edge, the core and the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from chatbot.config import Config
from chatbot.model import RoomId, utc_now

# What only a running bot needs is imported in `BotApp.run`: the command-line tools
# (`chatbot notes`, `check`, `ics`, `backup`) import this module for its paths and
# must not pay for nio, the web server, the calendar and the scheduler.
if TYPE_CHECKING:
    from chatbot.bot import Clock, MeetingBot
    from chatbot.logs import RedactSecrets
    from chatbot.matrix import MatrixEdge
    from chatbot.publish import Target
    from chatbot.scheduler import JobScheduler
    from chatbot.store import Store
    from chatbot.web import WebServer

log = logging.getLogger(__name__)
T = TypeVar("T")

DATABASE_FILE = "chatbot.db"
SHUTDOWN_DRAIN_SECONDS = 3.0
PLAN_RETRY_SECONDS = 10.0


def database_path(config: Config) -> Path:
    return config.data_dir / DATABASE_FILE


def notes_dir(config: Config) -> Path:
    return config.data_dir / "notes"


def archive_dir(config: Config) -> Path:
    """The git archive's working copies, one per meeting."""
    return config.data_dir / "archive"


def publish_targets(config: Config, clock: Clock = utc_now) -> list[Target]:
    """Every target some meeting publishes to; each carries out its own job kind."""
    from chatbot.publish.git import GitArchive
    from chatbot.publish.issue import GitHubIssues
    from chatbot.publish.notes_page import HackMDPages

    targets: list[Target] = []
    # One GitHub target for both: the archive's pull requests share its rate limit.
    github = (GitHubIssues(config, clock=clock)
              if any(series.publish.github is not None for series in config.meetings)
              else None)
    if any(series.publish.git is not None for series in config.meetings):
        targets.append(GitArchive(config, archive_dir(config), clock=clock, github=github))
    if github is not None:
        targets.append(github)
    if any(series.publish.hackmd is not None for series in config.meetings):
        targets.append(HackMDPages(config, clock=clock))
    return targets


class BotApp:
    """One running bot. `run()` until `stop` is set; `ready` is set once it is listening."""

    def __init__(self, config: Config, *, clock: Clock = utc_now, timeline_limit: int = 50,
                 redaction: RedactSecrets | None = None) -> None:
        self.config = config
        self.clock = clock
        self.timeline_limit = timeline_limit
        self.redaction = redaction
        from chatbot.metrics import Metrics

        self.metrics = Metrics(clock)
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        # The database while running (for tests and tools that inspect a live bot).
        self.store: Store | None = None

    async def run(self) -> None:
        """Run until `stop` is set, then finish the work in hand and close cleanly."""
        from chatbot.agenda_feed import next_agenda
        from chatbot.bot import MeetingBot
        from chatbot.matrix import MatrixEdge
        from chatbot.meetings import Rooms, index_missing_notes
        from chatbot.scheduler import JobScheduler
        from chatbot.store import Store

        store = self.store = await Store.open(database_path(self.config))
        await index_missing_notes(store, self.config)
        web: WebServer | None = None
        if self.config.http is not None:  # aiohttp's server only when something listens
            from chatbot.web import WebServer

            web = WebServer(self.config,
                            lambda series: next_agenda(store.read, series, self.clock()),
                            self.clock, self.metrics, store=store,
                            notes_dir=notes_dir(self.config))
        edge = MatrixEdge(self.config, store, clock=self.clock,
                          timeline_limit=self.timeline_limit, metrics=self.metrics)
        scheduler: JobScheduler | None = None
        tasks: list[asyncio.Task[None]] = []
        bot: MeetingBot | None = None
        try:
            if web is not None:
                await web.start()
            # Logging in waits out an unreachable homeserver; a stop must still end it.
            room_ids = await self._unless_stopped(self._connect(edge))
            if room_ids is None:
                return
            rooms = Rooms(self.config, room_ids)
            replan_needed = asyncio.Event()
            bot = MeetingBot(rooms, store, notes_dir(self.config), edge, clock=self.clock,
                             on_schedule_change=replan_needed.set, metrics=self.metrics,
                             targets=publish_targets(self.config, self.clock),
                             own_name=edge.own_name)
            await bot.resume()
            scheduler = JobScheduler(bot.run_job)
            scheduler.start()
            scheduler.replace_all(await bot.plan())
            tasks = [
                self._supervised("sync", lambda: edge.sync_forever(bot)),
                self._supervised("outbox", bot.deliver_forever),
                self._supervised("replan", lambda: self._replan(bot, scheduler, replan_needed)),
            ]
            ready = asyncio.create_task(edge.ready.wait())
            stop = asyncio.create_task(self.stop.wait())
            waiting = {ready, stop, *tasks}
            while True:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if ready in done:
                    self.ready.set()
                if stop in done:
                    break
                for task in done & set(tasks):
                    task.result()  # only what is fatal (a refused login) gets here
            ready.cancel()
        finally:
            log.info("shutting down")
            self.log_own_time()
            if web is not None:
                await web.stop()
            if scheduler is not None:
                scheduler.shutdown()
            for task in tasks:
                if task.get_name() != "outbox":
                    task.cancel()
            if bot is not None:
                await self._drain(bot)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await edge.close()
            await store.close()
            log.info("stopped")

    def log_own_time(self) -> None:
        """Log the bot's own time per command (at shutdown, and on SIGUSR1)."""
        log.info("own time per command, sync response to ✅ sent: %s",
                 self.metrics.own_time_line())

    def _supervised(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        from chatbot.matrix import LoginFailed
        from chatbot.supervise import supervise

        return asyncio.create_task(
            supervise(name, run, metrics=self.metrics, clock=self.clock, fatal=(LoginFailed,)),
            name=name)

    async def _connect(self, edge: MatrixEdge) -> dict[str, RoomId]:
        await edge.login()
        if self.redaction is not None:
            self.redaction.add(edge.client.access_token)  # the saved login's, too
        return await edge.resolve_rooms()

    async def _unless_stopped(self, work: Coroutine[Any, Any, T]) -> T | None:
        """The result of `work`, or None if `stop` is set first (the work is cancelled)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        return task.result()

    async def _replan(
        self, bot: MeetingBot, scheduler: JobScheduler, needed: asyncio.Event
    ) -> None:
        while True:
            await needed.wait()
            needed.clear()
            try:
                scheduler.replace_all(await bot.plan())
            except Exception:
                self.metrics.error("plan")
                log.exception("planning the schedule failed; keeping the previous plan")
                # Planning again at once would fail the same way; the next change, or
                # this retry after a pause, plans afresh.
                await asyncio.sleep(PLAN_RETRY_SECONDS)
                needed.set()

    async def _drain(self, bot: MeetingBot) -> None:
        """Give queued replies a moment to go out before the process ends."""
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_DRAIN_SECONDS
        while not await bot.outbox_empty() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
