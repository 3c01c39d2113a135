"""Log lines: one per event, as text for people or JSON for machines, secrets redacted.

The convention for ids: a log call that concerns a room, an event or a meeting passes
them as extras, besides naming them in its message where that reads well:

    log.info("handled %s (%s) in %s", event_id, name, room_id,
             extra={"room_id": room_id, "event_id": event_id})

Both formats show the extras `room_id`, `event_id` and `meeting_id` when present: the
JSON format as fields of the same name, the text format as ` room=… event=… meeting=…`
at the end of the line. So a log collector can select every line about a room without
parsing messages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# (extra attribute, JSON field, text label)
ID_FIELDS = (("room_id", "room_id", "room"), ("event_id", "event_id", "event"),
             ("meeting_id", "meeting_id", "meeting"))
REDACTED = "[redacted]"
HANDLER_NAME = "chatbot"
# nio and the HTTP stack narrate every request; keep them to warnings.
NOISY_LOGGERS = ("nio", "aiohttp", "aiosqlite", "apscheduler")


def _ids(record: logging.LogRecord) -> list[tuple[str, str, Any]]:
    return [(field, label, getattr(record, attribute))
            for attribute, field, label in ID_FIELDS
            if getattr(record, attribute, None) is not None]


class TextFormatter(logging.Formatter):
    """The usual one-line text, with ` room=… event=… meeting=…` when the call passed them."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Before the traceback, which the base class appends on lines of its own.
        line = super().formatMessage(record)
        ids = "".join(f" {label}={value}" for _, label, value in _ids(record))
        return line + ids


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, the ids
    passed as extras, and `exception` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field, _, value in _ids(record):
            entry[field] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii keeps each line one line whatever the message holds.
        return json.dumps(entry, ensure_ascii=True, default=str)


class RedactSecrets(logging.Filter):
    """Replaces every given secret in a record's message and traceback with `[redacted]`.

    The code never logs the password or an access token on purpose; this is the net for
    what it does not control: a library's exception or debug line that quotes a request
    (an access token in a URL), or a value echoed back in an error. It is installed on
    the handlers, not on a logger, because a logger's filters do not see the records
    that propagate to it from other loggers (nio, aiohttp).
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Redact `secret` too from now on (an access token obtained at login, say)."""
        if secret and secret not in self._secrets:
            self._secrets.append(secret)
            # The longest first, so a secret containing another is hidden whole.
            self._secrets.sort(key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True  # a bad format string: the handler reports it, with no message text
        redacted = self.redact(message)
        if redacted != message:
            # The message is final from here on: its arguments are already in it.
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse `exc_text` once it is set, so the traceback is redacted once.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(*, verbose: bool, log_format: LogFormat) -> RedactSecrets:
    """Log to standard error in `log_format`; returns the redaction filter to give secrets to."""
    redaction = RedactSecrets()
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    handler.addFilter(redaction)
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    # Replace only our own handler from an earlier call; others (pytest's) stay.
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redaction
