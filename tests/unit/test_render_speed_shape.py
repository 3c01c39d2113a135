"""What makes a big note quick to render changes nothing in it.

The markdown is what the plain escaper writes, byte for byte; the HTML is
python-markdown's, byte for byte, with or without the shortcuts that turn inert
text (escaped chat text, most of a note) into elements directly and that write a whole
note of the usual shapes as HTML directly, and nh3 cleans it as it always did (its
links filter left out only where it could drop nothing); a converter kept
from one message to the next, or used from several threads, gives what a new one
gives; and the sandbox's quick check lets a template reach the note's values and
nothing else on them.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from zoneinfo import ZoneInfo

import markdown
import nh3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError
from markdown.util import Registry

from chatbot import render
from chatbot.model import Profile
from chatbot.render import (
    compile_template,
    escape_line,
    escape_markdown,
    markdown_to_html,
    new_converter,
    note_context,
    render_note,
    sample_record,
)
from tests.unit.note_shape import Act, Item, Parts, record
from tests.unit.test_properties import FRAGMENTS, NOTES, QUICK, hostile, meetings

GOLDEN = Path(__file__).parent.parent / "golden"
LONDON = ZoneInfo("Europe/London")
SHORTCUT, PLAIN = new_converter(), new_converter(shortcut=False)


def html(text: str, *, shortcut: bool = True) -> str:
    """The HTML of a converter with the shortcuts, or of a plain one. With them, the
    inline and list shortcuts are checked to give the same without the document's."""
    if not shortcut:
        return PLAIN.reset().convert(text)
    written = SHORTCUT.reset().convert(text)
    assert markdown.Markdown.convert(SHORTCUT.reset(), text) == written
    return written


def python_markdown(text: str) -> str:
    return markdown.markdown(text, output_format="html")


# --- the HTML: python-markdown's, shortcut or not --------------------------------------

# What an operator's template may use, and what the shortcut must leave to python-markdown.
TEMPLATE_MARKDOWN = [
    "# Title\n\n## Section\n\n###### Small",
    "Title\n=====\n\nSub\n---",
    "- one\n- two\n    - nested **bold**\n    - nested\n\n1. first\n2. second",
    "**bold** *italic* _italic_ __bold__ ***both*** **bold *and italic***",
    "**a**b **a **b ** a** **a** **b** *a* **a**  \nb",
    "[text](https://example.org) [rel](/relative) [title](https://example.org \"t\")",
    "<https://example.org/?a=1&amp;b=2> <mailto:ada@example.org> <ada@example.org>",
    "`code` ``co`de`` \\`not code\\` \\\\`code after a backslash`",
    "> quoted **bold**\n> more\n\n---\n\n***\n\nafter",
    "line one  \nline two\\\nline three",
    "    indented code **not bold**\n\n```\nfenced\n```",
    "&lt; &amp; &#61; &#x3D; AT&T &copy",
    "![image](https://example.org/i.png) [ref][r] [r]\n\n[r]: https://example.org",
    "- **Ada:** worked on <https://example.org/1> and \\*more\\* things\n"
    "- **Grace** (5 min) about \\`code\\`  \n    second line\n"
    "    - **Decision:** \\# not a heading",
    "**<https://example.org>** and **a\\*\\*b** and **a**\\*",
]


# What the list shortcut must leave to python-markdown: items another block processor
# takes (headers, rules, lists, quotes, references, code), items over several lines, and
# lists that continue an earlier one.
LIST_ITEMS = [
    "- # heading\n- ## another #\n- #not one",
    "- - nested\n- * nested\n- + nested\n- 1. ordered\n- 12. ordered\n- 1.not\n- 2) not",
    "- * * *\n- - - -\n- _ _ _\n- ***\n- **bold** - rest\n- *a*\n- _a_ b\n- -a\n- *-*",
    "- > quoted\n- [r]: https://example.org\n- [link](https://example.org)\n- >not",
    "-     code\n-\ttab\n-  two spaces\n- \n-",
    "- lazy\ncontinued\n- next\n    indented continuation\n- last",
    "- first\n\n- loose\n- tight after loose\n\n1. one\n2. two\n\n3. three",
    "* star\n+ plus\n- dash\n1. mixed\n\n- a\n===\n- b\n---",
    "1. a\n2. # h\n3. b\n\n5. starts at five\n6. six",
    "Text\n- right after text\n- x\n\n## h\n- after a heading",
]


@pytest.mark.parametrize("text", LIST_ITEMS)
def test_list_items_are_python_markdowns(text: str) -> None:
    assert html(text) == html(text, shortcut=False) == python_markdown(text)


@pytest.mark.parametrize("text", TEMPLATE_MARKDOWN)
def test_template_markdown_is_python_markdowns(text: str) -> None:
    assert html(text) == html(text, shortcut=False) == python_markdown(text)


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.md")), ids=lambda path: path.stem)
def test_the_golden_notes_html_is_python_markdowns(path: Path) -> None:
    note = path.read_text(encoding="utf-8")
    assert html(note) == html(note, shortcut=False) == python_markdown(note)


def test_raw_html_is_the_only_difference_from_python_markdown() -> None:
    text = "<b>bold</b>\n\n<div>\nblock\n</div>"
    assert html(text) == html(text, shortcut=False) == (
        "<p>&lt;b&gt;bold&lt;/b&gt;</p>\n<p>&lt;div&gt;\nblock\n&lt;/div&gt;</p>")
    assert python_markdown(text) == "<p><b>bold</b></p>\n<div>\nblock\n</div>"


markdownish = st.lists(st.sampled_from([
    *FRAGMENTS, "a", "b c", "  \n", "\n    ", "\\*", "\\`", "\\_", "\\\\", "\\#", "\\[",
    "**a**", "**", "<https://example.org/x_y*z*>", "<https://a.example/?q=1&amp;r>", "&lt;",
    "[a b](https://x.example/c_d*e*?f&g)", "[a](b)", "!", "(", ")", "[a]", "\\!", "&copy;",
]), max_size=20).map("".join)


@QUICK
@given(text=markdownish)
def test_any_markdown_gives_the_same_html_with_the_shortcut(text: str) -> None:
    assert html(text) == html(text, shortcut=False)


@QUICK
@given(name=hostile, text=hostile)
def test_escaped_chat_text_gives_the_same_html_with_the_shortcut(name: str, text: str) -> None:
    lines = (f"# {escape_markdown(name)}\n\n- **{escape_markdown(name)}:** "
             f"{escape_markdown(text)}\n    - **Decision:** "
             f"{escape_markdown(text, continuation_indent=' ' * 8)}\n- {escape_markdown(text)}")
    assert html(lines) == html(lines, shortcut=False)


@NOTES
@given(parts=meetings)
def test_any_note_gives_the_same_html_with_the_shortcut(parts: Parts) -> None:
    note = render_note(record(parts), LONDON, {"code_of_conduct": "https://example.org/c"})
    assert html(note) == html(note, shortcut=False)


def busy_meeting() -> Parts:
    """A meeting like the benchmark's, with some of everything chat text brings."""
    people = [f"Person {n}" for n in range(30)]
    texts = [
        "worked on https://example.org/{n}?a=1&b=2 and *more* things, number {n}",
        "agenda item {n} about `code` and [brackets] and snake_case",
        "# not a heading {n}\n- not a list\n1. not ordered\nthree lines",
        "#{n} > quote + plus - minus | pipe === and a\\backslash!",
    ]
    said = [texts[n % len(texts)].format(n=n) for n in range(60)]
    return Parts(
        title="Big *meeting*",
        attendees=tuple(Profile(name, f"Org {n}", f"@p{n}") for n, name in enumerate(people)),
        updates=tuple((people[n % 30], text) for n, text in enumerate(said)),
        celebrations=(("Ada", "v2 is out!"),),
        items=tuple(Item(people[n], said[n], 5, notes=(said[n + 1],), decisions=(said[n + 2],))
                    for n in range(10)),
        notes=(said[3],), decisions=(said[4],),
        actions=(Act("Ada", None, said[5]), Act("Grace", "@ada", said[6])),
    )


def test_the_shortcut_takes_all_the_text_of_a_busy_note() -> None:
    # With none of python-markdown's inline patterns left, only the shortcut can give
    # the same HTML: so no text of the note was left to the slow way.
    note = render_note(record(busy_meeting()), LONDON, {"notes": "https://notes.example.org"})
    bare = new_converter()
    bare.treeprocessors["inline"].inlinePatterns = Registry()
    # python-markdown's own convert: the document shortcut would take all this note.
    assert markdown.Markdown.convert(bare, note) == html(note, shortcut=False)
    assert document_html(note) == html(note, shortcut=False)
    assert re.search(r"<li><strong>Person 3:</strong> #3 &gt; quote", html(note))


# --- whole documents of the plainest shape, written directly -------------------------------


def document_html(text: str) -> str | None:
    """What the document shortcut writes, or None where it leaves the text to python-markdown."""
    return SHORTCUT.treeprocessors["inline"].document_html(text)


# Shapes the shortcut writes itself: one-line headings and paragraphs, tight lists of
# one-line items, of inert text: escapes, autolinks, a leading **bold**, entities as text.
TAKEN_DOCUMENTS = [
    "# Title\n\n- a\n- **b:** c <https://example.org/x?a=1&b=2>\n\n## Next\n\n-\n\n###### Six",
    "plain paragraph\n\n- item\n\n\n\nafter more blank lines\n\n- list",
    "\n\n# leading and trailing blank lines\n\n",
    "- &lt;script>alert(1)&lt;/script> &copy; &#x3C; &#60",
    "- \\[x\\](javascript:alert(1)) \\_a\\_ \\*b\\*",
    "- AT&T &amp; &\\#38; &#38 \\\\\\* \\\\ a\\\\\\\\b \\` \\# \\> \\+ \\- \\. \\! \\( \\) \\{ \\}",
    "- <https://example.org/\"quote\"> <https://example.org/a_b*c*> <https://x.example/&amp;>",
    "#### By participating, you agree to the Code of Conduct.",
    "- a\u00a0\n- b\u00a0c\n\nsnake\\_case and 2 \\* 3 = 6\n\n===\n\n1.5 is a number",
    "- **Ada:** pass (posted ahead)\n- **a\\*\\*b** c\n- **<https://example.org>** d",
    "- \\#1 > quote + plus - minus | pipe === and a\\\\backslash!",
    "- **Ada** (5 min) item\n    - note\n    - **Decision:** d\n- **Bo**\n- **C**\n    - a",
    "#### Abide by the [Code of Conduct](https://x.example/c_o_c?a=1&b=2&amp;c).",
    "x [a](b) y [c d](https://e.example/f) \\\\[i](j) m\n\n**[k](l)** m",
    "- a [b](c)\n    - \\[d\\](e) [f](g)",
    "- X  \n    more\n    - Y  \n        more  \n        <https://x.example>\n"
    "- Z  \n    <https://y.example> z",
    "- **Ada:** one  \n    \\# two  \n    \\- three [a](b)  \n    &lt;script> four",
    "- a\x1c\n- b\x85\n- c\u2028d\n\ne\x0c\n\n# f\x0bg",  # white space str.strip takes
]
# Shapes it leaves to python-markdown: anything another block processor takes or that
# depends on the blocks around it, any text not inert, whatever python-markdown rewrites.
LEFT_DOCUMENTS = [
    "- a\n\n- b", "- a\n\n1. b", "# C#", "# C\\#", "- \u00a0b", "# title #", "####### 7",
    "#no space",
    "# title\u00a0", "# title\x1c", "para\nsecond line", "- a\n  continued", "- a\nlazy", "1. one",
    "\u0661. x", "- \u0661. x", "* star", "+ plus", "- *em*", "- [link](https://x.example)",
    "> quote", "---", "- - -", "- --", "\tx", "a\r\nb", "a \nb",
    " a", "a ", "- \u2003x", "[r]: https://example.org", "a\x02b",
    "`code`", "- a\n===", "", "\n\n", "<b>raw</b>", "**a **b", "# **bold** *and em*",
    "- a\n    - b\n        - c", "- a\n     - b", "- a\n    - # b", "- a\n    - b\n    more",
    "    - a", "- a\n    * b", "- a\n    1. b", "- a\n    - - b", "- a\n    - ---",
    "- a\n\n    - b", "- a  \n     five", "- a \n    b", "- a   \n    b", "- a\n    b",
    "- a  \n    - b", "- a  \n    # b", "- a\n    - b  \n    c", "- a  \n    b ", "a ", "- a ",
    "[a](b)", "- [a](b)", "x ![a](b)", "x [a *b*](c)", "x [a](b \"t\")", "x [a](<b>)",
    "x [a](b c)", "x [a]( b)", "x [a](b)](c)", "x [a] (b)", "x [a][b]", "x [&amp;](b)",
    "x \\![a](b)", "x [a](b(c))", "x **[a](b)**",
]


@pytest.mark.parametrize("text", TAKEN_DOCUMENTS)
def test_the_shortcut_writes_the_plainest_documents_as_python_markdown_does(text: str) -> None:
    assert document_html(text) is not None
    assert html(text) == document_html(text) == html(text, shortcut=False)


@pytest.mark.parametrize("text", LEFT_DOCUMENTS)
def test_other_documents_are_left_to_python_markdown(text: str) -> None:
    assert document_html(text) is None
    assert html(text) == html(text, shortcut=False)


def test_a_note_is_written_by_the_shortcut() -> None:
    # The benchmark's note, with agenda notes, actions, a code of conduct and texts of
    # several lines.
    said = [f"worked on https://example.org/{n}?a=1&b=2 and *more* [x](javascript:alert(1))"
            f" #{n} <b> snake_case" + "\n# and\n- more\nhttps://example.org" * (n % 2)
            for n in range(9)]
    parts = Parts(
        title="Big *meeting*",
        attendees=tuple(Profile(f"P_{n}", f"Org <{n}>", f"@p{n}") for n in range(9)),
        updates=tuple((f"P_{n}", said[n]) for n in range(9)),
        items=tuple(Item(f"P_{n}", said[n], 5, notes=(said[n + 1],), decisions=(said[n + 2],))
                    for n in range(3)),
        notes=(said[3],), decisions=(said[4],),
        actions=(Act("Ada", None, said[5]), Act("Grace", "@ada", said[6])),
    )
    note = render_note(record(parts), LONDON, {"notes": "https://notes.example.org/big",
                                               "code_of_conduct": "https://x.example/c_o_c"})
    assert document_html(note) is not None
    assert html(note) == html(note, shortcut=False) == python_markdown(note)


# Chat text that tries to be HTML or markdown structure, each made one line by the escaper.
HOSTILE_LINES = [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "</li></ul><h1>x</h1>",
    "# heading", "## heading ##", "C#", "- nested\n    - deeper", "1. ordered", "1) ordered",
    "> quote", "[x](javascript:alert(1))", "[x]: https://evil.example", "![i](https://e.example)",
    "&lt;script&gt;", "&#60;b&#62;", "&amp;lt;", "&\\#38;", "AT&T", "a\\b\\\\c\\", "\\*x\\*",
    "snake_case __init__ _x_", "**bold** *em* ***both***", "`code` ``x``", "---", "***",
    "===", "| a | b |", "https://example.org/a_b*c*?d=<e>&f=\"g\"", "<https://x.example>",
    "mailto:a@b.org <a@b.org>", "javascript:alert(1)", "  leading and trailing  ", "-",
    "\u202eevil\u202c", "\u00a0nbsp\u00a0", "text\u2003", "\u0661. x", "*", "#",
]
_OLD_AUTOLINK = re.compile(r"<https?://[^<>\s]*>", re.IGNORECASE)


def sanitized_python_markdown(text: str) -> str:
    """markdown_to_html as it was before its shortcuts: python-markdown (no raw HTML),
    then nh3 with the absolute-links filter always."""
    text = _OLD_AUTOLINK.sub(lambda link: link.group().replace("&", "&amp;"), text)
    return nh3.clean(html(text, shortcut=False), tags=render._HTML_TAGS,
                     attributes={"a": {"href"}}, url_schemes={"http", "https", "mailto"},
                     link_rel="noopener noreferrer",
                     attribute_filter=render._absolute_links_only)


def hostile_document(said: str) -> str:
    line = escape_line(said.replace("\n", " ")) or "(no text)"
    return (f"# {line}\n\n- **{line}:** {line}\n- {line}\n\n{line}\n\n## Section\n\n"
            f"- {line}\n\n-")


@pytest.mark.parametrize("said", HOSTILE_LINES)
def test_hostile_chat_text_in_the_plainest_documents_gives_the_same_safe_html(said: str) -> None:
    text = hostile_document(said)
    safe = markdown_to_html(text)
    assert safe == sanitized_python_markdown(text)
    assert html(text) == html(text, shortcut=False)
    # Only the bot's own structure: two headings, two lists, two paragraphs, three items;
    # links only to web and mail addresses.
    assert re.findall(r"<(?!/|a |strong>)[^>]*>", safe) == [
        "<h1>", "<ul>", "<li>", "<li>", "<p>", "<h2>", "<ul>", "<li>", "<p>"]
    assert all(address.startswith(("https://", "mailto:"))
               for address in re.findall(r'<a href="([^"]*)"', safe))


def test_most_hostile_lines_take_the_shortcut() -> None:
    # A heading ending in `#` is python-markdown's to trim; nearly all else is taken.
    taken = [said for said in HOSTILE_LINES if document_html(hostile_document(said))]
    assert len(taken) >= len(HOSTILE_LINES) - 4, set(HOSTILE_LINES) - set(taken)


document_lines = st.tuples(
    st.sampled_from(["", "", "# ", "## ", "###### ", "####### ", "- ", "- ", "- **a:** ", "-",
                     "* ", "1. ", "    - ", "    ", " ", "#"]),
    st.one_of(hostile.map(escape_line), markdownish),
).map("".join)


@QUICK
@given(lines=st.lists(document_lines, max_size=8))
def test_any_document_of_lines_gives_the_same_html_with_the_shortcut(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert html(text) == html(text, shortcut=False)
    assert markdown_to_html(text) == sanitized_python_markdown(text)


# Blocks of the shapes a note is made of, of chat text made one line by the escaper (and
# sometimes not quite: an empty line, a heading ending in `#`, a list after a list).
said_line = hostile.map(lambda said: escape_line(said.replace("\r", " ").replace("\n", " ")))
note_blocks = st.one_of(
    st.tuples(st.sampled_from(["# ", "## ", "#### ", "###### "]), said_line,
              st.sampled_from(["", " [Code of Conduct](https://x.example/c_o_c?a=1&b=2)."]))
    .map("".join),
    st.lists(st.one_of(
        st.tuples(st.sampled_from(["- ", "- **Ada:** ", "- **a\\_b** (5 min) ", "    - ",
                                   "    - **Decision:** "]), said_line).map("".join),
        hostile.map(lambda said: "- " + escape_markdown(said)),
        hostile.map(lambda said: "    - " + escape_markdown(said, continuation_indent=" " * 8)),
    ), min_size=1, max_size=4).map("\n".join),
    said_line, st.just("-"),
)


@QUICK
@given(blocks=st.lists(note_blocks, min_size=1, max_size=6))
def test_any_document_of_note_blocks_gives_the_same_html_with_the_shortcut(
    blocks: list[str],
) -> None:
    text = "\n\n".join(blocks)
    assert html(text) == html(text, shortcut=False)
    assert markdown_to_html(text) == sanitized_python_markdown(text)


# --- the sanitizer: its links filter left out only where it could drop nothing ------------

HREFS = [
    ('<a href="https://x.example">x</a>', True), ('<a href="mailto:a@b.org">x</a>', True),
    ('<a href="/relative">x</a>', False), ('<a href="//evil.example">x</a>', False),
    ('<a href="&#109;ailto:a@b.org">x</a>', False), ("<a href='https://x'>x</a>", False),
    ('<a HREF="https://x">x</a>', False), ('<a href = "https://x">x</a>', False),
    ('<a href=https://x>x</a>', False), ('<p>the word href in text</p>', False),
    ('<a href="http:/x">x</a>', False), ('<a hReF="/x">x</a>', False),
    ('<p>no links</p>', True),
]


@pytest.mark.parametrize(("markup", "unfiltered"), HREFS)
def test_the_links_filter_is_used_wherever_an_href_is_not_plainly_absolute(
    markup: str, unfiltered: bool,
) -> None:
    assert render._only_absolute_hrefs(markup) is unfiltered


@pytest.mark.parametrize("text", [
    "[rel](/relative) [abs](https://x.example) [proto](//evil.example) [m](mailto:a@b.org)",
    "[bad](http:/x) [case](HTTPS://x.example) <a@b.org> [s](https://x.example \"t\")",
    "[x](https://x.example) and the word href=\"/relative\" in text",
    "[j](javascript:alert(1)) [d](data:text/html,x) [v](vbscript:x)",
])
def test_links_are_sanitized_as_with_the_filter_always(text: str) -> None:
    assert markdown_to_html(text) == sanitized_python_markdown(text)


# --- one converter, kept -------------------------------------------------------------------


def test_a_converter_used_before_gives_what_a_new_one_gives() -> None:
    second = "&lt; **a** [x](https://example.org) [r] <b>\n\n[r]: https://example.org"
    markdown_to_html(render_note(record(busy_meeting()), LONDON, {}))
    with ThreadPoolExecutor(1) as pool:  # a new thread makes a new converter
        fresh = pool.submit(markdown_to_html, second).result()
    assert markdown_to_html(second) == fresh


def test_threads_each_get_their_own_converter() -> None:
    notes = [render_note(record(busy_meeting()), LONDON, {}),
             render_note(sample_record(), LONDON, {}), "**a** `b` <https://example.org>"]
    expected = [markdown_to_html(note) for note in notes]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(markdown_to_html, notes * 20))
    assert results == expected * 20


def test_a_conversion_that_fails_leaves_the_next_one_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(text: str) -> str:
        raise RecursionError("half-way")

    monkeypatch.setattr(render._converter(), "convert", fail)
    with pytest.raises(RecursionError):
        markdown_to_html("**a**")
    assert markdown_to_html("**a**") == "<p><strong>a</strong></p>"


# --- the markdown ----------------------------------------------------------------------------

_ENTITY = re.compile(r"&(?=#?\w+;)")
_LINK = re.compile(r"https?://[^\s<>\"'`\\\[\]]+[^\s<>\"'`\\\[\].,;:!?)}]", re.IGNORECASE)


def plain_escape_line(line: str) -> str:
    """escape_line as it was written before its quick paths."""
    def escape_inline(text: str) -> str:
        text = text.translate(str.maketrans(
            {"\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]"}))
        return re.sub("<", "&lt;", _ENTITY.sub("&amp;", text))

    text = re.sub("[\ud800-\udfff]", "\ufffd", line.replace("\r\n", "\n").replace("\r", "\n"))
    line = re.sub("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", "", text).strip()
    pieces, last = [], 0
    for link in _LINK.finditer(line):
        pieces += [escape_inline(line[last:link.start()]), f"<{link.group()}>"]
        last = link.end()
    line = "".join([*pieces, escape_inline(line[last:])])
    if set(line) == {"="}:
        return "&#61;" + line[1:]
    if line.startswith("|"):
        return "&#124;" + line[1:]
    if ordered := re.match(r"(\d+)([.)])", line):
        return f"{ordered[1]}\\{ordered[2]}{line[ordered.end():]}"
    return re.sub(r"^([#>+\-])", r"\\\1", line)


def plain_escape_markdown(text: str, continuation_indent: str) -> str:
    """escape_markdown as it was written before its quick paths."""
    text = re.sub("[\ud800-\udfff]", "\ufffd", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = re.sub("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", "", text)
    lines = [plain_escape_line(line) for line in text.split("\n")]
    return ("  \n" + continuation_indent).join(line for line in lines if line)


@QUICK
@given(text=hostile, indent=st.sampled_from(["    ", " " * 8]))
def test_escape_markdown_writes_what_the_plain_escaper_writes(text: str, indent: str) -> None:
    assert escape_markdown(text, continuation_indent=indent) == plain_escape_markdown(text, indent)
    assert render.escape_line(text) == plain_escape_line(text)


# --- the sandbox -----------------------------------------------------------------------------


def test_a_template_reads_the_values_of_the_note() -> None:
    context = note_context(sample_record(), ZoneInfo("UTC"), {})
    template = compile_template("{% for u in updates %}{{ u.name }}: {{ u.text }}{% endfor %} "
                                "{{ agenda[0].owner }} {{ agenda[0].details | join(', ') }} "
                                "{{ actions[0].person }} {{ actions[0].items[0] }}")
    assert template.render(context) == (
        "Ada: updateAda: pass Ada note, **Decision:** decision Ada action")


@pytest.mark.parametrize("expression", [
    "updates[0].__class__", "updates[0].__slots__", "agenda[0].__init__",
    "actions[0].__reduce__", "updates[0].name.__class__", "updates.__class__",
])
def test_a_template_reaches_nothing_else(expression: str) -> None:
    context = note_context(sample_record(), ZoneInfo("UTC"), {})
    with pytest.raises(SecurityError):
        compile_template(f"{{{{ {expression} }}}}").render(context)
