"""The meeting's GitHub issue through the bot, against the contract server: opened once
`issue_ahead` before the sitting whatever crashes in between, its link in the reminder,
the start and the note, the note posted and the issue closed at the close; a token or
repository that cannot work told to the chairs once, a GitHub hiccup retried quietly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chatbot.bot import MeetingBot
from chatbot.config import parse_config
from chatbot.meetings import JobKind, Rooms
from chatbot.metrics import Metrics
from chatbot.model import RoomId, UserId
from chatbot.publish import GITHUB_ISSUE, GITHUB_NOTE, PublishFailed, Sitting
from chatbot.publish.issue import GitHubIssues, sitting_marker
from chatbot.store import Store
from tests.support.clock import ManualClock
from tests.support.driving import BotDriver
from tests.support.github_contract import GitHubContract
from tests.support.transports import RecordingTransport

ROOM = RoomId("!room:example.org")
CHAIR = UserId("@chair:example.org")
REPO = "jupyterhub/team-compass"
START = datetime(2026, 6, 18, 9, 0, tzinfo=UTC)
# An hour before the issue is due (7 days ahead of the sitting).
T0 = START - timedelta(days=7, hours=1)


def config_data(api_url: str, **github: Any) -> dict[str, Any]:
    return {
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "jobs": {"retry_cap": "10s", "park_after": "1h"},
        "meetings": [{"id": "team", "title": "Team", "room": "#team:example.org",
                      "timezone": "Europe/Paris", "start": "2026-06-18 11:00",
                      "rrule": "FREQ=WEEKLY", "chairs": [CHAIR], "reminders": ["1h"],
                      "links": {"notes": "https://notes.example.org/team",
                                "issue": "https://example.org/static-issue"},
                      "publish": {"github": {"repo": REPO, "token_env": "GH_TOKEN",
                                             "api_url": api_url, **github}}}],
    }


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def github(clock: ManualClock) -> AsyncIterator[GitHubContract]:
    async with GitHubContract(clock=clock) as server:
        server.add_repo(REPO)
        yield server


class Harness(BotDriver):
    def __init__(self, bot: MeetingBot, transport: RecordingTransport, clock: ManualClock) -> None:
        super().__init__(bot, transport, clock, room=ROOM, chair=CHAIR)


@pytest.fixture
async def harness(tmp_path: Path, github: GitHubContract, clock: ManualClock
                  ) -> AsyncIterator[Harness]:
    async with make_harness(tmp_path, github, clock) as made:
        yield made


class make_harness:
    def __init__(self, tmp_path: Path, github: GitHubContract, clock: ManualClock, *,
                 token: str | None = None, **settings: Any) -> None:
        self.args = tmp_path, github, clock, token, settings

    async def __aenter__(self) -> Harness:
        tmp_path, github, clock, token, settings = self.args
        config = parse_config(config_data(github.url, **settings))
        transport = RecordingTransport({CHAIR: 100})
        self.store = await Store.open(tmp_path / "bot.db")
        issues = GitHubIssues(config, clock=clock,
                              environ={"GH_TOKEN": token or github.token})
        bot = MeetingBot(Rooms(config, {"team": ROOM}), self.store, tmp_path / "notes",
                         transport, clock=clock, metrics=Metrics(clock), targets=[issues])
        return Harness(bot, transport, clock)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.store.close()


def the_issue(github: GitHubContract) -> Any:
    [issue] = github.repos[REPO].issues.values()
    return issue


async def test_the_issue_opens_issue_ahead_before_with_when_links_and_agenda(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    await harness.say("!agenda Release plan (10 min)", "a1")
    assert not await harness.run(JobKind.ISSUE)  # not due for another hour
    clock.now += timedelta(hours=1)
    assert await harness.run(JobKind.ISSUE)
    assert await harness.planned(JobKind.ISSUE) == []  # queued once, never planned again
    await harness.drain()
    issue = the_issue(github)
    assert issue.title == "Team: 2026-06-18"
    assert issue.body.startswith(
        "**Team**: Thursday 18th June 2026, 11AM Europe/Paris (09:00 UTC), for 60 minutes. "
        "[In your time zone](https://www.timeanddate.com/worldclock/fixedtime.html"
        "?iso=20260618T0900&p1=1440).")
    assert "- **Notes:** <https://notes.example.org/team>" in issue.body
    assert "static-issue" not in issue.body
    assert "1. Release plan (10 min), by Chair" in issue.body
    assert "comment here with `!agenda (10 min) topic` (the item is yours), or write the " \
        "same in the Matrix room #team:example.org" in issue.body
    assert issue.body.rstrip().endswith(sitting_marker("team", "2026-06-18"))
    assert await harness.bot.store.read.github_issue_url(1) == \
        f"https://ghe.example.test/{REPO}/issues/{issue.number}"


async def test_the_schedule_is_planned_again_once_the_issue_is_open(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    # The issue's polls are planned from its stored number; the running bot replans only
    # when told, so opening the issue must tell it (a replan racing ahead of the opening
    # once left the comments unread until the next command).
    clock.now += timedelta(hours=1)
    assert await harness.run(JobKind.ISSUE)
    asked: list[bool] = []
    harness.bot.on_schedule_change = lambda: asked.append(True)
    assert await harness.planned(JobKind.ISSUE_POLL) == []
    await harness.drain()
    assert the_issue(github).number and asked
    assert await harness.planned(JobKind.ISSUE_POLL) != []


async def test_a_bot_started_within_issue_ahead_opens_the_issue_at_once(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    clock.now = START - timedelta(days=2)
    [job] = await harness.planned(JobKind.ISSUE)
    assert job.due_at < clock.now  # the scheduler runs a past job at once
    assert await harness.run(JobKind.ISSUE)
    await harness.drain()
    assert len(github.repos[REPO].issues) == 1


async def test_the_issue_is_opened_once_across_a_crash_after_github_made_it(
        harness: Harness, github: GitHubContract, clock: ManualClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    github.add_issue(REPO, "Team: 2026-06-18", "someone's issue with the same title")
    clock.now = START - timedelta(days=1)
    await harness.run(JobKind.ISSUE)
    store = harness.bot.store
    real = store.set_github_issue

    async def crash(*args: Any) -> None:
        monkeypatch.setattr(store, "set_github_issue", real)
        raise RuntimeError("the process died here")

    monkeypatch.setattr(store, "set_github_issue", crash)
    await harness.drain()  # GitHub made the issue; the bot never wrote it down
    assert await store.read.github_issue_url(1) is None
    clock.now += timedelta(minutes=1)
    await harness.drain()
    assert len(github.calls_to("POST", r"/issues$")) == 1
    ours = [issue for issue in github.repos[REPO].issues.values() if issue.user != "octocat"]
    [issue] = ours
    assert await store.read.github_issue_url(1) == \
        f"https://ghe.example.test/{REPO}/issues/{issue.number}"


async def test_the_issue_link_replaces_the_static_one_in_reminder_start_and_note(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    clock.now = START - timedelta(days=2)
    await harness.run(JobKind.ISSUE)
    await harness.drain()
    url = f"https://ghe.example.test/{REPO}/issues/{the_issue(github).number}"
    clock.now = START - timedelta(hours=1)
    assert await harness.run(JobKind.REMINDER)
    clock.now = START
    assert await harness.run(JobKind.START)
    await harness.say("!here", "h1")
    await harness.say("!update shipped it", "u1")
    await harness.say("!endmeeting", "e1")
    await harness.drain()
    texts = harness.transport.texts()
    reminder = next(text for text in texts if text.startswith("**Reminder:**"))
    start = next(text for text in texts if "is starting now" in text)
    note = next(text for text in texts if text.startswith("# Team"))
    for text in (reminder, start, note):
        assert f"- **GitHub issue:** <{url}>" in text, text
        assert "static-issue" not in text

    issue = the_issue(github)
    assert issue.state == "closed" and issue.state_reason == "completed"
    [comment] = issue.comments
    assert "shipped it" in comment.body
    assert not harness.transport.chairs_told()
    [note_job] = [item for item in await harness.bot.store.read.pending_outbox()
                  if item.kind == GITHUB_NOTE] or [None]
    assert note_job is None  # done


async def test_one_whole_meeting_makes_few_calls(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    await harness.say("!agenda Release plan", "a1")
    clock.now = START - timedelta(days=7)
    await harness.run(JobKind.ISSUE)
    await harness.drain()
    clock.now = START
    await harness.run(JobKind.START)
    await harness.say("!endmeeting", "e1")
    await harness.drain()
    calls = [f"{call.method} {call.path} {call.status}" for call in github.calls]
    print("\n".join(calls))
    assert calls == [
        "GET /user 200",
        f"GET /repos/{REPO}/issues 200",
        f"POST /repos/{REPO}/issues 201",
        # The note goes to the issue kept with the sitting: not looked for again.
        f"GET /repos/{REPO}/issues/1/comments 200",
        f"POST /repos/{REPO}/issues/1/comments 201",
        f"PATCH /repos/{REPO}/issues/1 200",
    ]


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        pytest.param({"token": "ghp_wrong"}, "401", id="401 bad token"),
        pytest.param({"repo": "jupyterhub/nowhere"}, "404", id="404 no repository"),
    ],
)
async def test_a_token_or_repository_that_cannot_work_is_told_to_the_chairs_once(
        tmp_path: Path, github: GitHubContract, clock: ManualClock, break_it: dict[str, str],
        expected: str) -> None:
    async with make_harness(tmp_path, github, clock, **break_it) as harness:
        clock.now = START - timedelta(days=2)
        await harness.run(JobKind.ISSUE)
        await harness.drain()
        [told] = harness.transport.chairs_told()
        assert told.startswith("**Chairs:** I could not open the GitHub issue of the meeting "
                               "on 2026-06-18 on GitHub (")
        assert "ghp_" not in told
        clock.now += timedelta(hours=2)
        await harness.drain()
        assert await harness.planned(JobKind.ISSUE) == []  # not tried again and again
        # The meeting goes on; the note job is refused too, and told once more.
        clock.now = START
        await harness.run(JobKind.START)
        await harness.say("!endmeeting", "e1")
        await harness.drain()
        assert len(harness.transport.chairs_told()) == 2
        assert any(text.startswith("# Team") for text in harness.transport.texts())
        assert not await harness.bot.store.read.has_pending_outbox()
        assert expected  # the status each case plays


@pytest.mark.parametrize("status", [500, 502, 429])
async def test_a_github_hiccup_is_retried_quietly(
        harness: Harness, github: GitHubContract, clock: ManualClock, status: int) -> None:
    github.fail("POST", r"/issues$", status, times=2,
                retry_after=1 if status == 429 else None)
    clock.now = START - timedelta(days=2)
    await harness.run(JobKind.ISSUE)
    await harness.drain()
    assert github.repos[REPO].issues == {}
    for _ in range(3):
        clock.now += timedelta(seconds=30)
        await harness.drain()
    assert len(github.repos[REPO].issues) == 1
    assert harness.transport.chairs_told() == []
    [item] = [item for item in harness.transport.sent if item.kind == GITHUB_ISSUE] or [None]
    assert item is None  # publishing never goes through the Matrix transport


async def test_publishing_again_posts_the_note_once(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    """`chatbot publish` after the bot did it, or a job run twice: one comment."""
    clock.now = START
    await harness.run(JobKind.START)
    await harness.say("!endmeeting", "e1")
    await harness.drain()  # no issue was opened ahead (the bot started late): made now
    [sitting_job] = [item for item in await harness.bot.store.read.pending_outbox()
                     if item.kind == GITHUB_NOTE] or [None]
    assert sitting_job is None
    issues = harness.bot._targets[GITHUB_NOTE]
    note = next(text for text in harness.transport.texts() if text.startswith("# Team"))
    url = await issues.publish(Sitting("team", "Team", START.date(), "2026-06-18", note))
    issue = the_issue(github)
    assert f"/issues/{issue.number}#issuecomment-" in url  # the note's comment
    assert len(issue.comments) == 1 and issue.state == "closed"


async def test_the_note_finds_an_issue_whose_number_was_never_kept_by_its_marker(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    """The bot stopped after GitHub opened the issue, before it kept the number: the
    note's job looks for the issue by its marker, and opens no second one."""
    clock.now = START - timedelta(days=7)
    await harness.run(JobKind.ISSUE)
    await harness.drain()
    issue = the_issue(github)
    async with harness.bot.store.transaction():  # as if the answer never arrived
        await harness.bot.store._db.execute(
            "UPDATE github_issues SET repo = NULL, number = NULL, html_url = NULL")
    clock.now = START
    await harness.run(JobKind.START)
    await harness.say("!endmeeting", "e1")
    listed = len(github.calls_to("GET", r"/issues$"))
    await harness.drain()
    assert the_issue(github) is issue and len(issue.comments) == 1
    assert issue.state == "closed"
    assert len(github.calls_to("GET", r"/issues$")) == listed + 1  # looked for once


async def test_the_note_goes_to_the_kept_issue_without_looking_for_it(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    clock.now = START - timedelta(days=7)
    await harness.run(JobKind.ISSUE)
    await harness.drain()
    issues = harness.bot._targets[GITHUB_NOTE]
    before = len(github.calls)
    kept = the_issue(github).number
    await issues.publish(Sitting("team", "Team", START.date(), "2026-06-18", "# Team\n",
                                 (REPO.upper(), kept)))
    assert [f"{call.method} {call.path}" for call in github.calls[before:]] == [
        f"GET /repos/{REPO.upper()}/issues/{kept}/comments",
        f"POST /repos/{REPO.upper()}/issues/{kept}/comments",
        f"PATCH /repos/{REPO.upper()}/issues/{kept}"]
    # Kept in a repository the config no longer names: looked for in the one it names.
    github.add_repo("jupyterhub/elsewhere")
    before = len(github.calls)
    await issues.publish(Sitting("team", "Team", START.date(), "2026-06-18", "# Team\n",
                                 ("jupyterhub/elsewhere", kept)))
    assert github.calls[before].path == "/user"
    assert not github.repos["jupyterhub/elsewhere"].issues


@pytest.mark.parametrize(
    ("token_kind", "expected"),
    [
        ("writer", "the token (meeting-bot) may open issues in jupyterhub/team-compass"),
        ("reader", "may read jupyterhub/team-compass but not write its issues"),
        ("wrong", "401"),
    ],
)
async def test_check_online_tries_the_token_and_repository(
        github: GitHubContract, clock: ManualClock, token_kind: str, expected: str) -> None:
    token = {"writer": github.token, "reader": "ghp_reader", "wrong": "ghp_wrong"}[token_kind]
    github.add_account("ghp_reader", "reader", can_write=False)
    issues = GitHubIssues(parse_config(config_data(github.url)), clock=clock,
                          environ={"GH_TOKEN": token})
    try:
        found = await issues.check("team")
    except PublishFailed as error:
        found = f"FAILED {error}"
    assert github.repos[REPO].issues == {}
    if token_kind == "wrong":
        assert found.startswith("FAILED") and "token" in found.lower(), found
    else:
        assert expected in found, found


async def test_the_body_follows_the_agenda_at_most_once_a_minute_and_only_when_changed(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    clock.now = START - timedelta(days=2)
    await harness.run(JobKind.ISSUE)
    await harness.drain()
    assert await harness.planned(JobKind.ISSUE_BODY) == []  # nothing changed
    await harness.say("!agenda Release plan (10 min)", "a1")
    assert not await harness.run(JobKind.ISSUE_BODY)  # not a minute since it was opened
    clock.now += timedelta(minutes=1)
    await harness.say("!agenda Budget", "a2")
    assert await harness.run(JobKind.ISSUE_BODY)  # both items in one write
    await harness.drain()
    body = the_issue(github).body
    assert "1. Release plan (10 min), by Chair\n2. Budget, by Chair" in body
    assert body.rstrip().endswith(sitting_marker("team", "2026-06-18"))
    assert len(github.calls_to("PATCH", r"/issues/\d+$")) == 1
    await harness.say("!agenda Hiring", "a3")
    [job] = await harness.planned(JobKind.ISSUE_BODY)
    assert job.due_at == clock.now + timedelta(minutes=1)
    clock.now += timedelta(minutes=1)
    assert await harness.run(JobKind.ISSUE_BODY)
    await harness.drain()
    assert "3. Hiring, by Chair" in the_issue(github).body
    assert await harness.planned(JobKind.ISSUE_BODY) == []
    assert len(github.calls_to("PATCH", r"/issues/\d+$")) == 2


async def test_an_agenda_comment_on_the_issue_becomes_an_item_owned_by_its_author(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    clock.now = START - timedelta(days=2)
    await harness.run(JobKind.ISSUE)
    await harness.drain()
    number = the_issue(github).number
    assert await harness.run(JobKind.ISSUE_POLL)  # at once: nothing there yet
    github.add_comment(REPO, number, "!agenda (15 min) Docs sprint", user="octocat")
    github.add_comment(REPO, number, "Looking forward to it!", user="hubot")
    github.add_comment(REPO, number, "!agenda remove 1", user="mallory")
    [job] = await harness.planned(JobKind.ISSUE_POLL)
    assert job.due_at == clock.now + timedelta(minutes=15)  # a few times an hour ahead
    clock.now += timedelta(minutes=15)
    assert await harness.run(JobKind.ISSUE_POLL)
    record = await harness.bot.store.read.record(
        await harness.bot.store.read.get_meeting(1))  # type: ignore[arg-type]
    [item] = record.agenda
    assert (item.text, item.minutes, item.sender_name) == ("Docs sprint", 15,
                                                           "octocat (GitHub)")
    clock.now += timedelta(minutes=15)
    assert await harness.run(JobKind.ISSUE_POLL)  # unchanged: a free 304, nothing doubled
    assert [call.status for call in github.calls_to("GET", r"/comments$")] == [200, 200, 304]
    assert len((await harness.bot.store.read.record(record.meeting)).agenda) == 1
    clock.now += timedelta(minutes=1)
    assert await harness.run(JobKind.ISSUE_BODY)  # the issue shows it too
    await harness.drain()
    assert "1. Docs sprint (15 min), by octocat (GitHub)" in the_issue(github).body
    clock.now = START - timedelta(minutes=50)
    [job] = await harness.planned(JobKind.ISSUE_POLL)
    assert job.due_at <= clock.now  # every minute in the last hour


async def test_issue_jobs_whose_target_left_the_config_fail_once_and_never_reach_the_room(
        tmp_path: Path) -> None:
    data = config_data("http://127.0.0.1:9")
    del data["meetings"][0]["publish"]
    clock, transport = ManualClock(T0), RecordingTransport({CHAIR: 100})
    store = await Store.open(tmp_path / "bot.db")
    bot = MeetingBot(Rooms(parse_config(data), {"team": ROOM}), store, tmp_path / "notes",
                     transport, clock=clock)
    try:
        async with store.transaction():
            meeting = await store.ensure_scheduled("team", ROOM, "Team", START)
            await store.enqueue(ROOM, GITHUB_ISSUE, {
                "series": "team", "meeting_id": meeting.id, "name": "2026-06-18",
                "title": "Team: 2026-06-18", "body": "b", "created_after": T0.isoformat()}, T0)
            await store.enqueue(ROOM, "github_issue_body", {
                "series": "team", "meeting_id": meeting.id, "repo": REPO, "number": 1,
                "body": "b"}, T0)
        for _ in range(5):
            await bot.deliver_due()
        assert [item.kind for item in transport.sent] == ["post"]  # the chairs, once
        assert "no longer in the config" in transport.sent[0].payload["text"]
        assert not await store.read.has_pending_outbox()
    finally:
        await store.close()


async def test_an_older_body_retried_late_never_undoes_a_newer_one(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    clock.now = START - timedelta(days=2)
    await harness.run(JobKind.ISSUE)
    await harness.drain()
    github.fail("PATCH", r"/issues/\d+$", 502, times=1)
    await harness.say("!agenda First", "a1")
    clock.now += timedelta(minutes=1)
    await harness.run(JobKind.ISSUE_BODY)
    await harness.drain()  # refused with a 502: waits for its retry
    await harness.say("!agenda Second", "a2")
    clock.now += timedelta(minutes=1)
    await harness.run(JobKind.ISSUE_BODY)
    for _ in range(3):
        clock.now += timedelta(seconds=30)
        await harness.drain()
    body = the_issue(github).body
    assert "1. First, by Chair\n2. Second, by Chair" in body
    patches = [call for call in github.calls_to("PATCH", r"/issues/\d+$") if call.status == 200]
    assert len(patches) == 1  # the first body's retry found itself superseded


# --- the agenda label ------------------------------------------------------------------


async def agenda_of(harness: Harness) -> list[tuple[str, str]]:
    store = harness.bot.store.read
    meeting = await store.get_meeting(1)
    assert meeting is not None
    return [(item.text, item.sender_name) for item in (await store.record(meeting)).agenda]


async def open_the_issue(harness: Harness, clock: ManualClock) -> None:
    clock.now = START - timedelta(days=2)
    await harness.run(JobKind.ISSUE)
    await harness.drain()


async def test_issues_with_the_agenda_label_are_items_owned_by_their_authors_and_linked(
        tmp_path: Path, github: GitHubContract, clock: ManualClock) -> None:
    labelled = github.add_issue(REPO, "Docs *sprint* [click](javascript:alert(1))",
                                labels=("meeting-agenda",), user="octocat")
    github.add_issue(REPO, "Release 5.0", labels=("meeting-agenda", "help"),
                     pull_request=True, user="hubot")
    github.add_issue(REPO, "Not for the meeting", user="octocat")
    github.add_issue(REPO, "Done already", labels=("meeting-agenda",), state="closed")
    async with make_harness(tmp_path, github, clock, agenda_label="meeting-agenda") as harness:
        await open_the_issue(harness, clock)
        assert await harness.run(JobKind.ISSUE_POLL)
        site = f"https://ghe.example.test/{REPO}"
        assert await agenda_of(harness) == [
            (f"Docs *sprint* [click](javascript:alert(1)) {site}/issues/1", "octocat (GitHub)"),
            (f"Release 5.0 {site}/pull/2", "hubot (GitHub)")]
        [query] = [call.query for call in github.calls_to("GET", r"/issues$")
                   if "labels" in call.query]
        assert (query["labels"], query["state"]) == ("meeting-agenda", "open")

        # Unchanged: a free 304, nothing doubled, also after a restart.
        clock.now += timedelta(minutes=15)
        assert await harness.run(JobKind.ISSUE_POLL)
    async with make_harness(tmp_path, github, clock, agenda_label="meeting-agenda") as harness:
        clock.now += timedelta(minutes=15)
        assert await harness.run(JobKind.ISSUE_POLL)
        label_polls = [call for call in github.calls_to("GET", r"/issues$")
                       if "labels" in call.query]
        assert [call.status for call in label_polls] == [200, 304, 304]
        assert len(await agenda_of(harness)) == 2

        # The issue body and the note show the link, the title's markdown inert.
        clock.now += timedelta(minutes=1)
        assert await harness.run(JobKind.ISSUE_BODY)
        await harness.drain()
        assert "2. Release 5.0 https://ghe.example.test/" in the_issue_of(github).body

        # Losing the label, or closing, before the sitting takes an issue off.
        labelled.labels = ["help"]
        labelled.updated_at = clock.now
        clock.now += timedelta(minutes=15)
        assert await harness.run(JobKind.ISSUE_POLL)
        assert [owner for _, owner in await agenda_of(harness)] == ["hubot (GitHub)"]
        labelled.labels = ["meeting-agenda"]  # labelled again: back on
        clock.now += timedelta(minutes=15)
        assert await harness.run(JobKind.ISSUE_POLL)
        assert len(await agenda_of(harness)) == 2

        # Once the sitting has started nothing is taken away; new ones still come.
        clock.now = START
        assert await harness.run(JobKind.START)
        labelled.state = "closed"
        github.add_issue(REPO, "Late topic", labels=("meeting-agenda",), user="carol")
        clock.now += timedelta(minutes=1)
        assert await harness.run(JobKind.ISSUE_POLL)
        assert [owner for _, owner in await agenda_of(harness)] == [
            "hubot (GitHub)", "octocat (GitHub)", "carol (GitHub)"]  # labelled again: last
        await harness.say("!endmeeting", "e1")
        await harness.drain()
        note = next(text for text in harness.transport.texts() if text.startswith("# Team"))
        assert (f"Docs \\*sprint\\* \\[click\\](javascript:alert(1)) <{site}/issues/1>"
                in note), note
        # Not carried to the next sitting: it lists the issues still labelled then.
        following = await harness.bot.store.read.find_scheduled("team", START + timedelta(days=7))
        assert following is None or not (
            await harness.bot.store.read.record(following)).agenda


def the_issue_of(github: GitHubContract) -> Any:
    return next(issue for issue in github.repos[REPO].issues.values()
                if issue.user == GitHubContract.LOGIN)


async def test_without_an_agenda_label_no_labelled_issues_are_asked_for(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    github.add_issue(REPO, "Topic", labels=("meeting-agenda",))
    await open_the_issue(harness, clock)
    assert await harness.run(JobKind.ISSUE_POLL)
    assert not [call for call in github.calls_to("GET", r"/issues$") if "labels" in call.query]
    assert await agenda_of(harness) == []


# --- rate limits ------------------------------------------------------------------------


async def test_a_429_with_retry_after_holds_back_the_next_call_until_then(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    clock.now = START - timedelta(days=2)
    github.fail("POST", r"/issues$", 429, retry_after=120)
    await harness.run(JobKind.ISSUE)
    await harness.drain()
    refused_at = clock.now
    [job] = await harness.bot.store.read.pending_outbox()
    assert job.next_attempt_at == refused_at + timedelta(seconds=120)  # not the 1 s backoff
    calls = len(github.calls)
    for _ in range(4):
        clock.now += timedelta(seconds=29)
        await harness.drain()
    assert len(github.calls) == calls  # not one call before the time GitHub named
    clock.now = refused_at + timedelta(seconds=120)
    await harness.drain()
    assert len(github.repos[REPO].issues) == 1
    assert harness.transport.chairs_told() == []


async def test_a_poll_refused_for_the_rate_limit_waits_for_the_time_github_named(
        harness: Harness, github: GitHubContract, clock: ManualClock) -> None:
    await open_the_issue(harness, clock)
    github.fail("GET", r"/comments$", 403, retry_after=1800, secondary=True)
    assert await harness.run(JobKind.ISSUE_POLL)
    [job] = await harness.planned(JobKind.ISSUE_POLL)
    assert job.due_at == clock.now + timedelta(minutes=30)  # not in 15 min
    calls = len(github.calls)
    # Meanwhile the agenda changes: the body's job is held back too, without a call.
    await harness.say("!agenda Budget", "a1")
    clock.now += timedelta(minutes=2)
    assert await harness.run(JobKind.ISSUE_BODY)
    await harness.drain()
    assert len(github.calls) == calls
    clock.now = job.due_at
    assert await harness.run(JobKind.ISSUE_POLL)
    await harness.drain()
    assert [call.status for call in github.calls_to("GET", r"/comments$")][-1] == 200
    assert "1. Budget, by Chair" in the_issue(github).body
