"""`publish.github`: the meeting's GitHub issue; every mistake names its YAML key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from chatbot.config import ConfigError, parse_config
from tests.unit.test_config import valid


def with_github(**github: Any) -> dict[str, Any]:
    config = valid()
    config["meetings"][0]["publish"] = {"github": github}
    return config


def test_defaults() -> None:
    config = parse_config(with_github(repo="jupyterhub/team-compass", token_env="GITHUB_TOKEN"))
    github = config.meetings[0].publish.github
    assert github is not None
    assert github.api_url == "https://api.github.com"
    assert github.issue_ahead == timedelta(days=7)
    assert github.title == "{title}: {date}"
    assert github.agenda_label is None


def test_an_agenda_label_is_taken() -> None:
    config = parse_config(with_github(repo="a/b", token_env="T", agenda_label="meeting-agenda"))
    github = config.meetings[0].publish.github
    assert github is not None and github.agenda_label == "meeting-agenda"


def test_a_relative_token_file_is_found_from_the_config_file() -> None:
    config = parse_config(with_github(repo="a/b", token_file="secrets/gh"),
                          base_dir=Path("/etc/chatbot"))
    github = config.meetings[0].publish.github
    assert github is not None and github.token_file == Path("/etc/chatbot/secrets/gh")


@pytest.mark.parametrize(
    ("github", "key", "expected"),
    [
        ({"token_env": "T"}, "meetings[0].publish.github.repo", "required"),
        ({"repo": "team-compass", "token_env": "T"}, "meetings[0].publish.github.repo",
         "expected owner/name"),
        ({"repo": "a/b"}, "meetings[0].publish.github", "exactly one of `token_env`"),
        ({"repo": "a/b", "token_env": "T", "token_file": "f"}, "meetings[0].publish.github",
         "exactly one of `token_env`"),
        ({"repo": "a/b", "token_env": "ghp_0123456789abcdef0123456789abcdef"},
         "meetings[0].publish.github.token_env", "expected the name of an environment"),
        ({"repo": "a/b", "token_env": "T", "token": "ghp_x"},
         "meetings[0].publish.github.token", "is not a known key"),
        ({"repo": "a/b", "token_env": "T", "api_url": "api.github.com"},
         "meetings[0].publish.github.api_url", "expected an http(s) URL"),
        ({"repo": "a/b", "token_env": "T", "issue_ahead": "0s"},
         "meetings[0].publish.github.issue_ahead", "longer than zero"),
        ({"repo": "a/b", "token_env": "T", "title": "{title} {when}"},
         "meetings[0].publish.github.title", "expected only {date} {id} {title}"),
        ({"repo": "a/b", "token_env": "T", "agenda_label": ""},
         "meetings[0].publish.github.agenda_label", ""),
        ({"repo": "a/b", "token_env": "T", "agenda_label": "agenda,help"},
         "meetings[0].publish.github.agenda_label", "expected one label's name"),
    ],
)
def test_a_mistake_names_its_key(github: dict[str, Any], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(with_github(**github))
    message = str(error.value)
    assert message.startswith(f"{key}: "), message
    assert expected in message
    assert "ghp_" not in message
