"""Logging in once and keeping the login: nio's client, the saved session, the crypto store."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nio import AsyncClient, AsyncClientConfig, ErrorResponse, LoginResponse, WhoamiResponse

from chatbot.config import Config
from chatbot.retry import call_homeserver

log = logging.getLogger(__name__)

SESSION_FILE = "session.json"
# nio's crypto store (the device's keys and every room key received), beside the login.
CRYPTO_DIR = "crypto"


class LoginFailed(Exception):
    """The homeserver refused our credentials; the message says what to check."""


@dataclass(frozen=True, slots=True)
class Session:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str


def load_session(path: Path, homeserver: str, user_id: str) -> Session | None:
    """The saved login, if it is for this homeserver and account."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        session = Session(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        log.warning("ignoring unreadable saved login %s", path)
        return None
    if session.homeserver != homeserver or session.user_id != user_id:
        log.info("saved login is for another account; logging in again")
        return None
    return session


def save_session(path: Path, session: Session) -> None:
    """Write the login readable by this user only (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(asdict(session), handle)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def crypto_dir(config: Config) -> Path:
    return config.data_dir / CRYPTO_DIR


def make_client(config: Config) -> AsyncClient:
    """nio's client for the bot's account, its crypto store private when encrypting."""
    # nio logs every response it validates at DEBUG, the login's access token
    # included; no level of our logging may show a credential.
    logging.getLogger("nio.responses").setLevel(logging.INFO)
    encrypting = config.encryption.enabled
    if encrypting:
        crypto_dir(config).mkdir(parents=True, exist_ok=True)
        os.chmod(crypto_dir(config), 0o700)  # private keys live here
    return AsyncClient(
        config.matrix.homeserver,
        config.matrix.user_id,
        store_path=str(crypto_dir(config)) if encrypting else None,
        config=AsyncClientConfig(
            # 429s: nio waits the retry_after_ms the server asks for, as often as needed.
            # Network errors: raised at once, so that `retry` backs off with a cap.
            max_limit_exceeded=None,
            max_timeouts=0,
            request_timeout=60,
            store_sync_tokens=False,
            encryption_enabled=encrypting,
        ),
    )


async def log_in(client: AsyncClient, config: Config) -> None:
    """Reuse the saved login, else log in once and save it (0600) for next time."""
    matrix = config.matrix
    path = config.data_dir / SESSION_FILE
    keys = crypto_dir(config)
    encrypting = config.encryption.enabled
    session = load_session(path, matrix.homeserver, matrix.user_id)
    if session is not None and encrypting and not _crypto_store(keys, session).exists():
        if matrix.password:
            log.warning("the encryption keys of device %s are not in %s; logging in as a "
                        "new device", session.device_id, keys)
            session = None
        else:
            log.warning("the encryption keys of device %s are not in %s; starting it with "
                        "new keys. If the homeserver refuses them, give a new "
                        "matrix.access_token (a new device)", session.device_id, keys)
    if session is None and matrix.access_token:
        client.access_token = matrix.access_token
        whoami = await call_homeserver("checking the access token", client.whoami)
        if not isinstance(whoami, WhoamiResponse):
            raise LoginFailed(f"the access token was refused ({whoami.message}); "
                              "check matrix.access_token")
        session = Session(matrix.homeserver, whoami.user_id, whoami.device_id or "",
                          matrix.access_token)
        save_session(path, session)
    elif session is None:
        response = await call_homeserver("logging in", lambda: client.login(
            password=matrix.password, device_name=matrix.device_name))
        if not isinstance(response, LoginResponse):
            raise LoginFailed(f"login as {matrix.user_id} failed ({response.message}); "
                              "check matrix.user_id and matrix.password")
        session = Session(matrix.homeserver, response.user_id, response.device_id,
                          response.access_token)
        save_session(path, session)
        log.info("logged in as %s with new device %s", session.user_id, session.device_id)
        if encrypting:
            log.info("encrypted messages sent before device %s existed cannot be read by "
                     "it; the bot answers commands sent from now on", session.device_id)
    client.restore_login(session.user_id, session.device_id, session.access_token)
    if client.store is not None:
        skip_empty_encrypted_room_saves(client.store)


def skip_empty_encrypted_room_saves(store: Any) -> None:
    """After every sync nio saves the encrypted rooms it saw in it, as a transaction that
    first looks up the account, even when it saw none (nearly every sync): a crypto store
    write for each wake that writes nothing (matrix-nio 0.26, `_handle_joined_rooms`).
    An empty set is skipped; any other is saved as before."""
    save = store.save_encrypted_rooms

    def save_if_any(rooms: Any) -> None:
        if rooms:
            save(rooms)

    store.save_encrypted_rooms = save_if_any


def login_withdrawn(response: Any, config: Config) -> LoginFailed | None:
    """The error to end the bot with, if `response` says our login is no longer valid."""
    if isinstance(response, ErrorResponse) and response.status_code in (
            "M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
        return LoginFailed(f"the homeserver no longer accepts our login ({response.message}); "
                           f"delete {config.data_dir / SESSION_FILE} to log in again")
    return None


def _crypto_store(keys: Path, session: Session) -> Path:
    """nio's file for this device's keys (its own naming)."""
    return keys / f"{session.user_id}_{session.device_id}.db"
