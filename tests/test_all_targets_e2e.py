"""One meeting with all three publish targets, on a real Synapse, from the issue's opening
to the merged archive with no manual step: the GitHub issue (with `agenda_label`) and
the HackMD page on their contract servers, the git archive's pull request on a real
bare repository.

The issue is opened ahead and links the page as its notes; a `!agenda` comment on the
issue and a labelled issue become items; people use the room and the page follows while
a person's bullet typed on the page survives; the close reads the page back, and that
note is posted, saved, commented on the issue and committed on the meeting's branch
with a pull request that closes the issue once merged. Every call to each service is
counted; run with `-s` to see the tables.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from datetime import timedelta

import pytest

from chatbot import meetings
from chatbot.demo.person import body_of, is_reaction
from chatbot.publish import notes_page
from chatbot.publish.hackmd import final_note
from tests.support.github_contract import GitHubContract
from tests.support.hackmd_contract import HackMDContract

from .conftest import World, minute_from_now
from .support.waiting import eventually

REPO = "jupyterhub/team-compass"
HUMAN_BULLET = "    - Grace: the sprint is in May (typed on the page)"
# The pace a real meeting keeps (a minute between writes and polls) squeezed into
# seconds: a test has no minutes to spare. The counts below are at this pace.
PACE = timedelta(seconds=1)


async def command(person, room_id: str, text: str) -> str:
    event_id = await person.say(room_id, text)
    await person.wait_for(lambda e: is_reaction(e, event_id))
    return event_id


def git(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *arguments], capture_output=True, text=True, check=False)


GITHUB_ENDPOINTS = (
    ("GET /user", "GET", r"^/user$"),
    ("GET issues (find ours)", "GET", r"/issues$", lambda call: "creator" in call.query),
    ("GET issues?labels= (agenda_label)", "GET", r"/issues$",
     lambda call: "labels" in call.query),
    ("POST issues (open)", "POST", r"/issues$"),
    ("GET issues/N", "GET", r"/issues/\d+$"),
    ("PATCH issues/N (body)", "PATCH", r"/issues/\d+$",
     lambda call: "body" in (call.body or {})),
    ("PATCH issues/N (close)", "PATCH", r"/issues/\d+$",
     lambda call: "state" in (call.body or {})),
    ("GET issues/N/comments", "GET", r"/comments$"),
    ("POST issues/N/comments (note)", "POST", r"/comments$"),
    ("GET pulls?head= (find PR)", "GET", r"/pulls$"),
    ("POST pulls (open PR)", "POST", r"/pulls$"),
)
HACKMD_ENDPOINTS = (
    ("GET notes (find ours)", "GET", r"/notes$"),
    ("POST notes (make)", "POST", r"/notes$"),
    ("GET notes/ID (read)", "GET", r"/notes/[^/]+$"),
    ("PATCH notes/ID (regions)", "PATCH", r"/notes/[^/]+$"),
)


def github_table(github: GitHubContract) -> dict[str, Counter[str]]:
    table: dict[str, Counter[str]] = {name: Counter() for name, *_ in GITHUB_ENDPOINTS}
    for call in github.calls:
        for name, method, path, *test in GITHUB_ENDPOINTS:
            if call.method == method and re.search(path, call.path) and (
                    not test or test[0](call)):
                table[name]["304" if call.status == 304 else "charged"] += 1
                break
        else:
            raise AssertionError(f"an unexpected GitHub call: {call}")
    return table


def hackmd_table(hackmd: HackMDContract) -> dict[str, Counter[str]]:
    table: dict[str, Counter[str]] = {name: Counter() for name, *_ in HACKMD_ENDPOINTS}
    for call in hackmd.calls:
        for name, method, path in HACKMD_ENDPOINTS:
            if call.method == method and re.search(path, call.path):
                table[name][str(call.status)] += 1
                break
        else:
            raise AssertionError(f"an unexpected HackMD call: {call}")
    return table


def print_tables(github: GitHubContract, hackmd: HackMDContract) -> None:
    table = github_table(github)
    charged = sum(counts["charged"] for counts in table.values())
    print(f"\nGitHub calls in one meeting with all three targets: {len(github.calls)}, "
          f"{charged} charged to the rate limit")
    for name, counts in table.items():
        print(f"  {name:38} {counts['charged']:4} charged {counts['304']:4} free (304)")
    print(f"HackMD calls in the same meeting: {len(hackmd.calls)}")
    for name, counts in hackmd_table(hackmd).items():
        statuses = ", ".join(f"{n}x{status}" for status, n in sorted(counts.items()))
        print(f"  {name:38} {sum(counts.values()):4} ({statuses or 'none'})")


async def test_one_meeting_from_its_issue_to_the_merged_archive(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    for module, name in ((notes_page, "WRITE_EVERY"), (meetings, "ISSUE_BODY_EVERY"),
                         (meetings, "POLL_CLOSE_EVERY")):
        monkeypatch.setattr(module, name, PACE)
    remote = world.tmp / "archive.git"
    assert git("init", "-q", "--bare", "--initial-branch=main", str(remote)).returncode == 0
    async with GitHubContract() as github, HackMDContract() as hackmd:
        github.add_repo(REPO)
        topic = github.add_issue(REPO, "Flaky CI", labels=("meeting-agenda",), user="hubot")
        monkeypatch.setenv("CHATBOT_E2E_GITHUB_TOKEN", github.token)
        monkeypatch.setenv("CHATBOT_E2E_HACKMD_TOKEN", hackmd.token)
        # Within the hour before the start: the issue's comments are read every minute.
        start = minute_from_now(minutes=30)
        config = world.config(start=start.strftime("%Y-%m-%d %H:%M:%S"), publish={
            "github": {"repo": REPO, "token_env": "CHATBOT_E2E_GITHUB_TOKEN",
                       "api_url": github.url, "agenda_label": "meeting-agenda"},
            "hackmd": {"token_env": "CHATBOT_E2E_HACKMD_TOKEN", "api_url": hackmd.api_url,
                       "team": "jupyterhub"},
            "git": {"remote": remote.as_uri(), "mode": "file", "path": "meetings/{date}.md",
                    "pull_request": True}})
        room, ada, chair = world.room_id, world.ada, world.chair
        bot = await world.start_bot(config)
        store = bot.app.store
        assert store is not None

        # Ahead: the issue opened, the page made, and the issue's body links the page.
        repo = github.repos[REPO]
        await eventually(lambda: any(issue.user == GitHubContract.LOGIN
                                     for issue in repo.issues.values()), "the issue opened")
        issue = next(item for item in repo.issues.values() if item.user == GitHubContract.LOGIN)
        issue_url = f"{github.html_root}/{REPO}/issues/{issue.number}"
        await eventually(lambda: len(hackmd.notes) == 1, "the page made")
        [page] = hackmd.notes.values()
        page_url = f"{hackmd.url}/@jupyterhub/{page.short_id}"
        await eventually(lambda: f"- **Notes:** <{page_url}>" in (issue.body or ""),
                         "the page linked from the issue")
        assert f"<!-- chatbot:meeting:team:{start.date().isoformat()} -->" in (issue.body or "")

        # Items from GitHub: a `!agenda` comment and the labelled issue, on the page too.
        github.add_comment(REPO, issue.number, "!agenda (10 min) Docs sprint", user="octocat")
        await eventually(lambda: "Docs sprint" in page.content and "Flaky CI" in page.content,
                         "both GitHub items on the page")
        await eventually(lambda: "Docs sprint" in (issue.body or ""),
                         "the comment's item in the issue's body")

        mark = len(ada.events)
        await command(chair, room, "!startmeeting")
        opening = await ada.wait_for(lambda e: "is starting now" in body_of(e), after=mark)
        assert issue_url in body_of(opening) and page_url in body_of(opening)

        await command(ada, room, "!here Ada Lovelace")
        await command(ada, room, "!update wired all three targets")
        await command(chair, room, "!agenda Budget")
        await eventually(lambda: "- **Ada Lovelace:** wired all three targets" in page.content
                         and "- Ada Lovelace\n" in page.content and "Budget" in page.content,
                         "the room's entries on the page")
        # A person types a bullet under the comment's item, on the page.
        sprint = re.search(r"Docs sprint[^\n]*\n<!-- /chatbot:(agenda-\d+) -->\n",
                           page.content)
        assert sprint is not None, page.content
        hackmd.human_edit(page.id, lambda text: text.replace(
            sprint.group(0), sprint.group(0) + HUMAN_BULLET + "\n"))
        await command(ada, room, "!celebrate no copying by hand")
        await eventually(lambda: "- no copying by hand" in page.content,
                         "the celebration on the page")
        assert HUMAN_BULLET in page.content

        mark = len(ada.events)
        await command(chair, room, "!endmeeting")
        posted = await ada.wait_for(
            lambda e: body_of(e).startswith("# Example Team Meeting"), after=mark, timeout=30)
        note = body_of(posted)
        read_back = final_note(page.content).strip("\n") + "\n"
        assert note.strip() == read_back.strip()
        assert re.search(r"^- \*\*octocat \(GitHub\)\*\* \(10 min\) Docs sprint\n"
                         + re.escape(HUMAN_BULLET), note, re.MULTILINE), note
        assert f"Flaky CI <{github.html_root}/{REPO}/issues/{topic.number}>" in note
        assert f"Notes:** <{page_url}>" in note and f"GitHub issue:** <{issue_url}>" in note
        [saved] = (config.data_dir / "notes" / "team").glob("*.md")
        assert saved.read_text() == read_back

        # The note on the issue, and on the meeting's branch with its pull request.
        def bots_comments() -> list[str]:
            return [comment.body for comment in issue.comments
                    if comment.user == GitHubContract.LOGIN]

        await eventually(lambda: len(bots_comments()) == 1, "the note posted on the issue")
        assert bots_comments() == [read_back]
        await eventually(lambda: len(github.pulls(REPO)) == 1, "the pull request opened")
        [pull] = github.pulls(REPO)
        name = saved.stem
        branch = f"meeting/team/{name}"
        assert (pull.head, pull.base) == (branch, "main")
        assert f"Closes #{issue.number}" in (pull.body or "")
        shown = git("--git-dir", str(remote), "show", f"{branch}:meetings/{name}.md")
        assert shown.stdout == f"<!-- chatbot:team:{name} -->\n{read_back}"
        assert issue.state == "open"  # left for the merge

        # A person merges: GitHub closes the issue. Nothing was left to do by hand.
        github.merge_pull(REPO, pull.number)
        assert issue.state == "closed"
        async def drained() -> bool:
            return not await bot.outbox_pending()

        await eventually(drained, "every job done")
        assert len(github.calls_to("POST", r"/issues$")) == 1
        table = github_table(github)
        # Looked for once, before it was opened: later jobs use the number kept.
        assert table["GET /user"]["charged"] == table["GET issues (find ours)"]["charged"] == 1
        assert table["GET issues/N"]["charged"] == 0
        assert len(hackmd.calls_to("POST", r"/notes$")) == 1
        print_tables(github, hackmd)
