"""The optional `http` section: where the calendar feeds are served, or nothing."""

from __future__ import annotations

from typing import Any

import pytest

from chatbot.config import ConfigError, parse_config
from tests.unit.test_config import broken, top, valid


def test_without_an_http_section_nothing_is_served() -> None:
    assert parse_config(valid()).http is None
    assert parse_config(broken(top(http=None))).http is None


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("localhost:65535", "localhost", 65535),
        ("bot-1.example.org:1", "bot-1.example.org", 1),
        ("[::1]:8080", "::1", 8080),
        ("[::]:8443", "::", 8443),
    ],
)
def test_listen_is_host_and_port(listen: str, host: str, port: int) -> None:
    http = parse_config(broken(top(http={"listen": listen}))).http
    assert http is not None
    assert (http.listen, http.host, http.port) == (listen, host, port)
    assert http.base_url == f"http://{listen}"


EXPECTED = "expected HOST:PORT such as 127.0.0.1:8080, localhost:8080 or [::1]:8080"


@pytest.mark.parametrize(
    ("http", "path", "expected"),
    [
        pytest.param({"listen": "8080"}, "http.listen", f"{EXPECTED}, got '8080'", id="port only"),
        pytest.param({"listen": 8080}, "http.listen", f"{EXPECTED}, got 8080", id="a number"),
        pytest.param({"listen": "::1:8080"}, "http.listen", f"{EXPECTED}, got '::1:8080'",
                     id="ipv6 without brackets"),
        pytest.param({"listen": "[::g]:8080"}, "http.listen",
                     f"{EXPECTED}; '::g' is not an IP address or host name", id="bad ipv6"),
        pytest.param({"listen": "[127.0.0.1]:8080"}, "http.listen",
                     "'127.0.0.1' is not an IP address or host name", id="ipv4 in brackets"),
        pytest.param({"listen": "999.1.1.1:80"}, "http.listen",
                     f"{EXPECTED}; '999.1.1.1' is not an IP address or host name",
                     id="bad ipv4"),
        pytest.param({"listen": "-bot.example.org:80"}, "http.listen",
                     "'-bot.example.org' is not an IP address or host name", id="bad name"),
        pytest.param({"listen": "my host:80"}, "http.listen", f"{EXPECTED}, got 'my host:80'",
                     id="space in the host"),
        pytest.param({"listen": "localhost:0"}, "http.listen",
                     "expected a port from 1 to 65535, got 0", id="port zero"),
        pytest.param({"listen": "localhost:65536"}, "http.listen",
                     "expected a port from 1 to 65535, got 65536", id="port too large"),
        pytest.param({"listen": "http://localhost:8080"}, "http.listen", EXPECTED,
                     id="a URL"),
        pytest.param({}, "http.listen", "is required", id="listen missing"),
        pytest.param({"listen": "localhost:8080", "port": 1}, "http.port", "is not a known key",
                     id="unknown key"),
        pytest.param("localhost:8080", "http", "expected a mapping of keys to values",
                     id="not a mapping"),
    ],
)
def test_a_bad_http_section_is_one_line_naming_the_path(
    http: Any, path: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(broken(top(http=http)))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
