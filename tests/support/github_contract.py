"""A local GitHub REST API that plays GitHub's documented contract strictly, for the tests.

It serves only what the bot uses, and rejects what GitHub would reject:

* `X-GitHub-Api-Version`: absent or a supported version, else 400; `Accept` is free;
* auth: `Authorization: Bearer <token>` or `token <token>`; missing → 401 "Requires
  authentication", unknown → 401 "Bad credentials"; a read-only token writing → 403
  "Resource not accessible by personal access token"; a repository the token cannot
  see → 404 (GitHub hides private repositories that way); no `User-Agent` → 403;
* request bodies checked against the documented schemas of "Create an issue",
  "Update an issue", "Create an issue comment" and "Create a pull request" (the same
  fields githubkit's models carry; a pull request needs `title`, `head` and `base`):
  a missing, unknown or mistyped key → 422 "Invalid request." with the reason,
  as GitHub's schema validation answers; a comment body past 65,536 characters → 422
  "Validation Failed" with an `errors` list; JSON that does not parse → 400;
* answers in the documented shapes: `full-repository`, `private-user`, `issue` (with
  `pull_request` on pull requests), `issue-comment`, `simple-user`, ISO 8601 timestamps;
  errors as `basic-error` / `validation-error` (`{"message", "documentation_url",
  "status"[, "errors"]}`). tests/unit/test_github_contract.py checks them against
  githubkit's models where githubkit is importable;
* `per_page` (≤ 100) / `page` pagination with a `Link` header, `state`, `labels`,
  `since`, `sort`, `direction`, `creator` filters on issue lists, `since` on comments,
  `state`, `head` (`owner:branch`) and `base` on pull request lists;
* pull requests share the issues' numbers and show in issue lists (with
  `pull_request`); a second open one for the same head branch → 422 "A pull request
  already exists for owner:branch."; a head or base branch the repository does not have
  → 422 with an `errors` entry on that field. The stand-in cannot see the git remote the
  tests push to (a bare repository on disk), so unless a test lists the repository's
  `branches`, any branch name counts as existing. `merge_pull` plays a person merging:
  the issues its body closes ("Closes #N") are closed;
* a weak `ETag` on every GET and 304 on a matching `If-None-Match`; a 304 costs no rate
  limit, everything else costs one; `X-RateLimit-Limit/Remaining/Reset/Used/Resource`
  on every answer; a spent limit → 403 with `X-RateLimit-Remaining: 0`;
* faults a test injects per route: any status (5xx, 401, 403, 429, a secondary rate
  limit with `Retry-After`) or a dropped connection, for the next N matching requests.

Every request is recorded in `calls` for a test to inspect.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

DOCS = "https://docs.github.com/rest"
SECONDARY_DOCS = ("https://docs.github.com/free-pro-team@latest/rest/overview/"
                  "rate-limits-for-the-rest-api#about-secondary-rate-limits")
COMMENT_LIMIT = 65536
RATE_LIMIT = 5000
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 30
# Without the header GitHub answers as 2022-11-28; a version it does not support is a 400.
API_VERSIONS = ("2022-11-28", "2026-03-10")


@dataclass(slots=True)
class Account:
    """Whom a token stands for and what it may do."""

    login: str
    id: int
    can_write: bool = True
    # None: every repository; otherwise only these full names are visible to it.
    repos: frozenset[str] | None = None
    remaining: int = RATE_LIMIT
    reset: int = 0


@dataclass(slots=True)
class StoredIssue:
    number: int
    id: int
    title: str
    body: str | None
    user: str
    labels: list[str]
    state: str
    state_reason: str | None
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    pull_request: bool = False
    comments: list[StoredComment] = field(default_factory=list)
    # Pull requests only: the branches, and whether it was merged.
    head: str | None = None
    base: str | None = None
    merged_at: datetime | None = None


@dataclass(slots=True)
class StoredComment:
    id: int
    body: str
    user: str
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class Repo:
    owner: str
    name: str
    id: int
    has_issues: bool = True
    issues: dict[int, StoredIssue] = field(default_factory=dict)
    # The branches pull requests may name; None: any (the stand-in cannot see the remote).
    branches: set[str] | None = None
    default_branch: str = "main"

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(slots=True)
class Fault:
    """The next `times` requests matching `method` and `path` (a regex searched in the
    path) are answered with `status` (0: the connection is dropped unanswered; note that
    aiohttp's client retries an idempotent request once on a dropped connection)."""

    method: str
    path: re.Pattern[str]
    status: int
    times: int = 1
    retry_after: int | None = None
    secondary: bool = False
    # This many matching requests pass untouched before the fault strikes.
    skip: int = 0
    hits: int = 0


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    query: dict[str, str]
    status: int
    login: str | None
    body: Any = None
    if_none_match: str | None = None


ACCOUNT = web.RequestKey("account", Account)
BODY = web.RequestKey("body", object)


class _Answer(Exception):
    """An error answer, raised from deep in a handler."""

    def __init__(self, status: int, message: str, *, errors: list[Any] | None = None,
                 headers: dict[str, str] | None = None, docs: str = DOCS) -> None:
        super().__init__(message)
        self.status = status
        self.payload: dict[str, Any] = {"message": message, "documentation_url": docs,
                                        "status": str(status)}
        if errors is not None:
            self.payload["errors"] = errors
        self.headers = headers or {}


# The request bodies' schemas, from GitHub's OpenAPI description (as githubkit's
# `ReposOwnerRepoIssuesPostBody`, `...IssuesIssueNumberPatchBody`,
# `...IssuesIssueNumberCommentsPostBody` models carry them): key → accepted JSON types.
_STR, _INT, _NULL, _LIST, _BOOL = (str,), (int,), (type(None),), (list,), (bool,)
CREATE_ISSUE = {
    "title": _STR + _INT, "body": _STR, "assignee": _STR + _NULL,
    "milestone": _STR + _INT + _NULL, "labels": _LIST, "assignees": _LIST,
    "type": _STR + _NULL,
}
UPDATE_ISSUE = {
    "title": _STR + _INT + _NULL, "body": _STR + _NULL, "assignee": _STR + _NULL,
    "state": _STR, "state_reason": _STR + _NULL, "milestone": _STR + _INT + _NULL,
    "labels": _LIST, "assignees": _LIST, "type": _STR + _NULL,
}
CREATE_COMMENT = {"body": _STR}
CREATE_PULL = {
    "title": _STR, "head": _STR, "head_repo": _STR, "base": _STR, "body": _STR,
    "maintainer_can_modify": _BOOL, "draft": _BOOL, "issue": _INT,
}
# GitHub's closing keywords: "Closes #12" in a merged pull request's body closes #12.
_CLOSES = re.compile(r"\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\s+#(\d+)\b", re.IGNORECASE)
STATES = ("open", "closed")
STATE_REASONS = ("completed", "not_planned", "duplicate", "reopened", None)
_TYPE_NAMES = {str: "a string", int: "an integer", type(None): "null", list: "an array",
               bool: "a boolean"}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_since(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _Answer(422, "Validation Failed", errors=[
            {"resource": "Search", "field": "since", "code": "invalid"}]) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _check_body(schema: Mapping[str, tuple[type, ...]], body: Any,
                required: tuple[str, ...] = ()) -> dict[str, Any]:
    """GitHub's JSON-schema check of a request body: 422 "Invalid request." naming the
    first key that is missing, not permitted or of the wrong type."""
    if not isinstance(body, dict):
        raise _Answer(422, "Invalid request.\n\nInvalid input: object is expected.")
    for key in required:
        if key not in body:
            raise _Answer(422, f'Invalid request.\n\n"{key}" wasn\'t supplied.')
    for key, value in body.items():
        if key not in schema:
            raise _Answer(422, f'Invalid request.\n\n"{key}" is not a permitted key.')
        allowed = schema[key]
        # Python counts True as an int; to JSON Schema, true is no integer.
        if isinstance(value, bool) != (allowed == _BOOL) or not isinstance(value, allowed):
            names = " or ".join(_TYPE_NAMES[kind] for kind in allowed)
            raise _Answer(422, f"Invalid request.\n\nFor 'properties/{key}', "
                               f"{json.dumps(value)} is not {names}.")
        if isinstance(value, list):
            for item in value:
                if not isinstance(item, str) and not (key == "labels" and isinstance(
                        item, dict)):
                    raise _Answer(422, f"Invalid request.\n\nFor 'items', "
                                       f"{json.dumps(item)} is not a string.")
    return body


class GitHubContract:
    """`async with GitHubContract() as github:` then point a client at `github.url`
    with the token `github.token`."""

    TOKEN = "ghp_contract0test0token0000000000000000"
    LOGIN = "meeting-bot"

    def __init__(self, *, html_root: str = "https://ghe.example.test",
                 clock: Callable[[], datetime] | None = None) -> None:
        self.html_root = html_root
        self.clock = clock or (lambda: datetime.now(UTC))
        self.accounts: dict[str, Account] = {self.TOKEN: Account(self.LOGIN, 1001)}
        self.repos: dict[str, Repo] = {}
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
        self._next_id = 5000
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def token(self) -> str:
        return self.TOKEN

    # -- the test's side --------------------------------------------------------------

    def add_account(self, token: str, login: str, *, can_write: bool = True,
                    repos: tuple[str, ...] | None = None) -> Account:
        account = Account(login, self._new_id(), can_write,
                          None if repos is None else frozenset(repos))
        self.accounts[token] = account
        return account

    def add_repo(self, full_name: str, *, has_issues: bool = True) -> Repo:
        owner, name = full_name.split("/")
        repo = Repo(owner, name, self._new_id(), has_issues)
        self.repos[full_name.lower()] = repo
        return repo

    def add_issue(self, full_name: str, title: str, body: str | None = None, *,
                  user: str = "octocat", labels: tuple[str, ...] = (),
                  pull_request: bool = False, state: str = "open") -> StoredIssue:
        """An issue (or pull request) someone made, as if through GitHub's web page; a
        pull request from a branch of its own into the default branch."""
        repo = self.repos[full_name.lower()]
        made = self._create_issue(repo, title, body, user, list(labels),
                                  pull_request=pull_request, state=state)
        if pull_request:
            made.head, made.base = f"{user}/change-{made.number}", repo.default_branch
        return made

    def add_comment(self, full_name: str, number: int, body: str, *,
                    user: str = "octocat") -> StoredComment:
        issue = self.repos[full_name.lower()].issues[number]
        return self._create_comment(issue, body, user)

    def pulls(self, full_name: str) -> list[StoredIssue]:
        return [issue for issue in self.repos[full_name.lower()].issues.values()
                if issue.pull_request]

    def merge_pull(self, full_name: str, number: int) -> StoredIssue:
        """A person merges the pull request: it closes, and so do the issues its body
        closes (GitHub does that for a merge into the default branch)."""
        repo = self.repos[full_name.lower()]
        pull = repo.issues[number]
        assert pull.pull_request and pull.state == "open", "only an open pull request merges"
        now = self.clock()
        pull.state, pull.merged_at, pull.closed_at, pull.updated_at = "closed", now, now, now
        if pull.base == repo.default_branch:
            for closed in _CLOSES.findall(pull.body or ""):
                issue = repo.issues.get(int(closed))
                if issue is not None and not issue.pull_request and issue.state == "open":
                    issue.state, issue.state_reason = "closed", "completed"
                    issue.closed_at = issue.updated_at = now
        return pull

    def fail(self, method: str, path: str, status: int, *, times: int = 1,
             retry_after: int | None = None, secondary: bool = False,
             skip: int = 0) -> Fault:
        """Answer `times` requests matching `method` ("*" for any) and the path regex
        with `status`, after letting `skip` of them through; `secondary` makes a 403/429
        GitHub's secondary rate limit."""
        fault = Fault(method, re.compile(path), status, times, retry_after, secondary, skip)
        self.faults.append(fault)
        return fault

    def calls_to(self, method: str, path: str) -> list[Call]:
        pattern = re.compile(path)
        return [call for call in self.calls
                if call.method == method and pattern.search(call.path)]

    def remaining(self, token: str | None = None) -> int:
        return self.accounts[token or self.TOKEN].remaining

    async def __aenter__(self) -> GitHubContract:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/user", self._get_user)
        app.router.add_get("/rate_limit", self._get_rate_limit)
        app.router.add_get("/repos/{owner}/{repo}", self._get_repo)
        app.router.add_get("/repos/{owner}/{repo}/issues", self._list_issues)
        app.router.add_post("/repos/{owner}/{repo}/issues", self._post_issue)
        app.router.add_get("/repos/{owner}/{repo}/issues/{number}", self._get_issue)
        app.router.add_patch("/repos/{owner}/{repo}/issues/{number}", self._patch_issue)
        app.router.add_get("/repos/{owner}/{repo}/issues/{number}/comments",
                           self._list_comments)
        app.router.add_post("/repos/{owner}/{repo}/issues/{number}/comments",
                            self._post_comment)
        app.router.add_get("/repos/{owner}/{repo}/pulls", self._list_pulls)
        app.router.add_post("/repos/{owner}/{repo}/pulls", self._post_pull)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the wire ---------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body: Any = None
        account: Account | None = None
        status = 500
        try:
            if request.can_read_body:
                raw = await request.read()
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    raise _Answer(400, "Problems parsing JSON") from None
            account = self._authenticate(request)
            fault = self._fault_for(request)
            if fault is not None:
                status = fault.status
                return self._faulty(request, fault, account)
            self._spend(account)
            request[ACCOUNT] = account
            request[BODY] = body
            answer = await handler(request)
            status = self._conditional(request, answer)
            if status == 304:
                # A conditional hit is free: give back what `_spend` took.
                account.remaining += 1
                answer = web.Response(status=304, headers={"ETag": answer.headers["ETag"]})
            self._rate_headers(answer, account)
            return answer
        except _Answer as error:
            status = error.status
            answer = web.json_response(error.payload, status=error.status,
                                       headers=error.headers)
            if account is not None:
                self._rate_headers(answer, account)
            return answer
        finally:
            self.calls.append(Call(request.method, request.path, dict(request.query),
                                   status, account.login if account else None, body,
                                   request.headers.get("If-None-Match")))

    def _authenticate(self, request: web.Request) -> Account:
        version = request.headers.get("X-GitHub-Api-Version", API_VERSIONS[0])
        if version not in API_VERSIONS:
            raise _Answer(400, f"API version {version} is not supported.")
        if not request.headers.get("User-Agent"):
            raise _Answer(403, "Request forbidden by administrative rules. Please make "
                               "sure your request has a User-Agent header "
                               "(https://docs.github.com/en/rest/overview/resources-in-"
                               "the-rest-api#user-agent-required).")
        header = request.headers.get("Authorization", "")
        if not header:
            raise _Answer(401, "Requires authentication")
        scheme, _, token = header.partition(" ")
        account = self.accounts.get(token.strip())
        if scheme.lower() not in ("bearer", "token") or account is None:
            raise _Answer(401, "Bad credentials")
        return account

    def _spend(self, account: Account) -> None:
        now = int(self.clock().timestamp())
        if account.reset <= now:
            account.reset, account.remaining = now + 3600, RATE_LIMIT
        if account.remaining <= 0:
            raise _Answer(403, f"API rate limit exceeded for user ID {account.id}.",
                          docs="https://docs.github.com/rest/overview/rate-limits-for-the-"
                               "rest-api#about-primary-rate-limits",
                          headers=self._rate_header_values(account))
        account.remaining -= 1

    def _rate_header_values(self, account: Account) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(RATE_LIMIT),
                "X-RateLimit-Remaining": str(account.remaining),
                "X-RateLimit-Reset": str(account.reset),
                "X-RateLimit-Used": str(RATE_LIMIT - account.remaining),
                "X-RateLimit-Resource": "core"}

    def _rate_headers(self, answer: web.StreamResponse, account: Account) -> None:
        answer.headers.update(self._rate_header_values(account))

    def _fault_for(self, request: web.Request) -> Fault | None:
        for fault in self.faults:
            if fault.hits < fault.times and fault.method in ("*", request.method) \
                    and fault.path.search(request.path):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.hits += 1
                return fault
        return None

    def _faulty(self, request: web.Request, fault: Fault,
                account: Account) -> web.StreamResponse:
        if fault.status == 0:
            assert request.transport is not None
            request.transport.abort()
            raise ConnectionResetError("fault: connection dropped")
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        if fault.secondary or fault.status == 429:
            account.remaining = max(0, account.remaining - 1)
            message = ("You have exceeded a secondary rate limit. Please wait a few "
                       "minutes before you try again. If you reach out to GitHub Support "
                       "for help, please include the request ID 0000:0000:0000000.")
            error = _Answer(fault.status, message, headers=headers, docs=SECONDARY_DOCS)
        elif fault.status == 401:
            error = _Answer(401, "Bad credentials", headers=headers)
        elif fault.status == 403:
            error = _Answer(403, "Resource not accessible by personal access token",
                            headers=headers)
        elif fault.status == 404:
            error = _Answer(404, "Not Found", headers=headers)
        elif fault.status == 422:
            error = _Answer(422, "Validation Failed", headers=headers, errors=[
                {"resource": "Issue", "code": "custom", "field": "body",
                 "message": "injected"}])
        else:
            error = _Answer(fault.status, "Server Error", headers=headers)
        raise error

    def _conditional(self, request: web.Request, answer: web.StreamResponse) -> int:
        if request.method != "GET" or answer.status != 200:
            return answer.status
        assert isinstance(answer, web.Response) and answer.body is not None
        body = answer.body if isinstance(answer.body, bytes) else b""
        etag = 'W/"' + hashlib.sha256(body).hexdigest() + '"'
        answer.headers["ETag"] = etag
        asked = [tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")]
        # Comparison for If-None-Match is weak: W/"x" matches "x" (RFC 9110 §13.1.2).
        strip = [tag.removeprefix("W/") for tag in asked]
        if "*" in asked or etag.removeprefix("W/") in strip:
            return 304
        return 200

    # -- endpoints --------------------------------------------------------------------

    def _repo(self, request: web.Request) -> Repo:
        full_name = f"{request.match_info['owner']}/{request.match_info['repo']}"
        repo = self.repos.get(full_name.lower())
        account: Account = request[ACCOUNT]
        if repo is None or (account.repos is not None and repo.full_name not in account.repos):
            raise _Answer(404, "Not Found")
        return repo

    def _writable(self, request: web.Request) -> None:
        if not request[ACCOUNT].can_write:
            raise _Answer(403, "Resource not accessible by personal access token")

    def _issue(self, request: web.Request, repo: Repo) -> StoredIssue:
        try:
            number = int(request.match_info["number"])
        except ValueError:
            raise _Answer(404, "Not Found") from None
        issue = repo.issues.get(number)
        if issue is None:
            raise _Answer(404, "Not Found")
        return issue

    async def _get_user(self, request: web.Request) -> web.Response:
        return web.json_response(self._private_user_json(request[ACCOUNT]))

    async def _get_rate_limit(self, request: web.Request) -> web.Response:
        account: Account = request[ACCOUNT]
        core = {"limit": RATE_LIMIT, "remaining": account.remaining,
                "reset": account.reset, "used": RATE_LIMIT - account.remaining}
        return web.json_response({"resources": {"core": core}, "rate": core})

    async def _get_repo(self, request: web.Request) -> web.Response:
        return web.json_response(self._repo_json(self._repo(request), request[ACCOUNT]))

    async def _list_issues(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        query = request.query
        state = query.get("state", "open")
        if state not in ("open", "closed", "all"):
            raise _Answer(422, "Validation Failed", errors=[
                {"value": state, "resource": "Issue", "field": "state", "code": "invalid"}])
        sort = query.get("sort", "created")
        direction = query.get("direction", "desc")
        if sort not in ("created", "updated", "comments") or direction not in ("asc", "desc"):
            raise _Answer(422, "Validation Failed", errors=[
                {"resource": "Issue", "field": "sort", "code": "invalid"}])
        issues = list(repo.issues.values())
        if state != "all":
            issues = [issue for issue in issues if issue.state == state]
        if query.get("labels"):
            wanted = {label.strip().lower() for label in query["labels"].split(",")}
            issues = [issue for issue in issues
                      if wanted <= {label.lower() for label in issue.labels}]
        if query.get("creator"):
            issues = [issue for issue in issues if issue.user == query["creator"]]
        if query.get("since"):
            since = _parse_since(query["since"])
            issues = [issue for issue in issues if issue.updated_at >= since]
        keys: dict[str, Callable[[StoredIssue], Any]] = {
            "created": lambda issue: (issue.created_at, issue.number),
            "updated": lambda issue: (issue.updated_at, issue.number),
            "comments": lambda issue: (len(issue.comments), issue.number)}
        issues.sort(key=keys[sort], reverse=direction == "desc")
        return self._page(request, [self._issue_json(repo, issue) for issue in issues])

    async def _post_issue(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        self._writable(request)
        body = _check_body(CREATE_ISSUE, request[BODY], required=("title",))
        if not repo.has_issues:
            raise _Answer(410, "Issues are disabled for this repo")
        labels = [label if isinstance(label, str) else label.get("name", "")
                  for label in body.get("labels", [])]
        issue = self._create_issue(repo, str(body["title"]), body.get("body"),
                                   request[ACCOUNT].login, labels)
        return web.json_response(self._issue_json(repo, issue), status=201, headers={
            "Location": f"{self.url}/repos/{repo.full_name}/issues/{issue.number}"})

    async def _get_issue(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        return web.json_response(self._issue_json(repo, self._issue(request, repo)))

    async def _patch_issue(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        self._writable(request)
        issue = self._issue(request, repo)
        body = _check_body(UPDATE_ISSUE, request[BODY])
        if "state" in body and body["state"] not in STATES:
            raise _Answer(422, "Validation Failed", errors=[
                {"value": body["state"], "resource": "Issue", "field": "state",
                 "code": "invalid"}])
        if body.get("state_reason", None) not in STATE_REASONS:
            raise _Answer(422, "Validation Failed", errors=[
                {"value": body["state_reason"], "resource": "Issue",
                 "field": "state_reason", "code": "invalid"}])
        now = self.clock()
        if body.get("title") is not None:
            issue.title = str(body["title"])
        if "body" in body:
            issue.body = body["body"]
        if "labels" in body:
            issue.labels = [label if isinstance(label, str) else label.get("name", "")
                            for label in body["labels"]]
        if "state" in body and body["state"] != issue.state:
            issue.state = body["state"]
            issue.closed_at = now if issue.state == "closed" else None
            issue.state_reason = body.get("state_reason") or (
                "completed" if issue.state == "closed" else "reopened")
        issue.updated_at = now
        return web.json_response(self._issue_json(repo, issue))

    async def _list_comments(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        issue = self._issue(request, repo)
        comments = issue.comments
        if request.query.get("since"):
            since = _parse_since(request.query["since"])
            comments = [comment for comment in comments if comment.updated_at >= since]
        return self._page(request, [self._comment_json(repo, issue, comment)
                                    for comment in comments])

    async def _post_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        self._writable(request)
        issue = self._issue(request, repo)
        body = _check_body(CREATE_COMMENT, request[BODY], required=("body",))
        if len(body["body"]) > COMMENT_LIMIT:
            raise _Answer(422, "Validation Failed", errors=[
                {"resource": "IssueComment", "code": "custom", "field": "body",
                 "message": f"body is too long (maximum is {COMMENT_LIMIT} characters)"}])
        comment = self._create_comment(issue, body["body"], request[ACCOUNT].login)
        return web.json_response(self._comment_json(repo, issue, comment), status=201)

    async def _list_pulls(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        query = request.query
        state = query.get("state", "open")
        if state not in ("open", "closed", "all"):
            raise _Answer(422, "Validation Failed", errors=[
                {"value": state, "resource": "PullRequest", "field": "state",
                 "code": "invalid"}])
        pulls = [issue for issue in repo.issues.values() if issue.pull_request]
        if state != "all":
            pulls = [pull for pull in pulls if pull.state == state]
        if query.get("head"):
            # `user:ref-name`; GitHub ignores a head without the owner part.
            owner, _, branch = query["head"].partition(":")
            if branch:
                pulls = [pull for pull in pulls if owner.lower() == repo.owner.lower()
                         and pull.head == branch]
        if query.get("base"):
            pulls = [pull for pull in pulls if pull.base == query["base"]]
        pulls.sort(key=lambda pull: (pull.created_at, pull.number), reverse=True)
        return self._page(request, [self._pull_json(repo, pull, full=False)
                                    for pull in pulls])

    async def _post_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        self._writable(request)
        body = _check_body(CREATE_PULL, request[BODY], required=("head", "base", "title"))
        head = body["head"].split(":", 1)[-1]
        for name, branch in (("head", head), ("base", body["base"])):
            if not branch or (repo.branches is not None and branch not in repo.branches):
                raise _Answer(422, "Validation Failed", errors=[
                    {"resource": "PullRequest", "field": name, "code": "invalid"}])
        if head == body["base"]:
            raise _Answer(422, "Validation Failed", errors=[
                {"resource": "PullRequest", "code": "custom",
                 "message": f"No commits between {body['base']} and {head}"}])
        if any(pull.pull_request and pull.state == "open" and pull.head == head
               for pull in repo.issues.values()):
            raise _Answer(422, "Validation Failed", errors=[
                {"resource": "PullRequest", "code": "custom",
                 "message": f"A pull request already exists for {repo.owner}:{head}."}])
        pull = self._create_issue(repo, body["title"], body.get("body"),
                                  request[ACCOUNT].login, [], pull_request=True)
        pull.head, pull.base = head, body["base"]
        return web.json_response(self._pull_json(repo, pull, full=True), status=201, headers={
            "Location": f"{self.url}/repos/{repo.full_name}/pulls/{pull.number}"})

    # -- state and shapes -------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _create_issue(self, repo: Repo, title: str, body: str | None, user: str,
                      labels: list[str], *, pull_request: bool = False,
                      state: str = "open") -> StoredIssue:
        now = self.clock()
        number = max(repo.issues, default=0) + 1
        issue = StoredIssue(number, self._new_id(), title, body, user, labels, state,
                            "completed" if state == "closed" else None, now, now,
                            now if state == "closed" else None, pull_request)
        repo.issues[number] = issue
        return issue

    def _create_comment(self, issue: StoredIssue, body: str, user: str) -> StoredComment:
        now = self.clock()
        comment = StoredComment(self._new_id(), body, user, now, now)
        issue.comments.append(comment)
        issue.updated_at = now
        return comment

    def _user_json(self, login: str, user_id: int) -> dict[str, Any]:
        """GitHub's `simple-user`."""
        api = f"{self.url}/users/{login}"
        return {"login": login, "id": user_id, "node_id": _node_id("U", user_id),
                "avatar_url": f"{self.html_root}/avatars/{user_id}", "gravatar_id": "",
                "url": api, "html_url": f"{self.html_root}/{login}",
                "followers_url": f"{api}/followers",
                "following_url": f"{api}/following{{/other_user}}",
                "gists_url": f"{api}/gists{{/gist_id}}",
                "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
                "subscriptions_url": f"{api}/subscriptions",
                "organizations_url": f"{api}/orgs", "repos_url": f"{api}/repos",
                "events_url": f"{api}/events{{/privacy}}",
                "received_events_url": f"{api}/received_events",
                "type": "User", "site_admin": False}

    def _private_user_json(self, account: Account) -> dict[str, Any]:
        """GitHub's `private-user`: what `GET /user` answers for the token's owner."""
        since = _iso(datetime(2020, 1, 1, tzinfo=UTC))
        return {**self._user_json(account.login, account.id),
                "name": None, "company": None, "blog": "", "location": None,
                "email": None, "hireable": None, "bio": None, "public_repos": 0,
                "public_gists": 0, "followers": 0, "following": 0,
                "created_at": since, "updated_at": since, "private_gists": 0,
                "total_private_repos": 0, "owned_private_repos": 0, "disk_usage": 0,
                "collaborators": 0, "two_factor_authentication": True}

    def _repo_json(self, repo: Repo, account: Account) -> dict[str, Any]:
        """GitHub's `full-repository`."""
        api = f"{self.url}/repos/{repo.full_name}"
        html = f"{self.html_root}/{repo.full_name}"
        since = _iso(datetime(2020, 1, 1, tzinfo=UTC))
        shape: dict[str, Any] = {
            "id": repo.id, "node_id": _node_id("R", repo.id), "name": repo.name,
            "full_name": repo.full_name, "private": False,
            "owner": self._user_json(repo.owner, repo.id + 1), "html_url": html,
            "description": None, "fork": False, "url": api, "homepage": None,
            "language": None, "forks_count": 0, "stargazers_count": 0,
            "watchers_count": 0, "size": 0, "default_branch": "main",
            "open_issues_count": sum(issue.state == "open" for issue in repo.issues.values()),
            "has_issues": repo.has_issues, "has_projects": False, "has_wiki": False,
            "has_pages": False, "has_discussions": False, "archived": False,
            "disabled": False, "pushed_at": since, "created_at": since, "updated_at": since,
            "subscribers_count": 0, "network_count": 0, "license": None, "forks": 0,
            "watchers": 0, "mirror_url": None,
            "git_url": f"git://{self.html_root.split('://')[-1]}/{repo.full_name}.git",
            "ssh_url": f"git@{self.html_root.split('://')[-1]}:{repo.full_name}.git",
            "clone_url": f"{html}.git", "svn_url": html,
            "permissions": {"admin": False, "maintain": False, "push": account.can_write,
                            "triage": account.can_write, "pull": True},
        }
        shape["open_issues"] = shape["open_issues_count"]
        for name, tail in _REPO_URLS.items():
            shape[f"{name}_url"] = f"{api}/{tail}"
        return shape

    def _issue_json(self, repo: Repo, issue: StoredIssue) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}/issues/{issue.number}"
        kind = "pull" if issue.pull_request else "issues"
        shape: dict[str, Any] = {
            "id": issue.id, "node_id": _node_id("I", issue.id), "url": api,
            "repository_url": f"{self.url}/repos/{repo.full_name}",
            "labels_url": f"{api}/labels{{/name}}", "comments_url": f"{api}/comments",
            "events_url": f"{api}/events", "timeline_url": f"{api}/timeline",
            "html_url": f"{self.html_root}/{repo.full_name}/{kind}/{issue.number}",
            "number": issue.number, "state": issue.state,
            "state_reason": issue.state_reason, "title": issue.title, "body": issue.body,
            "user": self._user_json(issue.user, _stable_id(issue.user)),
            "labels": [{"id": _stable_id(label), "node_id": _node_id("L", _stable_id(label)),
                        "name": label, "color": "ededed", "default": False,
                        "description": None} for label in issue.labels],
            "assignee": None, "assignees": [], "milestone": None, "locked": False,
            "comments": len(issue.comments), "author_association": "MEMBER",
            "created_at": _iso(issue.created_at), "updated_at": _iso(issue.updated_at),
            "closed_at": _iso(issue.closed_at),
        }
        if issue.pull_request:
            pulls = f"{self.url}/repos/{repo.full_name}/pulls/{issue.number}"
            shape["pull_request"] = {
                "url": pulls, "html_url": shape["html_url"],
                "diff_url": shape["html_url"] + ".diff",
                "patch_url": shape["html_url"] + ".patch", "merged_at": _iso(issue.merged_at)}
        return shape

    def _pull_json(self, repo: Repo, pull: StoredIssue, *, full: bool) -> dict[str, Any]:
        """GitHub's `pull-request-simple` (in lists) or `pull-request` (`full`)."""
        api = f"{self.url}/repos/{repo.full_name}/pulls/{pull.number}"
        issue_api = f"{self.url}/repos/{repo.full_name}/issues/{pull.number}"
        html = f"{self.html_root}/{repo.full_name}/pull/{pull.number}"
        sha = hashlib.sha1(f"{pull.id}:{pull.head}".encode()).hexdigest()
        owner = self._user_json(repo.owner, repo.id + 1)

        # Head and base are branches of the repository itself (no forks here); GitHub's
        # schema requires the base's repository, and the head's where it still exists.
        repository = self._repo_json(repo, Account(repo.owner, repo.id + 1, can_write=False))

        def branch(ref: str | None) -> dict[str, Any]:
            return {"label": f"{repo.owner}:{ref}", "ref": ref, "sha": sha, "user": owner,
                    "repo": repository}

        links = {name: {"href": href} for name, href in (
            ("self", api), ("html", html), ("issue", issue_api),
            ("comments", f"{issue_api}/comments"),
            ("review_comments", f"{api}/comments"),
            ("review_comment", f"{self.url}/repos/{repo.full_name}/pulls/comments"
                               "{/number}"),
            ("commits", f"{api}/commits"),
            ("statuses", f"{self.url}/repos/{repo.full_name}/statuses/{sha}"))}
        shape: dict[str, Any] = {
            "url": api, "id": pull.id, "node_id": _node_id("PR", pull.id), "html_url": html,
            "diff_url": f"{html}.diff", "patch_url": f"{html}.patch", "issue_url": issue_api,
            "commits_url": f"{api}/commits", "review_comments_url": f"{api}/comments",
            "review_comment_url": links["review_comment"]["href"],
            "comments_url": f"{issue_api}/comments",
            "statuses_url": links["statuses"]["href"], "number": pull.number,
            "state": pull.state, "locked": False, "title": pull.title,
            "user": self._user_json(pull.user, _stable_id(pull.user)), "body": pull.body,
            "labels": [], "milestone": None, "active_lock_reason": None,
            "created_at": _iso(pull.created_at), "updated_at": _iso(pull.updated_at),
            "closed_at": _iso(pull.closed_at), "merged_at": _iso(pull.merged_at),
            "merge_commit_sha": None, "assignee": None, "assignees": [],
            "requested_reviewers": [], "requested_teams": [], "head": branch(pull.head),
            "base": branch(pull.base), "_links": links, "author_association": "MEMBER",
            "auto_merge": None, "draft": False,
        }
        if full:
            shape |= {"merged": pull.merged_at is not None, "mergeable": None,
                      "rebaseable": None, "mergeable_state": "unknown", "merged_by": None,
                      "comments": len(pull.comments), "review_comments": 0,
                      "maintainer_can_modify": False, "commits": 1, "additions": 1,
                      "deletions": 0, "changed_files": 1}
        return shape

    def _comment_json(self, repo: Repo, issue: StoredIssue,
                      comment: StoredComment) -> dict[str, Any]:
        html = f"{self.html_root}/{repo.full_name}/issues/{issue.number}"
        return {
            "id": comment.id, "node_id": _node_id("IC", comment.id),
            "url": f"{self.url}/repos/{repo.full_name}/issues/comments/{comment.id}",
            "html_url": f"{html}#issuecomment-{comment.id}",
            "issue_url": f"{self.url}/repos/{repo.full_name}/issues/{issue.number}",
            "body": comment.body,
            "user": self._user_json(comment.user, _stable_id(comment.user)),
            "author_association": "NONE",
            "created_at": _iso(comment.created_at), "updated_at": _iso(comment.updated_at),
        }

    def _page(self, request: web.Request, items: list[Any]) -> web.Response:
        try:
            per_page = int(request.query.get("per_page", DEFAULT_PER_PAGE))
            page = int(request.query.get("page", 1))
        except ValueError:
            raise _Answer(422, "Validation Failed", errors=[
                {"resource": "Search", "field": "per_page", "code": "invalid"}]) from None
        # GitHub clamps rather than refuses: past 100 you get 100, below 1 the default.
        per_page = min(MAX_PER_PAGE, per_page) if per_page > 0 else DEFAULT_PER_PAGE
        page = max(1, page)
        last = max(1, -(-len(items) // per_page))
        headers = {}
        links = []
        for rel, number in (("prev", page - 1), ("next", page + 1), ("last", last),
                            ("first", 1)):
            if (rel in ("prev", "first") and page > 1) or (
                    rel in ("next", "last") and page < last):
                query = {**request.query, "per_page": str(per_page), "page": str(number)}
                links.append(f'<{self.url}{request.path}?{urlencode(query)}>; rel="{rel}"')
        if links:
            headers["Link"] = ", ".join(links)
        start = (page - 1) * per_page
        return web.json_response(items[start:start + per_page], headers=headers)


# The URL templates a `full-repository` carries, after `/repos/{owner}/{repo}/`.
_REPO_URLS = {
    "archive": "{archive_format}{/ref}", "assignees": "assignees{/user}",
    "blobs": "git/blobs{/sha}", "branches": "branches{/branch}",
    "collaborators": "collaborators{/collaborator}", "comments": "comments{/number}",
    "commits": "commits{/sha}", "compare": "compare/{base}...{head}",
    "contents": "contents/{+path}", "contributors": "contributors",
    "deployments": "deployments", "downloads": "downloads", "events": "events",
    "forks": "forks", "git_commits": "git/commits{/sha}", "git_refs": "git/refs{/sha}",
    "git_tags": "git/tags{/sha}", "issue_comment": "issues/comments{/number}",
    "issue_events": "issues/events{/number}", "issues": "issues{/number}",
    "keys": "keys{/key_id}", "labels": "labels{/name}", "languages": "languages",
    "merges": "merges", "milestones": "milestones{/number}",
    "notifications": "notifications{?since,all,participating}", "pulls": "pulls{/number}",
    "releases": "releases{/id}", "stargazers": "stargazers", "statuses": "statuses/{sha}",
    "subscribers": "subscribers", "subscription": "subscription", "tags": "tags",
    "teams": "teams", "trees": "git/trees{/sha}", "hooks": "hooks",
}


def _node_id(prefix: str, number: int) -> str:
    return f"{prefix}_kw{number:08d}"


def _stable_id(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)

