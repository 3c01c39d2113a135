"""`chatbot demo`: a scripted meeting on a throwaway local homeserver, printed as it happens.

Everything in it is real: a Synapse child process on 127.0.0.1, the bot exactly as
`chatbot run` runs it (it logs in with a password from its config), and three people
on real Matrix clients. The conversation is printed as the chair's client receives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from chatbot.app import BotApp, notes_dir
from chatbot.config import Config, parse_config
from chatbot.demo.homeserver import LocalHomeserver
from chatbot.demo.person import Event, Person, body_of, is_reaction, is_reply

log = logging.getLogger(__name__)

MEETING_ID = "demo"
# Where the note lands in the demo's git repository (the git archive of `publish:`).
ARCHIVE_PATH = "meetings/{id}/{date}.md"
TITLE = "Demo Team Meeting"
ZONE = ZoneInfo("Europe/London")
ROOM_ALIAS = "demo-team"
# The start is this far ahead when the config is built, and the reminder comes this
# long before it: long enough for the bot to start and the first commands to land
# before the reminder, short enough that nobody waits long.
START_IN = timedelta(seconds=12)
REMINDER_LEAD = timedelta(seconds=8)
# Bounds on every wait, so a broken setup fails with a message instead of hanging.
BOT_READY_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 15.0
SCHEDULE_SLACK_S = 15.0
STOP_TIMEOUT_S = 15.0

BOT = ("meetingbot", "Meeting Bot")
CHAIR = ("sam", "Sam (chair)")
ADA = ("ada", "Ada Lovelace")
GRACE = ("grace", "Grace Hopper")

INSTALL_LINE = (
    "chatbot demo needs a local Matrix homeserver (Synapse), which is not installed here. "
    "Install the demo extra with: pip install -e '.[demo]'   (or run ./scripts/demo)"
)
WHAT_NEXT = (
    "To run the bot for your own team: write a config.yaml (config.example.yaml shows "
    "every setting),\ncheck it with `chatbot check`, then start it with `chatbot run`."
)

SPEAKER_WIDTH = len(f"[{BOT[1]}] ")
RULE = "─" * 72
_LIST_MARKER = re.compile(r"(?:[-*]|\d+\.) ")


class DemoFailed(Exception):
    """A step of the demo went wrong; the message says which and what to try."""


def say(text: str = "", *, end: str = "\n") -> None:
    # Flushed line by line so the conversation appears as it happens, even in a pipe.
    print(text, end=end, flush=True)


def _width() -> int:
    return max(60, min(100, shutil.get_terminal_size((100, 24)).columns))


def wrapped(text: str, first: str, indent: str) -> list[str]:
    """Lines of text wrapped to the terminal; a list item's wrapped lines hang under its text."""
    lines: list[str] = []
    for number, line in enumerate(text.split("\n")):
        lead = first if number == 0 else indent
        if not line.strip():
            lines.append("")
            continue
        marker = _LIST_MARKER.match(line)
        hang = indent + " " * (marker.end() if marker else 0)
        # URLs stay whole: a link broken over two lines cannot be clicked.
        lines += textwrap.wrap(line, _width(), initial_indent=lead, subsequent_indent=hang,
                               break_long_words=False, break_on_hyphens=False) or [lead]
    return lines


# --- the transcript ---------------------------------------------------------------------

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_MENTION = re.compile(r"\[([^\]]*)\]\(https://matrix\.to/#/[^)\s]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\((https?://[^)\s]+)\)")
# A Matrix client shows a link as its text alone; in a terminal a long target (the
# time-zone converter's) would outweigh the sentence around it, so it is left out.
LONG_LINK = 50


def terminal_text(markdown: str) -> str:
    """The bot's markdown made easier on the eye in a terminal: no bold marks or link syntax."""
    text = _BOLD.sub(r"\1", markdown)
    text = _MENTION.sub(r"@\1", text)  # a pill, as clients show one
    text = _AUTOLINK.sub(r"\1", text)
    return _LINK.sub(
        lambda link: link[1] if len(link[2]) > LONG_LINK else f"{link[1]} ({link[2]})", text)


class Transcript:
    """Prints the room's messages and ✅ reactions as one client receives them."""

    def __init__(self, room_id: str, names: dict[str, str], bot_id: str) -> None:
        self.room_id = room_id
        self.names = names
        self.bot_id = bot_id
        self._senders: dict[str, str] = {}

    def name(self, user_id: str) -> str:
        return self.names.get(user_id, user_id)

    def show(self, event: Event) -> None:
        # Called from the observer's sync task: an exception here would end that task.
        try:
            self._show(event)
        except Exception:
            log.exception("could not print %s", event.get("event_id"))

    def _show(self, event: Event) -> None:
        if event.get("room_id") != self.room_id:
            return
        sender = str(event.get("sender", ""))
        content = event.get("content") or {}
        if event.get("type") == "m.room.message":
            self._senders[str(event.get("event_id"))] = sender
            self._message(sender, body_of(event), content)
        elif event.get("type") == "m.reaction":
            relation = content.get("m.relates_to") or {}
            target = self._senders.get(str(relation.get("event_id")))
            on = f" on {self.name(target)}'s message" if target else ""
            say(f"[{self.name(sender)}] {relation.get('key', '')}{on}")

    def _message(self, sender: str, body: str, content: dict[str, Any]) -> None:
        speaker = f"[{self.name(sender)}] "
        if sender == self.bot_id:
            if body.startswith("# "):
                # The note is long and printed in full at the end.
                body = f"{body.splitlines()[0]}\n(the meeting note; printed in full below)"
            replied_to = (content.get("m.relates_to") or {}).get("m.in_reply_to") or {}
            target = self._senders.get(str(replied_to.get("event_id")))
            if target:
                speaker += f"(reply to {self.name(target)}) "
            body = terminal_text(body)
        for line in wrapped(body, speaker, " " * SPEAKER_WIDTH):
            say(line)


# --- the run ------------------------------------------------------------------------------


def _hhmmss(when: datetime) -> str:
    return when.astimezone(ZONE).strftime("%H:%M:%S")


def _seconds_until(when: datetime) -> int:
    return max(0, round((when - datetime.now(ZONE)).total_seconds()))


class Demo:
    """One run: the homeserver, the people, the room and the bot, torn down in reverse."""

    def __init__(self, keep: Path | None, cleanup: contextlib.AsyncExitStack) -> None:
        self.keep = keep
        self.cleanup = cleanup
        self.doing = "getting ready"
        self.hs: LocalHomeserver | None = None
        self.bot_id = ""
        self.bot_password = secrets.token_urlsafe(16)
        self.people: dict[str, Person] = {}
        self.names: dict[str, str] = {}
        self.room_id = ""
        self.room_alias = ""
        self.config: Config | None = None
        self.bot_task: asyncio.Task[None] | None = None
        self.start_at = datetime.now(ZONE)
        self.reminder_at = self.start_at
        self.note_path: Path | None = None
        self.archive = Path()
        self.archived_as = ""

    @property
    def observer(self) -> Person:
        return self.people[CHAIR[0]]

    async def play(self) -> str:
        """Set up, run the meeting, and return the saved note's text."""
        say("chatbot demo: a short team meeting, played on a throwaway Matrix homeserver.")
        if self.keep is None:
            say("Nothing leaves this machine, and everything is deleted at the end.")
        else:
            say(f"Nothing leaves this machine; its files are kept in {self.keep}.")
        say()
        data_dir = await self._folders()
        await self._homeserver()
        await self._register()
        await self._room()
        await self._archive(data_dir.parent / "archive.git")
        await self._bot(data_dir)
        await self._meeting()
        self._saved_note()
        return await self._archived_note()

    # --- setting up ----------------------------------------------------------------------

    async def _folders(self) -> Path:
        if self.keep is not None:
            self.keep.mkdir(parents=True, exist_ok=True)
            return self.keep / "data"
        temporary = Path(tempfile.mkdtemp(prefix="chatbot-demo-"))
        self.cleanup.callback(shutil.rmtree, temporary, ignore_errors=True)
        return temporary / "data"

    async def _homeserver(self) -> None:
        self.doing = "starting the local Synapse homeserver"
        say("• Starting a local Synapse homeserver on 127.0.0.1 ...", end=" ")
        workdir = self.keep / "homeserver" if self.keep is not None else None
        # Synapse's start blocks for a second or two, so it runs in a thread. The
        # thread is shielded so that a Ctrl-C meanwhile still gets the server back to stop.
        starting = asyncio.ensure_future(asyncio.to_thread(LocalHomeserver.start, workdir))
        try:
            hs = await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                (await starting).stop()
            raise
        self.hs = hs
        self.cleanup.push_async_callback(asyncio.to_thread, hs.stop)
        say(f"ready in {hs.startup_seconds or 0:.1f} s at {hs.url}")

    async def _register(self) -> None:
        assert self.hs is not None
        self.doing = "registering the accounts"
        bot = await self.hs.register_user(BOT[0], self.bot_password, displayname=BOT[1])
        self.bot_id = bot.user_id
        self.names[bot.user_id] = BOT[1]
        for localpart, display in (CHAIR, ADA, GRACE):
            user = await self.hs.register_user(localpart, displayname=display)
            person = Person(self.hs.nio_client(user), display)
            self.cleanup.push_async_callback(person.close)
            self.people[localpart] = person
            self.names[user.user_id] = display
        say(f"• Registered the bot, {self.bot_id}, and three people on Matrix clients "
            f"of their own:")
        say(f"  {CHAIR[1]}, {ADA[1]} and {GRACE[1]}")

    async def _room(self) -> None:
        assert self.hs is not None
        self.doing = "creating the room"
        chair = self.observer
        others = [self.people[ADA[0]], self.people[GRACE[0]]]
        self.room_id = await chair.create_room(
            invite=[self.bot_id, *(person.user_id for person in others)], alias=ROOM_ALIAS)
        for person in others:
            await person.join(self.room_id)
        self.room_alias = f"#{ROOM_ALIAS}:{self.hs.server_name}"
        say(f"• {CHAIR[1]} created the room {self.room_alias} and invited the bot, Ada and "
            f"Grace; they joined")
        transcript = Transcript(self.room_id, self.names, self.bot_id)
        self.observer.on_event = transcript.show
        for person in self.people.values():
            await person.start()

    def _build_config(self, data_dir: Path) -> Config:
        assert self.hs is not None
        # Whole seconds, so the times printed here match the bot's.
        self.start_at = (datetime.now(ZONE) + START_IN).replace(microsecond=0)
        self.reminder_at = self.start_at - REMINDER_LEAD
        return parse_config({
            "matrix": {
                "homeserver": self.hs.url,
                "user_id": self.bot_id,
                "password": self.bot_password,
                "device_name": "chatbot demo",
            },
            "data_dir": str(data_dir),
            "meetings": [{
                "id": MEETING_ID,
                "title": TITLE,
                "room": self.room_alias,
                "timezone": ZONE.key,
                "start": self.start_at.strftime("%Y-%m-%d %H:%M:%S"),
                "duration": "30m",
                "reminders": [f"{int(REMINDER_LEAD.total_seconds())}s"],
                "chairs": [self.observer.user_id],
                "links": {
                    "notes": "https://notes.example.org/demo-team",
                    "issue": "https://github.com/example/demo-team/issues/1",
                    "calendar": "https://calendar.example.org/demo-team",
                    "code_of_conduct": "https://example.org/code-of-conduct",
                },
                "publish": {"git": {"remote": self.archive.as_uri(), "mode": "file",
                                    "path": ARCHIVE_PATH}},
            }],
        })

    async def _archive(self, archive: Path) -> None:
        """A throwaway bare repository, standing in for the team's notes repository."""
        self.doing = "creating a throwaway git repository"
        self.archive = archive
        await _git("init", "-q", "--bare", "--initial-branch=main", str(archive))

    async def _bot(self, data_dir: Path) -> None:
        self.doing = "starting the bot"
        config = self._build_config(data_dir)
        self.config = config
        lead = int(REMINDER_LEAD.total_seconds())
        say("• Starting the bot with this meeting in its configuration:")
        say(f"    \"{TITLE}\" in {self.room_alias}, {ZONE.key} time,")
        say(f"    starts at {_hhmmss(self.start_at)} (in {_seconds_until(self.start_at)} s) "
            f"for 30 minutes, reminder {lead} s before, chaired by {CHAIR[1]}")
        app = BotApp(config)
        began = time.monotonic()
        task = asyncio.create_task(app.run(), name="demo bot")
        self.bot_task = task
        self.cleanup.push_async_callback(self._stop_bot, app, task)
        ready = asyncio.create_task(app.ready.wait())
        done, _ = await asyncio.wait({ready, task}, timeout=BOT_READY_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task in done:
            raise DemoFailed(f"the bot stopped while starting: {_bot_error(task)}")
        if not done:
            raise DemoFailed(f"the bot was not listening after {BOT_READY_TIMEOUT_S:.0f} s")
        say(f"  The bot logged in with its password, joined the room and is listening "
            f"({time.monotonic() - began:.1f} s).")
        say()
        say(f"The room, as {CHAIR[1]}'s client shows it:")
        say(RULE)

    async def _stop_bot(self, app: BotApp, task: asyncio.Task[None]) -> None:
        if task.done():
            return  # it stopped by itself, and the failure has already been reported
        app.stop.set()
        try:
            await asyncio.wait_for(task, STOP_TIMEOUT_S)
        except Exception:
            log.warning("the bot did not stop cleanly", exc_info=True)

    # --- the meeting -----------------------------------------------------------------------

    async def _meeting(self) -> None:
        ada, grace, chair = self.people[ADA[0]], self.people[GRACE[0]], self.observer

        await self.command(ada, "!iam Ada Lovelace / Analytical Engines / @ada")
        await self.command(ada, "!agenda (10 min) Release planning")
        note(f"waiting {_seconds_until(self.reminder_at)} s for the bot's reminder, "
             f"due at {_hhmmss(self.reminder_at)}")
        await self.expect(lambda e: self._from_bot(e) and body_of(e).startswith("**Reminder:**"),
                          "the reminder",
                          timeout=_seconds_until(self.reminder_at) + SCHEDULE_SLACK_S)
        await self.command(grace, "!update Reviewed the compiler patches; two left")
        note(f"waiting {_seconds_until(self.start_at)} s: at {_hhmmss(self.start_at)} the bot "
             "opens the meeting by itself (nobody types !startmeeting)")
        await self.expect(lambda e: self._from_bot(e) and "is starting now" in body_of(e),
                          "the start announcement",
                          timeout=_seconds_until(self.start_at) + SCHEDULE_SLACK_S)

        await self.command(ada, "!here")
        await self.command(grace, "!here Grace Hopper / US Navy / @grace")
        await self.command(chair, "!here")
        note("the update round: the bot calls on each person in turn, with a mention")
        await self.command(chair, "!round")
        await self.expect(lambda e: self._calls(e, ada), "the bot calling on Ada")
        await self.command(ada, "!update Finished the Bernoulli numbers program\n"
                                "Next: notes on the Analytical Engine")
        await self.expect(lambda e: self._calls(e, chair), "the bot calling on the chair")
        await self.command(chair, "!pass")
        await self.expect(lambda e: self._from_bot(e)
                          and "the update round is over" in body_of(e), "the round's end")
        await self.command(ada, "!celebrate Release 2.0 is out!")
        await self.answer(grace, "!agenda")
        await self.answer(grace, "!when")
        note("a mistake on purpose: the bot explains the syntax")
        await self.answer(ada, "!agenda (999 min) too long")
        await self.command(chair, "!endmeeting")
        await self.expect(lambda e: self._from_bot(e) and body_of(e).startswith(f"# {TITLE}"),
                          "the meeting note")
        say(RULE)

    def _from_bot(self, event: Event) -> bool:
        return event.get("sender") == self.bot_id and event.get("type") == "m.room.message"

    def _calls(self, event: Event, person: Person) -> bool:
        """A turn of the update round calling on `person` (mentioning them)."""
        mentioned = (event.get("content") or {}).get("m.mentions") or {}
        return self._from_bot(event) and person.user_id in mentioned.get("user_ids", [])

    async def command(self, person: Person, text: str) -> None:
        """Send a command and wait until the bot's ✅ on it reaches the observer."""
        event_id = await self._send(person, text)
        await self.expect(lambda e: is_reaction(e, event_id),
                          f"the bot's ✅ on {person.name}'s {_first_word(text)}")

    async def answer(self, person: Person, text: str) -> None:
        """Send a command and wait until the bot's reply to it reaches the observer."""
        event_id = await self._send(person, text)
        await self.expect(lambda e: is_reply(e, event_id),
                          f"the bot's answer to {person.name}'s {_first_word(text)}")

    async def _send(self, person: Person, text: str) -> str:
        self.doing = f"sending {person.name}'s {_first_word(text)}"
        return await person.say(self.room_id, text)

    async def expect(self, predicate: Callable[[Event], bool], what: str,
                     *, timeout: float = ANSWER_TIMEOUT_S) -> Event:
        """The first event the observer has seen matching `predicate`; fails if the bot dies.

        Every awaited event is unique (keyed by event id, or text sent once), so the
        search covers all events: one that came early is still found.
        """
        assert self.bot_task is not None
        self.doing = f"waiting for {what}"
        waiting = asyncio.create_task(self.observer.wait_for(predicate, timeout))
        done, _ = await asyncio.wait({waiting, self.bot_task},
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:
            waiting.cancel()
            raise DemoFailed(f"the bot stopped while the demo was {self.doing}: "
                             f"{_bot_error(self.bot_task)}")
        try:
            event = waiting.result()
        except TimeoutError:
            raise DemoFailed(f"{what} did not arrive within {timeout:.0f} s") from None
        return event

    # --- the end ------------------------------------------------------------------------------

    async def _archived_note(self) -> str:
        """The note as the bot committed it to the repository, once it is there."""
        self.doing = "waiting for the note in the git repository"
        assert self.note_path is not None  # named like the sitting, as the archive's file
        path = ARCHIVE_PATH.format(id=MEETING_ID, date=self.note_path.stem)
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while True:
            try:
                text = await _git("--git-dir", str(self.archive), "show", f"main:{path}")
                break
            except DemoFailed:
                if time.monotonic() > deadline:
                    raise DemoFailed(f"the note was not committed to {self.archive} within "
                                     f"{ANSWER_TIMEOUT_S:.0f} s") from None
                await asyncio.sleep(0.1)
        commit = await _git("--git-dir", str(self.archive), "log", "-1",
                            "--format=%h by %an <%ae>: %s", "main")
        self.archived_as = f"{path}, commit {commit.strip()}"
        return text

    def _saved_note(self) -> str:
        assert self.config is not None
        self.doing = "reading the saved note"
        saved = sorted((notes_dir(self.config) / MEETING_ID).glob("*.md"))
        if not saved:
            raise DemoFailed(f"the bot posted the note but no file is in "
                             f"{notes_dir(self.config) / MEETING_ID}")
        self.note_path = saved[-1]
        return saved[-1].read_text(encoding="utf-8")


async def _git(*arguments: str) -> str:
    """git's output; the machine's own git config is kept out, as the bot keeps it out."""
    process = await asyncio.create_subprocess_exec(
        "git", *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_GLOBAL": "/dev/null",
             "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"})
    out, err = await asyncio.wait_for(process.communicate(), ANSWER_TIMEOUT_S)
    if process.returncode != 0:
        raise DemoFailed(f"git {arguments[-2] if len(arguments) > 1 else arguments[0]} "
                         f"failed: {err.decode(errors='replace').strip()}")
    return out.decode("utf-8", errors="replace")


def note(text: str) -> None:
    """Narration inside the transcript, set apart from what people said."""
    for line in wrapped(text, "   … ", "     "):
        say(line)


def _first_word(text: str) -> str:
    return text.split(maxsplit=1)[0]


def _bot_error(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return "it was cancelled"
    error = task.exception()
    return f"{error}" if error is not None else "it returned early"


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Keep the bot's and the HTTP stack's logs out of the conversation, unless -v was given."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    levels = {"chatbot": logging.WARNING, "nio": logging.ERROR, "aiohttp": logging.ERROR,
              "apscheduler": logging.WARNING}
    previous = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


async def _play(keep: Path | None) -> None:
    # SIGTERM cleans up like Ctrl-C does (asyncio.run already turns SIGINT into a cancel).
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
    async with contextlib.AsyncExitStack() as cleanup:
        demo = Demo(keep, cleanup)
        try:
            text = await demo.play()
        except DemoFailed:
            raise
        except Exception as error:
            log.debug("demo failed", exc_info=True)
            raise DemoFailed(f"{demo.doing} failed: {error}") from error
        say()
        if keep is not None:
            say(f"The bot saved the meeting note in {demo.note_path}, and committed it to "
                f"the git repository {demo.archive} ({demo.archived_as}):")
        else:
            say("The bot saved the meeting note, and committed it to a throwaway git "
                f"repository ({demo.archived_as}); `chatbot demo --keep DIR` keeps both:")
        say()
        say(text.rstrip("\n"))
        say()
        say("Stopping the bot and the homeserver ...", end=" ")
    say("done.")
    if keep is not None:
        say(f"Kept in {keep}: the note and the bot's database under data/, the git "
            f"repository in archive.git, and Synapse's config, log and database under "
            f"homeserver/.")


def run_demo(keep: Path | None = None) -> int:
    """Play the demo meeting; 0 if it went through, 1 if something failed (with a hint)."""
    if importlib.util.find_spec("synapse") is None:
        print(INSTALL_LINE, file=sys.stderr, flush=True)
        return 1
    if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        print(f"chatbot demo: --keep needs a new or empty folder; {keep} is not one.",
              file=sys.stderr, flush=True)
        return 1
    began = time.monotonic()
    with _quiet_logs():
        try:
            asyncio.run(_play(keep))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("\nInterrupted; the bot and the homeserver are stopped"
                  f"{'' if keep else ' and their files deleted'}.", file=sys.stderr, flush=True)
            return 130
        except DemoFailed as error:
            print(f"\nThe demo failed: {error}.", file=sys.stderr)
            print("Everything it started is stopped. Run `chatbot -v demo` to see the bot's "
                  "log, or `chatbot demo --keep DIR` to keep Synapse's log in "
                  "DIR/homeserver/synapse.log.", file=sys.stderr, flush=True)
            return 1
    say()
    say(f"The demo took {time.monotonic() - began:.0f} s.")
    say(WHAT_NEXT)
    return 0
