"""A whole meeting on a real Synapse with its GitHub issue on the contract server: opened
when the bot starts (the sitting is within `issue_ahead`), its link in the start
announcement and the note, the note posted on it and the issue closed. With
`agenda_label` and the git archive's `pull_request`, a labelled issue is on the agenda,
the note lands on a branch of a real git remote with a pull request that closes the
issue once merged: no manual step from the issue to the merged archive."""

from __future__ import annotations

import subprocess

import pytest

from chatbot.demo.person import body_of, is_reaction
from tests.support.github_contract import GitHubContract

from .conftest import World
from .support.waiting import eventually

REPO = "jupyterhub/team-compass"


async def command(person, room_id: str, text: str) -> str:
    event_id = await person.say(room_id, text)
    await person.wait_for(lambda e: is_reaction(e, event_id))
    return event_id


async def test_a_whole_meeting_with_its_github_issue(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    async with GitHubContract() as github:
        github.add_repo(REPO)
        monkeypatch.setenv("CHATBOT_E2E_GITHUB_TOKEN", github.token)
        config = world.config(publish={"github": {
            "repo": REPO, "token_env": "CHATBOT_E2E_GITHUB_TOKEN", "api_url": github.url}})
        room, ada, chair = world.room_id, world.ada, world.chair
        await world.start_bot(config)
        issues = github.repos[REPO].issues
        await eventually(lambda: len(issues) == 1, "the issue opened at start")
        [issue] = issues.values()
        url = f"{github.html_root}/{REPO}/issues/{issue.number}"

        mark = len(ada.events)
        await command(chair, room, "!startmeeting")
        start = await ada.wait_for(lambda e: "is starting now" in body_of(e), after=mark)
        assert f"**GitHub issue:** <{url}>" in body_of(start) or url in body_of(start)
        await command(ada, room, "!here Ada Lovelace")
        await command(ada, room, "!update filed on GitHub")
        mark = len(ada.events)
        await command(chair, room, "!endmeeting")
        note = await ada.wait_for(
            lambda e: body_of(e).startswith("# Example Team Meeting"), after=mark)
        assert url in body_of(note)
        await eventually(lambda: issue.state == "closed", "the issue closed")
        [comment] = issue.comments
        assert "filed on GitHub" in comment.body
        assert len(github.calls_to("POST", r"/issues$")) == 1


def git(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *arguments], capture_output=True, text=True, check=False)


async def test_a_labelled_issue_on_the_agenda_and_the_note_merged_by_pull_request(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = world.tmp / "archive.git"
    assert git("init", "-q", "--bare", "--initial-branch=main", str(remote)).returncode == 0
    async with GitHubContract() as github:
        github.add_repo(REPO)
        topic = github.add_issue(REPO, "Flaky CI", labels=("meeting-agenda",), user="hubot")
        monkeypatch.setenv("CHATBOT_E2E_GITHUB_TOKEN", github.token)
        config = world.config(publish={
            "github": {"repo": REPO, "token_env": "CHATBOT_E2E_GITHUB_TOKEN",
                       "api_url": github.url, "agenda_label": "meeting-agenda"},
            "git": {"remote": remote.as_uri(), "mode": "file", "path": "meetings/{date}.md",
                    "pull_request": True}})
        room, ada, chair = world.room_id, world.ada, world.chair
        await world.start_bot(config)
        issues = github.repos[REPO].issues
        await eventually(lambda: len(issues) == 2, "the meeting's issue opened at start")
        issue = next(item for item in issues.values() if item.user == GitHubContract.LOGIN)
        await eventually(lambda: any(call.status == 200 and "labels" in call.query
                                     for call in github.calls_to("GET", r"/issues$")),
                         "the labelled issues listed")

        await command(chair, room, "!startmeeting")
        await command(ada, room, "!here Ada Lovelace")
        await command(ada, room, "!update merged by a person")
        mark = len(ada.events)
        await command(chair, room, "!endmeeting")
        note = await ada.wait_for(
            lambda e: body_of(e).startswith("# Example Team Meeting"), after=mark)
        assert f"Flaky CI <{github.html_root}/{REPO}/issues/{topic.number}>" in body_of(note)
        assert "hubot (GitHub)" in body_of(note)

        await eventually(lambda: len(github.pulls(REPO)) == 1, "the pull request opened")
        [pull] = github.pulls(REPO)
        # The sitting is dated by its scheduled start (two hours ahead), not the wall clock.
        branch = f"meeting/team/{config.meetings[0].start.date().isoformat()}"
        assert (pull.head, pull.base) == (branch, "main")
        assert f"Closes #{issue.number}" in (pull.body or "")
        shown = git("--git-dir", str(remote), "show", f"{branch}:meetings/{branch[-10:]}.md")
        assert "merged by a person" in shown.stdout
        assert git("--git-dir", str(remote), "rev-parse", "--verify", "-q",
                   "refs/heads/main").returncode != 0  # nothing pushed to main
        await eventually(lambda: len(issue.comments) == 1, "the note posted on the issue")
        assert issue.state == "open"  # left for the merge
        github.merge_pull(REPO, pull.number)
        assert issue.state == "closed"
