"""A local HackMD API v1 that plays HackMD's documented contract strictly, for the tests.

Sources, and what each rule here comes from:

* OpenAPI document of api.hackmd.io/v1 (vendored in hackmdio/api-client as
  `spec/hackmd-openapi.json`): routes `GET /me`, `GET|POST /notes`,
  `GET|PATCH|DELETE /notes/{noteId}`, `GET /teams`, `GET|POST /teams/{teamPath}/notes`,
  `GET|PATCH|DELETE /teams/{teamPath}/notes/{noteId}`; bearer security on all of them;
  request bodies (`CreateNote`: title, content, readPermission, writePermission,
  commentPermission, suggestEditPermission, permalink, parentFolderId, tags,
  description, origin, noteFeatures; `UpdateNote`: title, content, readPermission,
  writePermission, permalink, parentFolderId, tags, description); enums
  `NotePermissionRole` owner|signed_in|guest and `CommentPermissionType`; answers
  201 (create), 200 (get), 202 (patch, no body), 204 (delete); the `NoteType` fields.
* HackMD API policy (https://hackmd.io/@hackmd-api/api-policy): 100 calls per 5
  minutes, a monthly quota (2,000 free), headers `X-RateLimit-UserLimit`,
  `X-RateLimit-UserRemaining`, `X-RateLimit-UserReset` (Unix time), 429 past a limit.
* hackmdio/api-client README: `GET` of a note carries an `ETag`; `If-None-Match`
  with it answers 304 with no body. No conditional write is documented, so `If-Match`
  on `PATCH` is ignored here, as a server that does not know it would.

Stricter than HackMD on purpose, so a client bug shows here rather than in production:
a body field the schema does not list, or a value of the wrong type or outside an
enum, is answered 422 (HackMD documents no status for it and may silently ignore an
unknown field, which would leave a permission unset without anyone noticing); a body
that is not JSON is 400. Error bodies are `{"error": ...}`; HackMD documents none.

Test hooks: `human_edit` (a person types now), `human_edit_after_next_read` (a person
types between the bot's read and its write), `fail` (answer a route with 5xx, 429,
401, 404 …, optionally with headers of its own, or after doing the work: an answer
lost on the way back), `calls` (everything asked and answered), and an injectable clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PERMISSIONS = ("owner", "signed_in", "guest")
COMMENT_PERMISSIONS = ("disabled", "forbidden", "owners", "signed_in_users", "everyone")
SUGGEST_EDIT_PERMISSIONS = ("disabled", "forbidden", "owners", "signed_in_users")
WINDOW_SECONDS = 5 * 60
WINDOW_LIMIT = 100
MONTHLY_QUOTA = 2000


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _one_of(*allowed: str) -> Callable[[Any], bool]:
    return lambda value: value in allowed


def _nullable_string(value: Any) -> bool:
    return value is None or isinstance(value, str)


CREATE_FIELDS: dict[str, Callable[[Any], bool]] = {
    "title": _string, "content": _string, "description": _string, "tags": _strings,
    "readPermission": _one_of(*PERMISSIONS), "writePermission": _one_of(*PERMISSIONS),
    "commentPermission": _one_of(*COMMENT_PERMISSIONS),
    "suggestEditPermission": _one_of(*SUGGEST_EDIT_PERMISSIONS),
    "permalink": _string, "parentFolderId": _string, "origin": _string,
    "noteFeatures": lambda value: isinstance(value, dict),
}
UPDATE_FIELDS: dict[str, Callable[[Any], bool]] = {
    "title": _string, "content": _string, "description": _string, "tags": _strings,
    "readPermission": _one_of(*PERMISSIONS), "writePermission": _one_of(*PERMISSIONS),
    "permalink": _string, "parentFolderId": _nullable_string,
}


@dataclass
class StoredNote:
    id: str
    short_id: str
    title: str
    content: str
    read_permission: str
    write_permission: str
    comment_permission: str
    team_path: str | None
    user_path: str
    created_at: float
    last_changed_at: float
    tags: list[str] = field(default_factory=list)
    description: str = ""
    permalink: str | None = None

    @property
    def etag(self) -> str:
        digest = hashlib.sha256(f"{self.last_changed_at}\0{self.content}".encode())
        return f'"{digest.hexdigest()[:32]}"'


@dataclass(frozen=True, slots=True)
class Call:
    """One request as it reached the server, and the status it got."""

    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: Any
    at: float = 0.0


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    hits: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    # Do the work, then answer `status`: the client never learns that it was done.
    after_work: bool = False


@dataclass
class Account:
    token: str
    user_path: str
    teams: tuple[str, ...]
    window_start: float | None = None
    window_calls: int = 0
    month_calls: int = 0


class HackMDContract:
    """`async with HackMDContract() as hackmd:` then `HackMDClient(token, hackmd.api_url)`."""

    def __init__(self, *, token: str | None = None, user_path: str = "chatbot-tester",
                 teams: tuple[str, ...] = ("jupyterhub",),
                 window_limit: int = WINDOW_LIMIT, monthly_quota: int = MONTHLY_QUOTA,
                 clock: Callable[[], float] = time.time) -> None:
        self.token = token or "hmd-" + secrets.token_hex(16)
        self.account = Account(self.token, user_path, teams)
        self.window_limit = window_limit
        self.monthly_quota = monthly_quota
        self.clock = clock
        self.notes: dict[str, StoredNote] = {}
        self.calls: list[Call] = []
        self._faults: list[Fault] = []
        self._after_read: dict[str, list[Callable[[str], str]]] = {}
        # Documented 207 on create: the note is made, a secondary step (folder) failed.
        self.create_multi_status = False
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def api_url(self) -> str:
        return self.url + "/v1"

    async def __aenter__(self) -> HackMDContract:
        app = web.Application(middlewares=[self._middleware])
        routes = [
            ("GET", "/v1/me", self._me),
            ("GET", "/v1/notes", self._list_notes),
            ("POST", "/v1/notes", self._create_note),
            ("GET", "/v1/notes/{note_id}", self._get_note),
            ("PATCH", "/v1/notes/{note_id}", self._update_note),
            ("DELETE", "/v1/notes/{note_id}", self._delete_note),
            ("GET", "/v1/teams", self._teams),
            ("GET", "/v1/teams/{team}/notes", self._list_notes),
            ("POST", "/v1/teams/{team}/notes", self._create_note),
            ("GET", "/v1/teams/{team}/notes/{note_id}", self._get_note),
            ("PATCH", "/v1/teams/{team}/notes/{note_id}", self._update_note),
            ("DELETE", "/v1/teams/{team}/notes/{note_id}", self._delete_note),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- test hooks ---------------------------------------------------------------------

    def human_edit(self, note_id: str, edit: Callable[[str], str]) -> None:
        """A person changes the page now, in the editor (not through the API)."""
        note = self.notes[note_id]
        note.content = edit(note.content)
        note.last_changed_at = self._changed_at(note)

    def human_edit_after_next_read(self, note_id: str, edit: Callable[[str], str]) -> None:
        """A person changes the page right after the next API read of it is answered."""
        self._after_read.setdefault(note_id, []).append(edit)

    def fail(self, method: str, path: str, status: int, times: int = 1, *,
             headers: dict[str, str] | None = None, after_work: bool = False) -> Fault:
        """Answer the next `times` requests matching `method` ("*" for any) and the
        regex `path` (searched in the path after /v1) with `status` (and `headers`,
        which replace the rate-limit ones); with `after_work`, once the request's work
        is done."""
        fault = Fault(method, re.compile(path), status, times, headers=dict(headers or {}),
                      after_work=after_work)
        self._faults.append(fault)
        return fault

    def calls_to(self, method: str, path_regex: str = "") -> list[Call]:
        pattern = re.compile(path_regex)
        return [c for c in self.calls if c.method == method and pattern.search(c.path)]

    def add_note(self, content: str, *, team: str | None = None, title: str = "") -> str:
        """A note that exists already (made by a person), without spending a call."""
        return self._store(title, content, "guest", "owner", "everyone", team).id

    # -- middleware: auth, faults, rate limit, call log -----------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        path = request.path.removeprefix("/v1")
        response = await self._answer(request, handler, path)
        self.calls.append(Call(request.method, path, response.status,
                               dict(request.headers), body, self.clock()))
        return response

    async def _answer(self, request: web.Request, handler: Callable[[web.Request], Any],
                      path: str) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.account.token}":
            return _error(401, "Unauthorized")
        account = self.account
        now = self.clock()
        if account.window_start is None or now >= account.window_start + WINDOW_SECONDS:
            account.window_start, account.window_calls = now, 0
        over = (account.window_calls >= self.window_limit
                or account.month_calls >= self.monthly_quota)
        if not over:
            account.window_calls += 1
            account.month_calls += 1
        headers = {
            "X-RateLimit-UserLimit": str(self.window_limit),
            "X-RateLimit-UserRemaining": str(max(0, self.window_limit
                                                 - account.window_calls)),
            "X-RateLimit-UserReset": str(int(account.window_start + WINDOW_SECONDS)),
        }
        if over:
            response: web.StreamResponse = _error(429, "Too Many Requests")
        else:
            fault = next((f for f in self._faults if f.hits < f.times
                          and f.method in ("*", request.method)
                          and f.path.search(path)), None)
            if fault is not None:
                fault.hits += 1
                if fault.after_work:
                    with contextlib.suppress(web.HTTPException):
                        await handler(request)
                response = _error(fault.status, "injected fault")
                response.headers.update(headers)
                response.headers.update(fault.headers)
                return response
            else:
                try:
                    response = await handler(request)
                except web.HTTPException as error:
                    response = _error(error.status, error.reason)
        response.headers.update(headers)
        return response

    # -- routes ---------------------------------------------------------------------------

    async def _me(self, request: web.Request) -> web.Response:
        return web.json_response({
            "id": "user-" + self.account.user_path, "email": None,
            "name": self.account.user_path, "userPath": self.account.user_path,
            "photo": "", "upgraded": False,
            "teams": [self._team(path) for path in self.account.teams]})

    async def _teams(self, request: web.Request) -> web.Response:
        return web.json_response([self._team(path) for path in self.account.teams])

    async def _list_notes(self, request: web.Request) -> web.Response:
        team = self._team_of(request)
        return web.json_response([self._shape(n) for n in self.notes.values()
                                  if n.team_path == team])

    async def _create_note(self, request: web.Request) -> web.Response:
        team = self._team_of(request)
        body = await _json_body(request, CREATE_FIELDS, allow_string=True)
        if isinstance(body, str):
            body = {"content": body}
        note = self._store(body.get("title", ""), body.get("content", ""),
                           body.get("readPermission", "owner"),
                           body.get("writePermission", "owner"),
                           body.get("commentPermission", "disabled"), team)
        note.tags = body.get("tags", [])
        note.description = body.get("description", "")
        note.permalink = body.get("permalink")
        if not body.get("title"):
            note.title = _title_of(note.content)
        if self.create_multi_status:
            return web.json_response({"note": self._shape(note, content=True),
                                      "error": "Folder unavailable"}, status=207)
        return web.json_response(self._shape(note, content=True), status=201,
                                 headers={"ETag": note.etag})

    async def _get_note(self, request: web.Request) -> web.StreamResponse:
        note = self._note_of(request)
        if request.headers.get("If-None-Match") == note.etag:
            response: web.StreamResponse = web.Response(status=304,
                                                        headers={"ETag": note.etag})
        else:
            response = web.json_response(self._shape(note, content=True),
                                         headers={"ETag": note.etag})
        for edit in self._after_read.pop(note.id, []):
            self.human_edit(note.id, edit)
        return response

    async def _update_note(self, request: web.Request) -> web.Response:
        note = self._note_of(request)
        body = await _json_body(request, UPDATE_FIELDS, allow_string=False)
        assert isinstance(body, dict)
        if not body:
            raise web.HTTPUnprocessableEntity(reason="nothing to update")
        if "content" in body:
            note.content = body["content"]
        if "title" in body:
            note.title = body["title"]
        note.read_permission = body.get("readPermission", note.read_permission)
        note.write_permission = body.get("writePermission", note.write_permission)
        note.tags = body.get("tags", note.tags)
        note.description = body.get("description", note.description)
        note.last_changed_at = self._changed_at(note)
        return web.Response(status=202)

    async def _delete_note(self, request: web.Request) -> web.Response:
        note = self._note_of(request)
        del self.notes[note.id]
        return web.Response(status=204)

    # -- helpers --------------------------------------------------------------------------

    def _team_of(self, request: web.Request) -> str | None:
        team = request.match_info.get("team")
        if team is not None and team not in self.account.teams:
            raise web.HTTPForbidden(reason=f"not a member of team {team}")
        return team

    def _note_of(self, request: web.Request) -> StoredNote:
        team = self._team_of(request)
        note = self.notes.get(request.match_info["note_id"])
        if note is None:
            raise web.HTTPNotFound(reason="note not found")
        # `GET /notes/{id}` also finds an accessible team note (per the spec); a team
        # route finds only that team's notes.
        if team is not None and note.team_path != team:
            raise web.HTTPNotFound(reason="note not found")
        if team is None and request.method != "GET" and note.team_path is not None:
            raise web.HTTPForbidden(reason="a team note is changed through its team")
        return note

    def _store(self, title: str, content: str, read: str, write: str, comment: str,
               team: str | None) -> StoredNote:
        now = self.clock()
        note_id = secrets.token_urlsafe(16).replace("-", "x").replace("_", "y")
        note = StoredNote(
            id=note_id, short_id=secrets.token_urlsafe(6), title=title, content=content,
            read_permission=read, write_permission=write, comment_permission=comment,
            team_path=team, user_path=self.account.user_path,
            created_at=now * 1000, last_changed_at=now * 1000)
        self.notes[note_id] = note
        return note

    def _changed_at(self, note: StoredNote) -> float:
        # Milliseconds, strictly increasing, so two edits in one millisecond still differ.
        return max(self.clock() * 1000, note.last_changed_at + 1)

    def _team(self, path: str) -> dict[str, Any]:
        return {"id": "team-" + path, "ownerId": "user-" + self.account.user_path,
                "name": path, "logo": "", "path": path, "description": None,
                "visibility": "public", "upgraded": False, "createdAt": 0}

    def _shape(self, note: StoredNote, *, content: bool = False) -> dict[str, Any]:
        owner = note.team_path or note.user_path
        shaped: dict[str, Any] = {
            "id": note.id, "title": note.title, "tags": note.tags,
            "description": note.description, "createdAt": note.created_at,
            "lastChangedAt": note.last_changed_at, "titleUpdatedAt": None,
            "tagsUpdatedAt": None, "lastChangeUser": None, "publishType": "view",
            "publishedAt": None, "permalink": note.permalink,
            "publishLink": f"{self.url}/@{owner}/{note.short_id}",
            "shortId": note.short_id, "readPermission": note.read_permission,
            "writePermission": note.write_permission, "teamPath": note.team_path,
            "userPath": None if note.team_path else note.user_path, "folderPaths": [],
        }
        if content:
            shaped["content"] = note.content
        return shaped


async def _json_body(request: web.Request, fields: dict[str, Callable[[Any], bool]], *,
                     allow_string: bool) -> dict[str, Any] | str:
    raw = await request.read()
    if not raw:
        return {}
    if not request.content_type == "application/json":
        raise web.HTTPUnsupportedMediaType(reason="expected application/json")
    try:
        body = json.loads(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason="body is not JSON") from None
    if allow_string and isinstance(body, str):
        return body
    if not isinstance(body, dict):
        raise web.HTTPUnprocessableEntity(reason="body must be a JSON object")
    for name, value in body.items():
        check = fields.get(name)
        if check is None:
            raise web.HTTPUnprocessableEntity(reason=f"unknown field {name}")
        if not check(value):
            raise web.HTTPUnprocessableEntity(reason=f"invalid value for {name}")
    return body


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _title_of(content: str) -> str:
    for line in content.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return "Untitled"
