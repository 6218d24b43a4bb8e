"""PDF with pypdf: text per page, a page break being a paragraph break."""

from __future__ import annotations

import io
import unicodedata

from bastion.domain.errors import InvalidRequest
from bastion.domain.retrieval import ExtractedDocument
from bastion.retrieval.extract.detect import PDF
from bastion.retrieval.extract.text import paragraphs


def parse_pdf(data: bytes) -> ExtractedDocument:
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
    blocks = [b for page in pages for b in paragraphs(_pdf_page_text(page))]
    if not blocks:
        raise InvalidRequest("the PDF has no extractable text (is it scanned or made of "
                             "images? run OCR first)", param="content")
    return ExtractedDocument(" ".join(title.split()) or None, tuple(blocks), PDF)


def _pdf_page_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return "".join(c for c in unicodedata.normalize("NFC", text)
                   if c in "\n\t" or unicodedata.category(c) != "Cc")

