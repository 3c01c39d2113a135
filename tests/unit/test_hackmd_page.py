"""The meeting's HackMD page through the bot, against the contract server: made once
`notes_ahead` before the sitting whatever crashes in between, its link the sitting's
"Notes" link, its regions rewritten at most once a minute while people's edits stay,
HackMD's rate limit honoured, and the final note the page read back at the close; a
token or team that cannot work told to the chairs once, the meeting unaffected."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from chatbot.app import archive_dir, database_path
from chatbot.bot import MeetingBot
from chatbot.cli import check, check_online, print_note, publish_again
from chatbot.config import ConfigError, parse_config
from chatbot.meetings import JobKind, Rooms, final_note_of
from chatbot.metrics import Metrics
from chatbot.model import EventId, RoomId, UserId
from chatbot.publish import HACKMD_FINAL, HACKMD_NOTE, PublishFailed
from chatbot.publish.git import GitArchive
from chatbot.publish.hackmd import final_note, find_regions
from chatbot.publish.issue import GitHubIssues
from chatbot.publish.notes_page import (
    AGENDA_END,
    FINAL_WAIT,
    HackMDPages,
    keep_removed_items,
    page_content,
    page_key,
    page_regions,
)
from chatbot.render import render_note, sample_record
from chatbot.store import Store
from tests.support.clock import ManualClock
from tests.support.driving import BotDriver
from tests.support.github_contract import GitHubContract
from tests.support.hackmd_contract import HackMDContract
from tests.support.transports import RecordingTransport
from tests.unit.test_git_archive import bare_remote, commits, committed

ROOM = RoomId("!room:example.org")
CHAIR = UserId("@chair:example.org")
ADA = UserId("@ada:example.org")
START = datetime(2026, 6, 18, 9, 0, tzinfo=UTC)
# An hour before the page is due (a day ahead of the sitting).
T0 = START - timedelta(days=1, hours=1)
HUMAN_BULLET = "    - Grace: we ship it on Friday, typed on the page"


def config_data(api: str, **hackmd: Any) -> dict[str, Any]:
    return {
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "jobs": {"retry_cap": "10s", "park_after": "1h"},
        "meetings": [{"id": "team", "title": "Team", "room": "#team:example.org",
                      "timezone": "Europe/Paris", "start": "2026-06-18 11:00",
                      "rrule": "FREQ=WEEKLY", "chairs": [CHAIR], "reminders": ["1h"],
                      "links": {"notes": "https://notes.example.org/static",
                                "issue": "https://example.org/issue"},
                      "publish": {"hackmd": {"token_env": "HACKMD_TOKEN", "api_url": api,
                                             "team": "jupyterhub", **hackmd}}}],
    }


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def hackmd(clock: ManualClock) -> AsyncIterator[HackMDContract]:
    async with HackMDContract(clock=lambda: clock.now.timestamp()) as server:
        yield server


class Harness(BotDriver):
    def __init__(self, bot: MeetingBot, transport: RecordingTransport, clock: ManualClock,
                 pages: HackMDPages) -> None:
        super().__init__(bot, transport, clock, room=ROOM, chair=CHAIR)
        self.pages = pages


class make_harness:
    def __init__(self, tmp_path: Path, hackmd: HackMDContract, clock: ManualClock, *,
                 token: str | None = None, **settings: Any) -> None:
        self.args = tmp_path, hackmd, clock, token, settings

    async def __aenter__(self) -> Harness:
        tmp_path, hackmd, clock, token, settings = self.args
        config = parse_config(config_data(hackmd.api_url, **settings))
        transport = RecordingTransport({CHAIR: 100})
        self.store = await Store.open(tmp_path / "bot.db")
        pages = HackMDPages(config, clock=clock,
                            environ={"HACKMD_TOKEN": token or hackmd.token})
        bot = MeetingBot(Rooms(config, {"team": ROOM}), self.store, tmp_path / "notes",
                         transport, clock=clock, metrics=Metrics(clock), targets=[pages])
        return Harness(bot, transport, clock, pages)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.store.close()


@pytest.fixture
async def harness(tmp_path: Path, hackmd: HackMDContract, clock: ManualClock
                  ) -> AsyncIterator[Harness]:
    async with make_harness(tmp_path, hackmd, clock) as made:
        yield made


def the_page(hackmd: HackMDContract) -> Any:
    [note] = hackmd.notes.values()
    return note


async def made_page(harness: Harness, hackmd: HackMDContract) -> Any:
    harness.clock.now = START - timedelta(days=1)
    assert await harness.run(JobKind.NOTES_PAGE)
    await harness.drain()
    return the_page(hackmd)


def under_item(text: str, item_id: int, line: str) -> str:
    """A person types `line` just below an agenda item's region."""
    close = f"<!-- /chatbot:agenda-{item_id} -->\n"
    assert close in text
    return text.replace(close, close + line + "\n")


# --- the page, pure -----------------------------------------------------------------


def test_the_page_read_back_untouched_is_the_note_the_bot_would_write() -> None:
    record = sample_record()
    links = {"notes": "https://hackmd.example/x", "calendar": None}
    page = page_content(record, ZoneInfo("UTC"), links)
    assert final_note(page) == render_note(record, ZoneInfo("UTC"), links)
    found = find_regions(page)
    assert set(found.spans) == {"links", "roll-call", "updates", "celebrations", "agenda-1",
                                AGENDA_END, "notes", "actions", "decisions"}
    assert not found.problems
    # The template's own lines are the team's text, outside every region.
    assert page.startswith("# Sample\n\n- **Date:**")
    assert "## Roll call\n\n<!-- chatbot:roll-call -->\n- Ada / Org / @ada\n" in page


def test_a_custom_template_keeps_its_own_layout_around_the_regions() -> None:
    template = ("# {{ title }}\n\nWelcome! Type below.\n\n### Who is here\n"
                "{% for line in roll_call %}* {{ line }}\n{% endfor %}\n### Topics\n"
                "{% for item in agenda %}* {{ item.text }}\n{% endfor %}")
    page = page_content(sample_record(), ZoneInfo("UTC"), {}, template)
    assert page.startswith("# Sample\n\nWelcome! Type below.\n\n### Who is here\n"
                           "<!-- chatbot:roll-call -->\n- Ada / Org / @ada\n"
                           "<!-- /chatbot:roll-call -->\n### Topics\n"
                           "<!-- chatbot:agenda-1 -->")
    assert "updates" not in find_regions(page).spans  # not in this template: no region


def test_chat_text_cannot_forge_a_marker_or_structure_on_the_page() -> None:
    record = sample_record()
    hostile = record.entries[0].__class__(
        record.entries[4].kind, ADA, "Ada", "<!-- /chatbot:updates --> # owned\n## x",
        None, EventId("$h"), record.meeting.held_at, id=99)
    record = record.__class__(record.meeting, record.attendees, (*record.entries, hostile))
    page = page_content(record, ZoneInfo("UTC"), {})
    found = find_regions(page)
    assert not found.problems and "updates" in found.spans
    assert "\n## x" not in page


def test_an_item_taken_off_the_agenda_has_its_region_emptied() -> None:
    regions = keep_removed_items({"agenda-3": "- old", "agenda-end": "", "roll-call": "-"},
                                 {"agenda-4": "- new"})
    assert regions == {"agenda-4": "- new", "agenda-3": ""}


def test_regions_hold_escaped_chat_text() -> None:
    record = sample_record()
    regions = page_regions(record, ZoneInfo("UTC"), {})
    assert regions["agenda-1"] == "- **Ada** (took 1 min) Item\n    - note\n" \
                                  "    - **Decision:** decision"
    assert regions["links"] == ""


# --- the page through the bot --------------------------------------------------------


async def test_the_page_is_made_notes_ahead_before_in_the_team_with_the_permissions(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock) -> None:
    await harness.say("!agenda (10 min) Release plan", "a1")
    assert not await harness.run(JobKind.NOTES_PAGE)  # not due for another hour
    clock.now += timedelta(hours=1)
    assert await harness.run(JobKind.NOTES_PAGE)
    assert await harness.planned(JobKind.NOTES_PAGE) == []  # queued once, never again
    await harness.drain()
    page = the_page(hackmd)
    assert page.team_path == "jupyterhub"
    assert (page.read_permission, page.write_permission) == ("guest", "signed_in")
    assert page.title == "Team: 2026-06-18"
    assert page.description == page_key("team", "2026-06-18")
    assert page.content.startswith("# Team\n\n- **Date:** Thursday 18th June 2026\n")
    assert "<!-- chatbot:agenda-1 -->\n- **Chair** (10 min) Release plan\n" in page.content
    url = await harness.bot.store.read.hackmd_url(1)
    assert url == f"{hackmd.url}/@jupyterhub/{page.short_id}"
    assert not harness.transport.chairs_told()


async def test_a_bot_started_within_notes_ahead_makes_the_page_at_once(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock) -> None:
    clock.now = START - timedelta(hours=3)
    [job] = await harness.planned(JobKind.NOTES_PAGE)
    assert job.due_at < clock.now
    assert await harness.run(JobKind.NOTES_PAGE)
    await harness.drain()
    assert len(hackmd.notes) == 1


async def test_the_page_is_made_once_when_hackmds_answer_was_lost(
        tmp_path: Path, harness: Harness, hackmd: HackMDContract, clock: ManualClock) -> None:
    hackmd.fail("POST", r"/notes$", 502, after_work=True)
    clock.now = START - timedelta(days=1)
    await harness.run(JobKind.NOTES_PAGE)
    await harness.drain()  # HackMD made the note; the bot never heard
    assert len(hackmd.notes) == 1 and await harness.bot.store.read.hackmd_url(1) is None
    clock.now += timedelta(minutes=1)
    await harness.drain()
    assert len(hackmd.notes) == 1
    assert len(hackmd.calls_to("POST", r"/notes$")) == 1
    assert await harness.bot.store.read.hackmd_url(1) is not None
    # A restart plans no second page either.
    async with make_harness(tmp_path, hackmd, clock) as again:
        assert await again.planned(JobKind.NOTES_PAGE) == []
        await again.drain()
    assert len(hackmd.notes) == 1


async def test_the_page_link_replaces_the_static_notes_link_in_reminder_start_and_note(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock) -> None:
    await made_page(harness, hackmd)
    url = await harness.bot.store.read.hackmd_url(1)
    clock.now = START - timedelta(hours=1)
    assert await harness.run(JobKind.REMINDER)
    clock.now = START
    assert await harness.run(JobKind.START)
    await harness.say("!here", "h1")
    await harness.say("!endmeeting", "e1")
    clock.now += timedelta(minutes=1)
    await harness.drain()
    texts = harness.transport.texts()
    reminder = next(text for text in texts if text.startswith("**Reminder:**"))
    start = next(text for text in texts if "is starting now" in text)
    note = next(text for text in texts if text.startswith("# Team"))
    for text in (reminder, start, note):
        assert f"- **Notes:** <{url}>" in text, text
        assert "notes.example.org/static" not in text


async def test_regions_follow_the_entries_at_most_once_a_minute_and_only_when_changed(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock) -> None:
    page = await made_page(harness, hackmd)
    clock.now = START
    assert await harness.run(JobKind.START)
    assert await harness.planned(JobKind.NOTES_REGIONS) == []  # nothing changed yet
    await harness.say("!here Ada Lovelace / Analytical Engines", "h1", ADA)
    [job] = await harness.planned(JobKind.NOTES_REGIONS)
    assert job.due_at == START - timedelta(days=1) + timedelta(minutes=1)  # long past: now
    assert await harness.run(JobKind.NOTES_REGIONS)
    await harness.drain()
    assert "- Ada Lovelace / Analytical Engines\n<!-- /chatbot:roll-call -->" in page.content
    patches = len(hackmd.calls_to("PATCH"))
    await harness.say("!update wired HackMD", "u1", ADA)
    [job] = await harness.planned(JobKind.NOTES_REGIONS)
    assert job.due_at == START + timedelta(minutes=1)  # a minute after the last write
    assert not await harness.run(JobKind.NOTES_REGIONS)
    clock.now += timedelta(minutes=1)
    assert await harness.run(JobKind.NOTES_REGIONS)
    await harness.drain()
    assert "- **Ada Lovelace:** wired HackMD" in page.content
    assert len(hackmd.calls_to("PATCH")) == patches + 1
    clock.now += timedelta(minutes=5)
    assert await harness.planned(JobKind.NOTES_REGIONS) == []  # unchanged: no write


async def test_a_person_editing_between_the_bots_read_and_write_keeps_their_edit(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock) -> None:
    await harness.say("!agenda (10 min) Release plan", "a1")
    page = await made_page(harness, hackmd)
    clock.now = START
    await harness.run(JobKind.START)
    hackmd.human_edit(page.id, lambda text: under_item(text, 1, HUMAN_BULLET))
    hackmd.human_edit_after_next_read(
        page.id, lambda text: text.replace("## Quick updates", "## Quick updates (60 s each)"))
    await harness.say("!celebrate the page works", "c1", ADA)
    assert await harness.run(JobKind.NOTES_REGIONS)
    await harness.drain()
    assert "- the page works\n<!-- /chatbot:celebrations -->" in page.content
    assert HUMAN_BULLET in page.content
    assert "## Quick updates (60 s each)" in page.content
    # The write came after a second look (If-None-Match) found the page changed.
    assert [call.status for call in hackmd.calls_to("GET", r"/notes/")][-3:] == \
        [200, 200, 304]


async def test_hackmds_rate_limit_is_honoured_until_its_reset(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock) -> None:
    page = await made_page(harness, hackmd)
    clock.now = START
    await harness.run(JobKind.START)
    reset = clock.now + timedelta(minutes=3)
    hackmd.fail("GET", r"/notes/", 429, headers={
        "X-RateLimit-UserLimit": "100", "X-RateLimit-UserRemaining": "0",
        "X-RateLimit-UserReset": str(int(reset.timestamp())), "Retry-After": "180"})
    await harness.say("!here", "h1", ADA)
    assert await harness.run(JobKind.NOTES_REGIONS)
    await harness.drain()
    calls = len(hackmd.calls)
    [waiting] = [item for item in await harness.bot.store.read.pending_outbox()
                 if item.kind == "hackmd_regions"]
    assert waiting.next_attempt_at == reset  # not the backoff's 10 s, HackMD's reset
    clock.now += timedelta(minutes=2)
    await harness.drain()
    assert len(hackmd.calls) == calls  # no call spent on a certain 429
    clock.now = reset
    await harness.drain()
    assert "- Ada / @ada:example.org\n<!-- /chatbot:roll-call -->" in page.content
    assert not harness.transport.chairs_told()
    metrics = harness.bot.metrics.render().decode()
    assert re.search(r"^chatbot_hackmd_calls_left \d+\.0$", metrics, re.MULTILINE)
    assert f"chatbot_hackmd_calls_total {float(len(hackmd.calls))}" in metrics


async def test_the_final_note_is_the_page_as_the_team_left_it(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock, tmp_path: Path) -> None:
    await harness.say("!agenda (10 min) Release plan", "a1")
    page = await made_page(harness, hackmd)
    clock.now = START
    await harness.run(JobKind.START)
    await harness.say("!here Ada Lovelace", "h1", ADA)
    await harness.say("!next", "n1")
    hackmd.human_edit(page.id, lambda text: under_item(text, 1, HUMAN_BULLET))
    clock.now += timedelta(seconds=20)
    await harness.say("!endmeeting", "e1")
    texts = harness.transport.texts
    assert not any(text.startswith("# Team") for text in texts())  # waits for the page
    await harness.drain()  # the regions were last written a day ago: at once
    [note] = [text for text in texts() if text.startswith("# Team")]
    assert "- **Chair** (10 min, took 1 min) Release plan\n" + HUMAN_BULLET in note
    assert "- Ada Lovelace\n" in note and "<!--" not in note
    assert note == final_note(page.content)
    saved = (tmp_path / "notes" / "team" / "2026-06-18.md").read_text()
    assert saved == note
    meeting = await harness.bot.store.read.get_meeting(1)
    assert meeting is not None
    series = harness.bot.rooms.series("team")
    assert series is not None
    assert await final_note_of(harness.bot.store.read, series, meeting) == note
    assert not harness.transport.chairs_told()


async def test_a_close_soon_after_a_write_waits_out_the_minute(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock) -> None:
    await made_page(harness, hackmd)
    clock.now = START
    await harness.run(JobKind.START)
    await harness.say("!here", "h1", ADA)
    await harness.run(JobKind.NOTES_REGIONS)
    await harness.drain()
    clock.now += timedelta(seconds=10)
    await harness.say("!endmeeting", "e1")
    await harness.drain()
    [final_job] = [item for item in await harness.bot.store.read.pending_outbox()
                   if item.kind == HACKMD_FINAL]
    assert final_job.next_attempt_at == START + timedelta(minutes=1)
    clock.now = START + timedelta(minutes=1)
    await harness.drain()
    assert any(text.startswith("# Team") for text in harness.transport.texts())


async def test_hackmd_down_at_the_close_gives_the_bots_own_note_after_a_bounded_wait(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock) -> None:
    page = await made_page(harness, hackmd)
    clock.now = START
    await harness.run(JobKind.START)
    await harness.say("!update down but recorded", "u1", ADA)
    hackmd.human_edit(page.id, lambda text: text + "\ntyped on the page\n")
    hackmd.fail("*", r"/notes/", 503, times=1000)
    await harness.say("!endmeeting", "e1")
    await harness.drain()
    assert not any(text.startswith("# Team") for text in harness.transport.texts())
    while clock.now < START + FINAL_WAIT + timedelta(minutes=1):
        clock.now += timedelta(seconds=30)
        await harness.drain()
    [told] = harness.transport.chairs_told()
    assert "could not read the meeting's HackMD page back (HackMD failed (503)" in told
    [note] = [text for text in harness.transport.texts() if text.startswith("# Team")]
    assert "- **Ada:** down but recorded" in note and "typed on the page" not in note
    assert not await harness.bot.store.read.has_pending_outbox()


@pytest.mark.parametrize(
    ("break_it", "status", "says"),
    [
        pytest.param({"token": "hmd-wrong"}, 401, "HackMD refused the API token", id="401"),
        pytest.param({"team": "elsewhere"}, 403, "make the token's account a member of team "
                     "'elsewhere'", id="403"),
    ],
)
async def test_a_token_or_team_that_cannot_work_is_told_to_the_chairs_once(
        tmp_path: Path, hackmd: HackMDContract, clock: ManualClock, break_it: dict[str, str],
        status: int, says: str) -> None:
    async with make_harness(tmp_path, hackmd, clock, **break_it) as harness:
        clock.now = START - timedelta(days=1)
        await harness.run(JobKind.NOTES_PAGE)
        await harness.drain()
        [told] = harness.transport.chairs_told()
        assert told.startswith("**Chairs:** I could not make the notes page of the meeting "
                               "on 2026-06-18 on HackMD")
        assert says in told and f"({status})" in told and "hmd-wrong" not in told
        clock.now += timedelta(hours=2)
        await harness.drain()
        assert await harness.planned(JobKind.NOTES_PAGE) == []
        # The meeting goes on, its note the bot's own, with the static link.
        clock.now = START
        await harness.run(JobKind.START)
        await harness.say("!endmeeting", "e1")
        await harness.drain()
        [note] = [text for text in harness.transport.texts() if text.startswith("# Team")]
        assert "notes.example.org/static" in note
        assert len(harness.transport.chairs_told()) == 1
        assert not await harness.bot.store.read.has_pending_outbox()


async def test_a_page_deleted_meanwhile_404_gives_the_bots_own_note_and_says_so(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock) -> None:
    page = await made_page(harness, hackmd)
    clock.now = START
    await harness.run(JobKind.START)
    del hackmd.notes[page.id]
    await harness.say("!here", "h1", ADA)
    await harness.run(JobKind.NOTES_REGIONS)
    await harness.drain()  # refused quietly: the close says it
    assert not harness.transport.chairs_told()
    await harness.say("!endmeeting", "e1")
    clock.now += timedelta(minutes=1)
    await harness.drain()
    [told] = harness.transport.chairs_told()
    assert "HackMD has no note" in told and "(404)" in told
    assert any(text.startswith("# Team") for text in harness.transport.texts())


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_hackmd_hiccup_is_retried_quietly(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock, status: int) -> None:
    hackmd.fail("POST", r"/notes$", status, times=2)
    clock.now = START - timedelta(days=1)
    await harness.run(JobKind.NOTES_PAGE)
    await harness.drain()
    assert hackmd.notes == {}
    for _ in range(3):
        clock.now += timedelta(seconds=30)
        await harness.drain()
    assert len(hackmd.notes) == 1
    assert harness.transport.chairs_told() == []
    assert not [item for item in harness.transport.sent if item.kind == HACKMD_NOTE]


async def test_one_whole_meeting_makes_few_calls(
        harness: Harness, hackmd: HackMDContract, clock: ManualClock) -> None:
    await harness.say("!agenda (10 min) Release plan", "a1")
    await made_page(harness, hackmd)
    clock.now = START
    await harness.run(JobKind.START)
    for number, command in enumerate(["!here", "!update one", "!celebrate two", "!next",
                                      "!note three", "!action ada: four"]):
        await harness.say(command, f"c{number}", ADA if number < 3 else CHAIR)
        clock.now += timedelta(minutes=1)
        await harness.run(JobKind.NOTES_REGIONS)
        await harness.drain()
    await harness.say("!endmeeting", "e1")
    clock.now += timedelta(minutes=1)
    await harness.drain()
    calls = [f"{call.method} {re.sub(r'/notes/[^/]+', '/notes/ID', call.path)} {call.status}"
             for call in hackmd.calls]
    print(f"{len(calls)} HackMD calls in one meeting:\n" + "\n".join(calls))
    write = ["GET /teams/jupyterhub/notes/ID 200", "GET /teams/jupyterhub/notes/ID 304",
             "PATCH /teams/jupyterhub/notes/ID 202"]
    assert calls == [
        "GET /teams/jupyterhub/notes 200",  # is the page there already (a lost answer)?
        "POST /teams/jupyterhub/notes 201",
        *write * 6,  # one write per changed minute
        *write, "GET /teams/jupyterhub/notes/ID 200",  # the close: last write, read back
    ]
    assert harness.pages.calls_made == len(calls) == 24


async def test_check_online_tries_the_token_and_the_team(
        hackmd: HackMDContract, clock: ManualClock) -> None:
    def pages(token: str, **settings: Any) -> HackMDPages:
        return HackMDPages(parse_config(config_data(hackmd.api_url, **settings)),
                           clock=clock, environ={"HACKMD_TOKEN": token})

    assert await pages(hackmd.token).check("team") == \
        "the token (chatbot-tester) may make notes in team jupyterhub"
    with pytest.raises(PublishFailed, match=r"not a member of the HackMD team 'other'"):
        await pages(hackmd.token, team="other").check("team")
    with pytest.raises(PublishFailed, match=r"\(401\)") as refused:
        await pages("hmd-wrong").check("team")
    assert refused.value.permanent
    assert len(hackmd.notes) == 0 and not hackmd.calls_to("POST")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"token_env": None}, "publish.hackmd: expected exactly one of `token_env`"),
        ({"token_env": "hmd abc"}, "publish.hackmd.token_env: expected the name of an "
                                   "environment variable"),
        ({"read": "everyone"}, "publish.hackmd.read: "),
        ({"team": "a team"}, "publish.hackmd.team: expected something like"),
        ({"notes_ahead": "0s"}, "publish.hackmd.notes_ahead: expected a duration longer"),
        ({"api_url": "ftp://x"}, "publish.hackmd.api_url: expected an http(s) URL"),
    ],
)
def test_bad_hackmd_settings_name_the_key(settings: dict[str, Any], message: str) -> None:
    data = config_data("https://api.hackmd.io/v1", **settings)
    hackmd = data["meetings"][0]["publish"]["hackmd"]
    for key, value in settings.items():
        if value is None:
            del hackmd[key]
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert f"meetings[0].{message}" in str(raised.value)
    assert "\n" not in str(raised.value) and "hmd abc" not in str(raised.value)


async def test_the_archive_chatbot_notes_and_chatbot_publish_all_get_the_page_read_back(
        tmp_path: Path, hackmd: HackMDContract, clock: ManualClock,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    remote = bare_remote(tmp_path)
    data = config_data(hackmd.api_url)
    data["data_dir"] = str(tmp_path / "data")
    data["meetings"][0]["publish"]["git"] = {"remote": remote.as_uri(), "path": "{date}.md",
                                             "mode": "file"}
    config = parse_config(data)
    config.data_dir.mkdir()
    store = await Store.open(database_path(config))
    pages = HackMDPages(config, clock=clock, environ={"HACKMD_TOKEN": hackmd.token})
    transport = RecordingTransport({CHAIR: 100})
    bot = MeetingBot(Rooms(config, {"team": ROOM}), store, config.data_dir / "notes",
                     transport, clock=clock, metrics=Metrics(clock),
                     targets=[pages, GitArchive(config, archive_dir(config), clock=clock)])
    harness = Harness(bot, transport, clock, pages)
    try:
        await harness.say("!agenda (10 min) Release plan", "a1")
        page = await made_page(harness, hackmd)
        clock.now = START
        await harness.run(JobKind.START)
        await harness.say("!here", "h1", ADA)
        hackmd.human_edit(page.id, lambda text: under_item(text, 1, HUMAN_BULLET))
        await harness.say("!endmeeting", "e1")
        await harness.drain()
        await harness.drain()
    finally:
        await store.close()
    note = final_note(page.content).strip("\n") + "\n"
    assert HUMAN_BULLET in note
    archived = committed(remote, "2026-06-18.md")
    assert HUMAN_BULLET in archived and note.strip() in archived
    assert len(commits(remote)) == 1

    assert await print_note(config, "team", None) == 0
    assert capsys.readouterr().out == note
    monkeypatch.setenv("HACKMD_TOKEN", hackmd.token)
    calls = len(hackmd.calls)
    assert await publish_again(config, "team", None) == 0
    assert "the note of 2026-06-18 is in the git archive" in capsys.readouterr().out
    assert len(commits(remote)) == 1  # there already: nothing twice
    assert len(hackmd.calls) == calls  # the kept note; the page is not read again


async def test_chatbot_check_online_tries_the_hackmd_token(
        hackmd: HackMDContract, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_config(config_data(hackmd.api_url))
    monkeypatch.setenv("HACKMD_TOKEN", hackmd.token)
    assert await check_online(config) == 0
    assert "team: HackMD (team jupyterhub): the token (chatbot-tester) may make notes in " \
           "team jupyterhub" in capsys.readouterr().out
    monkeypatch.setenv("HACKMD_TOKEN", "hmd-revoked")
    assert await check_online(config) == 1
    out = capsys.readouterr().out
    assert "FAILED: HackMD refused the API token from $HACKMD_TOKEN (401)" in out
    assert "hmd-revoked" not in out
    assert [call.method for call in hackmd.calls] == ["GET", "GET"]  # changed nothing


async def test_with_a_github_issue_too_the_issue_and_its_closing_comment_link_the_page(
        tmp_path: Path, hackmd: HackMDContract, clock: ManualClock) -> None:
    async with GitHubContract(clock=clock) as github:
        github.add_repo("jupyterhub/team-compass")
        data = config_data(hackmd.api_url)
        data["meetings"][0]["publish"]["github"] = {
            "repo": "jupyterhub/team-compass", "token_env": "GH_TOKEN", "api_url": github.url}
        config = parse_config(data)
        store = await Store.open(tmp_path / "bot.db")
        transport = RecordingTransport({CHAIR: 100})
        pages = HackMDPages(config, clock=clock, environ={"HACKMD_TOKEN": hackmd.token})
        issues = GitHubIssues(config, clock=clock, environ={"GH_TOKEN": github.token})
        bot = MeetingBot(Rooms(config, {"team": ROOM}), store, tmp_path / "notes", transport,
                         clock=clock, metrics=Metrics(clock), targets=[issues, pages])
        harness = Harness(bot, transport, clock, pages)
        try:
            clock.now = START - timedelta(days=2)
            await harness.run(JobKind.ISSUE)
            await harness.drain()
            page = await made_page(harness, hackmd)
            url = await store.read.hackmd_url(1)
            [issue] = github.repos["jupyterhub/team-compass"].issues.values()
            assert f"- **Notes:** <{url}>" not in issue.body  # opened before the page
            clock.now += timedelta(minutes=1)
            assert await harness.run(JobKind.ISSUE_BODY)
            await harness.drain()
            assert f"- **Notes:** <{url}>" in issue.body
            # The page links the issue, the issue links the page.
            assert f"/issues/{issue.number}>" in page.content
            clock.now = START
            await harness.run(JobKind.START)
            hackmd.human_edit(page.id, lambda text: text + "\nDiscussed on the page.\n")
            await harness.say("!endmeeting", "e1")
            await harness.drain()
            await harness.drain()
            [comment] = issue.comments
            assert "Discussed on the page." in comment.body and url in comment.body
        finally:
            await store.close()


def test_chatbot_check_says_where_the_page_is_made(
        capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_config(config_data("https://api.hackmd.io/v1"))
    assert check(config, Path("config.yaml")) == 0
    assert "  makes a HackMD page 1d ahead in team jupyterhub (https://api.hackmd.io/v1; " \
           "read: guest, write: signed_in); the note is the page read back at the close" \
           in capsys.readouterr().out
