"""Pure text: the meeting note, reminders, announcements and replies, as markdown.

Text from chat is untrusted. Everything that came from a person passes through
`escape_markdown` before it is placed in markdown, and `markdown_to_html` takes no
raw HTML from markdown and runs the result through an allow-list sanitizer, so chat
text can neither change the note's structure nor put HTML into a posted message.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

# python-markdown, nh3 and jinja2 are imported when first used: a running bot needs
# them only to post a message with formatting or a note (a ✅ needs none), and they
# are a few megabytes of memory.
if TYPE_CHECKING:
    import markdown
    from jinja2 import Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment

from chatbot.model import (
    Attendee,
    Entry,
    EntryKind,
    EventId,
    LogLine,
    Meeting,
    MeetingRecord,
    PassReason,
    Profile,
    RoomId,
    UserId,
    VoteResult,
)

_ENTITY = re.compile(r"&(?=#?\w+;)")
_BLOCK_START = frozenset("#>+-")
_ORDERED_START = re.compile(r"(\d+)([.)])")
# A web link in chat text becomes a markdown autolink; trailing punctuation stays text.
# `[` and `]` are left out, or a link could carry a markdown link of its own that shows
# one address and goes to another.
_LINK = re.compile(r"https?://[^\s<>\"'`\\\[\]]+[^\s<>\"'`\\\[\].,;:!?)}]", re.IGNORECASE)
# Only an autolink with an `&` in it needs its `&`s kept (`markdown_to_html`).
_AUTOLINK_WITH_AMPERSAND = re.compile(r"<https?://[^<>\s&]*&[^<>\s]*>", re.IGNORECASE)
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Characters that have no business in a note: C0/C1 controls (except tab), and
# bidirectional overrides that can make a line read differently than it is.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNCLEAN = re.compile(f"{_SURROGATE.pattern}|{_UNPRINTABLE.pattern}")  # \r is in there too

_HTML_TAGS = {
    "a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "li", "ol", "p", "pre", "strong", "ul",
}


def clean_text(text: str) -> str:
    """Drop control and direction-override characters; keep everything readable.

    A lone surrogate (JSON can carry one) cannot be encoded, so it becomes U+FFFD.
    """
    if not _UNCLEAN.search(text):
        return text
    text = _SURROGATE.sub("\ufffd", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _UNPRINTABLE.sub("", text)


def _escape_inline(text: str) -> str:
    # A backslash before each of \ ` * _ [ ], the backslash itself first (faster than translate).
    text = (text.replace("\\", "\\\\").replace("`", "\\`").replace("*", "\\*")
            .replace("_", "\\_").replace("[", "\\[").replace("]", "\\]"))
    if "&" in text:
        text = _ENTITY.sub("&amp;", text)
    return text.replace("<", "&lt;")


def escape_line(line: str) -> str:
    """One line of chat text made inert in markdown, wherever it lands on a line.

    Web links stay clickable: they become `<https://...>` autolinks, which can
    carry no markdown or HTML of their own.
    """
    return _escape_clean_line(clean_text(line))


def _escape_clean_line(line: str) -> str:
    """`escape_line` for a line that has been through `clean_text`."""
    line = line.strip()
    if "://" in line:
        pieces, last = [], 0
        for link in _LINK.finditer(line):
            pieces.append(_escape_inline(line[last:link.start()]))
            pieces.append(f"<{link.group()}>")
            last = link.end()
        pieces.append(_escape_inline(line[last:]))
        line = "".join(pieces)
    else:
        line = _escape_inline(line)
    if line[:1] == "=" and not line.strip("="):
        return "&#61;" + line[1:]  # a line of = would turn the line above into a heading
    if line.startswith("|"):
        return "&#124;" + line[1:]  # `\|` is no escape without the tables extension
    if ordered := _ORDERED_START.match(line):
        return f"{ordered[1]}\\{ordered[2]}{line[ordered.end():]}"
    return "\\" + line if line[:1] in _BLOCK_START else line


def escape_markdown(text: str, *, continuation_indent: str = "    ") -> str:
    """Multi-line chat text as inline markdown; lines become hard line breaks.

    Blank lines are left out and leading spaces dropped, so that nothing a person
    typed can end the list item it sits in or start a code block inside it.
    """
    text = clean_text(text)
    if "\n" not in text:
        return _escape_clean_line(text)
    lines = [_escape_clean_line(line) for line in text.split("\n")]
    return ("  \n" + continuation_indent).join(line for line in lines if line)


def markdown_to_html(text: str) -> str:
    """The posted message's HTML body: markdown rendered, then allow-list sanitized.

    Raw HTML is not supported: a tag in the markdown (an operator's note template,
    say) shows as typed, as text, and so do HTML comments. Everything else is
    python-markdown's, byte for byte (`new_converter`).
    """
    # Markdown decodes entities inside an autolink; keep `&lt;` in a link as typed.
    if "&" in text:
        text = _AUTOLINK_WITH_AMPERSAND.sub(lambda link: link.group().replace("&", "&amp;"),
                                            text)
    converter = _converter()
    try:
        html = converter.reset().convert(text)
    except BaseException:
        _converters.markdown = None  # it may have stopped half-way through its state
        raise
    import nh3

    return nh3.clean(
        html,
        tags=_HTML_TAGS,
        attributes={"a": {"href"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
        # nh3 calls the filter back for every attribute it keeps, 1 µs each: it is left
        # out only where it could drop nothing.
        attribute_filter=None if _only_absolute_hrefs(html) else _absolute_links_only,
    )


# Each thread keeps a converter (python-markdown's is not reentrant) and resets it per use.
_converters = threading.local()


def _converter() -> markdown.Markdown:
    converter: markdown.Markdown | None = getattr(_converters, "markdown", None)
    if converter is None:
        converter = _converters.markdown = new_converter()
    return converter


def new_converter(*, shortcut: bool = True) -> markdown.Markdown:
    """python-markdown without raw HTML, and with a shortcut for inert text that
    `shortcut=False` leaves out (for tests: the HTML is the same either way)."""
    import markdown

    converter = markdown.Markdown(output_format="html")
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    if shortcut:
        from chatbot.inline_shortcut import (
            InertTextShortcut,
            QuickerUnescape,
            quicker_block_level,
            quicker_documents,
            shorten_lists,
        )

        inline = InertTextShortcut(converter)
        converter.treeprocessors.register(inline, "inline", 20)
        converter.treeprocessors.register(QuickerUnescape(converter), "unescape", 0)
        shorten_lists(converter)
        quicker_block_level(converter)
        quicker_documents(converter, inline)
    return converter


# Synapse refuses an event over 65,536 bytes of JSON, signatures included, and an
# encrypted event carries its content base64-encoded, a third larger: a message's
# body and HTML together stay under this many bytes, which leaves room for both.
MAX_MESSAGE_BYTES = 40_000
# A continuation line ("*(continued, part 2 of 3)*") is added after the split.
_PART_LABEL_ROOM = 100
# Where a message may be cut: before a line that starts a top-level block (a heading, a
# list item, any unindented line after a blank one). Indented lines belong to the item
# above, so an item and its sub-bullets always travel together.
_BLOCK_STARTS = re.compile(r"^(?=#|[-*+] |\d+[.)] )|(?<=\n\n)(?=\S)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class MessagePart:
    text: str
    html: str


def message_size(text: str, html: str) -> int:
    """Bytes of a message's body and HTML as the homeserver counts them (UTF-8 JSON)."""
    return len(json.dumps({"body": text, "formatted_body": html},
                          ensure_ascii=False).encode("utf-8"))


def message_parts(text: str, limit: int = MAX_MESSAGE_BYTES) -> list[MessagePart]:
    """The markdown as messages small enough to post, with their HTML: usually one.

    A longer text (the note of a big meeting) is cut between top-level blocks, never
    inside one, and each part after the first says which part it is. A single block
    larger than `limit` is sent whole; the homeserver may refuse it, which is logged.
    """
    if len(text) <= limit:  # else the body alone is too big: no need to try
        html = markdown_to_html(text)
        if message_size(text, html) <= limit:
            return [MessagePart(text, html)]
    cuts = [match.start() for match in _BLOCK_STARTS.finditer(text) if match.start() > 0]
    blocks = [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)],
                                                     strict=True)]
    packed = _pack(blocks, limit - _PART_LABEL_ROOM)
    parts = packed[:1]
    for number, part in enumerate(packed[1:], start=2):
        label = f"*(continued, part {number} of {len(packed)})*"
        # The label is a paragraph of its own, so its HTML simply goes first.
        parts.append(MessagePart(f"{label}\n\n{part.text}",
                                 f"{markdown_to_html(label)}\n{part.html}"))
    return parts


def _pack(blocks: list[str], limit: int) -> list[MessagePart]:
    """Consecutive blocks joined into parts of at most `limit` bytes, few and full.

    Each part is filled by characters at the bytes-per-character of the part before
    (the HTML's share varies: links and bold cost more), then measured; one that is
    over is tried again with the measured rate, so a part costs about one conversion.
    """
    parts: list[MessagePart] = []
    rate = 3.0  # bytes of body and HTML per character of markdown, until measured
    start = 0
    while start < len(blocks):
        end, characters = start + 1, len(blocks[start])
        while end < len(blocks) and (characters + len(blocks[end])) * rate <= limit:
            characters += len(blocks[end])
            end += 1
        joined = "".join(blocks[start:end]).strip("\n") + "\n"
        html = markdown_to_html(joined)
        size = message_size(joined, html)
        if size > limit and end - start > 1:
            rate = size / characters * 1.02  # a little under, so the retry fits
            continue
        parts.append(MessagePart(joined, html))
        rate, start = size / characters, end
    return parts


def _only_absolute_hrefs(html: str) -> bool:
    """Whether every `href` in the HTML, in any case and anywhere, is followed by an
    address `_absolute_links_only` keeps, as python-markdown writes a link's: a relative
    one, an entity in the scheme, another spelling or quoting of the attribute, even the
    word in text, all say no (and the filter is used)."""
    absolute = sum(html.count(f'href="{scheme}') for scheme in ("http://", "https://", "mailto:"))
    return html.lower().count("href") == absolute


def _absolute_links_only(tag: str, attribute: str, value: str) -> str | None:
    """Relative links pass nh3's scheme check; a note has no page to be relative to."""
    if attribute == "href" and not value.lower().startswith(("http://", "https://", "mailto:")):
        return None
    return value


# --- dates and times -------------------------------------------------------------


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def format_date(when: datetime) -> str:
    """`Thursday 17th June 2021`."""
    return f"{when:%A} {_ordinal(when.day)} {when:%B %Y}"


def format_clock(when: datetime) -> str:
    """`9AM`, `9:30AM`, `12PM`."""
    hour = when.hour % 12 or 12
    minutes = f":{when.minute:02d}" if when.minute else ""
    return f"{hour}{minutes}{'AM' if when.hour < 12 else 'PM'}"


def format_time(when: datetime, zone: ZoneInfo) -> str:
    """`9AM Europe/London (08:00 UTC)`."""
    local = when.astimezone(zone)
    return f"{format_clock(local)} {zone.key} ({when.astimezone(UTC):%H:%M} UTC)"


def time_zone_link(when: datetime) -> str:
    """A page that shows this instant in the reader's own time zone."""
    utc = when.astimezone(UTC)
    return f"https://www.timeanddate.com/worldclock/fixedtime.html?iso={utc:%Y%m%dT%H%M}&p1=1440"


def format_span(span: timedelta) -> str:
    """`7 days`, `1 hour`, `1 hour 30 minutes`, `45 seconds`: the two largest units."""
    seconds = max(0, round(span.total_seconds()))
    units = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
    counts = []
    for name, size in units:
        count, seconds = divmod(seconds, size)
        counts.append((count, name))
    first = next((index for index, (count, _) in enumerate(counts) if count), None)
    if first is None:
        return "now"
    # "2 days 3 hours", but never "2 days 5 seconds": the second unit must be the next one.
    shown = [part for part in counts[first:first + 2] if part[0]]
    return " ".join(f"{count} {name}{'' if count == 1 else 's'}" for count, name in shown)


# --- the note ----------------------------------------------------------------------

LINK_LABELS = (
    ("notes", "Notes"),
    ("issue", "GitHub issue"),
    ("calendar", "Calendar for future meetings"),
)


def update_time(seconds: int) -> str:
    """How long a quick update may take: `30 seconds`, `90 seconds`, `2 minutes`,
    `2 minutes 30 seconds`. Under two minutes it stays in seconds, as a facilitator
    says it ("your 60 seconds")."""
    if seconds < 120:
        return f"{seconds} second{'' if seconds == 1 else 's'}"
    return format_span(timedelta(seconds=seconds))


def roll_call_line(profile: Profile) -> str:
    parts = (escape_markdown(part) for part in (profile.name, profile.affiliation,
                                                profile.handle))
    return " / ".join(part for part in parts if part) or "(no name)"


def code_of_conduct_line(link: str | None) -> str:
    conduct = f"[Code of Conduct]({link})" if link else "Code of Conduct"
    return ("By participating in this meeting, you are agreeing to abide by and uphold "
            f"the {conduct}.")


def _said(text: str, **options: str) -> str:
    """Escaped chat text, or a label where nothing visible is left (an empty bullet
    under another bullet would turn that one into a heading)."""
    return escape_markdown(text, **options) or "(no text)"


def _agenda_bullet(entry: Entry) -> str:
    estimate = f" ({entry.minutes} min)" if entry.minutes is not None else ""
    return f"**{escape_markdown(entry.sender_name)}**{estimate} {_said(entry.text)}"


_PASS_TEXT = {None: "pass", PassReason.ON_CALL: "(spoke on the call)",
              PassReason.TIME_UP: "no update"}


def _quick_update(entry: Entry, started_at: datetime | None) -> str:
    """An update's text, or what a pass was; marked when it came before the meeting."""
    text = _PASS_TEXT[entry.pass_reason] if entry.kind is EntryKind.PASS else _said(entry.text)
    if started_at is not None and entry.created_at < started_at:
        return f"{text} (posted ahead)"
    return text


def minutes_taken(item: Entry) -> int:
    """Whole minutes an agenda item took; one at least, once the meeting reached it."""
    return max(1, round(item.took_seconds / 60))


def _took(item: Entry) -> str:
    parts = [f"{item.minutes} min"] if item.minutes is not None else []
    if item.visited:
        parts.append(f"took {minutes_taken(item)} min")
    return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class UpdateView:
    name: str
    text: str


@dataclass(frozen=True, slots=True)
class ItemView:
    owner: str
    timing: str
    text: str
    carried_from: str | None
    details: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ActionGroup:
    person: str
    items: tuple[str, ...]


def note_context(
    record: MeetingRecord, zone: ZoneInfo, links: dict[str, str | None],
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What a note template sees: every value already escaped markdown.

    `names` maps Matrix ids to how people appear (their roll-call names), for
    action items assigned with a Matrix id.
    """
    meeting = record.meeting
    held_at = meeting.held_at.astimezone(zone)
    names = names or {}
    for entry in record.entries:
        names.setdefault(entry.sender, entry.sender_name)
    for attendee in record.attendees:
        names[attendee.user_id] = attendee.profile.name
        if attendee.profile.handle:
            names.setdefault(attendee.profile.handle, attendee.profile.name)

    under_item: dict[int, list[Entry]] = {}
    for entry in record.entries:
        if entry.item_id is not None:
            under_item.setdefault(entry.item_id, []).append(entry)

    # A vote goes under the agenda item it closed in, else among the decisions.
    item_ids = {item.id for item in record.agenda}
    votes_under: dict[int, list[VoteResult]] = {}
    loose_votes = []
    for vote in record.votes:
        if vote.item_id in item_ids:
            assert vote.item_id is not None
            votes_under.setdefault(vote.item_id, []).append(vote)
        else:
            loose_votes.append(vote)

    def details(item: Entry) -> tuple[str, ...]:
        lines = []
        for entry in under_item.get(item.id, []):
            text = _said(entry.text, continuation_indent=" " * 8)
            if entry.kind is EntryKind.NOTE:
                lines.append(text)
            elif entry.kind is EntryKind.DECISION:
                lines.append(f"**Decision:** {text}")
        lines += [_vote_line(vote) for vote in votes_under.get(item.id, [])]
        return tuple(lines)

    escaped_name = functools.cache(escape_markdown)  # the same names come again and again
    groups: dict[str, list[str]] = {}
    for action in record.of_kind(EntryKind.ACTION):
        person = action.assignee or action.sender
        groups.setdefault(names.get(person, person), []).append(
            _said(action.text, continuation_indent=" " * 8))
    return {
        # A title from a YAML block string may have line breaks; a heading has one line.
        "title": escape_markdown(" ".join(meeting.title.split())),
        "date": format_date(held_at),
        "time": format_time(held_at, zone),
        "links": [(label, links[key]) for key, label in LINK_LABELS if links.get(key)],
        "code_of_conduct": code_of_conduct_line(links.get("code_of_conduct")),
        "roll_call": [roll_call_line(a.profile) for a in record.attendees],
        "updates": [
            UpdateView(escaped_name(e.sender_name), _quick_update(e, meeting.started_at))
            for e in record.quick_updates
        ],
        "celebrations": [_said(e.text) for e in record.of_kind(EntryKind.CELEBRATION)],
        "agenda": [
            ItemView(escaped_name(item.sender_name), _took(item), _said(item.text),
                     item.carried_from, details(item))
            for item in record.agenda
        ],
        "notes": [_said(e.text) for e in record.of_kind(EntryKind.NOTE) if e.item_id is None],
        "actions": [ActionGroup(escaped_name(person), tuple(items))
                    for person, items in groups.items()],
        "decisions": [_said(e.text) for e in record.of_kind(EntryKind.DECISION)]
        + [_vote_line(vote) for vote in loose_votes],
    }


def _vote_line(vote: VoteResult) -> str:
    """`**Vote:** Question? — A 5, B 2 (7 voters)`; the question and options are chat text."""
    return f"**Vote:** {_said(vote.result, continuation_indent=' ' * 8)}"


log = logging.getLogger(__name__)

_VIEW_FIELDS = {view: frozenset(field.name for field in fields(view))
                for view in (UpdateView, ItemView, ActionGroup)}


@functools.cache
def _templates() -> ImmutableSandboxedEnvironment:
    """The note templates' environment, made on first use."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        """Jinja's sandbox, but the fields of the note's own views are let through at once
        (and nothing else on them): the general check costs a note of 2,000 updates 4 ms."""

        def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
            if (view_fields := _VIEW_FIELDS.get(type(obj))) is not None:
                return attr in view_fields
            return super().is_safe_attribute(obj, attr, value)

    return Sandbox(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                   undefined=StrictUndefined, autoescape=False)


DEFAULT_TEMPLATE = (resources.files("chatbot") / "templates" / "note.md.j2").read_text("utf-8")


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> Template:
    """A sandboxed note template; raises jinja2.TemplateError if it does not compile."""
    return _templates().from_string(source)


def render_note(
    record: MeetingRecord, zone: ZoneInfo, links: dict[str, str | None], *,
    template: str | None = None, names: dict[str, str] | None = None,
) -> str:
    """The meeting note: the standard layout, or the meeting's own template.

    A custom template that fails while rendering is logged and the standard
    layout used instead: closing a meeting must not fail on a template.
    """
    context = note_context(record, zone, links, names)
    try:
        text = compile_template(template or DEFAULT_TEMPLATE).render(context)
    except Exception:  # an operator's template can fail in any way; ours must not
        if template is None:
            raise
        log.exception("the meeting's note template failed; using the standard note")
        text = compile_template(DEFAULT_TEMPLATE).render(context)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def sample_record() -> MeetingRecord:
    """A small meeting with one of everything, to try a template on."""
    held = datetime(2021, 6, 17, 8, tzinfo=UTC)
    meeting = Meeting(1, "sample", RoomId("!sample"), "Sample", held, held, held, None, 1)
    ada = UserId("@ada:example.org")

    def entry(number: int, kind: EntryKind, text: str, **extra: Any) -> Entry:
        return Entry(kind, ada, "Ada", text, None, EventId(f"${number}"), held, id=number,
                     **extra)

    return MeetingRecord(meeting, (Attendee(ada, Profile("Ada", "Org", "@ada")),), (
        entry(1, EntryKind.AGENDA, "Item", position=1, took_seconds=60),
        entry(2, EntryKind.NOTE, "note", item_id=1),
        entry(3, EntryKind.DECISION, "decision", item_id=1),
        entry(4, EntryKind.ACTION, "action", assignee=ada),
        entry(5, EntryKind.UPDATE, "update"),
        entry(6, EntryKind.PASS, ""),
        entry(7, EntryKind.CELEBRATION, "celebration"),
        entry(8, EntryKind.NOTE, "general note"),
    ))


# --- messages in the room ------------------------------------------------------------


def render_agenda(
    items: Sequence[Entry], *, title: str, held_at: str, prefix: str, slot_minutes: int,
    current_id: int | None = None,
) -> str:
    """The agenda, numbered, with a running total against the meeting's slot."""
    heading = f"**Agenda for {escape_markdown(title)}, {held_at}** ({slot_minutes} min slot)"
    if not items:
        return f"{heading}: nothing yet. Add an item with `{prefix}agenda (10 min) topic`."
    lines = [f"{heading}:", ""]
    running = 0
    for number, item in enumerate(items, 1):
        if item.minutes is None:
            tally = "no estimate"
        else:
            running += item.minutes
            tally = f"{running} of {slot_minutes} min"
        status = " **(now)**" if item.id == current_id else (
            f" (done, took {minutes_taken(item)} min)" if item.visited else "")
        carried = f" (carried over from {item.carried_from})" if item.carried_from else ""
        lines.append(f"{number}. {_agenda_bullet(item)}{carried} · {tally}{status}")
    unestimated = sum(item.minutes is None for item in items)
    total = f"Total: {running} of {slot_minutes} min"
    if unestimated:
        total += f", plus {unestimated} item{'s' if unestimated > 1 else ''} without an estimate"
    lines += ["", total + "."]
    if running > slot_minutes:
        lines.append(f"**{running} min of items for a {slot_minutes} min meeting.**")
    return "\n".join(lines)


def _link_lines(links: dict[str, str | None]) -> list[str]:
    return [f"- **{label}:** <{links[key]}>" for key, label in LINK_LABELS if links.get(key)]


def render_when_line(title: str, start: datetime, zone: ZoneInfo) -> str:
    local = start.astimezone(zone)
    return (
        f"**{escape_markdown(title)}**: {format_date(local)}, {format_time(local, zone)}; "
        f"[in your time zone]({time_zone_link(start)})"
    )


def render_reminder(
    *, title: str, start: datetime, zone: ZoneInfo, now: datetime,
    links: dict[str, str | None], agenda: Sequence[Entry], prefix: str,
) -> str:
    """The reminder before a meeting: when, where, the agenda so far, how to add."""
    agenda_lines = [f"{n}. {_agenda_bullet(item)}" for n, item in enumerate(agenda, 1)]
    return "\n".join([
        f"**Reminder:** {render_when_line(title, start, zone)}, "
        f"starts in {format_span(start - now)}.",
        "",
        *_link_lines(links),
        "",
        "**Agenda so far:**" if agenda else "**Agenda so far:** nothing yet.",
        *(["", *agenda_lines] if agenda_lines else []),
        "",
        f"Add an item with `{prefix}agenda (10 min) topic`, your quick update with "
        f"`{prefix}update text` (or `{prefix}pass`), news with `{prefix}celebrate text`.",
    ])


LOGGED_NOTICE = ("This meeting is logged: every message until the close is saved with "
                 "the notes.")


def render_start(
    *, title: str, links: dict[str, str | None], closes_at: datetime, zone: ZoneInfo,
    prefix: str, update_seconds: int = 60, logged: bool = False,
) -> str:
    """The announcement when a meeting opens, with the series' time for a quick update;
    it says so when the meeting is logged."""
    return "\n".join([
        f"**{escape_markdown(title)}** is starting now.",
        "",
        code_of_conduct_line(links.get("code_of_conduct")),
        "",
        f"- Roll call: `{prefix}here` (or `{prefix}here Name / Affiliation / @handle`)",
        f"- Quick update, {update_time(update_seconds)}, you can pass: "
        f"`{prefix}update text` or `{prefix}pass`",
        f"- Reports and celebrations: `{prefix}celebrate text`",
        f"- Agenda: `{prefix}agenda` lists it, `{prefix}agenda (10 min) topic` adds to it",
        f"- Chairs close with `{prefix}endmeeting`; otherwise it closes at "
        f"{format_time(closes_at, zone)}.",
        *(["", *_link_lines(links)] if _link_lines(links) else []),
        *(["", LOGGED_NOTICE] if logged else []),
    ])


def render_log(title: str, held_at: datetime, zone: ZoneInfo,
               lines: Sequence[LogLine]) -> str:
    """A sitting's full log as markdown: a bullet per message, oldest first, with its
    time in the meeting's zone, who sent it and what it says now.

    Everything in a line came from chat (the bot's own messages included: they quote
    people), so names and text are escaped and stay text, never structure.
    """
    bullets = []
    for line in lines:
        edited = " *(edited)*" if line.edited else ""
        bullets.append(f"- {line.sent_at.astimezone(zone):%H:%M:%S} "
                       f"**{escape_markdown(line.display_name) or '(no name)'}:** "
                       f"{_said(line.body)}{edited}")
    return "\n".join([
        f"# Log of {escape_markdown(title)}, {format_date(held_at.astimezone(zone))}",
        "",
        f"Every message in the room from the start announcement to the close; times are "
        f"{zone.key}.",
        "",
        *(bullets or ["Nobody said anything."]),
        "",
    ])


def render_closed(title: str, path_hint: str) -> str:
    return (f"**{escape_markdown(title)}** is closed. "
            f"The note follows and is saved as `{path_hint}`.")


def mention(user_id: str, name: str) -> str:
    """A Matrix mention as markdown: a link to the person's matrix.to address (a "pill"
    in clients). Only the bot writes these; chat text cannot, its `[` being escaped.
    The id is percent-encoded but for `@` and `:`, so no character of it can end the
    link early."""
    address = "https://matrix.to/#/" + quote(user_id, safe="@:")
    # Inline escapes only: a web link in the name stays text (a link inside a link
    # would cut the pill in two).
    shown = " ".join(clean_text(name).split()) or user_id
    return f"[{_escape_inline(shown)}]({address})"


def roll_call_profile(profile: Profile | None, display_name: str, user_id: str) -> Profile:
    """A saved profile, else the Matrix display name and id."""
    return profile if profile is not None else Profile(display_name, "", user_id)


def attendee_names(attendees: Sequence[Attendee]) -> str:
    return ", ".join(escape_markdown(a.profile.name) for a in attendees) or "nobody yet"
