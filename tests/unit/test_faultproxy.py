"""The tests' fault proxy: faults where asked, byte-exact pass-through everywhere else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.support.faultproxy import Action, FaultProxy


class Upstream:
    """A tiny homeserver stand-in: counts what reaches it; /poll waits for `release`."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.release = asyncio.Event()

    async def answer(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.path, body))
        if request.path == "/poll":
            await self.release.wait()
        return web.json_response({"path": request.path, "body": body.decode()})


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    stand_in = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in.answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield stand_in, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def proxy(upstream: tuple[Upstream, str]) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.to(upstream[1]) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def test_requests_pass_through_on_one_kept_alive_connection(
    upstream: tuple[Upstream, str], proxy: FaultProxy, session: aiohttp.ClientSession,
) -> None:
    stand_in, _ = upstream

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"chunked ", b"body"):
            yield part

    answers = []
    for method, path, data in [("GET", "/a?x=1", None), ("POST", "/b", b"plain body"),
                               ("PUT", "/c", chunks())]:
        async with session.request(method, proxy.url + path, data=data) as response:
            answers.append((response.status, await response.json()))
    assert answers == [(200, {"path": "/a", "body": ""}),
                       (200, {"path": "/b", "body": "plain body"}),
                       (200, {"path": "/c", "body": "chunked body"})]
    assert [(m, p) for m, p, _ in stand_in.seen] == [("GET", "/a"), ("POST", "/b"), ("PUT", "/c")]
    assert [(r.method, r.path, r.fault) for r in proxy.requests] == [
        ("GET", "/a", None), ("POST", "/b", None), ("PUT", "/c", None)]
    assert len(proxy._connections) == 1, "the client kept one connection alive"


async def test_bytes_reach_the_homeserver_and_come_back_exactly() -> None:
    received = bytearray()
    sent = (b"POST /x?since=s1 HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\n\r\nhello"
            b"PUT /y HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n")
    answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Odd:  spaced \r\n\r\nok"
              b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
    got_both = asyncio.Event()

    async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)
            if len(received) >= len(sent):  # both requests, pipelined
                writer.write(answer)
                await writer.drain()
                got_both.set()
        writer.close()

    server = await asyncio.start_server(raw, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with FaultProxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(proxy.url.rsplit(":")[2]))
        writer.write(sent)
        await writer.drain()
        back = await asyncio.wait_for(reader.readexactly(len(answer)), 5)
        writer.close()
        assert [(r.method, r.path) for r in proxy.requests] == [("POST", "/x"), ("PUT", "/y")]
    server.close()
    assert bytes(received) == sent
    assert back == answer
    assert got_both.is_set()


async def test_a_reset_cuts_the_connection_before_the_homeserver_sees_the_request(
    upstream: tuple[Upstream, str], proxy: FaultProxy, session: aiohttp.ClientSession,
) -> None:
    stand_in, _ = upstream
    rule = proxy.add("POST", r"/join/", Action.RESET)
    with pytest.raises(aiohttp.ClientOSError, match="reset"):
        await session.post(proxy.url + "/_matrix/client/v3/join/!room", data=b"{}")
    async with session.get(proxy.url + "/_matrix/client/v3/join/!room") as response:
        assert response.status == 200, "another method is not caught"
    async with session.post(proxy.url + "/_matrix/client/v3/rooms/x/send") as response:
        assert response.status == 200, "another path is not caught"
    assert rule.hits == 1
    assert [p for m, p, _ in stand_in.seen if m == "POST"] == ["/_matrix/client/v3/rooms/x/send"]
    proxy.lift(rule)
    async with session.post(proxy.url + "/_matrix/client/v3/join/!room") as response:
        assert response.status == 200
    assert rule.hits == 1 and proxy.count("POST", r"/join/") == 2


async def test_a_bad_gateway_answers_502_with_a_page_that_is_not_json(
    upstream: tuple[Upstream, str], proxy: FaultProxy, session: aiohttp.ClientSession,
) -> None:
    rule = proxy.add("*", r"/sync$", Action.BAD_GATEWAY)
    async with session.get(proxy.url + "/_matrix/client/v3/sync?timeout=30000") as response:
        assert response.status == 502
        assert response.content_type == "text/html"
        assert "502 Bad Gateway" in await response.text()
    assert upstream[0].seen == [] and rule.hits == 1


async def test_a_stalled_request_waits_until_the_fault_is_lifted(
    upstream: tuple[Upstream, str], proxy: FaultProxy, session: aiohttp.ClientSession,
) -> None:
    stand_in, _ = upstream
    rule = proxy.add("GET", r"/state$", Action.STALL)
    asking = asyncio.create_task(session.get(proxy.url + "/rooms/r/state"))
    await proxy.wait_for_hits(rule, 1, timeout=5)
    # Other requests still flow while one is held.
    async with session.get(proxy.url + "/rooms/r/members") as response:
        assert response.status == 200
    assert not asking.done() and [p for _, p, _ in stand_in.seen] == ["/rooms/r/members"]
    proxy.lift(rule)
    response = await asyncio.wait_for(asking, 5)
    assert response.status == 200 and (await response.json())["path"] == "/rooms/r/state"
    response.release()


async def test_a_dropped_answer_has_reached_the_homeserver(
    upstream: tuple[Upstream, str], proxy: FaultProxy, session: aiohttp.ClientSession,
) -> None:
    stand_in, _ = upstream
    rule = proxy.add("POST", r"/keys/upload$", Action.DROP_ANSWER)
    # POST, as aiohttp quietly tries an idempotent PUT once more after a reset.
    with pytest.raises(aiohttp.ClientOSError, match="reset"):
        await session.post(proxy.url + "/keys/upload", data=b'{"k": 1}')
    assert stand_in.seen == [("POST", "/keys/upload", b'{"k": 1}')] and rule.hits == 1


async def test_a_long_poll_is_passed_through_while_it_waits(
    upstream: tuple[Upstream, str], proxy: FaultProxy, session: aiohttp.ClientSession,
) -> None:
    stand_in, _ = upstream
    polling = asyncio.create_task(session.get(proxy.url + "/poll"))
    while not stand_in.seen:  # the poll reaches the homeserver and is held there
        await asyncio.wait([polling], timeout=0.01)
    assert not polling.done()
    stand_in.release.set()
    response = await asyncio.wait_for(polling, 5)
    assert response.status == 200
    response.release()
