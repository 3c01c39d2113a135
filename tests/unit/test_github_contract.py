"""The GitHub stand-in holds to GitHub's documented contract and refuses the rest.

The shape checks against githubkit's models (GitHub's OpenAPI description) come with
the test extra (githubkit 0.16.1 with hishel<2; it is not a dependency of the bot).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.support.clock import ManualClock
from tests.support.github_contract import COMMENT_LIMIT, RATE_LIMIT, GitHubContract

REPO = "jupyterhub/team-compass"


class Wire:
    """Raw requests to the stand-in, the way any HTTP client would send them."""

    def __init__(self, github: GitHubContract, session: aiohttp.ClientSession) -> None:
        self.github = github
        self.session = session

    async def send(self, method: str, path: str, *, token: str | None = "default",
                   scheme: str = "Bearer", json: Any = None, data: bytes | None = None,
                   headers: dict[str, str] | None = None,
                   params: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        sent = {"Accept": "application/vnd.github+json", **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"{scheme} {self.github.token if token == 'default' else token}"
        async with self.session.request(method, self.github.url + path, json=json, data=data,
                                        headers=sent, params=params) as response:
            body = await response.json(content_type=None) if response.status != 304 else None
            return response.status, body, response.headers


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 2, 16, 0, tzinfo=UTC))


@pytest.fixture
async def github(clock: ManualClock) -> AsyncIterator[GitHubContract]:
    async with GitHubContract(clock=clock) as server:
        server.add_repo(REPO)
        yield server


@pytest.fixture
async def wire(github: GitHubContract) -> AsyncIterator[Wire]:
    async with aiohttp.ClientSession() as session:
        yield Wire(github, session)


def assert_error_shape(body: Any, message: str) -> None:
    assert body["message"] == message
    assert body["documentation_url"].startswith("https://docs.github.com/")


@pytest.mark.parametrize(("token", "scheme", "message"), [
    (None, "Bearer", "Requires authentication"),
    ("ghp_wrong", "Bearer", "Bad credentials"),
    ("default", "Basic", "Bad credentials"),
])
async def test_a_missing_or_wrong_token_is_401_in_githubs_shape(
        wire: Wire, token: str | None, scheme: str, message: str) -> None:
    status, body, _ = await wire.send("GET", f"/repos/{REPO}", token=token, scheme=scheme)
    assert status == 401
    assert_error_shape(body, message)


@pytest.mark.parametrize("scheme", ["Bearer", "token"])
async def test_both_documented_schemes_are_accepted(wire: Wire, scheme: str) -> None:
    status, body, _ = await wire.send("GET", "/user", scheme=scheme)
    assert status == 200
    assert body["login"] == GitHubContract.LOGIN


async def test_unknown_or_invisible_repository_is_404(wire: Wire, github: GitHubContract) -> None:
    status, body, _ = await wire.send("GET", "/repos/nobody/nothing")
    assert status == 404
    assert_error_shape(body, "Not Found")
    github.add_repo("secret/repo")
    github.add_account("ghp_other", "someone", repos=(REPO,))
    status, _, _ = await wire.send("GET", "/repos/secret/repo", token="ghp_other")
    assert status == 404


async def test_a_repository_answers_with_its_html_url_and_the_tokens_permissions(
        wire: Wire) -> None:
    status, body, _ = await wire.send("GET", f"/repos/{REPO}")
    assert status == 200
    assert body["full_name"] == REPO
    assert body["html_url"] == f"https://ghe.example.test/{REPO}"
    assert body["permissions"]["push"] is True


async def test_a_created_issue_has_the_documented_shape(wire: Wire, github: GitHubContract) -> None:
    status, body, headers = await wire.send(
        "POST", f"/repos/{REPO}/issues", json={"title": "Team meeting", "body": "agenda"})
    assert status == 201
    assert {"id", "node_id", "number", "html_url", "url", "state", "title", "body", "user",
            "labels", "comments", "created_at", "updated_at", "closed_at"} <= set(body)
    assert body["user"]["login"] == GitHubContract.LOGIN
    assert body["html_url"] == f"https://ghe.example.test/{REPO}/issues/{body['number']}"
    assert body["created_at"].endswith("Z")
    assert "pull_request" not in body
    assert headers["Location"].endswith(f"/issues/{body['number']}")


@pytest.mark.parametrize(("payload", "reason"), [
    ({"body": "no title"}, '"title" wasn\'t supplied.'),
    ({"title": "x", "colour": "red"}, '"colour" is not a permitted key.'),
    ({"title": 1.5}, "For 'properties/title', 1.5 is not a string or an integer."),
    ({"title": True}, "For 'properties/title', true is not a string or an integer."),
    ({"title": "x", "body": 5}, "For 'properties/body', 5 is not a string."),
    ({"title": "x", "labels": "agenda"}, "For 'properties/labels', \"agenda\" is not an array."),
    (["title"], "Invalid input: object is expected."),
])
async def test_an_issue_body_off_the_schema_is_422(
        wire: Wire, github: GitHubContract, payload: Any, reason: str) -> None:
    status, body, _ = await wire.send("POST", f"/repos/{REPO}/issues", json=payload)
    assert status == 422
    assert_error_shape(body, f"Invalid request.\n\n{reason}")
    assert not github.repos[REPO.lower()].issues


async def test_json_that_does_not_parse_is_400(wire: Wire) -> None:
    status, body, _ = await wire.send("POST", f"/repos/{REPO}/issues", data=b"{title",
                                      headers={"Content-Type": "application/json"})
    assert status == 400
    assert_error_shape(body, "Problems parsing JSON")


@pytest.mark.parametrize(("version", "status"), [
    (None, 200), ("2022-11-28", 200), ("2026-03-10", 200), ("2099-01-01", 400)])
async def test_an_unsupported_api_version_is_400(wire: Wire, version: str | None,
                                                 status: int) -> None:
    headers = {} if version is None else {"X-GitHub-Api-Version": version}
    got, _, _ = await wire.send("GET", "/user", headers=headers)
    assert got == status


async def test_a_request_without_user_agent_is_refused(wire: Wire) -> None:
    status, _, _ = await wire.send("GET", "/user", headers={"User-Agent": ""})
    assert status == 403


async def test_a_read_only_token_cannot_write(wire: Wire, github: GitHubContract) -> None:
    github.add_account("ghp_reader", "reader", can_write=False)
    status, body, _ = await wire.send("POST", f"/repos/{REPO}/issues", token="ghp_reader",
                                      json={"title": "x"})
    assert status == 403
    assert_error_shape(body, "Resource not accessible by personal access token")


async def test_update_checks_state_and_closes(wire: Wire, github: GitHubContract) -> None:
    number = github.add_issue(REPO, "Team meeting").number
    path = f"/repos/{REPO}/issues/{number}"
    status, body, _ = await wire.send("PATCH", path, json={"state": "shut"})
    assert status == 422
    assert body["errors"][0] == {"value": "shut", "resource": "Issue", "field": "state",
                                 "code": "invalid"}
    status, body, _ = await wire.send("PATCH", path, json={"state": "closed",
                                                           "state_reason": "completed"})
    assert status == 200
    assert (body["state"], body["state_reason"]) == ("closed", "completed")
    assert body["closed_at"] is not None
    status, _, _ = await wire.send("PATCH", f"/repos/{REPO}/issues/999", json={"body": "x"})
    assert status == 404


async def test_a_comment_may_hold_65536_characters_and_no_more(
        wire: Wire, github: GitHubContract) -> None:
    number = github.add_issue(REPO, "Team meeting").number
    path = f"/repos/{REPO}/issues/{number}/comments"
    status, _, _ = await wire.send("POST", path, json={"body": "x" * COMMENT_LIMIT})
    assert status == 201
    status, body, _ = await wire.send("POST", path, json={"body": "x" * (COMMENT_LIMIT + 1)})
    assert status == 422
    assert body["message"] == "Validation Failed"
    assert body["errors"] == [{"resource": "IssueComment", "code": "custom", "field": "body",
                               "message": "body is too long (maximum is 65536 characters)"}]


async def test_an_unchanged_answer_is_304_and_costs_no_rate_limit(
        wire: Wire, github: GitHubContract) -> None:
    number = github.add_issue(REPO, "Team meeting").number
    path = f"/repos/{REPO}/issues/{number}/comments"
    status, _, headers = await wire.send("GET", path)
    assert status == 200
    etag = headers["ETag"]
    spent = int(headers["X-RateLimit-Used"])
    status, _, headers = await wire.send("GET", path, headers={"If-None-Match": etag})
    assert status == 304
    assert headers["ETag"] == etag
    assert int(headers["X-RateLimit-Used"]) == spent
    github.add_comment(REPO, number, "!agenda Budget")
    status, body, headers = await wire.send("GET", path, headers={"If-None-Match": etag})
    assert status == 200
    assert [comment["body"] for comment in body] == ["!agenda Budget"]
    assert int(headers["X-RateLimit-Used"]) == spent + 1


async def test_every_answer_carries_the_rate_limit_headers(wire: Wire) -> None:
    _, _, headers = await wire.send("GET", "/user")
    assert headers["X-RateLimit-Limit"] == str(RATE_LIMIT)
    assert headers["X-RateLimit-Remaining"] == str(RATE_LIMIT - 1)
    assert headers["X-RateLimit-Used"] == "1"
    assert headers["X-RateLimit-Resource"] == "core"
    assert int(headers["X-RateLimit-Reset"]) > datetime(2026, 3, 2, tzinfo=UTC).timestamp()


async def test_a_spent_rate_limit_is_403_until_the_reset(wire: Wire, github: GitHubContract,
                                                          clock: ManualClock) -> None:
    await wire.send("GET", "/user")
    github.accounts[github.token].remaining = 0
    status, body, headers = await wire.send("GET", "/user")
    assert status == 403
    assert body["message"].startswith("API rate limit exceeded")
    assert headers["X-RateLimit-Remaining"] == "0"
    clock.now += timedelta(hours=1)
    status, _, _ = await wire.send("GET", "/user")
    assert status == 200


async def test_lists_paginate_with_a_link_header(wire: Wire, github: GitHubContract) -> None:
    for n in range(5):
        github.add_issue(REPO, f"Issue {n}")
    status, body, headers = await wire.send("GET", f"/repos/{REPO}/issues",
                                            params={"per_page": "2"})
    assert status == 200
    assert [issue["title"] for issue in body] == ["Issue 4", "Issue 3"]
    assert 'rel="next"' in headers["Link"] and 'rel="last"' in headers["Link"]
    assert "page=3" in headers["Link"]
    status, body, headers = await wire.send("GET", f"/repos/{REPO}/issues",
                                            params={"per_page": "2", "page": "3"})
    assert [issue["title"] for issue in body] == ["Issue 0"]
    assert 'rel="next"' not in headers["Link"] and 'rel="prev"' in headers["Link"]


async def test_issue_lists_filter_by_state_and_labels_and_mark_pull_requests(
        wire: Wire, github: GitHubContract) -> None:
    github.add_issue(REPO, "Old", state="closed", labels=("meeting-agenda",))
    github.add_issue(REPO, "Topic", labels=("meeting-agenda", "help"))
    github.add_issue(REPO, "A PR", labels=("meeting-agenda",), pull_request=True)
    github.add_issue(REPO, "Unrelated")
    _, body, _ = await wire.send("GET", f"/repos/{REPO}/issues",
                                 params={"labels": "meeting-agenda"})
    assert [(issue["title"], "pull_request" in issue) for issue in body] == [
        ("A PR", True), ("Topic", False)]
    assert body[0]["html_url"].endswith("/pull/3")
    _, body, _ = await wire.send("GET", f"/repos/{REPO}/issues", params={"state": "all"})
    assert len(body) == 4
    status, _, _ = await wire.send("GET", f"/repos/{REPO}/issues", params={"state": "any"})
    assert status == 422


async def test_comments_since_a_time(wire: Wire, github: GitHubContract,
                                     clock: ManualClock) -> None:
    number = github.add_issue(REPO, "Team meeting").number
    github.add_comment(REPO, number, "early")
    clock.now += timedelta(minutes=5)
    github.add_comment(REPO, number, "late", user="someone")
    _, body, _ = await wire.send("GET", f"/repos/{REPO}/issues/{number}/comments",
                                 params={"since": "2026-03-02T16:01:00Z"})
    assert [(comment["body"], comment["user"]["login"]) for comment in body] == [
        ("late", "someone")]
    status, _, _ = await wire.send("GET", f"/repos/{REPO}/issues/{number}/comments",
                                   params={"since": "yesterday"})
    assert status == 422


@pytest.mark.parametrize(("status", "options", "message"), [
    (502, {}, "Server Error"),
    (401, {}, "Bad credentials"),
    (403, {}, "Resource not accessible by personal access token"),
    (429, {"retry_after": 30}, "You have exceeded a secondary rate limit"),
    (403, {"retry_after": 60, "secondary": True}, "You have exceeded a secondary rate limit"),
])
async def test_injected_faults_answer_once_in_githubs_shape(
        wire: Wire, github: GitHubContract, status: int, options: dict[str, Any],
        message: str) -> None:
    fault = github.fail("GET", r"/repos/[^/]+/[^/]+$", status, **options)
    got, body, headers = await wire.send("GET", f"/repos/{REPO}")
    assert got == status
    assert body["message"].startswith(message)
    if "retry_after" in options:
        assert headers["Retry-After"] == str(options["retry_after"])
    assert fault.hits == 1
    got, _, _ = await wire.send("GET", f"/repos/{REPO}")
    assert got == 200


async def test_a_dropped_connection_can_be_injected(wire: Wire, github: GitHubContract) -> None:
    # aiohttp's client tries an idempotent request once more on a dropped connection.
    github.fail("*", "/user", 0, times=2)
    with pytest.raises(aiohttp.ClientError):
        await wire.send("GET", "/user")
    status, _, _ = await wire.send("GET", "/user")
    assert status == 200


async def test_every_call_is_recorded(wire: Wire, github: GitHubContract) -> None:
    await wire.send("POST", f"/repos/{REPO}/issues", json={"title": "x"})
    await wire.send("GET", f"/repos/{REPO}/issues", params={"state": "all"})
    assert [(call.method, call.status, call.login) for call in github.calls] == [
        ("POST", 201, GitHubContract.LOGIN), ("GET", 200, GitHubContract.LOGIN)]
    assert github.calls[0].body == {"title": "x"}
    assert github.calls_to("GET", "/issues$")[0].query == {"state": "all"}


@pytest.mark.parametrize(("payload", "message"), [
    ({"head": "meeting/x", "base": "main"}, 'Invalid request.\n\n"title" wasn\'t supplied.'),
    ({"title": "t", "base": "main"}, 'Invalid request.\n\n"head" wasn\'t supplied.'),
    ({"title": "t", "head": "meeting/x"}, 'Invalid request.\n\n"base" wasn\'t supplied.'),
    ({"title": "t", "head": "meeting/x", "base": "main", "draft": "yes"},
     "Invalid request.\n\nFor 'properties/draft', \"yes\" is not a boolean."),
    ({"title": "t", "head": "meeting/x", "base": "main", "labels": ["x"]},
     'Invalid request.\n\n"labels" is not a permitted key.'),
])
async def test_a_pull_request_off_the_schema_is_422(
        wire: Wire, github: GitHubContract, payload: dict[str, Any], message: str) -> None:
    status, body, _ = await wire.send("POST", f"/repos/{REPO}/pulls", json=payload)
    assert status == 422
    assert_error_shape(body, message)
    assert github.pulls(REPO) == []


async def test_pull_requests_open_once_per_head_branch_and_list_by_head(
        wire: Wire, github: GitHubContract) -> None:
    github.add_issue(REPO, "Meeting issue")
    payload = {"title": "Notes", "head": "meeting/x", "base": "main", "body": "Closes #1",
               "draft": False}
    status, body, headers = await wire.send("POST", f"/repos/{REPO}/pulls", json=payload)
    assert status == 201 and body["number"] == 2  # numbers shared with issues
    assert (body["head"]["ref"], body["base"]["ref"], body["merged"]) == (
        "meeting/x", "main", False)
    assert body["html_url"].endswith(f"/{REPO}/pull/2") and "Location" in headers
    status, body, _ = await wire.send("POST", f"/repos/{REPO}/pulls", json=payload)
    assert status == 422
    assert body["errors"][0]["message"] == "A pull request already exists for jupyterhub:meeting/x."
    _, listed, _ = await wire.send("GET", f"/repos/{REPO}/pulls",
                                   params={"head": "jupyterhub:meeting/x", "state": "all"})
    assert [pull["number"] for pull in listed] == [2]
    _, listed, _ = await wire.send("GET", f"/repos/{REPO}/pulls",
                                   params={"head": "jupyterhub:meeting/y", "state": "all"})
    assert listed == []
    _, issues, _ = await wire.send("GET", f"/repos/{REPO}/issues")
    assert [("pull_request" in issue) for issue in issues] == [True, False]
    github.merge_pull(REPO, 2)
    assert github.repos[REPO].issues[1].state == "closed"
    _, listed, _ = await wire.send("GET", f"/repos/{REPO}/pulls",
                                   params={"head": "jupyterhub:meeting/x"})
    assert listed == []  # `state` is open unless asked


async def test_a_pull_request_from_or_into_a_missing_branch_is_422(
        wire: Wire, github: GitHubContract) -> None:
    # The stand-in checks branches only when a test lists them (it cannot see the remote).
    github.repos[REPO].branches = {"main"}
    status, body, _ = await wire.send("POST", f"/repos/{REPO}/pulls", json={
        "title": "t", "head": "meeting/x", "base": "main"})
    assert status == 422 and body["errors"] == [
        {"resource": "PullRequest", "field": "head", "code": "invalid"}]
    status, body, _ = await wire.send("POST", f"/repos/{REPO}/pulls", json={
        "title": "t", "head": "main", "base": "main"})
    assert status == 422 and body["errors"][0]["message"] == "No commits between main and main"


# githubkit ships GitHub's OpenAPI description as pydantic models. It is not a dependency
# of the bot, so this check runs where it is importable (see the module's docstring).
@pytest.fixture
def models() -> Any:
    return pytest.importorskip(
        "githubkit_schemas.latest.models",
        reason="githubkit (0.16.1 with hishel<2) not installed: answers not checked "
               "against GitHub's own models")


async def test_answers_validate_against_githubs_own_models(
        wire: Wire, github: GitHubContract, models: Any) -> None:
    issue = github.add_issue(REPO, "Topic", "text", labels=("meeting-agenda",))
    github.add_issue(REPO, "A PR", pull_request=True)
    github.add_comment(REPO, issue.number, "!agenda Budget")
    _, body, _ = await wire.send("GET", f"/repos/{REPO}")
    models.FullRepository.model_validate(body)
    _, body, _ = await wire.send("GET", "/user")
    models.PrivateUser.model_validate(body)
    _, body, _ = await wire.send("GET", f"/repos/{REPO}/issues")
    for item in body:
        models.Issue.model_validate(item)
    _, body, _ = await wire.send("POST", f"/repos/{REPO}/issues/{issue.number}/comments",
                                 json={"body": "note"})
    models.IssueComment.model_validate(body)
    _, body, _ = await wire.send("GET", "/repos/nobody/nothing")
    models.BasicError.model_validate(body)
    _, body, _ = await wire.send("POST", f"/repos/{REPO}/issues/{issue.number}/comments",
                                 json={"body": "x" * (COMMENT_LIMIT + 1)})
    models.ValidationError.model_validate(body)
    _, body, _ = await wire.send("POST", f"/repos/{REPO}/pulls", json={
        "title": "Notes", "head": "meeting/x", "base": "main", "body": "Closes #1"})
    models.PullRequest.model_validate(body)
    _, body, _ = await wire.send("GET", f"/repos/{REPO}/pulls", params={"state": "all"})
    for item in body:
        models.PullRequestSimple.model_validate(item)


@pytest.mark.parametrize(("model", "payload"), [
    ("ReposOwnerRepoIssuesPostBody", {"title": "Team meeting", "body": "agenda",
                                      "labels": ["meeting"]}),
    ("ReposOwnerRepoIssuesIssueNumberPatchBody", {"state": "closed",
                                                  "state_reason": "completed"}),
    ("ReposOwnerRepoIssuesIssueNumberCommentsPostBody", {"body": "note"}),
    ("ReposOwnerRepoPullsPostBody", {"title": "Notes", "head": "meeting/x", "base": "main",
                                     "body": "Closes #1"}),
])
def test_what_the_stand_in_accepts_githubs_models_accept(models: Any, model: str,
                                                        payload: dict[str, Any]) -> None:
    getattr(models, model).model_validate(payload)
