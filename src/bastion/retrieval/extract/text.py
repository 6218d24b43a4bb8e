"""Plain text: paragraphs on blank lines, soft-wrapped lines joined."""

from __future__ import annotations

import re

from bastion.domain.retrieval import Block, ExtractedDocument
from bastion.retrieval.extract.detect import PLAIN

_BLANK_LINE = re.compile(r"\n[ \t\f\v]*\n")
SPACES = re.compile(r"[ \t\f\v\u00a0]+")


def _unwrap(paragraph: str) -> str:
    """One paragraph's hard-wrapped lines as one line: a line break inside prose is layout."""
    return " ".join(SPACES.sub(" ", line).strip() for line in paragraph.split("\n")
                    if line.strip())


def paragraphs(text: str) -> list[Block]:
    return [Block("paragraph", p) for p in (_unwrap(part) for part in _BLANK_LINE.split(text))
            if p]


def parse_plain(text: str) -> ExtractedDocument:
    return ExtractedDocument(None, tuple(paragraphs(text)), PLAIN)

