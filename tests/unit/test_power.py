"""Who outranks whom in a room: creators in room version 12, power levels everywhere."""

from __future__ import annotations

import math
from typing import Any

import pytest

from chatbot.power import CHAIR_LEVEL, RoomAuthority

CREATOR = "@creator:example.org"
CO_CREATOR = "@co:example.org"
MOD = "@mod:example.org"
MEMBER = "@member:example.org"


def create(version: str | int | None, sender: str = CREATOR, **content: Any) -> dict[str, Any]:
    if version is not None:
        content["room_version"] = version
    return {"type": "m.room.create", "state_key": "", "sender": sender, "content": content}


def power_levels(**content: Any) -> dict[str, Any]:
    return {"type": "m.room.power_levels", "state_key": "", "sender": CREATOR, "content": content}


def levels(*events: dict[str, Any], users: tuple[str, ...] = (CREATOR, CO_CREATOR, MOD, MEMBER)
           ) -> dict[str, float]:
    authority = RoomAuthority.from_state(events)
    return {user: authority.level(user) for user in users}


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            [create("12", additional_creators=[CO_CREATOR]), power_levels(users={MOD: 50})],
            {CREATOR: math.inf, CO_CREATOR: math.inf, MOD: 50, MEMBER: 0},
            id="v12 creator and additional creators outrank everyone"),
        pytest.param(
            [create("12")],
            {CREATOR: math.inf, CO_CREATOR: 0, MOD: 0, MEMBER: 0},
            id="v12 creator without any power_levels event"),
        pytest.param(
            [create(12, additional_creators=[CO_CREATOR])],
            {CREATOR: math.inf, CO_CREATOR: math.inf, MOD: 0, MEMBER: 0},
            id="v12 room version given as a number"),
        pytest.param(
            [create("12"), power_levels(users={CREATOR: 0, MOD: 50})],
            {CREATOR: math.inf, CO_CREATOR: 0, MOD: 50, MEMBER: 0},
            id="v12 creator is not demoted by power_levels"),
        pytest.param(
            [create("10", creator=CREATOR), power_levels(users={CREATOR: 100, MOD: 50})],
            {CREATOR: 100, CO_CREATOR: 0, MOD: 50, MEMBER: 0},
            id="v10 creator gets what power_levels says"),
        pytest.param(
            [create("10", creator=CREATOR, additional_creators=[CO_CREATOR])],
            {CREATOR: 0, CO_CREATOR: 0, MOD: 0, MEMBER: 0},
            id="v10 creator without power_levels is nobody special"),
        pytest.param(
            [create("11"), power_levels(users={MOD: 50})],
            {CREATOR: 0, CO_CREATOR: 0, MOD: 50, MEMBER: 0},
            id="v11 is still a legacy version"),
        pytest.param(
            [create(None), power_levels(users={CREATOR: 100})],
            {CREATOR: 100, CO_CREATOR: 0, MOD: 0, MEMBER: 0},
            id="no room_version means version 1"),
        pytest.param(
            [power_levels(users={MOD: 50}, users_default=10)],
            {CREATOR: 10, CO_CREATOR: 10, MOD: 50, MEMBER: 10},
            id="users_default for everyone not listed"),
        pytest.param(
            [create("10"), power_levels(users={MOD: 50}, users_default=100)],
            {CREATOR: 100, CO_CREATOR: 100, MOD: 50, MEMBER: 100},
            id="users_default may exceed a listed user"),
        pytest.param(
            [],
            {CREATOR: 0, CO_CREATOR: 0, MOD: 0, MEMBER: 0},
            id="no state at all"),
    ],
)
def test_levels_from_room_state(events: list[dict[str, Any]], expected: dict[str, float]) -> None:
    assert levels(*events) == expected


def test_a_later_power_levels_event_replaces_an_earlier_one() -> None:
    assert levels(power_levels(users={MOD: 50}), power_levels(users={MEMBER: 50}))[MOD] == 0


def test_state_events_with_a_state_key_are_not_the_room_ones() -> None:
    stray = {**power_levels(users={MEMBER: 100}), "state_key": MEMBER}
    stray_create = {**create("12", sender=MEMBER), "state_key": "x"}
    assert levels(stray, stray_create) == {CREATOR: 0, CO_CREATOR: 0, MOD: 0, MEMBER: 0}


@pytest.mark.parametrize(
    ("value", "level"),
    [
        pytest.param(50, 50, id="integer"),
        pytest.param("50", 50, id="numeric text from old rooms"),
        pytest.param(75.9, 75, id="float truncates"),
        pytest.param("lots", 0, id="text counts as 0"),
        pytest.param(None, 0, id="null counts as 0"),
        pytest.param([100], 0, id="list counts as 0"),
        pytest.param({"level": 100}, 0, id="object counts as 0"),
    ],
)
def test_garbage_levels_count_as_zero(value: Any, level: int) -> None:
    assert levels(power_levels(users={MOD: value}))[MOD] == level
    assert levels(power_levels(users_default=value))[MEMBER] == level


def test_a_create_event_with_null_content_is_a_version_1_room() -> None:
    event = {**create("12"), "content": None}
    assert levels(event, power_levels(users={MOD: 50})) == {
        CREATOR: 0, CO_CREATOR: 0, MOD: 50, MEMBER: 0}


def test_a_create_event_with_text_content_grants_nothing() -> None:
    event = {**create("12"), "content": "v12"}
    assert levels(event) == {CREATOR: 0, CO_CREATOR: 0, MOD: 0, MEMBER: 0}


def test_garbage_power_levels_content_grants_nothing() -> None:
    event = {**power_levels(), "content": None}
    assert levels(create("10"), event) == {CREATOR: 0, CO_CREATOR: 0, MOD: 0, MEMBER: 0}


def test_power_levels_users_that_is_not_a_mapping_grants_nothing() -> None:
    assert levels(power_levels(users=[MOD]))[MOD] == 0


def test_an_infinite_level_counts_as_zero() -> None:
    assert levels(power_levels(users={MOD: float("inf")}))[MOD] == 0


@pytest.mark.parametrize(
    "extra",
    [pytest.param("@co:example.org", id="a string"), pytest.param([None, 5], id="not strings")],
)
def test_garbage_additional_creators_add_no_creators(extra: Any) -> None:
    authority = RoomAuthority.from_state([create("12", additional_creators=extra)])
    assert authority.creators == frozenset({CREATOR})


def test_the_chair_level_is_moderator() -> None:
    assert CHAIR_LEVEL == 50
    authority = RoomAuthority.from_state([create("12"), power_levels(users={MOD: 50, MEMBER: 49})])
    assert authority.level(MOD) >= CHAIR_LEVEL > authority.level(MEMBER)
    assert authority.level(CREATOR) >= CHAIR_LEVEL
