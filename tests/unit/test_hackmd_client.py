"""The HackMD client against the local contract server: notes, regions, limits, errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from chatbot.publish.hackmd import (
    HackMDClient,
    HackMDPermanent,
    HackMDToken,
    HackMDTransient,
    final_note,
    region_block,
)
from tests.support.hackmd_contract import HackMDContract
from tests.support.ports import free_port

TEMPLATE = ("# Hubs team meeting\n\n## Roll call\n" + region_block("roll-call", "")
            + "\n## Updates\n" + region_block("updates", "")
            + "\n## Agenda\n" + region_block("agenda-1", "### 1. Release plan (@min)")
            + region_block("agenda-end", ""))


class Clock:
    """One time for both sides: the server reads epoch seconds, the client datetimes."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def epoch(self) -> float:
        return self.now.timestamp()

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def hackmd(clock: Clock) -> AsyncIterator[HackMDContract]:
    async with HackMDContract(clock=clock.epoch) as server:
        yield server


@pytest.fixture
async def client(hackmd: HackMDContract, clock: Clock) -> AsyncIterator[HackMDClient]:
    token = HackMDToken.load(env="HACKMD_TOKEN", environ={"HACKMD_TOKEN": hackmd.token})
    async with HackMDClient(token, hackmd.api_url, clock=clock) as made:
        yield made


async def test_note_is_made_in_the_users_workspace_with_the_configured_permissions(
        client, hackmd):
    note = await client.create_note("Hubs team meeting: 2026-12-03", TEMPLATE,
                                    read="guest", write="signed_in")
    stored = hackmd.notes[note.id]
    assert (stored.read_permission, stored.write_permission) == ("guest", "signed_in")
    assert stored.team_path is None and stored.content == TEMPLATE
    assert note.publish_link and note.title == "Hubs team meeting: 2026-12-03"
    [call] = hackmd.calls_to("POST", "^/notes$")
    assert call.body == {"title": "Hubs team meeting: 2026-12-03", "content": TEMPLATE,
                         "readPermission": "guest", "writePermission": "signed_in"}


async def test_note_is_made_in_a_team_workspace_when_configured(client, hackmd):
    note = await client.create_note("t", TEMPLATE, read="signed_in", write="owner",
                                    team="jupyterhub")
    assert hackmd.notes[note.id].team_path == "jupyterhub" == note.team_path
    assert hackmd.calls_to("POST", "^/teams/jupyterhub/notes$")
    result = await client.write_regions(note.id, {"roll-call": "- Min"}, team="jupyterhub")
    assert result.outcome == "written"
    assert hackmd.calls_to("PATCH", "^/teams/jupyterhub/notes/")


async def test_bad_permission_is_refused_before_any_call(client, hackmd):
    with pytest.raises(ValueError, match="read permission"):
        await client.create_note("t", "x", read="everyone", write="owner")  # type: ignore[arg-type]
    assert hackmd.calls == []


async def test_regions_are_rewritten_and_a_persons_edit_outside_them_survives(
        client, hackmd, clock):
    note = await client.create_note("t", TEMPLATE, read="guest", write="signed_in")
    hackmd.human_edit(note.id, lambda page: page.replace(
        "## Updates\n", "## Updates\nSarah: a line typed in the editor\n"))
    result = await client.write_regions(note.id, {"roll-call": "- Min (@min)"})
    assert result.outcome == "written"
    page = hackmd.notes[note.id].content
    assert "Sarah: a line typed in the editor\n" in page
    assert region_block("roll-call", "- Min (@min)") in page


async def test_an_edit_between_the_bots_read_and_write_is_merged_not_lost(client, hackmd):
    note = await client.create_note("t", TEMPLATE, read="guest", write="signed_in")
    hackmd.human_edit_after_next_read(note.id, lambda page: page.replace(
        "### 1. Release plan (@min)\n<!-- /chatbot:agenda-1 -->\n",
        "### 1. Release plan (@min)\n<!-- /chatbot:agenda-1 -->\n- we agreed on Friday\n"))
    result = await client.write_regions(note.id, {"updates": "- Min: shipped 5.0"})
    assert result.outcome == "written"
    page = hackmd.notes[note.id].content
    assert "- we agreed on Friday\n" in page
    assert region_block("updates", "- Min: shipped 5.0") in page
    # read, ask again (the page moved: 200), ask again (304), then write.
    statuses = [(c.method, c.status) for c in hackmd.calls[1:]]
    assert statuses == [("GET", 200), ("GET", 200), ("GET", 304), ("PATCH", 202)]


async def test_a_write_retried_after_a_failure_merges_into_the_page_as_it_is_then(
        client, hackmd):
    note = await client.create_note("t", TEMPLATE, read="guest", write="signed_in")
    hackmd.fail("PATCH", "/notes/", 503)
    with pytest.raises(HackMDTransient):
        await client.write_regions(note.id, {"roll-call": "- Min"})
    hackmd.human_edit(note.id, lambda page: page + "\nAction: Sarah to write the post\n")
    assert (await client.write_regions(note.id, {"roll-call": "- Min"})).outcome == "written"
    page = hackmd.notes[note.id].content
    assert page.endswith("\nAction: Sarah to write the post\n")
    assert region_block("roll-call", "- Min") in page


async def test_at_most_one_write_a_minute_and_none_when_nothing_changed(
        client, hackmd, clock):
    note = await client.create_note("t", TEMPLATE, read="guest", write="signed_in")
    assert (await client.write_regions(note.id, {"roll-call": "- a"})).outcome == "written"
    calls = len(hackmd.calls)
    assert (await client.write_regions(note.id, {"roll-call": "- a"})).outcome == "unchanged"
    clock.advance(seconds=20)
    deferred = await client.write_regions(note.id, {"roll-call": "- a\n- b"})
    assert deferred.outcome == "deferred"
    assert deferred.not_before == clock.now + timedelta(seconds=40)
    assert len(hackmd.calls) == calls  # neither cost a call
    clock.advance(seconds=40)
    assert (await client.write_regions(note.id, {"roll-call": "- a\n- b"})).outcome == "written"


async def test_no_patch_when_the_page_already_says_it(client, hackmd):
    note = await client.create_note("t", TEMPLATE, read="guest", write="signed_in")
    result = await client.write_regions(note.id, {"agenda-1": "### 1. Release plan (@min)"})
    assert result.outcome == "already"
    assert hackmd.calls_to("PATCH") == []


async def test_new_agenda_items_are_inserted_and_a_deleted_one_is_not_put_back(
        client, hackmd, clock):
    note = await client.create_note("t", TEMPLATE, read="guest", write="signed_in")
    agenda = {"agenda-1": "### 1. Release plan (@min)", "agenda-2": "### 2. Docs (@sarah)"}
    result = await client.write_regions(note.id, agenda, insert_before="agenda-end")
    assert result.inserted == ("agenda-2",) and "agenda-2" in result.placed
    hackmd.human_edit(note.id, lambda page: page.replace(
        region_block("agenda-2", "### 2. Docs (@sarah)"), ""))
    clock.advance(minutes=1)
    agenda["agenda-1"] = "### 1. Release plan (@min) ✅"
    result = await client.write_regions(note.id, agenda, insert_before="agenda-end",
                                         placed=result.placed)
    assert "agenda-2" in result.skipped
    assert "Docs" not in hackmd.notes[note.id].content


async def test_calls_left_follows_hackmds_headers(client, hackmd, clock):
    assert client.calls_left is None
    await client.whoami()
    assert client.calls_left == 99
    await client.whoami()
    assert client.calls_left == 98 and client.calls_made == 2
    clock.advance(minutes=5)
    assert client.calls_left == 100  # the window HackMD announced is over


async def test_429_is_transient_until_the_window_resets_and_no_call_is_wasted(
        client, hackmd, clock):
    hackmd.window_limit = 2
    await client.whoami()
    await client.whoami()
    assert client.calls_left == 0
    with pytest.raises(HackMDTransient) as raised:
        await client.whoami()
    reset = clock.now + timedelta(minutes=5)
    assert raised.value.retry_at == reset
    assert len(hackmd.calls) == 2  # refused here, not spent on a certain 429
    clock.advance(minutes=5)
    await client.whoami()
    assert client.calls_left == 1


async def test_a_429_from_hackmd_carries_the_reset_time(client, hackmd, clock):
    hackmd.monthly_quota = 0
    with pytest.raises(HackMDTransient, match="monthly API quota is used up") as raised:
        await client.whoami()
    assert raised.value.retry_at == clock.now + timedelta(minutes=5)


async def test_final_note_is_the_page_as_the_team_left_it(client, hackmd):
    note = await client.create_note("t", TEMPLATE, read="guest", write="signed_in")
    await client.write_regions(note.id, {"roll-call": "- Min\n- Sarah"})
    hackmd.human_edit(note.id, lambda page: page.replace(
        "<!-- /chatbot:agenda-1 -->\n",
        "<!-- /chatbot:agenda-1 -->\n- decided: ship Friday\n  - Min to tag\n"))
    final = final_note((await client.read_note(note.id)).content)
    assert final == ("# Hubs team meeting\n\n## Roll call\n- Min\n- Sarah\n\n## Updates\n"
                     "\n## Agenda\n### 1. Release plan (@min)\n"
                     "- decided: ship Friday\n  - Min to tag\n")


@pytest.mark.parametrize(("status", "kind", "says"), [
    (500, HackMDTransient, r"HackMD failed \(500\)"),
    (502, HackMDTransient, r"HackMD failed \(502\)"),
    (429, HackMDTransient, "429"),
    (401, HackMDPermanent, "Settings > API"),
    (404, HackMDPermanent, "deleted or moved"),
    (403, HackMDPermanent, "member of"),
])
async def test_errors_are_mapped_to_transient_or_permanent_with_what_to_fix(
        client, hackmd, status, kind, says):
    note = await client.create_note("t", TEMPLATE, read="guest", write="signed_in")
    hackmd.fail("GET", f"/notes/{note.id}$", status)
    with pytest.raises(kind, match=says):
        await client.write_regions(note.id, {"roll-call": "- a"})


async def test_a_refused_token_is_permanent_and_never_shown(hackmd, clock, caplog):
    caplog.set_level(logging.DEBUG)
    token = HackMDToken("secret-token-value", "$HACKMD_TOKEN")
    async with HackMDClient(token, hackmd.api_url, clock=clock) as client:
        with pytest.raises(HackMDPermanent) as raised:
            await client.create_note("t", "x", read="guest", write="owner")
        assert raised.value.status == 401
        assert "$HACKMD_TOKEN" in str(raised.value)
        for shown in (str(raised.value), repr(client), repr(token), str(token),
                      caplog.text):
            assert "secret-token-value" not in shown


async def test_unknown_team_is_permanent(client):
    with pytest.raises(HackMDPermanent, match="member of team 'strangers'"):
        await client.create_note("t", "x", read="guest", write="owner", team="strangers")


async def test_unreachable_hackmd_is_transient(clock):
    token = HackMDToken("t")
    async with HackMDClient(token, f"http://127.0.0.1:{free_port()}/v1",
                            clock=clock) as client:
        with pytest.raises(HackMDTransient, match="unreachable"):
            await client.read_note("x")


def test_token_comes_from_the_environment_or_a_file(tmp_path):
    assert HackMDToken.load(env="T", environ={"T": " abc\n"}).reveal() == "abc"
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    token = HackMDToken.load(env="T", file=secret, environ={})
    assert token.reveal() == "from-file" and "from-file" not in repr(token)
    with pytest.raises(ValueError, match="T holding the HackMD token is not set"):
        HackMDToken.load(env="T", environ={})
    with pytest.raises(ValueError, match="cannot read"):
        HackMDToken.load(file=tmp_path / "missing")


async def test_creating_with_a_key_finds_the_note_an_earlier_attempt_made(client, hackmd):
    key = "chatbot hubs-team 2026-12-03"
    first = await client.create_note("t", TEMPLATE, read="guest", write="signed_in",
                                     key=key)
    # The answer to that POST was lost; the durable job tries again.
    again = await client.create_note("t", TEMPLATE, read="guest", write="signed_in",
                                     key=key)
    assert again.id == first.id and len(hackmd.notes) == 1
    assert len(hackmd.calls_to("POST")) == 1


async def test_a_207_on_create_still_gives_the_note(client, hackmd):
    hackmd.create_multi_status = True
    note = await client.create_note("t", TEMPLATE, read="guest", write="signed_in")
    assert note.id in hackmd.notes and note.content == TEMPLATE


async def test_a_page_already_saying_it_costs_no_pacing(client, hackmd, clock):
    note = await client.create_note("t", TEMPLATE, read="guest", write="signed_in")
    result = await client.write_regions(note.id, {"agenda-1": "### 1. Release plan (@min)"})
    assert result.outcome == "already"
    changed = await client.write_regions(note.id, {"roll-call": "- Min"})
    assert changed.outcome == "written"
