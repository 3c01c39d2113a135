"""A fault-injecting HTTP/1.1 proxy for the tests: it sits between the bot and Synapse.

The bot's `matrix.homeserver` points at the proxy; people's clients talk to Synapse
directly, so a fault hits the bot alone. Rules pick requests by method and path and,
while in force, do one of:

* `RESET`: the connection is cut with a TCP reset before the request reaches the
  homeserver (what a crashed load balancer or a dropped NAT entry looks like);
* `DROP_ANSWER`: the request reaches the homeserver and takes effect, then the
  connection is reset instead of delivering the answer (the client cannot tell
  whether its request was carried out);
* `STALL`: the request is held, unanswered, until the rule is lifted, then passed on;
* `BAD_GATEWAY`: the proxy answers 502 with an HTML page, as nginx does when its
  upstream is down (not Matrix JSON).

Everything else passes through byte for byte: requests are parsed only far enough to
find where each ends (Content-Length or chunked), so keep-alive connections and long
polls behave as without the proxy. Answers are piped back unparsed; that is sound
because an HTTP/1.1 client does not send its next request on a connection before it
has read the whole previous answer (the proxy rejects nothing, it does not pipeline).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import socket
import struct
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

HEAD_LIMIT = 64 * 1024
BAD_GATEWAY_PAGE = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n"
                    b"<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
                    b"</body>\r\n</html>\r\n")


class Action(enum.Enum):
    RESET = "reset"
    DROP_ANSWER = "drop answer"
    STALL = "stall"
    BAD_GATEWAY = "502"


@dataclass(eq=False)
class Rule:
    """One fault: which requests (method, path regex searched in the path without its
    query) and what happens to them. `hits` counts the requests it caught."""

    method: str
    path: re.Pattern[str]
    action: Action
    hits: int = 0
    lifted: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and self.path.search(path) is not None

    def __repr__(self) -> str:
        return f"<Rule {self.action.value} {self.method} {self.path.pattern} hits={self.hits}>"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    fault: Action | None


class _Closed(Exception):
    """The client closed its connection between requests: nothing is wrong."""


class FaultProxy:
    """`async with FaultProxy(host, port) as proxy:` then point a client at `proxy.url`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rules: list[Rule] = []
        # Every request seen, in order of arrival, with the fault it met (if any).
        self.requests: list[Request] = []
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()

    @classmethod
    def to(cls, url: str) -> FaultProxy:
        """A proxy in front of `http://host:port`."""
        match = re.fullmatch(r"http://([^:/]+):(\d+)/?", url)
        if match is None:
            raise ValueError(f"expected http://host:port, got {url!r}")
        return cls(match[1], int(match[2]))

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for rule in self.rules:
            rule.lifted.set()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- rules ---------------------------------------------------------------------------

    def add(self, method: str, path: str, action: Action) -> Rule:
        """Put a fault in force from the next request on; the first matching rule wins."""
        rule = Rule(method.upper(), re.compile(path), action)
        self.rules.append(rule)
        return rule

    def lift(self, rule: Rule) -> None:
        """End a fault; requests it stalls go on to the homeserver now."""
        with contextlib.suppress(ValueError):
            self.rules.remove(rule)
        rule.lifted.set()

    def count(self, method: str, path: str) -> int:
        """How many requests so far matched `method` and the path regex `path`."""
        pattern = re.compile(path)
        return sum(r.method == method.upper() and pattern.search(r.path) is not None
                   for r in self.requests)

    async def wait_for_hits(self, rule: Rule, hits: int = 1, timeout: float = 30) -> None:
        """Return once `rule` has caught `hits` requests; TimeoutError if it does not."""

        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: rule.hits >= hits)

        await asyncio.wait_for(until(), timeout)

    # --- connections ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        pump: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    head, method, path = await _read_head(reader)
                except _Closed:
                    return
                body = await _read_body(reader, head)
                rule = next((r for r in self.rules if r.matches(method, path)), None)
                await self._record(Request(method, path, rule.action if rule else None), rule)
                if rule is not None and rule.action is Action.RESET:
                    _reset(writer)
                    return
                if rule is not None and rule.action is Action.BAD_GATEWAY:
                    writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                                 % len(BAD_GATEWAY_PAGE) + BAD_GATEWAY_PAGE)
                    await writer.drain()
                    return
                if rule is not None and rule.action is Action.STALL:
                    await rule.lifted.wait()
                if upstream is None or pump is None or pump.done():
                    if upstream is not None:
                        upstream[1].close()
                    upstream = await asyncio.open_connection(*self.upstream)
                    pump = asyncio.create_task(_pipe(upstream[0], writer))
                if rule is not None and rule.action is Action.DROP_ANSWER:
                    # Let the homeserver act on it, then lose the answer.
                    upstream[1].write(head + body)
                    await upstream[1].drain()
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pump
                    with contextlib.suppress(Exception):
                        await upstream[0].read(1)
                    _reset(writer)
                    return
                upstream[1].write(head + body)
                await upstream[1].drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            if upstream is not None:
                upstream[1].close()
            writer.close()
            self._connections.discard(task)

    async def _record(self, request: Request, rule: Rule | None) -> None:
        async with self._changed:
            self.requests.append(request)
            if rule is not None:
                rule.hits += 1
            self._changed.notify_all()


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, str, str]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            raise _Closed from None
        raise
    except asyncio.LimitOverrunError:
        raise ConnectionError("request head too long") from None
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    method, target, _version = request_line.split(" ", 2)
    return head, method.upper(), target.split("?", 1)[0]


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The request's body, exactly as sent (chunk framing included)."""
    encoding = _header(head, b"transfer-encoding")
    if encoding is not None and b"chunked" in encoding.lower():
        raw = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            raw += size_line
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    raw += trailer
                raw += b"\r\n"
                return bytes(raw)
            raw += await reader.readexactly(size + 2)
    length = _header(head, b"content-length")
    return await reader.readexactly(int(length)) if length else b""


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        # The homeserver closed: so does the proxy, as the client expects.
        sink.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN: the client sees a reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
