"""Publishing a held meeting's note beyond the room: one module per target.

Each target (`git`, `github`) is one module with one class
behind the `Target` interface, and one outbox job kind. At close the core queues one
job per target configured under the meeting's `publish:`, in the transaction that
closes the meeting; the outbox runs it through `Target.publish` after the commit, with
backoff, and tells the chairs in the room when it fails for good. `publish` must be
idempotent: a job may run again after a crash, or from `chatbot publish`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from chatbot.config import Config, PublishConfig

GIT_ARCHIVE = "git_archive"
GITHUB_NOTE = "github_note"
# Opening a sitting's GitHub issue ahead of it: a publishing job, but not one per close.
GITHUB_ISSUE = "github_issue"
# The issue's body, following the agenda.
GITHUB_ISSUE_BODY = "github_issue_body"
# The sitting's HackMD page: made ahead, its regions kept current, read back at the
# close (the final note comes from it, so it is not a target of the note).
HACKMD_NOTE = "hackmd_note"
HACKMD_REGIONS = "hackmd_regions"
HACKMD_FINAL = "hackmd_final"
HACKMD_KINDS = frozenset({HACKMD_NOTE, HACKMD_REGIONS, HACKMD_FINAL})
# The `publish:` key of each target, and the outbox job kind that carries it out.
TARGET_KINDS: dict[str, str] = {"git": GIT_ARCHIVE, "github": GITHUB_NOTE}
PUBLISH_KINDS = (frozenset(TARGET_KINDS.values()) | {GITHUB_ISSUE, GITHUB_ISSUE_BODY}
                 | HACKMD_KINDS)


@dataclass(frozen=True, slots=True)
class Sitting:
    """One held meeting's note, as every target publishes it.

    `name` tells the sittings of a series apart: the date, with `-2` for a second
    sitting that day (as the note file's name). `issue` is the repository and number
    of the sitting's GitHub issue when it was open by the close, so that publishing
    need not look for it again.
    """

    series_id: str
    title: str
    held_on: date
    name: str
    text: str
    issue: tuple[str, int] | None = None

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "series": self.series_id, "title": self.title,
            "held_on": self.held_on.isoformat(), "name": self.name, "text": self.text}
        if self.issue is not None:
            payload["issue"] = {"repo": self.issue[0], "number": self.issue[1]}
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Sitting:
        # A job queued before the issue was kept with the sitting has no "issue".
        issue = payload.get("issue")
        return cls(payload["series"], payload["title"], date.fromisoformat(payload["held_on"]),
                   payload["name"], payload["text"],
                   (str(issue["repo"]), int(issue["number"])) if issue else None)


class PublishFailed(Exception):
    """Publishing did not happen. The message is one sentence a chair may read (no
    secrets, no raw tool output) saying what went wrong and what to fix; `permanent`
    means trying again unchanged cannot succeed; `retry_at`, the earliest moment the
    service allows another try (a rate limit's `Retry-After` or reset), if it named one."""

    def __init__(self, message: str, *, permanent: bool,
                 retry_at: datetime | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_at = retry_at


class Target(Protocol):
    """One destination for notes."""

    @property
    def kind(self) -> str:
        """The outbox job kind this target carries out."""

    def label(self, series_id: str) -> str:
        """Where the series' notes go, for the chairs: no credentials in it."""

    async def publish(self, sitting: Sitting) -> str:
        """Publish the sitting's note unless it is there already; return what was done
        (a commit id, a URL). Raises PublishFailed."""

    async def check(self, series_id: str) -> str:
        """Try the series' settings live without changing anything (for `chatbot check
        --online`); say what was found. Raises PublishFailed."""


def job_kinds(publish: PublishConfig) -> list[str]:
    """The outbox job kinds a meeting with this `publish:` section queues at close."""
    return [kind for key, kind in TARGET_KINDS.items() if getattr(publish, key) is not None]


def target_settings(config: Config, series_id: str, target: str) -> Any | None:
    """The series' settings for one target (`git`, `github` …), None if it has none."""
    series = config.meeting(series_id)
    return getattr(series.publish, target) if series is not None else None


def required_settings(config: Config, series_id: str, target: str) -> Any:
    """As `target_settings`, for a job already queued: a target taken out of the config
    since is a failure that retrying cannot fix."""
    settings = target_settings(config, series_id, target)
    if settings is None:
        raise PublishFailed(f"meeting {series_id!r} no longer has `publish.{target}` in the "
                            "config", permanent=True)
    return settings
