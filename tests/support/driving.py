"""Driving the bot's core in unit tests the way the running bot does, on a manual clock:
commands handed over, scheduled jobs run when due, the outbox emptied."""

from __future__ import annotations

from chatbot.bot import IncomingMessage, MeetingBot
from chatbot.meetings import Job, JobKind
from chatbot.model import EventId, RoomId, UserId
from tests.support.clock import ManualClock
from tests.support.transports import RecordingTransport

# Enough passes for a job to queue the jobs it causes and those to run; a bounded loop,
# so a job that keeps requeueing itself fails a test instead of hanging it.
DRAIN_PASSES = 10


async def drain(bot: MeetingBot) -> None:
    """Run the outbox until nothing in it is due."""
    for _ in range(DRAIN_PASSES):
        if not (await bot.deliver_due())[0]:
            return


class BotDriver:
    """A bot in one room, a chair in it, a recording transport and a manual clock."""

    def __init__(self, bot: MeetingBot, transport: RecordingTransport, clock: ManualClock,
                 *, room: RoomId, chair: UserId) -> None:
        self.bot, self.transport, self.clock = bot, transport, clock
        self.room, self.chair = room, chair

    async def say(self, body: str, tag: str, sender: UserId | None = None,
                  name: str | None = None) -> None:
        """`sender` (default: the chair) says `body` in the room, as event `$<tag>`."""
        sender = sender or self.chair
        name = name or ("Chair" if sender == self.chair else sender[1:].split(":")[0].title())
        await self.bot.handle(IncomingMessage(self.room, EventId(f"${tag}"), sender, name, body))

    async def run(self, kind: JobKind) -> bool:
        """Run the planned job of `kind` if it is due; whether it was."""
        for job in await self.bot.plan():
            if job.kind is kind and job.due_at <= self.clock.now:
                await self.bot.run_job(job)
                return True
        return False

    async def planned(self, kind: JobKind) -> list[Job]:
        return [job for job in await self.bot.plan() if job.kind is kind]

    async def drain(self) -> None:
        await drain(self.bot)
