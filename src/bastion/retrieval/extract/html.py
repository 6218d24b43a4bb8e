"""HTML with the standard library's tolerant parser: headings, paragraphs, list items,
preformatted text and tables as text; scripts, styles and navigation dropped."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from bastion.domain.retrieval import Block, ExtractedDocument
from bastion.retrieval.extract.detect import HTML
from bastion.retrieval.extract.text import SPACES

_SKIP = frozenset({"script", "style", "nav", "noscript", "template", "svg", "math", "iframe",
                   "object", "canvas", "select", "button"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "source", "track", "wbr"})
_BLOCK = frozenset({"p", "div", "section", "article", "main", "header", "footer", "aside",
                    "blockquote", "figure", "figcaption", "address", "details", "summary",
                    "dl", "dt", "dd", "form", "fieldset", "legend", "center", "body", "hr",
                    "li", "pre"})
_LISTS = frozenset({"ul", "ol", "menu"})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}


class _HtmlBlocks(HTMLParser):
    """One forward walk over the tags, turning block elements into blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title: str | None = None
        self._buf: list[str] = []
        self._skip: list[str] = []  # the skipped element (and its nested namesakes)
        self._title: list[str] | None = None
        self._heading = 0
        self._pre = 0
        self._lists: list[list[int]] = []  # per open list: [ordered, items so far]
        self._prefix: str | None = None
        self._lines: list[str] = []
        self._table = 0
        self._row: list[str] = []

    # -- text

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._title is not None:
            self._title.append(data)
        elif self._pre:
            self._buf.append(data)
        else:
            self._buf.append(re.sub(r"\s+", " ", data))

    def _take(self) -> str:
        text, self._buf = "".join(self._buf), []
        if self._pre:
            return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
        return "\n".join(SPACES.sub(" ", line).strip() for line in text.split("\n")
                         if line.strip())

    def _flush(self) -> None:
        """End the text run in progress: a list line, or a paragraph."""
        text = self._take()
        if not text:
            return
        if self._lists:
            depth = len(self._lists)
            marker = self._prefix + " " if self._prefix else "  "
            for n, part in enumerate(text.split("\n")):
                self._lines.append("  " * (depth - 1) + (marker if n == 0 else "  ") + part)
            self._prefix = None
        else:
            self.blocks.append(Block("paragraph", text))

    # -- tags

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip:
            if tag == self._skip[0]:
                self._skip.append(tag)
            return
        hidden = any(k == "hidden" or (k == "aria-hidden" and v == "true") for k, v in attrs)
        if tag in _SKIP or (hidden and tag not in _VOID):
            self._skip.append(tag)
        elif tag == "title":
            self._title = []
        elif tag == "br":
            self._buf.append("\n")
        elif self._table:
            self._table_tag(tag, start=True)
        elif tag in _HEADINGS:
            self._flush()
            self._heading = _HEADINGS[tag]
        elif tag in _LISTS:
            self._flush()
            self._lists.append([tag == "ol", 0])
        elif tag == "li" and self._lists:
            self._flush()
            kind = self._lists[-1]
            kind[1] += 1
            self._prefix = f"{kind[1]}." if kind[0] else "-"
        elif tag == "table":
            self._flush()
            self._table = 1
        elif tag in _BLOCK:
            self._flush()
            self._pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if tag == "title" and self._title is not None:
            self.title = SPACES.sub(" ", " ".join("".join(self._title).split())) or None
            self._title = None
        elif self._table:
            self._table_tag(tag, start=False)
        elif tag in _HEADINGS and self._heading:
            level, self._heading = self._heading, 0
            if self._lists:
                self._flush()
                return
            text = " ".join(self._take().split())
            if text:
                self.blocks.append(Block("heading", text, level))
        elif tag in _LISTS and self._lists:
            self._flush()
            self._lists.pop()
            if not self._lists and self._lines:
                self.blocks.append(Block("paragraph", "\n".join(self._lines)))
                self._lines = []
        elif tag in _BLOCK or tag == "li":
            self._flush()
            self._pre -= tag == "pre" and self._pre > 0

    def _table_tag(self, tag: str, *, start: bool) -> None:
        """Inside a table: one line per row, cells joined by " | "; nested tables flatten."""
        if tag == "table":
            self._table += 1 if start else -1
            if self._table == 0:
                self._end_row()
                if self._lines and not self._lists:
                    self.blocks.append(Block("paragraph", "\n".join(self._lines)))
                    self._lines = []
        elif tag in ("td", "th"):
            self._end_cell()
        elif tag in ("tr", "caption", "thead", "tbody", "tfoot"):
            self._end_row()
        elif tag in _BLOCK or tag in _LISTS or tag in _HEADINGS:
            self._buf.append(" ")

    def _end_cell(self) -> None:
        text = " ".join(self._take().split())
        if text:
            self._row.append(text)

    def _end_row(self) -> None:
        self._end_cell()
        if self._row:
            self._lines.append(" | ".join(self._row))
        self._row = []

    def close(self) -> None:
        super().close()
        if self._table:
            self._table = 1
            self._table_tag("table", start=False)
        self._flush()
        if self._lines:
            self.blocks.append(Block("paragraph", "\n".join(self._lines)))
            self._lines = []


def parse_html(text: str) -> ExtractedDocument:
    parser = _HtmlBlocks()
    parser.feed(text)
    parser.close()
    title = parser.title or next(
        (b.text for b in parser.blocks if b.kind == "heading" and b.level == 1), None)
    return ExtractedDocument(title, tuple(parser.blocks), HTML)

