"""What one whole meeting costs on GitHub, and what each injected error does.

A meeting with all of the GitHub parts on (its issue, `agenda_label`, and the git
archive's pull request into a real bare repository) runs through the bot's own
scheduler plan on a manual clock, from the issue's opening `issue_ahead` before the
sitting to the close, against the contract server, which counts every call. Run with
`-s` to see the table by endpoint.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chatbot.bot import IncomingMessage, MeetingBot
from chatbot.config import parse_config
from chatbot.meetings import JobKind, Rooms
from chatbot.metrics import Metrics
from chatbot.model import EventId, RoomId, UserId
from chatbot.publish import GITHUB_ISSUE
from chatbot.publish.git import GitArchive
from chatbot.publish.issue import GitHubIssues
from chatbot.store import Store
from tests.support.clock import ManualClock
from tests.support.driving import drain
from tests.support.github_contract import GitHubContract
from tests.support.transports import RecordingTransport

from .test_git_archive import bare_remote

ROOM = RoomId("!room:example.org")
CHAIR = UserId("@chair:example.org")
REPO = "jupyterhub/team-compass"
START = datetime(2026, 6, 18, 9, 0, tzinfo=UTC)
AHEAD = timedelta(days=7)


def config_data(api_url: str, remote: str) -> dict[str, Any]:
    return {
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "jobs": {"retry_cap": "1m", "park_after": "6h"},
        "meetings": [{
            # One sitting, no series: the next sitting's issue (opened `issue_ahead`
            # before it, so during this one) would blur the count.
            "id": "team", "title": "Team", "room": "#team:example.org", "timezone": "UTC",
            "start": "2026-06-18 09:00", "duration": "60m",
            "chairs": [CHAIR], "reminders": ["1d", "1h"],
            "publish": {
                "github": {"repo": REPO, "token_env": "GH_TOKEN", "api_url": api_url,
                           "agenda_label": "meeting-agenda"},
                "git": {"remote": remote, "path": "docs/{id}/{year}.md",
                        "pull_request": True}}}],
    }


class Meeting:
    """The bot on a manual clock, moved from one planned job to the next."""

    def __init__(self, bot: MeetingBot, clock: ManualClock) -> None:
        self.bot, self.clock = bot, clock

    async def say(self, body: str, tag: str) -> None:
        await self.bot.handle(IncomingMessage(ROOM, EventId(f"${tag}"), CHAIR, "Chair", body))
        await self.drain()

    async def drain(self) -> None:
        await drain(self.bot)

    async def run_until(self, until: datetime) -> None:
        """Run every job (scheduled, or waiting in the outbox) that falls due up to
        `until`, in time order, as the running bot would."""
        for _ in range(5000):
            jobs = [job for job in await self.bot.plan() if job.kind is not JobKind.UPKEEP]
            waiting = [item.next_attempt_at for item in await self.bot.store.read.pending_outbox()
                       if item.next_attempt_at is not None]
            due = min([job.due_at for job in jobs] + waiting, default=None)
            if due is None or due > until:
                self.clock.now = until
                return
            self.clock.now = max(self.clock.now, due)
            for job in jobs:
                if job.due_at <= self.clock.now:
                    await self.bot.run_job(job)
            await self.drain()
        raise AssertionError(f"jobs kept falling due at {self.clock.now}: {jobs} "
                             f"{await self.bot.store.read.pending_outbox()}")


@pytest.fixture
async def meeting(tmp_path: Path) -> AsyncIterator[tuple[Meeting, GitHubContract]]:
    clock = ManualClock(START - AHEAD - timedelta(minutes=1))
    async with GitHubContract(clock=clock) as github:
        github.add_repo(REPO)
        config = parse_config(config_data(github.url, bare_remote(tmp_path).as_uri()))
        issues = GitHubIssues(config, clock=clock, environ={"GH_TOKEN": github.token})
        archive = GitArchive(config, tmp_path / "archive", clock=clock, github=issues)
        store = await Store.open(tmp_path / "bot.db")
        bot = MeetingBot(Rooms(config, {"team": ROOM}), store, tmp_path / "notes",
                         RecordingTransport({CHAIR: 100}), clock=clock,
                         metrics=Metrics(clock), targets=[archive, issues])
        try:
            yield Meeting(bot, clock), github
        finally:
            await store.close()


ENDPOINTS = (
    ("GET /user", "GET", r"^/user$"),
    ("GET issues (find ours)", "GET", r"/issues$", lambda query: "creator" in query),
    ("GET issues?labels= (agenda_label)", "GET", r"/issues$", lambda query: "labels" in query),
    ("POST issues (open)", "POST", r"/issues$"),
    ("GET issues/N", "GET", r"/issues/\d+$"),
    ("PATCH issues/N (body)", "PATCH", r"/issues/\d+$", lambda body: "body" in (body or {})),
    ("PATCH issues/N (close)", "PATCH", r"/issues/\d+$", lambda body: "state" in (body or {})),
    ("GET issues/N/comments", "GET", r"/comments$"),
    ("POST issues/N/comments (note)", "POST", r"/comments$"),
    ("GET pulls?head= (find PR)", "GET", r"/pulls$"),
    ("POST pulls (open PR)", "POST", r"/pulls$"),
)


def by_endpoint(github: GitHubContract) -> dict[str, Counter[str]]:
    table: dict[str, Counter[str]] = {name: Counter() for name, *_ in ENDPOINTS}
    for call in github.calls:
        for name, method, path, *test in ENDPOINTS:
            if call.method != method or not re.search(path, call.path):
                continue
            if test and not test[0](call.body if method == "PATCH" else call.query):
                continue
            table[name]["304" if call.status == 304 else "charged"] += 1
            break
        else:
            raise AssertionError(f"an unexpected call: {call}")
    return table


async def test_one_whole_meeting_from_issue_to_pull_request(
        meeting: tuple[Meeting, GitHubContract]) -> None:
    run, github = meeting
    await run.say("!agenda (10 min) Release plan", "a1")
    await run.run_until(START - timedelta(days=6))
    issue = next(iter(github.repos[REPO].issues.values()))
    github.add_comment(REPO, issue.number, "!agenda (15 min) Docs sprint", user="octocat")
    await run.run_until(START - timedelta(days=3))
    github.add_issue(REPO, "Flaky CI", labels=("meeting-agenda",), user="hubot")
    await run.run_until(START - timedelta(days=1))
    await run.say("!agenda Budget", "a2")
    await run.run_until(START + timedelta(minutes=5))  # the start job opens the sitting
    await run.say("!here", "h1")
    await run.say("!update wrote the docs", "u1")
    await run.run_until(START + timedelta(minutes=45))
    await run.say("!endmeeting", "e1")
    await run.run_until(START + timedelta(minutes=50))

    table = by_endpoint(github)
    total = sum(sum(counts.values()) for counts in table.values())
    charged = sum(counts["charged"] for counts in table.values())
    print(f"\nGitHub calls for one meeting ({AHEAD.days} days ahead to the close): "
          f"{total}, {charged} charged to the rate limit")
    for name, counts in table.items():
        print(f"  {name:38} {counts['charged']:4} charged {counts['304']:4} free (304)")

    [pull] = github.pulls(REPO)
    assert f"Closes #{issue.number}" in (pull.body or "") and issue.state == "open"
    assert [item.text for item in (await run.bot.store.read.record(
        await run.bot.store.read.get_meeting(1))).agenda][:3] == [  # type: ignore[arg-type]
        "Release plan", "Docs sprint",
        f"Flaky CI {github.html_root}/{REPO}/issues/{issue.number + 1}"]
    assert table["POST issues (open)"]["charged"] == 1
    # Looked for once, before it is opened; the note and the pull request use the
    # number kept with the sitting, and a body update is one PATCH, no read first.
    assert table["GET /user"]["charged"] == table["GET issues (find ours)"]["charged"] == 1
    assert table["GET issues/N"]["charged"] == 0
    assert "<!-- chatbot:meeting:team:2026-06-18 -->" in (issue.body or "")
    assert table["POST issues/N/comments (note)"]["charged"] == 1
    assert table["POST pulls (open PR)"]["charged"] == 1
    assert table["PATCH issues/N (close)"]["charged"] == 0  # the merge closes it
    assert 1 <= table["PATCH issues/N (body)"]["charged"] <= 4  # one per agenda change
    # Polls: about 4 an hour for a week, then every minute; nearly all a free 304.
    polls = table["GET issues/N/comments"]
    assert polls["charged"] <= 6 and polls["304"] >= 600
    labels = table["GET issues?labels= (agenda_label)"]
    assert labels["charged"] <= 5 and labels["304"] >= 600
    assert charged <= 15


# --- injected errors ---------------------------------------------------------------------


@pytest.mark.parametrize(("status", "options", "expected"), [
    (401, {}, "refused"),
    (403, {}, "refused"),
    (404, {}, "refused"),
    (422, {}, "refused"),
    (429, {"retry_after": 300}, "retried after 300 s"),
    (403, {"retry_after": 300, "secondary": True}, "retried after 300 s"),
    (500, {}, "retried after backoff"),
    (502, {}, "retried after backoff"),
    (503, {}, "retried after backoff"),
])
async def test_each_injected_error_when_opening_the_issue(
        meeting: tuple[Meeting, GitHubContract], status: int, options: dict[str, Any],
        expected: str) -> None:
    run, github = meeting
    github.fail("POST", r"/issues$", status, **options)
    await run.run_until(START - AHEAD)  # the issue's job is due then, and fails
    failed_at = run.clock.now
    assert [call.status for call in github.calls_to("POST", r"/issues$")] == [status]
    told = run.bot.transport.chairs_told()  # type: ignore[attr-defined]
    pending = [item for item in await run.bot.store.read.pending_outbox()
               if item.kind == GITHUB_ISSUE]
    if expected == "refused":
        assert not pending and len(told) == 1, (pending, told)
        assert str(status) in told[0]
        behaviour = f"refused at once, chairs told once: {told[0][:160]}..."
    else:
        [item] = pending
        assert item.next_attempt_at is not None and not told
        wait = (item.next_attempt_at - failed_at).total_seconds()
        if "300" in expected:
            assert wait == 300
        else:
            assert 0 < wait <= 1
        await run.run_until(item.next_attempt_at)
        assert len(github.calls_to("POST", r"/issues$")) == 2
        behaviour = f"retried quietly {wait:.1f} s later, then opened"
    print(f"\n{status} {options}: {behaviour}")


async def test_a_spent_primary_rate_limit_waits_for_its_reset(
        meeting: tuple[Meeting, GitHubContract]) -> None:
    """403 with `X-RateLimit-Remaining: 0`: no call until `X-RateLimit-Reset`."""
    run, github = meeting
    run.clock.now = START - AHEAD
    account = github.accounts[github.token]
    reset = START - AHEAD + timedelta(minutes=20)
    account.remaining, account.reset = 0, int(reset.timestamp())
    await run.run_until(START - AHEAD)
    assert [call.status for call in github.calls] == [403]
    [item] = await run.bot.store.read.pending_outbox()
    assert item.next_attempt_at == reset
    await run.run_until(reset - timedelta(seconds=1))
    assert len(github.calls) == 1  # neither the job nor a poll called meanwhile
    await run.run_until(reset)
    assert len(github.repos[REPO].issues) == 1
    print(f"\n403 rate limit spent: retried quietly at X-RateLimit-Reset, "
          f"{(reset - (START - AHEAD)).total_seconds():.0f} s later, then opened")


FAULTY = {
    "poll comments": ("GET", r"/comments$"),
    "poll labels": ("GET", r"/issues$"),
    "update body": ("PATCH", r"/issues/\d+$"),
    "post note": ("POST", r"/comments$"),
    "open pull request": ("POST", r"/pulls$"),
}


@pytest.mark.parametrize("status", [401, 403, 404, 422, 429, 502])
@pytest.mark.parametrize("where", list(FAULTY))
async def test_an_error_anywhere_leaves_the_rest_of_the_meeting_unaffected(
        meeting: tuple[Meeting, GitHubContract], where: str, status: int) -> None:
    run, github = meeting
    run.clock.now = START - timedelta(hours=2)  # the issue opens at once
    await run.run_until(run.clock.now)
    method, path = FAULTY[where]
    options = {"retry_after": 120} if status == 429 else {}
    fault = github.fail(method, path, status, **options)
    await run.say("!agenda Budget", "a1")
    await run.run_until(START + timedelta(minutes=5))
    await run.say("!update fault drill", "u1")
    await run.say("!endmeeting", "e1")
    await run.run_until(START + timedelta(hours=1))

    transport = run.bot.transport
    told = transport.chairs_told()  # type: ignore[attr-defined]
    issue = next(iter(github.repos[REPO].issues.values()))
    pulls = github.pulls(REPO)
    assert fault.hits == 1
    assert any(text.startswith("# Team") for text in transport.texts())  # type: ignore[attr-defined]
    assert not await run.bot.store.read.has_pending_outbox()
    transient = status in (429, 502)
    if transient or where.startswith(("poll", "update")):
        # Retried (a poll: at the next poll; a body: at the agenda's next change or its
        # retry), nobody told, everything done in the end.
        assert told == []
        assert len(issue.comments) == 1 and len(pulls) == 1
        assert "1. Budget, by Chair" in (issue.body or "") or (
            where == "update body" and not transient)
        outcome = ("retried after Retry-After, all done, nobody told" if status == 429
                   else "logged, read again at the next poll, nobody told"
                   if where.startswith("poll")
                   else "retried with backoff, all done, nobody told" if transient
                   else "logged and dropped, nobody told; the agenda's next change writes "
                        "the body again")
    else:
        [notice] = told
        assert str(status) in notice and "chatbot publish" in notice
        done = {"post note": len(pulls) == 1, "open pull request": len(issue.comments) == 1}
        assert done[where]  # the other target is unaffected
        outcome = "refused at once, the chairs told once; the other target done"
    print(f"\n{where:18} {status}: {outcome}")
