"""The full log of a sitting (`log: true`): its rendering, its rows, and the core keeping
it from the start announcement to the close, edits applied and redactions honoured.
The core runs on real SQLite; its transport only records what it would send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from chatbot.archive import log_path_of
from chatbot.bot import (
    LOG_FILE,
    NOTE_FILE,
    IncomingChat,
    IncomingMessage,
    IncomingRedaction,
    MeetingBot,
)
from chatbot.config import ConfigError, parse_config
from chatbot.matrix.intake import chat_event, incoming_event
from chatbot.meetings import Rooms, keep_in_log
from chatbot.model import EventId, LogLine, RoomId, UserId
from chatbot.render import LOGGED_NOTICE, markdown_to_html, render_log
from chatbot.store import OutboxItem, Store

from ..support.clock import ManualClock
from ..support.transports import RecordingTransport

ROOM = RoomId("!room:example.org")
BOT = UserId("@bot:example.org")
CHAIR, ADA, BOB = (UserId("@chair:example.org"), UserId("@ada:example.org"),
                   UserId("@bob:example.org"))
NOW = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)
HELD = datetime(2026, 6, 18, 9, 0, tzinfo=UTC)


def line(event: str, text: str, *, name: str = "Ada", second: int = 0,
         edited: bool = False) -> LogLine:
    return LogLine(EventId(event), ADA, name, NOW + timedelta(seconds=second), text,
                   edited=edited)


# --- rendering -----------------------------------------------------------------------


def test_a_log_is_a_bullet_per_message_in_order_with_time_name_and_edit_mark() -> None:
    text = render_log("Team", HELD, ZoneInfo("Europe/London"), [
        line("$1", "hello", second=5),
        line("$2", "fixed typo", name="Bob", second=65, edited=True),
        line("$3", "first line\nsecond line", second=3605),
    ])
    assert text == (
        "# Log of Team, Thursday 18th June 2026\n"
        "\n"
        "Every message in the room from the start announcement to the close; times are "
        "Europe/London.\n"
        "\n"
        "- 09:00:05 **Ada:** hello\n"
        "- 09:01:05 **Bob:** fixed typo *(edited)*\n"
        "- 10:00:05 **Ada:** first line  \n"
        "    second line\n"
    )


def test_a_log_without_a_message_says_so() -> None:
    assert "Nobody said anything." in render_log("Team", HELD, ZoneInfo("UTC"), [])


HOSTILE = [
    "<script>window.pwned = 1</script>",
    '<img src=x onerror="window.pwned = 1">',
    "[click](javascript:alert(1))",
    "# a heading\n- a bullet\n\n> a quote\n```\ncode\n```",
    "1. numbered\n=====\n| a | table |",
    "**bold** _em_ `code` &amp; &#60;b&#62;",
    "\u202eevil direction\u0007",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_chat_text_and_names_in_a_log_stay_text(text: str) -> None:
    rendered = render_log("<b>Team</b>", HELD, ZoneInfo("UTC"), [
        line("$1", text, name=text), line("$2", "after"),
    ])
    html = markdown_to_html(rendered)
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    assert html.count("<li>") == 2, "each message is one bullet, whatever it says"
    assert html.count("<h1>") == 1 and "<h2" not in html and "<blockquote" not in html
    assert html.count("<strong>") == 2, "only the two names are bold"
    assert "<code>" not in html and "<table" not in html and "<ol" not in html
    assert "\u202e" not in rendered and "\u0007" not in rendered
    assert "&lt;b&gt;Team" in html


def test_the_log_file_sits_beside_the_note_and_is_named_like_it() -> None:
    assert log_path_of(PurePosixPath("team/2026-06-18.md")) == PurePosixPath(
        "team/2026-06-18.log.md")
    assert log_path_of(PurePosixPath("team/2026-06-18-2.md")) == PurePosixPath(
        "team/2026-06-18-2.log.md")


# --- the rows ---------------------------------------------------------------------


async def open_sitting(store: Store, *, ended: bool = False) -> int:
    async with store.transaction():
        meeting = await store.ensure_scheduled("team", ROOM, "Team", HELD)
        await store.mark_started(meeting.id, NOW, NOW + timedelta(hours=2), "Team")
        if ended:
            await store.mark_ended(meeting.id, NOW + timedelta(hours=1))
    return meeting.id


async def test_a_replayed_message_is_kept_once_in_the_timeline_order(store: Store) -> None:
    meeting_id = await open_sitting(store)
    async with store.transaction():
        assert await store.add_log_line(meeting_id, line("$b", "first", second=9))
        assert await store.add_log_line(meeting_id, line("$a", "second", second=1))
        assert not await store.add_log_line(meeting_id, line("$b", "first again", second=9))
    assert [(kept.event_id, kept.body) for kept in await store.log_lines(meeting_id)] == [
        ("$b", "first"), ("$a", "second")]


async def test_only_the_sender_edits_a_line_and_never_back_to_an_older_edit(
    store: Store,
) -> None:
    meeting_id = await open_sitting(store)
    later, earlier = NOW + timedelta(minutes=2), NOW + timedelta(minutes=1)
    async with store.transaction():
        await store.add_log_line(meeting_id, line("$a", "teh plan"))
        assert not await store.edit_log_line(EventId("$a"), BOB, "hijacked", later)
        assert await store.edit_log_line(EventId("$a"), ADA, "the plan", later)
        assert not await store.edit_log_line(EventId("$a"), ADA, "an older edit", earlier)
    (kept,) = await store.log_lines(meeting_id)
    assert (kept.body, kept.edited) == ("the plan", True)


async def test_a_closed_sittings_log_takes_no_edit_but_forgets_a_redacted_line(
    store: Store,
) -> None:
    meeting_id = await open_sitting(store)
    async with store.transaction():
        await store.add_log_line(meeting_id, line("$a", "kept"))
        await store.add_log_line(meeting_id, line("$b", "taken back"))
        await store.mark_ended(meeting_id, NOW + timedelta(hours=1))
        assert not await store.edit_log_line(EventId("$a"), ADA, "changed", NOW + timedelta(
            hours=2))
        assert await store.forget_log_line(EventId("$b")) == meeting_id
        assert await store.forget_log_line(EventId("$b")) is None
    assert [kept.body for kept in await store.log_lines(meeting_id)] == ["kept"]


# --- what the intake hands over --------------------------------------------------------


def event(sender: str, content: dict[str, Any], event_id: str = "$e") -> dict[str, Any]:
    return {"type": "m.room.message", "sender": sender, "event_id": event_id,
            "origin_server_ts": int(NOW.timestamp() * 1000), "content": content}


def test_messages_that_are_no_command_still_reach_the_log() -> None:
    names = {BOT: "Meeting Bot", ADA: "Ada"}.__getitem__
    own = event(BOT, {"msgtype": "m.text", "body": "**Team** is starting now."})
    assert incoming_event(own, ROOM, BOT, names) is None
    assert chat_event(own, ROOM, names) == IncomingChat(
        ROOM, EventId("$e"), BOT, "Meeting Bot", "**Team** is starting now.", NOW)
    emote = chat_event(event(ADA, {"msgtype": "m.emote", "body": "waves"}), ROOM, names)
    assert emote is not None and emote.body == "* Ada waves"
    image = chat_event(event(ADA, {"msgtype": "m.image", "body": "cat.png"}), ROOM, names)
    assert image is not None and image.body == "(image) cat.png"
    edit = chat_event(event(BOT, {"msgtype": "m.notice", "body": "* new",
                                  "m.new_content": {"msgtype": "m.notice", "body": "new"},
                                  "m.relates_to": {"rel_type": "m.replace",
                                                   "event_id": "$old"}}), ROOM, names)
    assert edit is not None and (edit.body, edit.replaces) == ("new", "$old")
    # A redacted message comes back without a body: it is not logged again.
    assert chat_event(event(ADA, {}), ROOM, names) is None
    assert chat_event({**own, "type": "m.reaction"}, ROOM, names) is None


# --- the core -----------------------------------------------------------------------


def config(*, log: Any = True) -> Any:
    meeting: dict[str, Any] = {
        "id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
        "start": HELD.strftime("%Y-%m-%d %H:%M"), "rrule": "FREQ=WEEKLY", "chairs": [CHAIR]}
    if log is not None:
        meeting["log"] = log
    return parse_config({
        "matrix": {"homeserver": "https://m.example.org", "user_id": BOT, "password": "x"},
        "meetings": [meeting]})


def test_log_must_be_true_or_false() -> None:
    assert config(log=None).meetings[0].log is False
    with pytest.raises(ConfigError, match=r"^meetings\[0\]\.log: expected true or false$"):
        config(log="yes")


class Room:
    """People (and the bot) talking in the meeting room, one second apart."""

    def __init__(self, bot: MeetingBot, clock: ManualClock) -> None:
        self.bot, self.clock, self.count = bot, clock, 0

    def _next(self) -> tuple[EventId, datetime]:
        self.count += 1
        self.clock.advance(seconds=1)
        return EventId(f"$m{self.count}"), self.clock.now

    async def say(self, sender: UserId, body: str, name: str = "") -> EventId:
        event_id, when = self._next()
        await self.bot.handle(IncomingMessage(
            ROOM, event_id, sender, name or sender[1:4].title(), body, sent_at=when,
            server_time=when))
        return event_id

    async def bot_says(self, body: str) -> EventId:
        event_id, when = self._next()
        await self.bot.handle(IncomingChat(ROOM, event_id, BOT, "Meeting Bot", body, when))
        return event_id

    async def edit(self, sender: UserId, original: EventId, body: str) -> None:
        event_id, when = self._next()
        await self.bot.handle(IncomingMessage(
            ROOM, event_id, sender, sender[1:4].title(), body, replaces=original,
            sent_at=when, server_time=when))

    async def redact(self, sender: UserId, target: EventId) -> None:
        event_id, _ = self._next()
        await self.bot.handle(IncomingRedaction(ROOM, event_id, sender, target))


async def make_bot(tmp_path: Path, **options: Any) -> tuple[MeetingBot, Room]:
    clock = ManualClock(NOW)
    store = await Store.open(tmp_path / "bot.db")
    bot = MeetingBot(Rooms(config(**options), {"team": ROOM}), store, tmp_path / "notes",
                     RecordingTransport(), clock=clock)
    return bot, Room(bot, clock)


async def queued(bot: MeetingBot, kind: str) -> list[OutboxItem]:
    return [item for item in await bot.store.read.pending_outbox(limit=200, per_room=200)
            if item.kind == kind]


async def test_a_logged_sitting_keeps_every_message_until_the_close(tmp_path: Path) -> None:
    bot, room = await make_bot(tmp_path)
    try:
        await room.say(ADA, "said before the start: not logged")
        await room.say(CHAIR, "!startmeeting")
        (announcement,) = [item for item in await queued(bot, "post")]
        assert announcement.payload["text"].endswith(LOGGED_NOTICE)
        await room.bot_says("**Team** is starting now.")
        typo = await room.say(ADA, "helo <b>all</b>")
        await room.say(ADA, "!here")
        regret = await room.say(BOB, "something I regret", "Bob")
        await room.edit(ADA, typo, "hello <b>all</b>")
        await room.edit(BOB, typo, "Bob cannot edit Ada's message")
        await room.redact(BOB, regret)
        await room.bot.handle(IncomingMessage(ROOM, typo, ADA, "Ada", "helo <b>all</b>",
                                              server_time=NOW))  # a replay
        await room.say(CHAIR, "!endmeeting")
        await room.say(ADA, "after the close: not logged")

        (job,) = await queued(bot, LOG_FILE)
        (note,) = await queued(bot, NOTE_FILE)
        assert job.payload["path"] == "team/2026-06-18.log.md"
        assert note.payload["path"] == "team/2026-06-18.md"
        assert job.payload["text"].split("\n")[4:] == [
            "- 08:00:03 **Meeting Bot:** \\*\\*Team\\*\\* is starting now.",
            "- 08:00:04 **Ada:** hello &lt;b>all&lt;/b> *(edited)*",
            "- 08:00:05 **Ada:** !here",
            "- 08:00:10 **Cha:** !endmeeting",
            "",
        ]
        await bot.deliver_due()
        saved = tmp_path / "notes" / "team" / "2026-06-18.log.md"
        assert saved.read_text(encoding="utf-8") == job.payload["text"]
        assert [kept.event_id for kept in await bot.store.log_lines(1)] == [
            "$m3", "$m4", "$m5", "$m10"]
    finally:
        await bot.store.close()


async def test_the_bots_own_messages_are_logged_when_sent_while_the_sitting_is_open(
    tmp_path: Path,
) -> None:
    """The sync leaves the bot's own events out; what it sends in a logged sitting is
    logged as it is marked sent, under its name in the room, once."""
    clock = ManualClock(NOW)
    store = await Store.open(tmp_path / "bot.db")
    transport = RecordingTransport()
    bot = MeetingBot(Rooms(config(), {"team": ROOM}), store, tmp_path / "notes", transport,
                     clock=clock, own_name=lambda room_id: f"Meeting Bot in {room_id}")
    room = Room(bot, clock)
    try:
        await room.say(CHAIR, "!startmeeting")
        await bot.deliver_due()
        await room.say(ADA, "!help")  # answered with a reply
        await bot.deliver_due()
        sent = {item.kind: transport.sent.index(item) + 1 for item in transport.sent}
        kept = await store.log_lines(1)
        assert [(line.event_id, line.sender, line.display_name) for line in kept[:1]] == [
            (f"$sent{sent['post']}", BOT, f"Meeting Bot in {ROOM}")]
        assert kept[0].body.endswith(LOGGED_NOTICE), "the announcement as its markdown"
        assert [line.event_id for line in kept] == [
            f"$sent{sent['post']}", "$m2", f"$sent{sent['reply']}"], "in the order said"
        # The echo, should a gap fill bring it back, is the same line: kept once.
        await bot.handle(IncomingChat(ROOM, EventId(f"$sent{sent['reply']}"), BOT,
                                      "Meeting Bot", "again", clock.now))
        assert len(await store.log_lines(1)) == 3

        await room.say(ADA, "!help")  # its reply queued, not yet sent
        await room.say(CHAIR, "!endmeeting")
        await bot.deliver_due()
        assert len(await store.log_lines(1)) == 5, (
            "Ada's message and the close are logged; the reply sent after the close is not")
    finally:
        await store.close()


async def test_the_bots_messages_carry_no_log_where_no_sitting_logs(tmp_path: Path) -> None:
    bot, room = await make_bot(tmp_path, log=None)
    try:
        await room.say(CHAIR, "!startmeeting")
        await room.say(ADA, "!help")
        assert [item for item in await bot.store.read.pending_outbox(limit=50)
                if "log_in" in item.payload] == []
    finally:
        await bot.store.close()


async def test_a_redaction_after_the_close_writes_the_log_again_without_it(
    tmp_path: Path,
) -> None:
    bot, room = await make_bot(tmp_path)
    try:
        await room.say(CHAIR, "!startmeeting")
        await room.say(ADA, "keep this")
        oops = await room.say(ADA, "my password is hunter2")
        await room.say(CHAIR, "!endmeeting")
        await bot.deliver_due()
        saved = tmp_path / "notes" / "team" / "2026-06-18.log.md"
        assert "hunter2" in saved.read_text(encoding="utf-8")

        await room.redact(ADA, oops)
        await bot.deliver_due()
        text = saved.read_text(encoding="utf-8")
        assert "hunter2" not in text and "keep this" in text
    finally:
        await bot.store.close()


async def test_a_log_job_retried_late_never_brings_back_a_redacted_line(
    tmp_path: Path,
) -> None:
    bot, room = await make_bot(tmp_path)
    try:
        await room.say(CHAIR, "!startmeeting")
        oops = await room.say(ADA, "my password is hunter2")
        await room.say(CHAIR, "!endmeeting")
        await room.redact(ADA, oops)
        first, newer = await queued(bot, LOG_FILE)
        assert "hunter2" in first.payload["text"] and "hunter2" not in newer.payload["text"]
        await bot._save_log_file(first)  # the older job, carried out last of all
        text = (tmp_path / "notes" / "team" / "2026-06-18.log.md").read_text("utf-8")
        assert "hunter2" not in text
    finally:
        await bot.store.close()


async def test_a_meeting_without_log_keeps_no_log(tmp_path: Path) -> None:
    bot, room = await make_bot(tmp_path, log=None)
    try:
        await room.say(CHAIR, "!startmeeting")
        (announcement,) = await queued(bot, "post")
        assert LOGGED_NOTICE not in announcement.payload["text"]
        await room.bot_says("**Team** is starting now.")
        await room.say(ADA, "hello")
        await room.say(CHAIR, "!endmeeting")
        assert await queued(bot, LOG_FILE) == []
        assert await queued(bot, NOTE_FILE) != []
        assert await bot.store.log_lines(1) == []
    finally:
        await bot.store.close()


async def test_a_message_sent_before_the_sitting_opened_is_not_logged_when_handled_late(
    store: Store,
) -> None:
    meeting_id = await open_sitting(store)
    rooms = Rooms(config(), {"team": ROOM})
    async with store.transaction():
        assert not await keep_in_log(store, rooms, ROOM, line("$early", "before", second=-300))
        # A homeserver clock a little behind ours: its announcement is still logged.
        assert await keep_in_log(store, rooms, ROOM, line("$start", "starting", second=-20))
    assert [kept.event_id for kept in await store.log_lines(meeting_id)] == ["$start"]


async def test_a_log_that_cannot_be_saved_is_told_to_the_chairs_as_a_log(
    tmp_path: Path,
) -> None:
    bot, room = await make_bot(tmp_path)
    try:
        (tmp_path / "notes").mkdir()
        (tmp_path / "notes" / "team").write_text("in the way")
        await room.say(CHAIR, "!startmeeting")
        await room.say(CHAIR, "!endmeeting")
        await bot.deliver_due()
        await bot.deliver_due()
        assert isinstance(bot.transport, RecordingTransport)
        told = [text for text in bot.transport.texts() if "full log" in text]
        assert len(told) == 1
        assert told[0].startswith("**Chairs:** I could not save the meeting's full log to "
                                  "notes/team/2026-06-18.log.md")
        assert (await queued(bot, LOG_FILE))[0].attempts == 1
    finally:
        await bot.store.close()
