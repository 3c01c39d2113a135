"""A throwaway Synapse homeserver on 127.0.0.1, for the demo and the test-suite.

Usage::

    with LocalHomeserver.start() as hs:
        alice = await hs.register_user("alice", displayname="Alice")
        client = hs.nio_client(alice)
        ...

Contract:

* Synapse runs as a child process (``python -m synapse.app.homeserver``) in a
  folder of its own, listening on ``127.0.0.1`` only, with federation, media,
  URL previews and presence switched off, so it never talks to the network.
* Every instance gets a fresh free port and a fresh random registration shared
  secret; users are created through the shared-secret admin API, which is not
  rate limited and needs no ``/login``.
* ``stop()`` (or leaving the ``with`` block, or interpreter exit) terminates
  Synapse and deletes the folder if this module created it.
  ``stop_process()``/``start_process()`` (or ``restart()``) stop and start the
  same server again on the same port with the same database, so access tokens
  stay valid across the gap.

``matrix-synapse`` is not a dependency of the bot itself; it comes with the
``demo`` extra (``pip install -e '.[demo]'``).  This module therefore never
imports Synapse (it runs it as a child process) and reports a missing Synapse
as a ``RuntimeError`` with that hint.

Startup takes about 1 s when Synapse's bytecode is compiled, and about 2.4 s
when ``PYTHONDONTWRITEBYTECODE=1`` is set and the venv holds no ``.pyc`` files
(Synapse is a large import); nothing here tries to work around that.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp
import yaml
from nio import AsyncClient, AsyncClientConfig

__all__ = ["INSTALL_HINT", "LocalHomeserver", "RegisteredUser"]

#: What to tell a user whose environment lacks Synapse.
INSTALL_HINT = (
    "matrix-synapse is installed by the project's 'demo' extra: "
    "pip install -e '.[demo]'"
)

SERVER_NAME = "localhost"
HOST = "127.0.0.1"

#: How long ``start()``/``start_process()`` wait for ``/versions`` to answer.
STARTUP_TIMEOUT_S = 60.0
#: How long ``stop_process()`` waits after SIGTERM before it sends SIGKILL.
STOP_TIMEOUT_S = 10.0
#: Per-request timeout of the admin API calls in ``register_user``.
HTTP_TIMEOUT_S = 30.0

CONFIG_FILE = "homeserver.yaml"
LOG_CONFIG_FILE = "log.yaml"
#: Synapse's stdout and stderr (its log handler writes to stderr).
LOG_FILE = "synapse.log"
DATABASE_FILE = "homeserver.db"


# Synapse's default rate limits break a test-suite (10 messages then 0.2/s,
# 5 logins per IP then a 333 s ban, 10 room creations, 5 invites per invitee).
# These are relaxed by default; ``rate_limits=True`` omits them so that tests
# of the bot's own 429 handling meet the real defaults.
def _relaxed_rate_limits() -> dict[str, Any]:
    """The rc_* block: 1000/s with bursts of 1000 for every limiter.

    Built fresh on each call so no dict is shared (PyYAML would otherwise
    write anchors and aliases, and overrides could mutate a shared value).
    """

    def relaxed() -> dict[str, int]:
        return {"per_second": 1000, "burst_count": 1000}

    return {
        "rc_message": relaxed(),
        "rc_registration": relaxed(),
        "rc_login": {
            "address": relaxed(),
            "account": relaxed(),
            "failed_attempts": relaxed(),
        },
        "rc_joins": {"local": relaxed(), "remote": relaxed()},
        "rc_joins_per_room": relaxed(),
        "rc_invites": {
            "per_room": relaxed(),
            "per_user": relaxed(),
            "per_issuer": relaxed(),
        },
        "rc_room_creation": relaxed(),
        "rc_profile": relaxed(),
    }


# Keeps Synapse's own log to warnings, on stderr (which we send to LOG_FILE).
_LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "f"}},
    "root": {"level": "WARNING", "handlers": ["console"]},
    "disable_existing_loggers": False,
}


def _synapse_config(
    *, port: int, shared_secret: str, workdir: Path, rate_limits: bool
) -> dict[str, Any]:
    """Return the homeserver.yaml contents (verified against Synapse 1.163.2).

    Paths are absolute so the config does not depend on Synapse's cwd. No
    ``signing_key_path`` is given: Synapse writes ``localhost.signing.key``
    next to the config on first start and reuses it on restarts.
    """
    config: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "report_stats": False,
        "registration_shared_secret": shared_secret,
        "enable_registration": False,
        "listeners": [
            {
                "port": port,
                "bind_addresses": [HOST],
                "type": "http",
                "tls": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {
            "name": "sqlite3",
            "args": {"database": str(workdir / DATABASE_FILE)},
        },
        "log_config": str(workdir / LOG_CONFIG_FILE),
        # No outbound traffic: no key servers, no federation.
        "trusted_key_servers": [],
        "federation_domain_whitelist": [],
        # Fast and quiet.
        "presence": {"enabled": False},
        # Removes the media endpoints. Pass config_overrides=
        # {"enable_media_repo": True} if the bot uploads files.
        "enable_media_repo": False,
        "url_preview_enabled": False,
        # Password hashing in ~1 ms instead of ~100s of ms.
        "bcrypt_rounds": 4,
        # A fresh database is ready at once instead of after background updates.
        "background_updates": {"sleep_enabled": False},
    }
    if not rate_limits:
        config.update(_relaxed_rate_limits())
    return config


def _free_port() -> int:
    """Return a TCP port on HOST that was free a moment ago.

    Binding to port 0 lets the kernel pick; there is a small race until Synapse
    binds it, which shows up as a startup failure ("Address already in use")
    in the log tail of the RuntimeError.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _synapse_importable(python: str) -> bool:
    """Tell whether ``python`` can import Synapse, without importing it here.

    For our own interpreter ``find_spec`` is instant; for another interpreter
    we ask it (cheaply: ``find_spec`` does not import Synapse).
    """
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return importlib.util.find_spec("synapse") is not None
    try:
        result = subprocess.run(
            [
                python,
                "-c",
                "import importlib.util, sys; "
                "sys.exit(importlib.util.find_spec('synapse') is None)",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file, or a note if unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


@dataclass(frozen=True)
class RegisteredUser:
    """A user created by :meth:`LocalHomeserver.register_user`.

    ``access_token`` and ``device_id`` belong to a session the registration
    opened, so no ``/login`` is needed.
    """

    user_id: str
    access_token: str
    device_id: str
    password: str


class LocalHomeserver:
    """A Synapse child process serving ``http://127.0.0.1:<port>``.

    Create one with :meth:`start`; do not call the constructor directly.
    Not thread-safe: use an instance from one thread (or event loop) at a time.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        owns_workdir: bool,
        port: int,
        shared_secret: str,
        python: str,
    ) -> None:
        self._workdir = workdir
        self._owns_workdir = owns_workdir
        self._port = port
        self._shared_secret = shared_secret
        self._python = python
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._atexit_registered = False
        self._removed = False
        #: Seconds the last start_process() took until /versions answered.
        self.startup_seconds: float | None = None

    # ------------------------------------------------------------------ start

    @classmethod
    def start(
        cls,
        workdir: Path | None = None,
        *,
        rate_limits: bool = False,
        python: str = sys.executable,
        config_overrides: Mapping[str, Any] | None = None,
    ) -> LocalHomeserver:
        """Write a config, start Synapse and return once it answers.

        :param workdir: folder for config, log, signing key and database. If
            ``None``, a fresh temp folder is created and deleted by ``stop()``;
            a given folder is created if missing and never deleted (an existing
            database in it is reused).
        :param rate_limits: ``True`` keeps Synapse's default rate limits;
            ``False`` (default) relaxes them for tests.
        :param python: interpreter that has ``matrix-synapse`` installed.
        :param config_overrides: top-level homeserver.yaml keys to set or
            replace (for example ``{"enable_media_repo": True}`` or a tight
            ``rc_message``), applied last.
        :raises RuntimeError: Synapse is not installed for ``python`` (checked
            before anything is spawned or written), or it exited or did not
            answer within 60 s; the message carries the log's tail.

        Blocks for the startup time (~1-2.5 s); from async code call it via
        ``await asyncio.to_thread(LocalHomeserver.start)``.
        """
        if not _synapse_importable(python):
            raise RuntimeError(
                f"Cannot start a local homeserver: the Python at {python!r} cannot "
                f"import 'synapse'. {INSTALL_HINT}"
            )
        owns_workdir = workdir is None
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="chatbot-synapse-"))
        else:
            workdir = Path(workdir).resolve()
            workdir.mkdir(parents=True, exist_ok=True)

        hs = cls(
            workdir=workdir,
            owns_workdir=owns_workdir,
            port=_free_port(),
            shared_secret=secrets.token_hex(32),
            python=python,
        )
        try:
            config = _synapse_config(
                port=hs._port,
                shared_secret=hs._shared_secret,
                workdir=workdir,
                rate_limits=rate_limits,
            )
            config.update(config_overrides or {})
            (workdir / CONFIG_FILE).write_text(
                yaml.safe_dump(config, sort_keys=False), encoding="utf-8"
            )
            (workdir / LOG_CONFIG_FILE).write_text(
                yaml.safe_dump(_LOG_CONFIG, sort_keys=False), encoding="utf-8"
            )
            hs.start_process()
        except BaseException:
            # Includes KeyboardInterrupt during the wait: never leave a
            # half-started Synapse or a stray temp folder behind.
            hs.stop()
            raise
        return hs

    def start_process(self) -> None:
        """Start Synapse (again) with the existing config, port and database.

        Returns once ``GET /_matrix/client/versions`` answers. No-op if it is
        already running.

        :raises RuntimeError: if Synapse exits or does not answer within
            ``STARTUP_TIMEOUT_S``; the process is killed first and the message
            carries the tail of the log.
        """
        if self._removed:
            raise RuntimeError(
                "this LocalHomeserver was stopped and its folder removed"
            )
        if self.running:
            return
        log_path = self.log_path
        # Append, so a restart keeps the earlier log for post-mortems.
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop_process
        began = time.monotonic()
        # Same process group as the caller (no start_new_session): a Ctrl-C in
        # the terminal then reaches Synapse too, so an interrupted run does
        # not leave it behind even if our cleanup never gets to run.
        self._proc = subprocess.Popen(
            [self._python, "-m", "synapse.app.homeserver", "-c", CONFIG_FILE],
            cwd=self._workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if not self._atexit_registered:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True
        try:
            self._wait_until_ready(began + STARTUP_TIMEOUT_S)
        except BaseException:
            self.stop_process()
            raise
        self.startup_seconds = time.monotonic() - began

    def _wait_until_ready(self, deadline: float) -> None:
        """Poll ``/versions`` until it answers 200, Synapse exits or time is up."""
        assert self._proc is not None
        versions = f"{self.url}/_matrix/client/versions"
        # An empty ProxyHandler: urlopen would otherwise honour http_proxy
        # from the environment and send a loopback request to a proxy.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            returncode = self._proc.poll()
            if returncode is not None:
                self._fail(f"Synapse exited with code {returncode} during startup")
            try:
                with opener.open(versions, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet (connection refused) or not ready
            if time.monotonic() >= deadline:
                self._fail(
                    f"Synapse did not answer {versions} in {STARTUP_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.05)

    def _fail(self, what: str) -> None:
        """Raise the startup RuntimeError, with the log tail and what to do."""
        if self._log is not None:
            self._log.flush()
        raise RuntimeError(
            f"{what}.\n"
            f"--- last lines of Synapse's log ---\n{_tail(self.log_path)}\n---\n"
            f"If Synapse is missing or broken in {self._python!r}: "
            f"{INSTALL_HINT}. A port clash ('Address already in use') is a rare race "
            f"with another program; starting again picks a new port."
        )

    # ------------------------------------------------------------------- stop

    def stop_process(self) -> None:
        """Stop Synapse but keep its folder, port and database for ``start_process()``.

        SIGTERM (Synapse exits in milliseconds), then SIGKILL after
        ``STOP_TIMEOUT_S``. Idempotent.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop Synapse and delete the folder if ``start()`` created it. Idempotent.

        The instance cannot be started again afterwards if its folder was removed.
        """
        self.stop_process()
        if self._atexit_registered:
            atexit.unregister(self._stop_at_exit)
            self._atexit_registered = False
        if self._owns_workdir and not self._removed:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._removed = True

    def restart(self) -> None:
        """``stop_process()`` then ``start_process()``: same port, same data."""
        self.stop_process()
        self.start_process()

    def _stop_at_exit(self) -> None:
        # Last resort for callers that forgot stop() or crashed; atexit does
        # not run on SIGKILL or an unhandled SIGTERM, nothing can help there.
        self.stop()

    def __enter__(self) -> LocalHomeserver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------- properties

    @property
    def url(self) -> str:
        """Base URL of the client API, e.g. ``"http://127.0.0.1:41234"``."""
        return f"http://{HOST}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def server_name(self) -> str:
        """The server name, ``"localhost"``: user IDs are ``@name:localhost``."""
        return SERVER_NAME

    @property
    def workdir(self) -> Path:
        """Folder holding homeserver.yaml, log.yaml, synapse.log and the database."""
        return self._workdir

    @property
    def log_path(self) -> Path:
        """Synapse's stdout/stderr, appended to across restarts."""
        return self._workdir / LOG_FILE

    @property
    def shared_secret(self) -> str:
        """The registration shared secret (random per instance)."""
        return self._shared_secret

    @property
    def running(self) -> bool:
        """True while the Synapse process exists and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalHomeserver {self.url} {state} workdir={self._workdir}>"

    # ------------------------------------------------------------------ users

    async def register_user(
        self,
        username: str,
        password: str | None = None,
        *,
        admin: bool = False,
        displayname: str | None = None,
    ) -> RegisteredUser:
        """Create ``@username:localhost`` via the shared-secret admin API.

        :param username: the localpart; Synapse lowercases it.
        :param password: random if ``None`` (the returned user carries it).
        :param displayname: set in the same request (the admin endpoint takes
            ``displayname`` in its body), so no separate profile call.
        :raises RuntimeError: on any non-200 answer, e.g. ``M_USER_IN_USE``.
        """
        if password is None:
            password = secrets.token_urlsafe(16)
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            # Each nonce is single-use, so every registration fetches a new one.
            async with session.get(endpoint) as response:
                nonce_body = await _json_or_raise(response, "get a registration nonce")
            nonce: str = nonce_body["nonce"]
            mac = hmac.new(self._shared_secret.encode(), digestmod=hashlib.sha1)
            mac.update(
                b"\x00".join(
                    [
                        nonce.encode(),
                        username.encode(),
                        password.encode(),
                        b"admin" if admin else b"notadmin",
                    ]
                )
            )
            body: dict[str, Any] = {
                "nonce": nonce,
                "username": username,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
            if displayname is not None:
                body["displayname"] = displayname
            async with session.post(endpoint, json=body) as response:
                result = await _json_or_raise(response, f"register {username!r}")
        return RegisteredUser(
            user_id=result["user_id"],
            access_token=result["access_token"],
            device_id=result["device_id"],
            password=password,
        )

    def nio_client(
        self,
        user: RegisteredUser,
        *,
        config: AsyncClientConfig | None = None,
        store_path: Path | None = None,
    ) -> AsyncClient:
        """Return a ``nio.AsyncClient`` already logged in with ``user``'s token.

        The default config makes requests fail instead of hang: nio otherwise
        retries 429s and timeouts forever. The caller must ``await
        client.close()``. With ``store_path`` (a folder) the client keeps its
        encryption keys there and reads and writes in encrypted rooms; without
        it, end-to-end encryption is inactive on this client.
        """
        if config is None:
            config = AsyncClientConfig(
                max_limit_exceeded=0,
                max_timeouts=2,
                request_timeout=30,
                encryption_enabled=store_path is not None,
                store_sync_tokens=False,
            )
        if store_path is not None:
            store_path.mkdir(parents=True, exist_ok=True)
        client = AsyncClient(
            self.url,
            user.user_id,
            device_id=user.device_id,
            config=config,
            store_path=str(store_path) if store_path is not None else "",
        )
        client.access_token = user.access_token
        client.user_id = user.user_id
        client.device_id = user.device_id
        if store_path is not None:
            client.load_store()
        return client


async def _json_or_raise(
    response: aiohttp.ClientResponse, doing: str
) -> dict[str, Any]:
    """Return a 200 answer's JSON object; otherwise raise RuntimeError."""
    text = await response.text()
    if response.status != 200:
        raise RuntimeError(f"Could not {doing}: HTTP {response.status}: {text}")
    data: dict[str, Any] = json.loads(text)
    return data
