"""Shortcuts through python-markdown for what a note is mostly made of (see
`chatbot.render.new_converter`): the inline processor's for the text our escaping writes,
and the list processors' for items of one such line. Imported with python-markdown, when
the first message or note is turned into HTML."""

from __future__ import annotations

import re
from xml.etree import ElementTree as etree

import markdown
from markdown.blockprocessors import OListProcessor, UListProcessor
from markdown.treeprocessors import InlineProcessor, UnescapeTreeprocessor
from markdown.util import STX, AtomicString

# The block processors of a plain python-markdown converter (raw HTML's removed): the
# list shortcut knows which of them would take an item, so it is used with these only.
PLAIN_BLOCK_PROCESSORS = frozenset({
    "empty", "indent", "code", "hashheader", "setextheader", "hr", "olist", "ulist",
    "quote", "reference", "paragraph"})
# An item of one line that none of them but the paragraph takes: not empty, no leading
# space (indent, code); not a list item (`- `, `* `, `+ `, `1. `); not a rule (a line of
# only `-`, `_`, `*` and spaces, more broadly than the rule's own pattern); not starting
# as a header, quote or reference does (`#`, `>`, `[`). A setext header needs two lines.
_PARAGRAPH_ITEM = re.compile(r"(?![-*+] )(?![0-9]+\. )(?![-_* ]*\Z)[^\s#>\[][^\n]*")


class _PlainItems:
    """python-markdown's list processor, but an item of one line that only the paragraph
    processor would take becomes its `li`'s text directly (what that processor does in a
    tight list), without a pass through every block processor. The rest of `run` is
    python-markdown's 3.x `OListProcessor.run`; tests compare the HTML with and without."""

    def run(self, parent: etree.Element, blocks: list[str]) -> None:
        if not isinstance(self, OListProcessor):
            raise TypeError("a list processor's mixin")
        items = self.get_items(blocks.pop(0))
        sibling = self.lastChild(parent)
        if sibling is not None and sibling.tag in self.SIBLING_TAGS:
            lst = sibling
            if lst[-1].text:
                paragraph = etree.Element("p")
                paragraph.text = lst[-1].text
                lst[-1].text = ""
                lst[-1].insert(0, paragraph)
            last_child = self.lastChild(lst[-1])
            if last_child is not None and last_child.tail:
                paragraph = etree.SubElement(lst[-1], "p")
                paragraph.text = last_child.tail.lstrip()
                last_child.tail = ""
            li = etree.SubElement(lst, "li")
            self.parser.state.set("looselist")
            self.parser.parseBlocks(li, [items.pop(0)])
            self.parser.state.reset()
        elif parent.tag in ["ol", "ul"]:
            lst = parent
        else:
            lst = etree.SubElement(parent, self.TAG)
            if not self.LAZY_OL and self.STARTSWITH != "1":
                lst.attrib["start"] = self.STARTSWITH
        self.parser.state.set("list")
        for item in items:
            if item.startswith(" " * self.tab_length):
                self.parser.parseBlocks(lst[-1], [item])
            elif _PARAGRAPH_ITEM.fullmatch(item):
                etree.SubElement(lst, "li").text = item
            else:
                li = etree.SubElement(lst, "li")
                self.parser.parseBlocks(li, [item])
        self.parser.state.reset()


class PlainItemsUList(_PlainItems, UListProcessor):
    pass


class PlainItemsOList(_PlainItems, OListProcessor):
    pass


class QuickerUnescape(UnescapeTreeprocessor):
    """python-markdown's unescaping, but text with no placeholder in it (most of a note:
    the inline shortcut writes escaped characters as they are) is not searched."""

    def unescape(self, text: str) -> str:
        return super().unescape(text) if STX in text else text


def quicker_block_level(converter: markdown.Markdown) -> None:
    """`is_block_level` remembered per tag: python-markdown asks it of every element, twice,
    and it searches a list. The converter's block-level tags are fixed once it is made."""
    known = frozenset(converter.block_level_elements)
    answers: dict[object, bool] = {}

    def is_block_level(tag: object) -> bool:
        answer = answers.get(tag)
        if answer is None:
            answer = answers[tag] = isinstance(tag, str) and tag.lower().rstrip("/") in known
        return answer

    converter.is_block_level = is_block_level  # type: ignore[method-assign]


def shorten_lists(converter: markdown.Markdown) -> None:
    """Put the list shortcut in place of python-markdown's list processors, if the
    converter's block processors are the plain ones it knows."""
    processors = converter.parser.blockprocessors
    if {name for name in PLAIN_BLOCK_PROCESSORS if name in processors} != \
            PLAIN_BLOCK_PROCESSORS or len(processors) != len(PLAIN_BLOCK_PROCESSORS):
        return
    for name, shortcut in (("olist", PlainItemsOList), ("ulist", PlainItemsUList)):
        priority = next(item.priority for item in processors._priority if item.name == name)
        processors.register(shortcut(converter.parser), name, priority)


class InertTextShortcut(InlineProcessor):
    """python-markdown's inline processor, but text made only of what `escape_markdown`
    writes (escaped characters, web autolinks, hard line breaks, plain text; entities
    excepted) and, before it, at most one `**bold**` of the same, is turned into
    elements directly.

    That is most of a note, and python-markdown spends 4 to 12 µs on each escape, link
    or bold it finds. The elements built are those python-markdown builds for that
    text (tests compare the HTML of both); text that is anything else, or that the
    pattern is unsure of, is left to python-markdown.
    """

    def __init__(self, md: markdown.Markdown) -> None:
        super().__init__(md)
        escaped = re.escape("".join(md.ESCAPED_CHARS))
        # One piece of inert text: a character no inline pattern starts with (`&` unless
        # it starts an entity; STX and ETX mark python-markdown's placeholders), an
        # escaped character, or an autolink holding nothing an earlier pattern (code,
        # escapes, links) would take.
        # Plain characters are taken a run at a time, possessively (Python 3.11): one step
        # per character made the match most of the shortcut's time, and a run cannot end
        # where a `**` or the end could follow, so the same texts match.
        piece = (r"(?:[^\\`*_\[\]<&\x02\x03]++|&(?!#[0-9]+;|#x[0-9a-fA-F]+;|[a-zA-Z0-9]+;)"
                 rf"|\\[{escaped}]|<[A-Za-z][A-Za-z0-9+.\-]*://[^<>\s\\`\[\]\x02\x03]*>)")
        # A `**` at the start, closed by one after no space and before a space (not a
        # line break's) or the end, with no `*` or `_` anywhere else: python-markdown's
        # <strong>, with nothing left for its emphasis to pair.
        self._inert = re.compile(
            rf"(?:\*\*(?P<strong>(?!\s){piece}+?)(?<!\s)\*\*(?=\s|\Z)(?!  \n))?"
            rf"(?P<rest>{piece}*)\Z")
        # In inert text, every backslash starts an escape and every `<` an autolink.
        self._tokens = re.compile(
            rf"\\(?P<escaped>[{escaped}])|<(?P<address>[^<>]*)>|  \n")

    def run(self, tree: etree.Element, ancestors: list[str] | None = None) -> etree.Element:
        inert = []
        for element in tree.iter():
            text = element.text
            if (element is not tree and text and not isinstance(text, AtomicString)
                    and (match := self._inert.match(text))):
                element.text = None  # python-markdown finds nothing to do here
                inert.append((element, match))
        tree = super().run(tree, ancestors)
        for element, match in inert:
            nodes: list[etree.Element] = []
            if (strong_text := match["strong"]) is not None:
                strong = etree.Element("strong")
                strong.text, children = self._spans(strong_text)
                strong.extend(children)
                strong.tail, nodes = self._spans(match["rest"])
                nodes.insert(0, strong)
            else:
                element.text, nodes = self._spans(match["rest"])
            element[0:0] = nodes
        return tree

    def _spans(self, text: str) -> tuple[str | None, list[etree.Element]]:
        """Inert text as the text before its first element, and the elements (links and
        line breaks), each with the text after it as its tail."""
        head: str | None = None
        nodes: list[etree.Element] = []
        pieces: list[str] = []
        last = 0
        for token in self._tokens.finditer(text):
            pieces.append(text[last:token.start()])
            last = token.end()
            if (escaped := token["escaped"]) is not None:
                pieces.append(escaped)
                continue
            if (address := token["address"]) is not None:
                node = etree.Element("a", href=address)
                node.text = address
            else:
                node = etree.Element("br")
            if nodes:
                nodes[-1].tail = "".join(pieces) or None
            else:
                head = "".join(pieces) or None
            pieces = []
            nodes.append(node)
        pieces.append(text[last:])
        if nodes:
            nodes[-1].tail = "".join(pieces) or None
        else:
            head = "".join(pieces) or None
        return head, nodes
