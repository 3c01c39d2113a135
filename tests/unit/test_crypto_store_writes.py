"""nio's crypto store is written after a sync only when the sync saw an encrypted room."""

from __future__ import annotations

from pathlib import Path

import pytest
from nio import AsyncClient, AsyncClientConfig

from chatbot.matrix.session import skip_empty_encrypted_room_saves


async def test_a_sync_without_encrypted_rooms_writes_nothing_and_one_with_them_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = AsyncClient("http://127.0.0.1:1", "@bot:example.org", store_path=str(tmp_path),
                         config=AsyncClientConfig(encryption_enabled=True,
                                                  store_sync_tokens=False))
    client.restore_login("@bot:example.org", "DEVICE", "token")
    assert client.store is not None
    skip_empty_encrypted_room_saves(client.store)
    lookups = 0
    look_up = client.store._get_account

    def counting() -> object:
        nonlocal lookups
        lookups += 1
        return look_up()

    monkeypatch.setattr(client.store, "_get_account", counting)
    client.store.save_encrypted_rooms(set())
    assert lookups == 0, "nothing to save: the store is not touched"
    client.store.save_encrypted_rooms({"!secret:example.org"})
    assert lookups == 1
    assert client.store.load_encrypted_rooms() == {"!secret:example.org"}
    await client.close()
