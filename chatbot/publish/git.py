"""The git archive: each sitting's note committed to a repository and pushed.

Plain `git` in a subprocess, in a working copy per meeting under
`<data_dir>/archive/<id>/`, isolated from the machine's git configuration and
identity. Every attempt starts from the remote's branch as it is now, so an attempt
cut short (a crash between commit and push, a push refused because someone else
pushed) simply runs again, and a marker comment in the file means "already done".

With `pull_request: true` the note goes on a branch of its own (`meeting/<id>/<date>`)
and a pull request into `branch` is opened through the GitHub target; its body closes
the sitting's issue when merged. A retry finds the note on that branch (or already in
`branch`, merged) and the pull request by its head branch, so neither is made twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shlex
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from chatbot.config import Config, GitArchiveConfig
from chatbot.publish import GIT_ARCHIVE, PublishFailed, Sitting, required_settings, target_settings

if TYPE_CHECKING:
    from chatbot.publish.issue import GitHubIssues

log = logging.getLogger(__name__)

# Pushes refused because the branch moved meanwhile, retried at once in one attempt;
# past that the job backs off like any other.
PUSH_TRIES = 3
_FENCE = re.compile(r"^\s*(```|~~~)")
_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)

# What git or ssh say when retrying cannot help, and what the operator should fix.
_PERMANENT = (
    (("permission denied", "access denied", "authentication failed", "could not read username",
      "could not read password", "invalid username or password", "returned error: 403"),
     "the remote refused access; check that the key in `publish.git.ssh_key_file` (or the "
     "credentials for the remote) may push to it"),
    (("host key verification failed",),
     "the remote's SSH host key does not match the one seen before (in the bot's "
     "data_dir/archive/known_hosts); check the remote's host key"),
    (("does not appear to be a git repository", "repository not found", "not a git repository",
      "returned error: 404", "no such file or directory"),
     "there is no git repository at the remote; check `publish.git.remote`"),
    (("protected branch", "pre-receive hook declined", "remote rejected"),
     "the remote does not accept pushes to the branch; check `publish.git.branch` and the "
     "branch's protection rules"),
)
_REJECTED = ("non-fast-forward", "fetch first", "stale info")


def without_credentials(remote: str) -> str:
    """The remote as it may be shown: a `user:token@` in an URL is hidden."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", remote)


def marker(sitting: Sitting) -> str:
    """The comment that says a sitting's note is in a file."""
    return f"<!-- chatbot:{sitting.series_id}:{sitting.name} -->"


def archive_path(settings: GitArchiveConfig, sitting: Sitting) -> str:
    return settings.path.format(year=sitting.held_on.year, date=sitting.name,
                                id=sitting.series_id)


def pull_request_branch(sitting: Sitting) -> str:
    """The branch a sitting's note is proposed on: one per sitting, so a retry finds it."""
    return f"meeting/{sitting.series_id}/{sitting.name}"


def commit_message(settings: GitArchiveConfig, sitting: Sitting) -> str:
    return settings.message.format(title=sitting.title, date=sitting.name, id=sitting.series_id)


def demote_headings(text: str) -> str:
    """Every heading one level down (outside code blocks), to sit under a file's heading."""
    lines, fenced = [], False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        lines.append(line)
    return "".join(lines)


def place_note(existing: str | None, sitting: Sitting, mode: str) -> str:
    """The file with the sitting's note in it: the whole file (`file`), or the note
    newest first under the file's heading (`prepend`), older notes and any text people
    added left as they were."""
    body = sitting.text if sitting.text.endswith("\n") else sitting.text + "\n"
    if mode == "file":
        return f"{marker(sitting)}\n{body}"
    entry = f"{marker(sitting)}\n{demote_headings(body)}\n"
    if existing is None or not existing.strip():
        return f"# {sitting.title}: {sitting.held_on.year}\n\n{entry}"
    lines = existing.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.startswith("<!-- chatbot:")), None)
    if at is None:  # under the file's first heading, or at the top
        heading = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
        at = 0 if heading is None else heading + 1
        while at < len(lines) and not lines[at].strip():
            at += 1
        if at and lines[at - 1].strip():
            entry = "\n" + entry
    return "".join(lines[:at]) + entry + "".join(lines[at:])


class _LocalFailure(PublishFailed):
    """git failed in the working copy itself (not talking to the remote)."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    code: int
    output: str  # stdout and stderr together: git writes its verdicts to either


class GitArchive:
    """The `git_archive` target: `publish` commits a sitting's note and pushes it."""

    kind = GIT_ARCHIVE

    def __init__(self, config: Config, work_dir: Path, *,
                 clock: Callable[[], datetime] | None = None,
                 github: GitHubIssues | None = None) -> None:
        self.config = config
        self.work_dir = work_dir
        self.clock = clock
        # Opens the pull requests of `pull_request: true` (config validation makes sure
        # such a meeting has `publish.github`).
        self.github = github
        self._locks: dict[str, asyncio.Lock] = {}

    def _settings(self, series_id: str) -> GitArchiveConfig:
        settings: GitArchiveConfig = required_settings(self.config, series_id, "git")
        return settings

    def label(self, series_id: str) -> str:
        settings = target_settings(self.config, series_id, "git")
        if settings is None:
            return "the git archive"
        into = "pull requests into" if settings.pull_request else "branch"
        return (f"the git archive ({without_credentials(settings.remote)}, "
                f"{into} {settings.branch})")

    async def publish(self, sitting: Sitting) -> str:
        """Commit the note unless the branch has it already, and push; the commit id."""
        settings = self._settings(sitting.series_id)
        async with self._exclusive(sitting.series_id):
            try:
                try:
                    return await self._publish(sitting, settings)
                except OSError as error:  # writing the file
                    raise _LocalFailure(f"cannot write in the bot's working copy "
                                        f"({error.strerror or error})", permanent=False) from error
            except _LocalFailure:
                # A working copy git cannot use (a crash left it half made, a disk
                # error): the next attempt starts afresh from the remote.
                await asyncio.to_thread(shutil.rmtree, self.work_dir / sitting.series_id,
                                        ignore_errors=True)
                raise

    async def check(self, series_id: str) -> str:
        """Whether the remote answers, with the configured key, by listing the branch:
        nothing is written, here or there. Raises PublishFailed."""
        settings = self._settings(series_id)
        await self._check_key(settings)
        with tempfile.TemporaryDirectory(prefix="chatbot-check-") as scratch:
            git = _Git(Path(scratch), self._environment(settings) | {"HOME": scratch},
                       settings.timeout.total_seconds(), settings.remote)
            outcome = await git.run("ls-remote", "--heads", settings.remote,
                                    f"refs/heads/{settings.branch}", network=True)
        if outcome.output.strip():
            return f"reachable, branch {settings.branch} found"
        return f"reachable, no branch {settings.branch} yet (the first note makes it)"

    async def _publish(self, sitting: Sitting, settings: GitArchiveConfig) -> str:
        path = archive_path(settings, sitting)
        git = _Git(self.work_dir / sitting.series_id, self._environment(settings),
                   settings.timeout.total_seconds(), settings.remote)
        await self._check_key(settings)
        await git.prepare(settings.remote)
        if settings.pull_request:
            return await self._propose(sitting, settings, git, path)
        for _ in range(PUSH_TRIES):
            await git.start_from_remote(settings.branch)
            file = git.file(path)
            existing = await asyncio.to_thread(_read, file)
            if existing is not None and marker(sitting) in existing:
                commit = await git.head()
                log.info("note %s of %s is already in %s at %s", sitting.name,
                         sitting.series_id, path, commit[:12])
                return commit
            text = place_note(existing, sitting, settings.mode)
            await asyncio.to_thread(_write, file, text)
            await git.commit(path, commit_message(settings, sitting))
            if await git.push(settings.branch):
                commit = await git.head()
                log.info("note %s of %s committed to %s as %s and pushed", sitting.name,
                         sitting.series_id, path, commit[:12])
                return commit
            log.info("push of note %s of %s refused: the branch moved; trying again",
                     sitting.name, sitting.series_id)
        raise PublishFailed(f"the branch {settings.branch} kept moving while I pushed",
                            permanent=False)

    async def _propose(self, sitting: Sitting, settings: GitArchiveConfig, git: _Git,
                       path: str) -> str:
        """Commit the note on the sitting's own branch unless it is there (or merged into
        `branch` already), push that branch, and open its pull request; the PR's URL, or
        the commit when `branch` has the note already."""
        if self.github is None:
            raise PublishFailed("`pull_request: true` needs `publish.github` to open the "
                                "pull request", permanent=True)
        head = pull_request_branch(sitting)
        for _ in range(PUSH_TRIES):
            await git.start_from_remote(settings.branch)
            existing = await asyncio.to_thread(_read, git.file(path))
            if existing is not None and marker(sitting) in existing:
                commit = await git.head()
                log.info("note %s of %s is already in %s on %s at %s", sitting.name,
                         sitting.series_id, path, settings.branch, commit[:12])
                return commit
            if await git.switch_to_remote(head):
                existing = await asyncio.to_thread(_read, git.file(path))
                if existing is not None and marker(sitting) in existing:
                    break  # pushed before a crash: only the pull request may be missing
            else:
                await git.branch_off(head)
            await asyncio.to_thread(_write, git.file(path),
                                    place_note(existing, sitting, settings.mode))
            await git.commit(path, commit_message(settings, sitting))
            if await git.push(head):
                log.info("note %s of %s committed to %s on branch %s and pushed", sitting.name,
                         sitting.series_id, path, head)
                break
            log.info("push of branch %s refused: it moved; trying again", head)
        else:
            raise PublishFailed(f"the branch {head} kept moving while I pushed",
                                permanent=False)
        pull = await self.github.propose(sitting, head=head, base=settings.branch,
                                         title=commit_message(settings, sitting), path=path)
        return pull.html_url

    async def _check_key(self, settings: GitArchiveConfig) -> None:
        key = settings.ssh_key_file
        if key is not None and not await asyncio.to_thread(os.access, key, os.R_OK):
            raise PublishFailed(f"the key file named in `publish.git.ssh_key_file` ({key}) "
                                "cannot be read", permanent=True)

    def _environment(self, settings: GitArchiveConfig) -> dict[str, str]:
        """Only what git needs: the machine's git config, identity and ssh config stay out."""
        name, email = settings.author.name, settings.author.email
        ssh = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes",
               "-o", f"UserKnownHostsFile={self.work_dir / 'known_hosts'}",
               "-o", "StrictHostKeyChecking=accept-new"]
        if settings.ssh_key_file is not None:
            ssh += ["-i", str(settings.ssh_key_file), "-o", "IdentitiesOnly=yes"]
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.work_dir), "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C",
            "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email,
            "GIT_SSH_COMMAND": shlex.join(ssh),
        }
        if self.clock is not None:
            stamp = f"@{int(self.clock().timestamp())} +0000"
            environment |= {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
        for proxy in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                      "NO_PROXY"):
            if proxy in os.environ:
                environment[proxy] = os.environ[proxy]
        return environment

    @contextlib.asynccontextmanager
    async def _exclusive(self, series_id: str) -> AsyncIterator[None]:
        """One attempt at a time per working copy: in this process, and against
        `chatbot publish` run beside the bot."""
        lock = self._locks.setdefault(series_id, asyncio.Lock())
        async with lock:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.work_dir / f"{series_id}.lock", os.O_RDWR | os.O_CREAT)
            try:
                await asyncio.to_thread(fcntl.flock, descriptor, fcntl.LOCK_EX)
                yield
            finally:
                os.close(descriptor)  # releases the lock


class _Git:
    """`git` in one working copy, each command with a time limit."""

    def __init__(self, directory: Path, environment: dict[str, str], timeout: float,
                 remote: str) -> None:
        self.directory = directory
        self.environment = environment
        self.timeout = timeout
        self.shown_remote = without_credentials(remote)

    def file(self, relative: str) -> Path:
        path = (self.directory / relative).resolve()
        # A symlink in the repository must not lead the write outside it.
        if not path.is_relative_to(self.directory.resolve()) or \
                path.is_relative_to((self.directory / ".git").resolve()):
            raise PublishFailed(f"{relative} leads outside the repository's files",
                                permanent=True)
        return path

    async def prepare(self, remote: str) -> None:
        if not (self.directory / ".git").is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            await self.run("init", "-q")
            await self.run("remote", "add", "origin", remote)
        elif (await self.run("remote", "set-url", "origin", remote, check=False)).code != 0:
            # the config may have changed the remote since; or a first attempt stopped
            # between `init` and `remote add`
            await self.run("remote", "add", "origin", remote)

    async def start_from_remote(self, branch: str) -> None:
        """Check out the remote's branch as it is now (an empty one if it has none yet),
        dropping whatever an earlier attempt left behind."""
        await self.run("fetch", "-q", "--prune", "origin", network=True)
        remote_ref = f"refs/remotes/origin/{branch}"
        if (await self.run("rev-parse", "-q", "--verify", remote_ref, check=False)).code == 0:
            await self.run("checkout", "-q", "-f", "-B", branch, remote_ref)
        else:
            await self.run("symbolic-ref", "HEAD", f"refs/heads/{branch}")
            await self.run("update-ref", "-d", f"refs/heads/{branch}", check=False)
            await self.run("read-tree", "--empty")
        await self.run("clean", "-q", "-f", "-d", "-x")

    async def switch_to_remote(self, branch: str) -> bool:
        """Check out the remote's `branch` as fetched last, if it has one; whether it had."""
        remote_ref = f"refs/remotes/origin/{branch}"
        if (await self.run("rev-parse", "-q", "--verify", remote_ref, check=False)).code != 0:
            return False
        await self.run("checkout", "-q", "-f", "-B", branch, remote_ref)
        await self.run("clean", "-q", "-f", "-d", "-x")
        return True

    async def branch_off(self, branch: str) -> None:
        """Start `branch` (anew) at what is checked out, which may be nothing yet."""
        if (await self.run("rev-parse", "-q", "--verify", "HEAD", check=False)).code == 0:
            await self.run("checkout", "-q", "-B", branch)
        else:
            await self.run("symbolic-ref", "HEAD", f"refs/heads/{branch}")
            await self.run("update-ref", "-d", f"refs/heads/{branch}", check=False)

    async def commit(self, path: str, message: str) -> None:
        await self.run("add", "--", path)
        await self.run("commit", "-q", "--no-verify", "-m", message)

    async def push(self, branch: str) -> bool:
        """Push HEAD to the branch; False if refused because the branch moved meanwhile."""
        outcome = await self.run("push", "--porcelain", "origin", f"HEAD:refs/heads/{branch}",
                                 network=True, check=False)
        if outcome.code == 0:
            return True
        if any(reason in outcome.output for reason in _REJECTED):
            return False
        raise self._failure("push", outcome)

    async def head(self) -> str:
        return (await self.run("rev-parse", "HEAD")).output.strip()

    async def run(self, *arguments: str, network: bool = False,
                  check: bool = True) -> _Outcome:
        process = await asyncio.create_subprocess_exec(
            "git", *arguments, cwd=self.directory, env=self.environment,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            # ssh may be hanging below git: stop the whole group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise PublishFailed(f"git {arguments[0]} with {self.shown_remote} took longer "
                                f"than {self.timeout:.0f} s", permanent=False) from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise
        assert process.returncode is not None
        outcome = _Outcome(process.returncode, output.decode("utf-8", "replace"))
        if check and outcome.code != 0:
            raise self._failure(arguments[0], outcome) if network else _LocalFailure(
                f"git {arguments[0]} failed in the bot's working copy "
                f"({_last_line(outcome.output)})", permanent=False)
        return outcome

    def _failure(self, command: str, outcome: _Outcome) -> PublishFailed:
        said = outcome.output.lower()
        # What git said, for whoever runs the bot; the job's own failure is logged by
        # the outbox, once.
        log.info("git %s with %s failed (exit %s): %s", command, self.shown_remote,
                    outcome.code, without_credentials(outcome.output.strip()))
        for signs, advice in _PERMANENT:
            if any(sign in said for sign in signs):
                return PublishFailed(advice, permanent=True)
        return PublishFailed(f"git {command} could not reach {self.shown_remote}",
                             permanent=False)


def _read(file: Path) -> str | None:
    return file.read_text(encoding="utf-8") if file.is_file() else None


def _write(file: Path, text: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text, encoding="utf-8")


def _last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return without_credentials(lines[-1])[:200] if lines else "no output"
