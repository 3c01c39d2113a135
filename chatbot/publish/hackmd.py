"""The meeting's shared notes page on HackMD: the bot's regions of it, and the API client.

The bot owns only marked regions of the page, each between `<!-- chatbot:NAME -->` and
`<!-- /chatbot:NAME -->`; every byte outside them is the team's and is written back
exactly as read. Text a person types *inside* a region is the bot's to replace at its
next write, so the note template should keep people's space (discussion bullets under
an agenda heading) just outside the markers. A region whose marker a person deleted or
moved is given up, never re-inserted: see `find_regions` and `merge_regions`. At close,
`final_note` is the page as the team left it, markers removed.

The region logic is pure; `HackMDClient` is the only part that talks to HackMD (REST
API v1, https://hackmd.io/@hackmd-api/developer-portal).

What HackMD documents, and what follows from it:

* Bearer token auth; a personal token from Settings > API.
* 100 calls per 5 minutes and a monthly quota (2,000 on the free plan), with the
  headers `X-RateLimit-UserLimit`, `X-RateLimit-UserRemaining` and
  `X-RateLimit-UserReset` (Unix time the window resets); past either limit, 429.
* An `ETag` on `GET /notes/{id}`; `If-None-Match` answers 304 when the note is unchanged.
  HackMD documents no conditional write (`If-Match` on `PATCH`), so a write cannot be
  made atomic. The client therefore reads, merges into what it read, asks once more
  with `If-None-Match` whether the page moved meanwhile (a 304 costs a call but no
  body), and only then patches; if the page moved it merges into the newer page and
  asks again. What remains is the one round trip between that check and the patch.
* `PATCH` answers 202 with no body, so the new ETag is unknown until the next read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from chatbot.publish.github import network_errors

if TYPE_CHECKING:  # imported when a client is made: `chatbot notes` and `check` never need it
    import aiohttp

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.hackmd.io/v1"
Permission = Literal["owner", "signed_in", "guest"]
PERMISSIONS: tuple[str, ...] = ("owner", "signed_in", "guest")

# ---------------------------------------------------------------------------------
# Regions (pure)
# ---------------------------------------------------------------------------------

REGION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Tolerant of the spacing people's editors produce, strict about the name, so a marker
# a person mangled beyond that is plain text to the bot.
MARKER = re.compile(r"<!--[ \t]*(/?)chatbot:([A-Za-z0-9][A-Za-z0-9_.-]*)[ \t]*-->")


def open_marker(name: str) -> str:
    return f"<!-- chatbot:{name} -->"


def close_marker(name: str) -> str:
    return f"<!-- /chatbot:{name} -->"


def region_block(name: str, body: str) -> str:
    """A whole region as the bot writes it, markers included, ending in a newline."""
    return open_marker(name) + _inner(body) + close_marker(name) + "\n"


def _inner(body: str) -> str:
    body = body.strip("\n")
    return "\n" + body + "\n" if body else "\n"


@dataclass(frozen=True, slots=True)
class _Marker:
    start: int
    end: int
    closing: bool
    name: str


@dataclass(frozen=True, slots=True)
class Span:
    """Where a region's body sits: `text[inner_start:inner_end]`, between its markers."""

    open_start: int
    inner_start: int
    inner_end: int
    close_end: int


@dataclass(frozen=True, slots=True)
class PageRegions:
    """The regions found on a page. `spans` are the ones the bot may rewrite; `problems`
    names each region it may not, and why (a person deleted or moved a marker)."""

    spans: Mapping[str, Span]
    problems: Mapping[str, str]
    duplicated: frozenset[str]


def find_regions(text: str) -> PageRegions:
    """The regions on `text`.

    A region is owned when its first opening marker is followed by its closing marker
    with no other chatbot marker between them. Otherwise it is left alone: an opening
    marker without its close (or the reverse) means a person deleted one and the bot
    cannot tell where its region ends; markers of two regions interleaved means one was
    moved into the other. A second complete pair of the same name (a pasted copy) is
    the team's text; only the first is the bot's.
    """
    markers = [_Marker(m.start(), m.end(), bool(m.group(1)), m.group(2))
               for m in MARKER.finditer(text)]
    spans: dict[str, Span] = {}
    problems: dict[str, str] = {}
    duplicated: set[str] = set()
    for name in dict.fromkeys(m.name for m in markers):
        opens = [i for i, m in enumerate(markers) if m.name == name and not m.closing]
        if not opens:
            problems[name] = "its opening marker is missing"
            continue
        first = opens[0]
        close = next((i for i in range(first + 1, len(markers))
                      if markers[i].name == name and markers[i].closing), None)
        if close is None:
            problems[name] = "its closing marker is missing"
            continue
        if close != first + 1:
            problems[name] = "another region's marker sits inside it"
            continue
        spans[name] = Span(markers[first].start, markers[first].end,
                           markers[close].start, markers[close].end)
        if len(opens) > 1:
            duplicated.add(name)
    return PageRegions(spans, problems, frozenset(duplicated))


@dataclass(frozen=True, slots=True)
class Merge:
    """The page with the bot's regions rewritten, and which regions could not be."""

    text: str
    written: tuple[str, ...]
    inserted: tuple[str, ...]
    skipped: Mapping[str, str]


def merge_regions(page_text: str, regions: Mapping[str, str], *,
                  insert_before: str | None = None,
                  placed: Collection[str] = ()) -> Merge:
    """Rewrite the bodies of `regions` on `page_text`; nothing outside them changes.

    A region absent from the page is not put back when it is in `placed` (the bot wrote
    it before, so a person removed it: that part of the page is theirs now) or when
    there is no `insert_before`. Otherwise, as for an agenda item added after the page
    was made, it is inserted as a whole block just before the `insert_before` region's
    opening marker, so text people typed around existing regions stays where it was.
    """
    found = find_regions(page_text)
    skipped: dict[str, str] = {}
    replace: list[tuple[Span, str]] = []
    new_blocks: list[str] = []
    for name, body in regions.items():
        if not REGION_NAME.fullmatch(name):
            raise ValueError(f"not a region name: {name!r}")
        span = found.spans.get(name)
        if span is not None:
            replace.append((span, _inner(body)))
        elif name in found.problems:
            skipped[name] = found.problems[name]
        elif name in placed:
            skipped[name] = "a person removed it from the page"
        elif insert_before is not None and insert_before in found.spans:
            new_blocks.append(region_block(name, body))
        else:
            skipped[name] = "it is not on the page"
    if new_blocks:
        anchor = found.spans[insert_before]  # type: ignore[index]
        replace.append((Span(anchor.open_start, anchor.open_start, anchor.open_start,
                             anchor.open_start), "".join(new_blocks)))
    pieces: list[str] = []
    at = 0
    for span, inner in sorted(replace, key=lambda item: item[0].inner_start):
        pieces.append(page_text[at:span.inner_start])
        pieces.append(inner)
        at = span.inner_end
    pieces.append(page_text[at:])
    inserted = tuple(n for n in regions
                     if n not in found.spans and n not in skipped)
    written = tuple(n for n in regions if n in found.spans)
    return Merge("".join(pieces), written, inserted, skipped)


def render_regions(page_text: str, regions: Mapping[str, str]) -> str:
    """`page_text` with the bodies of `regions` rewritten in place; see `merge_regions`."""
    return merge_regions(page_text, regions).text


def region_bodies(page_text: str) -> dict[str, str]:
    """The body of every owned region, as it stands on the page."""
    found = find_regions(page_text)
    return {name: page_text[s.inner_start:s.inner_end].strip("\n")
            for name, s in found.spans.items()}


_MARKER_LINE = re.compile(r"^[ \t]*" + MARKER.pattern + r"[ \t]*(?:\r?\n|\Z)", re.MULTILINE)


def final_note(page_text: str) -> str:
    """The note as the team left the page, for posting and archiving: every chatbot
    marker removed (a line holding only a marker goes with it), every other byte kept."""
    return MARKER.sub("", _MARKER_LINE.sub("", page_text))


def regions_digest(regions: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(regions.items())).encode()).hexdigest()


# ---------------------------------------------------------------------------------
# Write pacing (pure)
# ---------------------------------------------------------------------------------

WRITE_INTERVAL = timedelta(minutes=1)


@dataclass
class WriteThrottle:
    """At most one write per note per `interval`, and none when nothing changed."""

    interval: timedelta = WRITE_INTERVAL
    _last: dict[str, tuple[datetime, str]] = field(default_factory=dict)

    def unchanged(self, note_id: str, digest: str) -> bool:
        last = self._last.get(note_id)
        return last is not None and last[1] == digest

    def not_before(self, note_id: str, now: datetime) -> datetime | None:
        """When the next write may go, or None when it may go now."""
        last = self._last.get(note_id)
        if last is None or now - last[0] >= self.interval:
            return None
        return last[0] + self.interval

    def wrote(self, note_id: str, digest: str, now: datetime) -> None:
        self._last[note_id] = (now, digest)

    def settled(self, note_id: str, digest: str) -> None:
        """The page already says `digest` though nothing was written: no pacing due."""
        last = self._last.get(note_id)
        self._last[note_id] = (last[0] if last else datetime.min.replace(tzinfo=UTC),
                               digest)


# ---------------------------------------------------------------------------------
# Errors, secrets, rate-limit bookkeeping
# ---------------------------------------------------------------------------------

class HackMDError(Exception):
    """A HackMD call failed; `str()` is safe to log and to tell a chair."""


class HackMDTransient(HackMDError):
    """Worth retrying later: network, 5xx, 429. `retry_at` is the earliest useful time
    when HackMD said it (the rate-limit window's reset), else None (use backoff)."""

    def __init__(self, message: str, retry_at: datetime | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class HackMDPermanent(HackMDError):
    """Retrying will not help until a person fixes something; the message says what."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HackMDToken:
    """An API token whose repr and str never show it."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "given") -> None:
        value = value.strip()
        if not value:
            raise ValueError(f"the HackMD token from {source} is empty")
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"HackMDToken(<hidden, from {self.source}>)"

    __str__ = __repr__

    @classmethod
    def load(cls, *, env: str | None = None, file: str | Path | None = None,
             environ: Mapping[str, str] = os.environ) -> HackMDToken:
        """From the environment variable `env`, else the file `file`."""
        if env:
            value = environ.get(env, "")
            if value.strip():
                return cls(value, f"${env}")
            if file is None:
                raise ValueError(f"the environment variable {env} holding the HackMD "
                                 "token is not set")
        if file is not None:
            try:
                return cls(Path(file).read_text(), f"file {file}")
            except OSError as error:
                raise ValueError(f"cannot read the HackMD token file {file}: "
                                 f"{error.strerror}") from None
        raise ValueError("no HackMD token: name token_env or token_file")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """HackMD's last word on the current 5-minute window (documented headers)."""

    limit: int
    remaining: int
    reset_at: datetime

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimit | None:
        try:
            return cls(int(headers["X-RateLimit-UserLimit"]),
                       int(headers["X-RateLimit-UserRemaining"]),
                       datetime.fromtimestamp(int(float(headers["X-RateLimit-UserReset"])),
                                              UTC))
        except (KeyError, ValueError, OverflowError):
            return None


# ---------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Note:
    id: str
    title: str
    content: str
    publish_link: str
    read_permission: str
    write_permission: str
    team_path: str | None
    last_changed_at: float | None
    etag: str | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any], etag: str | None) -> Note:
        return cls(id=str(data["id"]), title=str(data.get("title") or ""),
                   content=str(data.get("content") or ""),
                   publish_link=str(data.get("publishLink") or ""),
                   read_permission=str(data.get("readPermission") or ""),
                   write_permission=str(data.get("writePermission") or ""),
                   team_path=data.get("teamPath"),
                   last_changed_at=data.get("lastChangedAt"), etag=etag)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What `write_regions` did. `outcome`: "written"; "unchanged" (same regions as the
    last write, no call made); "already" (the page already says it, read only);
    "deferred" (written less than a minute ago: call again at `not_before`)."""

    outcome: Literal["written", "unchanged", "already", "deferred"]
    not_before: datetime | None = None
    skipped: Mapping[str, str] = field(default_factory=dict)
    inserted: tuple[str, ...] = ()
    placed: frozenset[str] = frozenset()


CONFLICT_ROUNDS = 5


class HackMDClient:
    """HackMD REST API v1 over aiohttp. Raises `HackMDTransient` or `HackMDPermanent`;
    retrying is the caller's (the durable job's) business, except re-merging when the
    page moves under a write."""

    def __init__(self, token: HackMDToken, api_url: str = DEFAULT_API_URL, *,
                 session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 throttle: WriteThrottle | None = None,
                 timeout: float = 30) -> None:
        self._token = token
        self.api_url = api_url.rstrip("/")
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self.throttle = throttle or WriteThrottle()
        import aiohttp

        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.rate_limit: RateLimit | None = None
        self.calls_made = 0
        self._placed: dict[str, set[str]] = {}

    def __repr__(self) -> str:
        return f"HackMDClient({self.api_url!r}, token={self._token!r})"

    async def __aenter__(self) -> HackMDClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def calls_left(self) -> int | None:
        """Calls left in HackMD's current 5-minute window, as it last said; None before
        the first answer. (The monthly quota has no documented header: see `calls_made`.)"""
        if self.rate_limit is None:
            return None
        if self.rate_limit.reset_at <= self._clock():
            return self.rate_limit.limit
        return self.rate_limit.remaining

    # -- API calls ------------------------------------------------------------------

    async def whoami(self) -> dict[str, Any]:
        """`GET /me`: checks the token works (for `chatbot check --online`)."""
        _, _, data = await self._call("GET", "/me", what="check the token")
        return dict(data)

    async def create_note(self, title: str, content: str, read: Permission,
                          write: Permission, team: str | None = None, *,
                          key: str | None = None) -> Note:
        """A new note in the user's workspace, or in `team`'s.

        With `key` (say "chatbot hubs-team 2026-12-03"), creating is idempotent: the key
        goes in the note's description, and a note already carrying it (made by an
        attempt whose answer was lost) is returned instead of a second one. That costs
        one listing call per creation.
        """
        for label, value in (("read", read), ("write", write)):
            if value not in PERMISSIONS:
                raise ValueError(f"{label} permission must be one of {PERMISSIONS}, "
                                 f"not {value!r}")
        if key is not None:
            _, _, listed = await self._call("GET", self._notes_path(team),
                                            what=f"list notes in {_workspace(team)}",
                                            team=team)
            for item in listed if isinstance(listed, list) else []:
                if isinstance(item, dict) and item.get("description") == key:
                    log.info("HackMD note %s for %s exists already", item.get("id"), key)
                    return await self.read_note(str(item["id"]), team)
        body = {"title": title, "content": content,
                "readPermission": read, "writePermission": write}
        if key is not None:
            body["description"] = key
        status, headers, data = await self._call(
            "POST", self._notes_path(team), json_body=body,
            what=f"create a note in {_workspace(team)}", team=team)
        if status == 207:
            # Documented: the note was made, something secondary failed; never retry.
            log.warning("HackMD made note %s with a partial failure: %s",
                        data.get("note", {}).get("id"), data.get("error"))
            data = data.get("note", {})
        note = Note.from_api(data, headers.get("ETag"))
        self._placed[note.id] = set(region_bodies(content))
        return note

    async def read_note(self, note_id: str, team: str | None = None) -> Note:
        _, headers, data = await self._call(
            "GET", self._note_path(note_id, team), what=f"read note {note_id}",
            team=team, note_id=note_id)
        return Note.from_api(data, headers.get("ETag"))

    async def delete_note(self, note_id: str, team: str | None = None) -> None:
        await self._call("DELETE", self._note_path(note_id, team),
                         what=f"delete note {note_id}", team=team, note_id=note_id)

    async def write_regions(self, note_id: str, regions: Mapping[str, str], *,
                            team: str | None = None,
                            insert_before: str | None = None,
                            placed: Collection[str] | None = None) -> WriteResult:
        """Merge `regions` into the page as it is now and write it, at most once a
        minute and only when the regions changed since the last write.

        `placed` names the regions the bot has put on this page before (stored with the
        note id); one of them missing now was removed by a person and is not put back.
        Without it, the regions seen on the page since this client first read it count.
        The result's `placed` is the set to store."""
        digest = regions_digest(regions)
        if self.throttle.unchanged(note_id, digest):
            return WriteResult("unchanged")
        wait = self.throttle.not_before(note_id, self._clock())
        if wait is not None:
            return WriteResult("deferred", not_before=wait)
        note = await self.read_note(note_id, team)
        remembered = self._placed.setdefault(note_id, set())
        remembered.update(placed if placed is not None else region_bodies(note.content))
        placed = remembered
        for _ in range(CONFLICT_ROUNDS):
            merge = merge_regions(note.content, regions, insert_before=insert_before,
                                  placed=placed)
            if merge.text == note.content:
                self.throttle.settled(note_id, digest)
                return WriteResult("already", skipped=merge.skipped,
                                   placed=frozenset(remembered))
            moved = await self._changed_since(note, team)
            if moved is not None:
                log.info("HackMD note %s changed while the bot merged; merging again",
                         note_id)
                note = moved
                continue
            await self._call("PATCH", self._note_path(note_id, team),
                             json_body={"content": merge.text},
                             what=f"write note {note_id}", team=team, note_id=note_id)
            self.throttle.wrote(note_id, digest, self._clock())
            remembered.update(merge.written + merge.inserted)
            for name, why in merge.skipped.items():
                log.warning("HackMD note %s: region %s left to people: %s",
                            note_id, name, why)
            return WriteResult("written", skipped=merge.skipped, inserted=merge.inserted,
                               placed=frozenset(remembered))
        raise HackMDTransient(f"HackMD note {note_id} kept changing while the bot tried "
                              "to write it; will try again")

    async def _changed_since(self, note: Note, team: str | None) -> Note | None:
        """The newer page if it moved since `note` was read, else None."""
        if note.etag is None:
            # Without an ETag nothing cheap tells; compare what the documented fields say.
            fresh = await self.read_note(note.id, team)
            same = (fresh.content == note.content
                    and fresh.last_changed_at == note.last_changed_at)
            return None if same else fresh
        status, headers, data = await self._call(
            "GET", self._note_path(note.id, team), headers={"If-None-Match": note.etag},
            what=f"read note {note.id}", team=team, note_id=note.id, allow_304=True)
        if status == 304:
            return None
        return Note.from_api(data, headers.get("ETag"))

    # -- plumbing ---------------------------------------------------------------------

    def _notes_path(self, team: str | None) -> str:
        return f"/teams/{_quote(team)}/notes" if team else "/notes"

    def _note_path(self, note_id: str, team: str | None) -> str:
        return f"{self._notes_path(team)}/{_quote(note_id)}"

    async def _call(self, method: str, path: str, *, what: str,
                    json_body: Mapping[str, Any] | None = None,
                    headers: Mapping[str, str] | None = None,
                    team: str | None = None, note_id: str | None = None,
                    allow_304: bool = False) -> tuple[int, Mapping[str, str], Any]:
        now = self._clock()
        limit = self.rate_limit
        if limit is not None and limit.remaining <= 0 and limit.reset_at > now:
            # Spending a call on a certain 429 would only push the quota further.
            raise HackMDTransient(f"HackMD rate limit reached; cannot {what} before "
                                  f"{limit.reset_at:%H:%M:%S} UTC", retry_at=limit.reset_at)
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession()
        sent = {"Authorization": f"Bearer {self._token.reveal()}",
                "Accept": "application/json", **(headers or {})}
        self.calls_made += 1
        try:
            async with self._session.request(method, self.api_url + path, json=json_body,
                                             headers=sent, timeout=self._timeout) as answer:
                raw = await answer.read()
                status, answer_headers = answer.status, answer.headers
        except network_errors() as error:
            raise HackMDTransient(f"HackMD unreachable, could not {what} "
                                  f"({type(error).__name__})") from None
        self.rate_limit = RateLimit.from_headers(answer_headers) or self.rate_limit
        if 200 <= status < 300 or (allow_304 and status == 304):
            data: Any = {}
            if raw and status != 304:
                try:
                    data = json.loads(raw)
                except ValueError:
                    raise HackMDTransient(f"HackMD answered {status} without JSON "
                                          f"when asked to {what}") from None
            return status, answer_headers, data
        raise self._failure(status, answer_headers, what, team, note_id)

    def _failure(self, status: int, headers: Mapping[str, str], what: str,
                 team: str | None, note_id: str | None) -> HackMDError:
        if status == 429:
            limit = RateLimit.from_headers(headers)
            retry_at = limit.reset_at if limit is not None else _retry_after(
                headers, self._clock())
            if limit is not None and limit.remaining > 0:
                # Room left in the 5-minute window, so it is the monthly quota.
                return HackMDTransient(
                    f"HackMD's monthly API quota is used up (429); could not {what}: it "
                    "renews next month, or a paid plan raises it", retry_at=retry_at)
            return HackMDTransient(f"HackMD rate limit reached (429); could not {what}",
                                   retry_at=retry_at)
        if status >= 500:
            return HackMDTransient(f"HackMD failed ({status}); could not {what}")
        source = self._token.source
        if status == 401:
            return HackMDPermanent(
                f"HackMD refused the API token from {source} (401) when asked to {what}: "
                "issue a new token at hackmd.io Settings > API and put it there", status)
        if status == 403:
            where = f"team {team!r}" if team else "this note"
            return HackMDPermanent(
                f"HackMD forbids the token's account to {what} (403): make the token's "
                f"account a member of {where} with write access", status)
        if status == 404:
            if note_id is not None:
                return HackMDPermanent(
                    f"HackMD has no note {note_id} (404) in {_workspace(team)}: it was "
                    "deleted or moved; remove the stored note id to have a new one made",
                    status)
            return HackMDPermanent(
                f"HackMD has no {_workspace(team)} (404) when asked to {what}: check "
                "`team` and `api_url` in the publish.hackmd config", status)
        return HackMDPermanent(f"HackMD rejected the request to {what} ({status}); "
                               "this is a bug in the bot, please report it", status)


def _workspace(team: str | None) -> str:
    return f"team workspace {team!r}" if team else "the token's own workspace"


def _quote(part: str | None) -> str:
    return quote(part or "", safe="")


def _retry_after(headers: Mapping[str, str], now: datetime) -> datetime | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return now + timedelta(seconds=max(0.0, float(value)))
    except ValueError:
        return None
