"""Which format a document is in, and its text decoded, refusing binary content."""

from __future__ import annotations

import codecs
import re
import unicodedata
from pathlib import PurePosixPath

from bastion.domain.errors import InvalidRequest

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

