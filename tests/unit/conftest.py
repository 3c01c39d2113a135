"""Fixtures the unit tests share: the store on real SQLite, and a check that every test
closes the stores it opens."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chatbot.store import Store
from tests.support.waiting import wait_until

# aiosqlite runs each connection in a thread of its own that is not a daemon: a store
# left open keeps the interpreter from exiting after the last test, and CI would hang.
SQLITE_THREAD = "_connection_worker_thread"


def _sqlite_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate()
            if SQLITE_THREAD in thread.name and thread.is_alive()}


@pytest.fixture(autouse=True)
def closes_its_stores() -> Iterator[None]:
    before = _sqlite_threads()
    yield
    # A closed connection's thread ends a moment after `close` returns.
    if not wait_until(lambda: not (_sqlite_threads() - before), timeout=2.0):
        pytest.fail("the test left a database connection open (close every Store it opens)")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "bot.db")
    try:
        yield opened
    finally:
        await opened.close()
