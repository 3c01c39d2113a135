"""Real checks of chatbot.demo.homeserver against a live Synapse on 127.0.0.1.

Every wait is bounded (asyncio.wait_for, nio's test client config), so a broken
server makes these tests fail, not hang.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import nio
import pytest
import yaml

from chatbot.demo.homeserver import INSTALL_HINT, LocalHomeserver, RegisteredUser

EVENT_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def homeserver() -> Iterator[LocalHomeserver]:
    with LocalHomeserver.start() as hs:
        yield hs


def unique(prefix: str) -> str:
    """A fresh localpart, so tests sharing the module's server never collide."""
    return f"{prefix}-{secrets.token_hex(4)}"


async def get_json(url: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as response,
    ):
        return response.status, await response.json()


async def wait_for_text(
    client: nio.AsyncClient, room_id: str, sender: str, body: str
) -> nio.RoomMessageText:
    """Sync until ``sender``'s text ``body`` shows up in ``room_id``."""

    async def poll() -> nio.RoomMessageText:
        while True:
            # Long poll: returns as soon as there is something new.
            response = await client.sync(timeout=1000)
            assert isinstance(response, nio.SyncResponse), response
            room = response.rooms.join.get(room_id)
            for event in room.timeline.events if room else []:
                if (
                    isinstance(event, nio.RoomMessageText)
                    and event.sender == sender
                    and event.body == body
                ):
                    return event

    return await asyncio.wait_for(poll(), EVENT_TIMEOUT_S)


@pytest.mark.asyncio
async def test_answers_versions(homeserver: LocalHomeserver) -> None:
    assert homeserver.running
    assert homeserver.url == f"http://127.0.0.1:{homeserver.port}"
    assert homeserver.server_name == "localhost"
    assert (homeserver.workdir / "homeserver.yaml").is_file()
    status, body = await get_json(f"{homeserver.url}/_matrix/client/versions")
    assert status == 200
    assert body["versions"]


@pytest.mark.asyncio
async def test_register_user_with_displayname(homeserver: LocalHomeserver) -> None:
    localpart = unique("dana")
    user = await homeserver.register_user(localpart, displayname="Dana D", admin=True)
    assert isinstance(user, RegisteredUser)
    assert user.user_id == f"@{localpart}:localhost"
    assert user.access_token and user.device_id and user.password

    status, profile = await get_json(
        f"{homeserver.url}/_matrix/client/v3/profile/{user.user_id}/displayname"
    )
    assert (status, profile) == (200, {"displayname": "Dana D"})
    status, whoami = await get_json(
        f"{homeserver.url}/_matrix/client/v3/account/whoami", user.access_token
    )
    assert status == 200
    assert whoami["user_id"] == user.user_id
    assert whoami["device_id"] == user.device_id

    # Registering the same localpart again is refused with Synapse's error.
    with pytest.raises(RuntimeError, match="M_USER_IN_USE"):
        await homeserver.register_user(localpart)


@pytest.mark.asyncio
async def test_two_users_exchange_a_message(homeserver: LocalHomeserver) -> None:
    alice_user = await homeserver.register_user(unique("alice"))
    bob_user = await homeserver.register_user(unique("bob"))
    alice = homeserver.nio_client(alice_user)
    bob = homeserver.nio_client(bob_user)
    try:
        created = await alice.room_create(name="standup")
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id

        invited = await alice.room_invite(room_id, bob_user.user_id)
        assert isinstance(invited, nio.RoomInviteResponse), invited
        joined = await bob.join(room_id)
        assert isinstance(joined, nio.JoinResponse), joined

        # Bob syncs once first, so the message below arrives as a live event
        # rather than as part of his initial history.
        first = await bob.sync(timeout=0)
        assert isinstance(first, nio.SyncResponse), first

        text = f"hello {secrets.token_hex(4)}"
        sent = await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": text}
        )
        assert isinstance(sent, nio.RoomSendResponse), sent

        event = await wait_for_text(bob, room_id, alice_user.user_id, text)
        assert event.event_id == sent.event_id
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_stop_and_start_keeps_port_data_and_tokens() -> None:
    hs = LocalHomeserver.start()
    workdir = hs.workdir
    try:
        user = await hs.register_user(unique("carol"))
        url = hs.url
        # One client kept across the outage, as the bot's would be.
        client = hs.nio_client(user)
        try:
            assert isinstance(await client.sync(timeout=0), nio.SyncResponse)

            hs.stop_process()
            assert not hs.running
            # With max_timeouts=2 nio gives up quickly and *raises* (it does
            # not return a SyncError) while the server is down.
            with pytest.raises(aiohttp.ClientConnectionError):
                await asyncio.wait_for(client.sync(timeout=0), EVENT_TIMEOUT_S)

            hs.start_process()
            assert hs.running and hs.url == url
            # The same client and token work again once Synapse is back.
            assert isinstance(await client.sync(timeout=0), nio.SyncResponse)
            whoami = await client.whoami()
            assert isinstance(whoami, nio.WhoamiResponse), whoami
            assert (whoami.user_id, whoami.device_id) == (
                user.user_id,
                user.device_id,
            )
        finally:
            await client.close()

        hs.restart()
        status, body = await get_json(
            f"{url}/_matrix/client/v3/account/whoami", user.access_token
        )
        assert (status, body["user_id"]) == (200, user.user_id)
    finally:
        hs.stop()
    assert not hs.running
    assert not workdir.exists(), "stop() removes the temp folder it created"
    hs.stop()  # idempotent


@pytest.mark.asyncio
async def test_default_rate_limits_fail_fast(tmp_path: Path) -> None:
    """rate_limits=True keeps Synapse's defaults; the test client gets a 429
    back at once instead of retrying forever."""
    with LocalHomeserver.start(tmp_path / "hs", rate_limits=True) as hs:
        config = yaml.safe_load((hs.workdir / "homeserver.yaml").read_text())
        assert not [key for key in config if key.startswith("rc_")]
        user = await hs.register_user(unique("erin"))
        client = hs.nio_client(user)
        try:
            created = await client.room_create()
            assert isinstance(created, nio.RoomCreateResponse), created

            async def send_until_limited() -> nio.RoomSendError:
                # Default rc_message: bursts of 10, then 0.2 messages/s.
                for i in range(30):
                    response = await client.room_send(
                        created.room_id,
                        "m.room.message",
                        {"msgtype": "m.text", "body": str(i)},
                    )
                    if isinstance(response, nio.RoomSendError):
                        return response
                raise AssertionError("never rate limited")

            error = await asyncio.wait_for(send_until_limited(), EVENT_TIMEOUT_S)
            assert error.status_code == "M_LIMIT_EXCEEDED"
        finally:
            await client.close()
    assert (tmp_path / "hs" / "homeserver.db").is_file(), "a given workdir is kept"


def test_startup_failure_reports_log_tail(tmp_path: Path) -> None:
    workdir = tmp_path / "hs"
    with pytest.raises(RuntimeError) as excinfo:
        LocalHomeserver.start(
            workdir, config_overrides={"database": {"name": "no-such-engine"}}
        )
    message = str(excinfo.value)
    assert "exited with code" in message
    assert "no-such-engine" in message  # Synapse's own complaint, from the log tail
    assert INSTALL_HINT in message


def test_missing_synapse_is_reported_before_spawning(tmp_path: Path) -> None:
    workdir = tmp_path / "hs"
    # /bin/false stands in for an interpreter without Synapse.
    with pytest.raises(RuntimeError, match=r"cannot import 'synapse'.*\[demo\]"):
        LocalHomeserver.start(workdir, python="/bin/false")
    assert not workdir.exists(), "nothing is written when Synapse is missing"
