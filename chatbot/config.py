"""The configuration file: one frozen, validated object.

Loading has no side effects. Any problem raises ConfigError whose message is a single
line naming the YAML path and what was expected.

The sections are msgspec structs (pydantic cost the running bot about 7 MB). msgspec
checks the shape; a value it cannot check itself is typed with a `_Checked` type,
which hands it to that type's check functions through `_decode`; checks across fields
sit in `__post_init__`.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import UnionType
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml

from chatbot.recurrence import Schedule, format_duration, parse_duration, parse_rule
from chatbot.render import compile_template, note_context, sample_record

_USER_ID = re.compile(r"@[^:\s]+:\S+")
# Room version 12 ids carry no server name (`!opaque`); aliases always do.
_ROOM = re.compile(r"#[^:\s]+:\S+|![^:\s]+(?::\S+)?")
_MEETING_ID = re.compile(r"[a-z0-9][a-z0-9-]*")
_START_FORMATS = ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S")


UTC_ZONE = ZoneInfo("UTC")


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the user."""


class _KeyError(ValueError):
    """A check across fields that blames one of them: `key` is its name under the section."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class _Checked(type):
    """A value type msgspec cannot check itself: `_decode` runs `checks` on the YAML value
    in turn, and the plain value they return (a `result`) is what the field holds."""

    result: type
    checks: tuple[Callable[[Any], Any], ...]

    def __instancecheck__(cls, value: object) -> bool:
        return isinstance(value, cls.result)


def _decode(kind: type, value: Any) -> Any:
    if isinstance(kind, _Checked):
        for check in kind.checks:
            value = check(value)
        return value
    if kind is ZoneInfo:
        return _zone(value)
    if kind is Path:
        if not isinstance(value, str):
            raise ValueError(f"expected a path as text, got {value!r}, which is not a valid path")
        return Path(value)
    raise NotImplementedError(kind)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected text")
    return value


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 45s, 10m, 1h30m or 7d, got {value!r}")
    return parse_duration(value)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("expected a duration longer than zero")
    return value


def _count(value: Any) -> int:
    # YAML gives whole numbers as int; true/false or 2.5 are mistakes, not counts.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


def _at_most(limit: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value > limit:
            raise ValueError(f"expected a whole number less than or equal to {limit}, "
                             f"got {value!r}")
        return value

    return check


def _pattern(pattern: re.Pattern[str], example: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"expected something like {example}, got {value!r}")
        return value

    return check


def _url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s<>()\[\]]+", value):
        raise ValueError(f"expected an http(s) URL without spaces, got {value!r}")
    return value


def _zone(value: Any) -> ZoneInfo:
    if isinstance(value, ZoneInfo):
        return value
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"expected an IANA time zone such as Europe/London or UTC, got {value!r}"
        ) from None


def _local_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise ValueError("expected local time without an offset; the zone is `timezone`")
        return value
    for layout in _START_FORMATS:
        try:
            return datetime.strptime(str(value).strip(), layout)
        except ValueError:
            continue
    raise ValueError(f"expected local time as 'YYYY-MM-DD HH:MM', got {value!r}")


_PATH_FIELDS = frozenset({"year", "date", "id"})
_MESSAGE_FIELDS = frozenset({"title", "date", "id"})
_SAMPLE_FIELDS = {"year": "2026", "date": "2026-06-18", "id": "team", "title": "Team"}


def _template_fields(value: str, allowed: frozenset[str]) -> set[str]:
    try:
        fields = {name for _, name, spec, _ in string.Formatter().parse(value)
                  if name is not None}
    except ValueError as error:
        raise ValueError(f"expected a template such as \"docs/meetings/{{year}}.md\" "
                         f"({error})") from None
    unknown = fields - allowed
    if unknown:
        known = " ".join(f"{{{name}}}" for name in sorted(allowed))
        raise ValueError(f"expected only {known} in the template, got "
                         f"{' '.join(f'{{{name}}}' for name in sorted(unknown))}")
    return fields


def _archive_path(value: str) -> str:
    _template_fields(value, _PATH_FIELDS)
    sample = value.format(**_SAMPLE_FIELDS)
    parts = sample.split("/")
    if (value.startswith("/") or "\\" in value or not sample.endswith(".md")
            or any(part in ("", ".", "..") for part in parts)):
        raise ValueError(f"expected a relative path inside the repository ending in .md, "
                         f"without `..`, such as docs/meetings/{{year}}.md, got {value!r}")
    return value


def _commit_message(value: str) -> str:
    _template_fields(value, _MESSAGE_FIELDS)
    if not value.strip():
        raise ValueError("expected a commit message")
    return value


def _person_name(value: str) -> str:
    # git refuses or mangles identities with these characters.
    if not value.strip() or any(c in value for c in "<>\n"):
        raise ValueError(f"expected a name without <, > or line breaks, got {value!r}")
    return value


def _email(value: str) -> str:
    if not re.fullmatch(r"[^\s<>@]+@[^\s<>@]+", value):
        raise ValueError(f"expected an email address such as chatbot@localhost, got {value!r}")
    return value


def _branch(value: str) -> str:
    if (not re.fullmatch(r"[A-Za-z0-9._/-]+", value) or value.startswith(("-", "/"))
            or ".." in value or value.endswith((".lock", "/", "."))):
        raise ValueError(f"expected a branch name such as main, got {value!r}")
    return value


def _git_remote(value: str) -> str:
    if (not value or value.strip() != value or any(c.isspace() for c in value)
            or value.startswith("-")):
        raise ValueError(f"expected a git URL without spaces, got {value!r}")
    if re.match(r"[a-z][a-z0-9+.-]*://[^/@]*:[^/@]*@", value, re.IGNORECASE):
        # Secrets never live in the YAML (it is shared, copied, and shown in logs).
        raise ValueError("expected a URL without a password in it; use an SSH remote "
                         "with `ssh_key_file`")
    return value


_ISSUE_TITLE_FIELDS = frozenset({"title", "date", "id"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _issue_title(value: str) -> str:
    _template_fields(value, _ISSUE_TITLE_FIELDS)
    if not value.format(**_SAMPLE_FIELDS).strip() or "\n" in value:
        raise ValueError("expected a one-line title such as \"{title}: {date}\"")
    return value


def _github_repo(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", value):
        raise ValueError(f"expected owner/name such as jupyterhub/team-compass, got {value!r}")
    return value


def _github_token_env(value: str) -> str:
    # GitHub's tokens start with these; a name that does is a pasted token.
    if not _ENV_NAME.fullmatch(value) or value.startswith(
            ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")):
        # Not echoed: a token pasted here by mistake must not reach the log.
        raise ValueError("expected the name of an environment variable such as "
                         "GITHUB_TOKEN, not the token itself")
    return value


def _label_name(value: str) -> str:
    # A comma would make it two labels in GitHub's `labels=` filter.
    if not value or "," in value or value.strip() != value or len(value) > 50:
        raise ValueError(f"expected one label's name of at most 50 characters, such as "
                         f"meeting-agenda, got {value!r}")
    return value


def _hackmd_token_env(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        # Not echoed: a token pasted here by mistake must not reach the log.
        raise ValueError("expected the name of an environment variable such as "
                         "HACKMD_TOKEN, not the token itself")
    return value


_TEAM_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_LISTEN = re.compile(r"(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})")
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def _listen(value: Any) -> str:
    expected = "expected HOST:PORT such as 127.0.0.1:8080, localhost:8080 or [::1]:8080"
    match = _LISTEN.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{expected}, got {value!r}")
    host = match["host"] if match["ipv6"] is None else match["ipv6"]
    if not _is_host(host, ipv6=match["ipv6"] is not None):
        raise ValueError(f"{expected}; {host!r} is not an IP address or host name")
    if not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"expected a port from 1 to 65535, got {match['port']}")
    return value


def _is_host(host: str, *, ipv6: bool) -> bool:
    # A host of digits and dots can only be an IPv4 address (999.1.1.1 is no name).
    if ipv6 or re.fullmatch(r"[\d.]+", host):
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address.version == (6 if ipv6 else 4)
    return _HOST_NAME.fullmatch(host) is not None


def _public_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s<>()\[\]?#\"']+", value):
        raise ValueError("expected the http(s) address people reach the web server at, "
                         f"without a query or fragment, such as https://meet.example.org, "
                         f"got {value!r}")
    return value.rstrip("/")


# Shorter retention would not save space worth having, and the ids of handled events
# must outlive any replay of them by far (see `chatbot.upkeep.prune_before`).
MIN_RETENTION = timedelta(days=1)


def _at_least_a_day(value: timedelta) -> timedelta:
    if value < MIN_RETENTION:
        raise ValueError(f"expected at least 1d, got {format_duration(value)}")
    return value


if TYPE_CHECKING:
    # mypy sees the plain type (a checked field holds a plain value).
    from typing import Annotated as Checked
else:
    class Checked:
        """`Checked[T, check, ...]`: a T that `_decode` gets from the YAML value by running
        the checks in turn, each given the one before's result."""

        def __class_getitem__(cls, params: tuple[Any, ...]) -> Any:
            result, *checks = params
            return _Checked("Checked", (), {"result": result, "checks": tuple(checks)})


Duration = Checked[timedelta, _duration]
PositiveDuration = Checked[timedelta, _duration, _positive]
Count = Checked[int, _count]
UserId = Checked[str, _text, _pattern(_USER_ID, "@someone:example.org")]
Url = Checked[str, _text, _url]


# No kw_only: msgspec applies it to the fields of the class that says it, not to subclasses'.
class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class MatrixConfig(_Frozen, frozen=True):
    homeserver: Url
    user_id: UserId
    password: str | None = None
    access_token: str | None = None
    device_name: str = "chatbot"

    def __post_init__(self) -> None:
        if not self.password and not self.access_token:
            raise ValueError("expected `password` (first login only) or `access_token`")


class Links(_Frozen, frozen=True):
    notes: Url | None = None
    issue: Url | None = None
    calendar: Url | None = None
    code_of_conduct: Url | None = None

    def by_name(self) -> dict[str, str | None]:
        """Each link by its key (`notes`, `issue` ...), as the note and the calendar use them."""
        return msgspec.structs.asdict(self)


class GitAuthor(_Frozen, frozen=True):
    """Who the archive's commits are by, as author and committer alike."""

    name: Checked[str, _text, _person_name] = "chatbot"
    email: Checked[str, _text, _email] = "chatbot@localhost"


class GitArchiveConfig(_Frozen, frozen=True):
    """`publish.git`: commit each sitting's note to a git repository and push it."""

    # Any URL `git` understands: git@host:org/repo.git, https://..., file:///srv/repo.git.
    remote: Checked[str, _text, _git_remote]
    # {year} {date} {id}: the sitting's year and date (a second sitting that day gets
    # -2 like its note file) and the meeting's `id`.
    path: Checked[str, _text, _archive_path]
    branch: Checked[str, _text, _branch] = "main"
    # prepend: newest sitting first in one file (per year, with {year}); file: one each.
    mode: Literal["prepend", "file"] = "prepend"
    message: Checked[str, _text, _commit_message] = "{title}: notes of {date}"
    author: GitAuthor = GitAuthor()
    # The private key for an SSH remote, read by ssh from this file; never the key itself.
    ssh_key_file: Path | None = None
    # true: each note on a branch of its own, `meeting/{id}/{date}`, and a pull request
    # into `branch` whose body closes the sitting's GitHub issue (needs publish.github).
    pull_request: bool = False
    # How long one git command may take before the attempt counts as failed (and is retried).
    timeout: PositiveDuration = timedelta(minutes=2)

    def __post_init__(self) -> None:
        if self.mode == "file" and "{date}" not in self.path:
            raise _KeyError("path", "expected {date} in the path with `mode: file` (one file "
                                    "per sitting), such as docs/meetings/{date}.md")


class GitHubIssueConfig(_Frozen, frozen=True):
    """`publish.github`: a GitHub issue per sitting, opened ahead, closed with the note."""

    repo: Checked[str, _text, _github_repo]
    # The token comes from the environment or a file, never from this file.
    token_env: Checked[str, _text, _github_token_env] | None = None
    token_file: Path | None = None
    # GitHub Enterprise: https://HOST/api/v3.
    api_url: Url = "https://api.github.com"
    issue_ahead: PositiveDuration = timedelta(days=7)
    # {title} {date} {id}: the meeting's title, the sitting's date and the meeting's `id`.
    title: Checked[str, _text, _issue_title] = "{title}: {date}"
    # Open issues and pull requests in `repo` with this label are the sitting's agenda
    # items too (polled with the comments), until it starts or they lose the label.
    agenda_label: Checked[str, _text, _label_name] | None = None

    def __post_init__(self) -> None:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("expected exactly one of `token_env` (an environment variable's "
                             "name) or `token_file` (a file holding the token)")


class HackMDConfig(_Frozen, frozen=True):
    """`publish.hackmd`: a shared notes page per sitting, made ahead from the note
    template; the bot keeps its marked regions current, and the final note is the page
    read back at the close."""

    # The token comes from the environment or a file, never from this file.
    token_env: Checked[str, _text, _hackmd_token_env] | None = None
    token_file: Path | None = None
    api_url: Url = "https://api.hackmd.io/v1"
    # A team workspace's path (hackmd.io/team/PATH); without it, the token's own.
    team: Checked[str, _text, _pattern(_TEAM_PATH, "a team's path such as jupyterhub")] \
        | None = None
    notes_ahead: PositiveDuration = timedelta(days=1)
    read: Literal["owner", "signed_in", "guest"] = "guest"
    write: Literal["owner", "signed_in", "guest"] = "signed_in"

    def __post_init__(self) -> None:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("expected exactly one of `token_env` (an environment variable's "
                             "name) or `token_file` (a file holding the token)")


class PublishConfig(_Frozen, frozen=True):
    """Where a meeting's note goes after the close, besides the room and the notes folder.

    One optional subsection per target.
    """

    # `github` first: the git archive's pull requests are opened through it.
    github: GitHubIssueConfig | None = None
    git: GitArchiveConfig | None = None
    hackmd: HackMDConfig | None = None

    def __post_init__(self) -> None:
        if self.git is not None and self.git.pull_request and self.github is None:
            raise _KeyError("git", "`pull_request: true` needs the GitHub target "
                                   "(publish.github) to open the pull request through; add "
                                   "it, or set `pull_request: false` to push to `branch`")


class MeetingConfig(_Frozen, frozen=True):
    id: Checked[str, _text, _pattern(_MEETING_ID, "hubs-team (lowercase letters, digits, -)")]
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    room: Checked[str, _text, _pattern(_ROOM, "#room:example.org or !roomid:example.org")]
    timezone: ZoneInfo
    start: Checked[datetime, _local_time]
    rrule: str | None = None
    duration: PositiveDuration = timedelta(minutes=60)
    reminders: tuple[PositiveDuration, ...] = ()
    grace: Duration = timedelta(minutes=30)
    # Each person's time in the update round (`!round`), in seconds.
    update_seconds: Checked[int, _count, _at_most(3600)] = 60
    # How long before each sitting regulars without an update get a direct message
    # (off unless set).
    nudge: PositiveDuration | None = None
    chairs: tuple[UserId, ...] = ()
    links: Links = Links()
    template: Path | None = None
    publish: PublishConfig = PublishConfig()
    # Keep every message of a sitting, from the start announcement to the close, and save
    # it beside the note as `<date>.log.md`.
    log: bool = False
    # Who may read the sittings' pages on the web server: `private` needs the link a
    # member gets with `!archive`; `public` is listed on `/` and readable by anyone.
    archive: Literal["private", "public"] = "private"
    # The meeting's own note template's text, or None for the standard note: read from
    # `template` and compiled by `parse_config` (no YAML key), so a later broken edit of
    # the file cannot break the closing of a meeting.
    template_source: str | None = None

    def __post_init__(self) -> None:
        if len(set(self.reminders)) != len(self.reminders):
            raise _KeyError("reminders", "expected each reminder lead time once")
        msgspec.structs.force_setattr(self, "reminders",
                                      tuple(sorted(self.reminders, reverse=True)))
        if self.rrule is not None:
            try:
                parse_rule(self.rrule, self.start, self.timezone)
            except (ValueError, TypeError) as error:
                raise _KeyError("rrule", f"expected an RFC 5545 rule such as "
                                         f"FREQ=MONTHLY;BYDAY=+3TH ({error})") from None

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.start, self.timezone, self.rrule, self.duration)


class HttpConfig(_Frozen, frozen=True):
    """The optional web server (calendar feeds, the archive): where it listens, and the
    address people reach it at (behind a reverse proxy, not the listening one)."""

    listen: Checked[str, _listen]
    public_url: Checked[str, _text, _public_url] | None = None

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].removeprefix("[").removesuffix("]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT`, as a link to the listening address."""
        return f"http://{self.listen}"

    @property
    def link_base(self) -> str:
        """Where links the bot hands out point: `public_url`, else the listening address."""
        return self.public_url or self.base_url


class EncryptionConfig(_Frozen, frozen=True):
    """End-to-end encryption: on by default; which devices of other people to trust."""

    enabled: bool = True
    # tofu: trust each device the first time it is seen, and warn when someone the bot
    # already knows adds a device or a device's keys change. all: trust every device.
    trust: Literal["tofu", "all"] = "tofu"
    # How long to wait for the key of a message the bot cannot read before saying so.
    key_wait: PositiveDuration = timedelta(minutes=2)


class JobsConfig(_Frozen, frozen=True):
    """How the bot retries what it owes (messages, the note file, scheduled work)."""

    # The longest wait between two attempts of a failing job; waits grow from 1 s.
    retry_cap: PositiveDuration = timedelta(seconds=15)
    # A job still failing this long after it was queued is parked: logged, counted
    # in /metrics and, for the note, told to the room; no longer retried.
    park_after: PositiveDuration = timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.retry_cap > self.park_after:
            raise ValueError("expected `retry_cap` no longer than `park_after`")


class RetentionConfig(_Frozen, frozen=True):
    """How long the bot keeps its bookkeeping, and stays in direct chats nobody uses."""

    # The ids of handled events (what stops a replay from counting twice), finished
    # outbox jobs and messages it could not decrypt. Meetings and notes are kept for good.
    events: Checked[timedelta, _duration, _at_least_a_day] = timedelta(days=30)
    # A direct chat nobody wrote in for this long is left (meeting rooms never are).
    direct_chats: Checked[timedelta, _duration, _at_least_a_day] = timedelta(days=30)


class LimitsConfig(_Frozen, frozen=True):
    """Flood control: commands per person per room, and what one meeting may hold."""

    # Each person may send `commands` commands per `per` in each room (a token
    # bucket: they come back continuously); then one "slow down" reply, then silence.
    commands: Count = 10
    per: PositiveDuration = timedelta(seconds=10)
    # Agenda items one meeting may hold (carried-over ones included).
    agenda_items: Count = 50
    # Entries one person may add to one meeting: updates, passes, celebrations,
    # agenda items, notes, action items and decisions together.
    entries_per_person: Count = 30


class Config(_Frozen, frozen=True):
    matrix: MatrixConfig
    meetings: Annotated[tuple[MeetingConfig, ...], msgspec.Meta(min_length=1)]
    data_dir: Path = Path("./data")
    command_prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=5,
                                                pattern=r"^\S+$")] = "!"
    http: HttpConfig | None = None
    allowed_inviters: tuple[UserId, ...] = ()
    encryption: EncryptionConfig = EncryptionConfig()
    jobs: JobsConfig = JobsConfig()
    retention: RetentionConfig = RetentionConfig()
    limits: LimitsConfig = LimitsConfig()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for meeting in self.meetings:
            if meeting.id in seen:
                raise _KeyError("meetings", f"expected unique meeting ids, {meeting.id!r} is "
                                            f"used twice")
            seen.add(meeting.id)

    def meeting(self, meeting_id: str) -> MeetingConfig | None:
        return next((m for m in self.meetings if m.id == meeting_id), None)


_UNKNOWN_KEY = "is not a known key (check the spelling against config.example.yaml)"
# msgspec's names for the shapes it expected, in the words of YAML.
_SHAPES = {
    "object": "a mapping of keys to values",
    "array": "a list",
    "str": "text",
    "bool": "true or false",
    "int": "a whole number",
    "float": "a number",
}


def _describe(error: msgspec.ValidationError, data: Any) -> str:
    """One line, `path: what was expected`, from msgspec's error for the parsed YAML `data`."""
    text, in_key, where = str(error), None, ""
    if located := re.fullmatch(r"(.*) - at (`key` in )?`\$(.*)`", text, re.DOTALL):
        text, in_key, where = located[1], located[2], located[3]
    # msgspec's path holds field names and list indices only: `$.meetings[0].links`.
    parts: list[str | int] = [int(index) if index else name for name, index
                              in re.findall(r"\.([^.\[]+)|\[(\d+)\]", where)]
    cause = error.__cause__
    if isinstance(cause, _KeyError):
        parts.append(cause.key)
    if in_key:
        # YAML reads `5:` or `null:` as a number or nothing, not as a key's name.
        mapping = _value_at(data, parts)
        key = next((key for key in mapping if not isinstance(key, str)), None) \
            if isinstance(mapping, dict) else None
        message = f"expected text for each key, got {key!r}"
    elif isinstance(cause, ValueError | TypeError):
        message = str(cause)
    elif match := re.fullmatch(r"Object missing required field `(.*)`", text, re.DOTALL):
        parts.append(match[1])
        message = "is required"
    elif match := re.fullmatch(r"Object contains unknown field `(.*)`", text, re.DOTALL):
        parts.append(match[1])
        message = _UNKNOWN_KEY
    else:
        message = _expected(text, parts, data)
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        # Keys come from the user's file; repr() keeps an odd one on one line.
        name = part if part.isprintable() else repr(part)
        path += f".{name}" if path else name
    message = " ".join(message.split("\n"))
    return f"{path}: {message}" if path else message


def _expected(text: str, parts: list[str | int], data: Any) -> str:
    """msgspec's own complaint about a value, said the way the checks say theirs."""
    got = repr(_value_at(data, parts))
    got = got if len(got) <= 60 else got[:57] + "..."
    choices = _choices(parts)
    if choices:
        *others, last = (repr(choice) for choice in choices)
        return f"expected {', '.join(others)} or {last}, got {got}" if others \
            else f"expected {last}, got {got}"
    if text == "Expected `array` of length >= 1":
        return "expected at least one entry"
    if match := re.fullmatch(r"Expected `str` of length ([<>])= (\d+)", text):
        bound = "at least" if match[1] == ">" else "at most"
        unit = "character" if match[2] == "1" else "characters"
        return f"expected text of {bound} {match[2]} {unit}, got {got}"
    if match := re.fullmatch(r"Expected `str` matching regex (.*)", text):
        pattern = match[1].replace("\\\\", "\\")
        return f"expected text that should match pattern {pattern}, got {got}"
    if match := re.fullmatch(r"Expected `(.*?)`, got `.*`", text):
        shapes = [_SHAPES.get(shape, shape) for shape in match[1].split(" | ")
                  if shape != "null"]
        return f"expected {' or '.join(shapes)}"
    return text[:1].lower() + text[1:]


def _value_at(data: Any, parts: list[str | int]) -> Any:
    """The YAML value at a path msgspec named (None if it is not there)."""
    for part in parts:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _choices(parts: list[str | int]) -> tuple[Any, ...]:
    """The values a `Literal` field at `parts` allows; () for any other field."""
    kind: Any = Config
    for part in parts:
        kind = _inner(kind)
        if isinstance(part, str):
            if not isinstance(kind, type) or not issubclass(kind, msgspec.Struct):
                return ()
            kind = get_type_hints(kind, include_extras=False).get(part)
    kind = _inner(kind)
    return get_args(kind) if get_origin(kind) is Literal else ()


def _inner(kind: Any) -> Any:
    """`X` from `X | None` and from `tuple[X, ...]`."""
    while get_origin(kind) in (tuple, Union, UnionType):
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    return kind


def parse_config(data: Any, *, base_dir: Path = Path(".")) -> Config:
    """Validate parsed YAML; a relative `data_dir` is taken relative to `base_dir`."""
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with `matrix` and `meetings` at the top level")
    meetings = data.get("meetings")
    for index, entry in enumerate(meetings if isinstance(meetings, list) else ()):
        if isinstance(entry, dict) and "template_source" in entry:
            # Read from `template`; the field is not for the YAML.
            raise ConfigError(f"meetings[{index}].template_source: {_UNKNOWN_KEY}")
    try:
        config = msgspec.convert(data, Config, dec_hook=_decode)
    except msgspec.ValidationError as error:
        raise ConfigError(_describe(error, data)) from None
    if not config.data_dir.is_absolute():
        config = msgspec.structs.replace(config, data_dir=base_dir / config.data_dir)
    meetings = []
    for index, meeting in enumerate(config.meetings):
        if meeting.template is not None:
            source = _load_template(meeting.template, base_dir, f"meetings[{index}].template")
            meeting = msgspec.structs.replace(meeting, template_source=source)
        meetings.append(_resolve_key_files(meeting, base_dir))
    return msgspec.structs.replace(config, meetings=tuple(meetings))


def _resolve_key_files(meeting: MeetingConfig, base_dir: Path) -> MeetingConfig:
    """Key files named relative to the config file are found from there, not from the cwd."""
    replace = msgspec.structs.replace
    git, github, hackmd = meeting.publish.git, meeting.publish.github, meeting.publish.hackmd
    update: dict[str, Any] = {}
    if git is not None and git.ssh_key_file is not None and not git.ssh_key_file.is_absolute():
        update["git"] = replace(git, ssh_key_file=base_dir / git.ssh_key_file)
    if github is not None and github.token_file is not None \
            and not github.token_file.is_absolute():
        update["github"] = replace(github, token_file=base_dir / github.token_file)
    if hackmd is not None and hackmd.token_file is not None \
            and not hackmd.token_file.is_absolute():
        update["hackmd"] = replace(hackmd, token_file=base_dir / hackmd.token_file)
    if not update:
        return meeting
    return replace(meeting, publish=replace(meeting.publish, **update))


def _load_template(template: Path, base_dir: Path, key: str) -> str:
    """Read and compile a meeting's note template, or say in one line what is wrong."""
    path = template if template.is_absolute() else base_dir / template
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {path} ({error.strerror or error})") from None
    from jinja2 import TemplateError, TemplateSyntaxError

    try:
        # Rendering a sample meeting also finds misspelt names, which compile fine.
        compile_template(source).render(note_context(sample_record(), UTC_ZONE, {}))
    except TemplateSyntaxError as error:
        raise ConfigError(f"{key}: {path}, line {error.lineno}: {error.message}") from None
    except TemplateError as error:
        raise ConfigError(f"{key}: {path}: {error.message or error}") from None
    except Exception as error:  # the trial render runs the operator's template code
        raise ConfigError(f"{key}: {path}: fails on a sample meeting ({error!r})") from None
    return source


def load_config(path: Path) -> Config:
    """Read and validate a YAML configuration file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; copy config.example.yaml and edit it, or pass -c PATH"
        ) from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}: {where}invalid YAML ({problem})") from None
    try:
        return parse_config(data, base_dir=path.resolve().parent)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
