"""A whole meeting on a real Synapse with its GitHub issue on the contract server: opened
when the bot starts (the sitting is within `issue_ahead`), its link in the start
announcement and the note, the note posted on it and the issue closed."""

from __future__ import annotations

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
