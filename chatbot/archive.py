"""The web archive's logic: who may read a meeting, what its pages show, how notes are
found. Pure: no aiohttp, no SQL; the web edge fetches the rows and renders these views.

- Access: a private meeting's pages need its capability token (`!archive`); a retired
  token (`!archive reset`) is told apart from an unknown one only by its digest.
- The search index holds each note by section, as plain text.
- The attendance picture and the durations chart are inline SVG, readable without colour.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import html
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

# jinja2 and markupsafe are imported when a page is first made: the running bot needs
# this module's note sections and paths for every meeting, its pages only with `http:`.
if TYPE_CHECKING:
    from jinja2 import Environment
    from markupsafe import Markup

from chatbot.config import MeetingConfig
from chatbot.limits import Bucket, refill, spend
from chatbot.model import Meeting, MeetingRecord
from chatbot.render import format_date, format_time, markdown_to_html

# How many sittings the attendance picture and the durations chart show.
PICTURE_SITTINGS = 12
# The search snippet's hit markers: private-use characters, removed from indexed text,
# so only FTS5 can put them there; they become <mark> after escaping.
MARKS = ("\ue000", "\ue001")
_SITTING_NAME = re.compile(r"\d{4}-\d{2}-\d{2}(?:-\d{1,4})?")


class Access(enum.Enum):
    GRANTED = "granted"
    REVOKED = "revoked"  # a token that was valid until `!archive reset`: 403
    UNKNOWN = "unknown"  # no token, or one never issued: 404, as for no such meeting


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_token(presented: str | None, current: str | None,
                retired_digests: Iterable[str]) -> Access:
    """Whether a presented token opens a private meeting; compared in constant time."""
    if not presented:
        return Access.UNKNOWN
    if current is not None and hmac.compare_digest(presented.encode("utf-8", "surrogatepass"),
                                                   current.encode("utf-8")):
        return Access.GRANTED
    digest = token_digest(presented)
    revoked = False
    for retired in retired_digests:  # every one compared: the time says nothing of which
        revoked |= hmac.compare_digest(digest, retired)
    return Access.REVOKED if revoked else Access.UNKNOWN


def is_sitting_name(name: str) -> bool:
    """`2026-06-18` or `2026-06-18-2`: the stem of a note file, as a page name."""
    return _SITTING_NAME.fullmatch(name) is not None


def log_path_of(note_path: PurePosixPath) -> PurePosixPath:
    """The sitting's full log (`log: true`), saved beside its note: `<date>.log.md`."""
    return note_path.with_name(f"{note_path.stem}.log.md")


# --- the search index ------------------------------------------------------------------

_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~&])")


def _plain(markdown: str) -> str:
    text = html.unescape(_ESCAPED.sub(r"\1", markdown))
    text = text.replace("**", "")
    return "".join(ch for ch in text if ch not in MARKS).strip()


def note_sections(note: str) -> list[tuple[str, str]]:
    """A note as (section heading, plain text) pairs; the part before the first `##`
    is named by the note's title."""
    sections: list[tuple[str, str]] = []
    heading = ""
    lines: list[str] = []
    for line in note.split("\n"):
        if line.startswith("# ") and not heading and not sections:
            heading = _plain(line[2:])
            continue
        if line.startswith("## "):
            if any(part.strip() for part in lines):
                sections.append((heading, _plain("\n".join(lines))))
            heading, lines = _plain(line[3:]), []
            continue
        lines.append(line)
    if any(part.strip() for part in lines):
        sections.append((heading, _plain("\n".join(lines))))
    return sections


def highlight(snippet: str) -> Markup:
    """A search snippet as safe HTML: the text escaped, FTS5's hits in <mark>."""
    from markupsafe import Markup, escape

    return Markup(str(escape(snippet)).replace(MARKS[0], "<mark>").replace(MARKS[1], "</mark>"))


def search_error(error: Exception) -> str:
    """What to tell a reader whose query FTS5 cannot parse (never the raw exception)."""
    return ("That search could not be understood. Use words, \"a phrase in quotes\", "
            "or a prefix followed by * (like releas*); quotes must be paired.")


# --- the views ---------------------------------------------------------------------------


def note_stems(series: MeetingConfig, meetings: Sequence[Meeting]) -> dict[int, str]:
    """Each sitting's name, as its note file, GitHub issue, HackMD page and git archive
    know it: the date in the meeting's zone, `-2` and on for later sittings on the same
    day. `meetings` in the order they were named (`Store.sittings_of_series`): a
    scheduled sitting whose issue or page was queued ahead keeps its date even when
    another sitting starts before it that day (that one is `-2`)."""
    stems: dict[int, str] = {}
    per_day: dict[str, int] = {}
    for meeting in meetings:
        day = meeting.held_at.astimezone(series.timezone).date().isoformat()
        per_day[day] = per_day.get(day, 0) + 1
        stems[meeting.id] = day if per_day[day] == 1 else f"{day}-{per_day[day]}"
    return stems


@dataclass(frozen=True, slots=True)
class SittingRow:
    name: str
    date: str
    title: str
    present: int
    updates: int
    reached: int
    carried: int
    duration: str
    is_open: bool


def _minutes(span: timedelta) -> int:
    return max(0, round(span.total_seconds() / 60))


def duration_of(meeting: Meeting, now: datetime) -> timedelta | None:
    if meeting.started_at is None:
        return None
    return (meeting.ended_at or now) - meeting.started_at


def sitting_rows(series: MeetingConfig, meetings: Sequence[Meeting], stems: dict[int, str],
                 counts: dict[int, tuple[int, int, int, int]], now: datetime) -> list[SittingRow]:
    """The series page's table, newest first."""
    rows = []
    for meeting in reversed(meetings):
        present, updates, reached, open_items = counts.get(meeting.id, (0, 0, 0, 0))
        span = duration_of(meeting, now)
        rows.append(SittingRow(
            name=stems[meeting.id],
            date=format_date(meeting.held_at.astimezone(series.timezone)),
            title=meeting.title, present=present, updates=updates, reached=reached,
            carried=0 if meeting.is_open else open_items,
            duration=f"{_minutes(span)} min" if span is not None else "",
            is_open=meeting.is_open,
        ))
    return rows


class Mark(enum.Enum):
    PRESENT = "present"
    PASSED = "passed"
    ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class AttendanceGrid:
    """People (rows) by sittings (columns, oldest first)."""

    sittings: tuple[str, ...]
    people: tuple[tuple[str, tuple[Mark, ...]], ...]


def attendance_grid(sittings: Sequence[tuple[int, str]],
                    rows: Iterable[tuple[int, str, str, bool]]) -> AttendanceGrid:
    """`sittings`: (meeting id, label), oldest first; `rows` from `Store.attendance`.
    Passing on an update counts as passed, even for someone on the roll call."""
    column = {meeting_id: index for index, (meeting_id, _) in enumerate(sittings)}
    names: dict[str, str] = {}
    marks: dict[str, list[Mark]] = {}
    for meeting_id, person, name, passed in rows:
        if meeting_id not in column:
            continue
        names.setdefault(person, name)
        line = marks.setdefault(person, [Mark.ABSENT] * len(sittings))
        index = column[meeting_id]
        if passed or line[index] is Mark.ABSENT:
            line[index] = Mark.PASSED if passed else Mark.PRESENT
    people = sorted(marks, key=lambda person: (names[person].casefold(), person))
    return AttendanceGrid(tuple(label for _, label in sittings),
                          tuple((names[p], tuple(marks[p])) for p in people))


_CELL, _ROW, _NAMES, _HEAD = 44, 26, 170, 56


def attendance_svg(grid: AttendanceGrid) -> Markup:
    """The grid as inline SVG: a filled circle for present, a hollow triangle for passed,
    a short dash for absent; each mark titled in words for screen readers."""
    from markupsafe import Markup, escape

    width = _NAMES + _CELL * max(1, len(grid.sittings))
    height = _HEAD + _ROW * max(1, len(grid.people))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="attendance" role="img" '
             f'aria-labelledby="attendance-title" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}">',
             '<title id="attendance-title">Attendance at the last '
             f'{len(grid.sittings)} sittings</title>']
    for index, label in enumerate(grid.sittings):
        x = _NAMES + _CELL * index + _CELL // 2
        parts.append(f'<text class="day" x="{x}" y="{_HEAD - 8}" '
                     f'transform="rotate(-45 {x} {_HEAD - 8})">{escape(label[5:10])}</text>')
    for row, (name, marks) in enumerate(grid.people):
        y = _HEAD + _ROW * row + _ROW // 2
        parts.append(f'<text class="name" x="{_NAMES - 8}" y="{y + 5}" '
                     f'text-anchor="end">{escape(name[:24])}</text>')
        for index, mark in enumerate(marks):
            x = _NAMES + _CELL * index + _CELL // 2
            title = f"<title>{escape(name)}, {escape(grid.sittings[index])}: {mark.value}</title>"
            if mark is Mark.PRESENT:
                shape = f'<circle cx="{x}" cy="{y}" r="7"/>'
            elif mark is Mark.PASSED:
                shape = (f'<path d="M{x} {y - 8} L{x + 8} {y + 6} L{x - 8} {y + 6} Z" '
                         'fill="none" stroke-width="2"/>')
            else:
                shape = f'<path d="M{x - 5} {y} L{x + 5} {y}" stroke-width="2"/>'
            parts.append(f'<g class="mark {mark.value}" data-mark="{mark.value}">'
                         f'{title}{shape}</g>')
    parts.append("</svg>")
    return Markup("".join(parts))


def durations_svg(sittings: Sequence[tuple[str, timedelta]], slot: timedelta) -> Markup:
    """Each sitting's length as a bar against its slot (the dashed line), labelled in
    minutes, so it reads without colour."""
    from markupsafe import Markup, escape

    longest = max([slot, *(span for _, span in sittings)])
    scale = 240 / max(1.0, longest.total_seconds())
    left, row = 90, 22
    width, height = left + 300, 20 + row * max(1, len(sittings))
    slot_x = left + slot.total_seconds() * scale
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="durations" role="img" '
             f'aria-labelledby="durations-title" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}">',
             f'<title id="durations-title">How long the last {len(sittings)} sittings took '
             f'against the {_minutes(slot)}-minute slot</title>']
    for index, (label, span) in enumerate(sittings):
        y = 10 + row * index
        bar = max(1.0, span.total_seconds() * scale)
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">'
                     f'{escape(label[:10])}</text>'
                     f'<rect class="bar" x="{left}" y="{y + 3}" width="{bar:.1f}" height="14">'
                     f'<title>{escape(label)}: {_minutes(span)} minutes</title></rect>'
                     f'<text x="{left + bar + 4:.1f}" y="{y + 14}">{_minutes(span)} min</text>')
    parts.append(f'<path class="slot" d="M{slot_x:.1f} 4 L{slot_x:.1f} {height - 2}" '
                 f'stroke-dasharray="4 3" stroke-width="2"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True, slots=True)
class NowView:
    """The item under discussion in an open sitting, with its time box."""

    number: int
    of: int
    text: str
    owner: str
    minutes: int | None
    until: str | None
    overrun: bool


def now_view(record: MeetingRecord, series: MeetingConfig, now: datetime) -> NowView | None:
    item = record.current_item
    if item is None:
        return None
    agenda = record.agenda
    until = None
    overrun = False
    if item.minutes is not None and item.item_started_at is not None:
        remaining = timedelta(minutes=item.minutes) - timedelta(seconds=item.took_seconds)
        end = item.item_started_at + remaining
        until = format_time(end, series.timezone)
        overrun = now > end
    return NowView(agenda.index(item) + 1, len(agenda), item.text, item.sender_name,
                   item.minutes, until, overrun)


_HEADING = re.compile(r"<(/?)h([1-6])>")


def _headings_in_order(html: str) -> str:
    """No heading level skipped (a page's outline): the note's `####` code of conduct
    line follows its `#` title, which a chat client does not mind but a screen reader does."""
    level = 0
    opened: list[int] = []

    def relevel(match: re.Match[str]) -> str:
        nonlocal level
        if match[1]:
            return f"</h{opened.pop() if opened else match[2]}>"
        level = min(int(match[2]), level + 1)
        opened.append(level)
        return f"<h{level}>"

    return _HEADING.sub(relevel, html)


def note_html(note: str) -> Markup:
    """A note as the room shows it: markdown through the same allow-list sanitizer
    (headings re-levelled so none is skipped)."""
    from markupsafe import Markup

    return Markup(_headings_in_order(markdown_to_html(note)))


def next_occurrence(start: datetime, series: MeetingConfig) -> dict[str, str]:
    return {"text": format_time(start, series.timezone), "iso": start.isoformat()}


# --- the templates -------------------------------------------------------------------------

@functools.cache
def _pages() -> Environment:
    """The web templates' environment, made on first use."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("chatbot", "templates/web"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )


def render_page(name: str, **context: Any) -> str:
    """One of the web templates (autoescaped: any text from chat shows as text)."""
    return _pages().get_template(name).render(**context)


class FailureLimit:
    """Wrong tokens allowed per client address: `capacity` per `per`, refilling
    steadily; an address that spent them is refused before any comparison."""

    def __init__(self, capacity: int, per: timedelta) -> None:
        self.capacity, self.per = capacity, per
        self._buckets: dict[str, Bucket] = {}

    def blocked(self, address: str, now: datetime) -> bool:
        bucket = self._buckets.get(address)
        return bucket is not None and refill(bucket, now, self.capacity, self.per).tokens < 1

    def failed(self, address: str, now: datetime) -> None:
        if len(self._buckets) > 10_000:  # bounded memory: forget the ones full again
            self._buckets = {key: bucket for key, bucket in self._buckets.items()
                             if now - bucket.at < self.per}
        self._buckets[address], _ = spend(self._buckets.get(address), now,
                                          self.capacity, self.per)
