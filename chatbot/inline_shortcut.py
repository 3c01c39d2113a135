"""The shortcut through python-markdown's inline processor for the text our escaping
writes (see `chatbot.render.new_converter`): imported with python-markdown, when the
first message or note is turned into HTML."""

from __future__ import annotations

import re
from xml.etree import ElementTree as etree

import markdown
from markdown.treeprocessors import InlineProcessor
from markdown.util import AtomicString


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
        piece = (r"(?:[^\\`*_\[\]<&\x02\x03]|&(?!#[0-9]+;|#x[0-9a-fA-F]+;|[a-zA-Z0-9]+;)"
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
