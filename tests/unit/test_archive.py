"""The web archive's logic: tokens, the notes' search index, the views and their escaping."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chatbot.archive import (
    MARKS,
    Access,
    FailureLimit,
    Mark,
    attendance_grid,
    attendance_svg,
    check_token,
    durations_svg,
    highlight,
    is_sitting_name,
    log_path_of,
    new_token,
    note_html,
    note_sections,
    note_stems,
    render_page,
    token_digest,
)
from chatbot.config import MeetingConfig, parse_config
from chatbot.model import Meeting, RoomId
from chatbot.store import Store

T0 = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)
HOSTILE = '<script>window.pwned=1</script>"><img src=x onerror=alert(1)> [x](javascript:alert(1))'

NOTE = """# Team Meeting

Thursday 18th June 2026 at 9AM Europe/London (08:00 UTC)

## Roll call

- Ada Lovelace / Analytical Engines

## Updates

- **Ada Lovelace:** shipped the new parser \\#42
- **Grace Hopper:** pass

## Agenda items

- **Grace Hopper** (10 min) Release planning
    - **Decision:** ship on Friday
"""


def series(**extra: Any) -> MeetingConfig:
    config = parse_config({
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "meetings": [{"id": "team", "title": "Team", "room": "#team:example.org",
                      "timezone": "Europe/London", "start": "2026-06-18 09:00", **extra}],
    })
    return config.meetings[0]


def meeting(number: int, start: datetime, end: datetime | None = None) -> Meeting:
    return Meeting(number, "team", RoomId("!team:example.org"), "Team", start, start, end, None)


# --- tokens ----------------------------------------------------------------------------


def test_a_token_opens_its_meeting_a_retired_one_is_told_apart_and_others_are_unknown() -> None:
    current, old = new_token(), new_token()
    assert len(current) >= 32 and current != old
    assert check_token(current, current, [token_digest(old)]) is Access.GRANTED
    assert check_token(old, current, [token_digest(old)]) is Access.REVOKED
    assert check_token("guess", current, [token_digest(old)]) is Access.UNKNOWN
    assert check_token(None, current, []) is Access.UNKNOWN
    assert check_token("", None, []) is Access.UNKNOWN
    assert check_token("\udcff odd", current, []) is Access.UNKNOWN  # never raises


def test_wrong_tokens_are_limited_per_address_and_refill() -> None:
    limit = FailureLimit(3, timedelta(minutes=3))
    for _ in range(3):
        assert not limit.blocked("10.0.0.1", T0)
        limit.failed("10.0.0.1", T0)
    assert limit.blocked("10.0.0.1", T0)
    assert not limit.blocked("10.0.0.2", T0)
    assert not limit.blocked("10.0.0.1", T0 + timedelta(minutes=1))


def test_config_archive_and_public_url_are_validated() -> None:
    assert series().archive == "private"
    assert series(archive="public").archive == "public"
    from chatbot.config import ConfigError
    with pytest.raises(ConfigError, match=r"^meetings\[0\]\.archive: "):
        series(archive="open")
    base = {"matrix": {"homeserver": "https://m.example.org", "user_id": "@b:example.org",
                       "password": "x"},
            "meetings": [{"id": "t", "title": "T", "room": "#t:example.org",
                          "timezone": "UTC", "start": "2026-06-18 09:00"}]}
    http = parse_config({**base, "http": {"listen": "127.0.0.1:8080",
                                          "public_url": "https://meet.example.org/"}}).http
    assert http is not None and http.link_base == "https://meet.example.org"
    no_public = parse_config({**base, "http": {"listen": "127.0.0.1:8080"}}).http
    assert no_public is not None and no_public.link_base == "http://127.0.0.1:8080"
    for wrong in ("meet.example.org", "https://meet.example.org/?x=1", "ftp://x.org"):
        with pytest.raises(ConfigError, match=r"^http\.public_url: expected the http\(s\)"):
            parse_config({**base, "http": {"listen": "127.0.0.1:8080", "public_url": wrong}})


# --- names -------------------------------------------------------------------------------


def test_sittings_are_named_like_their_note_files_and_the_log_sits_beside() -> None:
    team = series()
    held = [meeting(1, T0), meeting(2, T0 + timedelta(hours=3)), meeting(3, T0 + timedelta(days=7))]
    assert note_stems(team, held) == {1: "2026-06-18", 2: "2026-06-18-2", 3: "2026-06-25"}
    assert all(is_sitting_name(name) for name in ("2026-06-18", "2026-06-18-2"))
    assert not any(is_sitting_name(name) for name in ("../x", "2026-6-18", "2026-06-18.md"))
    from pathlib import PurePosixPath
    assert log_path_of(PurePosixPath("team/2026-06-18-2.md")) == PurePosixPath(
        "team/2026-06-18-2.log.md")


# --- search --------------------------------------------------------------------------------


def test_a_note_is_indexed_by_section_as_plain_text() -> None:
    sections = note_sections(NOTE)
    assert [name for name, _ in sections] == ["Team Meeting", "Roll call", "Updates",
                                               "Agenda items"]
    updates = dict(sections)["Updates"]
    assert "Ada Lovelace: shipped the new parser #42" in updates
    assert "\\" not in updates and "**" not in updates


def test_markers_typed_in_chat_cannot_forge_a_highlight() -> None:
    body = dict(note_sections(f"## Notes\n\n- {MARKS[0]}fake{MARKS[1]} {HOSTILE}\n"))["Notes"]
    assert MARKS[0] not in body and MARKS[1] not in body
    shown = str(highlight(f"a {MARKS[0]}hit{MARKS[1]} {HOSTILE}"))
    assert "<mark>hit</mark>" in shown
    assert "<script>" not in shown and "<img" not in shown and "&lt;script&gt;" in shown


async def index(store: Store, meeting_id: int, note: str, series_id: str = "team") -> None:
    async with store.transaction():
        await store.index_note(meeting_id, series_id, note_sections(note))


async def search(store: Store, query: str, series_ids: tuple[str, ...] = ("team",)
                 ) -> list[tuple[int, str, str, str]]:
    return await store.read.search_notes(query, series_ids, marks=MARKS)


async def test_search_finds_phrases_and_prefixes_with_the_hit_marked(store: Store) -> None:
    await index(store, 1, NOTE)
    [(meeting_id, series_id, section, snippet)] = await search(store, '"new parser"')
    assert (meeting_id, series_id, section) == (1, "team", "Updates")
    assert f"{MARKS[0]}new parser{MARKS[1]}" in snippet
    assert [hit[2] for hit in await search(store, "releas*")] == ["Agenda items"]
    assert await search(store, '"parser new"') == []


async def test_a_regenerated_note_replaces_its_old_text(store: Store) -> None:
    await index(store, 1, NOTE)
    await index(store, 1, NOTE.replace("Release planning", "Budget review"))
    assert await search(store, "release") == []
    assert len(await search(store, "budget")) == 1
    assert len(await search(store, "Lovelace")) == 2  # roll call and updates, once each


async def test_search_sees_only_the_meetings_it_is_given(store: Store) -> None:
    await index(store, 1, NOTE, "team")
    await index(store, 2, NOTE, "secret")
    assert {hit[1] for hit in await search(store, "parser", ("team",))} == {"team"}
    assert await search(store, "parser", ()) == []


@pytest.mark.parametrize("query", ['"unclosed', "AND", "a:b", "(x", "NEAR(", "*", "-x", "'"])
async def test_a_malformed_query_raises_an_operational_error_never_anything_else(
        store: Store, query: str) -> None:
    await index(store, 1, NOTE)
    with pytest.raises(sqlite3.OperationalError):
        await search(store, query)


# --- pictures --------------------------------------------------------------------------------


def test_the_attendance_grid_has_one_mark_per_person_per_sitting() -> None:
    sittings = [(1, "2026-06-04"), (2, "2026-06-11"), (3, "2026-06-18")]
    rows = [(1, "@ada", "Ada", False), (2, "@ada", "Ada", False), (2, "@grace", HOSTILE, False),
            (3, "@grace", HOSTILE, False), (3, "@grace", HOSTILE, True), (9, "@old", "Old", False)]
    grid = attendance_grid(sittings, rows)
    assert grid.people == (
        (HOSTILE, (Mark.ABSENT, Mark.PRESENT, Mark.PASSED)),
        ("Ada", (Mark.PRESENT, Mark.PRESENT, Mark.ABSENT)),
    )
    svg = str(attendance_svg(grid))
    assert len(re.findall(r'<g class="mark ', svg)) == 6
    assert svg.count('data-mark="absent"') == 2 and svg.count('data-mark="passed"') == 1
    assert "<script" not in svg and "<img" not in svg
    assert "<title>Ada, 2026-06-18: absent</title>" in svg  # readable without colour


def test_durations_are_drawn_against_the_slot_and_labelled() -> None:
    svg = str(durations_svg([("2026-06-11", timedelta(minutes=45)),
                             ("2026-06-18", timedelta(minutes=75))], timedelta(minutes=60)))
    assert "45 min" in svg and "75 min" in svg and 'class="slot"' in svg
    assert "against the 60-minute slot" in svg


def test_pages_escape_everything_from_chat() -> None:
    page = render_page("search.html.j2", query=HOSTILE, keys=[HOSTILE], error=None, limit=50,
                       results=[{"title": HOSTILE, "date": "2026-06-18", "section": HOSTILE,
                                 "url": "/meetings/team/2026-06-18",
                                 "snippet": highlight(HOSTILE)}])
    assert "<script>window" not in page and "<img src=x" not in page
    assert page.count("&lt;script&gt;") >= 3


def test_the_note_page_keeps_the_sanitizer_and_skips_no_heading_level() -> None:
    html = str(note_html(f"# Title\n\n#### Conduct\n\n## Roll call\n\n- {HOSTILE}\n"))
    assert re.findall(r"<h\d>", html) == ["<h1>", "<h2>", "<h2>"]
    assert "<script>" not in html and "<img" not in html and "javascript:" not in html.replace(
        "(javascript:alert(1))", "")


async def test_notes_closed_before_the_index_existed_are_indexed_once(store: Store) -> None:
    from chatbot.config import parse_config as parse
    from chatbot.meetings import index_missing_notes
    config = parse({
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "meetings": [{"id": "team", "title": "Team", "room": "#team:example.org",
                      "timezone": "UTC", "start": "2026-06-18 09:00"}],
    })
    async with store.transaction():
        held = await store.ensure_scheduled("team", RoomId("!t:example.org"), "Team", T0)
        await store.mark_started(held.id, T0, T0 + timedelta(hours=1), "Team")
        await store.mark_ended(held.id, T0 + timedelta(minutes=30))
        still_open = await store.create_adhoc("team", RoomId("!t:example.org"), "Extra",
                                              T0 + timedelta(hours=2), T0 + timedelta(hours=3))
    assert await index_missing_notes(store, config) == 1
    assert await index_missing_notes(store, config) == 0
    assert {hit[0] for hit in await search(store, "roll")} == {held.id}
    assert still_open.id not in await store.read.indexed_meetings()
