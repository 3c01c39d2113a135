"""The archive's pages over real HTTP on loopback, on a real database: access by token,
security headers, search and escaping (the browser tests add a real Chromium and Synapse)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from msgspec.structs import replace

from chatbot.commands import ArchiveLink, Context, handle_archive
from chatbot.config import Config, MeetingConfig, parse_config
from chatbot.meetings import DirectMessage, React, Rooms, close_meeting
from chatbot.model import Entry, EntryKind, EventId, Profile, RoomId, UserId
from chatbot.store import Store
from chatbot.web import SECURITY_HEADERS, WRONG_TOKENS, ListenFailed, WebServer

from .support.ports import on_a_free_port

NOW = datetime(2026, 6, 18, 9, 0, tzinfo=UTC)
HOSTILE = '<script>window.pwned=1</script>"><img src=x onerror=alert(1)> [x](javascript:alert(1))'
ROOMS = {"team": RoomId("!team:example.org"), "secret": RoomId("!secret:example.org")}


def make_config(data_dir: Path, port: int) -> Config:
    return parse_config({
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "data_dir": str(data_dir),
        "http": {"listen": f"127.0.0.1:{port}", "public_url": "https://meet.example.org"},
        "meetings": [
            {"id": "team", "title": "Team Meeting", "room": ROOMS["team"], "timezone": "UTC",
             "start": "2026-06-18 08:00", "rrule": "FREQ=WEEKLY", "archive": "public"},
            {"id": "secret", "title": "Secret Meeting", "room": ROOMS["secret"],
             "timezone": "UTC", "start": "2026-06-18 08:00", "rrule": "FREQ=WEEKLY"},
        ],
    })


async def no_agenda(series: MeetingConfig) -> Sequence[Entry]:
    return []


async def hold_sitting(store: Store, rooms: Rooms, series: MeetingConfig, start: datetime,
                       words: str) -> None:
    """A sitting with two people (one passing), an update and an agenda item, closed."""
    async with store.transaction():
        meeting = await store.ensure_scheduled(series.id, rooms.room_of_series[series.id],
                                               series.title, start)
        await store.mark_started(meeting.id, start, start + timedelta(hours=1), series.title)
        tag = f"{series.id}-{start:%Y%m%d}"
        for user, name in (("@ada:example.org", "Ada"), ("@grace:example.org", HOSTILE)):
            await store.add_attendee(meeting.id, UserId(user), Profile(name),
                                     EventId(f"$here-{user}-{tag}"), start)
        await store.add_entry(meeting.id, EntryKind.UPDATE, UserId("@ada:example.org"), "Ada",
                              f"{words} {HOSTILE}", None, EventId(f"$u-{tag}"), start)
        await store.add_entry(meeting.id, EntryKind.PASS, UserId("@grace:example.org"),
                              HOSTILE, "", None, EventId(f"$p-{tag}"), start)
        await store.add_entry(meeting.id, EntryKind.AGENDA, UserId("@ada:example.org"), "Ada",
                              "Release planning", 10, EventId(f"$a-{tag}"), start)
        await close_meeting(store, rooms, series, meeting, start + timedelta(minutes=40))


class Site:
    def __init__(self, server: WebServer, session: aiohttp.ClientSession, store: Store,
                 rooms: Rooms) -> None:
        self.server, self.session, self.store, self.rooms = server, session, store, rooms
        assert server.config.http is not None
        self.base = server.config.http.base_url

    async def get(self, path: str) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(self.base + path, allow_redirects=False) as response:
            return response.status, await response.text(), response

    async def archive(self, *, reset: bool = False, chair: bool = True) -> list[object]:
        context = Context(self.rooms, ROOMS["secret"], UserId("@ada:example.org"), "Ada",
                          EventId("$cmd"), NOW, is_chair=chair)
        async with self.store.transaction():
            return await handle_archive(ArchiveLink(reset), context, self.store)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    store = await Store.open(tmp_path / "data" / "chatbot.db")

    async def start(port: int) -> WebServer:
        config = make_config(tmp_path / "data", port)
        server = WebServer(config, no_agenda, lambda: NOW, store=store,
                           notes_dir=tmp_path / "data" / "notes")
        await server.start()
        return server

    server = await on_a_free_port(start, ListenFailed)
    rooms = Rooms(server.config, ROOMS)
    team, secret = server.config.meetings
    await hold_sitting(store, rooms, team, NOW - timedelta(days=7), "shipped the new parser")
    await hold_sitting(store, rooms, secret, NOW - timedelta(days=7), "classified rocket work")
    try:
        async with aiohttp.ClientSession() as session:
            yield Site(server, session, store, rooms)
    finally:
        await server.stop()
        await store.close()


def token_of(effects: list[object]) -> str:
    [direct] = [effect for effect in effects if isinstance(effect, DirectMessage)]
    assert direct.user_id == "@ada:example.org"
    found = re.search(r"https://meet\.example\.org/meetings/secret/\?key=([\w-]+)", direct.text)
    assert found is not None, direct.text
    return found[1]


async def test_a_public_meeting_is_listed_and_readable_and_a_private_one_is_not(site: Site) -> None:
    status, page, _ = await site.get("/")
    assert status == 200 and "Team Meeting" in page and "Secret" not in page
    assert 'href="/calendar/team.ics"' in page
    status, page, _ = await site.get("/meetings/team/")
    assert status == 200 and 'href="/meetings/team/2026-06-11"' in page
    row = re.search(r'<tr class="sitting">.*?</tr>', page, re.S)
    assert row is not None
    assert [int(n) for n in re.findall(r"<td[^>]*>(\d+)</td>", row[0])[:4]] == [2, 1, 0, 1]
    assert "40 min" in row[0]
    status, page, _ = await site.get("/meetings/team/2026-06-11")
    assert status == 200
    for heading in ("Roll call", "Quick updates", "Reports and celebrations", "Agenda items"):
        assert f"<h2>{heading}</h2>" in page
    assert (await site.get("/meetings/team/2026-06-11.md"))[0] == 200
    assert (await site.get("/meetings/team/2026-06-11.log.md"))[0] == 404
    assert (await site.get("/meetings/team/2026-06-12"))[0] == 404


@pytest.mark.parametrize("path", ["/meetings/secret/", "/meetings/secret/2026-06-11",
                                  "/meetings/secret/2026-06-11.md", "/calendar/secret.ics",
                                  "/meetings/secret/2026-06-11/live", "/meetings/nothing/"])
async def test_a_private_meeting_is_not_found_without_its_token_and_opens_with_it(
        site: Site, path: str) -> None:
    unknown = await site.get("/meetings/nothing/")
    status, text, _ = await site.get(path)
    assert (status, text) == (404, unknown[1])  # exactly as for no such meeting
    assert (await site.get(f"{path}?key=wrong-guess"))[0] == 404
    if "nothing" in path:
        return
    effects = await site.archive()
    assert React() in effects
    token = token_of(effects)
    assert (await site.get(f"{path}?key={token}"))[0] == 200
    assert token_of(await site.archive()) == token  # asked again: the same link
    new = token_of(await site.archive(reset=True))
    assert new != token
    assert (await site.get(f"{path}?key={token}"))[0] == 403
    assert (await site.get(f"{path}?key={new}"))[0] == 200


async def test_only_a_chair_resets_the_link(site: Site) -> None:
    token = token_of(await site.archive())
    refused = await site.archive(reset=True, chair=False)
    assert not any(isinstance(effect, DirectMessage) for effect in refused)
    assert (await site.get(f"/meetings/secret/?key={token}"))[0] == 200


async def test_links_in_a_private_meetings_pages_carry_the_token(site: Site) -> None:
    token = token_of(await site.archive())
    _, page, _ = await site.get(f"/meetings/secret/?key={token}")
    assert f'href="/meetings/secret/2026-06-11?key={token}"' in page
    assert f'href="/calendar/secret.ics?key={token}"' in page


async def test_wrong_tokens_are_rate_limited_per_address(site: Site) -> None:
    token = token_of(await site.archive())
    for attempt in range(WRONG_TOKENS):
        assert (await site.get(f"/meetings/secret/?key=guess{attempt}"))[0] == 404
    assert (await site.get("/meetings/secret/?key=guess-again"))[0] == 429
    assert (await site.get(f"/meetings/secret/?key={token}"))[0] == 429  # not even tried
    assert (await site.get("/meetings/team/"))[0] == 200  # public pages stay open


@pytest.mark.parametrize("path", ["/", "/meetings/team/", "/meetings/team/2026-06-11",
                                  "/search?q=parser", "/meetings/secret/", "/no/such/page",
                                  "/static/style.css", "/calendar/team.ics"])
async def test_every_answer_carries_the_security_headers(site: Site, path: str) -> None:
    _, _, response = await site.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


async def test_search_finds_phrases_and_prefixes_in_notes_the_reader_may_see(site: Site) -> None:
    status, page, _ = await site.get("/search?q=%22new+parser%22")
    assert status == 200 and "<mark>new parser</mark>" in page
    assert 'href="/meetings/team/2026-06-11"' in page and "Quick updates" in page
    assert "<mark>shipped</mark>" in (await site.get("/search?q=shipp*"))[1]
    assert "0 results" in (await site.get("/search?q=classified"))[1]
    token = token_of(await site.archive())
    _, page, _ = await site.get(f"/search?q=classified&key={token}")
    assert "<mark>classified</mark>" in page
    assert f'href="/meetings/secret/2026-06-11?key={token}"' in page


@pytest.mark.parametrize("query", ['"unclosed', "AND", "a:b", "(x", "*", "-x", "'"])
async def test_a_malformed_search_gets_a_clear_message_not_an_error(site: Site,
                                                                    query: str) -> None:
    status, page, _ = await site.get(f"/search?{aiohttp.helpers.quote(query)}".replace(
        "/search?", "/search?q="))
    assert status == 200 and "could not be understood" in page


@pytest.mark.parametrize("path", ["/meetings/team/", "/meetings/team/2026-06-11",
                                  "/search?q=shipped", "/search?q=%3Cscript%3E"])
async def test_text_from_chat_is_shown_as_text(site: Site, path: str) -> None:
    _, page, _ = await site.get(path)
    assert "<script>window" not in page and "<img src=x" not in page
    assert 'href="javascript' not in page


async def test_archive_answers_in_the_room_for_a_public_meeting_and_explains_a_missing_server(
        site: Site, tmp_path: Path) -> None:
    from chatbot.meetings import Reply
    context = Context(site.rooms, ROOMS["team"], UserId("@ada:example.org"), "Ada",
                      EventId("$cmd"), NOW)
    async with site.store.transaction():
        [reply] = await handle_archive(ArchiveLink(False), context, site.store)
    assert reply == Reply(
        "This meeting's archive is public: <https://meet.example.org/meetings/team/>")
    without_http = Rooms(replace(site.server.config, http=None), ROOMS)
    context = Context(without_http, ROOMS["secret"], UserId("@ada:example.org"), "Ada",
                      EventId("$cmd"), NOW)
    async with site.store.transaction():
        [reply] = await handle_archive(ArchiveLink(False), context, site.store)
    assert isinstance(reply, Reply) and "no `http` section" in reply.text
    assert await site.store.read.archive_token("secret") is None  # nothing was made


async def test_the_live_fragment_answers_304_until_the_note_changes(site: Site) -> None:
    path = site.base + "/meetings/team/2026-06-11/live"
    async with site.session.get(path) as response:
        etag = response.headers["ETag"]
        assert response.status == 200 and response.headers["X-Sitting-Open"] == "0"
    async with site.session.get(path, headers={"If-None-Match": etag}) as response:
        assert response.status == 304 and await response.read() == b""
    [meeting] = [m for m in await site.store.read.meetings_of_series("team")]
    async with site.store.transaction():  # the note changes (as a regenerated one would)
        await site.store.add_entry(meeting.id, EntryKind.CELEBRATION,
                                   UserId("@ada:example.org"), "Ada", "a late celebration",
                                   None, EventId("$late"), NOW)
    async with site.session.get(path, headers={"If-None-Match": etag}) as response:
        assert response.status == 200 and "a late celebration" in await response.text()


async def test_an_open_sitting_is_the_live_note_and_refreshes_itself_without_javascript(
        site: Site) -> None:
    async with site.store.transaction():
        meeting = await site.store.create_adhoc("team", ROOMS["team"], "Extra", NOW,
                                                NOW + timedelta(hours=1))
        await site.store.add_entry(meeting.id, EntryKind.AGENDA, UserId("@ada:example.org"),
                                   "Ada", f"Budget {HOSTILE}", 15, EventId("$item"), NOW)
        found = await site.store.entry_by_event(EventId("$item"))
        assert found is not None
        await site.store.set_current_item(meeting.id, found[1].id)
        await site.store.start_item(found[1].id, NOW)
    status, page, _ = await site.get("/meetings/team/2026-06-18")
    assert status == 200
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in page
    assert 'data-live="/meetings/team/2026-06-18/live"' in page
    assert "Now: item 1 of 1" in page and "Time box: 15 min, until 9:15AM UTC" in page
    assert "<script>window" not in page
    async with site.session.get(site.base + "/meetings/team/2026-06-18/live") as response:
        assert response.headers["X-Sitting-Open"] == "1"
    _, closed, _ = await site.get("/meetings/team/2026-06-11")
    assert "http-equiv" not in closed and "data-live" not in closed


async def test_a_sittings_full_log_is_linked_and_shown_when_saved(site: Site,
                                                                  tmp_path: Path) -> None:
    folder = tmp_path / "data" / "notes" / "team"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "2026-06-11.log.md").write_text(f"- 09:01 **Ada:** hello {HOSTILE}\n")
    _, page, _ = await site.get("/meetings/team/2026-06-11")
    assert 'href="/meetings/team/2026-06-11.log.md"' in page and "hello" in page
    assert "<script>window" not in page
    status, text, response = await site.get("/meetings/team/2026-06-11.log.md")
    assert status == 200 and text.startswith("- 09:01")
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_behind_a_local_proxy_each_forwarded_address_has_its_own_limit(site: Site) -> None:
    for attempt in range(WRONG_TOKENS):
        async with site.session.get(f"{site.base}/meetings/secret/?key=guess{attempt}",
                                    headers={"X-Forwarded-For": "198.51.100.7"}) as response:
            assert response.status == 404
    async with site.session.get(f"{site.base}/meetings/secret/?key=guess",
                                headers={"X-Forwarded-For": "198.51.100.7"}) as response:
        assert response.status == 429
    async with site.session.get(f"{site.base}/meetings/secret/?key=guess",
                                headers={"X-Forwarded-For": "203.0.113.9"}) as response:
        assert response.status == 404
