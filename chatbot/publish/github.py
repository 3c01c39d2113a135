"""The GitHub REST calls behind a meeting's issue, with errors sorted for the job runner.

A small aiohttp client against the documented REST API (version 2022-11-28), not
githubkit: githubkit 0.16.1 (the registry's only version) fails at import with hishel 2.0
and needs `hishel<2`, and brings httpx and 56 MB of schemas, while the bot makes eight
calls and reads a few fields. Every failure is one of two kinds:

* `GitHubTransientError`: the network, a 5xx, a 429 or a secondary/primary rate limit;
  `retry_at` carries the earliest moment GitHub allows another try (`Retry-After` or
  `X-RateLimit-Reset`), or None to use the runner's own backoff;
* `GitHubPermanentError`: 400/401/403/404/410/422, with a sentence saying what to fix.

Links come from the `html_url` GitHub returns, so GitHub Enterprise hosts work. The token
never appears in a message, a log line or a `repr`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote

if TYPE_CHECKING:  # imported when a client is made: `chatbot notes` and `check` never need it
    import aiohttp

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = "chatbot-meetings (+https://github.com/)"
# GitHub's limit on an issue comment's body, in characters.
COMMENT_LIMIT = 65536
PER_PAGE = 100
# GitHub's advice when a secondary rate limit names no time: wait at least a minute.
SECONDARY_WAIT = timedelta(minutes=1)
def network_errors() -> tuple[type[BaseException], ...]:
    import aiohttp

    return (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, OSError)
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_MARKER = re.compile(r"<!-- chatbot:meeting:[^\s>]+ -->")


def meeting_marker(meeting_id: str, day: date) -> str:
    """The hidden line that makes an issue this sitting's, whatever its title."""
    return f"<!-- chatbot:meeting:{meeting_id}:{day.isoformat()} -->"


def has_marker(body: str) -> bool:
    """Whether an issue body carries a sitting's hidden marker."""
    return _MARKER.search(body) is not None


def split_note(text: str, limit: int = COMMENT_LIMIT) -> list[str]:
    """`text` as few comments of at most `limit` characters, cut at a line end where one
    lies in the second half of a part; the parts joined give `text` back exactly."""
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", limit // 2, limit) + 1 or limit
        parts.append(text[:cut])
        text = text[cut:]
    parts.append(text)
    return parts


# -- errors -------------------------------------------------------------------------------


class GitHubError(Exception):
    """A GitHub call failed; the message says which call and what to do about it."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GitHubTransientError(GitHubError):
    """Worth trying again, not before `retry_at` when GitHub named a time."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_at: datetime | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_at = retry_at


class GitHubPermanentError(GitHubError):
    """The same request will fail again until someone fixes the token, repository or
    configuration the message names."""


# -- values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """A GitHub token and where it came from; only the source shows in a `repr`."""

    value: str = field(repr=False)
    source: str

    def __repr__(self) -> str:
        return f"Token(from {self.source})"

    @classmethod
    def from_env(cls, name: str, environ: Mapping[str, str] | None = None) -> Token:
        value = (os.environ if environ is None else environ).get(name, "").strip()
        if not value:
            raise GitHubPermanentError(
                f"no GitHub token: the environment variable {name} is not set or empty")
        return cls(value, f"environment variable {name}")

    @classmethod
    def from_file(cls, path: Path) -> Token:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise GitHubPermanentError(
                f"no GitHub token: cannot read {path} ({error.strerror})") from None
        if not value:
            raise GitHubPermanentError(f"no GitHub token: {path} is empty")
        return cls(value, f"file {path}")


@dataclass(frozen=True, slots=True)
class IssueRef:
    """Enough to address an issue: what a durable job stores."""

    repo: str
    number: int


@dataclass(frozen=True, slots=True)
class Issue(IssueRef):
    html_url: str
    title: str
    body: str
    state: str
    author: str
    labels: tuple[str, ...]
    is_pull_request: bool
    created_at: datetime

    @property
    def marker(self) -> str | None:
        found = _MARKER.search(self.body)
        return found.group(0) if found else None

    @classmethod
    def from_json(cls, repo: str, data: Mapping[str, Any]) -> Issue:
        return cls(repo, int(data["number"]), str(data["html_url"]), str(data["title"]),
                   data.get("body") or "", str(data["state"]),
                   str((data.get("user") or {}).get("login", "ghost")),
                   tuple(str(label["name"]) for label in data.get("labels", ())
                         if isinstance(label, Mapping)),
                   "pull_request" in data, _parse_time(data["created_at"]))


@dataclass(frozen=True, slots=True)
class Comment:
    id: int
    author: str
    body: str
    html_url: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comment:
        return cls(int(data["id"]), str((data.get("user") or {}).get("login", "ghost")),
                   data.get("body") or "", str(data["html_url"]),
                   _parse_time(data["created_at"]), _parse_time(data["updated_at"]))


@dataclass(frozen=True, slots=True)
class PullRequest:
    repo: str
    number: int
    html_url: str
    state: str
    head: str
    base: str
    merged: bool

    @classmethod
    def from_json(cls, repo: str, data: Mapping[str, Any]) -> PullRequest:
        return cls(repo, int(data["number"]), str(data["html_url"]), str(data["state"]),
                   str(data["head"]["ref"]), str(data["base"]["ref"]),
                   data.get("merged_at") is not None)


@dataclass(frozen=True, slots=True)
class Polled(Generic[T]):
    """One conditional poll: `changed` False means GitHub answered 304 (no rate limit
    spent) and `items` is empty. Keep `etag` for the next poll; it is None when the answer
    spanned several pages, which one ETag cannot vouch for."""

    changed: bool
    items: tuple[T, ...]
    etag: str | None


@dataclass(frozen=True, slots=True)
class Access:
    """What `chatbot check --online` reports for a token and repository."""

    login: str | None
    repo_html_url: str
    has_issues: bool
    can_write_issues: bool


@dataclass(frozen=True, slots=True)
class RateLimit:
    """GitHub's primary rate limit as its last answer stated it (`X-RateLimit-*`)."""

    limit: int
    remaining: int
    reset: datetime
    resource: str

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimit | None:
        try:
            return cls(int(headers["X-RateLimit-Limit"]),
                       int(headers["X-RateLimit-Remaining"]),
                       datetime.fromtimestamp(int(headers["X-RateLimit-Reset"]), UTC),
                       headers.get("X-RateLimit-Resource", "core"))
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    data: Any
    etag: str | None
    next_url: str | None


# -- the client ---------------------------------------------------------------------------


class GitHubClient:
    """`async with GitHubClient(token, api_url=...) as github:`; one per token."""

    def __init__(self, token: Token, *, api_url: str = DEFAULT_API_URL,
                 session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 timeout: float = 30) -> None:
        self._token = token
        self.api_url = api_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        import aiohttp

        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # The `core` limit as last seen, for /metrics and to hold back a request that
        # GitHub would refuse anyway.
        self.rate_limit: RateLimit | None = None
        self._login: str | None = None
        self._login_known = False

    def __repr__(self) -> str:
        return f"GitHubClient({self.api_url}, {self._token!r})"

    async def __aenter__(self) -> GitHubClient:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- what the bot does --------------------------------------------------------------

    async def check_access(self, repo: str) -> Access:
        """The token works and sees `repo`; whether it may write issues there."""
        login = await self.own_login()
        data = (await self._call("GET", _repo_path(repo), what="read the repository",
                                 repo=repo)).data
        permissions = data.get("permissions") or {}
        return Access(login, str(data["html_url"]), bool(data.get("has_issues", True)),
                      bool(permissions.get("triage") or permissions.get("push")))

    async def own_login(self) -> str | None:
        """The login the token acts as, asked once; None for a GitHub App installation
        token, which has no user behind it (GitHub answers 403)."""
        if not self._login_known:
            try:
                reply = await self._call("GET", "/user", what="check the token")
                self._login = str(reply.data["login"])
            except GitHubPermanentError as error:
                if error.status != 403:
                    raise
            self._login_known = True
        return self._login

    async def open_meeting_issue(self, repo: str, title: str, body: str, marker: str, *,
                                 created_after: datetime | None = None) -> Issue:
        """The issue whose body carries `marker`, created with `title` and `body` (the
        marker appended if absent) only when none exists: a retry after a crash finds
        the first one. `created_after` lets the search stop early (the issue cannot be
        older than the moment the bot first could have opened it)."""
        found = await self.find_meeting_issue(repo, marker, created_after=created_after)
        if found is not None:
            log.info("meeting issue for %s found in %s: %s", marker, repo, found.html_url)
            return found
        if marker not in body:
            body = f"{body.rstrip()}\n\n{marker}\n"
        data = (await self._call("POST", f"{_repo_path(repo)}/issues",
                                 json={"title": title, "body": body},
                                 what="open the meeting's issue", repo=repo)).data
        issue = Issue.from_json(repo, data)
        log.info("opened meeting issue %s in %s for %s", issue.html_url, repo, marker)
        return issue

    async def find_meeting_issue(self, repo: str, marker: str, *,
                                 created_after: datetime | None = None) -> Issue | None:
        """The newest issue (open or closed, never a pull request) that the token's own
        user opened and whose body holds `marker`; found by listing, since titles repeat
        and search lags. Only its own: in a public repository anyone can open an issue
        quoting the marker."""
        params = {"state": "all", "sort": "created", "direction": "desc",
                  "per_page": str(PER_PAGE)}
        login = await self.own_login()
        if login is not None:
            params["creator"] = login
        if created_after is not None:
            # Created after it means updated after it too, so GitHub may filter.
            params["since"] = _format_time(created_after)
        async for item in self._pages(f"{_repo_path(repo)}/issues", params,
                                      what="list issues", repo=repo):
            issue = Issue.from_json(repo, item)
            if created_after is not None and issue.created_at < created_after:
                return None
            if not issue.is_pull_request and marker in issue.body and (
                    login is None or issue.author == login):
                return issue
        return None

    async def get_issue(self, ref: IssueRef) -> Issue:
        data = (await self._call("GET", _issue_path(ref), what=f"read issue #{ref.number}",
                                 repo=ref.repo)).data
        return Issue.from_json(ref.repo, data)

    async def update_issue_body(self, issue: IssueRef, body: str) -> Issue:
        """The issue with `body`. Given an `Issue` as read, its marker is kept and
        nothing is sent when the body is unchanged; given only its number, `body` is
        written as it is (it must carry the marker itself)."""
        if isinstance(issue, Issue):
            marker = issue.marker
            if marker is not None and marker not in body:
                body = f"{body.rstrip()}\n\n{marker}\n"
            if body == issue.body:
                return issue
        data = (await self._call("PATCH", _issue_path(issue), json={"body": body},
                                 what=f"update issue #{issue.number}", repo=issue.repo)).data
        return Issue.from_json(issue.repo, data)

    async def comments_since(self, ref: IssueRef, since: datetime | None = None, *,
                             etag: str | None = None) -> Polled[Comment]:
        """Comments created or edited at or after `since` (GitHub's resolution is a
        second, so the caller skips ids it has seen), oldest first. Pass the last
        `etag`: an unchanged answer is a free 304."""
        params = {"per_page": str(PER_PAGE)}
        if since is not None:
            params["since"] = _format_time(since)
        return await self._poll(f"{_issue_path(ref)}/comments", params, etag,
                                Comment.from_json, what=f"read comments on #{ref.number}",
                                repo=ref.repo)

    async def labelled_issues(self, repo: str, label: str, *,
                              etag: str | None = None) -> Polled[Issue]:
        """Open issues and pull requests carrying `label`, polled conditionally."""
        params = {"state": "open", "labels": label, "per_page": str(PER_PAGE)}
        return await self._poll(f"{_repo_path(repo)}/issues", params, etag,
                                lambda data: Issue.from_json(repo, data),
                                what=f"list issues labelled {label}", repo=repo)

    async def post_note(self, ref: IssueRef, text: str) -> tuple[Comment, ...]:
        """`text` as one comment, or several only past GitHub's 65,536-character limit.
        A part already on the issue (a retry after a crash) is not posted again."""
        # Each existing comment vouches for one part only: two equal parts need two.
        existing: dict[str, list[Comment]] = {}
        async for item in self._pages(f"{_issue_path(ref)}/comments",
                                      {"per_page": str(PER_PAGE)},
                                      what=f"read comments on #{ref.number}", repo=ref.repo):
            comment = Comment.from_json(item)
            existing.setdefault(comment.body, []).append(comment)
        posted: list[Comment] = []
        for part in split_note(text):
            if existing.get(part):
                posted.append(existing[part].pop(0))
                continue
            data = (await self._call("POST", f"{_issue_path(ref)}/comments",
                                     json={"body": part},
                                     what=f"comment on issue #{ref.number}",
                                     repo=ref.repo)).data
            posted.append(Comment.from_json(data))
        return tuple(posted)

    async def close_issue(self, issue: IssueRef) -> Issue:
        """The issue closed as completed; no call when it is known to be closed."""
        if isinstance(issue, Issue) and issue.state == "closed":
            return issue
        data = (await self._call("PATCH", _issue_path(issue),
                                 json={"state": "closed", "state_reason": "completed"},
                                 what=f"close issue #{issue.number}", repo=issue.repo)).data
        return Issue.from_json(issue.repo, data)

    async def find_pull_request(self, repo: str, head: str) -> PullRequest | None:
        """The newest pull request from branch `head` of `repo` itself, in any state."""
        owner = repo.split("/")[0]
        params = {"head": f"{owner}:{head}", "state": "all", "per_page": str(PER_PAGE)}
        async for item in self._pages(f"{_repo_path(repo)}/pulls", params,
                                      what=f"list pull requests from {head}", repo=repo):
            pull = PullRequest.from_json(repo, item)
            if pull.head == head:
                return pull
        return None

    async def open_pull_request(self, repo: str, *, head: str, base: str, title: str,
                                body: str) -> PullRequest:
        """The pull request from `head` into `base`, opened only when that branch has
        none yet (open, merged or closed by a person): a retry after a crash finds it."""
        found = await self.find_pull_request(repo, head)
        if found is not None:
            log.info("pull request from %s found in %s: %s", head, repo, found.html_url)
            return found
        try:
            data = (await self._call("POST", f"{_repo_path(repo)}/pulls",
                                     json={"title": title, "head": head, "base": base,
                                           "body": body},
                                     what=f"open a pull request from {head}", repo=repo)).data
        except GitHubPermanentError as error:
            # Opened meanwhile (by `chatbot publish` beside the bot): that one it is.
            if error.status == 422 and "already exists" in str(error):
                found = await self.find_pull_request(repo, head)
                if found is not None:
                    return found
            raise
        pull = PullRequest.from_json(repo, data)
        log.info("opened pull request %s in %s from %s", pull.html_url, repo, head)
        return pull

    # -- the wire -----------------------------------------------------------------------

    async def _poll(self, path: str, params: dict[str, str], etag: str | None,
                    parse: Callable[[Mapping[str, Any]], T], *, what: str,
                    repo: str) -> Polled[T]:
        first = await self._call("GET", path, params=params, etag=etag, what=what, repo=repo)
        if first.status == 304:
            return Polled(False, (), etag)
        items = [parse(item) for item in first.data]
        next_url = first.next_url
        while next_url is not None:
            reply = await self._call("GET", next_url, what=what, repo=repo)
            items.extend(parse(item) for item in reply.data)
            next_url = reply.next_url
        return Polled(True, tuple(items), first.etag if first.next_url is None else None)

    async def _pages(self, path: str, params: dict[str, str], *, what: str, repo: str) -> Any:
        reply = await self._call("GET", path, params=params, what=what, repo=repo)
        while True:
            for item in reply.data:
                yield item
            if reply.next_url is None:
                return
            reply = await self._call("GET", reply.next_url, what=what, repo=repo)

    async def _call(self, method: str, path: str, *, what: str, repo: str | None = None,
                    params: Mapping[str, str] | None = None, json: Any = None,
                    etag: str | None = None) -> _Reply:
        if self._session is None:
            raise RuntimeError("GitHubClient used outside `async with`")
        url = path if path.startswith(("http://", "https://")) else self.api_url + path
        if not url.startswith(self.api_url + "/"):
            # A Link header pointing elsewhere must not receive the token.
            raise GitHubPermanentError(f"{what}: GitHub pointed to another host ({url})")
        headers = {"Authorization": f"Bearer {self._token.value}",
                   "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": API_VERSION, "User-Agent": USER_AGENT}
        if etag:
            headers["If-None-Match"] = etag
        spent = self.rate_limit
        if spent is not None and spent.remaining <= 0 and self._clock() < spent.reset:
            # GitHub asks not to call again before the reset once the limit is spent.
            raise GitHubTransientError(f"could not {what}: GitHub's rate limit is spent "
                                       f"until {spent.reset:%H:%M:%S} UTC",
                                       retry_at=spent.reset)
        try:
            async with self._session.request(method, url, params=params, json=json,
                                             headers=headers,
                                             timeout=self._timeout) as response:
                self.rate_limit = RateLimit.from_headers(response.headers) or self.rate_limit
                next_link = response.links.get("next")
                next_url = next_link.get("url") if next_link is not None else None
                reply_etag = response.headers.get("ETag")
                if response.status == 304:
                    return _Reply(304, None, reply_etag or etag, None)
                try:
                    data = await response.json(content_type=None)
                except ValueError:
                    data = None
                if 200 <= response.status < 300 and data is not None:
                    return _Reply(response.status, data, reply_etag,
                                  None if next_url is None else str(next_url))
                raise self._failure(response.status, response.headers, data, what, repo)
        except network_errors() as error:
            raise GitHubTransientError(
                f"could not {what}: GitHub unreachable ({type(error).__name__})") from None

    def _failure(self, status: int, headers: Mapping[str, str], data: Any, what: str,
                 repo: str | None) -> GitHubError:
        message = str(data.get("message", "")) if isinstance(data, Mapping) else ""
        said = f" ({status} {message.splitlines()[0] if message else 'no message'})"
        retry_at = self._retry_at(headers)
        rate_limited = status == 429 or (status == 403 and (
            retry_at is not None or "rate limit" in message.lower()))
        if rate_limited:
            return GitHubTransientError(
                f"could not {what}: GitHub's rate limit{said}", status=status,
                retry_at=retry_at or self._clock() + SECONDARY_WAIT)
        if status >= 500 or (200 <= status < 300):
            # A 2xx that is not JSON is a proxy's page, not GitHub: worth another try.
            return GitHubTransientError(f"could not {what}: GitHub failed{said}",
                                        status=status, retry_at=retry_at)
        where = repo or "the repository"
        if status == 401:
            fix = ("the token is refused: check that it is current, not revoked, and "
                   "copied whole")
        elif status == 403:
            fix = (f"the token may not do this in {where}: give it read and write access "
                   f"to issues there (and to pull requests, for the git archive's)")
        elif status == 404:
            fix = (f"no repository {where} or no access to it with this token: check "
                   f"the name and the token's repository access")
        elif status == 410:
            fix = f"issues are disabled in {where}: enable them in its settings"
        elif status == 422:
            details = _validation_details(data)
            fix = f"GitHub rejected the request as invalid{details}"
        else:
            fix = "GitHub refused the request"
        return GitHubPermanentError(f"could not {what}{said}: {fix}", status=status)

    def _retry_at(self, headers: Mapping[str, str]) -> datetime | None:
        retry_after = headers.get("Retry-After")
        if retry_after:
            if retry_after.strip().isdigit():
                return self._clock() + timedelta(seconds=int(retry_after))
            try:
                return parsedate_to_datetime(retry_after).astimezone(UTC)
            except (TypeError, ValueError):
                pass
        if headers.get("X-RateLimit-Remaining") == "0":
            reset = headers.get("X-RateLimit-Reset", "")
            if reset.isdigit():
                return datetime.fromtimestamp(int(reset), UTC)
        return None


def _validation_details(data: Any) -> str:
    if not isinstance(data, Mapping):
        return ""
    reasons = [str(data.get("message", "")).replace("\n\n", ": ")]
    for error in data.get("errors") or ():
        if isinstance(error, Mapping):
            reasons.append(str(error.get("message") or
                               f"{error.get('field')} {error.get('code')}"))
    return ": " + "; ".join(reason for reason in reasons if reason)


def _repo_path(repo: str) -> str:
    if not _REPO.match(repo):
        raise GitHubPermanentError(f"the repository must be owner/name, not {repo!r}")
    owner, name = repo.split("/")
    return f"/repos/{quote(owner)}/{quote(name)}"


def _issue_path(ref: IssueRef) -> str:
    return f"{_repo_path(ref.repo)}/issues/{int(ref.number)}"


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
