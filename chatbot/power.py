"""Who outranks whom in a Matrix room, from its create and power-level events."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CHAIR_LEVEL = 50
# Room versions before 12 rank everyone by m.room.power_levels alone.
_LEGACY_VERSIONS = frozenset(str(n) for n in range(1, 12))


@dataclass(frozen=True, slots=True)
class RoomAuthority:
    """The parts of a room's state that decide a member's power level."""

    creators: frozenset[str]
    users: Mapping[str, int]
    users_default: int

    @classmethod
    def from_state(cls, events: Iterable[Mapping[str, Any]]) -> RoomAuthority:
        # State comes from the homeserver, but its content is still other people's
        # JSON: anything malformed grants nothing rather than raising.
        create: Mapping[str, Any] = {}
        levels: Mapping[str, Any] = {}
        for event in events:
            if event.get("state_key") != "":
                continue
            if event.get("type") == "m.room.create":
                create = event
            elif event.get("type") == "m.room.power_levels":
                levels = _mapping(event.get("content"))
        content = _mapping(create.get("content"))
        creators: frozenset[str] = frozenset()
        if str(content.get("room_version", "1")) not in _LEGACY_VERSIONS:
            # Room version 12: the creators hold no entry in m.room.power_levels
            # yet outrank everyone.
            extra = content.get("additional_creators")
            extra = [user for user in extra if isinstance(user, str)] if isinstance(
                extra, list) else []
            creators = frozenset([str(create.get("sender", "")), *extra]) - {""}
        users = {str(u): _as_int(v) for u, v in _mapping(levels.get("users")).items()}
        return cls(creators, users, _as_int(levels.get("users_default", 0)))

    def level(self, user_id: str) -> float:
        if user_id in self.creators:
            return math.inf
        return self.users.get(user_id, self.users_default)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
