"""`chatbot demo` as a new user runs it: a whole scripted meeting, and nothing left behind."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

DEMO_TIMEOUT_S = 120


def run_chatbot(
    tmp_path: Path, *args: str, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m chatbot.cli ARGS` (or `python -c CODE`) with its own TMPDIR."""
    temporary = tmp_path / "tmp"
    temporary.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(temporary), "PYTHONIOENCODING": "utf-8"}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "chatbot.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, encoding="utf-8", env=env,
                          timeout=DEMO_TIMEOUT_S, check=False)


def port_is_closed(output: str) -> bool:
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)", output)[1])  # type: ignore[index]
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_the_demo_plays_a_whole_meeting_and_cleans_up(tmp_path: Path) -> None:
    result = run_chatbot(tmp_path, "demo")

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Traceback" not in result.stderr
    assert "[Meeting Bot] Reminder: Demo Team Meeting" in out
    assert "1. Ada Lovelace (10 min) Release planning" in out  # the agenda so far, in the reminder
    assert "[Meeting Bot] Demo Team Meeting is starting now." in out
    assert "[Ada Lovelace] !here\n[Meeting Bot] ✅ on Ada Lovelace's message\n" in out
    assert ("[Grace Hopper] !here Grace Hopper / US Navy / @grace\n"
            "[Meeting Bot] ✅ on Grace Hopper's message\n") in out
    # A short update round: Ada called with a mention, Grace passed over (her update came
    # ahead), the chair last.
    assert ("[Meeting Bot] Update round (3 people). @Ada Lovelace, your 60 seconds (1 of 3; "
            "next: Sam (chair))\n") in out
    assert "[Meeting Bot] Grace Hopper is done already (update posted). @Sam (chair)" in out
    assert "[Meeting Bot] That was everyone: the update round is over.\n" in out
    assert "[Meeting Bot] (reply to Grace Hopper) Agenda for Demo Team Meeting" in out
    assert ("[Meeting Bot] (reply to Ada Lovelace) Sorry, the estimate must be between 1 "
            "and 600 minutes.") in out
    assert "[Sam (chair)] !endmeeting\n[Meeting Bot] ✅ on Sam (chair)'s message\n" in out

    # The last lines are the note as committed to a throwaway git repository.
    assert re.search(r"committed it to a throwaway git repository \(meetings/demo/"
                     r"\d{4}-\d\d-\d\d\.md, commit [0-9a-f]{7,} "
                     r"by chatbot <chatbot@localhost>", out)
    assert re.search(r"\n<!-- chatbot:demo:\d{4}-\d\d-\d\d -->\n# Demo Team Meeting\n", out)
    note = out[out.index("\n# Demo Team Meeting\n\n- **Date:**"):]
    assert out.index("!endmeeting") < out.index(note)
    assert ("## Roll call\n\n- Ada Lovelace / Analytical Engines / @ada\n"
            "- Grace Hopper / US Navy / @grace\n") in note
    assert ("- **Ada Lovelace:** Finished the Bernoulli numbers program  \n"
            "    Next: notes on the Analytical Engine\n") in note
    assert "## Reports and celebrations\n\n- Release 2.0 is out!\n" in note
    assert "## Agenda items\n\n- **Ada Lovelace** (10 min) Release planning\n" in note

    assert list((tmp_path / "tmp").iterdir()) == []
    assert port_is_closed(out)


def test_keep_leaves_the_note_and_the_databases_in_the_folder(tmp_path: Path) -> None:
    keep = tmp_path / "kept"

    result = run_chatbot(tmp_path, "demo", "--keep", str(keep))

    assert result.returncode == 0, result.stdout + result.stderr
    [saved] = (keep / "data" / "notes" / "demo").glob("*.md")
    assert (f"The bot saved the meeting note in {saved}, and committed it to the git "
            f"repository {keep / 'archive.git'} (meetings/demo/{saved.name}, commit ") \
        in result.stdout
    assert (keep / "archive.git" / "HEAD").exists()
    assert saved.read_text(encoding="utf-8").rstrip("\n") in result.stdout
    assert (keep / "data" / "chatbot.db").exists()
    assert (keep / "homeserver" / "homeserver.db").exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert port_is_closed(result.stdout)


def test_keep_refuses_a_folder_that_is_in_use(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    keep.mkdir()
    (keep / "something").write_text("mine", encoding="utf-8")

    result = run_chatbot(tmp_path, "demo", "--keep", str(keep))

    assert result.returncode == 1
    assert "--keep needs a new or empty folder" in result.stderr
    assert (keep / "something").read_text(encoding="utf-8") == "mine"


def test_without_synapse_one_line_says_how_to_install_it(tmp_path: Path) -> None:
    # A None entry in sys.modules makes `synapse` unimportable for this process only.
    hide_synapse = ("import sys; sys.modules['synapse'] = None; "
                    "from chatbot.cli import main; sys.exit(main(['demo']))")

    result = run_chatbot(tmp_path, code=hide_synapse)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "pip install -e '.[demo]'" in result.stderr and "./scripts/demo" in result.stderr
