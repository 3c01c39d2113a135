"""Every trace of a sitting goes by one name: its note file's, the one its GitHub issue's
marker, its HackMD page's key, its git path and branch carry. The name is the date, `-2`
and on for later sittings that day, counted in the order the bot first knew of them, so
a name given ahead (the issue opened a week before) is still the sitting's at the close.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from chatbot.config import parse_config
from chatbot.meetings import (
    PublishNote,
    QueueIssue,
    QueuePage,
    Rooms,
    SaveNote,
    close_meeting,
    open_adhoc,
    open_meeting,
    run_issue,
    run_notes_page,
    sitting_name,
)
from chatbot.model import RoomId
from chatbot.publish import GIT_ARCHIVE, GITHUB_NOTE, Sitting
from chatbot.publish.git import archive_path, pull_request_branch
from chatbot.publish.issue import sitting_marker
from chatbot.store import Store

ROOM = RoomId("!room:example.org")
DAY = datetime(2026, 6, 18, tzinfo=UTC)


def rooms(rrule: str) -> Rooms:
    config = parse_config({
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "meetings": [{
            "id": "team", "title": "Team", "room": "#team:example.org", "timezone": "UTC",
            "start": "2026-06-11 09:00", "rrule": rrule, "duration": "60m",
            "chairs": ["@chair:example.org"],
            "publish": {
                "github": {"repo": "jupyterhub/team-compass", "token_env": "GH_TOKEN"},
                "hackmd": {"token_env": "HACKMD_TOKEN"},
                "git": {"remote": "file:///nowhere.git", "path": "docs/{date}.md",
                        "pull_request": True}}}],
    })
    return Rooms(config, {"team": ROOM})


def published(effects: list[Any]) -> dict[str, Sitting]:
    return {effect.kind: effect.sitting for effect in effects if isinstance(effect, PublishNote)}


def saved_stem(effects: list[Any]) -> str:
    [saved] = [effect for effect in effects if isinstance(effect, SaveNote)]
    return saved.relative_path.stem


async def hold(store: Store, team: Rooms, start: datetime) -> list[Any]:
    series = team.config.meetings[0]
    meeting = await store.ensure_scheduled("team", ROOM, "Team", start)
    await open_meeting(store, team, series, meeting, start)
    opened = await store.get_meeting(meeting.id)
    assert opened is not None
    return await close_meeting(store, team, series, opened, start + timedelta(minutes=30))


async def test_two_scheduled_sittings_on_one_day_keep_the_names_given_ahead(
        store: Store) -> None:
    team = rooms("FREQ=DAILY;BYHOUR=9,15")
    series = team.config.meetings[0]
    morning, afternoon = DAY.replace(hour=9), DAY.replace(hour=15)
    ahead: dict[datetime, list[Any]] = {}
    for start in (morning, afternoon):
        now = start - timedelta(days=7)
        ahead[start] = (await run_issue(store, team, series, start, now)
                        + await run_notes_page(store, team, series, start, now))
    for start, name in ((morning, "2026-06-18"), (afternoon, "2026-06-18-2")):
        [issue] = [effect.job for effect in ahead[start] if isinstance(effect, QueueIssue)]
        [page] = [effect.job for effect in ahead[start] if isinstance(effect, QueuePage)]
        assert issue.name == page.name == name
        assert sitting_marker("team", name) in issue.body
        effects = await hold(store, team, start)
        sittings = published(effects)
        assert saved_stem(effects) == sittings[GITHUB_NOTE].name == name
        assert sittings[GIT_ARCHIVE].name == name
        git = series.publish.git
        assert git is not None
        assert archive_path(git, sittings[GIT_ARCHIVE]) == f"docs/{name}.md"
        assert pull_request_branch(sittings[GIT_ARCHIVE]) == f"meeting/team/{name}"


async def test_an_ad_hoc_sitting_never_takes_the_name_of_a_scheduled_one_made_ahead(
        store: Store) -> None:
    """The sitting at 09:00 was missed (the bot was down), its issue opened a week
    before; the team meets ad hoc that evening. The evening's note is `-2`: its issue
    is its own, never the missed sitting's, found by the same marker."""
    team = rooms("FREQ=WEEKLY")
    series = team.config.meetings[0]
    start = DAY.replace(hour=9)
    [queued] = await run_issue(store, team, series, start, start - timedelta(days=7))
    assert isinstance(queued, QueueIssue) and queued.job.name == "2026-06-18"
    evening = DAY.replace(hour=18)
    await open_adhoc(store, team, series, "Team", evening)
    adhoc = await store.open_meeting_in_room(ROOM)
    assert adhoc is not None
    effects = await close_meeting(store, team, series, adhoc, evening + timedelta(minutes=20))
    sittings = published(effects)
    assert saved_stem(effects) == sittings[GITHUB_NOTE].name == "2026-06-18-2"
    assert sittings[GITHUB_NOTE].issue is None  # looked for by its own marker
    scheduled = await store.find_scheduled("team", start)
    assert scheduled is not None
    assert await sitting_name(store, series, scheduled) == "2026-06-18"


async def test_a_sitting_is_named_when_it_starts_unless_its_issue_or_page_named_it_before(
        store: Store) -> None:
    """An agenda item added ahead plans the afternoon's sitting but names nothing: the
    morning, held first, is the date, and stays so once the afternoon is held."""
    team = rooms("FREQ=DAILY;BYHOUR=9,15")
    series = team.config.meetings[0]
    morning, afternoon = DAY.replace(hour=9), DAY.replace(hour=15)
    await store.ensure_scheduled("team", ROOM, "Team", afternoon)  # as `!agenda` ahead does
    assert saved_stem(await hold(store, team, morning)) == "2026-06-18"
    assert saved_stem(await hold(store, team, afternoon)) == "2026-06-18-2"
    held = await store.find_scheduled("team", morning)
    assert held is not None and await sitting_name(store, series, held) == "2026-06-18"
