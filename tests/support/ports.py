"""Ports for servers a test starts: one nobody holds, and a wait until it answers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
# How often a wait below asks again; each wait has its own deadline.
POLL_SECONDS = 0.05
TRIES = 5


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now; someone may still take it before the test binds it,
    so a server started on it goes through `on_a_free_port`."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def until_answering(host: str, port: int, timeout: float = 10) -> None:
    """Return once a TCP connection to `host:port` is accepted."""

    async def connect() -> None:
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(POLL_SECONDS)  # sleep-ok: the poll interval of a deadline wait
                continue
            writer.close()
            await writer.wait_closed()
            return

    try:
        await asyncio.wait_for(connect(), timeout)
    except TimeoutError:
        raise AssertionError(f"nothing answers on {host}:{port} after {timeout} s") from None


async def on_a_free_port(start: Callable[[int], Awaitable[T]],
                         refused: type[Exception] | tuple[type[Exception], ...]) -> T:
    """`start(port)` on a free port, trying another when the port was taken meanwhile
    (`start` raises `refused`), then waits until the port answers."""
    for _ in range(TRIES):
        port = free_port()
        try:
            started = await start(port)
        except refused:
            continue
        await until_answering("127.0.0.1", port)
        return started
    raise AssertionError(f"no free port in {TRIES} tries")
