"""The meeting's GitHub issue: opened ahead of each sitting, closed with its note.

Three outbox job kinds, one class. `github_issue` opens the sitting's issue ahead of
time (queued by the scheduled `issue` job, its body built by `issue_body` then);
`github_issue_body` rewrites the body when the agenda changed, at most once a minute
(the scheduled `issue_body` job, planned from the database); `github_note` is the
`Target` queued at the close: it posts the note as a comment and closes the issue. The
first finds the issue by the hidden marker in its body before it creates one, so a job
run again after a crash never opens a second issue; the note (and the git archive's pull
request) use the number kept once it was opened, and look for the marker the same way
only when it never was.

The body's "in your time zone" link is the one the reminders already carry
(`render.time_zone_link`): timeanddate.com's fixed-time page, a documented, long-lived
URL form that shows the moment in the reader's own local time next to UTC, with no
script of ours and no need for the reader to know the meeting's zone. One link for the
same moment in the room and on GitHub.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from chatbot.config import Config, GitHubIssueConfig
from chatbot.model import Entry
from chatbot.publish import (
    GITHUB_NOTE,
    PublishFailed,
    Sitting,
    required_settings,
    target_settings,
)
from chatbot.publish.github import (
    Comment,
    GitHubClient,
    GitHubError,
    GitHubPermanentError,
    GitHubTransientError,
    Issue,
    IssueRef,
    Polled,
    PullRequest,
    Token,
    has_marker,
)
from chatbot.render import LINK_LABELS, format_clock, format_date, time_zone_link

# How much older than its sitting's date minus `issue_ahead` an issue may be and still
# be found: room for a clock that was off, or an `issue_ahead` that was shortened since.
FIND_SLACK = timedelta(days=2)


def sitting_marker(series_id: str, name: str) -> str:
    """The hidden line that makes an issue one sitting's: the meeting's id and the
    sitting's name (its date, `-2` for a second sitting that day, as the note file)."""
    return f"<!-- chatbot:meeting:{series_id}:{name} -->"


def closed_by_pull_request(config: Config, series_id: str) -> bool:
    """Whether the git archive's pull request closes the sitting's issue when merged
    (so the bot leaves it open after posting the note)."""
    git = target_settings(config, series_id, "git")
    return git is not None and git.pull_request


def issue_title(settings: GitHubIssueConfig, series_id: str, title: str, day: date) -> str:
    return settings.title.format(title=title, date=day.isoformat(), id=series_id)


def _no_mentions(text: str) -> str:
    # An @name on GitHub notifies that user; text from the chat must not ping anyone.
    return text.replace("@", "@\u200b")


def issue_body(*, title: str, start: datetime, zone: ZoneInfo, duration: timedelta,
               links: Mapping[str, str | None], agenda: Sequence[Entry], room: str,
               prefix: str, closed_by_pull_request: bool = False) -> str:
    """The issue's body: when (meeting zone, UTC, the reader's zone), the links, the
    agenda so far and how to add to it. The marker is added by the client."""
    local = start.astimezone(zone)
    utc = start.astimezone(UTC)
    lines = [
        f"**{_no_mentions(title)}**: {format_date(local)}, {format_clock(local)} "
        f"{zone.key} ({utc:%H:%M} UTC), for {int(duration.total_seconds() // 60)} minutes. "
        f"[In your time zone]({time_zone_link(start)}).",
        "",
    ]
    shown = [(label, links[key]) for key, label in LINK_LABELS
             if key != "issue" and links.get(key)]
    lines += [f"- **{label}:** <{url}>" for label, url in shown]
    if shown:
        lines.append("")
    lines += ["## Agenda", ""]
    if agenda:
        for number, item in enumerate(agenda, start=1):
            box = f" ({item.minutes} min)" if item.minutes is not None else ""
            lines.append(f"{number}. {_no_mentions(item.text)}{box}, "
                         f"by {_no_mentions(item.sender_name)}")
    else:
        lines.append("_Nothing yet._")
    lines += ["", "This agenda follows the meeting's as it changes. To add an item, comment "
              f"here with `{prefix}agenda (10 min) topic` (the item is yours), or write the "
              f"same in the Matrix room {_no_mentions(room)}. The meeting's note will be "
              "posted here afterwards, and the issue closed"
              + (" by the pull request that archives it." if closed_by_pull_request
                 else "."), ""]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class OpenIssue:
    """One `github_issue` job: everything needed to open the issue, fixed when queued."""

    series_id: str
    meeting_id: int
    name: str
    title: str
    body: str
    created_after: datetime

    def payload(self) -> dict[str, Any]:
        return {"series": self.series_id, "meeting_id": self.meeting_id, "name": self.name,
                "title": self.title, "body": self.body,
                "created_after": self.created_after.isoformat()}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> OpenIssue:
        return cls(payload["series"], int(payload["meeting_id"]), payload["name"],
                   payload["title"], payload["body"],
                   datetime.fromisoformat(payload["created_after"]))



class GitHubIssues:
    """The `github_note` target, and the opener of each sitting's issue."""

    kind = GITHUB_NOTE

    def __init__(self, config: Config, *, clock: Callable[[], datetime] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.clock = clock or (lambda: datetime.now(UTC))
        self.environ = environ
        # When GitHub last named a time to wait until (a rate limit's `Retry-After` or
        # reset), per API and token: every job and poll using them waits, not only the
        # one that was told.
        self._held_until: dict[tuple[str, str], datetime] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    def _settings(self, series_id: str) -> GitHubIssueConfig:
        settings: GitHubIssueConfig = required_settings(self.config, series_id, "github")
        return settings

    def label(self, series_id: str) -> str:
        settings = target_settings(self.config, series_id, "github")
        return "GitHub" if settings is None else f"GitHub ({settings.repo})"

    def _client(self, settings: GitHubIssueConfig) -> GitHubClient:
        held = self._held_until.get(_account(settings))
        if held is not None and self.clock() < held:
            raise PublishFailed(f"GitHub asked not to be called before {held:%H:%M:%S} UTC "
                                "(its rate limit)", permanent=False, retry_at=held)
        try:
            token = (Token.from_env(settings.token_env, self.environ)
                     if settings.token_env is not None
                     else Token.from_file(Path(str(settings.token_file))))
        except GitHubPermanentError as error:
            raise PublishFailed(f"{error}; set it where the bot runs", permanent=True) from None
        return GitHubClient(token, api_url=settings.api_url, clock=self.clock)

    async def open_issue(self, job: OpenIssue) -> Issue:
        """The sitting's issue, opened unless it exists. Raises PublishFailed."""
        settings = self._settings(job.series_id)
        try:
            async with self._client(settings) as github:
                return await github.open_meeting_issue(
                    settings.repo, job.title, job.body, sitting_marker(job.series_id, job.name),
                    created_after=job.created_after)
        except GitHubError as error:
            raise self._failed(settings, error) from error

    async def update_body(self, series_id: str, repo: str, number: int, body: str) -> str:
        """Make the issue's body `body`, which carries the issue's marker: one PATCH, no
        read first. A read would protect nothing: GitHub has no conditional write for
        issues, the bot owns the whole body (a person's edit to it is replaced either
        way), and a job is queued only when the body changed. A body without a marker
        (a job queued by an older version) is written the old way, the issue read first
        so its marker is kept."""
        settings = self._settings(series_id)
        ref = IssueRef(repo, number)
        try:
            async with self._client(settings) as github:
                if not has_marker(body):
                    ref = await github.get_issue(ref)
                updated = await github.update_issue_body(ref, body)
        except GitHubError as error:
            raise self._failed(settings, error) from error
        return updated.html_url

    async def comments(self, series_id: str, repo: str, number: int,
                       etag: str | None) -> Polled[Comment]:
        """The issue's comments, conditionally: an unchanged answer is a free 304."""
        settings = self._settings(series_id)
        try:
            async with self._client(settings) as github:
                return await github.comments_since(IssueRef(repo, number), etag=etag)
        except GitHubError as error:
            raise self._failed(settings, error) from error

    def agenda_label(self, series_id: str) -> str | None:
        settings = target_settings(self.config, series_id, "github")
        return None if settings is None else settings.agenda_label

    async def labelled(self, series_id: str, etag: str | None) -> Polled[Issue]:
        """The open issues and pull requests with the series' `agenda_label`,
        conditionally: an unchanged list is a free 304."""
        settings = self._settings(series_id)
        label = settings.agenda_label
        if label is None:
            return Polled(False, (), etag)
        try:
            async with self._client(settings) as github:
                return await github.labelled_issues(settings.repo, label, etag=etag)
        except GitHubError as error:
            raise self._failed(settings, error) from error

    async def publish(self, sitting: Sitting) -> str:
        """Post the note on the sitting's issue (opened now if it never was) and close
        it, unless the git archive's pull request is to close it when merged; the
        issue's URL."""
        settings = self._settings(sitting.series_id)
        try:
            async with self._client(settings) as github:
                issue = await self._sitting_issue(github, settings, sitting)
                comments = await github.post_note(issue, sitting.text)
                if not closed_by_pull_request(self.config, sitting.series_id):
                    await github.close_issue(issue)
        except GitHubError as error:
            raise self._failed(settings, error) from error
        return comments[0].html_url

    async def propose(self, sitting: Sitting, *, head: str, base: str, title: str,
                      path: str) -> PullRequest:
        """The pull request from branch `head` into `base` that archives the sitting's
        note at `path` and closes its issue when merged; opened unless that branch has
        one. Raises PublishFailed."""
        settings = self._settings(sitting.series_id)
        try:
            async with self._client(settings) as github:
                issue = await self._sitting_issue(github, settings, sitting)
                body = (f"The note of {_no_mentions(sitting.title)} on {sitting.name}, "
                        f"archived in `{path}` by the meeting bot.\n\n"
                        f"Closes #{issue.number}\n")
                return await github.open_pull_request(settings.repo, head=head, base=base,
                                                      title=title, body=body)
        except GitHubError as error:
            raise self._failed(settings, error) from error

    async def _sitting_issue(self, github: GitHubClient, settings: GitHubIssueConfig,
                             sitting: Sitting) -> IssueRef:
        """The sitting's issue: the one kept with the sitting, or else (it was never
        opened, or the bot stopped before it kept its number) found by its marker or
        opened now. One at a time per sitting: the note's comment and the archive's
        pull request both need it, at once."""
        if sitting.issue is not None and sitting.issue[0].lower() == settings.repo.lower():
            return IssueRef(*sitting.issue)
        marker = sitting_marker(sitting.series_id, sitting.name)
        created_after = (datetime.combine(sitting.held_on, datetime.min.time(), UTC)
                         - settings.issue_ahead - FIND_SLACK)
        title = issue_title(settings, sitting.series_id, sitting.title, sitting.held_on)
        async with self._opening.setdefault(marker, asyncio.Lock()):
            return await github.open_meeting_issue(
                settings.repo, title, f"**{_no_mentions(sitting.title)}**: the note "
                "follows.\n", marker, created_after=created_after)

    def _failed(self, settings: GitHubIssueConfig, error: GitHubError) -> PublishFailed:
        retry_at = error.retry_at if isinstance(error, GitHubTransientError) else None
        if retry_at is not None:
            account = _account(settings)
            self._held_until[account] = max(retry_at, self._held_until.get(account, retry_at))
        return PublishFailed(str(error), permanent=isinstance(error, GitHubPermanentError),
                             retry_at=retry_at)

    async def check(self, series_id: str) -> str:
        settings = self._settings(series_id)
        try:
            async with self._client(settings) as github:
                access = await github.check_access(settings.repo)
        except GitHubError as error:
            raise self._failed(settings, error) from error
        if not access.has_issues:
            raise PublishFailed(f"{settings.repo} has issues turned off", permanent=True)
        if not access.can_write_issues:
            raise PublishFailed(f"the token ({access.login or 'an app'}) may read "
                                f"{settings.repo} but not write its issues", permanent=True)
        return f"the token ({access.login or 'an app'}) may open issues in {settings.repo}"


def _account(settings: GitHubIssueConfig) -> tuple[str, str]:
    """Whose rate limit a call spends: GitHub counts per token, on each API host."""
    return settings.api_url, settings.token_env or str(settings.token_file)
