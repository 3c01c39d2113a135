"""Chat commands: parsing into typed commands, the registry, and handlers that return effects.

A handler never sends anything. It reads and writes the store inside the
transaction its caller opened, and returns the effects (a ✅, a reply, posts) for
the edges to carry out.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chatbot import archive
from chatbot.meetings import (
    EARLY_START_WINDOW,
    DirectMessage,
    Effect,
    PollEvent,
    React,
    Reply,
    Rooms,
    Target,
    close_meeting,
    end_poll,
    go_to_item,
    materialize,
    open_adhoc,
    open_meeting,
    resolve_target,
    upcoming,
)
from chatbot.model import (
    Entry,
    EntryKind,
    EventId,
    MeetingRecord,
    PassReason,
    Pill,
    Profile,
    RoomId,
    RoundOutcome,
    UserId,
)
from chatbot.polls import (
    MAX_ANSWER,
    MAX_ANSWERS,
    MAX_QUESTION,
    POLL_START,
    START_TYPE,
    TEXT_VOTES,
    YES_NO_ABSTAIN,
    Answer,
    is_yes_no,
    option_answers,
    start_content,
    text_vote_hint,
)
from chatbot.power import CHAIR_LEVEL
from chatbot.render import (
    clean_text,
    escape_markdown,
    format_date,
    render_agenda,
    render_when_line,
    roll_call_profile,
    update_time,
)
from chatbot.rounds import (
    active_round,
    end_current_turn,
    round_order,
    start_round,
    status_line,
)
from chatbot.store import Store

MAX_TEXT = 4000
MAX_AGENDA_MINUTES = 600
WHEN_COUNT = 3
CHAIRS_ARE = (
    "the meeting's configured chairs, room moderators (power level "
    f"{CHAIR_LEVEL} or more) and anyone a chair added with `{{prefix}}chair @user`"
)


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
class Action:
    assignee: str | None
    text: str


@dataclass(frozen=True, slots=True)
class AgendaItem:
    text: str
    minutes: int | None


@dataclass(frozen=True, slots=True)
class ListAgenda:
    pass


@dataclass(frozen=True, slots=True)
class AgendaChange:
    """`remove N`, `move N M`, `edit N text`, `drop N` on the agenda."""

    verb: str
    number: int
    to: int | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class ItemNumber:
    number: int


@dataclass(frozen=True, slots=True)
class Person:
    user_id: UserId


@dataclass(frozen=True, slots=True)
class ArchiveLink:
    reset: bool


@dataclass(frozen=True, slots=True)
class StartMeeting:
    title: str | None


@dataclass(frozen=True, slots=True)
class AskVote:
    question: str
    answers: tuple[Answer, ...]


@dataclass(frozen=True, slots=True)
class CloseVote:
    pass


@dataclass(frozen=True, slots=True)
class CastVote:
    """A text vote: `+1`, `-1`, `0`, or an option's number."""

    choice: str


@dataclass(frozen=True, slots=True)
class RoundCommand:
    """`round` (start, or how it stands), `round shuffle`, `round @a @b …`, `round stop`."""

    verb: str  # "start", "shuffle", "stop"
    people: tuple[UserId, ...] = ()


# --- parsers ----------------------------------------------------------------------------


def _no_arguments(args: str) -> NoArguments:
    if args.strip():
        raise UsageError("this command takes no arguments")
    return NoArguments()


def _limited(text: str, what: str) -> str:
    if len(text) > MAX_TEXT:
        raise UsageError(f"that {what} is {len(text)} characters; the limit is {MAX_TEXT}")
    return text


def _says_something(text: str) -> bool:
    """Text with something visible left once control characters are dropped."""
    return bool(clean_text(text).strip())


def parse_profile(args: str) -> Profile:
    """`Name / Affiliation / @handle`; affiliation and handle may be left out."""
    text = " ".join(args.split())
    if not _says_something(text):
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
    if not _says_something(text):
        raise UsageError("the text is missing")
    return Text(_limited(text, "text"))


_USER_ID = re.compile(r"@[^\s:]+:\S+")


MAX_ID = 255  # bytes in a Matrix user id, at most


def _action(args: str) -> Action:
    text = args.strip()
    assignee = None
    if text.startswith("@"):
        assignee, _, text = text.partition(" ")
        text = text.strip()
        # A pill's trailing colon ("@ada:example.org:") is punctuation, not part of the id.
        assignee = assignee.rstrip(":,") if _USER_ID.fullmatch(assignee.rstrip(":,")) else assignee
        if len(assignee.encode()) > MAX_ID:
            raise UsageError(f"that name is {len(assignee)} characters; the limit is {MAX_ID}")
    if not _says_something(text):
        raise UsageError("say what the action is")
    return Action(assignee, _limited(text, "action"))


_ESTIMATE = re.compile(r"\(\s*(\d+)\s*(?:m|min|mins|minute|minutes)?\s*\)\s*", re.IGNORECASE)
_AGENDA_CHANGE = re.compile(r"(remove|move|edit|drop)\s+#?(\d{1,6})\b\s*(.*)", re.IGNORECASE | re.S)


def _agenda(args: str) -> AgendaItem | ListAgenda | AgendaChange:
    text = args.strip()
    if not text:
        return ListAgenda()
    if not _says_something(text):
        raise UsageError("the topic is missing")
    if change := _AGENDA_CHANGE.fullmatch(text):
        verb, number, rest = change[1].lower(), int(change[2]), change[3].strip()
        if verb == "move":
            if not re.fullmatch(r"#?\d{1,6}", rest):
                raise UsageError("say where to: `agenda move N M`")
            return AgendaChange(verb, number, to=int(rest.lstrip("#")))
        if verb == "edit":
            if not rest:
                raise UsageError("say the new text: `agenda edit N text`")
            return AgendaChange(verb, number, text=rest)
        if rest:
            raise UsageError(f"`agenda {verb} N` takes only the item's number")
        return AgendaChange(verb, number)
    minutes = None
    if estimate := _ESTIMATE.match(text):
        # Compare digits before int(): a huge digit string is refused, not converted.
        minutes = int(estimate[1]) if len(estimate[1]) <= 4 else MAX_AGENDA_MINUTES + 1
        if not 0 < minutes <= MAX_AGENDA_MINUTES:
            raise UsageError(f"the estimate must be between 1 and {MAX_AGENDA_MINUTES} minutes")
        text = text[estimate.end():]
        if not _says_something(text):
            raise UsageError("the topic is missing")
    return AgendaItem(_limited(text.strip(), "agenda item"), minutes)


def _item_number(args: str) -> ItemNumber:
    if not re.fullmatch(r"\s*#?\d{1,6}\s*", args):
        raise UsageError("say which item, by its number in `agenda`")
    return ItemNumber(int(args.strip().lstrip("#")))


def _person(args: str) -> Person:
    user = args.strip().rstrip(":,")
    if not _USER_ID.fullmatch(user) or len(user.encode()) > MAX_ID:
        raise UsageError("name the person by their Matrix id, like @ada:example.org")
    return Person(UserId(user))


def _archive(args: str) -> ArchiveLink:
    word = args.strip().lower()
    if word not in ("", "reset"):
        raise UsageError("`archive` alone sends you the link; a chair may `archive reset`")
    return ArchiveLink(reset=word == "reset")


@dataclass(frozen=True, slots=True)
class NudgeChoice:
    wanted: bool


def _nudge(args: str) -> NudgeChoice:
    choice = args.strip().lower()
    if choice not in ("on", "off"):
        raise UsageError("say `nudge off` or `nudge on`")
    return NudgeChoice(choice == "on")


ROUND_SYNTAX = "round [shuffle | @user:server @user:server … | stop]"


def _round(args: str) -> RoundCommand:
    """The people in an explicit order are Matrix ids; pills have become ids already
    (`pills_as_ids`). Any other words are named back as people not matched."""
    words = args.split()
    if not words:
        return RoundCommand("start")
    if len(words) == 1 and words[0].lower() in ("shuffle", "stop"):
        return RoundCommand(words[0].lower())
    people: list[UserId] = []
    # Runs of other words, each a name: ids, commas and "and" end them.
    unmatched: list[list[str]] = [[]]
    for word in words:
        person = word.rstrip(":,")
        if _USER_ID.fullmatch(person) and len(person.encode()) <= MAX_ID:
            people.append(UserId(person))
        elif person.strip(",:") and person.lower() != "and":
            unmatched[-1].append(person)
            if person == word:
                continue
        unmatched.append([])
    names = [" ".join(run) for run in unmatched if run]
    if not names:
        return RoundCommand("start", tuple(people))
    shown = ", ".join(f"“{escape_markdown(_shortened(name))}”" for name in names[:5])
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    raise UsageError(f"I could not match {shown}{more} to anyone: name each person with a "
                     "pill (type @ and pick them from the list) or their Matrix id, like "
                     "`round @ada:example.org @bo:example.org`")


def _shortened(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def pills_as_ids(arguments: str, pills: Sequence[Pill]) -> str:
    """The arguments with each pill's text (Element's plain body has the display name
    where the HTML has the pill) replaced by that person's Matrix id, left to right, so
    a command that takes people reads pills as ids. The ids come from the pills, the
    order from where they stand; a pill whose text is not found is left as written."""
    parts, position = [], 0
    for pill in pills:
        if not pill.text.strip():
            continue
        # The whole name, not a part of a longer word ("Bo" in "Bob"); some clients
        # write "@Name", and the "@" goes with it.
        found = re.compile(rf"(?<![^\s,;]){re.escape(pill.text)}(?![^\s,;:])"
                           ).search(arguments, position)
        at = re.compile(rf"(?<![^\s,;])@{re.escape(pill.text)}(?![^\s,;:])"
                        ).search(arguments, position)
        if at is not None and (found is None or at.start() < found.start()):
            found = at
        if found is None:
            continue
        parts += [arguments[position:found.start()], f" {pill.user_id} "]
        position = found.end()
    parts.append(arguments[position:])
    return "".join(parts)


def _start_meeting(args: str) -> StartMeeting:
    title = " ".join(args.split())
    if len(title) > 200:
        raise UsageError("the title is limited to 200 characters")
    return StartMeeting(title or None)


_TEXT_VOTE = re.compile(r"[+-]1|\d{1,2}")


def _vote(args: str) -> AskVote | CloseVote | CastVote:
    """`Question? / Option A / Option B`, `close`, or a text vote."""
    text = " ".join(clean_text(args).split())
    if not text:
        raise UsageError("say the question, and any options after it separated by `/`")
    if text.lower() == "close":
        return CloseVote()
    if _TEXT_VOTE.fullmatch(text):
        return CastVote(text)
    question, *options = (part.strip() for part in text.split("/"))
    if not question:
        raise UsageError("the question comes first")
    if len(question) > MAX_QUESTION:
        raise UsageError(f"the question is {len(question)} characters; the limit is "
                         f"{MAX_QUESTION}")
    if not options:
        return AskVote(question, YES_NO_ABSTAIN)
    if len(options) < 2:
        raise UsageError("a vote takes at least two options (or none, for yes / no / abstain)")
    if len(options) > MAX_ANSWERS:
        raise UsageError(f"that is {len(options)} options; the limit is {MAX_ANSWERS}")
    if not all(options):
        raise UsageError("an option is empty")
    if (longest := max(len(option) for option in options)) > MAX_ANSWER:
        raise UsageError(f"an option is {longest} characters; the limit is {MAX_ANSWER}")
    if len({option.casefold() for option in options}) < len(options):
        raise UsageError("two options are the same")
    return AskVote(question, option_answers(options))


def text_vote_answer(choice: str, answers: tuple[Answer, ...]) -> str | None:
    """The answer id a text vote picks on a poll; None if it picks none there."""
    if choice in TEXT_VOTES:
        return TEXT_VOTES[choice] if is_yes_no(answers) else None
    number = int(choice)
    return answers[number - 1].id if 1 <= number <= len(answers) else None


# --- handlers -----------------------------------------------------------------------------

Handler = Callable[[Any, Context, Store], Awaitable[list[Effect]]]


def _no_meeting(context: Context) -> list[Effect]:
    return [Reply(
        "No meeting is scheduled in this room, so there is nothing to add this to. "
        f"A chair can start one with `{context.prefix}startmeeting`."
    )]


def _not_open(context: Context) -> list[Effect]:
    return [Reply(f"No meeting is open here. A chair can open one with "
                  f"`{context.prefix}startmeeting`.")]


def chairs_are(prefix: str) -> str:
    return CHAIRS_ARE.format(prefix=prefix)


async def _target(store: Store, context: Context) -> Target | None:
    return await resolve_target(store, context.rooms, context.room_id, context.now,
                                context.sender)


async def handle_help(command: NoArguments, context: Context, store: Store) -> list[Effect]:
    """The commands from the registry; the quick update's time is that of the meeting
    the room's commands go to (left out where there is none)."""
    target = await _target(store, context)
    seconds = target.series.update_seconds if target is not None else None
    lines = ["**Meeting bot commands:**", ""]
    for spec in REGISTRY:
        aliases = "".join(f" (or `{context.prefix}{alias}`)" for alias in spec.aliases)
        chairs = " *(chairs)*" if spec.chair_only else ""
        lines.append(f"- `{context.prefix}{spec.syntax}`{aliases}: "
                     f"{spec.described(seconds)}{chairs}")
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
    profile = command.profile or target.sender.profile
    line = roll_call_profile(profile, context.display_name, context.sender)
    await store.add_attendee(meeting.id, context.sender, line, context.event_id, context.now)
    return [React()]


async def _entry_sender(store: Store, context: Context, target: Target,
                        kind: EntryKind) -> tuple[str, list[Effect]]:
    """The name a new entry is recorded under (the sender's profile's, else their display
    name), and a reply naming the limit the entry would pass (nothing when it fits).

    The profile and the sender's count of entries came with the target, while the ✅
    waits; counted inside the command's transaction, so two commands cannot both take
    the last place.
    """
    profile = target.sender.profile
    name = profile.name if profile is not None else context.display_name
    if target.meeting is None:
        return name, []  # not held yet, so nothing is recorded for it
    limits, prefix = context.rooms.config.limits, context.prefix
    if kind is EntryKind.AGENDA and (
            await store.count_agenda(target.meeting.id) >= limits.agenda_items):
        return name, [Reply(f"Sorry, the agenda is full: a meeting takes at most "
                            f"{limits.agenda_items} agenda items. A chair or the item's "
                            f"owner can make room with `{prefix}agenda remove N`.")]
    if target.sender.entries >= limits.entries_per_person:
        return name, [Reply(
            f"Sorry, you have reached the limit of {limits.entries_per_person} entries per "
            "person in this meeting (updates, celebrations, agenda items, notes, actions "
            f"and decisions together). `{prefix}undo` removes your last one; editing a "
            "message changes its entry instead.")]
    return name, []


def _entry_handler(kind: EntryKind, pass_reason: PassReason | None = None) -> Handler:
    """Updates, passes, celebrations, notes and decisions: a line of text in the meeting.

    An update or a pass from the person whose turn it is in the update round ends
    their turn.
    """

    async def handle(command: Text | NoArguments, context: Context, store: Store) -> list[Effect]:
        target = await _target(store, context)
        if target is None:
            return _no_meeting(context)
        name, refused = await _entry_sender(store, context, target, kind)
        if refused:
            return refused
        meeting = await materialize(store, context.rooms, target)
        text = command.text if isinstance(command, Text) else ""
        # Notes and decisions belong to the item being discussed, if there is one.
        item_id = meeting.current_item_id if kind in (EntryKind.NOTE, EntryKind.DECISION) else None
        if kind in (EntryKind.UPDATE, EntryKind.PASS) and meeting.started_at is not None:
            # Said after all: it replaces the "no update" of a turn that timed out (turns
            # are taken in a sitting that has started; before, there is none to replace).
            await store.delete_timed_out(meeting.id, context.sender)
        await store.add_entry(meeting.id, kind, context.sender, name, text, None,
                              context.event_id, context.now, item_id=item_id,
                              pass_reason=pass_reason)
        if kind not in (EntryKind.UPDATE, EntryKind.PASS) or not meeting.is_open:
            return [React()]
        return [React(), *await end_current_turn(store, target.series, meeting, context.sender,
                                                 RoundOutcome.SPOKE, context.now)]

    return handle


async def handle_action(command: Action, context: Context, store: Store) -> list[Effect]:
    target = await _target(store, context)
    if target is None:
        return _no_meeting(context)
    name, refused = await _entry_sender(store, context, target, EntryKind.ACTION)
    if refused:
        return refused
    meeting = await materialize(store, context.rooms, target)
    await store.add_entry(meeting.id, EntryKind.ACTION, context.sender, name, command.text, None,
                          context.event_id, context.now, item_id=meeting.current_item_id,
                          assignee=command.assignee or context.sender)
    return [React()]


async def _agenda_record(store: Store, target: Target) -> MeetingRecord | None:
    return await store.record(target.meeting) if target.meeting is not None else None


def _nth_item(record: MeetingRecord | None, number: int, context: Context) -> Entry | str:
    items = record.agenda if record is not None else []
    if not 1 <= number <= len(items):
        count = f"{len(items)} item{'s' if len(items) != 1 else ''}" if items else "no items"
        return (f"There is no item {number}: the agenda has {count}. "
                f"`{context.prefix}agenda` lists it.")
    return items[number - 1]


async def handle_agenda(
    command: AgendaItem | ListAgenda | AgendaChange, context: Context, store: Store
) -> list[Effect]:
    target = await _target(store, context)
    if target is None:
        return _no_meeting(context)
    if isinstance(command, ListAgenda):
        record = await _agenda_record(store, target)
        return [Reply(render_agenda(
            record.agenda if record else [],
            title=target.meeting.title if target.meeting else target.series.title,
            held_at=format_date(target.start.astimezone(target.series.timezone)),
            prefix=context.prefix,
            slot_minutes=int(target.series.duration.total_seconds() // 60),
            current_id=target.meeting.current_item_id if target.meeting else None,
        ))]
    if isinstance(command, AgendaChange):
        return await _change_agenda(command, target, context, store)
    name, refused = await _entry_sender(store, context, target, EntryKind.AGENDA)
    if refused:
        return refused
    meeting = await materialize(store, context.rooms, target)
    await store.add_entry(meeting.id, EntryKind.AGENDA, context.sender, name, command.text,
                          command.minutes, context.event_id, context.now)
    return [React()]


async def _change_agenda(
    command: AgendaChange, target: Target, context: Context, store: Store
) -> list[Effect]:
    record = await _agenda_record(store, target)
    item = _nth_item(record, command.number, context)
    if isinstance(item, str):
        return [Reply(item)]
    assert record is not None
    owner_or_chair = item.sender == context.sender or context.is_chair
    prefix = context.prefix
    if command.verb in ("move", "drop") and not context.is_chair:
        return [Reply(f"Only chairs can {command.verb} agenda items: {chairs_are(prefix)}.")]
    if not owner_or_chair:
        return [Reply(f"Only the item's owner ({escape_markdown(item.sender_name)}) or a chair "
                      f"can {command.verb} item {command.number}.")]
    if command.verb == "remove":
        await store.delete_entry(item.id)
    elif command.verb == "edit":
        assert command.text is not None
        parsed = _agenda(command.text)
        if not isinstance(parsed, AgendaItem):
            raise UsageError("the new text must be an item: `agenda edit N [(N min)] text`")
        await store.update_entry(item.id, parsed.text, parsed.minutes or item.minutes, None)
    elif command.verb == "drop":
        await store.set_dropped(item.id, True)
    else:
        assert command.to is not None
        order = [entry.id for entry in record.agenda]
        order.remove(item.id)
        order.insert(max(0, min(len(order), command.to - 1)), item.id)
        await store.reorder_agenda(order)
    return [React()]


async def _open_meeting_record(context: Context, store: Store) -> MeetingRecord | None:
    meeting = await store.open_meeting_in_room(context.room_id)
    return await store.record(meeting) if meeting is not None else None


async def handle_next(command: NoArguments, context: Context, store: Store) -> list[Effect]:
    record = await _open_meeting_record(context, store)
    if record is None:
        return _not_open(context)
    items, current = record.agenda, record.current_item
    if current is not None:
        following = items[items.index(current) + 1:]
    else:
        following = [item for item in items if not item.visited]
    series = context.rooms.series(record.meeting.series_id)
    assert series is not None
    if not following:
        effects = await go_to_item(store, series, record, None, context.now)
        return [React(), *effects, Reply(
            f"That was the last agenda item. Add more with `{context.prefix}agenda (10 min) "
            f"topic`, or close with `{context.prefix}endmeeting`.")]
    return [React(), *await go_to_item(store, series, record, following[0], context.now)]


async def handle_item(command: ItemNumber, context: Context, store: Store) -> list[Effect]:
    record = await _open_meeting_record(context, store)
    if record is None:
        return _not_open(context)
    item = _nth_item(record, command.number, context)
    if isinstance(item, str):
        return [Reply(item)]
    series = context.rooms.series(record.meeting.series_id)
    assert series is not None
    return [React(), *await go_to_item(store, series, record, item, context.now)]


_KIND_NAMES = {
    EntryKind.UPDATE: "update", EntryKind.PASS: "pass", EntryKind.CELEBRATION: "celebration",
    EntryKind.AGENDA: "agenda item", EntryKind.NOTE: "note", EntryKind.ACTION: "action item",
    EntryKind.DECISION: "decision",
}


async def handle_undo(command: NoArguments, context: Context, store: Store) -> list[Effect]:
    target = await _target(store, context)
    if target is None or target.meeting is None:
        return [Reply("There is nothing to undo in this meeting.")]
    entry = await store.last_entry(target.meeting.id, None if context.is_chair else context.sender)
    if entry is None:
        return [Reply("There is nothing of yours to undo in this meeting.")]
    await store.delete_entry(entry.id)
    whose = "your" if entry.sender == context.sender else f"{escape_markdown(entry.sender_name)}'s"
    text = f": “{escape_markdown(entry.text)}”" if entry.text else ""
    return [React(), Reply(f"Removed {whose} {_KIND_NAMES[entry.kind]}{text}")]


async def handle_round(command: RoundCommand, context: Context, store: Store) -> list[Effect]:
    meeting = await store.open_meeting_in_room(context.room_id)
    series = context.rooms.series(meeting.series_id) if meeting is not None else None
    if meeting is None or series is None:
        return _not_open(context)
    found = await active_round(store, meeting)
    if command.verb == "stop":
        if found is None or not await store.end_round(meeting.id, context.now):
            return [Reply("No update round is on.")]
        return [React(), Reply("The update round is stopped.")]
    if found is not None:
        if command.verb == "start" and not command.people:
            return [Reply(status_line(found, await store.quick_update_senders(meeting.id)))]
        return [Reply(f"An update round is on already; `{context.prefix}round stop` ends it.")]
    record = await store.record(meeting)
    roll_call = [(attendee.user_id, attendee.profile.name) for attendee in record.attendees]
    if not roll_call and not command.people:
        return [Reply(f"Nobody is on the roll call yet: people join it with "
                      f"`{context.prefix}here`.")]
    places = round_order(roll_call, explicit=command.people,
                         shuffle_seed=context.event_id if command.verb == "shuffle" else None)
    return [React(), *await start_round(store, series, meeting, places, context.now)]


async def handle_skip(command: NoArguments, context: Context, store: Store) -> list[Effect]:
    meeting = await store.open_meeting_in_room(context.room_id)
    series = context.rooms.series(meeting.series_id) if meeting is not None else None
    found = await active_round(store, meeting) if meeting is not None else None
    if meeting is None or series is None or found is None or found.current is None:
        return [Reply("No update round is on, so there is no turn to skip.")]
    name = next(place.name for place in found.places if place.user_id == found.current)
    return [React(), *await end_current_turn(store, series, meeting, found.current,
                                             RoundOutcome.SKIPPED, context.now,
                                             lead=f"Skipping {escape_markdown(name)}. ")]


async def handle_nudge(command: NudgeChoice, context: Context, store: Store) -> list[Effect]:
    await store.set_nudges_wanted(context.sender, command.wanted, context.now)
    if command.wanted:
        return [React(), Reply("I will nudge you again before meetings where you have not "
                               "posted a quick update.")]
    return [React(), Reply(f"No more nudges from me. `{context.prefix}nudge on` brings "
                           "them back.")]


async def handle_chair(command: Person, context: Context, store: Store) -> list[Effect]:
    target = await _target(store, context)
    if target is None:
        return _no_meeting(context)
    meeting = await materialize(store, context.rooms, target)
    await store.add_meeting_chair(meeting.id, command.user_id)
    return [React()]


async def handle_unchair(command: Person, context: Context, store: Store) -> list[Effect]:
    target = await _target(store, context)
    if target is None or target.meeting is None or not await store.remove_meeting_chair(
            target.meeting.id, command.user_id):
        return [Reply(f"{escape_markdown(command.user_id)} was not added as a chair of this "
                      f"meeting with `{context.prefix}chair`; configured chairs and room "
                      "moderators stay chairs.")]
    return [React()]


async def handle_startmeeting(
    command: StartMeeting, context: Context, store: Store
) -> list[Effect]:
    target = await _target(store, context)
    if target is not None and target.meeting is not None and target.meeting.is_open:
        return [Reply(
            f"**{escape_markdown(target.meeting.title)}** is already open; "
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


async def handle_endmeeting(command: NoArguments, context: Context, store: Store) -> list[Effect]:
    meeting = await store.open_meeting_in_room(context.room_id)
    series = context.rooms.series(meeting.series_id) if meeting is not None else None
    if meeting is None or series is None:
        return [Reply("No meeting is open in this room.")]
    return [React(), *await close_meeting(store, context.rooms, series, meeting, context.now)]


async def handle_vote(command: AskVote | CloseVote | CastVote, context: Context,
                      store: Store) -> list[Effect]:
    prefix = context.prefix
    meeting = await store.open_meeting_in_room(context.room_id)
    if meeting is None:
        return _not_open(context)
    poll = await store.open_poll_in_room(context.room_id)
    if isinstance(command, AskVote):
        if poll is not None:
            return [Reply(f"A vote is open already: “{escape_markdown(poll.question)}”. Its "
                          f"asker or a chair can end it with `{prefix}vote close`.")]
        poll = await store.add_poll(meeting.id, context.room_id, context.sender,
                                    command.question, command.answers, context.event_id,
                                    context.now)
        return [PollEvent(POLL_START, poll.id, START_TYPE,
                          start_content(poll.question, poll.answers, prefix))]
    if poll is None:
        return [Reply(f"No vote is open here. Ask one with `{prefix}vote Question? / "
                      "Option A / Option B`.")]
    if isinstance(command, CloseVote):
        if context.sender != poll.asker and not context.is_chair:
            return [Reply(f"Only the vote's asker or a chair can end it: {chairs_are(prefix)}.")]
        item_id = meeting.current_item_id if meeting.id == poll.meeting_id else None
        return [React(), *await end_poll(store, poll, item_id, context.now)]
    answer = text_vote_answer(command.choice, poll.answers)
    if answer is None:
        return [Reply(f"This vote takes {text_vote_hint(poll.answers, prefix)}.")]
    await store.add_poll_response(poll.id, context.event_id, context.sender, answer,
                                  context.now)
    return [React()]


async def handle_archive(command: ArchiveLink, context: Context, store: Store) -> list[Effect]:
    """The meeting's archive link: in the room when public, else in a direct chat with
    the asker (the link carries the token). `reset` replaces the token: old links 403."""
    http = context.rooms.config.http
    if http is None:
        return [Reply("The web archive is off: the bot's config has no `http` section.")]
    series = context.rooms.series_in(context.room_id)[0]
    url = f"{http.link_base}/meetings/{series.id}/"
    if series.archive == "public":
        if command.reset:
            return [Reply("This meeting's archive is public; it has no link to reset.")]
        return [Reply(f"This meeting's archive is public: <{url}>")]
    if command.reset and not context.is_chair:
        return [Reply(f"Only chairs can reset the archive link ({chairs_are(context.prefix)}).")]
    token = await store.archive_token(series.id)
    if token is None or command.reset:
        old = archive.token_digest(token) if token is not None else None
        token = archive.new_token()
        await store.set_archive_token(series.id, token, old, context.now)
    title = escape_markdown(series.title)
    what = "The new link to" if command.reset else "Your link to"
    return [React(), DirectMessage(context.sender, (
        f"{what} the archive of **{title}** (its notes, attendance and search; "
        f"keep it among the room's members): <{url}?key={token}>\n\n"
        f"Calendar feed: <{http.link_base}/calendar/{series.id}.ics?key={token}>"
        + ("\n\nThe old link no longer opens." if command.reset else "")))]


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command's syntax, help line, parser and handler, kept side by side.

    `entry_kind` names what the command records, for commands whose message can be
    edited or redacted to change that record; `chair_aware` commands are told
    whether the sender is a chair, because owners and chairs may do more.
    """

    name: str
    syntax: str
    summary: str
    parse: Callable[[str], Any]
    handle: Handler
    aliases: tuple[str, ...] = ()
    chair_only: bool = False
    chair_aware: bool = False
    entry_kind: EntryKind | None = None
    editable: bool = False
    # For a pass: why it is one (`!done`), so an edit between `!pass` and `!done`
    # records the other.
    pass_reason: PassReason | None = None
    # Whether the command names people: pills in the message are read as their ids.
    takes_people: bool = False

    def described(self, update_seconds: int | None = None) -> str:
        """The help line's summary; an `{update_time}` in it says how long a quick
        update may take, and goes (with its brackets) when that is not known."""
        if UPDATE_TIME not in self.summary:
            return self.summary
        if update_seconds is None:
            return self.summary.replace(f" ({UPDATE_TIME})", "")
        return self.summary.replace(UPDATE_TIME, update_time(update_seconds))

    def usage(self, prefix: str) -> str:
        return f"Usage: `{prefix}{self.syntax}` ({self.described()})"


UPDATE_TIME = "{update_time}"


REGISTRY: tuple[CommandSpec, ...] = (
    CommandSpec("help", "help", "lists the commands", _no_arguments, handle_help),
    CommandSpec("when", "when", "the next meetings here, in their zone and UTC",
                _no_arguments, handle_when),
    CommandSpec("iam", "iam Name / Affiliation / @handle",
                "saves how you appear in roll calls", _set_profile, handle_iam, editable=True),
    CommandSpec("here", "here [Name / Affiliation / @handle]", "joins the roll call",
                _here, handle_here, editable=True),
    CommandSpec("update", "update text", f"adds your quick update ({UPDATE_TIME})",
                _text, _entry_handler(EntryKind.UPDATE), entry_kind=EntryKind.UPDATE,
                editable=True),
    CommandSpec("pass", "pass", "passes on your quick update",
                _no_arguments, _entry_handler(EntryKind.PASS), entry_kind=EntryKind.PASS,
                editable=True),
    CommandSpec("done", "done", "says you gave your update on the call, without typing it",
                _no_arguments, _entry_handler(EntryKind.PASS, PassReason.ON_CALL),
                entry_kind=EntryKind.PASS, editable=True, pass_reason=PassReason.ON_CALL),
    CommandSpec("celebrate", "celebrate text", "adds a report or celebration",
                _text, _entry_handler(EntryKind.CELEBRATION), aliases=("report",),
                entry_kind=EntryKind.CELEBRATION, editable=True),
    CommandSpec("agenda", "agenda [(N min)] text",
                "adds an agenda item you own; alone, lists the agenda; also "
                "`agenda remove N`, `agenda edit N text` (owner or chair), "
                "`agenda move N M`, `agenda drop N` (chairs)",
                _agenda, handle_agenda, chair_aware=True, entry_kind=EntryKind.AGENDA,
                editable=True),
    CommandSpec("next", "next", "moves to the next agenda item", _no_arguments, handle_next,
                chair_only=True),
    CommandSpec("item", "item N", "moves to agenda item N", _item_number, handle_item,
                chair_only=True),
    CommandSpec("note", "note text", "adds a note under the current agenda item",
                _text, _entry_handler(EntryKind.NOTE), entry_kind=EntryKind.NOTE, editable=True),
    CommandSpec("action", "action [@user] text", "adds an action item for someone (or you)",
                _action, handle_action, entry_kind=EntryKind.ACTION, editable=True),
    CommandSpec("agreed", "agreed text", "records a decision on the current item",
                _text, _entry_handler(EntryKind.DECISION), aliases=("decision",),
                entry_kind=EntryKind.DECISION, editable=True),
    CommandSpec("vote", "vote Question? / Option A / Option B",
                "asks a vote as a Matrix poll (no options: yes / no / abstain); `vote +1`, "
                "`vote -1`, `vote 0` or `vote N` answer it by text; `vote close` ends it "
                "(its asker or a chair)", _vote, handle_vote, chair_aware=True),
    CommandSpec("undo", "undo", "removes your last entry (a chair's: anyone's)",
                _no_arguments, handle_undo, chair_aware=True),
    CommandSpec("round", ROUND_SYNTAX,
                "calls on each person on the roll call in turn for their update; during "
                "a round, shows who is left; people may be named with pills", _round,
                handle_round, chair_only=True, takes_people=True),
    CommandSpec("skip", "skip", "ends the current turn of the update round", _no_arguments,
                handle_skip, chair_only=True),
    CommandSpec("nudge", "nudge off|on",
                "stops (or restarts) my direct messages asking for your update before a "
                "meeting", _nudge, handle_nudge),
    CommandSpec("chair", "chair @user", "makes someone a chair of this meeting", _person,
                handle_chair, chair_only=True),
    CommandSpec("unchair", "unchair @user", "takes back `chair`", _person, handle_unchair,
                chair_only=True),
    CommandSpec("startmeeting", "startmeeting [title]",
                "opens the next meeting now, or an extra one", _start_meeting,
                handle_startmeeting, chair_only=True),
    CommandSpec("endmeeting", "endmeeting", "closes the meeting, posts and saves the note",
                _no_arguments, handle_endmeeting, chair_only=True),
    CommandSpec("archive", "archive [reset]",
                "sends you the link to this meeting's notes on the web; `archive reset` "
                "(chairs) replaces it, so old links stop working",
                _archive, handle_archive, chair_aware=True),
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


def parse_agenda_item(body: str, prefix: str) -> AgendaItem | None:
    """An `agenda [(N min)] topic` command that adds an item, in the chat's grammar;
    None for anything else (a listing, a change, another command, a mistake)."""
    invocation = parse_invocation(body, prefix)
    if not isinstance(invocation, Invocation) or invocation.spec.name != "agenda":
        return None
    try:
        parsed = invocation.spec.parse(invocation.arguments)
    except UsageError:
        return None
    return parsed if isinstance(parsed, AgendaItem) else None


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
        import difflib  # only for a mistyped name

        close = difflib.get_close_matches(name, list(_BY_NAME), n=1, cutoff=0.75)
        return Unknown(name, close[0] if close else None)
    return Invocation(spec, arguments)
