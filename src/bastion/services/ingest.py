"""Ingestion: bytes in, an indexed document out - or a recorded failure with its reason.

The steps are extract (``retrieval.extract``), chunk (``retrieval.chunking``), embed, and one
atomic ``replace_document``: a reader sees the old chunks or the new ones, never both, never
none. Three properties the callers (the documents API, ``bastion ingest``) rely on:

- **Idempotent.** ``content_hash`` covers everything that shapes the index - the bytes, the
  title, metadata and access list as sent, the chunking settings and the embedding model - so
  re-ingesting an unchanged document writes nothing, and changing any of them re-indexes.
  It is ``"{input digest}-{pipeline digest}"``: re-indexing from the stored source keeps the
  input digest and takes the current pipeline's, so a later ingest of the same request is
  again a no-op.
- **Failures are visible and lose nothing.** A document that cannot be extracted or embedded
  is marked ``failed`` with the reason, and the error is raised to the caller; a version
  indexed before stays searchable as it was (``DocumentIndex.mark_failed``). Requests that
  are malformed (ids, metadata, access list, size) are refused before anything is recorded.
- **Bounded.** Documents over ``max_document_bytes`` are refused with 413; extraction and
  chunking run off the event loop; ingests of one document run one at a time, in order, so a
  slow older upload never overwrites a newer one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any, Protocol

import numpy as np
import orjson

from bastion.config.retrieval import RetrievalConfig
from bastion.domain.errors import (
    BastionError,
    Conflict,
    DependencyError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
)
from bastion.domain.retrieval import ChunkDraft, DocumentInfo, ExtractedDocument
from bastion.retrieval.chunking import chunk_document
from bastion.retrieval.embedder import passage_text
from bastion.retrieval.extract import extract

#: Bump when extraction or chunking changes what a given input produces.
PIPELINE_VERSION = 1
MAX_TITLE_CHARS = 512
MAX_METADATA_KEYS = 64
MAX_METADATA_BYTES = 8 * 1024
MAX_ACCESS_ENTRIES = 256
log = logging.getLogger("bastion.ingest")
_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
#: ``kind:name``: ``user:alice``, ``group:eng``, ``role:support-lead``.
_PRINCIPAL = re.compile(r"^[a-z][a-z0-9_\-]{0,31}:[^\s,]{1,200}$")


class Embedder(Protocol):
    name: str
    dim: int

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, text: str) -> int: ...


class Index(Protocol):
    """What ingestion needs of ``retrieval.index.DocumentIndex``."""

    async def replace_document(self, info: DocumentInfo, chunks: Sequence[ChunkDraft],
                               vectors: np.ndarray, source: bytes | None = None) -> None: ...

    async def mark_failed(self, info: DocumentInfo) -> None: ...

    async def get_document(self, tenant: str, collection: str,
                           doc_id: str) -> DocumentInfo | None: ...

    async def get_source(self, tenant: str, collection: str, doc_id: str) -> bytes | None: ...

    async def delete_document(self, tenant: str, collection: str, doc_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class IngestResult:
    document: DocumentInfo
    #: False when the document was already indexed exactly so and nothing was written.
    changed: bool


@dataclass(frozen=True, slots=True)
class _Request:
    """A validated ingest request: what the input digest covers."""

    tenant: str
    collection: str
    doc_id: str
    data: bytes
    media_type: str | None
    filename: str | None
    title: str | None
    metadata: dict[str, Any]
    access: tuple[str, ...]

    def input_digest(self) -> str:
        return _digest({"source": hashlib.sha256(self.data).hexdigest(),
                        "media_type": self.media_type, "filename": self.filename,
                        "title": self.title, "metadata": self.metadata,
                        "access": list(self.access)})


@dataclass(slots=True)
class _KeyedLocks:
    """One lock per document, dropped when nobody holds or waits for it."""

    _locks: dict[tuple[str, str, str], tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @asynccontextmanager
    async def hold(self, key: tuple[str, str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class IngestService:
    """Ingest, re-index and delete documents of one ``DocumentIndex`` with one embedder."""

    def __init__(self, index: Index, embedder: Embedder, config: RetrievalConfig) -> None:
        self.index = index
        self.embedder = embedder
        self.config = config
        self._locks = _KeyedLocks()

    def pipeline_digest(self) -> str:
        """What, besides the input, decides the chunks and vectors a document gets."""
        chunking = self.config.chunking
        return _digest({"version": PIPELINE_VERSION, "max_tokens": chunking.max_tokens,
                        "overlap_tokens": chunking.overlap_tokens,
                        "embedder": self.embedder.name})[:16]

    async def ingest(self, *, tenant: str, collection: str, doc_id: str, data: bytes,
                     media_type: str | None, filename: str | None = None,
                     title: str | None = None, metadata: Mapping[str, Any] | None = None,
                     access: Sequence[str] = ()) -> IngestResult:
        """Index ``data`` as the document ``doc_id`` of ``collection``, unless it already is.

        Raises ``InvalidRequest`` (naming the field) or ``PayloadTooLarge`` for a request that
        cannot be ingested; extraction and embedding failures are also recorded on the
        document as ``failed`` with their reason."""
        request = _Request(
            tenant=validate_id(tenant, "tenant"), collection=validate_id(collection, "collection"),
            doc_id=validate_id(doc_id, "doc_id"), data=self._check_size(data),
            media_type=_optional_text(media_type, "media_type", 255),
            filename=_optional_text(filename, "filename", 1024),
            title=_optional_text(title, "title", MAX_TITLE_CHARS),
            metadata=validate_metadata(metadata), access=validate_access(access))
        content_hash = f"{request.input_digest()}-{self.pipeline_digest()}"
        async with self._locks.hold((request.tenant, request.collection, request.doc_id)):
            existing = await self.index.get_document(request.tenant, request.collection,
                                                     request.doc_id)
            if (existing is not None and existing.status == "indexed"
                    and existing.content_hash == content_hash):
                return IngestResult(existing, changed=False)
            document = await self._index(request, content_hash)
            return IngestResult(document, changed=True)

    async def reindex(self, tenant: str, collection: str, doc_id: str) -> IngestResult:
        """Extract, chunk and embed the stored source again with the current settings (after a
        change of chunking or embedder, or to retry a failure); always writes."""
        async with self._locks.hold((tenant, collection, doc_id)):
            info = await self.index.get_document(tenant, collection, doc_id)
            if info is None:
                raise NotFound(f"no document {doc_id!r} in collection {collection!r}",
                               param="doc_id")
            source = await self.index.get_source(tenant, collection, doc_id)
            if source is None:
                raise Conflict(f"document {doc_id!r} has no stored source to re-index (it "
                               "was never indexed); ingest it again", code="no_source")
            request = _Request(tenant=tenant, collection=collection, doc_id=doc_id,
                               data=source, media_type=info.media_type, filename=None,
                               title=info.title, metadata=dict(info.metadata),
                               access=tuple(info.access))
            input_digest = info.content_hash.rsplit("-", 1)[0]
            document = await self._index(request, f"{input_digest}-{self.pipeline_digest()}")
            return IngestResult(document, changed=True)

    async def delete(self, tenant: str, collection: str, doc_id: str) -> None:
        """Remove the document, its chunks and its source; ``NotFound`` if there is none."""
        async with self._locks.hold((tenant, collection, doc_id)):
            if not await self.index.delete_document(tenant, collection, doc_id):
                raise NotFound(f"no document {doc_id!r} in collection {collection!r}",
                               param="doc_id")

    # -- the pipeline

    def _check_size(self, data: bytes) -> bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidRequest("the document must be bytes", param="content")
        limit = self.config.max_document_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"the document is {len(data)} bytes; the limit is {limit} "
                                  "(retrieval.max_document_bytes)", param="content")
        return bytes(data)

    async def _index(self, request: _Request, content_hash: str) -> DocumentInfo:
        cfg = self.config.chunking

        def prepare() -> tuple[ExtractedDocument, list[ChunkDraft]]:
            doc = extract(request.data, request.media_type, request.filename)
            chunks = chunk_document(doc, max_tokens=cfg.max_tokens,
                                    overlap_tokens=cfg.overlap_tokens,
                                    count_tokens=self.embedder.count_tokens)
            return doc, chunks

        draft = DocumentInfo(
            tenant=request.tenant, collection=request.collection, doc_id=request.doc_id,
            title=request.title or _name_title(request.filename) or request.doc_id,
            content_hash=content_hash, status="failed", metadata=request.metadata,
            access=request.access, media_type=_known_type(request.media_type),
            embedding_model=self.embedder.name)
        try:
            doc, chunks = await asyncio.to_thread(prepare)
        except BastionError as exc:
            await self._fail(draft, exc.message)
            raise
        except Exception as exc:  # a parser bug must not leave no trace
            log.warning("extraction of %s/%s failed", request.collection, request.doc_id,
                        exc_info=True)
            await self._fail(draft, f"extraction failed: {type(exc).__name__}: {exc}")
            raise InvalidRequest(f"the document could not be read: {exc}",
                                 param="content") from exc
        title = (request.title or _clip(doc.title) or _name_title(request.filename)
                 or request.doc_id)
        info = DocumentInfo(
            tenant=request.tenant, collection=request.collection, doc_id=request.doc_id,
            title=title, content_hash=content_hash, status="indexed", metadata=request.metadata,
            access=request.access, chunk_count=len(chunks), media_type=doc.media_type,
            embedding_model=self.embedder.name)
        try:
            vectors = await self.embedder.embed([passage_text(title, c) for c in chunks])
        except Exception as exc:  # the model failing is recorded, then raised
            reason = f"embedding failed: {type(exc).__name__}: {exc}"
            await self._fail(info, reason)
            raise DependencyError(f"the embedding model failed: {exc}",
                                  code="embedding_failed") from exc
        await self.index.replace_document(info, chunks, vectors, source=request.data)
        stored = await self.index.get_document(request.tenant, request.collection,
                                               request.doc_id)
        return stored or info

    async def _fail(self, info: DocumentInfo, reason: str) -> None:
        await self.index.mark_failed(
            replace(info, status="failed", reason=reason[:1000], chunk_count=0))


# --------------------------------------------------------------------------- validation


def validate_id(value: object, param: str) -> str:
    """Collection, document and tenant ids: 1-128 characters of ``[A-Za-z0-9._:-]``."""
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidRequest(f"{param} must be 1-128 characters of letters, digits and "
                             f"'._:-', got {_show(value)}", param=param)
    return value


def validate_metadata(metadata: object) -> dict[str, Any]:
    """A flat JSON object of scalars, bounded, so it can be shown and filtered on."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidRequest("metadata must be a JSON object", param="metadata")
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidRequest(f"metadata has {len(metadata)} keys; at most "
                             f"{MAX_METADATA_KEYS} are allowed", param="metadata")
    clean: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not _METADATA_KEY.match(key):
            raise InvalidRequest(f"metadata key {_show(key)} must be 1-64 characters of "
                                 "letters, digits and '_.:-'", param="metadata")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(f"metadata.{key} must be a finite number",
                                 param=f"metadata.{key}")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise InvalidRequest(f"metadata.{key} must be a string, number, boolean or null",
                                 param=f"metadata.{key}")
        clean[key] = value
    if len(orjson.dumps(clean)) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON",
                             param="metadata")
    return dict(sorted(clean.items()))


def validate_access(access: object) -> tuple[str, ...]:
    """Principals allowed to see the document (``user:alice``, ``group:eng``), sorted and
    without duplicates; empty means everyone of the tenant and collection."""
    if access is None:
        return ()
    if isinstance(access, str) or not isinstance(access, Sequence):
        raise InvalidRequest('access must be a list of principals such as ["user:alice", '
                             '"group:eng"]', param="access")
    if len(access) > MAX_ACCESS_ENTRIES:
        raise InvalidRequest(f"access has {len(access)} principals; at most "
                             f"{MAX_ACCESS_ENTRIES} are allowed", param="access")
    for principal in access:
        if not isinstance(principal, str) or not _PRINCIPAL.match(principal):
            raise InvalidRequest(f"access entry {_show(principal)} is not a principal of the "
                                 "form kind:name (user:alice, group:eng)", param="access")
    return tuple(sorted(set(access)))


def _optional_text(value: object, param: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidRequest(f"{param} must be a non-empty string of at most {limit} "
                             "characters", param=param)
    return value.strip()


# --------------------------------------------------------------------------- helpers


def _digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _clip(title: str | None) -> str | None:
    if not title or not title.strip():
        return None
    return " ".join(title.split())[:MAX_TITLE_CHARS]


def _name_title(filename: str | None) -> str | None:
    if not filename:
        return None
    return _clip(PurePosixPath(filename.replace("\\", "/")).stem)


def _known_type(media_type: str | None) -> str:
    """The declared type for a failed record, when extraction never said what it was."""
    if not media_type:
        return "application/octet-stream"
    return media_type.split(";")[0].strip().lower()[:255] or "application/octet-stream"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

