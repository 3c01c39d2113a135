"""The web archive in a real browser (Debian's Chromium, driven by Playwright) against a
bot on a real Synapse, after a real meeting typed by people on real Matrix clients.

Screenshots of each page at 375 px wide are saved in `test-artifacts/web/`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from chatbot.config import Config, HttpConfig
from chatbot.demo.person import Person, body_of, is_reaction
from chatbot.web import SECURITY_HEADERS, ListenFailed

from .conftest import RunningBot, World
from .support.ports import on_a_free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "web"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Each would set the flag if the page ran it; chat text must stay text.
HOSTILE = ('<script>window.__pwned = 1</script> "><img src=x onerror="window.__pwned=1"> '
           '[click me](javascript:window.__pwned=1) <a href="javascript:window.__pwned=1">a</a>')

try:
    from playwright.async_api import BrowserContext, Page, async_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    async_playwright = None

pytestmark = pytest.mark.skipif(
    async_playwright is None or not CHROMIUM.exists(),
    reason="needs Playwright (the test extra) and Debian's chromium at /usr/bin/chromium "
           "(scripts/test installs it with apt when it can)")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    assert async_playwright is not None
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1024, "height": 800})
        try:
            yield context
        finally:
            await context.close()


async def command(person: Person, room_id: str, text: str) -> str:
    """Send a command and wait for the bot's ✅ on it."""
    event_id = await person.say(room_id, text)
    await person.wait_for(lambda e: is_reaction(e, event_id))
    return event_id


async def archive_link(person: Person, room_id: str, text: str = "!archive") -> str:
    """Ask for the archive link in the room; it comes in a direct chat the bot opens."""
    mark = len(person.events)
    await command(person, room_id, text)

    def linked(event: dict[str, Any]) -> bool:
        return event.get("room_id") != room_id and "?key=" in body_of(event)

    invite = await person.wait_for(
        lambda e: e.get("type") == "invite" or linked(e), after=mark)
    if invite.get("type") == "invite":
        await person.join(invite["room_id"])
    message = await person.wait_for(linked, after=mark)
    found = re.search(r"(http://\S+/meetings/team/\?key=[\w-]+)", body_of(message))
    assert found is not None, body_of(message)
    assert f'href="{found[1]}"' in message["content"]["formatted_body"]  # one whole link
    return found[1]


async def start_with_web(world: World, **meeting: Any) -> tuple[RunningBot, Config]:
    async def start(port: int) -> tuple[RunningBot, Config]:
        config = replace(world.config(**meeting), http=HttpConfig(listen=f"127.0.0.1:{port}"))
        return await world.start_bot(config), config

    return await on_a_free_port(start, ListenFailed)


async def not_pwned(page: Page) -> None:
    assert await page.evaluate("window.__pwned === undefined"), "chat text ran as script"
    assert await page.locator("a[href^='javascript']").count() == 0


async def narrow_screenshot(page: Page, name: str) -> None:
    """At 375 px: no horizontal scrolling; the picture saved as a test artifact. And
    the page's outline: one h1 first, no heading level skipped."""
    levels = await page.eval_on_selector_all(
        "h1, h2, h3, h4, h5, h6", "hs => hs.map(h => Number(h.tagName[1]))")
    assert levels and levels[0] == 1 and levels.count(1) == 1, (name, levels)
    assert all(b <= a + 1 for a, b in itertools.pairwise(levels)), (name, levels)
    await page.set_viewport_size({"width": 375, "height": 800})
    width = await page.evaluate(
        "[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{name} scrolls sideways at 375 px: {width}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    await page.set_viewport_size({"width": 1024, "height": 800})


async def test_the_archive_of_a_real_meeting_in_a_real_browser(
        world: World, browser: BrowserContext) -> None:
    _, config = await start_with_web(world)
    assert config.http is not None
    base = config.http.base_url
    room, ada, grace, chair = world.room_id, world.ada, world.grace, world.chair

    await command(ada, room, "!iam Ada Lovelace / Analytical Engines")
    await command(chair, room, "!iam Charles Babbage / Difference Engines")
    await command(grace, room, "!agenda (5 min) Release planning")
    await command(chair, room, "!startmeeting")
    await command(ada, room, "!here")
    await command(grace, room, "!here")
    await command(chair, room, "!next")
    await command(ada, room, f"!update shipped the parser {HOSTILE}")
    await command(ada, room, "!note the release train leaves on Friday")

    link = await archive_link(ada, room)
    assert link.startswith(f"{base}/meetings/team/?key=")
    key = link.partition("?key=")[2]

    page = await browser.new_page()
    # A private meeting: not found without its token (as for no such meeting).
    response = await page.goto(f"{base}/meetings/team/")
    assert response is not None and response.status == 404
    response = await page.goto(link)
    assert response is not None and response.status == 200
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name.lower()] == value
    sitting = await page.locator("tr.sitting th a").first.get_attribute("href")
    assert sitting is not None and sitting.endswith(f"?key={key}")

    # The live note: the open sitting's page follows the room without a reload.
    response = await page.goto(base + sitting)
    assert response is not None and response.status == 200
    await page.get_by_text("Now: item 1 of 1").wait_for(timeout=5000)
    await page.get_by_text("the release train leaves on Friday").wait_for(timeout=5000)
    await page.evaluate("window.__stillHere = true")
    await command(grace, room, "!update typed while the page was open")
    await page.get_by_text("typed while the page was open").wait_for(timeout=2000)
    # The roll call too: a `!here` shows within 2 s (its ✅ is in by the time `command`
    # returns, so this counts from the bot's commit, a little after the message).
    assert await page.get_by_text("Difference Engines").count() == 0
    await command(chair, room, "!here")
    await page.get_by_text("Difference Engines").wait_for(timeout=2000)
    assert await page.evaluate("window.__stillHere === true"), "the page reloaded"
    await not_pwned(page)
    await narrow_screenshot(page, "live-note")

    mark = len(ada.events)
    await command(chair, room, "!endmeeting")
    await ada.wait_for(lambda e: body_of(e).startswith("# Example Team Meeting"), after=mark)

    # The archive lists the sitting with its attendance; one mark per person per sitting.
    await page.goto(link)
    cells = await page.locator("tr.sitting td").all_inner_texts()
    assert cells[:4] == ["3", "2", "1", "0"]  # present, updates, reached, carried over
    marks = await page.eval_on_selector_all("svg.attendance .mark",
                                            "marks => marks.map(m => m.dataset.mark)")
    assert marks == ["present", "present", "present"]
    await not_pwned(page)
    await narrow_screenshot(page, "meeting")

    # The note page shows every section, through the room's sanitizer.
    await page.goto(base + sitting)
    headings = await page.locator("#note h2").all_inner_texts()
    for section in ("Roll call", "Quick updates", "Reports and celebrations", "Agenda items"):
        assert section in headings
    assert await page.locator("#note").get_by_text("<script>", exact=False).count() == 1
    assert await page.locator("a", has_text="Raw markdown").count() == 1
    await not_pwned(page)
    await narrow_screenshot(page, "note")

    # Search: a phrase and a prefix, the hit highlighted, in the note the reader may see.
    await page.goto(f"{base}/search?q=%22release+train%22&key={key}")
    assert await page.locator("mark").first.inner_text() == "release train"
    await page.goto(f"{base}/search?q=Fri*&key={key}")
    assert (await page.locator("mark").first.inner_text()).startswith("Fri")
    await page.goto(f"{base}/search?q=%22release+train%22")
    assert await page.locator("mark").count() == 0  # without the token: nothing private
    await page.goto(f"{base}/search?q=%3Cscript%3E&key={key}")
    await not_pwned(page)
    await page.goto(f"{base}/search?q=%22unclosed&key={key}")
    assert await page.get_by_role("alert").count() == 1
    await page.goto(f"{base}/search?q=release&key={key}")
    await narrow_screenshot(page, "search")
    # The search form is labelled and usable from the keyboard.
    await page.get_by_label("Search notes").fill("parser")
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile(r"q=parser"))
    assert await page.locator("mark").count() >= 1

    # A chair replaces the link: the old one answers 403, the new one opens.
    new_link = await archive_link(chair, room, "!archive reset")
    response = await page.goto(link)
    assert response is not None and response.status == 403
    response = await page.goto(new_link)
    assert response is not None and response.status == 200
    response = await page.goto(f"{base}/calendar/team.ics")
    assert response is not None and response.status == 404


async def test_a_public_meeting_is_listed_for_anyone(world: World,
                                                      browser: BrowserContext) -> None:
    _, config = await start_with_web(world, archive="public")
    assert config.http is not None
    page = await browser.new_page()
    response = await page.goto(config.http.base_url + "/")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    await narrow_screenshot(page, "index")
    await page.get_by_role("link", name="Example Team Meeting").click()
    await page.get_by_role("heading", name="Sittings").wait_for()
    assert await page.get_by_text("No sitting has been held yet.").count() == 1
