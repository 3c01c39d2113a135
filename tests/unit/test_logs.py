"""Log lines: JSON for machines, text for people, ids from extras, secrets never shown."""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from chatbot.logs import (
    HANDLER_NAME,
    NOISY_LOGGERS,
    REDACTED,
    JsonFormatter,
    RedactSecrets,
    TextFormatter,
    configure,
)

PASSWORD = "correct horse battery staple"
TOKEN = "syt_Ym90_secretTokenValue_0a1b2c"


class Captured:
    """A logger whose records go through one handler into a string."""

    def __init__(self, formatter: logging.Formatter, *filters: logging.Filter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)
        for filter_ in filters:
            self.handler.addFilter(filter_)
        self.log = logging.getLogger(f"chatbot.test.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.DEBUG)
        self.log.addHandler(self.handler)

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def objects(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


def json_log(*filters: logging.Filter) -> Captured:
    return Captured(JsonFormatter(), *filters)


# --- JSON -----------------------------------------------------------------------------------


def test_each_record_is_one_json_object_on_one_line() -> None:
    captured = json_log()
    captured.log.info("handled %s (%s)", "$event", "here")
    captured.log.warning("a message\nover two lines")
    first, second = captured.objects()
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "INFO"
    assert first["logger"] == captured.log.name
    assert first["message"] == "handled $event (here)"
    assert second["message"] == "a message\nover two lines"
    assert len(captured.lines()) == 2


def test_the_time_is_iso_8601_in_utc() -> None:
    captured = json_log()
    captured.log.info("tick")
    (entry,) = captured.objects()
    assert datetime.fromisoformat(entry["time"]).utcoffset() == timedelta(0)
    assert entry["time"].endswith("+00:00")


def test_room_event_and_meeting_ids_passed_as_extras_become_fields() -> None:
    captured = json_log()
    captured.log.info("handled", extra={"room_id": "!room:example.org",
                                        "event_id": "$abc", "meeting_id": 7})
    captured.log.info("planned", extra={"meeting_id": 8})
    first, second = captured.objects()
    assert (first["room_id"], first["event_id"], first["meeting_id"]) == (
        "!room:example.org", "$abc", 7)
    assert second["meeting_id"] == 8
    assert "room_id" not in second and "event_id" not in second


def test_an_exception_comes_with_its_traceback() -> None:
    captured = json_log()
    try:
        raise RuntimeError("database is locked")
    except RuntimeError:
        captured.log.exception("scheduled job %s failed", "close:3")
    (entry,) = captured.objects()
    assert entry["level"] == "ERROR"
    assert entry["message"] == "scheduled job close:3 failed"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("RuntimeError: database is locked")


def test_non_ascii_text_stays_intact() -> None:
    captured = json_log()
    captured.log.info("✋ from %s", "Zoë")
    assert captured.objects()[0]["message"] == "✋ from Zoë"


# --- text -----------------------------------------------------------------------------------


def test_text_lines_end_with_the_ids_passed_as_extras() -> None:
    captured = Captured(TextFormatter())
    captured.log.info("handled %s", "$abc",
                      extra={"room_id": "!room:example.org", "event_id": "$abc"})
    captured.log.info("no ids here")
    first, second = captured.lines()
    assert first.endswith(f"INFO {captured.log.name}: handled $abc "
                          "room=!room:example.org event=$abc")
    assert second.endswith(": no ids here")


def test_text_ids_stay_on_the_message_line_before_a_traceback() -> None:
    captured = Captured(TextFormatter())
    try:
        raise ValueError("boom")
    except ValueError:
        captured.log.exception("failed", extra={"meeting_id": 3})
    lines = captured.lines()
    assert lines[0].endswith("failed meeting=3")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


# --- secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_the_password_and_token_are_redacted_from_messages_and_arguments(
    formatter: logging.Formatter,
) -> None:
    captured = Captured(formatter, RedactSecrets([PASSWORD, TOKEN, None]))
    captured.log.warning(f"login with {PASSWORD} refused")
    captured.log.warning("GET /sync?access_token=%s failed (%d)", TOKEN, 502)
    captured.log.info("nothing secret: %s", "hello")
    output = captured.stream.getvalue()
    assert PASSWORD not in output and TOKEN not in output
    assert output.count(REDACTED) == 2
    assert f"GET /sync?access_token={REDACTED} failed (502)" in output
    assert "nothing secret: hello" in output


def test_secrets_are_redacted_from_tracebacks() -> None:
    captured = json_log(RedactSecrets([TOKEN]))
    try:
        raise ConnectionError(f"https://matrix.example.org/sync?access_token={TOKEN}")
    except ConnectionError:
        captured.log.exception("sync failed")
    (entry,) = captured.objects()
    assert TOKEN not in entry["exception"]
    assert entry["exception"].endswith(f"access_token={REDACTED}")


def test_a_token_learnt_at_login_is_redacted_from_then_on() -> None:
    redaction = RedactSecrets()
    captured = json_log(redaction)
    captured.log.info("before: %s", TOKEN)
    redaction.add(TOKEN)
    redaction.add("")  # no password configured: nothing to hide, nothing hidden
    captured.log.info("after: %s", TOKEN)
    assert [e["message"] for e in captured.objects()] == [
        f"before: {TOKEN}", f"after: {REDACTED}"]


def test_a_secret_containing_another_is_hidden_whole() -> None:
    redaction = RedactSecrets(["abc", "xxabcxx"])
    assert redaction.redact("token xxabcxx and abc") == f"token {REDACTED} and {REDACTED}"


def test_redaction_applies_to_records_propagated_from_other_loggers() -> None:
    """Why the filter sits on the handler: nio's records reach it through the root."""
    parent = logging.getLogger("chatbot-test-parent")
    child = logging.getLogger("chatbot-test-parent.nio")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets([TOKEN]))
    parent.addHandler(handler)
    parent.propagate = False
    try:
        child.warning("request failed: %s", TOKEN)
    finally:
        parent.removeHandler(handler)
    assert stream.getvalue() == f"request failed: {REDACTED}\n"


# --- configure() and the command line -----------------------------------------------------


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    try:
        yield
    finally:
        root.handlers = handlers
        root.setLevel(level)
        for name, noisy_level in noisy.items():
            logging.getLogger(name).setLevel(noisy_level)


@pytest.mark.usefixtures("restored_logging")
def test_configure_replaces_only_its_own_handler(capsys: pytest.CaptureFixture[str]) -> None:
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    configure(verbose=False, log_format="text")
    redaction = configure(verbose=True, log_format="json")
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == HANDLER_NAME]
    assert len(ours) == 1 and other in root.handlers
    assert root.level == logging.DEBUG
    assert logging.getLogger("nio").level == logging.WARNING
    redaction.add(PASSWORD)
    logging.getLogger("chatbot.test").debug("password is %s", PASSWORD)
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == f"password is {REDACTED}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_command_line_logs_json_lines(tmp_path: Path) -> None:
    """`chatbot --log-format json run` against a homeserver that is not there."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "matrix": {"homeserver": f"http://127.0.0.1:{free_port()}",
                   "user_id": "@bot:example.org", "password": PASSWORD},
        "data_dir": str(tmp_path / "data"),
        "meetings": [{"id": "team", "title": "Team", "room": "!room:example.org",
                      "timezone": "UTC", "start": "2030-01-01 09:00"}],
    }), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "chatbot.cli", "--log-format", "json", "run", "-c", str(config)],
        stderr=subprocess.PIPE, text=True)
    entries: list[dict[str, Any]] = []
    try:
        assert process.stderr is not None
        # The login is retried for ever (and SIGTERM waits for it); its first retry is logged.
        while not entries or entries[-1]["level"] != "WARNING":
            line = process.stderr.readline()
            assert line, f"the bot exited: {entries}"
            assert PASSWORD not in line
            entries.append(json.loads(line))
    finally:
        process.kill()
        process.wait(10)
    assert entries[-1]["logger"] == "chatbot.retry"
    assert entries[-1]["message"].startswith("logging in: homeserver unreachable")


def test_an_unknown_log_format_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatbot.cli", "--log-format", "xml", "check"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--log-format: invalid choice: 'xml' (choose from" in result.stderr
