"""The bot rewrites only inside its markers; every byte people typed outside them stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatbot.publish.hackmd import (
    WriteThrottle,
    close_marker,
    final_note,
    find_regions,
    merge_regions,
    open_marker,
    region_block,
    region_bodies,
    regions_digest,
    render_regions,
)

PAGE = """# Hubs team meeting
[This HackMD](https://hackmd.io/x) | GitHub issue | Calendar

## Roll call
<!-- chatbot:roll-call -->
- old entry
<!-- /chatbot:roll-call -->
- Sarah typed this by hand

## Agenda
<!-- chatbot:agenda-1 -->
### 1. Release plan (@min)
<!-- /chatbot:agenda-1 -->
- we agreed on Friday
  - sub-bullet by a person
<!-- chatbot:agenda-end -->
<!-- /chatbot:agenda-end -->
"""


def test_only_the_inside_of_a_region_changes():
    page = render_regions(PAGE, {"roll-call": "- Min (@min)\n- Sarah (@sarah)"})
    assert page == PAGE.replace("- old entry\n", "- Min (@min)\n- Sarah (@sarah)\n")


def test_rendering_twice_changes_nothing_more():
    regions = {"roll-call": "- a", "agenda-1": "### 1. Release plan (@min)"}
    once = render_regions(PAGE, regions)
    assert render_regions(once, regions) == once
    assert region_bodies(once)["roll-call"] == "- a"


def test_an_empty_body_leaves_an_empty_region():
    page = render_regions(PAGE, {"roll-call": ""})
    assert "<!-- chatbot:roll-call -->\n<!-- /chatbot:roll-call -->\n- Sarah" in page


@pytest.mark.parametrize(("page", "why"), [
    # A person deleted the closing marker: the bot cannot know where its region ends.
    ("a\n<!-- chatbot:r -->\nold\nhuman text\n", "closing marker is missing"),
    # ... or the opening one.
    ("a\nold\n<!-- /chatbot:r -->\nhuman\n", "opening marker is missing"),
    # Another region's marker was moved inside this one.
    ("<!-- chatbot:r -->\n<!-- chatbot:s -->\nx\n<!-- /chatbot:r -->\n<!-- /chatbot:s -->\n",
     "another region's marker sits inside it"),
    # Both markers deleted: the team took that part of the page over.
    ("a\nb\n", "it is not on the page"),
    # Mangled beyond recognition: plain text to the bot.
    ("<!-- chatbot r -->\nx\n<!-- /chatbot r -->\n", "it is not on the page"),
])
def test_a_region_whose_markers_were_broken_is_left_to_people(page, why):
    merge = merge_regions(page, {"r": "new"})
    assert merge.text == page
    assert why in merge.skipped["r"]


def test_markers_with_other_spacing_still_count():
    page = "x\n<!--chatbot:r-->\nold\n<!--   /chatbot:r   -->\ny\n"
    assert render_regions(page, {"r": "new"}) == page.replace("old", "new")


def test_a_pasted_copy_of_a_region_is_the_teams_text():
    block = region_block("r", "old")
    page = "top\n" + block + "middle\n" + block + "end\n"
    merge = merge_regions(page, {"r": "new"})
    assert merge.text == "top\n" + region_block("r", "new") + "middle\n" + block + "end\n"
    assert find_regions(page).duplicated == {"r"}


def test_a_new_region_goes_before_the_anchor_and_a_removed_one_stays_removed():
    regions = {"agenda-1": "### 1. Release plan (@min)", "agenda-2": "### 2. Docs (@sarah)"}
    merge = merge_regions(PAGE, regions, insert_before="agenda-end", placed={"agenda-1"})
    assert merge.inserted == ("agenda-2",)
    assert ("  - sub-bullet by a person\n" + region_block("agenda-2", "### 2. Docs (@sarah)")
            + open_marker("agenda-end")) in merge.text
    # Someone deletes the whole agenda-2 block; the bot, having placed it, leaves it out.
    edited = merge.text.replace(region_block("agenda-2", "### 2. Docs (@sarah)"), "")
    again = merge_regions(edited, regions, insert_before="agenda-end",
                          placed={"agenda-1", "agenda-2"})
    assert again.text == edited
    assert again.skipped == {"agenda-2": "a person removed it from the page"}


def test_region_names_are_checked():
    with pytest.raises(ValueError, match="region name"):
        render_regions(PAGE, {"roll call -->": "x"})


def test_the_final_note_is_the_page_without_the_markers():
    note = final_note(render_regions(PAGE, {"roll-call": "- Min"}))
    assert "chatbot:" not in note
    assert "## Roll call\n- Min\n- Sarah typed this by hand\n" in note
    assert "- we agreed on Friday\n  - sub-bullet by a person\n" in note
    inline = "a <!-- chatbot:x -->b<!-- /chatbot:x --> c"
    assert final_note(inline) == "a b c"


# -- properties ---------------------------------------------------------------------------

NAMES = st.sampled_from(["roll-call", "updates", "celebrations", "agenda-1"])
# People's text: anything, including fragments that look like markers.
HUMAN = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                max_size=40) | st.sampled_from([
                    "<!-- chatbot:", "-->", "<!-- /chatbot:updates", "<!--", "\r\n", "\n",
                    "<!-- chatbot:roll-call", "- bullet\n", "### heading\n"])
BODY = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
               max_size=40).filter(lambda s: "<!--" not in s)


@st.composite
def pages(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A page as alternating people's text and distinct regions."""
    names = draw(st.lists(NAMES, unique=True, max_size=4))
    human = [draw(HUMAN).replace("<!--", "<!~~") for _ in range(len(names) + 1)]
    return human, names


def assemble(human: list[str], names: list[str], bodies: dict[str, str]) -> str:
    parts = [human[0]]
    for name, text in zip(names, human[1:], strict=True):
        body = bodies.get(name, "old").strip("\n")
        parts += [open_marker(name), "\n" + body + "\n" if body else "\n",
                  close_marker(name), text]
    return "".join(parts)


@given(pages(), st.dictionaries(NAMES, BODY))
def test_people_text_around_well_formed_regions_is_kept_byte_for_byte(page, regions):
    human, names = page
    after = render_regions(assemble(human, names, {}), regions)
    # The same text of people's, in the same places; new bodies where given.
    assert after == assemble(human, names, {n: regions.get(n, "old") for n in names})


@given(HUMAN, st.lists(HUMAN, max_size=6), st.dictionaries(NAMES, BODY))
def test_any_page_keeps_its_text_outside_owned_regions(head, pieces, regions):
    # Arbitrary text with markers sprinkled in, well-formed or not.
    markers = [open_marker("updates"), close_marker("updates"), open_marker("roll-call"),
               close_marker("roll-call"), "<!-- chatbot:updates", "<!--/chatbot:agenda-1-->"]
    page = head + "".join(p + markers[i % len(markers)] for i, p in enumerate(pieces))
    after = render_regions(page, regions)
    assert _outside(after) == _outside(page)
    if not find_regions(page).spans:
        assert after == page


@given(st.text(max_size=200).filter(lambda s: "chatbot:" not in s))
def test_a_page_without_markers_is_its_own_final_note(text):
    assert final_note(text) == text
    assert render_regions(text, {"updates": "x"}) == text


def _outside(text: str) -> list[str]:
    """The text outside the owned regions' bodies, in order, markers included."""
    found = find_regions(text)
    pieces, at = [], 0
    for span in sorted(found.spans.values(), key=lambda s: s.inner_start):
        pieces.append(text[at:span.inner_start])
        at = span.inner_end
    pieces.append(text[at:])
    return pieces


# -- write pacing -------------------------------------------------------------------------

def test_throttle_allows_one_write_a_minute_and_none_when_unchanged():
    throttle = WriteThrottle()
    t0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    first = regions_digest({"roll-call": "- a"})
    assert throttle.not_before("n", t0) is None
    throttle.wrote("n", first, t0)
    assert throttle.unchanged("n", first)
    assert not throttle.unchanged("n", regions_digest({"roll-call": "- a\n- b"}))
    assert throttle.not_before("n", t0 + timedelta(seconds=30)) == t0 + timedelta(minutes=1)
    assert throttle.not_before("other", t0) is None
    assert throttle.not_before("n", t0 + timedelta(minutes=1)) is None
