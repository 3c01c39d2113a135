"""The git archive, against real git: a bare repository on disk is the remote.

A meeting closed through the core ends as one commit holding its note at the templated
path, by the configured author and committer whatever identity the machine has; the
same job run twice commits once; a push cut short or refused is made good; a remote
that cannot work is told to the chairs once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from chatbot.bot import IncomingMessage, MeetingBot
from chatbot.config import ConfigError, parse_config
from chatbot.meetings import Rooms
from chatbot.metrics import Metrics
from chatbot.model import EventId, RoomId, UserId
from chatbot.publish import GIT_ARCHIVE, PublishFailed, Sitting
from chatbot.publish.git import GitArchive, place_note, without_credentials
from chatbot.store import Store

from ..support.clock import ManualClock
from ..support.driving import drain
from ..support.transports import RecordingTransport

ROOM = RoomId("!room:example.org")
CHAIR = UserId("@chair:example.org")
T0 = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)
# The machine's own git identity, which must never reach the archive.
MACHINE_IDENTITY = {"GIT_AUTHOR_NAME": "Machine Person", "GIT_AUTHOR_EMAIL": "machine@host",
                    "GIT_COMMITTER_NAME": "Machine Person", "GIT_COMMITTER_EMAIL": "machine@host"}


def git(*arguments: str, cwd: Path | None = None) -> str:
    """git as a person at the machine runs it (their own config, their own identity)."""
    return subprocess.run(["git", *arguments], cwd=cwd, check=True, capture_output=True,
                          text=True, env={**os.environ, **MACHINE_IDENTITY}).stdout


def bare_remote(tmp_path: Path) -> Path:
    remote = tmp_path / "remote.git"
    git("init", "-q", "--bare", "--initial-branch=main", str(remote))
    return remote


def commits(remote: Path, branch: str = "main") -> list[str]:
    """`author | committer | subject`, newest first."""
    log = git("--git-dir", str(remote), "log", "--format=%an <%ae> | %cn <%ce> | %s", branch)
    return log.splitlines()


def committed(remote: Path, path: str, branch: str = "main") -> str:
    return git("--git-dir", str(remote), "show", f"{branch}:{path}")


def meeting_config(remote: str, **git_settings: Any) -> dict[str, Any]:
    return {
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
                   "password": "x"},
        "jobs": {"retry_cap": "10s", "park_after": "1h"},
        "meetings": [{"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
                      "start": "2026-06-18 09:00", "rrule": "FREQ=WEEKLY", "chairs": [CHAIR],
                      "publish": {"git": {"remote": remote, "path": "docs/{id}/{year}.md",
                                          **git_settings}}}],
    }


def sitting(day: int = 18, text: str = "# Team\n\n## Roll call\n\n- Ada\n") -> Sitting:
    held = date(2026, 6, day)
    return Sitting("team", "Team", held, held.isoformat(), text)


def archive(tmp_path: Path, remote: str, work: str = "archive", **settings: Any) -> GitArchive:
    return GitArchive(parse_config(meeting_config(remote, **settings)), tmp_path / work,
                      clock=lambda: T0)


# --- where the note goes in the file ---------------------------------------------------


def test_file_mode_writes_the_note_as_it_is_with_its_marker() -> None:
    assert place_note(None, sitting(), "file") == (
        "<!-- chatbot:team:2026-06-18 -->\n# Team\n\n## Roll call\n\n- Ada\n")


def test_prepend_starts_a_yearly_file_under_a_heading_with_headings_one_level_down() -> None:
    assert place_note(None, sitting(), "prepend") == (
        "# Team: 2026\n\n<!-- chatbot:team:2026-06-18 -->\n## Team\n\n### Roll call\n\n- Ada\n\n")


def test_prepend_puts_the_newest_note_first_and_keeps_what_people_wrote() -> None:
    first = place_note(None, sitting(18), "prepend").replace(
        "# Team: 2026\n", "# Team: 2026\n\nWritten by a person.\n")
    second = place_note(first, sitting(25, "# Team\n\n- Grace\n"), "prepend")
    assert second == ("# Team: 2026\n\nWritten by a person.\n\n"
                      "<!-- chatbot:team:2026-06-25 -->\n## Team\n\n- Grace\n\n"
                      "<!-- chatbot:team:2026-06-18 -->\n## Team\n\n### Roll call\n\n- Ada\n\n")


def test_prepend_into_a_file_of_older_hand_made_notes_goes_under_its_heading() -> None:
    older = "# Meetings 2026\n\n## 2026-06-11\n\n- by hand\n"
    assert place_note(older, sitting(), "prepend").startswith(
        "# Meetings 2026\n\n<!-- chatbot:team:2026-06-18 -->\n## Team\n")
    assert place_note(older, sitting(), "prepend").endswith("## 2026-06-11\n\n- by hand\n")


def test_headings_inside_code_blocks_stay_as_they_are() -> None:
    note = sitting(text="# Team\n\n```\n# a shell comment\n```\n")
    assert "```\n# a shell comment\n```" in place_note(None, note, "prepend")


def test_credentials_in_a_remote_url_are_never_shown() -> None:
    assert without_credentials("https://bot:s3cret@example.org/r.git") == \
        "https://***@example.org/r.git"
    assert without_credentials("git@github.com:org/repo.git") == "git@github.com:org/repo.git"


# --- the configuration -----------------------------------------------------------------


@pytest.mark.parametrize(("settings", "message"), [
    ({"path": "../{year}.md"}, "meetings[0].publish.git.path: expected a relative path"),
    ({"path": "/srv/{year}.md"}, "meetings[0].publish.git.path: expected a relative path"),
    ({"path": "docs/{year}.txt"}, "ending in .md"),
    ({"path": "docs/{month}.md"}, "meetings[0].publish.git.path: expected only {date} {id} "
                                  "{year} in the template, got {month}"),
    ({"path": "docs/{year}.md", "mode": "file"},
     "meetings[0].publish.git.path: expected {date} in the path with `mode: file`"),
    ({"mode": "append"}, "meetings[0].publish.git.mode: "),
    ({"pull_request": True},
     "meetings[0].publish.git: `pull_request: true` needs the GitHub target (publish.github)"),
    ({"branch": "-f"}, "meetings[0].publish.git.branch: expected a branch name"),
    ({"author": {"email": "nobody"}}, "meetings[0].publish.git.author.email: expected an "
                                      "email address"),
    ({"author": {"name": "A <b>"}}, "meetings[0].publish.git.author.name: expected a name"),
    ({"message": "{title} {when}"}, "meetings[0].publish.git.message: expected only"),
    ({"ssh_key": "-----BEGIN"}, "meetings[0].publish.git.ssh_key: is not a known key"),
    ({"remote": "a b"}, "meetings[0].publish.git.remote: expected a git URL without spaces"),
    ({"remote": "https://bot:s3cret@example.org/notes.git"},
     "meetings[0].publish.git.remote: expected a URL without a password in it"),
])
def test_git_settings_that_cannot_work_name_their_key(settings: dict, message: str) -> None:
    data = meeting_config("file:///srv/notes.git")
    data["meetings"][0]["publish"]["git"].update(settings)
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert message in str(raised.value)


def test_git_settings_default_to_a_bot_identity_and_find_the_key_file_from_the_config(
    tmp_path: Path,
) -> None:
    data = meeting_config("git@example.org:team/notes.git", ssh_key_file="keys/archive")
    settings = parse_config(data, base_dir=tmp_path).meetings[0].publish.git
    assert settings is not None
    assert (settings.branch, settings.mode, settings.pull_request) == ("main", "prepend", False)
    assert (settings.author.name, settings.author.email) == ("chatbot", "chatbot@localhost")
    assert settings.ssh_key_file == tmp_path / "keys/archive"


def test_a_meeting_without_publish_settings_publishes_nowhere() -> None:
    data = meeting_config("file:///x.git")
    del data["meetings"][0]["publish"]
    assert parse_config(data).meetings[0].publish.git is None


# --- publishing against a real remote -----------------------------------------------------


async def test_the_same_note_published_twice_is_committed_once(tmp_path: Path) -> None:
    remote = bare_remote(tmp_path)
    target = archive(tmp_path, remote.as_uri())
    first = await target.publish(sitting())
    assert await target.publish(sitting()) == first
    # Even from a fresh working copy (a new machine, or `chatbot publish`).
    assert await archive(tmp_path, remote.as_uri(), work="elsewhere").publish(sitting()) == first
    assert len(commits(remote)) == 1


async def test_commits_are_by_the_configured_identity_not_the_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in MACHINE_IDENTITY.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Machine Person\n\temail = machine@host\n"
                                     "[commit]\n\tgpgsign = true\n")
    monkeypatch.setenv("HOME", str(home))
    remote = bare_remote(tmp_path)
    await archive(tmp_path, remote.as_uri(), author={"name": "Notes Bot",
                                                     "email": "notes@example.org"},
                  message="{title} on {date}").publish(sitting())
    assert commits(remote) == [
        "Notes Bot <notes@example.org> | Notes Bot <notes@example.org> | Team on 2026-06-18"]


async def test_a_push_refused_because_someone_pushed_meanwhile_is_redone_on_top(
    tmp_path: Path,
) -> None:
    remote = bare_remote(tmp_path)
    target = archive(tmp_path, remote.as_uri())
    await target.publish(sitting(11))
    # A person edits the file in their own clone and pushes after the bot last fetched:
    # the bot's next fetch is made to miss it, so its first push is refused.
    person = tmp_path / "person"
    git("clone", "-q", remote.as_uri(), str(person))
    notes = person / "docs/team/2026.md"
    notes.write_text(notes.read_text() + "\nA line a person added.\n")
    git("commit", "-qam", "A person's edit", cwd=person)
    from chatbot.publish import git as git_module

    fetches = 0
    original = git_module._Git.start_from_remote

    async def stale_first(self: Any, branch: str) -> None:
        nonlocal fetches
        fetches += 1
        await original(self, branch)
        if fetches == 1:  # the person pushes just after the bot fetched
            git("push", "-q", "origin", "main", cwd=person)

    git_module._Git.start_from_remote = stale_first  # type: ignore[method-assign]
    try:
        await target.publish(sitting(18))
    finally:
        git_module._Git.start_from_remote = original  # type: ignore[method-assign]
    assert fetches == 2
    assert [line.split(" | ")[2] for line in commits(remote)] == [
        "Team: notes of 2026-06-18", "A person's edit", "Team: notes of 2026-06-11"]
    text = committed(remote, "docs/team/2026.md")
    assert text.index("chatbot:team:2026-06-18") < text.index("chatbot:team:2026-06-11")
    assert "A line a person added." in text


async def test_a_commit_whose_push_never_happened_is_pushed_once_later(
    tmp_path: Path,
) -> None:
    remote = bare_remote(tmp_path)
    target = archive(tmp_path, remote.as_uri())
    from chatbot.publish import git as git_module

    original = git_module._Git.push

    async def crash(self: Any, branch: str) -> bool:
        raise PublishFailed("the process died here", permanent=False)

    git_module._Git.push = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(PublishFailed):
            await target.publish(sitting())
    finally:
        git_module._Git.push = original  # type: ignore[method-assign]
    work = tmp_path / "archive/team"
    assert git("log", "--format=%s", cwd=work).splitlines() == ["Team: notes of 2026-06-18"]
    assert commits_or_none(remote) is None  # committed here, never pushed

    # After a restart: a new GitArchive on the same working copy.
    await archive(tmp_path, remote.as_uri()).publish(sitting())
    await archive(tmp_path, remote.as_uri()).publish(sitting())
    assert [line.split(" | ")[2] for line in commits(remote)] == ["Team: notes of 2026-06-18"]


def commits_or_none(remote: Path) -> list[str] | None:
    try:
        return commits(remote)
    except subprocess.CalledProcessError:
        return None


async def test_a_missing_repository_fails_for_good_with_what_to_fix(tmp_path: Path) -> None:
    target = archive(tmp_path, (tmp_path / "nowhere.git").as_uri())
    with pytest.raises(PublishFailed) as failed:
        await target.publish(sitting())
    assert failed.value.permanent
    assert "no git repository at the remote; check `publish.git.remote`" in str(failed.value)


async def test_an_unreadable_key_file_fails_for_good_naming_the_key(tmp_path: Path) -> None:
    target = archive(tmp_path, "git@127.0.0.1:team/notes.git",
                     ssh_key_file=str(tmp_path / "missing-key"))
    with pytest.raises(PublishFailed) as failed:
        await target.publish(sitting())
    assert failed.value.permanent and "publish.git.ssh_key_file" in str(failed.value)


async def test_an_unreachable_host_is_retried_not_given_up(tmp_path: Path) -> None:
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    target = archive(tmp_path, "http://127.0.0.1:9/team/notes.git")
    with pytest.raises(PublishFailed) as failed:
        await target.publish(sitting())
    assert not failed.value.permanent
    assert "could not reach http://127.0.0.1:9/team/notes.git" in str(failed.value)


# --- through the bot: queued at close, carried out by the outbox ----------------------------


async def make_bot(tmp_path: Path, remote: str, **settings: Any
                   ) -> tuple[MeetingBot, RecordingTransport, ManualClock]:
    config = parse_config(meeting_config(remote, **settings))
    clock, transport = ManualClock(T0), RecordingTransport({CHAIR: 100})
    store = await Store.open(tmp_path / "bot.db")
    bot = MeetingBot(Rooms(config, {"team": ROOM}), store, tmp_path / "notes", transport,
                     clock=clock, metrics=Metrics(clock),
                     targets=[GitArchive(config, tmp_path / "archive", clock=clock)])
    return bot, transport, clock


async def hold_meeting(bot: MeetingBot, tag: str) -> None:
    for number, body in enumerate(["!startmeeting", "!here", f"!update {tag}", "!endmeeting"]):
        await bot.handle(IncomingMessage(ROOM, EventId(f"${tag}{number}"), CHAIR, "Chair",
                                         body))


async def test_a_closed_meeting_becomes_one_commit_and_the_next_one_is_prepended(
    tmp_path: Path,
) -> None:
    remote = bare_remote(tmp_path)
    bot, transport, clock = await make_bot(tmp_path, remote.as_uri())
    try:
        await hold_meeting(bot, "shipped-the-parser")
        [job] = [item for item in await bot.store.read.pending_outbox()
                 if item.kind == GIT_ARCHIVE]
        assert job.payload["series"] == "team" and job.payload["name"] == "2026-06-18"
        await drain(bot)
        assert len(commits(remote)) == 1
        first = committed(remote, "docs/team/2026.md")
        assert "<!-- chatbot:team:2026-06-18 -->\n## Team" in first
        assert "shipped-the-parser" in first

        clock.now += timedelta(days=7)
        await hold_meeting(bot, "wrote-the-docs")
        await drain(bot)
        assert len(commits(remote)) == 2
        second = committed(remote, "docs/team/2026.md")
        assert second.index("wrote-the-docs") < second.index("shipped-the-parser")
        assert not [item for item in transport.sent
                    if item.payload.get("text", "").startswith("**Chairs:**")]
    finally:
        await bot.store.close()


async def test_a_remote_that_cannot_work_is_told_to_the_chairs_once(tmp_path: Path) -> None:
    bot, transport, _ = await make_bot(tmp_path, (tmp_path / "nowhere.git").as_uri())
    try:
        await hold_meeting(bot, "x")
        await drain(bot)
        await drain(bot)
        told = [item.payload["text"] for item in transport.sent
                if item.payload.get("text", "").startswith("**Chairs:**")]
        [text] = told
        assert text.startswith("**Chairs:** I could not publish the note of 2026-06-18 to the "
                               "git archive (file:///")
        assert "nowhere.git, branch main): there is no git repository at the remote" in text
        assert text.endswith("once that is fixed, `chatbot publish team --date 2026-06-18` "
                             "publishes it.")
        assert not await bot.store.read.has_pending_outbox()
        assert (tmp_path / "notes/team/2026-06-18.md").is_file()  # the rest went on
    finally:
        await bot.store.close()


async def test_chatbot_publish_publishes_a_past_sitting_once_its_remote_is_fixed(
    tmp_path: Path,
) -> None:
    remote = tmp_path / "remote.git"
    data = meeting_config(remote.as_uri())
    data["data_dir"] = str(tmp_path / "data")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = parse_config(data)
    clock, transport = ManualClock(T0), RecordingTransport({CHAIR: 100})
    store = await Store.open(tmp_path / "data/chatbot.db")
    bot = MeetingBot(Rooms(config, {"team": ROOM}), store, tmp_path / "notes", transport,
                     clock=clock, targets=[GitArchive(config, tmp_path / "data/archive")])
    try:
        await hold_meeting(bot, "held-before-the-fix")
        await drain(bot)  # the remote does not exist yet: refused, chairs told
    finally:
        await store.close()
    bare_remote(tmp_path)

    first = chatbot("publish", "-c", str(config_file), "team", "--date", "2026-06-18")
    again = chatbot("publish", "-c", str(config_file), "team")
    assert (first.returncode, again.returncode) == (0, 0), first.stderr + again.stderr
    assert len(commits(remote)) == 1
    assert "held-before-the-fix" in committed(remote, "docs/team/2026.md")
    assert "the note of 2026-06-18 is in the git archive" in again.stdout

    none = chatbot("publish", "-c", str(config_file), "team", "--date", "2026-06-25")
    assert none.returncode == 1
    assert "no team meeting was held and closed on 2026-06-25" in none.stderr


def chatbot(*arguments: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "chatbot.cli", *arguments],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(root)})


async def test_a_remote_unreachable_for_too_long_is_retried_quietly_then_told_once(
    tmp_path: Path,
) -> None:
    bot, transport, clock = await make_bot(tmp_path, "http://127.0.0.1:9/team/notes.git")

    def chairs_told() -> list[str]:
        return [item.payload["text"] for item in transport.sent
                if item.payload.get("text", "").startswith("**Chairs:**")]

    try:
        await hold_meeting(bot, "x")
        await drain(bot)
        assert chairs_told() == []  # a network failure usually passes: not told yet
        for _ in range(3):
            clock.now += timedelta(minutes=30)
            await drain(bot)
        [told] = chairs_told()
        assert told.startswith("**Chairs:** I gave up publishing the note of 2026-06-18 to "
                               "the git archive (<http://127.0.0.1:9/team/notes.git>, branch "
                               "main) after trying for 1h")
        assert "`chatbot publish team --date 2026-06-18`" in told
        assert not await bot.store.read.has_pending_outbox()
        assert 'chatbot_jobs_parked_total{kind="git_archive"} 1.0' in \
            bot.metrics.render().decode()
    finally:
        await bot.store.close()


def test_check_lists_where_each_meeting_publishes(tmp_path: Path) -> None:
    data = meeting_config("https://bot@example.org/notes.git")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(data))
    result = chatbot("check", "-c", str(config_file))
    assert result.returncode == 0, result.stderr
    assert ("publishes to the git archive: https://***@example.org/notes.git, branch main, "
            "docs/{id}/{year}.md (prepend)") in result.stdout


async def test_a_working_copy_left_broken_is_made_afresh(tmp_path: Path) -> None:
    remote = bare_remote(tmp_path)
    work = tmp_path / "archive/team"
    work.mkdir(parents=True)
    git("init", "-q", cwd=work)  # a first attempt stopped before `remote add`
    await archive(tmp_path, remote.as_uri()).publish(sitting(11))
    (work / ".git/HEAD").write_text("garbage\n")  # and a disk that went wrong
    with pytest.raises(PublishFailed) as failed:
        await archive(tmp_path, remote.as_uri()).publish(sitting(18))
    assert not failed.value.permanent
    await archive(tmp_path, remote.as_uri()).publish(sitting(18))
    assert len(commits(remote)) == 2


def test_check_online_tries_the_remote_without_writing(tmp_path: Path) -> None:
    remote = bare_remote(tmp_path)
    data = meeting_config(remote.as_uri())
    data["data_dir"] = str(tmp_path / "data")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(data))
    good = chatbot("check", "-c", str(config_file), "--online")
    assert good.returncode == 0, good.stderr
    assert "team: the git archive (file://" in good.stdout
    assert "reachable, no branch main yet (the first note makes it)" in good.stdout
    assert not (tmp_path / "data").exists()
    assert commits_or_none(remote) is None

    data["meetings"][0]["publish"]["git"]["remote"] = (tmp_path / "nowhere.git").as_uri()
    config_file.write_text(yaml.safe_dump(data))
    bad = chatbot("check", "-c", str(config_file), "--online")
    assert bad.returncode == 1
    assert "FAILED: there is no git repository at the remote" in bad.stdout


async def test_a_publish_job_whose_target_left_the_config_fails_without_reaching_the_room(
    tmp_path: Path,
) -> None:
    data = meeting_config("file:///x.git")
    del data["meetings"][0]["publish"]
    clock, transport = ManualClock(T0), RecordingTransport({CHAIR: 100})
    store = await Store.open(tmp_path / "bot.db")
    bot = MeetingBot(Rooms(parse_config(data), {"team": ROOM}), store, tmp_path / "notes",
                     transport, clock=clock)
    try:
        async with store.transaction():
            await store.enqueue(ROOM, GIT_ARCHIVE, sitting().payload(), T0)
        await drain(bot)
        assert [item.kind for item in transport.sent] == ["post"]  # only the chairs' notice
        assert "no longer in the config" in transport.sent[0].payload["text"]
    finally:
        await store.close()
