"""Meetings in end-to-end encrypted rooms, with people on encrypting clients (real Synapse)."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from msgspec.structs import replace

from chatbot.config import Config, EncryptionConfig
from chatbot.demo.homeserver import LocalHomeserver, RegisteredUser
from chatbot.demo.person import Event, Person, body_of, is_reaction, is_reply

from .conftest import PASSWORDS, World, make_world, minute_from_now
from .support.assertions import assert_handled_once
from .support.botlog import LogWatcher
from .test_round_e2e import (
    TIME_UP_SLACK_MS,
    lateness_ms,
    mentions,
    say_with_pills,
    turn_seen_by,
)


@pytest.fixture
async def crypto_world(homeserver: LocalHomeserver, tmp_path: Path) -> AsyncIterator[World]:
    """Like `world`, but the room is encrypted and every person's client encrypts."""
    async with make_world(homeserver, tmp_path, encrypted=True) as made:
        yield made


async def command(person: Person, room_id: str, text: str, timeout: float = 20) -> Event:
    """Send a command, wait for the bot's ✅ on it, and return that reaction."""
    event_id = await person.say(room_id, text)
    return await person.wait_for(lambda e: is_reaction(e, event_id), timeout)


def command_of(reaction: Event) -> str:
    """The event id of the command a ✅ acknowledges."""
    return str(reaction["content"]["m.relates_to"]["event_id"])


async def test_a_whole_meeting_in_an_encrypted_room(crypto_world: World) -> None:
    world = crypto_world
    await world.start_bot(world.config())
    room = world.room_id
    ada, grace, chair = world.ada, world.grace, world.chair

    first = await command(ada, room, "!iam Ada Lovelace / Analytical Engines / @ada", 30)
    assert first["decrypted"], "the ✅ was sent in the clear"
    await command(grace, room, "!agenda (10 min) Release planning")
    mark = len(chair.events)
    await command(chair, room, "!startmeeting")
    start = await chair.wait_for(lambda e: "is starting now" in body_of(e), after=mark)
    assert start["decrypted"]

    await command(ada, room, "!here")
    await command(grace, room, "!here Grace Hopper / US Navy / @grace")
    await command(ada, room, "!update shipped the new parser")
    await command(grace, room, "!pass")
    await command(ada, room, "!note the parser is twice as fast")

    refused = await grace.say(room, "!endmeeting")
    reply = await grace.wait_for(lambda e: is_reply(e, refused))
    assert "Only chairs" in body_of(reply) and reply["decrypted"]

    mark = len(ada.events)
    await command(chair, room, "!endmeeting")
    note = await ada.wait_for(lambda e: body_of(e).startswith("# Example Team Meeting"), after=mark)
    assert note["decrypted"]
    text = body_of(note)
    assert ("## Roll call\n\n- Ada Lovelace / Analytical Engines / @ada\n"
            "- Grace Hopper / US Navy / @grace\n") in text
    assert "- **Ada Lovelace:** shipped the new parser\n- **Grace Hopper:** pass\n" in text
    assert "## Agenda items\n\n- **Grace Hopper** (10 min) Release planning\n" in text
    assert "<h2>Roll call</h2>" in note["content"]["formatted_body"]
    # Nothing the bot sent in this room travelled in the clear.
    bot_events = [e for e in ada.events if e.get("sender") == world.bot_user.user_id
                  and e.get("room_id") == room and e.get("type") != "m.room.member"]
    assert bot_events and all(e["decrypted"] for e in bot_events)


def with_key_wait(config: Config, seconds: float) -> Config:
    return replace(config, encryption=EncryptionConfig(key_wait=timedelta(seconds=seconds)))


def bot_device(world: World) -> str:
    """The bot's device, from its saved login."""
    return str(json.loads((world.tmp / "data" / "session.json").read_text())["device_id"])


def knows_device(person: Person, user_id: str, device_id: str) -> Callable[[], bool]:
    return lambda: device_id in person.client.device_store[user_id]


async def test_a_restart_mid_meeting_keeps_the_device_and_reads_what_came_meanwhile(
        crypto_world: World) -> None:
    world = crypto_world
    room, ada, chair = world.room_id, world.ada, world.chair
    bot = await world.start_bot(world.config())
    await command(chair, room, "!startmeeting", 30)
    await command(ada, room, "!here Ada Lovelace / Analytical Engines / @ada")
    device = bot_device(world)
    await bot.stop()

    while_down = await ada.say(room, "!update keys that survive restarts")
    await world.start_bot(world.config())
    assert bot_device(world) == device, "a restart made a new device"
    reaction = await ada.wait_for(lambda e: is_reaction(e, while_down), 30)
    assert reaction["decrypted"]
    await command(chair, room, "!note decided after the restart")
    mark = len(ada.events)
    await command(chair, room, "!endmeeting")
    note = await ada.wait_for(lambda e: body_of(e).startswith("# Example Team Meeting"), after=mark)
    assert note["decrypted"]
    text = body_of(note)
    assert "- Ada Lovelace / Analytical Engines / @ada\n" in text
    assert "- **Ada Lovelace:** keys that survive restarts\n" in text
    assert "- decided after the restart\n" in text


async def test_a_lost_store_means_a_new_device_that_says_what_it_cannot_read(
        crypto_world: World, bot_log: LogWatcher) -> None:
    world = crypto_world
    room, ada = world.room_id, world.ada
    config = with_key_wait(world.config(), 2)
    bot = await world.start_bot(config)
    first = await command(ada, room, "!here", 30)
    old_device = bot_device(world)
    await bot.stop()

    # Sent to the old device only; then the bot's keys are lost.
    unreadable = await ada.say(room, "!update written for a device that is gone")
    shutil.rmtree(world.tmp / "data" / "crypto")
    bot = await world.start_bot(config)
    new_device = bot_device(world)
    assert new_device != old_device
    await bot_log.wait_for("logging in as a new device")
    await bot_log.wait_for(f"cannot decrypt {unreadable}")

    answer = await ada.wait_for(lambda e: is_reply(e, unreadable), 30)
    assert "could not read a message from Ada" in body_of(answer)
    assert answer["decrypted"]

    # Once Ada's client has seen the new device, her commands work again.
    await ada.wait_until(knows_device(ada, world.bot_user.user_id, new_device))
    after = await command(ada, room, "!update sent after the new device appeared")
    await assert_handled_once(ada, room, world.bot_user.user_id,
                              [command_of(first), command_of(after)], [unreadable],
                              pending=bot.outbox_pending)


# Long enough for a held-back key to be delivered well within it, short enough to wait out.
SHORT_KEY_WAIT = 6


async def test_a_late_key_still_gets_the_command_handled(
        crypto_world: World, bot_log: LogWatcher) -> None:
    world = crypto_world
    room, ada, grace = world.room_id, world.ada, world.grace
    bot_id = world.bot_user.user_id
    bot = await world.start_bot(with_key_wait(world.config(), SHORT_KEY_WAIT))
    first = await command(ada, room, "!iam Ada Lovelace / Analytical Engines / @ada", 30)
    await command(grace, room, "!here", 30)
    for person in (ada, grace):
        await person.wait_until(knows_device(person, bot_id, bot_device(world)))

    late, deliver_key = await ada.say_with_late_key(
        room, "!agenda (5 min) Keys that arrive late", late_for=bot_id)
    # Sent just after, in a session of Grace's whose key the bot never gets: its answer
    # comes once the key wait is over for it, so the wait is over for `late` too.
    control, _ = await grace.say_with_late_key(room, "!here never readable", late_for=bot_id)
    await bot_log.wait_for(f"cannot decrypt {late}")
    await deliver_key()
    reaction = await ada.wait_for(lambda e: is_reaction(e, late), 30)
    assert reaction["decrypted"]
    await bot_log.wait_for(f"the key for {late}")
    listed = await ada.say(room, "!agenda")
    reply = await ada.wait_for(lambda e: is_reply(e, listed))
    assert "Keys that arrive late" in body_of(reply)

    answer = await grace.wait_for(lambda e: is_reply(e, control), SHORT_KEY_WAIT + 30)
    assert "could not read a message from Grace" in body_of(answer)
    said = await assert_handled_once(ada, room, bot_id, [command_of(first), late],
                                     [listed, control], pending=bot.outbox_pending)
    assert not [e for e in said if is_reply(e, late)], "answered as unreadable"


async def test_a_key_that_never_comes_is_answered_once_and_a_late_one_still_counts(
        crypto_world: World, bot_log: LogWatcher) -> None:
    world = crypto_world
    room, grace = world.room_id, world.grace
    bot = await world.start_bot(with_key_wait(world.config(), 1))
    first = await command(grace, room, "!here", 30)
    await grace.wait_until(knows_device(grace, world.bot_user.user_id,
                                        bot_device(world)))

    late, deliver_key = await grace.say_with_late_key(
        room, "!celebrate keys can be late", late_for=world.bot_user.user_id)
    answer = await grace.wait_for(lambda e: is_reply(e, late), 30)
    assert "could not read a message from Grace" in body_of(answer)
    await deliver_key()
    await grace.wait_for(lambda e: is_reaction(e, late), 30)
    await assert_handled_once(grace, room, world.bot_user.user_id, [command_of(first), late],
                              [late], pending=bot.outbox_pending)


async def second_device(world: World, person: Person, name: str) -> Person:
    """The same account as `person`, logged in again: a new device with keys of its own."""
    password = PASSWORDS[person.user_id]
    async with aiohttp.ClientSession() as session, session.post(
            f"{world.hs.url}/_matrix/client/v3/login", json={
                "type": "m.login.password", "password": password,
                "identifier": {"type": "m.id.user", "user": person.user_id}}) as response:
        login = await response.json()
    user = RegisteredUser(login["user_id"], login["access_token"], login["device_id"], password)
    return Person(world.hs.nio_client(user, store_path=world.tmp / "people" / name), name)


@pytest.mark.parametrize("trust", ["tofu", "all"])
async def test_trust_policy_on_a_new_device_of_someone_known(
        crypto_world: World, bot_log: LogWatcher, trust: str) -> None:
    world = crypto_world
    room, ada = world.room_id, world.ada
    config = replace(world.config(), encryption=EncryptionConfig(trust=trust))
    await world.start_bot(config)
    await command(ada, room, "!here", 30)

    laptop = await second_device(world, ada, "ada-laptop")
    await laptop.start()
    try:
        await laptop.wait_until(knows_device(laptop, world.bot_user.user_id, bot_device(world)))
        reaction = await command(laptop, room, "!update from my laptop")
        assert reaction["decrypted"]
        added = [line for line in bot_log.lines if "added device" in line]
        if trust == "tofu":
            assert added and laptop.client.device_id in added[0] and ada.user_id in added[0]
        else:
            assert not added
    finally:
        await laptop.close()


async def test_scheduled_messages_in_an_encrypted_room_are_encrypted(crypto_world: World) -> None:
    world = crypto_world
    start = minute_from_now(seconds=6)
    config = world.config(start=start.strftime("%Y-%m-%d %H:%M:%S"), rrule=None,
                          duration="2s", grace="1s", reminders=["3s"])
    await world.start_bot(config)
    grace = world.grace

    def from_bot(text: str) -> Callable[[Event], bool]:
        return lambda e: e.get("sender") == world.bot_user.user_id and text in body_of(e)

    reminder = await grace.wait_for(from_bot("**Reminder:**"))
    opened = await grace.wait_for(from_bot("is starting now"))
    note = await grace.wait_for(from_bot("# Example Team Meeting"))
    assert reminder["decrypted"] and opened["decrypted"] and note["decrypted"]


async def test_a_short_round_in_an_encrypted_room_keeps_mentions_and_time(
        crypto_world: World) -> None:
    """Turns are encrypted and decrypt with their mention and pill; the chair's pills are
    read from the decrypted message; the time-up counts from the encrypted turn line's
    server time (read back through `Transport.event_time`)."""
    world = crypto_world
    seconds = 5
    await world.start_bot(world.config(update_seconds=seconds))
    room, bot = world.room_id, world.bot_user.user_id
    ada, grace, chair = world.ada, world.grace, world.chair
    await command(chair, room, "!startmeeting", 30)
    for person in (ada, grace, chair):
        await command(person, room, "!here")

    mark = len(chair.events)
    started = await say_with_pills(chair, room, "!round ", [grace, ada, chair])
    await chair.wait_for(lambda e: is_reaction(e, started))
    grace_turn = await turn_seen_by(grace, bot, mark)
    assert grace_turn["decrypted"], "the turn line travelled in the clear"
    assert body_of(grace_turn).endswith(f"your {seconds} seconds (1 of 3; next: Ada)")
    # Grace lets her time run out; Ada is called in the line that says so.
    ada_turn = await turn_seen_by(ada, bot, mark)
    assert ada_turn["decrypted"]
    assert body_of(ada_turn).startswith("⏱ Time is up, Grace. ")
    late = lateness_ms(grace_turn, ada_turn, seconds)
    print(f"encrypted time-up lateness: {late} ms")  # for the accuracy figures
    assert 0 <= late <= TIME_UP_SLACK_MS, f"time-up {late} ms after the deadline"

    await command(ada, room, "!update encrypted and on time")
    chair_turn = await turn_seen_by(chair, bot, mark)
    assert chair_turn["decrypted"]
    await command(chair, room, "!done")
    over = await chair.wait_for(lambda e: e.get("sender") == bot
                                and "the update round is over" in body_of(e), after=mark)
    assert over["decrypted"]
    calls = [e for e in chair.events[mark:] if e.get("sender") == bot and mentions(e)]
    assert [mentions(e) for e in calls] == [[grace.user_id], [ada.user_id], [chair.user_id]]

    await command(chair, room, "!endmeeting")
    note = await ada.wait_for(lambda e: body_of(e).startswith("# Example Team Meeting"))
    assert ("## Quick updates\n\n"
            "- **Ada:** encrypted and on time\n"
            "- **Grace:** no update\n"
            "- **Sam Chair:** (spoke on the call)\n") in body_of(note)
