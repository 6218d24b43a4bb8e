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

from bastion.domain.errors import InvalidRequest
from bastion.domain.retrieval import ExtractedDocument
from bastion.retrieval.extract.detect import (
    HTML,
    MARKDOWN,
    PDF,
    PLAIN,
    SUPPORTED,
    decode_text,
    detect_format,
)
from bastion.retrieval.extract.html import parse_html
from bastion.retrieval.extract.markdown import parse_markdown
from bastion.retrieval.extract.pdf import parse_pdf
from bastion.retrieval.extract.text import parse_plain

__all__ = ["HTML", "MARKDOWN", "PDF", "PLAIN", "SUPPORTED", "decode_text", "detect_format",
           "extract"]


def extract(data: bytes, media_type: str | None, filename: str | None = None
            ) -> ExtractedDocument:
    """The document's title and blocks, or an ``InvalidRequest`` saying what is wrong."""
    if not data or not data.strip():
        raise InvalidRequest("the document is empty", param="content")
    fmt, charset = detect_format(data, media_type, filename)
    if fmt == PDF:
        doc = parse_pdf(data)
    else:
        text = decode_text(data, charset)
        parse = {PLAIN: parse_plain, MARKDOWN: parse_markdown, HTML: parse_html}[fmt]
        doc = parse(text)
    if not doc.blocks:
        raise InvalidRequest(f"the document ({fmt}) has no text once its markup is removed",
                             param="content")
    return doc

