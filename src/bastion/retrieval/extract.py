"""Bytes in, structured text out: plain text, Markdown, HTML and PDF as headings and paragraphs.

Chunking respects structure only if extraction keeps it, so every format is reduced to the same
shape (``ExtractedDocument``: a title and a flat sequence of heading and paragraph blocks)
rather than to one long string. Lists, tables and code blocks are kept whole as one paragraph
with one line per item, row or code line, so the chunker keeps them together when they fit
and splits them at line boundaries when they do not.

The format comes from the declared media type, else the file name's extension, else the bytes
themselves (``%PDF-``, ``<html``). Whatever was declared, content that is really binary (an
image, an archive, NUL bytes, a high share of control characters) is refused: indexing it would
fill the index with garbage that matches nothing. Every refusal is an ``InvalidRequest`` naming
the field at fault (``content``, ``media_type``), so the API answers 400 in its error shape.

Parsers: markdown-it-py (CommonMark, well kept, already a dependency of rich) for Markdown;
the standard library's ``html.parser`` for HTML - it is tolerant of broken markup, needs no
compiled dependency, and a single forward walk over the tags is all we need (no selectors, no
tree), so BeautifulSoup or lxml would add weight without adding accuracy; pypdf for PDF.
"""

from __future__ import annotations

import codecs
import io
import re
import unicodedata
from html.parser import HTMLParser
from pathlib import PurePosixPath

from bastion.domain.errors import InvalidRequest
from bastion.domain.retrieval import Block, ExtractedDocument

PLAIN = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
PDF = "application/pdf"
SUPPORTED = (PLAIN, MARKDOWN, HTML, PDF)

_MEDIA_TYPES = {
    PLAIN: PLAIN, MARKDOWN: MARKDOWN, "text/x-markdown": MARKDOWN, HTML: HTML,
    "application/xhtml+xml": HTML, PDF: PDF, "application/x-pdf": PDF,
}
#: Declared types that say nothing about the format: detection goes on to the file name.
_UNSPECIFIC = frozenset({"application/octet-stream", "binary/octet-stream"})
_EXTENSIONS = {
    ".txt": PLAIN, ".text": PLAIN, ".md": MARKDOWN, ".markdown": MARKDOWN, ".html": HTML,
    ".htm": HTML, ".xhtml": HTML, ".pdf": PDF,
}
#: Signatures of common binary formats, to name what was sent instead of a document.
_MAGIC = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF89a", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive (.docx, .xlsx and .odt are ZIP archives)"),
    (b"\x1f\x8b", "gzip data"), (b"\x7fELF", "an executable"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office document"), (b"%PDF-", "a PDF"),
)
_MEDIA_TYPE_SYNTAX = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
#: Above this share of control characters, "text" is binary data decoded by accident.
MAX_CONTROL_SHARE = 0.02
#: C0 and C1 control characters other than tab, line feed, vertical tab and form feed.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def extract(data: bytes, media_type: str | None, filename: str | None = None
            ) -> ExtractedDocument:
    """The document's title and blocks, or an ``InvalidRequest`` saying what is wrong."""
    if not data or not data.strip():
        raise InvalidRequest("the document is empty", param="content")
    fmt, charset = detect_format(data, media_type, filename)
    if fmt == PDF:
        doc = _pdf(data)
    else:
        text = decode_text(data, charset)
        parse = {PLAIN: _plain, MARKDOWN: _markdown, HTML: _html}[fmt]
        doc = parse(text)
    if not doc.blocks:
        raise InvalidRequest(f"the document ({fmt}) has no text once its markup is removed",
                             param="content")
    return doc


# --------------------------------------------------------------------------- detection


def detect_format(data: bytes, media_type: str | None, filename: str | None = None
                  ) -> tuple[str, str | None]:
    """The format to parse ``data`` as, and the charset the client declared (if any)."""
    declared, charset = _parse_media_type(media_type)
    fmt = _MEDIA_TYPES.get(declared or "")
    if declared and fmt is None and declared not in _UNSPECIFIC:
        raise InvalidRequest(f"unsupported media type {declared!r}; supported: "
                             f"{', '.join(SUPPORTED)}", param="media_type")
    if fmt is None and filename:
        fmt = _EXTENSIONS.get(PurePosixPath(filename.replace("\\", "/")).suffix.lower())
    head = data[:1024]
    if fmt == PDF:
        if b"%PDF-" not in head:
            raise InvalidRequest("the content was declared a PDF but is not one (no %PDF- "
                                 "header)", param="content")
        return PDF, None
    binary = _binary_kind(head)
    if binary == "a PDF" and fmt is None:
        return PDF, None
    if binary is not None:
        said = f" though declared {fmt}" if fmt else ""
        raise InvalidRequest(f"the content is {binary}{said}, not a text document; supported: "
                             f"{', '.join(SUPPORTED)}", param="content")
    if fmt is None:
        start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
        looks_html = start.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))
        fmt = HTML if looks_html else PLAIN
    return fmt, charset


def _parse_media_type(media_type: str | None) -> tuple[str | None, str | None]:
    if media_type is None or not media_type.strip():
        return None, None
    main, *params = media_type.split(";")
    main = main.strip().lower()
    if not _MEDIA_TYPE_SYNTAX.match(main):
        raise InvalidRequest(f"media type {media_type!r} is not of the form type/subtype",
                             param="media_type")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    return main, charset


def _binary_kind(head: bytes) -> str | None:
    """What a binary payload is, by its signature; None when it may be text."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return None
    for magic, kind in _MAGIC:
        if head.lstrip().startswith(magic):
            return kind
    return None


def decode_text(data: bytes, charset: str | None = None) -> str:
    """Text from bytes: a BOM wins, then the declared charset, UTF-8, Windows-1252, Latin-1.

    Latin-1 decodes anything, so binary data would come out as "text": NUL characters or a
    high share of control characters are refused instead."""
    text: str | None = None
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                       (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                       (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            text = data.decode(codec, errors="replace")
            break
    for codec in (charset, "utf-8", "cp1252", "latin-1"):
        if text is not None:
            break
        if codec is not None:
            try:
                text = data.decode(codec)
            except (UnicodeDecodeError, LookupError):
                continue
    assert text is not None  # latin-1 decodes every byte string
    if "\x00" in text:
        raise InvalidRequest("the content is binary (it contains NUL bytes), not text",
                             param="content")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if len(_CONTROL.findall(text)) > MAX_CONTROL_SHARE * len(text):
        raise InvalidRequest("the content looks binary (too many control characters), not "
                             "text", param="content")
    return unicodedata.normalize("NFC", text)


# --------------------------------------------------------------------------- plain text

_BLANK_LINE = re.compile(r"\n[ \t\f\v]*\n")
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")


def _unwrap(paragraph: str) -> str:
    """One paragraph's hard-wrapped lines as one line: a line break inside prose is layout."""
    return " ".join(_SPACES.sub(" ", line).strip() for line in paragraph.split("\n")
                    if line.strip())


def _paragraphs(text: str) -> list[Block]:
    return [Block("paragraph", p) for p in (_unwrap(part) for part in _BLANK_LINE.split(text))
            if p]


def _plain(text: str) -> ExtractedDocument:
    return ExtractedDocument(None, tuple(_paragraphs(text)), PLAIN)


# --------------------------------------------------------------------------- Markdown


def _markdown(text: str) -> ExtractedDocument:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(text)
    blocks: list[Block] = []
    lines: list[str] = []  # of the list, table or code block being collected
    lists: list[str] = []  # the marker of each open list: "-" or "1."
    row: list[str] = []
    prefix: str | None = None  # the marker of the list item whose first line is next
    title: str | None = None

    def line(text: str) -> None:
        nonlocal prefix
        indent = "  " * max(len(lists) - 1, 0)
        lines.append(indent + (prefix + " " if prefix else ("  " if lists else "")) + text)
        prefix = None

    for i, tok in enumerate(tokens):
        kind = tok.type
        if kind == "heading_open" and not lists:
            heading = _inline_text(tokens[i + 1])
            if heading:
                level = int(tok.tag[1])
                blocks.append(Block("heading", heading, level))
                if level == 1 and title is None:
                    title = heading
        elif kind == "inline" and tokens[i - 1].type in ("paragraph_open", "heading_open"):
            if tokens[i - 1].type == "heading_open" and not lists:
                continue  # taken above
            content = _inline_text(tok)
            if lists:
                line(content)
            elif content:
                blocks.append(Block("paragraph", content))
        elif kind in ("bullet_list_open", "ordered_list_open"):
            lists.append("-" if kind == "bullet_list_open" else ".")
        elif kind == "list_item_open":
            prefix = f"{tok.info}." if lists[-1] == "." else "-"
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            if not lists:
                blocks.append(Block("paragraph", "\n".join(lines)))
                lines = []
        elif kind in ("fence", "code_block"):
            code = [c.rstrip() for c in tok.content.rstrip("\n").split("\n")]
            if lists:
                for code_line in code:
                    line(code_line)
            elif any(code):
                blocks.append(Block("paragraph", "\n".join(code).strip("\n")))
        elif kind == "inline" and tokens[i - 1].type in ("th_open", "td_open"):
            row.append(_inline_text(tok))
        elif kind == "tr_close":
            if any(row):
                lines.append(" | ".join(row))
            row = []
        elif kind == "table_close" and not lists:
            if lines:
                blocks.append(Block("paragraph", "\n".join(lines)))
            lines = []
        elif kind == "html_block":
            blocks.extend(b for b in _html(tok.content).blocks if b.kind == "paragraph")
    return ExtractedDocument(title, tuple(b for b in blocks if b.text.strip()), MARKDOWN)


def _inline_text(token: object) -> str:
    """An inline token's text without markup: link text, image alt text, code as written."""
    parts: list[str] = []
    for child in getattr(token, "children", None) or ():
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image":
            parts.append(_inline_text(child))
    return "\n".join(_SPACES.sub(" ", p).strip() for p in "".join(parts).split("\n")).strip()


# --------------------------------------------------------------------------- HTML

#: Elements whose content is never document text.
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
        return "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n")
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
            self.title = _SPACES.sub(" ", " ".join("".join(self._title).split())) or None
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


def _html(text: str) -> ExtractedDocument:
    parser = _HtmlBlocks()
    parser.feed(text)
    parser.close()
    title = parser.title or next(
        (b.text for b in parser.blocks if b.kind == "heading" and b.level == 1), None)
    return ExtractedDocument(title, tuple(parser.blocks), HTML)


# --------------------------------------------------------------------------- PDF


def _pdf(data: bytes) -> ExtractedDocument:
    """Text per page; a page break is a paragraph break. Encrypted and image-only PDFs are
    refused with a reason; anything pypdf cannot parse is a bad document, never a 500."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = bool(reader.decrypt(""))  # restrictions only, no user password
            except Exception:  # noqa: BLE001 - unsupported cipher, bad key: all "encrypted"
                opened = False
            if not opened:
                raise InvalidRequest("the PDF is encrypted; send a copy without a password",
                                     param="content")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta = reader.metadata
        title = (meta.title or "").strip() if meta is not None else ""
    except InvalidRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types for broken files
        raise InvalidRequest(f"the PDF cannot be read: {exc}", param="content") from None
    blocks = [b for page in pages for b in _paragraphs(_pdf_page_text(page))]
    if not blocks:
        raise InvalidRequest("the PDF has no extractable text (is it scanned or made of "
                             "images? run OCR first)", param="content")
    return ExtractedDocument(" ".join(title.split()) or None, tuple(blocks), PDF)


def _pdf_page_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return "".join(c for c in unicodedata.normalize("NFC", text)
                   if c in "\n\t" or unicodedata.category(c) != "Cc")
