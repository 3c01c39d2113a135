"""A whole meeting on a real Synapse with its HackMD page on the contract server: made once
when the bot starts (the sitting is within `notes_ahead`) although HackMD's answer is lost
and the bot restarts, its link in the start announcement, its regions rewritten as people
`!here` and `!update` while a person's concurrent edit survives, a 429 waited out until
HackMD's reset, and the note posted at the close the page read back, with the bullet a
person typed under an agenda item."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest

from chatbot.demo.person import body_of, is_reaction
from chatbot.publish import notes_page
from chatbot.publish.hackmd import final_note
from tests.support.hackmd_contract import HackMDContract

from .conftest import World
from .support.waiting import eventually

HUMAN_BULLET = "    - Grace: ship it on Friday (typed on the page)"


async def command(person, room_id: str, text: str) -> str:
    event_id = await person.say(room_id, text)
    await person.wait_for(lambda e: is_reaction(e, event_id))
    return event_id


async def test_a_whole_meeting_with_its_hackmd_page(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # A minute between writes is HackMD's pace; a test has no minutes to spare.
    monkeypatch.setattr(notes_page, "WRITE_EVERY", timedelta(seconds=2))
    async with HackMDContract() as hackmd:
        monkeypatch.setenv("CHATBOT_E2E_HACKMD_TOKEN", hackmd.token)
        # HackMD makes the page, but its answer never reaches the bot.
        hackmd.fail("POST", r"/notes$", 502, after_work=True)
        config = world.config(publish={"hackmd": {
            "token_env": "CHATBOT_E2E_HACKMD_TOKEN", "api_url": hackmd.api_url,
            "team": "jupyterhub"}})
        room, ada, chair = world.room_id, world.ada, world.chair
        bot = await world.start_bot(config)
        await eventually(lambda: len(hackmd.notes) == 1, "the page made at start")
        await bot.stop()  # and a restart on top of the lost answer
        bot = await world.start_bot(config)
        store = bot.app.store
        assert store is not None
        await eventually(lambda: store.read.hackmd_url(1), "the page found again and kept")
        [page] = hackmd.notes.values()
        assert len(hackmd.calls_to("POST", r"/notes$")) == 1
        url = await store.read.hackmd_url(1)
        assert url == f"{hackmd.url}/@jupyterhub/{page.short_id}"

        await command(chair, room, "!agenda (5 min) Release plan")
        mark = len(ada.events)
        await command(chair, room, "!startmeeting")
        start = await ada.wait_for(lambda e: "is starting now" in body_of(e), after=mark)
        assert f"Notes:** <{url}>" in body_of(start)
        assert "notes.example.org" not in body_of(start)

        await command(ada, room, "!here Ada Lovelace")
        await eventually(lambda: "- Ada Lovelace\n<!-- /chatbot:roll-call -->" in page.content
                         and "Release plan" in page.content, "roll call and item on the page")
        item = re.search(r"<!-- /chatbot:(agenda-\d+) -->\n", page.content)
        assert item is not None
        hackmd.human_edit(page.id, lambda text: text.replace(
            item.group(0), item.group(0) + HUMAN_BULLET + "\n"))
        # A person retitles a section right between the bot's read and its write.
        hackmd.human_edit_after_next_read(page.id, lambda text: text.replace(
            "## Quick updates", "## Quick updates (60 s each)"))
        await command(ada, room, "!update wired the notes page")
        await eventually(lambda: "- **Ada Lovelace:** wired the notes page" in page.content,
                         "the update on the page")
        assert HUMAN_BULLET in page.content
        assert "## Quick updates (60 s each)" in page.content
        # Read, a second look found the page moved, merged again, a third look: unchanged.
        assert [c.status for c in hackmd.calls_to("GET", r"/notes/")][-3:] == [200, 200, 304]

        # HackMD says: no more calls until its window resets, three seconds from now.
        reset = int(time.time()) + 3
        hackmd.fail("GET", r"/notes/", 429, headers={
            "X-RateLimit-UserLimit": "100", "X-RateLimit-UserRemaining": "0",
            "X-RateLimit-UserReset": str(reset)})
        await command(ada, room, "!celebrate the page keeps up")
        await eventually(lambda: "- the page keeps up" in page.content,
                         "the celebration after the reset", timeout=30)
        after_429 = [c for c in hackmd.calls if c.status != 429 and c.at >= hackmd.calls[
            next(i for i, c in enumerate(hackmd.calls) if c.status == 429)].at]
        assert after_429 and all(c.at >= reset for c in after_429)

        mark = len(ada.events)
        await command(chair, room, "!endmeeting")
        note = await ada.wait_for(
            lambda e: body_of(e).startswith("# Example Team Meeting"), after=mark, timeout=30)
        text = body_of(note)
        assert re.search(r"^- \*\*[^*]+\*\* \(5 min\) Release plan\n" + re.escape(HUMAN_BULLET),
                         text, re.MULTILINE), text
        assert "- Ada Lovelace" in text and "<!--" not in text
        assert "## Quick updates (60 s each)" in text
        assert text.strip() == final_note(page.content).strip()
        assert f"Notes:** <{url}>" in text
        saved = config.data_dir / "notes" / "team"
        [file] = saved.glob("*.md")
        assert file.read_text() == final_note(page.content).strip("\n") + "\n"
        print(f"HackMD calls in one meeting, creation to read-back: {len(hackmd.calls)} "
              f"({', '.join(f'{c.method} {c.status}' for c in hackmd.calls)})")
        assert len(hackmd.calls) < 40
