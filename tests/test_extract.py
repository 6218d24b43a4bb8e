"""Extraction: every supported format comes out as a title and heading/paragraph blocks, and
anything that is not a readable document is refused with an ``InvalidRequest`` naming the
field at fault - never an exception of another kind."""

from __future__ import annotations

import io
import os

import pytest
from pypdf import PdfReader, PdfWriter

from bastion.domain.errors import InvalidRequest
from bastion.domain.retrieval import Block
from bastion.retrieval.extract import decode_text, detect_format, extract


def make_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal, valid PDF written by hand: one Helvetica text line per string, one page per
    list, an optional /Title in the document info."""

    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: (f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(len(pages)))}]"
            f" /Count {len(pages)} >>").encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for i, lines in enumerate(pages):
        stream = ("BT /F1 12 Tf 14 TL 72 720 Td "
                  + " ".join(f"({esc(line)}) Tj T*" for line in lines) + " ET").encode("latin-1")
        objects[4 + 2 * i] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                              f"/Resources << /Font << /F1 3 0 R >> >> "
                              f"/Contents {5 + 2 * i} 0 R >>").encode()
        objects[5 + 2 * i] = (b"<< /Length %d >>\nstream\n" % len(stream) + stream
                              + b"\nendstream")
    info = None
    if title is not None:
        info = 4 + 2 * len(pages)
        objects[info] = f"<< /Title ({esc(title)}) >>".encode("latin-1")
    out = b"%PDF-1.4\n"
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    size = max(objects) + 1
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets[n] for n in range(1, size))
    info_ref = b" /Info %d 0 R" % info if info else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        size, info_ref, xref)
    return out


def paragraphs(data: bytes, media_type: str | None = None, filename: str | None = None
               ) -> list[str]:
    return [b.text for b in extract(data, media_type, filename).blocks if b.kind == "paragraph"]


def refused(data: bytes, media_type: str | None = None, filename: str | None = None
            ) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        extract(data, media_type, filename)
    return info.value


# --------------------------------------------------------------------------- plain text


def test_plain_text_paragraphs_are_separated_by_blank_lines_and_unwrapped() -> None:
    doc = extract(b"First line\nwraps here.\n\n  \nSecond   paragraph.\r\n\r\nThird.", "text/plain")
    assert doc.media_type == "text/plain"
    assert doc.title is None
    assert doc.blocks == (Block("paragraph", "First line wraps here."),
                          Block("paragraph", "Second paragraph."), Block("paragraph", "Third."))


@pytest.mark.parametrize(("data", "expected"), [
    (b"\xef\xbb\xbfcaf\xc3\xa9", "café"),  # UTF-8 with a BOM
    ("café".encode("utf-16"), "café"),  # UTF-16 with its BOM (and NUL bytes)
    ("naïve café".encode("cp1252"), "naïve café"),  # not UTF-8: Windows-1252
    (b"r\xe9sum\xe9 \x81" + b" word" * 20, "résumé \x81" + " word" * 20),  # Latin-1: anything
])
def test_text_is_decoded_from_utf8_then_sensible_fallbacks(data: bytes, expected: str) -> None:
    assert decode_text(data) == expected


def test_a_declared_charset_is_honoured() -> None:
    assert paragraphs("Grüße".encode("latin-1"), "text/plain; charset=ISO-8859-1") == ["Grüße"]
    # UTF-16 without a BOM has NUL bytes: only the declared charset makes it text
    assert paragraphs("Grüße".encode("utf-16-le"), "text/plain; charset=utf-16-le") == ["Grüße"]
    assert paragraphs("Grüße".encode("koi8-r", errors="replace"),
                      "text/plain; charset=no-such-codec") != []  # unknown: fall back


# --------------------------------------------------------------------------- Markdown

MARKDOWN = b"""Guide
=====

Intro with *emphasis*, [a link](https://example.com) and `code`,
wrapped over two lines.

## Install

- first item
- second item
  - nested **item**

1. one
2. two

```python
print("kept as written")
    indented
```

| key | value |
|-----|-------|
| a   | 1     |

Setext two
----------

### Deep

<div class="note">Raw <b>HTML</b> block</div>

> A quote.
"""


def test_markdown_keeps_headings_with_levels_and_blocks_whole() -> None:
    doc = extract(MARKDOWN, "text/markdown")
    assert doc.media_type == "text/markdown"
    assert doc.title == "Guide"
    assert doc.blocks == (
        Block("heading", "Guide", 1),
        Block("paragraph", "Intro with emphasis, a link and code, wrapped over two lines."),
        Block("heading", "Install", 2),
        Block("paragraph", "- first item\n- second item\n  - nested item"),
        Block("paragraph", "1. one\n2. two"),
        Block("paragraph", 'print("kept as written")\n    indented'),
        Block("paragraph", "key | value\na | 1"),
        Block("heading", "Setext two", 2),
        Block("heading", "Deep", 3),
        Block("paragraph", "Raw HTML block"),
        Block("paragraph", "A quote."),
    )


def test_markdown_is_chosen_by_extension_and_has_no_title_without_an_h1() -> None:
    doc = extract(b"## Only a section\n\nBody.", None, "notes.markdown")
    assert doc.media_type == "text/markdown"
    assert doc.title is None
    assert doc.blocks[0] == Block("heading", "Only a section", 2)


# --------------------------------------------------------------------------- HTML

HTML = b"""<!DOCTYPE html>
<html><head><title>  The   Page </title>
<style>p { color: red }</style><script>var s = "<p>not text</p>";</script></head>
<body>
<nav><ul><li>Home</li><li>About</li></ul></nav>
<h1>Main &amp; only</h1>
<p>First <b>para</b>
   wrapped.<br>After a break.</p>
<div>Loose <span>inline</span> text</div>
<ul><li>one<ul><li>one-a</li></ul></li><li>two</li></ul>
<ol><li>first</li><li>second</li></ol>
<h2>Data</h2>
<table><caption>Prices</caption><tr><th>item</th><th>price</th></tr>
<tr><td>tea</td><td><p>3.50</p></td></tr></table>
<pre>  def f():
      return 1</pre>
<p hidden>hidden text</p><div aria-hidden="true">also hidden</div>
<noscript>enable js</noscript><template><p>template</p></template>
<footer>Footer line</footer>
</body></html>"""


def test_html_keeps_structure_and_drops_scripts_styles_and_navigation() -> None:
    doc = extract(HTML, "text/html; charset=utf-8")
    assert doc.media_type == "text/html"
    assert doc.title == "The Page"
    assert doc.blocks == (
        Block("heading", "Main & only", 1),
        Block("paragraph", "First para wrapped.\nAfter a break."),
        Block("paragraph", "Loose inline text"),
        Block("paragraph", "- one\n  - one-a\n- two"),
        Block("paragraph", "1. first\n2. second"),
        Block("heading", "Data", 2),
        Block("paragraph", "Prices\nitem | price\ntea | 3.50"),
        Block("paragraph", "  def f():\n      return 1"),
        Block("paragraph", "Footer line"),
    )


def test_html_title_falls_back_to_the_first_h1_and_broken_markup_is_tolerated() -> None:
    doc = extract(b"<body><h2>Sub</h2><h1>Real title</h1><p>unclosed <b>bold<p>next", None,
                  "page.htm")
    assert doc.title == "Real title"
    assert [b.text for b in doc.blocks] == ["Sub", "Real title", "unclosed bold", "next"]


def test_html_is_sniffed_without_a_type_or_name() -> None:
    assert detect_format(b"\n  <!doctype html><p>x</p>", None) == ("text/html", None)
    assert detect_format(b"<HTML><body>x</body></HTML>", None)[0] == "text/html"
    assert detect_format(b"plain words <b>not html</b>", None)[0] == "text/plain"


def test_html_that_is_only_junk_is_empty() -> None:
    err = refused(b"<html><head><script>x()</script><style>a{}</style></head>"
                  b"<body><nav>menu</nav></body></html>", "text/html")
    assert err.param == "content"
    assert "no text" in err.message


# --------------------------------------------------------------------------- PDF


def test_a_pdf_gives_its_text_per_page_and_its_title() -> None:
    pdf = make_pdf([["Hello world. This is page one.", "It wraps (here)."], ["Page two."]],
                   title="Annual Report")
    doc = extract(pdf, "application/pdf")
    assert doc.media_type == "application/pdf"
    assert doc.title == "Annual Report"
    # lines of a page are unwrapped; a page break is a paragraph break
    assert [b.text for b in doc.blocks] == ["Hello world. This is page one. It wraps (here).",
                                            "Page two."]
    assert extract(pdf, None).media_type == "application/pdf"  # sniffed
    assert extract(pdf, "application/octet-stream", "x.bin").media_type == "application/pdf"


def _encrypted(user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([["Secret text."]]))))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_an_encrypted_pdf_is_refused_but_an_owner_only_one_is_read() -> None:
    err = refused(_encrypted("secret"), "application/pdf")
    assert err.param == "content"
    assert "encrypted" in err.message
    assert paragraphs(_encrypted(""), "application/pdf") == ["Secret text."]


def test_an_image_only_pdf_is_refused_with_a_reason() -> None:
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    out = io.BytesIO()
    writer.write(out)
    err = refused(out.getvalue(), None, "scan.pdf")
    assert err.param == "content"
    assert "no extractable text" in err.message


def test_a_broken_pdf_is_a_bad_document_not_a_crash() -> None:
    assert refused(b"%PDF-1.7\n1 0 obj << /Type /Catalog", "application/pdf").param == "content"
    err = refused(b"just text", "application/pdf")
    assert err.param == "content"
    assert "not one" in err.message


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n "])
def test_empty_documents_are_refused(data: bytes) -> None:
    err = refused(data, "text/plain")
    assert (err.param, err.message) == ("content", "the document is empty")


@pytest.mark.parametrize(("data", "kind"), [
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, "PNG image"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 32, "JPEG image"),
    (b"PK\x03\x04" + b"\x14\x00" * 16, "ZIP archive"),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 16, "gzip"),
])
def test_known_binary_formats_are_named_even_when_declared_as_text(data: bytes,
                                                                   kind: str) -> None:
    for media_type, filename in ((None, None), ("text/plain", None), (None, "notes.md")):
        err = refused(data, media_type, filename)
        assert err.param == "content"
        assert kind in err.message


def test_binary_posing_as_text_is_refused() -> None:
    assert "NUL" in refused(b"looks like text\x00\x00 but is not", "text/plain").message
    noise = bytes((i * 37 + 11) % 255 + 1 for i in range(4096))  # no NUL, many controls
    assert "binary" in refused(noise, "text/markdown").message
    assert "binary" in refused(os.urandom(2048).replace(b"\x00", b"\x01"), None).message


def test_a_few_control_characters_in_real_text_are_fine() -> None:
    text = ("A log line with an escape \x1b[0m code.\n" + "Plain words here. " * 20).encode()
    assert paragraphs(text, "text/plain")


@pytest.mark.parametrize("media_type", ["image/png", "application/msword",
                                        "application/json"])
def test_unsupported_media_types_are_refused_naming_the_field(media_type: str) -> None:
    err = refused(b"hello", media_type)
    assert err.param == "media_type"
    assert "supported" in err.message


def test_a_malformed_media_type_is_refused() -> None:
    assert refused(b"hello", "not a type").param == "media_type"


def test_the_declared_type_wins_over_the_file_name_and_octet_stream_defers_to_it() -> None:
    assert detect_format(b"# T", "text/plain", "a.md")[0] == "text/plain"
    assert detect_format(b"# T", "application/octet-stream", "a.md")[0] == "text/markdown"
    assert detect_format(b"# T", None, "A.MD")[0] == "text/markdown"
    assert detect_format(b"# T", None, "a.rst")[0] == "text/plain"  # unknown: sniffed
    assert detect_format(b"x", "text/plain; charset=latin-1") == ("text/plain", "latin-1")
