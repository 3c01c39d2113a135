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
        create: Mapping[str, Any] = {}
        levels: Mapping[str, Any] = {}
        for event in events:
            if event.get("state_key") != "":
                continue
            if event.get("type") == "m.room.create":
                create = event
            elif event.get("type") == "m.room.power_levels":
                levels = event.get("content") or {}
        content = create.get("content") or {}
        creators: frozenset[str] = frozenset()
        if str(content.get("room_version", "1")) not in _LEGACY_VERSIONS:
            # Room version 12: the creators hold no entry in m.room.power_levels
            # yet outrank everyone.
            extra = content.get("additional_creators") or []
            creators = frozenset([create.get("sender", ""), *[str(u) for u in extra]]) - {""}
        users = {str(u): _as_int(v) for u, v in (levels.get("users") or {}).items()}
        return cls(creators, users, _as_int(levels.get("users_default", 0)))

    def level(self, user_id: str) -> float:
        if user_id in self.creators:
            return math.inf
        return self.users.get(user_id, self.users_default)


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
