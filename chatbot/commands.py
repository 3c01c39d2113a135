"""Chat commands: parsing into typed commands, the registry, and handlers that return effects.

A handler never sends anything. It reads and writes the store inside the
transaction its caller opened, and returns the effects (a ✅, a reply, posts) for
the edges to carry out.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chatbot.meetings import (
    EARLY_START_WINDOW,
    Effect,
    React,
    Reply,
    Rooms,
    Target,
    close_meeting,
    materialize,
    open_adhoc,
    open_meeting,
    resolve_target,
    upcoming,
)
from chatbot.model import EntryKind, EventId, Profile, RoomId, UserId
from chatbot.render import (
    escape_markdown,
    format_date,
    render_agenda,
    render_when_line,
    roll_call_profile,
)
from chatbot.store import Store

MAX_TEXT = 4000
MAX_AGENDA_MINUTES = 600
WHEN_COUNT = 3


class UsageError(Exception):
    """The command was recognised but its arguments were not; the message says why."""


@dataclass(frozen=True, slots=True)
class Context:
    """Who said what, where and when, as the handler needs to know it."""

    rooms: Rooms
    room_id: RoomId
    sender: UserId
    display_name: str
    event_id: EventId
    now: datetime
    is_chair: bool = False

    @property
    def prefix(self) -> str:
        return self.rooms.config.command_prefix


# --- typed commands -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoArguments:
    pass


@dataclass(frozen=True, slots=True)
class SetProfile:
    profile: Profile


@dataclass(frozen=True, slots=True)
class Here:
    profile: Profile | None


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class AgendaItem:
    text: str
    minutes: int | None


@dataclass(frozen=True, slots=True)
class ListAgenda:
    pass


@dataclass(frozen=True, slots=True)
class StartMeeting:
    title: str | None


# --- parsers ----------------------------------------------------------------------------


def _no_arguments(args: str) -> NoArguments:
    if args.strip():
        raise UsageError("this command takes no arguments")
    return NoArguments()


def _limited(text: str, what: str) -> str:
    if len(text) > MAX_TEXT:
        raise UsageError(f"that {what} is {len(text)} characters; the limit is {MAX_TEXT}")
    return text


def parse_profile(args: str) -> Profile:
    """`Name / Affiliation / @handle`; affiliation and handle may be left out."""
    text = " ".join(args.split())
    if not text:
        raise UsageError("say how you want to appear")
    parts = [part.strip() for part in text.split("/", 2)] + ["", ""]
    name, affiliation, handle = parts[:3]
    if not name:
        raise UsageError("the name comes first")
    _limited(text, "profile")
    return Profile(name=name, affiliation=affiliation, handle=handle)


def _set_profile(args: str) -> SetProfile:
    return SetProfile(parse_profile(args))


def _here(args: str) -> Here:
    return Here(parse_profile(args) if args.strip() else None)


def _text(args: str) -> Text:
    text = args.strip()
    if not text:
        raise UsageError("the text is missing")
    return Text(_limited(text, "text"))


_ESTIMATE = re.compile(
    r"\(\s*(\d+)\s*(?:m|min|mins|minute|minutes)?\s*\)\s*", re.IGNORECASE
)


def _agenda(args: str) -> AgendaItem | ListAgenda:
    text = args.strip()
    if not text:
        return ListAgenda()
    minutes = None
    if estimate := _ESTIMATE.match(text):
        # Compare digits before int(): a huge digit string is refused, not converted.
        minutes = int(estimate[1]) if len(estimate[1]) <= 4 else MAX_AGENDA_MINUTES + 1
        if not 0 < minutes <= MAX_AGENDA_MINUTES:
            raise UsageError(f"the estimate must be between 1 and {MAX_AGENDA_MINUTES} minutes")
        text = text[estimate.end():]
        if not text.strip():
            raise UsageError("the topic is missing")
    return AgendaItem(_limited(text.strip(), "agenda item"), minutes)


def _start_meeting(args: str) -> StartMeeting:
    title = " ".join(args.split())
    if len(title) > 200:
        raise UsageError("the title is limited to 200 characters")
    return StartMeeting(title or None)


# --- handlers -----------------------------------------------------------------------------

Handler = Callable[[Any, Context, Store], Awaitable[list[Effect]]]


def _no_meeting(context: Context) -> list[Effect]:
    return [Reply(
        "No meeting is scheduled in this room, so there is nothing to add this to. "
        f"A chair can start one with `{context.prefix}startmeeting`."
    )]


async def _sender_name(store: Store, context: Context) -> str:
    profile = await store.get_profile(context.sender)
    return profile.name if profile is not None else context.display_name


async def _target(store: Store, context: Context) -> Target | None:
    return await resolve_target(store, context.rooms, context.room_id, context.now)


async def handle_help(_: NoArguments, context: Context, store: Store) -> list[Effect]:
    lines = ["**Meeting bot commands:**", ""]
    for spec in REGISTRY:
        aliases = "".join(f" (or `{context.prefix}{alias}`)" for alias in spec.aliases)
        chairs = " *(chairs)*" if spec.chair_only else ""
        lines.append(f"- `{context.prefix}{spec.syntax}`{aliases}: {spec.summary}{chairs}")
    return [Reply("\n".join(lines))]


async def handle_when(command: NoArguments, context: Context, store: Store) -> list[Effect]:
    lines = []
    open_meeting_now = await store.open_meeting_in_room(context.room_id)
    if open_meeting_now is not None:
        lines.append(f"- **{escape_markdown(open_meeting_now.title)}** is in progress now.")
    sittings = []
    for series in context.rooms.series_in(context.room_id):
        for occurrence, _meeting in await upcoming(store, series, context.now, count=WHEN_COUNT):
            sittings.append((occurrence.start, series))
    sittings.sort(key=lambda item: item[0])
    lines += [
        f"- {render_when_line(series.title, start, series.timezone)}"
        for start, series in sittings[:WHEN_COUNT]
    ]
    if not lines:
        return [Reply("No meetings are scheduled in this room.")]
    return [Reply("**Next meetings here:**\n\n" + "\n".join(lines))]


async def _save_profile(store: Store, context: Context, profile: Profile) -> None:
    await store.save_profile(context.sender, profile, context.now)
    await store.rename_in_unclosed(context.sender, profile)


async def handle_iam(command: SetProfile, context: Context, store: Store) -> list[Effect]:
    await _save_profile(store, context, command.profile)
    return [React()]


async def handle_here(command: Here, context: Context, store: Store) -> list[Effect]:
    if command.profile is not None:
        await _save_profile(store, context, command.profile)
    target = await _target(store, context)
    if target is None:
        return _no_meeting(context)
    meeting = await materialize(store, context.rooms, target)
    profile = command.profile or await store.get_profile(context.sender)
    line = roll_call_profile(profile, context.display_name, context.sender)
    await store.add_attendee(meeting.id, context.sender, line, context.event_id, context.now)
    return [React()]


def _entry_handler(kind: EntryKind) -> Handler:
    async def handle(command: Text | NoArguments, context: Context, store: Store) -> list[Effect]:
        target = await _target(store, context)
        if target is None:
            return _no_meeting(context)
        meeting = await materialize(store, context.rooms, target)
        text = command.text if isinstance(command, Text) else ""
        await store.add_entry(meeting.id, kind, context.sender, await _sender_name(store, context),
                              text, None, context.event_id, context.now)
        return [React()]

    return handle


async def handle_agenda(
    command: AgendaItem | ListAgenda, context: Context, store: Store
) -> list[Effect]:
    target = await _target(store, context)
    if target is None:
        return _no_meeting(context)
    if isinstance(command, ListAgenda):
        items = []
        if target.meeting is not None:
            items = (await store.record(target.meeting)).of_kind(EntryKind.AGENDA)
        return [Reply(render_agenda(
            items, title=target.meeting.title if target.meeting else target.series.title,
            held_at=format_date(target.start.astimezone(target.series.timezone)),
            prefix=context.prefix,
        ))]
    meeting = await materialize(store, context.rooms, target)
    await store.add_entry(meeting.id, EntryKind.AGENDA, context.sender,
                          await _sender_name(store, context), command.text, command.minutes,
                          context.event_id, context.now)
    return [React()]


async def handle_startmeeting(
    command: StartMeeting, context: Context, store: Store
) -> list[Effect]:
    target = await _target(store, context)
    if target is not None and target.is_open:
        return [Reply(
            f"**{escape_markdown(target.meeting.title)}** is already open; "  # type: ignore[union-attr]
            f"close it with `{context.prefix}endmeeting` first."
        )]
    if target is not None and target.start - context.now <= EARLY_START_WINDOW:
        meeting = await materialize(store, context.rooms, target)
        effects = await open_meeting(store, context.rooms, target.series, meeting, context.now,
                                     title=command.title)
    else:
        series = context.rooms.series_in(context.room_id)[0]
        effects = await open_adhoc(store, context.rooms, series, command.title or series.title,
                                   context.now)
    return [React(), *effects]


async def handle_endmeeting(_: NoArguments, context: Context, store: Store) -> list[Effect]:
    meeting = await store.open_meeting_in_room(context.room_id)
    series = context.rooms.series(meeting.series_id) if meeting is not None else None
    if meeting is None or series is None:
        return [Reply("No meeting is open in this room.")]
    return [React(), *await close_meeting(store, series, meeting, context.now)]


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command's syntax, help line, parser and handler, kept side by side."""

    name: str
    syntax: str
    summary: str
    parse: Callable[[str], Any]
    handle: Handler
    aliases: tuple[str, ...] = ()
    chair_only: bool = False

    def usage(self, prefix: str) -> str:
        return f"Usage: `{prefix}{self.syntax}` ({self.summary})"


REGISTRY: tuple[CommandSpec, ...] = (
    CommandSpec("help", "help", "lists the commands", _no_arguments, handle_help),
    CommandSpec("when", "when", "the next meetings here, in their zone and UTC",
                _no_arguments, handle_when),
    CommandSpec("iam", "iam Name / Affiliation / @handle",
                "saves how you appear in roll calls", _set_profile, handle_iam),
    CommandSpec("here", "here [Name / Affiliation / @handle]", "joins the roll call",
                _here, handle_here),
    CommandSpec("update", "update text", "adds your quick update (60 seconds)",
                _text, _entry_handler(EntryKind.UPDATE)),
    CommandSpec("pass", "pass", "passes on your quick update",
                _no_arguments, _entry_handler(EntryKind.PASS)),
    CommandSpec("celebrate", "celebrate text", "adds a report or celebration",
                _text, _entry_handler(EntryKind.CELEBRATION), aliases=("report",)),
    CommandSpec("agenda", "agenda [(N min)] text",
                "adds an agenda item you own; alone, lists the agenda", _agenda, handle_agenda),
    CommandSpec("startmeeting", "startmeeting [title]",
                "opens the next meeting now, or an extra one", _start_meeting,
                handle_startmeeting, chair_only=True),
    CommandSpec("endmeeting", "endmeeting", "closes the meeting, posts and saves the note",
                _no_arguments, handle_endmeeting, chair_only=True),
)

_BY_NAME = {name: spec for spec in REGISTRY for name in (spec.name, *spec.aliases)}


@dataclass(frozen=True, slots=True)
class Invocation:
    spec: CommandSpec
    arguments: str


@dataclass(frozen=True, slots=True)
class Unknown:
    name: str
    suggestion: str | None


def strip_reply_fallback(body: str) -> str:
    """Drop the `> <@user> quoted` lines older clients put before a reply's text."""
    lines = body.split("\n")
    if not lines or not lines[0].startswith("> "):
        return body
    for index, line in enumerate(lines):
        if not line.startswith(">"):
            return "\n".join(lines[index + 1 if line == "" else index:])
    return ""


def parse_invocation(body: str, prefix: str) -> Invocation | Unknown | None:
    """A message's command and its raw arguments; None if the message is not a command."""
    text = body.lstrip()
    if not text.startswith(prefix):
        return None
    head, _, rest = text[len(prefix):].partition("\n")
    if not head or head[0].isspace():
        return None  # the name follows the prefix directly: "! here" is just a sentence
    parts = head.split(None, 1)
    name = parts[0].lower()
    first_line = parts[1] if len(parts) > 1 else ""
    arguments = first_line if not rest else f"{first_line}\n{rest}"
    spec = _BY_NAME.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=1, cutoff=0.75)
        return Unknown(name, close[0] if close else None)
    return Invocation(spec, arguments)
