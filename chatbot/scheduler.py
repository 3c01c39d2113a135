"""The scheduler edge: APScheduler runs the jobs the core plans, nothing more.

Jobs live in memory only. They are derived from the configuration and the database
with deterministic ids, and rebuilt at start and after every change, so a restart
or a crash loses no scheduled work.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from chatbot.meetings import Job

log = logging.getLogger(__name__)


class JobScheduler:
    """Keeps APScheduler's jobs equal to the latest plan."""

    def __init__(self, run: Callable[[Job], Awaitable[None]]) -> None:
        self._run = run
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={
                # A job that fell due while the bot was down still runs: the core
                # decides whether it is late-but-useful or to be skipped.
                "misfire_grace_time": None,
                "coalesce": True,
                "max_instances": 1,
            },
        )
        self._planned: dict[str, Job] = {}

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def replace_all(self, jobs: Iterable[Job]) -> None:
        """Make the scheduled jobs exactly `jobs`, leaving unchanged ones alone."""
        wanted = {job.id: job for job in jobs}
        for job_id in set(self._planned) - set(wanted):
            if self._scheduler.get_job(job_id) is not None:
                self._scheduler.remove_job(job_id)
            del self._planned[job_id]
        for job_id, job in wanted.items():
            if self._planned.get(job_id) == job and self._scheduler.get_job(job_id) is not None:
                continue
            self._scheduler.add_job(self._run, DateTrigger(run_date=job.due_at), args=[job],
                                    id=job_id, replace_existing=True)
            self._planned[job_id] = job
            log.debug("scheduled %s at %s", job_id, job.due_at)

    def next_runs(self) -> list[tuple[str, str]]:
        return [(job.id, str(job.next_run_time)) for job in self._scheduler.get_jobs()]
