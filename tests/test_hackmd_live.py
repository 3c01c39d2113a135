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
