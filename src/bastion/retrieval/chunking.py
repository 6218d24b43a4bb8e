"""Structure-aware chunking: sections, then whole paragraphs, then sentences, then tokens.

A chunk is what search ranks and what an answer quotes, so it should read as a unit: it never
straddles two sections (a heading change starts a new chunk, and every chunk carries its
heading path), it holds whole paragraphs while they fit, and it is cut inside a paragraph only
when that paragraph alone is over budget - at sentence boundaries first, and by tokens only for
a sentence that is itself too long. Consecutive chunks of one section share a few trailing
sentences (the overlap), so a fact that spans a cut is still found whole in one of them.

``max_tokens`` is a hard bound, checked with the embedder's own ``count_tokens`` on the exact
text of each chunk (tokenizers are not additive across joins, so summing the parts is not
enough): a chunk the model would truncate is a chunk whose tail can never be found.

Sentence boundaries come from a small linear-time splitter rather than pySBD (used for quoting
in ``retrieval.sentences``): pySBD is quadratic in the paragraph length - 75 s for one 260 kB
paragraph, 2.7 s for 52 kB - and a PDF page or an unwrapped text file easily makes paragraphs
that long. The splitter knows abbreviations ("e.g.", "Dr.", "Jan."), initials, dotted
acronyms and decimals; a missed boundary only makes a piece longer, which the token fallback
still bounds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bastion.domain.retrieval import ChunkDraft, ExtractedDocument

CountTokens = Callable[[str], int]

#: Words that end with a period without ending a sentence (ordinary words such as "no",
#: "sat" or "max" are left out: they end sentences more often than they abbreviate).
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "mx", "dr", "prof", "rev", "sr", "jr", "st", "mt", "vs", "cf", "viz",
    "approx", "appx", "ca", "dept", "fig", "figs", "eq", "eqs", "vol", "vols", "pp", "ch", "sec",
    "op", "cit", "ibid", "lt", "sgt", "capt", "cmdr", "adm", "gov", "sen", "supt", "jan", "feb",
    "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "tues", "thur", "thurs",
    "assn", "univ", "al", "e.g", "i.e", "eg", "ie"
})
#: Abbreviations only before a number: "No. 5", "p. 12", "Art. 3".
NUMBER_ABBREVIATIONS = frozenset({"no", "nos", "p", "art", "para", "nr"})
_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019\u00bb)\]]*(?=\s)")
_DOTTED = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")
_WORD = re.compile(r"\S+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text``, stripped; a line break always ends one
    (list items, table rows and code lines are units of their own)."""
    spans: list[tuple[int, int]] = []
    line_start = 0
    for line in text.split("\n"):
        start = line_start
        for match in _END.finditer(line):
            if _ends_sentence(line, match):
                _add_span(spans, text, start, line_start + match.end())
                start = line_start + match.end()
        _add_span(spans, text, start, line_start + len(line))
        line_start += len(line) + 1
    return spans


def _add_span(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if stripped:
        offset = start + (len(piece) - len(piece.lstrip()))
        spans.append((offset, offset + len(stripped)))


def _ends_sentence(line: str, match: re.Match[str]) -> bool:
    rest = line[match.end():].lstrip()
    if not rest:
        return True
    if rest[0].islower():
        return False  # "approx. five", "3 p.m. today": a sentence does not start lower-case
    punct = match.group().rstrip("\"'\u201d\u2019\u00bb)]")
    if punct != ".":
        return True  # "?", "!", "...", "?!"
    before = line[:match.start()]
    word = before[before.rfind(" ") + 1:].lstrip("(\"'[\u201c\u2018\u00ab")
    if not word:
        return True
    if word.lower() in ABBREVIATIONS:
        return False
    if word.lower() in NUMBER_ABBREVIATIONS and rest[0].isdigit():
        return False
    if len(word) == 1 and word.isupper():
        return False  # an initial: "J. R. R. Tolkien"
    return not _DOTTED.fullmatch(word)  # "U.S.", "e.g." as written with periods inside


# --------------------------------------------------------------------------- chunking


@dataclass(frozen=True, slots=True)
class _Piece:
    """A span of one paragraph of the current section; consecutive pieces are adjacent."""

    para: int
    start: int
    end: int


class _Section:
    def __init__(self, headings: tuple[str, ...], paragraphs: list[str]) -> None:
        self.headings = headings
        self.paragraphs = paragraphs

    def text(self, pieces: Sequence[_Piece]) -> str:
        """The pieces as written: one slice per paragraph, paragraphs apart by a blank line."""
        parts: list[str] = []
        i = 0
        while i < len(pieces):
            j = i
            while j + 1 < len(pieces) and pieces[j + 1].para == pieces[i].para:
                j += 1
            parts.append(self.paragraphs[pieces[i].para][pieces[i].start:pieces[j].end])
            i = j + 1
        return "\n\n".join(parts)


def chunk_document(doc: ExtractedDocument, *, max_tokens: int, overlap_tokens: int,
                   count_tokens: CountTokens) -> list[ChunkDraft]:
    """The document's chunks in reading order, each within ``max_tokens``, positions 0..n-1."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    chunks: list[tuple[str, tuple[str, ...]]] = []
    for section in _sections(doc):
        chunks.extend((text, section.headings) for text in
                      _chunk_section(section, max_tokens, overlap_tokens, count_tokens))
    return [ChunkDraft(text=text, position=i, headings=headings, token_count=count_tokens(text))
            for i, (text, headings) in enumerate(chunks)]


def _sections(doc: ExtractedDocument) -> list[_Section]:
    """Paragraphs grouped under their heading path; a document of headings alone is text."""
    sections: list[_Section] = []
    path: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    for block in doc.blocks:
        text = block.text.strip()
        if not text:
            continue
        if block.kind == "heading":
            if paragraphs:
                sections.append(_Section(tuple(h for _, h in path), paragraphs))
                paragraphs = []
            level = max(block.level, 1)
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, " ".join(text.split())))
        else:
            paragraphs.append(text)
    if paragraphs:
        sections.append(_Section(tuple(h for _, h in path), paragraphs))
    if not sections:
        headings = [b.text.strip() for b in doc.blocks if b.text.strip()]
        if headings:
            sections.append(_Section((), headings))
    return sections


def _chunk_section(section: _Section, max_tokens: int, overlap_tokens: int,
                   count: CountTokens) -> list[str]:
    out: list[str] = []
    current: list[_Piece] = []
    for unit in _units(section, max_tokens, count):
        if current and count(section.text([*current, unit])) > max_tokens:
            out.append(section.text(current))
            current = _overlap(section, current, unit, overlap_tokens, max_tokens, count)
        current.append(unit)
    if current:
        out.append(section.text(current))
    return out


def _units(section: _Section, max_tokens: int, count: CountTokens) -> list[_Piece]:
    """The atoms packing works with: whole paragraphs that fit, else their sentences, else
    token windows of a sentence too long on its own."""
    units: list[_Piece] = []
    for i, text in enumerate(section.paragraphs):
        if count(text) <= max_tokens:
            units.append(_Piece(i, 0, len(text)))
            continue
        for start, end in sentence_spans(text):
            if count(text[start:end]) <= max_tokens:
                units.append(_Piece(i, start, end))
            else:
                units.extend(_Piece(i, a, b)
                             for a, b in _token_windows(text, start, end, max_tokens, count))
    return units


def _overlap(section: _Section, previous: list[_Piece], following: _Piece,
             overlap_tokens: int, max_tokens: int, count: CountTokens) -> list[_Piece]:
    """The trailing sentences of ``previous`` within ``overlap_tokens``, and only as many as
    leave room for ``following`` under ``max_tokens``."""
    tail: list[_Piece] = []
    if overlap_tokens <= 0:
        return tail
    for piece in reversed(previous):
        text = section.paragraphs[piece.para][piece.start:piece.end]
        for start, end in reversed(sentence_spans(text)):
            candidate = [_Piece(piece.para, piece.start + start, piece.start + end), *tail]
            if (count(section.text(candidate)) > overlap_tokens
                    or count(section.text([*candidate, following])) > max_tokens):
                return tail
            tail = candidate
    return tail


def _token_windows(text: str, start: int, end: int, max_tokens: int,
                   count: CountTokens) -> list[tuple[int, int]]:
    """A sentence too long for one chunk, cut between words (or inside a word longer than a
    chunk, such as a URL or base64) into the fewest windows that fit."""
    windows: list[tuple[int, int]] = []
    window: tuple[int, int] | None = None
    for match in _WORD.finditer(text, start, end):
        ws, we = match.span()
        if count(text[ws:we]) > max_tokens:
            if window:
                windows.append(window)
                window = None
            windows.extend(_cut_word(text, ws, we, max_tokens, count))
        elif window is None:
            window = (ws, we)
        elif count(text[window[0]:we]) <= max_tokens:
            window = (window[0], we)
        else:
            windows.append(window)
            window = (ws, we)
    if window:
        windows.append(window)
    return windows


def _cut_word(text: str, start: int, end: int, max_tokens: int,
              count: CountTokens) -> list[tuple[int, int]]:
    """Binary search for the longest prefix that fits, repeatedly (at least one character)."""
    cuts: list[tuple[int, int]] = []
    while start < end:
        if count(text[start:end]) <= max_tokens:
            cuts.append((start, end))
            break
        lo, hi = start + 1, end - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(text[start:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        cuts.append((start, lo))
        start = lo
    return cuts
