"""The vocabulary of retrieval and answers, shared by ingestion, search and the answer service.

Documents belong to a tenant and a collection and may carry an access list; they are split into
chunks, each of which keeps its document id, title, position and the headings above it. A
search is always scoped (``AccessScope``): the AND of tenant, collections and access list is
applied *inside* the search, so a chunk the caller may not see is never a candidate, not merely
dropped from the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: A document with no access list is visible to every caller of its tenant and collection;
#: one with an access list only to callers holding at least one of its principals.
PUBLIC: tuple[str, ...] = ()

DocumentStatus = Literal["indexed", "failed"]


@dataclass(frozen=True, slots=True)
class AccessScope:
    """Who is asking, as retrieval must enforce it."""

    tenant: str
    #: The collections to search; empty means every collection of the tenant.
    collections: tuple[str, ...] = ()
    #: The caller's principals (``user:alice``, ``group:support``); they see public documents
    #: and documents whose access list shares at least one principal with these.
    principals: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Block:
    """One structural unit of an extracted document: a heading or a paragraph of text."""

    kind: Literal["heading", "paragraph"]
    text: str
    #: Heading level (1 for a title-level heading); 0 for paragraphs.
    level: int = 0


@dataclass(frozen=True, slots=True)
class ExtractedDocument:
    """A document's text as blocks, whatever format it arrived in."""

    title: str | None
    blocks: tuple[Block, ...]
    #: The format the text was extracted from (``text/plain``, ``text/markdown``,
    #: ``text/html`` or ``application/pdf``), whatever the client declared.
    media_type: str = "text/plain"


@dataclass(frozen=True, slots=True)
class ChunkDraft:
    """A chunk before it is indexed: bounded in tokens, with where it came from."""

    text: str
    #: 0-based order of the chunk in its document.
    position: int
    #: The headings above the chunk, outermost first.
    headings: tuple[str, ...] = ()
    token_count: int = 0


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """What the index knows about one document (never its full text)."""

    tenant: str
    collection: str
    doc_id: str
    title: str
    content_hash: str
    status: DocumentStatus
    #: Why indexing failed, when it did.
    reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    access: tuple[str, ...] = PUBLIC
    chunk_count: int = 0
    media_type: str = "text/plain"
    #: The embedding model the document's vectors came from.
    embedding_model: str | None = None
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ChunkHit:
    """A chunk found by a search, with its score and rank in that search (1 is best)."""

    chunk_id: str
    doc_id: str
    collection: str
    title: str
    text: str
    position: int
    score: float
    rank: int
    headings: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Component scores kept through fusion: ``lexical`` (BM25) and ``dense`` (cosine).
    lexical_score: float | None = None
    dense_score: float | None = None
