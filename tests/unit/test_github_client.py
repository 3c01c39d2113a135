"""The bot's GitHub client against the contract server: one issue per sitting whatever
crashes in between, cheap polling, the note in as few comments as GitHub allows, and
every failure sorted into "try again later" or "someone must fix this"."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chatbot.publish.github import (
    COMMENT_LIMIT,
    GitHubClient,
    GitHubPermanentError,
    GitHubTransientError,
    IssueRef,
    Token,
    meeting_marker,
    split_note,
)
from tests.support.clock import ManualClock
from tests.support.github_contract import GitHubContract
from tests.support.ports import free_port

REPO = "jupyterhub/team-compass"
TITLE = "Team meeting: 2026-03-05"
MARKER = meeting_marker("hubs-team", date(2026, 3, 5))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 2, 16, 0, tzinfo=UTC))


@pytest.fixture
async def github(clock: ManualClock) -> AsyncIterator[GitHubContract]:
    async with GitHubContract(clock=clock) as server:
        server.add_repo(REPO)
        yield server


def client_for(github: GitHubContract, clock: ManualClock,
               token: str | None = None) -> GitHubClient:
    return GitHubClient(Token(token or github.token, "test"), api_url=github.url, clock=clock)


@pytest.fixture
async def client(github: GitHubContract, clock: ManualClock) -> AsyncIterator[GitHubClient]:
    async with client_for(github, clock) as opened:
        yield opened


# -- the meeting's issue ------------------------------------------------------------------


def test_the_marker_is_a_hidden_html_comment_naming_meeting_and_date() -> None:
    assert MARKER == "<!-- chatbot:meeting:hubs-team:2026-03-05 -->"


async def test_the_issue_is_created_once_across_a_crash_and_never_matched_by_title(
        github: GitHubContract, clock: ManualClock) -> None:
    older = github.add_issue(REPO, TITLE, "last year's sitting, same title")
    async with client_for(github, clock) as first:
        opened = await first.open_meeting_issue(REPO, TITLE, "## Agenda\n", MARKER)
    github.add_issue(REPO, TITLE, "someone's copy, same title")
    # A new client, as after a restart: it must find the issue, not open another.
    async with client_for(github, clock) as after_restart:
        found = await after_restart.open_meeting_issue(REPO, TITLE, "## Agenda\n", MARKER)
    assert found.number == opened.number != older.number
    assert len(github.calls_to("POST", "/issues$")) == 1
    assert found.html_url == f"https://ghe.example.test/{REPO}/issues/{opened.number}"
    assert found.body == f"## Agenda\n\n{MARKER}\n"
    assert found.author == GitHubContract.LOGIN


async def test_a_closed_issue_with_the_marker_still_counts_and_a_pull_request_never(
        client: GitHubClient, github: GitHubContract) -> None:
    github.add_issue(REPO, "PR quoting it", f"see {MARKER}", pull_request=True)
    closed = github.add_issue(REPO, TITLE, f"agenda\n{MARKER}", user=GitHubContract.LOGIN,
                              state="closed")
    found = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    assert found.number == closed.number
    assert not github.calls_to("POST", "/issues$")


async def test_someone_elses_issue_quoting_the_marker_is_not_adopted(
        client: GitHubClient, github: GitHubContract) -> None:
    planted = github.add_issue(REPO, TITLE, f"not the bot's\n{MARKER}", user="mallory")
    issue = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    assert issue.number != planted.number
    assert issue.author == GitHubContract.LOGIN
    assert github.calls_to("GET", "/issues$")[0].query["creator"] == GitHubContract.LOGIN


async def test_an_app_token_without_a_user_still_finds_its_issue(
        client: GitHubClient, github: GitHubContract) -> None:
    # A GitHub App installation token gets 403 from GET /user.
    github.fail("GET", "^/user$", 403)
    planted = github.add_issue(REPO, TITLE, f"agenda\n{MARKER}", user="meeting-app[bot]")
    found = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    assert found.number == planted.number
    assert "creator" not in github.calls_to("GET", "/issues$")[0].query
    assert (await client.check_access(REPO)).login is None


async def test_the_search_pages_through_and_stops_at_created_after(
        client: GitHubClient, github: GitHubContract, clock: ManualClock) -> None:
    for n in range(150):
        github.add_issue(REPO, f"old {n}", user=GitHubContract.LOGIN)
    clock.now += timedelta(days=1)
    issue = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    assert len(github.calls_to("GET", "/issues$")) == 2  # 150 issues, 100 a page
    github.calls.clear()
    clock.now += timedelta(days=1)
    again = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER,
                                            created_after=clock.now - timedelta(days=1))
    assert again.number == issue.number
    listed = github.calls_to("GET", "/issues$")
    assert len(listed) == 1
    assert listed[0].query["per_page"] == "100"
    assert listed[0].query["since"] == "2026-03-03T16:00:00Z"


async def test_the_body_is_written_only_when_it_changed_and_keeps_the_marker(
        client: GitHubClient, github: GitHubContract) -> None:
    issue = await client.open_meeting_issue(REPO, TITLE, "## Agenda\n", MARKER)
    same = await client.update_issue_body(issue, "## Agenda\n")
    assert same is issue
    assert not github.calls_to("PATCH", "/issues/")
    updated = await client.update_issue_body(issue, "## Agenda\n- Budget\n")
    assert updated.body == f"## Agenda\n- Budget\n\n{MARKER}\n"
    assert updated.marker == MARKER
    again = await client.update_issue_body(updated, "## Agenda\n- Budget\n")
    assert again is updated
    assert len(github.calls_to("PATCH", "/issues/")) == 1
    assert github.repos[REPO.lower()].issues[issue.number].body == updated.body


async def test_closing_marks_the_issue_completed_once(client: GitHubClient,
                                                      github: GitHubContract) -> None:
    issue = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    closed = await client.close_issue(issue)
    assert closed.state == "closed"
    assert github.calls_to("PATCH", "/issues/")[0].body == {"state": "closed",
                                                            "state_reason": "completed"}
    await client.close_issue(closed)
    assert len(github.calls_to("PATCH", "/issues/")) == 1


# -- polling ------------------------------------------------------------------------------


async def test_comments_are_polled_with_etags_and_an_unchanged_poll_is_free(
        client: GitHubClient, github: GitHubContract, clock: ManualClock) -> None:
    issue = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    start = clock.now
    github.add_comment(REPO, issue.number, "!agenda Budget for 2026", user="carol")
    first = await client.comments_since(issue, start)
    assert first.changed
    assert [(c.author, c.body) for c in first.items] == [("carol", "!agenda Budget for 2026")]
    assert first.items[0].html_url.startswith(f"https://ghe.example.test/{REPO}/issues/")
    remaining = github.remaining()

    second = await client.comments_since(issue, start, etag=first.etag)
    assert (second.changed, second.items, second.etag) == (False, (), first.etag)
    assert github.calls[-1].status == 304
    assert github.calls[-1].if_none_match == first.etag
    assert github.remaining() == remaining

    clock.now += timedelta(minutes=1)
    github.add_comment(REPO, issue.number, "!agenda Hiring", user="dave")
    third = await client.comments_since(IssueRef(REPO, issue.number), start,
                                        etag=second.etag)
    assert third.changed
    assert [c.author for c in third.items] == ["carol", "dave"]
    later = await client.comments_since(issue, clock.now)
    assert [c.body for c in later.items] == ["!agenda Hiring"]
    assert github.calls[-1].query["since"] == "2026-03-02T16:01:00Z"


async def test_labelled_issues_and_pull_requests_are_polled_with_etags(
        client: GitHubClient, github: GitHubContract) -> None:
    github.add_issue(REPO, "Discuss the roadmap", labels=("meeting-agenda",), user="erin")
    github.add_issue(REPO, "Release 5.0", labels=("meeting-agenda",), pull_request=True)
    github.add_issue(REPO, "Unlabelled")
    github.add_issue(REPO, "Done", labels=("meeting-agenda",), state="closed")
    polled = await client.labelled_issues(REPO, "meeting-agenda")
    assert [(i.title, i.author, i.is_pull_request) for i in polled.items] == [
        ("Release 5.0", "octocat", True), ("Discuss the roadmap", "erin", False)]
    assert polled.items[0].html_url.endswith("/pull/2")
    again = await client.labelled_issues(REPO, "meeting-agenda", etag=polled.etag)
    assert not again.changed
    assert github.calls[-1].status == 304


async def test_an_answer_over_several_pages_yields_no_etag(
        client: GitHubClient, github: GitHubContract) -> None:
    issue = github.add_issue(REPO, TITLE)
    for n in range(101):
        github.add_comment(REPO, issue.number, f"comment {n}")
    polled = await client.comments_since(IssueRef(REPO, issue.number))
    assert len(polled.items) == 101
    assert polled.etag is None


# -- the note -----------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "parts"), [(10, 1), (COMMENT_LIMIT, 1),
                                               (COMMENT_LIMIT + 1, 2), (3 * COMMENT_LIMIT, 3)])
def test_a_note_splits_only_past_the_limit_and_joins_back_exactly(length: int,
                                                                  parts: int) -> None:
    text = "x" * length
    split = split_note(text)
    assert len(split) == parts
    assert "".join(split) == text
    assert all(len(part) <= COMMENT_LIMIT for part in split)


def test_a_split_falls_at_a_line_end() -> None:
    text = "x" * (COMMENT_LIMIT - 5) + "\n" + "y" * 10
    assert split_note(text) == ["x" * (COMMENT_LIMIT - 5) + "\n", "y" * 10]


async def test_the_note_is_one_comment_up_to_65536_characters(
        client: GitHubClient, github: GitHubContract) -> None:
    issue = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    note = "# Team meeting\n" + "x" * (COMMENT_LIMIT - 15)
    posted = await client.post_note(issue, note)
    assert len(posted) == 1
    assert [c.body for c in github.repos[REPO.lower()].issues[issue.number].comments] == [note]


async def test_a_long_note_is_split_and_a_retry_posts_only_what_is_missing(
        client: GitHubClient, github: GitHubContract) -> None:
    issue = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    note = "".join(f"- item {n}\n" for n in range(15000))
    parts = split_note(note)
    assert len(parts) == 3
    github.add_comment(REPO, issue.number, "!agenda late item", user="carol")
    # The first part goes out, then GitHub fails the second.
    github.fail("POST", "/comments$", 502, skip=1)
    with pytest.raises(GitHubTransientError):
        await client.post_note(issue, note)
    stored = github.repos[REPO.lower()].issues[issue.number].comments
    assert [c.body for c in stored] == ["!agenda late item", parts[0]]
    posted = await client.post_note(issue, note)
    assert [c.body for c in posted] == parts
    assert len(github.calls_to("POST", "/comments$")) == 2 + 2
    # Once everything went out, another retry posts nothing.
    again = await client.post_note(issue, note)
    assert [c.id for c in again] == [c.id for c in posted]
    assert len(stored) == 1 + len(parts)


async def test_equal_parts_are_each_posted(client: GitHubClient,
                                           github: GitHubContract) -> None:
    issue = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    note = "x" * (2 * COMMENT_LIMIT)
    github.fail("POST", "/comments$", 502, skip=1)
    with pytest.raises(GitHubTransientError):
        await client.post_note(issue, note)
    posted = await client.post_note(issue, note)
    assert len({c.id for c in posted}) == 2
    assert len(github.repos[REPO.lower()].issues[issue.number].comments) == 2


async def test_a_crash_between_parts_leaves_the_posted_part_alone(
        client: GitHubClient, github: GitHubContract) -> None:
    issue = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    note = "- item\n" * (COMMENT_LIMIT // 7 + 10)
    first_part = split_note(note)[0]
    github.add_comment(REPO, issue.number, first_part, user=GitHubContract.LOGIN)
    posted = await client.post_note(issue, note)
    assert len(posted) == 2
    assert len(github.calls_to("POST", "/comments$")) == 1


# -- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "options", "fix"), [
    (401, {}, "the token is refused"),
    (403, {}, "the token may not do this in jupyterhub/team-compass"),
    (404, {}, "no repository jupyterhub/team-compass or no access to it"),
    (422, {}, "GitHub rejected the request as invalid"),
])
async def test_a_refusal_is_permanent_and_says_what_to_fix(
        client: GitHubClient, github: GitHubContract, status: int, options: dict[str, Any],
        fix: str) -> None:
    github.fail("*", "/issues", status, **options)
    with pytest.raises(GitHubPermanentError) as raised:
        await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    assert fix in str(raised.value)
    assert raised.value.status == status
    assert github.token not in str(raised.value)


async def test_an_unknown_repository_is_permanent(client: GitHubClient) -> None:
    with pytest.raises(GitHubPermanentError, match="no repository nobody/nothing"):
        await client.open_meeting_issue("nobody/nothing", TITLE, "agenda", MARKER)


async def test_a_wrong_token_is_permanent_and_never_shown(github: GitHubContract,
                                                          clock: ManualClock) -> None:
    async with client_for(github, clock, token="ghp_revoked0000") as wrong:
        with pytest.raises(GitHubPermanentError, match="the token is refused") as raised:
            await wrong.labelled_issues(REPO, "meeting-agenda")
    assert "ghp_revoked0000" not in str(raised.value)
    assert "ghp_revoked0000" not in repr(wrong)


async def test_a_read_only_token_may_list_but_not_open(github: GitHubContract,
                                                       clock: ManualClock) -> None:
    github.add_account("ghp_reader", "reader", can_write=False)
    async with client_for(github, clock, token="ghp_reader") as reader:
        with pytest.raises(GitHubPermanentError, match="may not do this"):
            await reader.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
        access = await reader.check_access(REPO)
    assert (access.login, access.can_write_issues) == ("reader", False)


@pytest.mark.parametrize(("status", "options", "wait"), [
    (429, {"retry_after": 30}, timedelta(seconds=30)),
    (403, {"retry_after": 120, "secondary": True}, timedelta(seconds=120)),
    (403, {"secondary": True}, timedelta(minutes=1)),
    (429, {}, timedelta(minutes=1)),
    (502, {}, None),
    (503, {"retry_after": 5}, timedelta(seconds=5)),
])
async def test_rate_limits_and_server_errors_are_transient_with_the_earliest_retry(
        client: GitHubClient, github: GitHubContract, clock: ManualClock, status: int,
        options: dict[str, Any], wait: timedelta | None) -> None:
    issue = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
    github.fail("GET", "/comments$", status, **options)
    with pytest.raises(GitHubTransientError) as raised:
        await client.comments_since(issue)
    assert raised.value.status == status
    assert raised.value.retry_at == (None if wait is None else clock.now + wait)
    assert (await client.comments_since(issue)).changed


async def test_a_spent_primary_rate_limit_waits_for_the_reset(
        client: GitHubClient, github: GitHubContract) -> None:
    await client.check_access(REPO)
    account = github.accounts[github.token]
    account.remaining = 0
    with pytest.raises(GitHubTransientError, match="rate limit") as raised:
        await client.labelled_issues(REPO, "meeting-agenda")
    assert raised.value.retry_at == datetime.fromtimestamp(account.reset, UTC)


async def test_a_spent_limit_holds_back_further_calls_until_the_reset(
        client: GitHubClient, github: GitHubContract, clock: ManualClock) -> None:
    await client.check_access(REPO)
    account = github.accounts[github.token]
    assert client.rate_limit is not None
    assert client.rate_limit.remaining == account.remaining
    account.remaining = 0
    with pytest.raises(GitHubTransientError):
        await client.labelled_issues(REPO, "meeting-agenda")
    calls = len(github.calls)
    with pytest.raises(GitHubTransientError, match="spent") as raised:
        await client.labelled_issues(REPO, "meeting-agenda")
    assert len(github.calls) == calls  # not even asked
    assert raised.value.retry_at == client.rate_limit.reset
    clock.now = client.rate_limit.reset + timedelta(seconds=1)
    assert (await client.labelled_issues(REPO, "meeting-agenda")).changed


async def test_an_unreachable_github_is_transient(client: GitHubClient,
                                                  github: GitHubContract) -> None:
    github.fail("*", "/issues", 0, times=2)
    with pytest.raises(GitHubTransientError, match="GitHub unreachable") as raised:
        await client.labelled_issues(REPO, "meeting-agenda")
    assert raised.value.retry_at is None


async def test_nothing_listens_is_transient(clock: ManualClock) -> None:
    async with GitHubClient(Token("t", "test"), api_url=f"http://127.0.0.1:{free_port()}",
                            clock=clock) as nowhere:
        with pytest.raises(GitHubTransientError):
            await nowhere.check_access(REPO)


async def test_a_malformed_repository_name_is_permanent(client: GitHubClient) -> None:
    with pytest.raises(GitHubPermanentError, match="owner/name"):
        await client.labelled_issues("team-compass", "meeting-agenda")


# -- the token ----------------------------------------------------------------------------


def test_the_token_comes_from_the_environment_or_a_file_and_never_shows(tmp_path: Path) -> None:
    token = Token.from_env("GITHUB_TOKEN", {"GITHUB_TOKEN": "ghp_secret\n"})
    assert token.value == "ghp_secret"
    assert "ghp_secret" not in repr(token) and "ghp_secret" not in str(token)
    assert repr(token) == "Token(from environment variable GITHUB_TOKEN)"
    path = tmp_path / "token"
    path.write_text("ghp_from_file\n")
    assert Token.from_file(path).value == "ghp_from_file"
    with pytest.raises(GitHubPermanentError, match="GITHUB_TOKEN is not set"):
        Token.from_env("GITHUB_TOKEN", {})
    with pytest.raises(GitHubPermanentError, match="cannot read"):
        Token.from_file(tmp_path / "missing")


async def test_check_access_reports_login_repository_and_write_access(
        client: GitHubClient) -> None:
    access = await client.check_access(REPO)
    assert access.login == GitHubContract.LOGIN
    assert access.repo_html_url == f"https://ghe.example.test/{REPO}"
    assert access.has_issues and access.can_write_issues


async def test_a_link_to_another_host_never_receives_the_token(
        client: GitHubClient, github: GitHubContract) -> None:
    issue = github.add_issue(REPO, TITLE)
    for n in range(101):
        github.add_comment(REPO, issue.number, f"comment {n}")
    real_url, github.url = github.url, "http://127.0.0.2:9"  # Link headers now point away
    try:
        with pytest.raises(GitHubPermanentError, match="another host"):
            await client.comments_since(IssueRef(REPO, issue.number))
    finally:
        github.url = real_url


async def test_the_token_never_reaches_the_log(github: GitHubContract, clock: ManualClock,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with client_for(github, clock) as client:
        issue = await client.open_meeting_issue(REPO, TITLE, "agenda", MARKER)
        github.fail("*", "/issues", 401)
        with pytest.raises(GitHubPermanentError):
            await client.update_issue_body(issue, "changed")
    assert caplog.records
    assert github.token not in caplog.text


# -- pull requests ------------------------------------------------------------------------


async def test_a_pull_request_is_opened_once_per_head_branch(
        client: GitHubClient, github: GitHubContract) -> None:
    first = await client.open_pull_request(REPO, head="meeting/x", base="main",
                                           title="Notes", body="Closes #1")
    again = await client.open_pull_request(REPO, head="meeting/x", base="main",
                                           title="Notes", body="Closes #1")
    assert again == first and (first.head, first.base, first.merged) == (
        "meeting/x", "main", False)
    assert len(github.calls_to("POST", r"/pulls$")) == 1
    assert github.calls_to("GET", r"/pulls$")[0].query == {
        "head": "jupyterhub:meeting/x", "state": "all", "per_page": "100"}


async def test_a_pull_request_opened_meanwhile_elsewhere_is_the_one(
        client: GitHubClient, github: GitHubContract, monkeypatch: pytest.MonkeyPatch) -> None:
    """`chatbot publish` beside the bot: the listing showed none, then GitHub says one
    exists (422): that one is found and taken."""
    other = await client.open_pull_request(REPO, head="meeting/x", base="main",
                                           title="Notes", body="")
    real = client.find_pull_request
    stale = [None]  # the first listing, made before the other one was opened

    async def listing(repo: str, head: str) -> Any:
        return stale.pop() if stale else await real(repo, head)

    monkeypatch.setattr(client, "find_pull_request", listing)
    found = await client.open_pull_request(REPO, head="meeting/x", base="main",
                                           title="Notes", body="")
    assert found == other
    assert [call.status for call in github.calls_to("POST", r"/pulls$")] == [201, 422]


async def test_a_merged_pull_request_reads_as_merged(
        client: GitHubClient, github: GitHubContract) -> None:
    opened = await client.open_pull_request(REPO, head="meeting/x", base="main",
                                            title="Notes", body="")
    github.merge_pull(REPO, opened.number)
    found = await client.find_pull_request(REPO, "meeting/x")
    assert found is not None and found.merged and found.state == "closed"
