"""What a rendered note must look like whatever chat text went into it: shared by the
property tests and the hostile-input table.

`Parts` describes a meeting by what people contributed; `record` turns it into the
`MeetingRecord` the renderer reads; `check_note` and `check_html` assert the note's
structure and the posted HTML's safety.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

from chatbot.model import (
    Attendee,
    Entry,
    EntryKind,
    EventId,
    Meeting,
    MeetingRecord,
    Profile,
    RoomId,
    UserId,
)

HELD_AT = datetime(2021, 6, 17, 8, 0, tzinfo=UTC)
BASE_SECTIONS = ["Roll call", "Quick updates", "Reports and celebrations", "Agenda items"]
ALLOWED_TAGS = {
    "a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "li", "ol", "p", "pre", "strong", "ul",
}
SAFE_SCHEMES = ("http://", "https://", "mailto:")
CODE_OF_CONDUCT = "#### By participating in this meeting"


@dataclass(frozen=True)
class Item:
    owner: str
    text: str
    minutes: int | None = None
    notes: tuple[str, ...] = ()
    decisions: tuple[str, ...] = ()
    took_seconds: int = 0
    carried_from: str | None = None


@dataclass(frozen=True)
class Act:
    """An action: who wrote it, and the assignee as typed (None: the writer)."""

    sender_name: str
    assignee: str | None
    text: str


@dataclass(frozen=True)
class Parts:
    title: str = "Team meeting"
    attendees: tuple[Profile, ...] = ()
    updates: tuple[tuple[str, str], ...] = ()  # (display name, text)
    passes: tuple[str, ...] = ()  # display names
    celebrations: tuple[tuple[str, str], ...] = ()
    items: tuple[Item, ...] = ()
    notes: tuple[str, ...] = ()  # general notes, under no item
    decisions: tuple[str, ...] = ()  # decisions under no item
    actions: tuple[Act, ...] = ()

    def sections(self) -> list[str]:
        """The `##` headings the note must have, in order."""
        extra = [
            ("Notes", bool(self.notes)),
            ("Action items", bool(self.actions)),
            ("Decisions", bool(self.decisions) or any(i.decisions for i in self.items)),
        ]
        return BASE_SECTIONS + [name for name, present in extra if present]

    def bullets(self) -> dict[str, tuple[int, int]]:
        """Per section: (top-level bullets, nested bullets) the note must have."""
        # Actions are grouped under the assignee's name (the writer's if none).
        groups = {act.sender_name if act.assignee is None else f"@assignee:{act.assignee}"
                  for act in self.actions}
        counts = {
            "Roll call": (len(self.attendees), 0),
            "Quick updates": (len(self.updates) + len(self.passes), 0),
            "Reports and celebrations": (len(self.celebrations), 0),
            "Agenda items": (len(self.items),
                             sum(len(i.notes) + len(i.decisions) for i in self.items)),
            "Notes": (len(self.notes), 0),
            "Action items": (len(groups), len(self.actions)),
            "Decisions": (len(self.decisions) + sum(len(i.decisions) for i in self.items), 0),
        }
        return {name: counts[name] for name in self.sections()}


def meeting(title: str) -> Meeting:
    return Meeting(id=1, series_id="team", room_id=RoomId("!room:example.org"), title=title,
                   scheduled_start=HELD_AT, started_at=HELD_AT,
                   ended_at=HELD_AT + timedelta(hours=1), closes_at=None)


def record(parts: Parts) -> MeetingRecord:
    """The record the renderer reads. Every person has their own Matrix id, and an
    assignee typed as text is prefixed so it can never be someone's id or handle."""
    entries: list[Entry] = []

    def add(kind: EntryKind, sender: str, name: str, text: str, **extra: object) -> int:
        number = len(entries) + 1
        entries.append(Entry(kind, UserId(sender), name, text, extra.pop("minutes", None),
                             EventId(f"$e{number}"), HELD_AT, id=number, **extra))  # type: ignore[arg-type]
        return number

    for n, (name, text) in enumerate(parts.updates):
        add(EntryKind.UPDATE, f"@updater{n}:example.org", name, text)
    for n, name in enumerate(parts.passes):
        add(EntryKind.PASS, f"@passer{n}:example.org", name, "")
    for n, (name, text) in enumerate(parts.celebrations):
        add(EntryKind.CELEBRATION, f"@celebrant{n}:example.org", name, text)
    for n, item in enumerate(parts.items):
        item_id = add(EntryKind.AGENDA, f"@owner{n}:example.org", item.owner, item.text,
                      minutes=item.minutes, position=n + 1, took_seconds=item.took_seconds,
                      carried_from=item.carried_from)
        for text in item.notes:
            add(EntryKind.NOTE, "@noter:example.org", "Noter", text, item_id=item_id)
        for text in item.decisions:
            add(EntryKind.DECISION, "@noter:example.org", "Noter", text, item_id=item_id)
    for text in parts.notes:
        add(EntryKind.NOTE, "@noter:example.org", "Noter", text)
    for text in parts.decisions:
        add(EntryKind.DECISION, "@noter:example.org", "Noter", text)
    for n, act in enumerate(parts.actions):
        add(EntryKind.ACTION, f"@actor{n}:example.org", act.sender_name, act.text,
            assignee=None if act.assignee is None else f"@assignee:{act.assignee}")
    attendees = tuple(Attendee(UserId(f"@attendee{n}:example.org"), profile)
                      for n, profile in enumerate(parts.attendees))
    return MeetingRecord(meeting(parts.title), attendees, tuple(entries))


# --- the markdown ------------------------------------------------------------------------


def markdown_sections(note: str) -> dict[str, list[str]]:
    """The note's lines under each `## ` heading. Lines are split on "\\n" only, as
    markdown does: U+2028 and friends are not line breaks to it."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in note.split("\n"):
        if line.startswith("## "):
            current = sections.setdefault(line[3:], [])
        elif current is not None:
            current.append(line)
    return sections


def check_note(note: str, parts: Parts) -> None:
    """The note's headings and bullets are exactly those the meeting's contributions call for."""
    lines = note.split("\n")
    expected = parts.sections()
    assert [line[3:] for line in lines if line.startswith("## ")] == expected
    other_headings = [line for line in lines if line.startswith("#") and not line.startswith("## ")]
    assert len(other_headings) == 2, other_headings
    assert other_headings[0] == lines[0] and lines[0].startswith("# ")
    assert other_headings[1].startswith(CODE_OF_CONDUCT)
    sections = markdown_sections(note)
    for name, (top, nested) in parts.bullets().items():
        body = sections[name]
        if top == 0:
            assert [line for line in body if line] == ["-"], (name, body)
            continue
        assert sum(line.startswith("- ") for line in body) == top, (name, body)
        assert sum(line.startswith("    - ") for line in body) == nested, (name, body)


# --- the HTML ----------------------------------------------------------------------------


class HtmlShape(HTMLParser):
    """Tags, attributes, headings and list items of an HTML fragment, and its visible text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter[str] = Counter()
        self.attributes: list[tuple[str, str, str | None]] = []
        self.headings: list[tuple[str, str]] = []
        self.items: dict[str, Counter[int]] = {}  # per h2 section: li count by list depth
        self.text: list[str] = []
        self.links: list[tuple[str | None, str]] = []  # (href, the text it shows)
        self._heading: tuple[str, list[str]] | None = None
        self._link: tuple[str | None, list[str]] | None = None
        self._section = ""
        self._depth = 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attributes += [(tag, name, value) for name, value in attrs]
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._heading = (tag, [])
        elif tag in ("ul", "ol"):
            self._depth += 1
        elif tag == "li":
            self.items.setdefault(self._section, Counter())[self._depth] += 1
        elif tag == "br":
            self.text.append("\n")
        elif tag == "a":
            self._link = (dict(attrs).get("href"), [])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("ul", "ol"):
            self._depth -= 1
        elif tag == "a" and self._link is not None:
            self.links.append((self._link[0], "".join(self._link[1])))
            self._link = None
        elif self._heading is not None and tag == self._heading[0]:
            name, text = self._heading[0], "".join(self._heading[1])
            self.headings.append((name, text))
            if name == "h2":
                self._section = text
            self._heading = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._heading is not None:
            self._heading[1].append(data)
        if self._link is not None:
            self._link[1].append(data)

    @property
    def visible(self) -> str:
        return "".join(self.text)


def check_html(html: str) -> HtmlShape:
    """Only allow-listed tags; attributes only `href` (to the web or mail) and `rel` on `a`."""
    shape = HtmlShape(html)
    assert set(shape.tags) <= ALLOWED_TAGS, set(shape.tags) - ALLOWED_TAGS
    for tag, name, value in shape.attributes:
        assert tag == "a" and name in ("href", "rel"), f"<{tag} {name}={value!r}>"
        if name == "href":
            assert value is not None and value.lower().startswith(SAFE_SCHEMES), value
        else:
            assert value == "noopener noreferrer", value
    return shape


def check_note_html(html: str, parts: Parts) -> HtmlShape:
    """The posted HTML has the note's headings, and the right number of list items under each."""
    shape = check_html(html)
    assert [text for tag, text in shape.headings if tag == "h2"] == parts.sections()
    assert shape.tags["h1"] == 1 and shape.tags["h4"] == 1
    assert shape.tags["h3"] == shape.tags["h5"] == shape.tags["h6"] == 0
    for tag in ("pre", "blockquote", "ol"):
        assert shape.tags[tag] == 0, f"chat text made a <{tag}>"
    for name, (top, nested) in parts.bullets().items():
        items = shape.items.get(name, Counter())
        assert (items[1], items[2]) == (top, nested), (name, dict(items))
        assert set(items) <= {1, 2}, (name, dict(items))
    return shape
