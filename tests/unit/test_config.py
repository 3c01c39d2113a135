"""The configuration file: every mistake is one line naming the YAML path and what was expected."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from chatbot.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def valid() -> dict[str, Any]:
    """A complete, valid configuration as YAML would parse it; each case breaks one thing."""
    return {
        "matrix": {
            "homeserver": "https://matrix.example.org",
            "user_id": "@bot:example.org",
            "password": "secret",
        },
        "data_dir": "data",
        "command_prefix": "!",
        "meetings": [{
            "id": "team",
            "title": "Example Team Meeting",
            "room": "#team:example.org",
            "timezone": "Europe/London",
            "start": "2021-06-17 09:00",
            "rrule": "FREQ=MONTHLY;BYDAY=+3TH",
            "duration": "1h",
            "reminders": ["1h", "1d"],
            "grace": "30m",
            "chairs": ["@chair:example.org"],
            "links": {
                "notes": "https://notes.example.org/team",
                "code_of_conduct": "https://example.org/conduct",
            },
        }],
    }


def meeting(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        config["meetings"][0].update(changes)
    return change


def matrix(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        config["matrix"].update(changes)
    return change


def top(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config.update(changes)


def without(*path: str | int) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        node: Any = config
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
    return change


def broken(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    config = valid()
    change(config)
    return config


def test_the_valid_configuration_is_valid() -> None:
    config = parse_config(valid(), base_dir=Path("/srv/bot"))
    (team,) = config.meetings
    assert team.reminders == (timedelta(days=1), timedelta(hours=1))  # longest lead first
    assert team.duration == timedelta(hours=1)
    assert team.timezone.key == "Europe/London"
    assert config.data_dir == Path("/srv/bot/data")
    assert config.meeting("team") is team and config.meeting("other") is None


@pytest.mark.parametrize(
    ("change", "path", "expected"),
    [
        pytest.param(without("matrix"), "matrix", "is required", id="matrix missing"),
        pytest.param(top(matrix="x"), "matrix", "expected a mapping", id="matrix not a mapping"),
        pytest.param(matrix(homeserver="matrix.example.org"), "matrix.homeserver",
                     "expected an http(s) URL", id="homeserver without scheme"),
        pytest.param(matrix(user_id="bot"), "matrix.user_id",
                     "expected something like @someone:example.org, got 'bot'",
                     id="user id without @ and server"),
        pytest.param(matrix(password=None), "matrix",
                     "expected `password` (first login only) or `access_token`",
                     id="no credentials"),
        pytest.param(matrix(passwd="x"), "matrix.passwd", "is not a known key",
                     id="misspelt matrix key"),
        pytest.param(matrix(password=5), "matrix.password", "expected text",
                     id="password not text"),
        pytest.param(top(command_prefix=""), "command_prefix", "at least 1 character",
                     id="empty prefix"),
        pytest.param(top(command_prefix="! "), "command_prefix", "should match pattern",
                     id="prefix with a space"),
        pytest.param(top(command_prefix="toolong"), "command_prefix", "at most 5 characters",
                     id="prefix too long"),
        pytest.param(top(data_dir=None), "data_dir", "not a valid path", id="data_dir null"),
        pytest.param(top(meetings=[]), "meetings", "expected at least one entry",
                     id="no meetings"),
        pytest.param(top(meetings={"id": "team"}), "meetings", "expected a list",
                     id="meetings not a list"),
        pytest.param(top(colour="blue"), "colour", "is not a known key", id="unknown top key"),
        pytest.param(meeting(id="Team Sync"), "meetings[0].id",
                     "expected something like hubs-team (lowercase letters, digits, -)",
                     id="meeting id with capitals and space"),
        pytest.param(without("meetings", 0, "title"), "meetings[0].title", "is required",
                     id="title missing"),
        pytest.param(meeting(title=""), "meetings[0].title", "at least 1 character",
                     id="empty title"),
        pytest.param(meeting(room="team"), "meetings[0].room",
                     "expected something like #room:example.org or !roomid:example.org",
                     id="room neither alias nor id"),
        pytest.param(meeting(timezone="Mars/Olympus"), "meetings[0].timezone",
                     "expected an IANA time zone such as Europe/London or UTC, got 'Mars/Olympus'",
                     id="unknown time zone"),
        pytest.param(meeting(timezone="BST"), "meetings[0].timezone",
                     "expected an IANA time zone", id="abbreviation is not a zone"),
        pytest.param(without("meetings", 0, "timezone"), "meetings[0].timezone", "is required",
                     id="time zone missing"),
        pytest.param(meeting(start="17/06/2021 9am"), "meetings[0].start",
                     "expected local time as 'YYYY-MM-DD HH:MM'", id="start in another layout"),
        pytest.param(meeting(start="2021-02-30 09:00"), "meetings[0].start",
                     "expected local time as 'YYYY-MM-DD HH:MM'", id="start on 30 February"),
        pytest.param(meeting(start="2021-06-17T09:00:00+01:00"), "meetings[0].start",
                     "expected local time", id="start with an offset in text"),
        pytest.param(meeting(rrule="FREQ=SOMETIMES"), "meetings[0].rrule",
                     "expected an RFC 5545 rule such as FREQ=MONTHLY;BYDAY=+3TH",
                     id="rule with a bad frequency"),
        pytest.param(meeting(rrule="FREQ=WEEKLY\nFREQ=DAILY"), "meetings[0].rrule",
                     "expected an RFC 5545 rule", id="two rules"),
        pytest.param(meeting(duration="0m"), "meetings[0].duration",
                     "expected a duration longer than zero", id="zero duration"),
        pytest.param(meeting(duration=60), "meetings[0].duration",
                     "expected a duration such as 45s, 10m, 1h30m or 7d, got 60",
                     id="duration as a bare number"),
        pytest.param(meeting(reminders=["1h", "60m"]), "meetings[0].reminders",
                     "expected each reminder lead time once", id="the same reminder twice"),
        pytest.param(meeting(reminders=["1h", "soon"]), "meetings[0].reminders[1]",
                     "expected a duration such as 45s, 10m, 1h30m or 7d, got 'soon'",
                     id="second reminder not a duration"),
        pytest.param(meeting(reminders="1h"), "meetings[0].reminders", "expected a list",
                     id="reminders not a list"),
        pytest.param(meeting(grace="-5m"), "meetings[0].grace", "expected a duration",
                     id="negative grace"),
        pytest.param(meeting(update_seconds=0), "meetings[0].update_seconds",
                     "expected a whole number of at least 1, got 0", id="no update time"),
        pytest.param(meeting(update_seconds="1m"), "meetings[0].update_seconds",
                     "expected a whole number", id="update time not in seconds"),
        pytest.param(meeting(update_seconds=7200), "meetings[0].update_seconds",
                     "less than or equal to 3600", id="update time over an hour"),
        pytest.param(meeting(nudge="0s"), "meetings[0].nudge",
                     "expected a duration longer than zero", id="nudge of nothing"),
        pytest.param(meeting(nudge="tomorrow"), "meetings[0].nudge",
                     "expected a duration such as 45s", id="nudge not a duration"),
        pytest.param(meeting(chairs=["@chair:example.org", "chair"]), "meetings[0].chairs[1]",
                     "expected something like @someone:example.org, got 'chair'",
                     id="second chair not a user id"),
        pytest.param(meeting(links={"notes": "notes.example.org"}), "meetings[0].links.notes",
                     "expected an http(s) URL without spaces, got 'notes.example.org'",
                     id="link without scheme"),
        pytest.param(meeting(links={"code_of_conduct": "javascript:alert(1)"}),
                     "meetings[0].links.code_of_conduct", "expected an http(s) URL",
                     id="javascript link"),
        pytest.param(meeting(links={"wiki": "https://example.org"}), "meetings[0].links.wiki",
                     "is not a known key", id="unknown link"),
        pytest.param(meeting(color="red"), "meetings[0].color", "is not a known key",
                     id="unknown meeting key"),
        pytest.param(lambda c: c["meetings"].append(copy.deepcopy(c["meetings"][0])), "meetings",
                     "expected unique meeting ids, 'team' is used twice", id="duplicate ids"),
        pytest.param(lambda c: c["meetings"].append({**c["meetings"][0], "id": "b", "room": "x"}),
                     "meetings[1].room", "expected something like #room:example.org",
                     id="second meeting names its index"),
        pytest.param(top(limits={"commands": 0}), "limits.commands",
                     "expected a whole number of at least 1, got 0", id="no commands allowed"),
        pytest.param(top(limits={"commands": "ten"}), "limits.commands",
                     "expected a whole number of at least 1, got 'ten'", id="commands as text"),
        pytest.param(top(limits={"commands": True}), "limits.commands",
                     "expected a whole number", id="commands as a yes/no"),
        pytest.param(top(limits={"per": "0s"}), "limits.per",
                     "expected a duration longer than zero", id="zero refill period"),
        pytest.param(top(limits={"per": 10}), "limits.per",
                     "expected a duration such as 45s, 10m, 1h30m or 7d, got 10",
                     id="refill period as a bare number"),
        pytest.param(top(limits={"agenda_items": 2.5}), "limits.agenda_items",
                     "expected a whole number of at least 1, got 2.5", id="fractional agenda cap"),
        pytest.param(top(limits={"entries_per_person": -1}), "limits.entries_per_person",
                     "expected a whole number of at least 1, got -1", id="negative entry cap"),
        pytest.param(top(limits={"command": 5}), "limits.command", "is not a known key",
                     id="misspelt limits key"),
        pytest.param(top(limits=[10]), "limits", "expected a mapping", id="limits not a mapping"),
        pytest.param(meeting(template_source="{{ note }}"), "meetings[0].template_source",
                     "is not a known key", id="template text is read from the file, not set"),
        pytest.param(lambda c: c["meetings"][0].update({None: 1}), "meetings[0]",
                     "expected text for each key, got None", id="a key that is not text"),
        pytest.param(meeting(archive="open"), "meetings[0].archive",
                     "expected 'private' or 'public', got 'open'", id="archive not a choice"),
        pytest.param(top(encryption={"enabled": "no"}), "encryption.enabled",
                     "expected true or false", id="quoted no is not a yes/no"),
    ],
)
def test_a_broken_config_is_one_line_naming_the_path(
    change: Callable[[dict[str, Any]], None], path: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(broken(change))
    message = str(error.value)
    assert len(message.splitlines()) == 1 and "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    assert expected in message


def test_limits_have_defaults_and_may_be_set_one_by_one() -> None:
    defaults = parse_config(valid()).limits
    assert (defaults.commands, defaults.per, defaults.agenda_items,
            defaults.entries_per_person) == (10, timedelta(seconds=10), 50, 30)
    changed = parse_config({**valid(), "limits": {"commands": 3, "per": "1m"}}).limits
    assert (changed.commands, changed.per, changed.agenda_items) == (3, timedelta(minutes=1), 50)


@pytest.mark.parametrize("data", [None, [], "matrix", 5], ids=["empty", "list", "text", "number"])
def test_a_config_that_is_not_a_mapping(data: Any) -> None:
    with pytest.raises(ConfigError, match=r"^expected a mapping with `matrix` and `meetings` at "
                                          r"the top level$"):
        parse_config(data)


def test_start_may_be_a_yaml_timestamp_without_an_offset() -> None:
    config = parse_config(broken(meeting(**yaml.safe_load("start: 2021-06-17 09:00:00"))))
    assert config.meetings[0].start.isoformat() == "2021-06-17T09:00:00"
    with pytest.raises(ConfigError, match=r"^meetings\[0\]\.start: expected local time without "):
        parse_config(broken(meeting(**yaml.safe_load("start: 2021-06-17 09:00:00+01:00"))))


def test_a_key_with_a_line_break_still_gives_one_line() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(broken(meeting(**{"title\nsuffix": "x"})))
    assert len(str(error.value).splitlines()) == 1


# --- loading from a file ---------------------------------------------------------------------


def write(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"{path}: no such file; copy config.example.yaml and edit it, or pass -c PATH"
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param("matrix: a: b\n", "line 1, column 10", id="mapping value in a value"),
        pytest.param("matrix:\n  homeserver: https://x\n bad: 1\n", "line 3, column 2",
                     id="bad indentation"),
        pytest.param("\tmatrix: 1\n", "line 1, column 1", id="tab"),
    ],
)
def test_load_config_invalid_yaml_says_where(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert re.fullmatch(rf"{re.escape(str(path))}: {where}: invalid YAML \([^\n]+\)",
                        str(error.value)), str(error.value)


@pytest.mark.parametrize("text", ["", "- matrix\n- meetings\n", "just text\n"],
                         ids=["empty file", "a list", "a scalar"])
def test_load_config_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"{path}: expected a mapping with `matrix` and `meetings` at the top level"
    )


def test_load_config_error_names_the_file_then_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(broken(meeting(timezone="Nowhere/Special"))))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: meetings[0].timezone: expected an IANA time zone")


def test_load_config_resolves_a_relative_data_dir_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "chatbot"
    folder.mkdir(parents=True)
    path = write(folder, yaml.safe_dump(broken(top(data_dir="state/db"))))
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_config(Path("etc/chatbot/config.yaml"))
    assert config.data_dir == folder / "state" / "db"
    assert not (folder / "state").exists(), "loading must not create anything"
    assert load_config(path).data_dir == folder / "state" / "db"


def test_load_config_keeps_an_absolute_data_dir(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(broken(top(data_dir="/var/lib/chatbot"))))
    assert load_config(path).data_dir == Path("/var/lib/chatbot")


# --- `chatbot check` ---------------------------------------------------------------------------


def run_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatbot.cli", "check", "-c", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("matrix: a: b\n", "invalid YAML", id="invalid YAML"),
        pytest.param(yaml.safe_dump(broken(meeting(timezone="Mars/Olympus"))),
                     "meetings[0].timezone: expected an IANA time zone", id="bad time zone"),
    ],
)
def test_check_a_bad_config_exits_2_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    result = run_check(write(tmp_path, text))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"chatbot: {tmp_path / 'config.yaml'}: ")
    assert message in result.stderr
    assert result.stdout == ""


def test_check_a_good_config_lists_three_occurrences_with_reminders(tmp_path: Path) -> None:
    config = broken(meeting(rrule="FREQ=WEEKLY;BYDAY=TH", start="2021-06-17 09:00",
                            reminders=["1d", "1h"]))
    path = write(tmp_path, yaml.safe_dump(config))
    result = run_check(path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: valid, 1 meeting; data in {tmp_path / 'data'}"
    assert lines[1:3] == ["", "team: Example Team Meeting in #team:example.org"]
    date = r"Thursday \d{1,2}(st|nd|rd|th) \w+ \d{4}"
    eve = r"Wednesday \d{1,2}(st|nd|rd|th) \w+ \d{4}"
    utc = r"\((0[89]):00 UTC\)"
    patterns = [
        rf"  {date}, 9AM Europe/London {utc}",
        rf"    reminder 1d before: {eve}, 9AM Europe/London {utc}",
        rf"    reminder 1h before: {date}, 8AM Europe/London \((0[78]):00 UTC\)",
    ] * 3
    assert len(lines[3:]) == len(patterns), result.stdout
    for line, pattern in zip(lines[3:], patterns, strict=True):
        assert re.fullmatch(pattern, line), line
    assert not (tmp_path / "data").exists(), "check must not create the data folder"
