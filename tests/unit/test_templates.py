"""A meeting's own note template: sandboxed, fed escaped values, checked at load time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from chatbot.config import ConfigError, parse_config
from chatbot.model import EntryKind
from chatbot.render import markdown_to_html, render_note, sample_record

CONFIG = {
    "matrix": {"homeserver": "https://m.example.org", "user_id": "@bot:example.org",
               "password": "x"},
    "meetings": [{"id": "team", "title": "Team", "room": "#team:example.org",
                  "timezone": "Europe/London", "start": "2021-06-17 09:00"}],
}


def with_template(tmp_path: Path, text: str) -> dict:
    (tmp_path / "note.md.j2").write_text(text, encoding="utf-8")
    meeting = {**CONFIG["meetings"][0], "template": "note.md.j2"}
    return {**CONFIG, "meetings": [meeting]}


def test_a_custom_template_shapes_the_note(tmp_path: Path) -> None:
    config = parse_config(with_template(tmp_path, (
        "# {{ title }}: {{ date }}\n\n"
        "{% for line in roll_call %}* {{ line }}\n{% endfor %}\n"
        "{% for item in agenda %}{{ loop.index }}. {{ item.text }} ({{ item.timing }})\n"
        "{% endfor %}")), base_dir=tmp_path)
    series = config.meetings[0]
    note = render_note(sample_record(), series.timezone, {}, template=series.template_source)
    assert note == "# Sample: Thursday 17th June 2021\n\n* Ada / Org / @ada\n1. Item (took 1 min)\n"


def test_chat_text_stays_escaped_whatever_the_template_does(tmp_path: Path) -> None:
    record = sample_record()
    hostile = "## owned <img src=x onerror=alert(1)>"
    entries = tuple(replace(e, text=hostile) if e.kind is EntryKind.UPDATE else e
                    for e in record.entries)
    config = parse_config(with_template(
        tmp_path, "{% for u in updates %}{{ u.text }}\n{% endfor %}"), base_dir=tmp_path)
    note = render_note(replace(record, entries=entries), ZoneInfo("UTC"), {},
                       template=config.meetings[0].template_source)
    assert note.startswith("\\## owned &lt;img")
    html = markdown_to_html(note)
    assert "<h2" not in html and "<img" not in html


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("{% for x in roll_call %}", "line 1: Unexpected end of template",
                     id="syntax error"),
        pytest.param("{{ titel }}", "'titel' is undefined", id="misspelt name"),
        pytest.param("{{ ''.__class__.__mro__ }}", "unsafe", id="sandbox escape"),
    ],
)
def test_a_broken_template_stops_startup_with_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(with_template(tmp_path, text), base_dir=tmp_path)
    assert str(error.value).startswith("meetings[0].template: ")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_template_file_is_named(tmp_path: Path) -> None:
    meeting = {**CONFIG["meetings"][0], "template": "nowhere.md.j2"}
    with pytest.raises(ConfigError, match=r"^meetings\[0\]\.template: cannot read .*nowhere"):
        parse_config({**CONFIG, "meetings": [meeting]}, base_dir=tmp_path)


def test_a_template_that_fails_at_close_falls_back_to_the_standard_note() -> None:
    note = render_note(sample_record(), ZoneInfo("UTC"), {}, template="{{ 1 / 0 }}")
    assert note.startswith("# Sample\n") and "## Roll call" in note


def test_a_template_that_fails_on_the_sample_meeting_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^meetings\[0\]\.template: .*fails on a sample"):
        parse_config(with_template(tmp_path, "{{ 1 / 0 }}"), base_dir=tmp_path)
