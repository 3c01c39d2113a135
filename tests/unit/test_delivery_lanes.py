"""Which queued items may be sent side by side, and which must wait their turn."""

from datetime import UTC, datetime

from chatbot.bot import delivery_lanes
from chatbot.model import RoomId
from chatbot.store import OutboxItem

QUEUED_AT = datetime(2026, 1, 5, 10, tzinfo=UTC)


def item(number: int, room: str, kind: str) -> OutboxItem:
    return OutboxItem(id=number, room_id=RoomId(room), kind=kind, payload={},
                      created_at=QUEUED_AT)


def ids(lanes: list[list[OutboxItem]]) -> list[list[int]]:
    return [[queued.id for queued in lane] for lane in lanes]


def test_a_rooms_messages_share_one_lane_in_queue_order() -> None:
    queue = [item(1, "!a", "reply"), item(2, "!b", "message"), item(3, "!a", "message"),
             item(4, "!a", "reply")]
    assert ids(delivery_lanes(queue)) == [[1, 3, 4], [2]]


def test_each_reaction_is_a_lane_of_its_own() -> None:
    queue = [item(1, "!a", "react"), item(2, "!a", "reply"), item(3, "!a", "react"),
             item(4, "!a", "message")]
    assert ids(delivery_lanes(queue)) == [[1], [2, 4], [3]]


def test_every_item_is_in_exactly_one_lane() -> None:
    queue = [item(n, f"!room{n % 3}", "react" if n % 2 else "reply") for n in range(1, 40)]
    sent = sorted(queued for lane in ids(delivery_lanes(queue)) for queued in lane)
    assert sent == list(range(1, 40))


def test_nothing_queued_means_no_lanes() -> None:
    assert delivery_lanes([]) == []
