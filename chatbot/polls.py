"""Votes as Matrix polls (MSC3381): the events' shapes, and counting the answers.

Pure: no store, no network, no clock. The bot posts the unstable
`org.matrix.msc3381.poll.*` form that Element and Element X render today, and reads
answers in that form and in the stable `m.poll.response` form (Matrix 1.7).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chatbot.model import EventId, RoomId, UserId

# Outbox job kinds: the poll's start and end events, in the room's lane of messages.
POLL_START = "poll_start"
POLL_END = "poll_end"

START_TYPE = "org.matrix.msc3381.poll.start"
END_TYPE = "org.matrix.msc3381.poll.end"
TEXT_BLOCK = "org.matrix.msc1767.text"
DISCLOSED = "org.matrix.msc3381.poll.disclosed"
UNSTABLE_RESPONSE = "org.matrix.msc3381.poll.response"
STABLE_RESPONSE = "m.poll.response"
RESPONSE_TYPES = (UNSTABLE_RESPONSE, STABLE_RESPONSE)
# A moderator may end the bot's poll from their client ("End poll" in Element).
END_TYPES = (END_TYPE, "m.poll.end")

# MSC3381 truncates a poll to 20 answers; the lengths keep a poll readable in a client
# and its result on one line of the note.
MAX_ANSWERS = 20
MAX_QUESTION = 300
MAX_ANSWER = 100


@dataclass(frozen=True, slots=True)
class Answer:
    """One choice of a poll: `id` is what a response names, `text` what people read."""

    id: str
    text: str


YES_NO_ABSTAIN = (Answer("yes", "yes"), Answer("no", "no"), Answer("abstain", "abstain"))
# Text votes for clients without polls: `!vote +1`, `-1`, `0` on a yes / no / abstain poll.
TEXT_VOTES = {"+1": "yes", "-1": "no", "0": "abstain"}


def option_answers(texts: Sequence[str]) -> tuple[Answer, ...]:
    """Answers for the options as given, with ids a response can name."""
    return tuple(Answer(f"option-{number}", text) for number, text in enumerate(texts, 1))


def is_yes_no(answers: Sequence[Answer]) -> bool:
    return tuple(answers) == YES_NO_ABSTAIN


@dataclass(frozen=True, slots=True)
class Poll:
    """A vote asked in a meeting; `start_event_id` is known once its start was sent."""

    id: int
    meeting_id: int
    room_id: RoomId
    asker: UserId
    question: str
    answers: tuple[Answer, ...]
    start_event_id: EventId | None
    opened_at: datetime
    closed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Ballot:
    """One response: a poll event or a text vote. `answer` is the first selection
    (None: none, or an empty one); `order` breaks ties between equal send times."""

    sender: UserId
    answer: str | None
    sent_at: datetime
    order: int = 0


@dataclass(frozen=True, slots=True)
class Tally:
    counts: tuple[tuple[Answer, int], ...]
    voters: int


def text_vote_hint(answers: Sequence[Answer], prefix: str) -> str:
    if is_yes_no(answers):
        return f"`{prefix}vote +1` (yes), `{prefix}vote -1` (no) or `{prefix}vote 0` (abstain)"
    return f"`{prefix}vote N` with the option's number (1 to {len(answers)})"


def start_content(question: str, answers: Sequence[Answer], prefix: str) -> dict[str, Any]:
    """The poll start event's content: a disclosed poll, one answer per person, and a
    numbered text fallback (with how to vote by text) for clients without polls."""
    hint = f"(No poll in your client? Vote with {text_vote_hint(answers, prefix)}.)"
    fallback = "\n".join([question, *(f"{n}. {a.text}" for n, a in enumerate(answers, 1)), hint])
    return {
        START_TYPE: {
            "question": {TEXT_BLOCK: question},
            "kind": DISCLOSED,
            "max_selections": 1,
            "answers": [{"id": answer.id, TEXT_BLOCK: answer.text} for answer in answers],
        },
        TEXT_BLOCK: fallback,
        # Clients that know neither polls nor extensible events read `body`.
        "body": fallback,
    }


def end_content(question: str, tally: Tally) -> dict[str, Any]:
    """The poll end event's content but its reference to the start (`refer_to`): the
    result as text."""
    text = f"The poll has closed. {result_line(question, tally)}"
    return {
        END_TYPE: {},
        TEXT_BLOCK: text,
        "body": text,
    }


def refer_to(content: dict[str, Any], start_event_id: str) -> dict[str, Any]:
    """The content with a reference to the poll's start, as an end event needs."""
    return content | {"m.relates_to": {"rel_type": "m.reference", "event_id": start_event_id}}


def response_selection(event_type: str, content: dict[str, Any]) -> str | None:
    """The first selection of a response event in either form; None for an empty or
    malformed one. Truncated to one selection: the bot's polls allow one answer."""
    if event_type == UNSTABLE_RESPONSE:
        block = content.get(UNSTABLE_RESPONSE)
        selections = block.get("answers") if isinstance(block, dict) else None
    else:
        selections = content.get("m.selections")
    if not isinstance(selections, list) or not selections:
        return None
    first = selections[0]
    return first if isinstance(first, str) else ""  # "" is no answer's id: spoiled


def count(answers: Sequence[Answer], ballots: Iterable[Ballot], closed_at: datetime | None,
          members: Collection[UserId] | None = None) -> Tally:
    """Count by MSC3381's rules: each person's latest response (by send time) sent no
    later than the close counts, even if that one is empty or names no answer (a
    spoiled vote). `members`, if given, are the people whose votes count at all."""
    latest: dict[UserId, Ballot] = {}
    for ballot in ballots:
        if closed_at is not None and ballot.sent_at > closed_at:
            continue
        if members is not None and ballot.sender not in members:
            continue
        held = latest.get(ballot.sender)
        if held is None or (ballot.sent_at, ballot.order) >= (held.sent_at, held.order):
            latest[ballot.sender] = ballot
    by_id = {answer.id: 0 for answer in answers}
    for ballot in latest.values():
        if ballot.answer in by_id:
            by_id[ballot.answer] += 1
    return Tally(tuple((answer, by_id[answer.id]) for answer in answers), sum(by_id.values()))


def result_line(question: str, tally: Tally) -> str:
    """`Question? — Option A 5, Option B 2, abstain 1 (8 voters)`, as plain text."""
    counts = ", ".join(f"{answer.text} {number}" for answer, number in tally.counts)
    voters = "1 voter" if tally.voters == 1 else f"{tally.voters} voters"
    return f"{question} — {counts} ({voters})"
