"""The sitting's shared notes page on HackMD: what the bot puts on it, and its jobs.

Three outbox job kinds, one class. `hackmd_note` makes the page `notes_ahead` before
the sitting, from the meeting's note template with the bot's regions marked (queued by
the scheduled `notes_page` job); `hackmd_regions` rewrites the regions as entries
arrive (the scheduled `notes_regions` job, at most once a minute, only when they
changed); `hackmd_final` is queued by the close: it writes the regions a last time,
reads the page back, and the page as the team left it becomes the final note.

The page is the note template rendered with a stand-in for each of its lists (links,
roll call, updates, celebrations, agenda, notes, actions, decisions); each line holding
a stand-in becomes the bot's region, everything else (the title, the headings, the
code of conduct) is plain text the team owns from then on. Each agenda item is a region
of its own, so the bullets people type under it, just after its closing marker, stay
theirs; a new item goes in before the `agenda-end` region.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from chatbot.config import Config, HackMDConfig
from chatbot.model import MeetingRecord
from chatbot.publish import (
    HACKMD_NOTE,
    PublishFailed,
    Sitting,
    required_settings,
    target_settings,
)
from chatbot.publish.hackmd import (
    HackMDClient,
    HackMDError,
    HackMDPermanent,
    HackMDToken,
    HackMDTransient,
    RateLimit,
    final_note,
    merge_regions,
    region_block,
    region_bodies,
)
from chatbot.render import (
    DEFAULT_TEMPLATE,
    ActionGroup,
    ItemView,
    UpdateView,
    compile_template,
    note_context,
)

log = logging.getLogger(__name__)

# The bot writes a page at most this often (HackMD: 100 calls per 5 minutes).
WRITE_EVERY = timedelta(minutes=1)
# How long the close waits for HackMD to answer before the note is the bot's own.
FINAL_WAIT = timedelta(minutes=10)
AGENDA_END = "agenda-end"
AGENDA_PREFIX = "agenda-"
# The lists of the note template that become regions, in the order of the template.
LIST_REGIONS = ("links", "roll-call", "updates", "celebrations", "agenda", "notes",
                "actions", "decisions")


def _stand_in(name: str) -> str:
    return f"\x00chatbot:{name}\x00"


_STAND_IN_LINE = re.compile(r"^[^\n]*\x00chatbot:([a-z-]+)\x00[^\n]*(?:\n|\Z)", re.MULTILINE)


def _bullets(lines: list[str]) -> str:
    # An empty list shows a lone bullet, as the note does: a place to type.
    return "\n".join(lines) or "-"


def page_regions(record: MeetingRecord, zone: ZoneInfo,
                 links: dict[str, str | None]) -> dict[str, str]:
    """The body of each of the bot's regions for the meeting as it stands; every value
    is escaped markdown (text from chat cannot change the page's structure)."""
    view = note_context(record, zone, links)
    regions = {
        "links": "\n".join(f"- **{label}:** <{url}>" for label, url in view["links"]),
        "roll-call": _bullets([f"- {line}" for line in view["roll_call"]]),
        "updates": _bullets([f"- **{u.name}:** {u.text}" for u in view["updates"]]),
        "celebrations": _bullets([f"- {text}" for text in view["celebrations"]]),
        "notes": _bullets([f"- {text}" for text in view["notes"]]),
        "actions": _bullets([line for group in view["actions"] for line in
                             [f"- **{group.person}**",
                              *(f"    - {text}" for text in group.items)]]),
        "decisions": _bullets([f"- {text}" for text in view["decisions"]]),
    }
    for entry, item in zip(record.agenda, view["agenda"], strict=True):
        timing = f" ({item.timing})" if item.timing else ""
        carried = f" (carried over from {item.carried_from})" if item.carried_from else ""
        regions[f"{AGENDA_PREFIX}{entry.id}"] = "\n".join(
            [f"- **{item.owner}**{timing} {item.text}{carried}",
             *(f"    - {line}" for line in item.details)])
    return regions


def keep_removed_items(previous: Mapping[str, str] | None,
                       regions: dict[str, str]) -> dict[str, str]:
    """An agenda item taken off the agenda since the last write has its region emptied
    (not left showing), and stays empty in every later write."""
    for name in previous or {}:
        if name.startswith(AGENDA_PREFIX) and name != AGENDA_END and name not in regions:
            regions[name] = ""
    return regions


def page_content(record: MeetingRecord, zone: ZoneInfo, links: dict[str, str | None],
                 template: str | None = None) -> str:
    """The new page: the meeting's note template, each of its lists a marked region."""
    regions = page_regions(record, zone, links)
    view = note_context(record, zone, links)
    view.update(
        links=[(_stand_in("links"), "")], roll_call=[_stand_in("roll-call")],
        updates=[UpdateView(_stand_in("updates"), _stand_in("updates"))],
        celebrations=[_stand_in("celebrations")],
        agenda=[ItemView(_stand_in("agenda"), _stand_in("agenda"), _stand_in("agenda"),
                         None, ())],
        notes=[_stand_in("notes")], actions=[ActionGroup(_stand_in("actions"), ())],
        decisions=[_stand_in("decisions")])
    try:
        text = compile_template(template or DEFAULT_TEMPLATE).render(view)
    except Exception:  # an operator's template can fail in any way; ours must not
        if template is None:
            raise
        log.exception("the meeting's note template failed; the page uses the standard one")
        text = compile_template(DEFAULT_TEMPLATE).render(view)
    agenda = [name for name in regions if name.startswith(AGENDA_PREFIX)]

    def blocks(found: re.Match[str]) -> str:
        name = found.group(1)
        if name == "agenda":
            return "".join(region_block(item, regions[item]) for item in agenda) + \
                region_block(AGENDA_END, "")
        return region_block(name, regions[name]) if name in regions else ""

    text = _STAND_IN_LINE.sub(blocks, text)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def page_key(series_id: str, name: str) -> str:
    """What makes a HackMD note one sitting's (its description): found again by it
    after a crash, so the page is made once."""
    return f"chatbot:meeting:{series_id}:{name}"


@dataclass(frozen=True, slots=True)
class MakePage:
    """One `hackmd_note` job: everything needed to make the page, fixed when queued."""

    series_id: str
    meeting_id: int
    name: str
    title: str
    content: str
    regions: Mapping[str, str]

    def payload(self) -> dict[str, Any]:
        return {"series": self.series_id, "meeting_id": self.meeting_id, "name": self.name,
                "title": self.title, "content": self.content, "regions": dict(self.regions)}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> MakePage:
        return cls(payload["series"], int(payload["meeting_id"]), payload["name"],
                   payload["title"], payload["content"], dict(payload["regions"]))


@dataclass(frozen=True, slots=True)
class MadePage:
    note_id: str
    url: str
    placed: frozenset[str]


class HackMDPages:
    """Makes, updates and reads back the sittings' pages; counts HackMD calls."""

    kind = HACKMD_NOTE

    def __init__(self, config: Config, *, clock: Callable[[], datetime] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.clock = clock or (lambda: datetime.now(UTC))
        self.environ = environ
        self.calls_made = 0
        self.rate_limit: RateLimit | None = None

    @property
    def calls_left(self) -> int | None:
        """Calls left in HackMD's current window as it last said; None before it did."""
        limit = self.rate_limit
        if limit is None:
            return None
        return limit.limit if limit.reset_at <= self.clock() else limit.remaining

    def _settings(self, series_id: str) -> HackMDConfig:
        settings: HackMDConfig = required_settings(self.config, series_id, "hackmd")
        return settings

    def label(self, series_id: str) -> str:
        settings = target_settings(self.config, series_id, "hackmd")
        if settings is None or settings.team is None:
            return "HackMD"
        return f"HackMD (team {settings.team})"

    def _client(self, settings: HackMDConfig) -> HackMDClient:
        try:
            token = HackMDToken.load(env=settings.token_env, file=settings.token_file,
                                     environ=self.environ if self.environ is not None
                                     else os.environ)
        except ValueError as error:
            raise PublishFailed(f"{error}; set it where the bot runs", permanent=True) from None
        client = HackMDClient(token, settings.api_url, clock=self.clock)
        client.rate_limit = self.rate_limit
        return client

    def _counted(self, client: HackMDClient) -> None:
        self.calls_made += client.calls_made
        self.rate_limit = client.rate_limit or self.rate_limit

    async def make(self, job: MakePage) -> MadePage:
        """The sitting's page, made unless it exists (found by its key)."""
        settings = self._settings(job.series_id)
        client = self._client(settings)
        try:
            async with client:
                note = await client.create_note(
                    job.title, job.content, settings.read, settings.write, settings.team,
                    key=page_key(job.series_id, job.name))
        except HackMDError as error:
            raise _failed(error) from error
        finally:
            self._counted(client)
        return MadePage(note.id, note.publish_link, frozenset(region_bodies(note.content)))

    async def write(self, series_id: str, note_id: str, regions: Mapping[str, str],
                    placed: Collection[str]) -> frozenset[str]:
        """Rewrite the page's regions (nothing else); the regions now placed on it."""
        settings = self._settings(series_id)
        client = self._client(settings)
        try:
            async with client:
                result = await client.write_regions(
                    note_id, regions, team=settings.team, insert_before=AGENDA_END,
                    placed=placed)
        except HackMDError as error:
            raise _failed(error) from error
        finally:
            self._counted(client)
        return result.placed

    async def read_back(self, series_id: str, note_id: str, regions: Mapping[str, str],
                        placed: Collection[str]) -> str:
        """Write the regions a last time, read the page, and return the final note: the
        page as the team left it, with the bot's last regions, markers removed."""
        settings = self._settings(series_id)
        client = self._client(settings)
        try:
            async with client:
                result = await client.write_regions(
                    note_id, regions, team=settings.team, insert_before=AGENDA_END,
                    placed=placed)
                page = await client.read_note(note_id, settings.team)
        except HackMDError as error:
            raise _failed(error) from error
        finally:
            self._counted(client)
        # A person who typed between the write and the read kept the regions as written,
        # or changed one: the bot's record of the meeting wins inside its regions.
        merged = merge_regions(page.content, regions, insert_before=AGENDA_END,
                               placed=set(placed) | result.placed).text
        return final_note(merged).strip("\n") + "\n"

    async def publish(self, sitting: Sitting) -> str:
        """Nothing to send: the page is where the final note came from (read back at
        the close), not a place it goes to."""
        return "the note is the page itself"

    async def check(self, series_id: str) -> str:
        settings = self._settings(series_id)
        client = self._client(settings)
        try:
            async with client:
                me = await client.whoami()
        except HackMDError as error:
            raise _failed(error) from error
        finally:
            self._counted(client)
        who = str(me.get("userPath") or me.get("name") or "an account")
        if settings.team is not None:
            teams = {str(team.get("path")) for team in me.get("teams") or []
                     if isinstance(team, dict)}
            if settings.team not in teams:
                raise PublishFailed(f"the token's account ({who}) is not a member of the "
                                    f"HackMD team {settings.team!r}", permanent=True)
            return f"the token ({who}) may make notes in team {settings.team}"
        return f"the token ({who}) may make notes in its own workspace"


def _failed(error: HackMDError) -> PublishFailed:
    retry_at = error.retry_at if isinstance(error, HackMDTransient) else None
    return PublishFailed(str(error), permanent=isinstance(error, HackMDPermanent),
                         retry_at=retry_at)
