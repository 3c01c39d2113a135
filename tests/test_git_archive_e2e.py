"""A whole meeting on a real Synapse ends as one commit in a real git remote."""

from __future__ import annotations

import subprocess

from chatbot.demo.person import body_of, is_reaction

from .conftest import World
from .support.waiting import eventually


async def command(person, room_id: str, text: str) -> str:
    event_id = await person.say(room_id, text)
    await person.wait_for(lambda e: is_reaction(e, event_id))
    return event_id


def git(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *arguments], capture_output=True, text=True, check=False)


async def test_a_whole_meeting_ends_as_one_commit_holding_the_note(world: World) -> None:
    remote = world.tmp / "archive.git"
    assert git("init", "-q", "--bare", "--initial-branch=main", str(remote)).returncode == 0
    config = world.config(publish={"git": {"remote": remote.as_uri(), "mode": "file",
                                           "path": "meetings/{id}/{date}.md"}})
    await world.start_bot(config)
    room, ada, chair = world.room_id, world.ada, world.chair

    await command(chair, room, "!startmeeting")
    await command(ada, room, "!here Ada Lovelace / Analytical Engines / @ada")
    await command(ada, room, "!update archived by git")
    mark = len(ada.events)
    await command(chair, room, "!endmeeting")
    note = await ada.wait_for(lambda e: body_of(e).startswith("# Example Team Meeting"),
                              after=mark)

    # The sitting is dated by its scheduled start (two hours ahead), not by the wall clock.
    path = f"meetings/team/{config.meetings[0].start.date().isoformat()}.md"
    await eventually(lambda: git("--git-dir", str(remote), "show", f"main:{path}").returncode
                     == 0, f"a commit holding {path}")
    shown = git("--git-dir", str(remote), "show", f"main:{path}")
    assert shown.stdout == f"<!-- chatbot:team:{path.rsplit('/', 1)[1][:-3]} -->\n{body_of(note)}"
    log = git("--git-dir", str(remote), "log", "--format=%an <%ae>|%s", "main").stdout
    assert log.splitlines() == [
        f"chatbot <chatbot@localhost>|Example Team Meeting: notes of {path[-13:-3]}"]
