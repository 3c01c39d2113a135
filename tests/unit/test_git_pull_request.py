"""`publish.git.pull_request: true`: the note on a branch of its own in a real git remote
(a bare repository on disk), and a pull request on the GitHub contract server whose body
closes the sitting's issue; the bot posts the note on the issue but leaves closing it to
the merge. Neither the branch's commit nor the pull request is made twice, whatever
crashes in between."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chatbot.bot import IncomingMessage, MeetingBot
from chatbot.config import ConfigError, parse_config
from chatbot.meetings import JobKind, Rooms
from chatbot.metrics import Metrics
from chatbot.model import EventId, RoomId, UserId
from chatbot.publish import GIT_ARCHIVE, PublishFailed, Sitting
from chatbot.publish.git import GitArchive
from chatbot.publish.issue import GitHubIssues
from chatbot.store import Store
from tests.support.clock import ManualClock
from tests.support.github_contract import GitHubContract
from tests.support.transports import RecordingTransport

from .test_git_archive import bare_remote, commits, committed, git

ROOM = RoomId("!room:example.org")
CHAIR = UserId("@chair:example.org")
REPO = "jupyterhub/team-compass"
START = datetime(2026, 6, 18, 9, 0, tzinfo=UTC)
BRANCH = "meeting/team/2026-06-18"
PATH = "docs/team/2026.md"


def config_data(api_url: str, remote: str, **git_settings: Any) -> dict[str, Any]:
    return {
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "jobs": {"retry_cap": "10s", "park_after": "1h"},
        "meetings": [{"id": "team", "title": "Team", "room": "#team:example.org",
                      "timezone": "UTC", "start": "2026-06-18 09:00", "rrule": "FREQ=WEEKLY",
                      "chairs": [CHAIR],
                      "publish": {
                          "github": {"repo": REPO, "token_env": "GH_TOKEN",
                                     "api_url": api_url},
                          "git": {"remote": remote, "path": "docs/{id}/{year}.md",
                                  "pull_request": True, **git_settings}}}],
    }


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START - timedelta(days=2))


@pytest.fixture
async def github(clock: ManualClock) -> AsyncIterator[GitHubContract]:
    async with GitHubContract(clock=clock) as server:
        server.add_repo(REPO)
        yield server


def targets(tmp_path: Path, github: GitHubContract, remote: Path, clock: ManualClock,
            work: str = "archive") -> tuple[GitArchive, GitHubIssues]:
    config = parse_config(config_data(github.url, remote.as_uri()))
    issues = GitHubIssues(config, clock=clock, environ={"GH_TOKEN": github.token})
    return GitArchive(config, tmp_path / work, clock=clock, github=issues), issues


def sitting(text: str = "# Team\n\n- Ada\n") -> Sitting:
    return Sitting("team", "Team", date(2026, 6, 18), "2026-06-18", text)


def remote_branches(remote: Path) -> list[str]:
    return git("--git-dir", str(remote), "for-each-ref", "--format=%(refname:short)",
               "refs/heads").split()


async def test_a_closed_meeting_is_proposed_by_a_pull_request_that_closes_its_issue(
        tmp_path: Path, github: GitHubContract, clock: ManualClock) -> None:
    remote = bare_remote(tmp_path)
    archive, issues = targets(tmp_path, github, remote, clock)
    transport = RecordingTransport({CHAIR: 100})
    store = await Store.open(tmp_path / "bot.db")
    config = issues.config
    bot = MeetingBot(Rooms(config, {"team": ROOM}), store, tmp_path / "notes", transport,
                     clock=clock, metrics=Metrics(clock), targets=[archive, issues])
    try:
        for job in await bot.plan():
            if job.kind is JobKind.ISSUE:
                await bot.run_job(job)
        for _ in range(5):
            await bot.deliver_due()
        [issue] = github.repos[REPO].issues.values()
        assert "closed by the pull request that archives it" in (issue.body or "")
        clock.now = START
        for job in await bot.plan():
            if job.kind is JobKind.START:
                await bot.run_job(job)
        for tag, text in (("h", "!here"), ("u", "!update proposed by PR"), ("e", "!endmeeting")):
            await bot.handle(IncomingMessage(ROOM, EventId(f"${tag}"), CHAIR, "Chair", text))
        for _ in range(5):
            await bot.deliver_due()

        assert sorted(remote_branches(remote)) == [BRANCH]  # nothing pushed to main
        assert "proposed by PR" in committed(remote, PATH, BRANCH)
        [pull] = github.pulls(REPO)
        assert (pull.head, pull.base, pull.title) == (BRANCH, "main", "Team: notes of 2026-06-18")
        assert f"Closes #{issue.number}" in (pull.body or "")
        # The note is on the issue, which stays open for the merge to close.
        [comment] = issue.comments
        assert "proposed by PR" in comment.body
        assert issue.state == "open"
        assert transport.chairs_told() == []
        assert not await store.read.has_pending_outbox()

        github.merge_pull(REPO, pull.number)
        assert issue.state == "closed"
    finally:
        await store.close()


async def test_a_crash_before_the_pull_request_opens_it_once_on_the_pushed_branch(
        tmp_path: Path, github: GitHubContract, clock: ManualClock) -> None:
    remote = bare_remote(tmp_path)
    archive, _ = targets(tmp_path, github, remote, clock)
    github.fail("POST", r"/pulls$", 502)
    with pytest.raises(PublishFailed) as failed:
        await archive.publish(sitting())
    assert not failed.value.permanent
    assert remote_branches(remote) == [BRANCH]  # pushed before the pull request failed
    # Again, from a fresh working copy (as after a crash that lost it, or `chatbot publish`).
    again, _ = targets(tmp_path, github, remote, clock, work="elsewhere")
    url = await again.publish(sitting())
    [pull] = github.pulls(REPO)
    assert url.endswith(f"/pull/{pull.number}")
    assert len(commits(remote, BRANCH)) == 1  # the note committed once
    # A third time: the pull request is found by its head branch, not opened again.
    assert await again.publish(sitting()) == url
    assert len(github.calls_to("POST", r"/pulls$")) == 2  # the 502, then the one made
    assert [call.query["head"] for call in github.calls_to("GET", r"/pulls$")][-1] == \
        f"jupyterhub:{BRANCH}"


async def test_a_note_already_merged_into_the_branch_opens_nothing_more(
        tmp_path: Path, github: GitHubContract, clock: ManualClock) -> None:
    remote = bare_remote(tmp_path)
    archive, _ = targets(tmp_path, github, remote, clock)
    await archive.publish(sitting())
    [pull] = github.pulls(REPO)
    # A person merges it (fast-forward), and the branch is deleted.
    git("--git-dir", str(remote), "update-ref", "refs/heads/main", f"refs/heads/{BRANCH}")
    git("--git-dir", str(remote), "update-ref", "-d", f"refs/heads/{BRANCH}")
    github.merge_pull(REPO, pull.number)
    posts = len(github.calls)
    commit = await archive.publish(sitting())
    assert commit == git("--git-dir", str(remote), "rev-parse", "main").strip()
    assert len(github.calls) == posts  # not a call to GitHub
    assert remote_branches(remote) == ["main"] and len(github.pulls(REPO)) == 1


async def test_a_pull_request_github_refuses_fails_for_good_with_what_github_said(
        tmp_path: Path, github: GitHubContract, clock: ManualClock) -> None:
    remote = bare_remote(tmp_path)
    archive, _ = targets(tmp_path, github, remote, clock)
    github.repos[REPO].branches = {"develop", BRANCH}  # no `main` to merge into
    with pytest.raises(PublishFailed) as failed:
        await archive.publish(sitting())
    assert failed.value.permanent
    assert "422" in str(failed.value) and "base invalid" in str(failed.value)


def test_pull_request_without_the_github_target_is_one_line_naming_the_key() -> None:
    data = config_data("https://api.github.com", "file:///srv/notes.git")
    del data["meetings"][0]["publish"]["github"]
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    message = str(raised.value)
    assert message.startswith("meetings[0].publish.git: `pull_request: true` needs the "
                              "GitHub target (publish.github)"), message
    assert "\n" not in message


async def test_the_archive_label_says_where_pull_requests_go(
        tmp_path: Path, github: GitHubContract, clock: ManualClock) -> None:
    archive, _ = targets(tmp_path, github, tmp_path / "r.git", clock)
    assert archive.label("team").endswith("pull requests into main)")
    assert archive.kind == GIT_ARCHIVE
