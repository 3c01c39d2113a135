"""The HackMD client against the real HackMD, when a token is given.

Run with `CHATBOT_TEST_HACKMD_TOKEN=... pytest tests/test_hackmd_live.py`; optionally
`CHATBOT_TEST_HACKMD_API_URL` (default https://api.hackmd.io/v1) and
`CHATBOT_TEST_HACKMD_TEAM` (a team path the token's account may write in). Each run makes
one private note, spends about ten calls of the monthly quota, and deletes the note.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from chatbot.publish.hackmd import (
    DEFAULT_API_URL,
    HackMDClient,
    HackMDPermanent,
    HackMDToken,
    WriteThrottle,
    final_note,
    region_block,
)

TOKEN = os.environ.get("CHATBOT_TEST_HACKMD_TOKEN", "")
API_URL = os.environ.get("CHATBOT_TEST_HACKMD_API_URL", DEFAULT_API_URL)
TEAM = os.environ.get("CHATBOT_TEST_HACKMD_TEAM") or None

pytestmark = pytest.mark.skipif(
    not TOKEN, reason="CHATBOT_TEST_HACKMD_TOKEN is not set: live HackMD tests skipped")


@pytest.fixture
async def client() -> AsyncIterator[HackMDClient]:
    token = HackMDToken.load(env="CHATBOT_TEST_HACKMD_TOKEN")
    # No pacing: the test writes twice in a row on purpose.
    async with HackMDClient(token, API_URL, throttle=WriteThrottle(timedelta(0))) as made:
        yield made


async def test_note_round_trip_keeps_peoples_text(client):
    me = await client.whoami()
    assert me.get("userPath")
    template = ("# chatbot live test\n" + region_block("roll-call", "")
                + "typed by a person\n")
    note = await client.create_note("chatbot live test (safe to delete)", template,
                                    read="owner", write="owner", team=TEAM)
    try:
        assert note.read_permission == "owner" and note.write_permission == "owner"
        result = await client.write_regions(note.id, {"roll-call": "- Min"}, team=TEAM)
        assert result.outcome == "written"
        read = await client.read_note(note.id, team=TEAM)
        assert final_note(read.content) == "# chatbot live test\n- Min\ntyped by a person\n"
        assert client.calls_left is not None
    finally:
        await client.delete_note(note.id, team=TEAM)
    with pytest.raises(HackMDPermanent, match="404"):
        await client.read_note(note.id, team=TEAM)


async def test_a_bad_token_is_reported_as_permanent():
    async with HackMDClient(HackMDToken("not-a-token"), API_URL) as client:
        with pytest.raises(HackMDPermanent, match="401"):
            await client.whoami()


async def test_the_bots_page_is_made_once_and_read_back(client):
    """The bot's own use of HackMD: a page from the standard template, made twice with the
    same key (one note), its regions written, and read back as the final note."""
    from zoneinfo import ZoneInfo

    from chatbot.config import parse_config
    from chatbot.publish.notes_page import HackMDPages, MakePage, page_content, page_regions
    from chatbot.render import sample_record

    hackmd: dict[str, object] = {"token_env": "CHATBOT_TEST_HACKMD_TOKEN", "api_url": API_URL,
                                 "read": "owner", "write": "owner"}
    if TEAM:
        hackmd["team"] = TEAM
    config = parse_config({
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "meetings": [{"id": "live", "title": "chatbot live test (safe to delete)",
                      "room": "#live:example.org", "timezone": "UTC",
                      "start": "2026-06-18 11:00", "publish": {"hackmd": hackmd}}]})
    record = sample_record()
    regions = page_regions(record, ZoneInfo("UTC"), {})
    job = MakePage("live", 1, "2021-06-17", "chatbot live test (safe to delete)",
                   page_content(record, ZoneInfo("UTC"), {}), regions)
    pages = HackMDPages(config)
    made = await pages.make(job)
    try:
        assert (await pages.make(job)).note_id == made.note_id  # found by its key
        assert made.url.startswith("http")
        note = await pages.read_back("live", made.note_id,
                                     {**regions, "roll-call": "- Min / live"}, made.placed)
        assert "- Min / live\n" in note and "<!--" not in note
        assert pages.calls_left is not None
    finally:
        await client.delete_note(made.note_id, team=TEAM)
