"""The local HackMD plays the documented contract, and rejects what HackMD would not take."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.hackmd_contract import HackMDContract


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def hackmd(clock: FakeClock) -> AsyncIterator[HackMDContract]:
    async with HackMDContract(clock=clock) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def ask(http: aiohttp.ClientSession, hackmd: HackMDContract, method: str, path: str,
              *, token: str | None = None, body: Any = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    sent = {"Authorization": f"Bearer {token or hackmd.token}", **(headers or {})}
    async with http.request(method, hackmd.api_url + path, json=body,
                            headers=sent) as answer:
        raw = await answer.read()
        data = await answer.json() if raw else None
        return answer.status, answer.headers, data


async def test_every_route_needs_the_bearer_token(http, hackmd):
    for method, path in [("GET", "/me"), ("POST", "/notes"), ("GET", "/notes/x"),
                         ("PATCH", "/notes/x"), ("DELETE", "/notes/x"),
                         ("POST", "/teams/jupyterhub/notes")]:
        status, _, _ = await ask(http, hackmd, method, path, token="wrong")
        assert status == 401, (method, path)
    async with http.get(hackmd.api_url + "/me") as answer:
        assert answer.status == 401


async def test_created_note_has_the_documented_shape(http, hackmd):
    status, headers, note = await ask(http, hackmd, "POST", "/notes", body={
        "title": "Team meeting", "content": "# Team meeting\n",
        "readPermission": "guest", "writePermission": "signed_in",
        "commentPermission": "everyone"})
    assert status == 201
    for name in ("id", "title", "content", "publishLink", "shortId", "lastChangedAt",
                 "createdAt", "readPermission", "writePermission", "teamPath",
                 "userPath", "tags", "permalink", "publishType"):
        assert name in note, name
    assert (note["readPermission"], note["writePermission"]) == ("guest", "signed_in")
    assert note["teamPath"] is None and note["userPath"] == "chatbot-tester"
    assert headers["ETag"]


@pytest.mark.parametrize(("body", "status"), [
    ({"title": "t", "read_permission": "guest"}, 422),     # snake_case: not a field
    ({"readPermission": "everyone"}, 422),                  # not a NotePermissionRole
    ({"commentPermission": "guest"}, 422),                  # not a CommentPermissionType
    ({"title": 3}, 422),                                    # mistyped
    ({"tags": "a,b"}, 422),
    ([1, 2], 422),
])
async def test_create_rejects_what_the_schema_does_not_allow(http, hackmd, body, status):
    got, _, _ = await ask(http, hackmd, "POST", "/notes", body=body)
    assert got == status
    assert hackmd.notes == {}


async def test_update_takes_only_update_fields_and_answers_202_without_body(http, hackmd):
    note_id = hackmd.add_note("old")
    status, _, _ = await ask(http, hackmd, "PATCH", f"/notes/{note_id}",
                             body={"commentPermission": "everyone"})
    assert status == 422  # only CreateNote knows commentPermission
    status, _, data = await ask(http, hackmd, "PATCH", f"/notes/{note_id}",
                                body={"content": "new"})
    assert (status, data) == (202, None)
    assert hackmd.notes[note_id].content == "new"


async def test_not_json_is_400(http, hackmd):
    note_id = hackmd.add_note("old")
    async with http.patch(f"{hackmd.api_url}/notes/{note_id}", data=b"{nope",
                          headers={"Authorization": f"Bearer {hackmd.token}",
                                   "Content-Type": "application/json"}) as answer:
        assert answer.status == 400


async def test_etag_answers_304_until_the_page_changes(http, hackmd):
    note_id = hackmd.add_note("text")
    _, headers, note = await ask(http, hackmd, "GET", f"/notes/{note_id}")
    etag = headers["ETag"]
    status, _, data = await ask(http, hackmd, "GET", f"/notes/{note_id}",
                                headers={"If-None-Match": etag})
    assert (status, data) == (304, None)
    hackmd.human_edit(note_id, lambda text: text + "\nmore")
    status, headers, data = await ask(http, hackmd, "GET", f"/notes/{note_id}",
                                      headers={"If-None-Match": etag})
    assert status == 200 and data["content"] == "text\nmore"
    assert headers["ETag"] != etag and data["lastChangedAt"] > note["lastChangedAt"]


async def test_if_match_on_patch_is_not_honoured_since_hackmd_documents_none(http, hackmd):
    note_id = hackmd.add_note("text")
    status, _, _ = await ask(http, hackmd, "PATCH", f"/notes/{note_id}",
                             body={"content": "x"}, headers={"If-Match": '"stale"'})
    assert status == 202


async def test_team_notes_live_in_the_team_workspace(http, hackmd):
    status, _, note = await ask(http, hackmd, "POST", "/teams/jupyterhub/notes",
                                body={"content": "team page"})
    assert status == 201 and note["teamPath"] == "jupyterhub"
    status, _, listed = await ask(http, hackmd, "GET", "/teams/jupyterhub/notes")
    assert [n["id"] for n in listed] == [note["id"]]
    status, _, _ = await ask(http, hackmd, "POST", "/teams/strangers/notes", body={})
    assert status == 403
    status, _, _ = await ask(http, hackmd, "PATCH", f"/notes/{note['id']}",
                             body={"content": "x"})
    assert status == 403


async def test_unknown_note_is_404(http, hackmd):
    for method in ("GET", "PATCH", "DELETE"):
        status, _, _ = await ask(http, hackmd, method, "/notes/nothing",
                                 body={"content": "x"} if method == "PATCH" else None)
        assert status == 404


async def test_rate_limit_headers_count_down_then_429_until_the_window_resets(
        http, hackmd, clock):
    hackmd.window_limit = 3
    remaining = []
    for _ in range(3):
        status, headers, _ = await ask(http, hackmd, "GET", "/me")
        assert status == 200
        remaining.append(int(headers["X-RateLimit-UserRemaining"]))
        assert int(headers["X-RateLimit-UserLimit"]) == 3
    assert remaining == [2, 1, 0]
    status, headers, _ = await ask(http, hackmd, "GET", "/me")
    assert status == 429
    reset = int(headers["X-RateLimit-UserReset"])
    assert reset == int(clock.now) + 300
    clock.now = reset
    status, headers, _ = await ask(http, hackmd, "GET", "/me")
    assert status == 200 and headers["X-RateLimit-UserRemaining"] == "2"


async def test_monthly_quota_ends_in_429_whatever_the_window(http, hackmd, clock):
    hackmd.monthly_quota = 2
    for _ in range(2):
        assert (await ask(http, hackmd, "GET", "/me"))[0] == 200
    clock.now += 3600
    assert (await ask(http, hackmd, "GET", "/me"))[0] == 429
    assert hackmd.account.month_calls == 2


async def test_faults_hit_the_matching_route_the_given_number_of_times(http, hackmd):
    note_id = hackmd.add_note("x")
    hackmd.fail("PATCH", r"^/notes/", 503, times=2)
    for expected in (503, 503, 202):
        status, _, _ = await ask(http, hackmd, "PATCH", f"/notes/{note_id}",
                                 body={"content": "y"})
        assert status == expected
    assert (await ask(http, hackmd, "GET", f"/notes/{note_id}"))[0] == 200
    assert [c.status for c in hackmd.calls_to("PATCH")] == [503, 503, 202]


async def test_a_human_edit_lands_right_after_the_next_read(http, hackmd):
    note_id = hackmd.add_note("bot")
    hackmd.human_edit_after_next_read(note_id, lambda text: "person\n" + text)
    _, _, read = await ask(http, hackmd, "GET", f"/notes/{note_id}")
    assert read["content"] == "bot"
    assert hackmd.notes[note_id].content == "person\nbot"
