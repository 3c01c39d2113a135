"""The configuration file: one frozen, validated object.

Loading has no side effects. Any problem raises ConfigError whose message is a single
line naming the YAML path and what was expected.
"""

from __future__ import annotations

import ipaddress
import re
import string
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

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


Count = Annotated[int, BeforeValidator(_count)]


def _pattern(pattern: re.Pattern[str], example: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"expected something like {example}, got {value!r}")
        return value

    return AfterValidator(check)


def _url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s<>()\[\]]+", value):
        raise ValueError(f"expected an http(s) URL without spaces, got {value!r}")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]
UserId = Annotated[str, _pattern(_USER_ID, "@someone:example.org")]
RoomRef = Annotated[str, _pattern(_ROOM, "#room:example.org or !roomid:example.org")]
Url = Annotated[str, AfterValidator(_url)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class MatrixConfig(_Frozen):
    homeserver: Url
    user_id: UserId
    password: str | None = None
    access_token: str | None = None
    device_name: str = "chatbot"

    @model_validator(mode="after")
    def _needs_credentials(self) -> MatrixConfig:
        if not self.password and not self.access_token:
            raise ValueError("expected `password` (first login only) or `access_token`")
        return self


class Links(_Frozen):
    notes: Url | None = None
    issue: Url | None = None
    calendar: Url | None = None
    code_of_conduct: Url | None = None


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


class GitAuthor(_Frozen):
    """Who the archive's commits are by, as author and committer alike."""

    name: Annotated[str, AfterValidator(_person_name)] = "chatbot"
    email: Annotated[str, AfterValidator(_email)] = "chatbot@localhost"


class GitArchiveConfig(_Frozen):
    """`publish.git`: commit each sitting's note to a git repository and push it."""

    # Any URL `git` understands: git@host:org/repo.git, https://..., file:///srv/repo.git.
    remote: Annotated[str, Field(min_length=1)]
    branch: Annotated[str, AfterValidator(_branch)] = "main"
    # prepend: newest sitting first in one file (per year, with {year}); file: one each.
    mode: Literal["prepend", "file"] = "prepend"
    # {year} {date} {id}: the sitting's year and date (a second sitting that day gets
    # -2 like its note file) and the meeting's `id`.
    path: Annotated[str, AfterValidator(_archive_path)]
    message: Annotated[str, AfterValidator(_commit_message)] = "{title}: notes of {date}"
    author: GitAuthor = GitAuthor()
    # The private key for an SSH remote, read by ssh from this file; never the key itself.
    ssh_key_file: Path | None = None
    # true: each note on a branch of its own, `meeting/{id}/{date}`, and a pull request
    # into `branch` whose body closes the sitting's GitHub issue (needs publish.github).
    pull_request: bool = False
    # How long one git command may take before the attempt counts as failed (and is retried).
    timeout: PositiveDuration = timedelta(minutes=2)

    @field_validator("remote")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if value.strip() != value or any(c.isspace() for c in value) or value.startswith("-"):
            raise ValueError(f"expected a git URL without spaces, got {value!r}")
        if re.match(r"[a-z][a-z0-9+.-]*://[^/@]*:[^/@]*@", value, re.IGNORECASE):
            # Secrets never live in the YAML (it is shared, copied, and shown in logs).
            raise ValueError("expected a URL without a password in it; use an SSH remote "
                             "with `ssh_key_file`")
        return value

    @field_validator("path")
    @classmethod
    def _one_file_each(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("mode") == "file" and "{date}" not in value:
            raise ValueError("expected {date} in the path with `mode: file` (one file per "
                             "sitting), such as docs/meetings/{date}.md")
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


class GitHubIssueConfig(_Frozen):
    """`publish.github`: a GitHub issue per sitting, opened ahead, closed with the note."""

    repo: Annotated[str, AfterValidator(_github_repo)]
    # The token comes from the environment or a file, never from this file.
    token_env: str | None = None
    token_file: Path | None = None
    # GitHub Enterprise: https://HOST/api/v3.
    api_url: Url = "https://api.github.com"
    issue_ahead: PositiveDuration = timedelta(days=7)
    # {title} {date} {id}: the meeting's title, the sitting's date and the meeting's `id`.
    title: Annotated[str, AfterValidator(_issue_title)] = "{title}: {date}"
    # Open issues and pull requests in `repo` with this label are the sitting's agenda
    # items too (polled with the comments), until it starts or they lose the label.
    agenda_label: Annotated[str, Field(min_length=1, max_length=50)] | None = None

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        # GitHub's tokens start with these; a name that does is a pasted token.
        if value is not None and (not _ENV_NAME.fullmatch(value) or value.startswith(
                ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"))):
            # Not echoed: a token pasted here by mistake must not reach the log.
            raise ValueError("expected the name of an environment variable such as "
                             "GITHUB_TOKEN, not the token itself")
        return value

    @field_validator("agenda_label")
    @classmethod
    def _label_name(cls, value: str | None) -> str | None:
        # A comma would make it two labels in GitHub's `labels=` filter.
        if value is not None and ("," in value or value.strip() != value):
            raise ValueError(f"expected one label's name, such as meeting-agenda, got "
                             f"{value!r}")
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> GitHubIssueConfig:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("expected exactly one of `token_env` (an environment variable's "
                             "name) or `token_file` (a file holding the token)")
        return self


_TEAM_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class HackMDConfig(_Frozen):
    """`publish.hackmd`: a shared notes page per sitting, made ahead from the note
    template; the bot keeps its marked regions current, and the final note is the page
    read back at the close."""

    # The token comes from the environment or a file, never from this file.
    token_env: str | None = None
    token_file: Path | None = None
    api_url: Url = "https://api.hackmd.io/v1"
    # A team workspace's path (hackmd.io/team/PATH); without it, the token's own.
    team: Annotated[str, _pattern(_TEAM_PATH, "a team's path such as jupyterhub")] | None \
        = None
    notes_ahead: PositiveDuration = timedelta(days=1)
    read: Literal["owner", "signed_in", "guest"] = "guest"
    write: Literal["owner", "signed_in", "guest"] = "signed_in"

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            # Not echoed: a token pasted here by mistake must not reach the log.
            raise ValueError("expected the name of an environment variable such as "
                             "HACKMD_TOKEN, not the token itself")
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> HackMDConfig:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("expected exactly one of `token_env` (an environment variable's "
                             "name) or `token_file` (a file holding the token)")
        return self


class PublishConfig(_Frozen):
    """Where a meeting's note goes after the close, besides the room and the notes folder.

    One optional subsection per target.
    """

    # `github` first: the git archive's pull requests are opened through it.
    github: GitHubIssueConfig | None = None
    git: GitArchiveConfig | None = None
    hackmd: HackMDConfig | None = None

    @field_validator("git")
    @classmethod
    def _pull_request_needs_github(cls, value: GitArchiveConfig | None,
                                   info: ValidationInfo) -> GitArchiveConfig | None:
        if value is not None and value.pull_request and info.data.get("github") is None:
            raise ValueError("`pull_request: true` needs the GitHub target (publish.github) "
                             "to open the pull request through; add it, or set "
                             "`pull_request: false` to push to `branch`")
        return value


class MeetingConfig(_Frozen):
    id: Annotated[str, _pattern(_MEETING_ID, "hubs-team (lowercase letters, digits, -)")]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    room: RoomRef
    timezone: ZoneInfo
    start: datetime
    rrule: str | None = None
    duration: PositiveDuration = timedelta(minutes=60)
    reminders: tuple[PositiveDuration, ...] = ()
    grace: Duration = timedelta(minutes=30)
    # Each person's time in the update round (`!round`), in seconds.
    update_seconds: Annotated[Count, Field(le=3600)] = 60
    # How long before each sitting regulars without an update get a direct message
    # (off unless set).
    nudge: PositiveDuration | None = None
    chairs: tuple[UserId, ...] = ()
    links: Links = Links()
    template: Path | None = None
    publish: PublishConfig = PublishConfig()
    # Keep every message of a sitting, from the start announcement to the close, and save
    # it beside the note as `<date>.log.md`.
    log: StrictBool = False
    # Who may read the sittings' pages on the web server: `private` needs the link a
    # member gets with `!archive`; `public` is listed on `/` and readable by anyone.
    archive: Literal["private", "public"] = "private"
    # The template's text, read and compiled when the file is loaded, so a later
    # broken edit of the file cannot break the closing of a meeting.
    _template_source: str | None = PrivateAttr(default=None)

    @field_validator("timezone", mode="before")
    @classmethod
    def _zone(cls, value: Any) -> ZoneInfo:
        if isinstance(value, ZoneInfo):
            return value
        try:
            return ZoneInfo(str(value))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"expected an IANA time zone such as Europe/London or UTC, got {value!r}"
            ) from None

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, value: Any) -> datetime:
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

    @field_validator("reminders")
    @classmethod
    def _distinct(cls, value: tuple[timedelta, ...]) -> tuple[timedelta, ...]:
        if len(set(value)) != len(value):
            raise ValueError("expected each reminder lead time once")
        return tuple(sorted(value, reverse=True))

    @field_validator("rrule")
    @classmethod
    def _rule_parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        start, zone = info.data.get("start"), info.data.get("timezone")
        if value is not None and start is not None:
            try:
                parse_rule(value, start, zone)
            except (ValueError, TypeError) as error:
                raise ValueError(
                    f"expected an RFC 5545 rule such as FREQ=MONTHLY;BYDAY=+3TH ({error})"
                ) from None
        return value

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.start, self.timezone, self.rrule, self.duration)

    @property
    def template_source(self) -> str | None:
        """The meeting's own note template, or None for the standard note."""
        return self._template_source


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


class HttpConfig(_Frozen):
    """The optional web server (calendar feeds, the archive): where it listens, and the
    address people reach it at (behind a reverse proxy, not the listening one)."""

    listen: Annotated[str, BeforeValidator(_listen)]
    public_url: Annotated[str, AfterValidator(_public_url)] | None = None

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


class EncryptionConfig(_Frozen):
    """End-to-end encryption: on by default; which devices of other people to trust."""

    enabled: bool = True
    # tofu: trust each device the first time it is seen, and warn when someone the bot
    # already knows adds a device or a device's keys change. all: trust every device.
    trust: Literal["tofu", "all"] = "tofu"
    # How long to wait for the key of a message the bot cannot read before saying so.
    key_wait: PositiveDuration = timedelta(minutes=2)


class JobsConfig(_Frozen):
    """How the bot retries what it owes (messages, the note file, scheduled work)."""

    # The longest wait between two attempts of a failing job; waits grow from 1 s.
    retry_cap: PositiveDuration = timedelta(seconds=15)
    # A job still failing this long after it was queued is parked: logged, counted
    # in /metrics and, for the note, told to the room; no longer retried.
    park_after: PositiveDuration = timedelta(hours=24)

    @model_validator(mode="after")
    def _cap_below_parking(self) -> JobsConfig:
        if self.retry_cap > self.park_after:
            raise ValueError("expected `retry_cap` no longer than `park_after`")
        return self


# Shorter retention would not save space worth having, and the ids of handled events
# must outlive any replay of them by far (see `chatbot.upkeep.prune_before`).
MIN_RETENTION = timedelta(days=1)


def _at_least_a_day(value: timedelta) -> timedelta:
    if value < MIN_RETENTION:
        raise ValueError(f"expected at least 1d, got {format_duration(value)}")
    return value


Retention = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_at_least_a_day)]


class RetentionConfig(_Frozen):
    """How long the bot keeps its bookkeeping, and stays in direct chats nobody uses."""

    # The ids of handled events (what stops a replay from counting twice), finished
    # outbox jobs and messages it could not decrypt. Meetings and notes are kept for good.
    events: Retention = timedelta(days=30)
    # A direct chat nobody wrote in for this long is left (meeting rooms never are).
    direct_chats: Retention = timedelta(days=30)


class LimitsConfig(_Frozen):
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


class Config(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    matrix: MatrixConfig
    data_dir: Path = Path("./data")
    command_prefix: Annotated[str, Field(min_length=1, max_length=5, pattern=r"^\S+$")] = "!"
    meetings: Annotated[tuple[MeetingConfig, ...], Field(min_length=1)]
    http: HttpConfig | None = None
    allowed_inviters: tuple[UserId, ...] = ()
    encryption: EncryptionConfig = EncryptionConfig()
    jobs: JobsConfig = JobsConfig()
    retention: RetentionConfig = RetentionConfig()
    limits: LimitsConfig = LimitsConfig()

    @field_validator("meetings")
    @classmethod
    def _unique_ids(cls, value: tuple[MeetingConfig, ...]) -> tuple[MeetingConfig, ...]:
        seen: set[str] = set()
        for meeting in value:
            if meeting.id in seen:
                raise ValueError(f"expected unique meeting ids, {meeting.id!r} is used twice")
            seen.add(meeting.id)
        return value

    def meeting(self, meeting_id: str) -> MeetingConfig | None:
        return next((m for m in self.meetings if m.id == meeting_id), None)


_FRIENDLY = {
    "missing": "is required",
    "extra_forbidden": "is not a known key (check the spelling against config.example.yaml)",
    "string_type": "expected text",
    "dict_type": "expected a mapping of keys to values",
    "model_type": "expected a mapping of keys to values",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "too_short": "expected at least one entry",
    "bool_type": "expected true or false",
}


def _describe(error: ErrorDetails) -> str:
    path = ""
    for part in error["loc"]:
        # Keys come from the user's file; repr() keeps an odd one on one line.
        name = str(part) if str(part).isprintable() else repr(str(part))
        path += f"[{part}]" if isinstance(part, int) else (f".{name}" if path else name)
    message = _FRIENDLY.get(error["type"])
    if message is None:
        message = str(error["msg"]).removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        if error["type"] not in ("value_error", "assertion_error") and "input" in error:
            got = repr(error["input"])
            message += f", got {got if len(got) <= 60 else got[:57] + '...'}"
    return f"{path}: {message}" if path else message


def parse_config(data: Any, *, base_dir: Path = Path(".")) -> Config:
    """Validate parsed YAML; a relative `data_dir` is taken relative to `base_dir`."""
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with `matrix` and `meetings` at the top level")
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error.errors()[0])) from None
    if not config.data_dir.is_absolute():
        config = config.model_copy(update={"data_dir": base_dir / config.data_dir})
    for index, meeting in enumerate(config.meetings):
        if meeting.template is not None:
            _load_template(meeting, base_dir, f"meetings[{index}].template")
    return _resolve_key_files(config, base_dir)


def _resolve_key_files(config: Config, base_dir: Path) -> Config:
    """Key files named relative to the config file are found from there, not from the cwd."""
    meetings = []
    for meeting in config.meetings:
        git = meeting.publish.git
        github = meeting.publish.github
        hackmd = meeting.publish.hackmd
        update: dict[str, Any] = {}
        if git is not None and git.ssh_key_file is not None \
                and not git.ssh_key_file.is_absolute():
            update["git"] = git.model_copy(
                update={"ssh_key_file": base_dir / git.ssh_key_file})
        if github is not None and github.token_file is not None \
                and not github.token_file.is_absolute():
            update["github"] = github.model_copy(
                update={"token_file": base_dir / github.token_file})
        if hackmd is not None and hackmd.token_file is not None \
                and not hackmd.token_file.is_absolute():
            update["hackmd"] = hackmd.model_copy(
                update={"token_file": base_dir / hackmd.token_file})
        if update:
            publish = meeting.publish.model_copy(update=update)
            source = meeting.template_source
            meeting = meeting.model_copy(update={"publish": publish})
            meeting._template_source = source
        meetings.append(meeting)
    return config.model_copy(update={"meetings": tuple(meetings)})


def _load_template(meeting: MeetingConfig, base_dir: Path, key: str) -> None:
    """Read and compile a meeting's note template, or say in one line what is wrong."""
    assert meeting.template is not None
    path = meeting.template if meeting.template.is_absolute() else base_dir / meeting.template
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
    meeting._template_source = source


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
