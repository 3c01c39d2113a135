"""Shortcuts through python-markdown for what a note is mostly made of (see
`chatbot.render.new_converter`): the inline processor's for the text our escaping writes,
and the list processors' for items of one such line. Imported with python-markdown, when
the first message or note is turned into HTML."""

from __future__ import annotations

import re
from xml.etree import ElementTree as etree

import markdown
from markdown.blockprocessors import OListProcessor, UListProcessor
from markdown.serializers import _escape_attrib_html, _escape_cdata
from markdown.treeprocessors import InlineProcessor, UnescapeTreeprocessor
from markdown.util import STX, AtomicString

# The block processors of a plain python-markdown converter (raw HTML's removed): the
# list shortcut knows which of them would take an item, so it is used with these only.
PLAIN_BLOCK_PROCESSORS = frozenset({
    "empty", "indent", "code", "hashheader", "setextheader", "hr", "olist", "ulist",
    "quote", "reference", "paragraph"})
# An item of one line that none of them but the paragraph takes: not empty, no leading
# space (indent, code); not a list item (`- `, `* `, `+ `, `1. `, in any digits `\d`
# takes); not a rule (a line of only `-`, `_`, `*` and spaces, more broadly than the
# rule's own pattern); not starting as a header, quote or reference does (`#`, `>`, `[`).
# A setext header needs two lines.
_PARAGRAPH_ITEM = re.compile(r"(?![-*+] )(?!\d+\. )(?![-_* ]*\Z)[^\s#>\[][^\n]*")
# A link python-markdown's link pattern takes as typed, and whose text no other pattern
# changes: not an image (no `!` before), no brackets, quotes, parentheses or white space in
# the address, no character an inline pattern starts with in the text.
_PLAIN_LINK = (r"(?<!!)\[[^\\`*_\[\]<>&()!\x02\x03\n]+\]"
               r"\([^\s()<>\"'\\`\[\]\x02\x03]+\)")


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


def _escaped_character(escape: re.Match[str]) -> str:
    return escape[1]


class InertTextShortcut(InlineProcessor):
    """python-markdown's inline processor, but text made only of what `escape_markdown`
    writes (escaped characters, web autolinks, hard line breaks, entities, plain text)
    and, before it, at most one `**bold**` of the same, is turned into elements directly.

    That is most of a note, and python-markdown spends 4 to 12 µs on each escape, link
    or bold it finds. The elements built are those python-markdown builds for that
    text (tests compare the HTML of both); text that is anything else, or that the
    pattern is unsure of, is left to python-markdown.
    """

    def __init__(self, md: markdown.Markdown) -> None:
        super().__init__(md)
        escaped = re.escape("".join(md.ESCAPED_CHARS))
        # One piece of inert text: a character no inline pattern starts with (STX and ETX
        # mark python-markdown's placeholders), an escaped character, an autolink holding
        # nothing an earlier pattern (code, escapes, links) would take, or a plain link
        # (`code_of_conduct_line` writes one) that no earlier pattern can change. An `&` is
        # plain too: python-markdown passes an entity through as typed, and its serializer
        # leaves the `&` of every entity its pattern takes (and more) as it is.
        # Plain characters are taken a run at a time, possessively (Python 3.11): one step
        # per character made the match most of the shortcut's time, and a run cannot end
        # where a `**` or the end could follow, so the same texts match.
        piece = (r"(?:[^\\`*_\[\]<\x02\x03]++"
                 rf"|\\[{escaped}]|<[A-Za-z][A-Za-z0-9+.\-]*://[^<>\s\\`\[\]\x02\x03]*>"
                 rf"|{_PLAIN_LINK})")
        # A `**` at the start, closed by one after no space and before a space (not a
        # line break's) or the end, with no `*` or `_` anywhere else: python-markdown's
        # <strong>, with nothing left for its emphasis to pair.
        self._inert = re.compile(
            rf"(?:\*\*(?P<strong>(?!\s){piece}+?)(?<!\s)\*\*(?=\s|\Z)(?!  \n))?"
            rf"(?P<rest>{piece}*)\Z")
        # In inert text, every backslash starts an escape, every `<` an autolink and
        # every `[` a link.
        self._tokens = re.compile(
            rf"\\(?P<escaped>[{escaped}])|<(?P<address>[^<>]*)>|  \n"
            r"|\[(?P<text>[^\]]*)\]\((?P<href>[^)]*)\)")
        self._links = re.compile(r"<([^<>]*)>")
        self._escape = re.compile(rf"\\([{escaped}])")

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

    def document_html(self, source: str) -> str | None:
        """The HTML python-markdown writes for a document of blocks it would parse as
        one-line ATX headings, one-line paragraphs and tight lists of one-line items
        (each with at most one such list under it), all of inert text; None for any
        other document.

        Only shapes whose handling by each of python-markdown's block processors is
        known are taken (`_PARAGRAPH_ITEM` says which lines no processor but the
        paragraph's takes), and a list right after a list (python-markdown joins them
        into one loose list) is not. What is written is what python-markdown's
        serializer writes for the tree it builds, with `prettify`'s line breaks."""
        if (not source.strip("\n") or source[0] == " " or source[-1] == " "
                or any(unusual in source for unusual in _UNUSUAL)):
            return None
        written: list[str] = []
        after_list = False
        for block in _BLANK_LINES.split(source.strip("\n")):
            if block.startswith("- "):
                if after_list or (items := self._list_html(block)) is None:
                    return None
                written.append(items)
                after_list = True
                continue
            after_list = False
            if "\n" in block:
                return None
            if block[0] == "#":
                if (heading := _HEADING.fullmatch(block)) is None:
                    return None
                html = self._inert_html(heading[2])
                tag = f"h{len(heading[1])}"
            elif block == "-" or (_PARAGRAPH_ITEM.fullmatch(block) and block[-1] != " "):
                html = self._inert_html(block)
                tag = "p"
            else:
                return None
            if html is None:
                return None
            written.append(f"<{tag}>{html}</{tag}>")
        return "\n".join(written)

    def _list_html(self, block: str) -> str | None:
        """A tight list of one-line items, each with at most one tight list of one-line
        items under it (indented four spaces), as python-markdown writes it; or None.
        A "line" may go on over more lines after hard line breaks, indented as
        `escape_markdown` indents them (four spaces more than its item's `-`)."""
        entries: list[tuple[str, list[str]]] = []  # an item's indent, and its lines
        for line in block.split("\n"):
            if line.startswith("- "):
                entries.append(("", [line[2:]]))
            elif line.startswith("    - ") and entries:
                entries.append(("    ", [line[6:]]))
            elif (entries and line.startswith(indent := entries[-1][0] + "    ")
                  and _HARD_BREAK_END.search(entries[-1][1][-1])):
                # python-markdown keeps the line's indent but for a sub-item's first four
                entries[-1][1].append("    " + line[len(indent):])
            else:
                return None
        items: list[list[str]] = []  # an item's HTML, then its sub-items'
        for indent, lines in entries:
            if lines[-1].endswith(" ") or not _PARAGRAPH_ITEM.fullmatch(lines[0]) or (
                    len(lines) > 1
                    and not all(_PARAGRAPH_ITEM.fullmatch(line, 4) for line in lines[1:])):
                return None
            text = lines[0] if len(lines) == 1 else "\n".join(lines)
            if (html := self._inert_html(text)) is None:
                return None
            if not indent:
                items.append([html])
            else:
                items[-1].append(f"<li>{html}</li>")
        return "\n".join(["<ul>", *(
            f"<li>{item[0]}</li>" if len(item) == 1 else
            "<li>{}<ul>\n{}\n</ul>\n</li>".format(item[0], "\n".join(item[1:]))
            for item in items), "</ul>"])

    def _inert_html(self, text: str) -> str | None:
        """Inert text (of a heading, paragraph or item) as python-markdown's HTML, or None
        if it is not inert."""
        if (match := self._inert.match(text)) is None:
            return None
        rest = self._spans_html(match["rest"])
        if (strong := match["strong"]) is not None:
            return f"<strong>{self._spans_html(strong)}</strong>{rest}"
        return rest

    def _spans_html(self, text: str) -> str:
        """`_spans` of a line, serialized, with `prettify`'s line breaks."""
        if "](" in text or "  \n" in text:  # perhaps a link, a line break: token by token
            head, nodes = self._spans(text)
            written = [_escape_cdata(head or "")]
            for node in nodes:
                if node.tag == "br":
                    tail = node.tail
                    written.append("<br>")
                    written.append(_escape_cdata("\n" if not tail or not tail.strip()
                                                 else "\n" + tail))
                    continue
                written.append(f'<a href="{_escape_attrib_html(node.get("href", ""))}">'
                               f'{_escape_cdata(node.text or "")}</a>')
                written.append(_escape_cdata(node.tail or ""))
            return "".join(written)
        # Else every backslash starts an escape and every `<` an autolink, which holds no
        # backslash and no `>`: so the escapes can be undone first, and the links found after.
        if "\\" in text:
            # Without an escaped backslash, every backslash is an escape's.
            text = (text.replace("\\", "") if "\\\\" not in text
                    else self._escape.sub(_escaped_character, text))
        if "<" not in text:
            return _escape_cdata(text)
        pieces = self._links.split(text)
        for index, piece in enumerate(pieces):
            pieces[index] = (_escape_cdata(piece) if index % 2 == 0 else
                             f'<a href="{_escape_attrib_html(piece)}">{_escape_cdata(piece)}</a>')
        return "".join(pieces)

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
            elif (href := token["href"]) is not None:
                node = etree.Element("a", href=href)
                node.text = token["text"]
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


# What a converter must be made of for `quicker_documents` to know its output: python-markdown's
# own processors, raw HTML's removed, and this module's shortcuts.
PLAIN_PROCESSORS = {
    "preprocessors": frozenset({"normalize_whitespace"}),
    "treeprocessors": frozenset({"inline", "prettify", "unescape"}),
    "postprocessors": frozenset({"raw_html", "amp_substitute"}),
}
# Text python-markdown would change before parsing (tabs, carriage returns, its placeholder
# marks): a document with any of these is not taken.
_UNUSUAL = ("\r", "\t", "\x02", "\x03")
# A line that ends in a hard line break: two spaces after something else.
_HARD_BREAK_END = re.compile(r"\S  \Z")
_BLANK_LINES = re.compile(r"\n\n+")
# An ATX heading that python-markdown takes as typed: no closing `#`s or white space
# (Unicode's too, which `str.strip` takes) to trim.
_HEADING = re.compile(r"(#{1,6}) ([^#\s][^\n]*(?<![#\s]))")


def quicker_documents(converter: markdown.Markdown, inline: InertTextShortcut) -> None:
    """`convert` writes the HTML of a document of the usual shapes itself (see
    `InertTextShortcut.document_html`: a note is mostly that), when the converter is the
    plain one with the shortcuts. Anything else goes through python-markdown whole."""
    processors = converter.parser.blockprocessors
    if ({item.name for item in processors._priority} != PLAIN_BLOCK_PROCESSORS
            or not isinstance(processors["ulist"], PlainItemsUList)
            or converter.treeprocessors["inline"] is not inline
            or any({item.name for item in getattr(converter, registry)._priority} != names
                   for registry, names in PLAIN_PROCESSORS.items())):
        return
    convert = converter.convert

    def quick_convert(source: str) -> str:
        html = inline.document_html(source)
        return convert(source) if html is None else html

    converter.convert = quick_convert  # type: ignore[method-assign]
