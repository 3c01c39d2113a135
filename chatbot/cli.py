"""The `chatbot` command line: run, check, notes, publish, ics, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import date
from pathlib import Path

from chatbot import __version__
from chatbot.config import Config, ConfigError, load_config
from chatbot.logs import LOG_FORMATS, RedactSecrets
from chatbot.logs import configure as configure_logging
from chatbot.model import Entry, utc_now
from chatbot.publish.git import without_credentials
from chatbot.recurrence import elapsed, format_duration
from chatbot.render import format_date, format_time
from chatbot.store import StoreError

EXIT_CONFIG = 2

log = logging.getLogger("chatbot")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatbot",
        description="A Matrix meeting bot: announces and reminds, takes roll call, updates "
                    "and agenda from chat, and posts and saves the meeting note.",
    )
    parser.add_argument("--version", action="version", version=f"chatbot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="text lines for people (default), or one JSON object per line "
                             "for log collectors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", type=Path, default=Path("config.yaml"),
                         help="the YAML configuration file (default: config.yaml)")
        return sub

    with_config("run", "run the bot until stopped (Ctrl-C or SIGTERM)")
    check_command = with_config(
        "check", "validate the configuration and print each meeting's next three "
                 "occurrences with their reminder times")
    check_command.add_argument(
        "--online", action="store_true",
        help="also try each publishing target live (the git archive's remote and key, "
             "the GitHub token and repository, the HackMD token and team), changing nothing")
    notes = with_config("notes", "print a meeting's note from the database (with HackMD: "
                                 "the page as it was read back at the close)")
    notes.add_argument("meeting_id", metavar="MEETING_ID", help="the meeting's `id` in the config")
    notes.add_argument("--date", type=date.fromisoformat, metavar="YYYY-MM-DD",
                       help="the meeting held on this date (default: the last one)")
    publish = with_config(
        "publish", "publish a held meeting's note again to the targets under its `publish:` "
                   "(the git archive or its pull request, the GitHub issue), for example "
                   "after fixing a remote, key or token; the note is the one kept at the close "
                   "(with HackMD, the page as read back); safe to "
                   "repeat, and beside a running bot: a note already there is left alone")
    publish.add_argument("meeting_id", metavar="MEETING_ID",
                         help="the meeting's `id` in the config")
    publish.add_argument("--date", type=date.fromisoformat, metavar="YYYY-MM-DD",
                         help="the meeting held on this date (default: the last one)")
    ics = with_config("ics", "write an iCalendar file of the meetings: recurrence, time zone, "
                             "title, links and the next meeting's agenda from the database")
    ics.add_argument("meeting_id", metavar="MEETING_ID", nargs="?",
                     help="the meeting's `id` in the config (default: every meeting)")
    ics.add_argument("-o", "--output", type=Path, metavar="FILE",
                     help="write to FILE (default: standard output)")
    backup = with_config("backup", "copy the database consistently while the bot runs "
                                   "(SQLite's online backup)")
    backup.add_argument("file", type=Path, metavar="FILE",
                        help="where to write the copy (replaced atomically if it exists)")
    demo = commands.add_parser(
        "demo", help="play a scripted meeting on a throwaway local homeserver",
        description="Start a throwaway Synapse on 127.0.0.1, run the bot and three people "
                    "through a short meeting, and print the conversation and the note. "
                    "Needs the `demo` extra (matrix-synapse).")
    demo.add_argument("--keep", type=Path, metavar="DIR",
                      help="keep the homeserver and bot data in DIR instead of deleting them")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    redaction = configure_logging(verbose=args.verbose, log_format=args.log_format)
    if args.command == "demo":
        from chatbot.demo.script import run_demo

        return run_demo(keep=args.keep)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"chatbot: {error}", file=sys.stderr)
        return EXIT_CONFIG
    # The code never logs these; the filter catches a library quoting them back.
    redaction.add(config.matrix.password)
    redaction.add(config.matrix.access_token)
    try:
        if args.command == "check":
            code = check(config, args.config)
            return asyncio.run(check_online(config)) if args.online else code
        if args.command == "notes":
            return asyncio.run(print_note(config, args.meeting_id, args.date))
        if args.command == "publish":
            return asyncio.run(publish_again(config, args.meeting_id, args.date))
        if args.command == "ics":
            return asyncio.run(write_calendar(config, args.meeting_id, args.output))
        if args.command == "backup":
            return backup(config, args.file)
        return asyncio.run(run(config, redaction))
    except StoreError as error:
        print(f"chatbot: {error}", file=sys.stderr)
        return 1


def backup(config: Config, target: Path) -> int:
    from chatbot.app import database_path
    from chatbot.store import backup_database

    version = backup_database(database_path(config), target)
    size = target.stat().st_size
    print(f"{target}: {size:,} bytes, schema version {version}, "
          f"copied from {database_path(config)}")
    return 0


def check(config: Config, path: Path) -> int:
    now = utc_now()
    count = len(config.meetings)
    print(f"{path}: valid, {count} meeting{'s' if count != 1 else ''}; data in {config.data_dir}")
    for meeting in config.meetings:
        zone = meeting.timezone
        print(f"\n{meeting.id}: {meeting.title} in {meeting.room}")
        if meeting.publish.git is not None:
            git = meeting.publish.git
            print(f"  publishes to the git archive: {without_credentials(git.remote)}, "
                  f"branch {git.branch}, {git.path} ({git.mode})")
        if meeting.publish.github is not None:
            github = meeting.publish.github
            print(f"  opens an issue {format_duration(github.issue_ahead)} ahead in "
                  f"{github.repo} ({github.api_url}), closed with the note")
        if meeting.publish.hackmd is not None:
            hackmd = meeting.publish.hackmd
            where = f"team {hackmd.team}" if hackmd.team else "the token's own workspace"
            print(f"  makes a HackMD page {format_duration(hackmd.notes_ahead)} ahead in "
                  f"{where} ({hackmd.api_url}; read: {hackmd.read}, write: {hackmd.write}); "
                  "the note is the page read back at the close")
        occurrences = meeting.schedule.next_occurrences(now, 3)
        if not occurrences:
            print("  no occurrences ahead")
        for occurrence in occurrences:
            print(f"  {format_date(occurrence.start)}, {format_time(occurrence.start, zone)}")
            for lead in meeting.reminders:
                due = elapsed(occurrence.start, -lead)
                print(f"    reminder {format_duration(lead)} before: "
                      f"{format_date(due.astimezone(zone))}, {format_time(due, zone)}")
    return 0


async def check_online(config: Config) -> int:
    """Try every meeting's publishing targets; 1 if any cannot work as configured."""
    from chatbot.app import publish_targets
    from chatbot.publish import HACKMD_NOTE, PublishFailed, job_kinds

    targets = publish_targets(config)
    failed = False
    print()
    for series in config.meetings:
        kinds = set(job_kinds(series.publish))
        if series.publish.hackmd is not None:
            kinds.add(HACKMD_NOTE)
        for target in (target for target in targets if target.kind in kinds):
            where = target.label(series.id)
            try:
                found = await target.check(series.id)
            except PublishFailed as error:
                failed = True
                print(f"{series.id}: {where}: FAILED: {error}")
            else:
                print(f"{series.id}: {where}: {found}")
    return 1 if failed else 0


async def print_note(config: Config, meeting_id: str, on: date | None) -> int:
    from chatbot.app import database_path
    from chatbot.meetings import final_note_of
    from chatbot.store import Store

    series = config.meeting(meeting_id)
    if series is None:
        return _unknown_meeting(config, meeting_id)
    if not database_path(config).exists():
        print(f"chatbot: no database at {database_path(config)} yet; run the bot first",
              file=sys.stderr)
        return 1
    store = await Store.open(database_path(config))
    try:
        held = await store.meetings_of_series(series.id)
        if on is not None:
            held = [m for m in held if m.held_at.astimezone(series.timezone).date() == on]
        if not held:
            when = f" on {on.isoformat()}" if on else ""
            print(f"chatbot: no {meeting_id} meeting was held{when}", file=sys.stderr)
            return 1
        print(await final_note_of(store, series, held[-1]), end="")
        return 0
    finally:
        await store.close()


async def publish_again(config: Config, meeting_id: str, on: date | None) -> int:
    """Publish a held sitting's note now, from here, to each of its targets.

    It runs the targets directly rather than queueing jobs for the bot: the answer is
    printed at once and no running bot is needed. Each target is idempotent, so a note
    already published (by the bot, or by an earlier run) is left as it is.
    """
    from chatbot.app import database_path, publish_targets
    from chatbot.meetings import final_note_of, note_path, sitting_of
    from chatbot.publish import PublishFailed, job_kinds
    from chatbot.store import Store

    series = config.meeting(meeting_id)
    if series is None:
        return _unknown_meeting(config, meeting_id)
    kinds = job_kinds(series.publish)
    targets = [target for target in publish_targets(config) if target.kind in kinds]
    if not targets:
        print(f"chatbot: meeting {meeting_id!r} has no targets under `publish:` in the config",
              file=sys.stderr)
        return EXIT_CONFIG
    if not database_path(config).exists():
        print(f"chatbot: no database at {database_path(config)} yet; run the bot first",
              file=sys.stderr)
        return 1
    store = await Store.open(database_path(config))
    try:
        held = [m for m in await store.meetings_of_series(series.id) if m.ended_at is not None]
        if on is not None:
            held = [m for m in held if m.held_at.astimezone(series.timezone).date() == on]
        if not held:
            when = f" on {on.isoformat()}" if on else ""
            print(f"chatbot: no {meeting_id} meeting was held and closed{when}",
                  file=sys.stderr)
            return 1
        meeting = held[-1]
        sitting = await sitting_of(store, series, meeting,
                                   await note_path(store, series, meeting),
                                   await final_note_of(store, series, meeting))
    finally:
        await store.close()
    failed = False
    for target in targets:
        where = target.label(series.id)
        try:
            done = await target.publish(sitting)
        except PublishFailed as error:
            failed = True
            print(f"chatbot: the note of {sitting.name} was not published to {where}: {error}",
                  file=sys.stderr)
        else:
            print(f"the note of {sitting.name} is in {where}: {done}")
    return 1 if failed else 0


def _unknown_meeting(config: Config, meeting_id: str) -> int:
    known = ", ".join(m.id for m in config.meetings)
    print(f"chatbot: no meeting {meeting_id!r} in the config; known: {known}", file=sys.stderr)
    return EXIT_CONFIG


async def write_calendar(config: Config, meeting_id: str | None, output: Path | None) -> int:
    """The meetings' iCalendar file, with agendas from the database if there is one yet."""
    from chatbot.agenda_feed import next_agenda
    from chatbot.app import database_path
    from chatbot.calendar import build_calendar
    from chatbot.store import Store

    if meeting_id is None:
        chosen = list(config.meetings)
    elif (series := config.meeting(meeting_id)) is not None:
        chosen = [series]
    else:
        return _unknown_meeting(config, meeting_id)
    now = utc_now()
    agendas: dict[str, list[Entry]] = {series.id: [] for series in chosen}
    # Only an existing database is read: exporting must not create one.
    if database_path(config).exists():
        store = await Store.open(database_path(config))
        try:
            for series in chosen:
                agendas[series.id] = await next_agenda(store, series, now)
        finally:
            await store.close()
    data = build_calendar([(series, agendas[series.id]) for series in chosen], now=now,
                          prefix=config.command_prefix)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    # Whole or not at all: the file may be served or synced while it is written.
    partial = output.with_name(f".{output.name}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(output)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        print(f"chatbot: {output}: cannot be written ({error.strerror})", file=sys.stderr)
        return 1
    return 0


async def run(config: Config, redaction: RedactSecrets | None = None) -> int:
    from chatbot.app import BotApp
    from chatbot.matrix import LoginFailed

    fatal: tuple[type[Exception], ...] = (LoginFailed,)
    if config.http is not None:  # the web server (aiohttp.web, the archive) only if it listens
        from chatbot.web import ListenFailed

        fatal += (ListenFailed,)
    app = BotApp(config, redaction=redaction)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, app.stop.set)
    loop.add_signal_handler(signal.SIGUSR1, app.log_own_time)
    try:
        await app.run()
    except fatal as error:
        print(f"chatbot: {error}", file=sys.stderr)
        return 1
    return 0


def entry_point() -> int:
    """`chatbot` itself: main(), quiet when its output is piped into `head` and cut off."""
    try:
        return main()
    except BrokenPipeError:
        # Python's recipe: point stdout at devnull so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(entry_point())
