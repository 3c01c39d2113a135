"""The GitHub client against the real GitHub, when a token and a scratch repository are given.

    CHATBOT_TEST_GITHUB_TOKEN=ghp_...  CHATBOT_TEST_GITHUB_REPO=you/scratch \\
        python -m pytest tests/test_github_live.py -q

The token needs Issues: read and write on that repository. Each run opens one issue
(closed at the end) and posts one comment.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import pytest

from chatbot.publish.github import (
    GitHubClient,
    GitHubPermanentError,
    Token,
    meeting_marker,
)

TOKEN_ENV = "CHATBOT_TEST_GITHUB_TOKEN"
REPO_ENV = "CHATBOT_TEST_GITHUB_REPO"

pytestmark = pytest.mark.skipif(
    not (os.environ.get(TOKEN_ENV) and os.environ.get(REPO_ENV)),
    reason=f"live GitHub test: set {TOKEN_ENV} and {REPO_ENV} (owner/name) to run it")


@pytest.fixture
async def github() -> AsyncIterator[GitHubClient]:
    api_url = os.environ.get("CHATBOT_TEST_GITHUB_API_URL", "https://api.github.com")
    async with GitHubClient(Token.from_env(TOKEN_ENV), api_url=api_url) as client:
        yield client


async def test_a_meeting_issue_round_trip_on_real_github(github: GitHubClient) -> None:
    repo = os.environ[REPO_ENV]
    access = await github.check_access(repo)
    assert access.has_issues and access.can_write_issues, access
    started = datetime.now(UTC) - timedelta(minutes=1)
    marker = meeting_marker(f"live-{secrets.token_hex(3)}", date.today())
    title = "chatbot live test: meeting issue"
    issue = await github.open_meeting_issue(repo, title, "## Agenda\n", marker,
                                            created_after=started)
    try:
        assert issue.html_url.startswith("https://")
        again = await github.open_meeting_issue(repo, title, "## Agenda\n", marker,
                                                created_after=started)
        assert again.number == issue.number
        updated = await github.update_issue_body(issue, "## Agenda\n- Budget\n")
        assert updated.marker == marker
        first = await github.comments_since(issue)
        second = await github.comments_since(issue, etag=first.etag)
        assert not second.changed, "GitHub answered an unchanged list without a 304"
        posted = await github.post_note(issue, "# Minutes\n\nLive test note.\n")
        assert len(posted) == 1
        third = await github.comments_since(issue, etag=second.etag)
        assert third.changed and third.items[-1].body.startswith("# Minutes")
    finally:
        closed = await github.close_issue(issue)
    assert closed.state == "closed"


async def test_a_missing_repository_is_a_permanent_error(github: GitHubClient) -> None:
    with pytest.raises(GitHubPermanentError, match="no repository"):
        await github.labelled_issues(f"{os.environ[REPO_ENV]}-missing-{secrets.token_hex(3)}",
                                     "meeting-agenda")


async def test_labelled_issues_and_pull_requests_are_read_as_documented(
        github: GitHubClient) -> None:
    """Read-only: the label poll answers 304 when unchanged, and a head branch with no
    pull request finds none (the shapes `agenda_label` and `pull_request` rely on)."""
    repo = os.environ[REPO_ENV]
    first = await github.labelled_issues(repo, "meeting-agenda")
    assert first.changed and all(issue.state == "open" for issue in first.items)
    if first.etag is not None:
        second = await github.labelled_issues(repo, "meeting-agenda", etag=first.etag)
        assert not second.changed, "GitHub answered an unchanged list without a 304"
    assert await github.find_pull_request(
        repo, f"meeting/live-{secrets.token_hex(3)}/none") is None
