"""What the bot makes of a homeserver in trouble: which answers are worth a retry, and
that a fault is waited out, never taken for an answer (a refusal, power level 0).

The Matrix edge runs on a real nio client whose requests are replaced by canned answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from nio import (
    ErrorResponse,
    JoinResponse,
    KeysUploadError,
    RoomForgetError,
    RoomForgetResponse,
    RoomGetStateError,
    RoomGetStateResponse,
    RoomLeaveError,
    RoomLeaveResponse,
    RoomMessagesResponse,
)

from chatbot import retry
from chatbot.bot import DeliveryError, HomeserverUnavailable, IncomingMessage, MeetingBot
from chatbot.config import parse_config
from chatbot.matrix import MatrixEdge, encryption, exchange_keys, intake, rooms, sent_since
from chatbot.meetings import Rooms
from chatbot.model import EventId, RoomId, UserId
from chatbot.retry import call_homeserver, is_transient
from chatbot.store import OutboxItem, Store

ROOM = RoomId("!room:example.org")
BOT = "@bot:example.org"
CHAIR, MEMBER = UserId("@chair:example.org"), UserId("@member:example.org")
NOW = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)


def answered(response: Any, status: int) -> Any:
    """`response` as nio returns it after an HTTP answer with `status`."""
    response.transport_response = SimpleNamespace(status=status)
    return response


@pytest.mark.parametrize(("response", "transient"), [
    pytest.param(answered(ErrorResponse("unknown error"), 502), True,
                 id="a proxy's 502 page (not Matrix JSON)"),
    pytest.param(ErrorResponse("unknown error"), True, id="an answer that is not Matrix JSON"),
    pytest.param(answered(ErrorResponse("boom", "M_UNKNOWN"), 500), True, id="500 M_UNKNOWN"),
    pytest.param(answered(ErrorResponse("slow down", "M_LIMIT_EXCEEDED"), 429), True,
                 id="429 rate limited"),
    pytest.param(answered(KeysUploadError("unknown error"), 502), True,
                 id="a key upload answered 502 is not a refusal"),
    pytest.param(answered(KeysUploadError("One time key exists", "M_UNKNOWN"), 400), False,
                 id="a key upload refused"),
    pytest.param(answered(ErrorResponse("not in room", "M_FORBIDDEN"), 403), False,
                 id="403 M_FORBIDDEN"),
    pytest.param(answered(ErrorResponse("no such room", "M_NOT_FOUND"), 404), False,
                 id="404 M_NOT_FOUND"),
    pytest.param(answered(RoomLeaveResponse(), 200), False, id="a success"),
])
def test_which_answers_are_transient(response: Any, transient: bool) -> None:
    assert is_transient(response) is transient


def event(ts: Any, event_id: str = "$e") -> dict[str, Any]:
    return {"type": "m.room.message", "event_id": event_id, "origin_server_ts": ts}


STARTED = datetime(2026, 6, 18, 8, 0, tzinfo=UTC)
MS = int(STARTED.timestamp() * 1000)


@pytest.mark.parametrize(("timestamps", "commands"), [
    pytest.param([MS - 1], [], id="sent just before the first start: history"),
    pytest.param([MS], [MS], id="sent at the first start: a command"),
    pytest.param([MS - 5, MS + 5, MS + 6], [MS + 5, MS + 6], id="the boundary in the middle"),
    pytest.param([None, "soon", True], [], id="no usable time: history"),
    pytest.param([], [], id="nothing"),
])
def test_on_the_first_sync_only_what_came_after_the_first_start_is_for_the_bot(
    timestamps: list[Any], commands: list[Any],
) -> None:
    events = [event(ts, f"${n}") for n, ts in enumerate(timestamps)]
    assert [e["origin_server_ts"] for e in sent_since(events, STARTED)] == commands


async def test_a_call_is_retried_through_faults_and_the_answer_returned() -> None:
    answers: list[Any] = [aiohttp.ServerDisconnectedError(), TimeoutError(),
                          answered(ErrorResponse("unknown error"), 502), "the answer"]

    async def call() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert await call_homeserver("testing", call) == "the answer"


async def test_a_call_out_of_patience_returns_the_last_transient_answer() -> None:
    bad = answered(ErrorResponse("unknown error"), 502)

    async def call() -> Any:
        return bad

    assert await call_homeserver("testing", call, give_up_after=0.01) is bad


# --- the Matrix edge ---------------------------------------------------------------


def config(tmp_path: Path) -> Any:
    return parse_config({
        "matrix": {"homeserver": "https://m.example.org", "user_id": BOT, "password": "x"},
        "data_dir": str(tmp_path / "data"),
        "meetings": [{"id": "team", "title": "Team", "room": ROOM, "timezone": "UTC",
                      "start": (NOW + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M"),
                      "rrule": "FREQ=WEEKLY", "chairs": [CHAIR]}],
    })


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "backoff_delay", lambda failures, **_: 0.001)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "bot.db")
    yield opened
    await opened.close()


@pytest.fixture
async def edge(tmp_path: Path, store: Store,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MatrixEdge]:
    made = MatrixEdge(config(tmp_path), store, clock=lambda: NOW)
    made.client.restore_login(BOT, "DEVICE", "token")
    # Patience and backoff in milliseconds, so that giving up is quick to test.
    monkeypatch.setattr(rooms, "CHAIR_CHECK_PATIENCE", 0.01)
    monkeypatch.setattr(rooms, "JOIN_PATIENCE", 0.01)
    monkeypatch.setattr(encryption, "KEYS_PATIENCE", 0.01)
    yield made
    await made.close()


def replies(*answers: Any) -> Callable[..., Any]:
    """A stand-in for a nio request: each call gets the next answer (or raises it)."""
    queue = list(answers)

    async def request(*args: Any, **kwargs: Any) -> Any:
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return request


def power_levels(**users: int) -> RoomGetStateResponse:
    return RoomGetStateResponse(events=[
        {"type": "m.room.create", "state_key": "", "sender": CHAIR,
         "content": {"room_version": "10"}},
        {"type": "m.room.power_levels", "state_key": "", "sender": CHAIR,
         "content": {"users": users}},
    ], room_id=ROOM)


async def test_a_power_level_lookup_that_keeps_failing_is_not_level_0(
    edge: MatrixEdge, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for fault in (answered(RoomGetStateError("unknown error", room_id=ROOM), 502),
                  aiohttp.ClientOSError(104, "Connection reset by peer")):
        monkeypatch.setattr(edge.client, "room_get_state", replies(fault))
        with pytest.raises(HomeserverUnavailable):
            await edge.power_level(ROOM, CHAIR)
    monkeypatch.setattr(edge.client, "room_get_state", replies(power_levels(**{CHAIR: 50})))
    assert await edge.power_level(ROOM, CHAIR) == 50


async def test_a_power_level_lookup_refused_counts_as_no_power(
    edge: MatrixEdge, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(edge.client, "room_get_state", replies(answered(
        RoomGetStateError("You are not in the room", "M_FORBIDDEN", room_id=ROOM), 403)))
    assert await edge.power_level(ROOM, CHAIR) == 0


@pytest.mark.parametrize(("leave", "forget"), [
    pytest.param(RoomLeaveResponse(), RoomForgetResponse(room_id=ROOM), id="in the room"),
    pytest.param(answered(RoomLeaveError("not in room", "M_FORBIDDEN"), 403),
                 answered(RoomForgetError("not in room", "M_NOT_FOUND", room_id=ROOM), 404),
                 id="left before"),
    pytest.param(RoomLeaveResponse(), aiohttp.ServerDisconnectedError(),
                 id="forgetting fails: only a tidy-up"),
])
async def test_leaving_a_room_succeeds_also_when_the_bot_is_not_in_it(
    edge: MatrixEdge, monkeypatch: pytest.MonkeyPatch, leave: Any, forget: Any,
) -> None:
    edge.rooms.direct_rooms.add(ROOM)
    monkeypatch.setattr(edge.client, "room_leave", replies(leave))
    monkeypatch.setattr(edge.client, "room_forget", replies(forget))
    await edge.leave(ROOM)
    assert ROOM not in edge.rooms.direct_rooms


@pytest.mark.parametrize(("fault", "permanent"), [
    pytest.param(answered(RoomLeaveError("unknown error"), 502), False, id="502"),
    pytest.param(aiohttp.ClientOSError(104, "Connection reset by peer"), False, id="reset"),
    pytest.param(answered(RoomLeaveError("bad", "M_UNKNOWN"), 400), True, id="400"),
])
async def test_a_leave_that_fails_is_a_delivery_error(
    edge: MatrixEdge, monkeypatch: pytest.MonkeyPatch, fault: Any, permanent: bool,
) -> None:
    monkeypatch.setattr(edge.client, "room_leave", replies(fault))
    with pytest.raises(DeliveryError) as raised:
        await edge.leave(ROOM)
    assert raised.value.permanent is permanent


async def test_a_join_that_keeps_failing_is_owed_and_made_after_a_later_sync(
    edge: MatrixEdge, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(edge.client, "join", replies(aiohttp.ServerDisconnectedError()))
    assert not await edge.rooms.join(ROOM, "a direct chat", direct=True)
    assert ROOM in edge.rooms.joins_owed
    monkeypatch.setattr(edge.rooms, "clock", lambda: NOW + timedelta(minutes=10))
    monkeypatch.setattr(edge.client, "join", replies(JoinResponse(room_id=ROOM)))
    await edge.rooms.join_owed()
    assert not edge.rooms.joins_owed
    assert ROOM in edge.rooms.direct_rooms


async def test_a_refused_join_is_not_retried(
    edge: MatrixEdge, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(edge.client, "join", replies(
        answered(ErrorResponse("not invited", "M_FORBIDDEN"), 403)))
    assert not await edge.rooms.join(ROOM, "a configured room")
    assert not edge.rooms.joins_owed


async def test_a_key_upload_answered_502_is_not_a_refusal() -> None:
    client = SimpleNamespace(
        olm=object(), should_upload_keys=True, should_query_keys=False,
        should_claim_keys=False,
        keys_upload=replies(answered(KeysUploadError("unknown error"), 502)),
        send_to_device_messages=replies([]))
    assert await exchange_keys(client, patience=0.01) is None  # type: ignore[arg-type]
    refusal = answered(KeysUploadError("One time key exists", "M_UNKNOWN"), 400)
    client.keys_upload = replies(refusal)
    assert await exchange_keys(client, patience=0.01) is refusal  # type: ignore[arg-type]


# --- the core and the intake -----------------------------------------------------------


class FlakyTransport:
    """Power levels from a homeserver that is away until `back` is set."""

    def __init__(self) -> None:
        self.back = False
        self.asked = 0

    async def deliver(self, item: OutboxItem) -> str:
        return "$sent"

    async def power_level(self, room_id: RoomId, user_id: UserId) -> float:
        self.asked += 1
        if not self.back:
            raise HomeserverUnavailable("cannot read power levels")
        return 50

    async def leave(self, room_id: RoomId) -> None:
        return None


async def test_a_chair_check_that_cannot_reach_the_homeserver_leaves_the_command_unclaimed(
    tmp_path: Path, store: Store,
) -> None:
    transport = FlakyTransport()
    bot = MeetingBot(Rooms(config(tmp_path), {"team": ROOM}), store, tmp_path / "notes",
                     transport, clock=lambda: NOW)
    message = IncomingMessage(ROOM, EventId("$end"), MEMBER, "member", "!startmeeting")
    with pytest.raises(HomeserverUnavailable):
        await bot.handle(message)
    assert await store.pending_outbox() == [], "no apology, no refusal"
    assert await store.sender_of(message.event_id) is None, "not claimed"
    transport.back = True
    await bot.handle(message)
    await bot.handle(message)  # a replay
    texts = [item.payload.get("text", "") for item in await store.pending_outbox(limit=100)]
    assert not any("Only chairs" in text or "Sorry" in text for text in texts)
    assert await store.sender_of(message.event_id) == MEMBER
    assert await store.open_meeting_in_room(ROOM) is not None


async def test_the_intake_hands_an_event_over_again_until_the_core_takes_it(
    edge: MatrixEdge, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(intake, "backoff_delay", lambda failures: 0.001)
    handled: list[str] = []

    class Listener:
        async def handle(self, incoming: Any) -> None:
            handled.append(incoming.event_id)
            if len(handled) < 3:
                raise HomeserverUnavailable("away")

    message = IncomingMessage(ROOM, EventId("$cmd"), CHAIR, "chair", "!endmeeting")
    await edge.intake._until_taken(Listener(), message)  # type: ignore[arg-type]
    assert handled == ["$cmd"] * 3



def timeline_event(ts: int, body: str) -> SimpleNamespace:
    return SimpleNamespace(source={"type": "m.room.message", "event_id": f"${body}",
                                   "sender": MEMBER, "origin_server_ts": ts,
                                   "content": {"msgtype": "m.text", "body": body}})


async def test_the_first_sync_fetches_back_to_the_first_start_when_its_one_event_is_new(
    edge: MatrixEdge, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first sync brings one event per room: if even that one is new, the ones
    before it are fetched, and those sent since the first start are commands."""
    pages = [RoomMessagesResponse(ROOM, [timeline_event(MS + 2, "!here"),
                                         timeline_event(MS + 1, "!update one"),
                                         timeline_event(MS - 1, "!update history")],
                                  "p1", "p2")]
    monkeypatch.setattr(edge.client, "room_messages", replies(*pages))
    timeline = SimpleNamespace(events=[timeline_event(MS + 3, "!update two")], limited=True,
                               prev_batch="p1")
    events = await edge.intake._since_first_start(ROOM, timeline, STARTED)
    assert [e["content"]["body"] for e in events] == ["!update one", "!here", "!update two"]


async def test_the_first_sync_fetches_nothing_when_its_one_event_is_history(
    edge: MatrixEdge, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(edge.client, "room_messages", replies(AssertionError("not asked")))
    timeline = SimpleNamespace(events=[timeline_event(MS - 1, "!here")], limited=True,
                               prev_batch="p1")
    assert await edge.intake._since_first_start(ROOM, timeline, STARTED) == []


def own_join() -> SimpleNamespace:
    return SimpleNamespace(source={"type": "m.room.member", "event_id": "$joined",
                                   "sender": BOT, "state_key": BOT, "origin_server_ts": MS,
                                   "content": {"membership": "join"}})


async def test_in_a_new_room_the_events_after_the_bots_join_are_fetched_back_to_it(
    edge: MatrixEdge, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sync leaves the bot's own events out, its join too: the room's latest events
    are fetched back from the sync position, page by page, until the join."""
    asked: list[str] = []
    pages = {"now": RoomMessagesResponse(ROOM, [timeline_event(MS + 3, "!here"),
                                                timeline_event(MS + 2, "!update one")],
                                         "now", "older"),
             "older": RoomMessagesResponse(ROOM, [timeline_event(MS + 1, "!update first"),
                                                  own_join(),
                                                  timeline_event(MS - 1, "history")],
                                           "older", "oldest")}

    async def room_messages(room_id: str, start: str, **kwargs: Any) -> Any:
        assert kwargs["message_filter"]["types"] == intake.TIMELINE_TYPES, "nobody left out"
        asked.append(start)
        return pages[start]

    monkeypatch.setattr(edge.client, "room_messages", room_messages)
    events = await edge.intake._since_own_join(ROOM, "now")
    assert [e["content"]["body"] for e in events] == ["!update first", "!update one", "!here"]
    assert asked == ["now", "older"], "no page beyond the join"

    asked.clear()
    pages["now"] = RoomMessagesResponse(ROOM, [own_join(), timeline_event(MS - 1, "history")],
                                        "now", "older")
    assert await edge.intake._since_own_join(ROOM, "now") == [], "joined, nothing since"
    assert asked == ["now"]


async def test_a_room_whose_join_is_out_of_reach_hands_nothing_over(
    edge: MatrixEdge, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0

    async def room_messages(room_id: str, start: str, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return RoomMessagesResponse(ROOM, [timeline_event(MS + calls, f"!here {calls}")],
                                    start, f"page{calls}")

    monkeypatch.setattr(edge.client, "room_messages", room_messages)
    assert await edge.intake._since_own_join(ROOM, "a") == [], (
        "no join in sight: history, as before the bot joined")
    assert calls == intake.JOIN_LOOKUP_PAGES


def test_the_sync_leaves_out_the_bots_own_events_and_nothing_else() -> None:
    steady, first = intake.sync_filter(50, BOT), intake.first_sync_filter(BOT)
    for definition in (steady, first):
        timeline = definition["room"]["timeline"]
        assert timeline["not_senders"] == [BOT] and "senders" not in timeline
        assert timeline["types"] == intake.TIMELINE_TYPES
