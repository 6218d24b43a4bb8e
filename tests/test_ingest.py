"""The ingestion service: an unchanged document writes nothing, a changed one replaces its
chunks atomically (a concurrent reader never sees old and new together, nor none), failures
are recorded on the document with their reason and raised, and a version indexed before a
failure stays searchable.

Most tests use a deterministic fake embedder and a real ``DocumentIndex``; one drives the real
MiniLM model, loaded once (``real_embedder``) and shared with the HTTP tests."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from bastion.config.retrieval import ChunkingConfig, RetrievalConfig
from bastion.domain.errors import (
    Conflict,
    DependencyError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
)
from bastion.domain.retrieval import AccessScope, ChunkDraft, DocumentInfo
from bastion.retrieval.embedder import MiniLMEmbedder
from bastion.retrieval.index import DocumentIndex
from bastion.services.ingest import IngestResult, IngestService


@cache
def real_embedder() -> MiniLMEmbedder:
    """The real model, loaded once per test session."""
    embedder = MiniLMEmbedder()
    embedder.warm_up()
    return embedder


class FakeEmbedder:
    """Deterministic unit vectors from a hash of the text; counts words as tokens."""

    dim = 8

    def __init__(self, name: str = "fake-embedder") -> None:
        self.name = name
        self.calls = 0
        self.fail: Exception | None = None

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            raw = np.frombuffer(hashlib.sha256(text.encode()).digest()[:8], dtype=np.uint8)
            vector = raw.astype(np.float32) + 1.0
            out[i] = vector / np.linalg.norm(vector)
        return out

    def close(self) -> None:
        pass


class CountingIndex(DocumentIndex):
    """The real index, counting the writes ingestion makes."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.writes: list[str] = []

    async def replace_document(self, info: DocumentInfo, chunks: Sequence[ChunkDraft],
                               vectors: np.ndarray, source: bytes | None = None) -> None:
        self.writes.append("replace")
        await super().replace_document(info, chunks, vectors, source)

    async def mark_failed(self, info: DocumentInfo) -> None:
        self.writes.append("failed")
        await super().mark_failed(info)


def config(max_tokens: int = 16, overlap: int = 4, max_bytes: int = 64 * 1024
           ) -> RetrievalConfig:
    return RetrievalConfig(chunking=ChunkingConfig(max_tokens=max_tokens,
                                                   overlap_tokens=overlap),
                           max_document_bytes=max_bytes)


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
async def index(embedder: FakeEmbedder) -> AsyncIterator[CountingIndex]:
    idx = CountingIndex(None, embedding_model=embedder.name, dim=embedder.dim)
    await idx.start()
    yield idx
    await idx.aclose()


@pytest.fixture
def service(index: CountingIndex, embedder: FakeEmbedder) -> IngestService:
    return IngestService(index, embedder, config())


GUIDE = b"""# Guide

Install the package with pip. It needs Python 3.11 or newer.

## Usage

Run the gateway and point your client at it. Every request gets an id.
"""


async def ingest(service: IngestService, data: bytes = GUIDE, **kw: object) -> IngestResult:
    args: dict[str, object] = {"tenant": "acme", "collection": "docs", "doc_id": "guide",
                               "media_type": None, "filename": "guide.md", **kw}
    return await service.ingest(data=data, **args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- indexing


async def test_a_document_is_indexed_with_its_title_type_and_chunks(
        service: IngestService, index: CountingIndex) -> None:
    result = await ingest(service, metadata={"lang": "en", "year": 2024},
                          access=["group:eng", "user:alice", "group:eng"])
    doc = result.document
    assert result.changed
    assert (doc.status, doc.reason, doc.title, doc.media_type) == (
        "indexed", None, "Guide", "text/markdown")
    assert doc.chunk_count >= 2
    assert doc.metadata == {"lang": "en", "year": 2024}
    assert doc.access == ("group:eng", "user:alice")  # sorted, without duplicates
    assert doc.embedding_model == "fake-embedder"
    assert await index.get_source("acme", "docs", "guide") == GUIDE
    hits = await index.lexical_search(AccessScope("acme", principals=("user:alice",)),
                                      "install pip", 10)
    assert hits and hits[0].headings == ("Guide",) and hits[0].title == "Guide"
    assert not await index.lexical_search(AccessScope("acme"), "install pip", 10)


async def test_the_title_comes_from_the_request_then_the_document_then_the_file_name(
        service: IngestService) -> None:
    assert (await ingest(service, title="Given")).document.title == "Given"
    plain = await ingest(service, b"no headings here", doc_id="n1", filename="my-notes.txt")
    assert plain.document.title == "my-notes"
    bare = await ingest(service, b"no headings here", doc_id="n2", filename=None)
    assert bare.document.title == "n2"


async def test_an_unchanged_document_writes_nothing(
        service: IngestService, index: CountingIndex, embedder: FakeEmbedder) -> None:
    first = await ingest(service, metadata={"a": 1}, access=["user:bob"])
    writes, calls = list(index.writes), embedder.calls
    again = await ingest(service, metadata={"a": 1}, access=["user:bob"])
    assert not again.changed
    assert again.document == first.document
    assert (index.writes, embedder.calls) == (writes, calls)


@pytest.mark.parametrize("change", [
    {"data": GUIDE + b"\nOne more paragraph."}, {"title": "Renamed"},
    {"metadata": {"a": 2}}, {"access": ["user:carol"]}, {"filename": "guide.txt"},
])
async def test_any_change_that_shapes_the_index_re_indexes(
        service: IngestService, index: CountingIndex, change: dict[str, object]) -> None:
    first = await ingest(service, metadata={"a": 1}, access=["user:bob"])
    args: dict[str, object] = {"metadata": {"a": 1}, "access": ["user:bob"], **change}
    second = await ingest(service, **args)
    assert second.changed
    assert second.document.content_hash != first.document.content_hash
    assert index.writes == ["replace", "replace"]


async def test_new_chunking_settings_or_another_embedder_re_index(
        index: CountingIndex, embedder: FakeEmbedder) -> None:
    await ingest(IngestService(index, embedder, config()))
    assert not (await ingest(IngestService(index, embedder, config()))).changed
    assert (await ingest(IngestService(index, embedder, config(max_tokens=32)))).changed
    assert (await ingest(IngestService(index, embedder, config(overlap=0)))).changed


async def test_a_changed_document_replaces_its_chunks_atomically(tmp_path: Path) -> None:
    """Writer and reader are two index instances on one file (two connections, two threads):
    every search sees one whole version, never a mix, never nothing."""
    embedder = FakeEmbedder()
    path = str(tmp_path / "index.db")
    writer = DocumentIndex(path, embedding_model=embedder.name, dim=embedder.dim)
    reader = DocumentIndex(path, embedding_model=embedder.name, dim=embedder.dim)
    await writer.start()
    await reader.start()
    service = IngestService(writer, embedder, config(max_tokens=16, overlap=0))

    def version(n: int) -> bytes:
        # every paragraph says which version it belongs to; versions differ in chunk count
        return "\n\n".join(f"common words of paragraph {i} in version v{n} with more words "
                           "to fill it up." for i in range(3 + n % 3)).encode()

    try:
        await ingest(service, version(0), filename="v.txt")
        seen: list[tuple[frozenset[str], int]] = []
        done = asyncio.Event()

        async def read() -> None:
            scope = AccessScope("acme", ("docs",))
            while not done.is_set():
                hits = await reader.lexical_search(scope, "common words", 100)
                versions = frozenset(w for hit in hits for w in hit.text.split()
                                     if w.startswith("v") and w.rstrip(".")[1:].isdigit())
                seen.append((versions, len(hits)))

        task = asyncio.create_task(read())
        for n in range(1, 13):
            await ingest(service, version(n), filename="v.txt")
            await asyncio.sleep(0)
        done.set()
        await task
    finally:
        await writer.aclose()
        await reader.aclose()
    assert len(seen) > 10 and len({versions for versions, _ in seen}) > 3  # it did interleave
    for versions, count in seen:
        assert len(versions) == 1, versions  # never old and new together
        n = int(next(iter(versions)).rstrip(".")[1:])
        assert count == 3 + n % 3  # never zero, never a partial version


async def test_ingests_of_one_document_run_in_order(service: IngestService,
                                                    index: CountingIndex) -> None:
    results = await asyncio.gather(*(ingest(service, f"Version {n} text.".encode(),
                                            filename="v.txt") for n in range(5)))
    assert all(r.changed for r in results)
    hits = await index.lexical_search(AccessScope("acme"), "version text", 10)
    assert [h.text for h in hits] == ["Version 4 text."]


# --------------------------------------------------------------------------- failures


async def test_a_document_that_cannot_be_read_is_failed_with_its_reason(
        service: IngestService, index: CountingIndex) -> None:
    with pytest.raises(InvalidRequest) as err:
        await ingest(service, b"\x89PNG\r\n\x1a\n\x00\x00", doc_id="logo", filename="logo.md")
    assert err.value.param == "content"
    doc = await index.get_document("acme", "docs", "logo")
    assert doc is not None
    assert (doc.status, doc.chunk_count, doc.title) == ("failed", 0, "logo")
    assert doc.reason is not None and "PNG" in doc.reason
    fixed = await ingest(service, b"Now a real text.", doc_id="logo", filename="logo.md")
    assert fixed.changed and fixed.document.status == "indexed"
    assert fixed.document.reason is None


async def test_a_failed_re_ingest_keeps_the_indexed_version_searchable(
        service: IngestService, index: CountingIndex) -> None:
    await ingest(service)
    with pytest.raises(InvalidRequest):
        await ingest(service, b"   ")
    doc = await index.get_document("acme", "docs", "guide")
    assert doc is not None and doc.status == "failed" and doc.reason == "the document is empty"
    assert await index.lexical_search(AccessScope("acme"), "install pip", 10)
    # the same good content again restores the status
    assert (await ingest(service)).document.status == "indexed"


async def test_an_embedding_failure_is_recorded_and_raised(
        service: IngestService, index: CountingIndex, embedder: FakeEmbedder) -> None:
    embedder.fail = RuntimeError("onnxruntime exploded")
    with pytest.raises(DependencyError) as err:
        await ingest(service)
    assert err.value.code == "embedding_failed"
    doc = await index.get_document("acme", "docs", "guide")
    assert doc is not None and doc.status == "failed"
    assert doc.reason == "embedding failed: RuntimeError: onnxruntime exploded"
    embedder.fail = None
    assert (await ingest(service)).document.status == "indexed"  # a retry is not a no-op


async def test_a_document_over_the_size_limit_is_refused_and_nothing_recorded(
        index: CountingIndex, embedder: FakeEmbedder) -> None:
    service = IngestService(index, embedder, config(max_bytes=1024))
    with pytest.raises(PayloadTooLarge) as err:
        await ingest(service, b"word " * 300)
    assert err.value.status == 413 and err.value.param == "content"
    assert index.writes == []


@pytest.mark.parametrize(("kw", "param"), [
    ({"collection": "has space"}, "collection"), ({"collection": ""}, "collection"),
    ({"doc_id": "a/b"}, "doc_id"), ({"doc_id": "x" * 129}, "doc_id"),
    ({"tenant": None}, "tenant"),
    ({"metadata": ["not", "an", "object"]}, "metadata"),
    ({"metadata": {"nested": {"a": 1}}}, "metadata.nested"),
    ({"metadata": {"bad key": 1}}, "metadata"),
    ({"metadata": {f"k{i}": i for i in range(65)}}, "metadata"),
    ({"metadata": {"big": "x" * 9000}}, "metadata"),
    ({"metadata": {"nan": float("nan")}}, "metadata.nan"),
    ({"access": "user:alice"}, "access"), ({"access": ["alice"]}, "access"),
    ({"access": ["user:a b"]}, "access"), ({"access": [f"user:{i}" for i in range(257)]},
                                           "access"),
    ({"title": ""}, "title"), ({"title": "t" * 513}, "title"),
    ({"media_type": 42}, "media_type"),
])
async def test_malformed_requests_are_refused_naming_the_field_and_record_nothing(
        service: IngestService, index: CountingIndex, kw: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        await ingest(service, **kw)
    assert err.value.param == param
    assert index.writes == []


# --------------------------------------------------------------------------- delete, reindex


async def test_delete_removes_the_document_and_its_chunks(service: IngestService,
                                                          index: CountingIndex) -> None:
    await ingest(service)
    await service.delete("acme", "docs", "guide")
    assert await index.get_document("acme", "docs", "guide") is None
    assert not await index.lexical_search(AccessScope("acme"), "install", 10)
    with pytest.raises(NotFound):
        await service.delete("acme", "docs", "guide")


async def test_reindex_uses_the_stored_source_and_current_settings(
        index: CountingIndex, embedder: FakeEmbedder) -> None:
    text = b"# Guide\n\n" + b"one two three four five six seven eight nine ten.\n\n" * 4
    small = IngestService(index, embedder, config(max_tokens=16))
    before = (await ingest(small, text, metadata={"a": 1})).document
    large = IngestService(index, embedder, config(max_tokens=64))
    after = (await large.reindex("acme", "docs", "guide")).document
    assert (after.status, before.chunk_count, after.chunk_count) == ("indexed", 4, 1)
    assert (after.title, after.metadata, after.media_type) == ("Guide", {"a": 1},
                                                              "text/markdown")
    # the same request through the new settings is now a no-op: the input digest was kept
    assert not (await ingest(large, text, metadata={"a": 1})).changed


async def test_reindex_needs_a_document_with_a_source(service: IngestService) -> None:
    with pytest.raises(NotFound):
        await service.reindex("acme", "docs", "missing")
    with pytest.raises(InvalidRequest):
        await ingest(service, b"", doc_id="never")
    with pytest.raises(Conflict):
        await service.reindex("acme", "docs", "never")


async def test_reindex_after_a_failed_update_restores_the_indexed_version(
        service: IngestService, index: CountingIndex) -> None:
    await ingest(service)
    with pytest.raises(InvalidRequest):
        await ingest(service, b"\x00binary")
    restored = await service.reindex("acme", "docs", "guide")
    assert restored.document.status == "indexed" and restored.document.reason is None


# --------------------------------------------------------------------------- the real model


async def test_the_real_embedder_indexes_and_finds_by_meaning() -> None:
    embedder = real_embedder()
    index = DocumentIndex(None, embedding_model=embedder.name, dim=embedder.dim)
    await index.start()
    try:
        service = IngestService(index, embedder, RetrievalConfig())
        await ingest(service, b"Cats purr when they are content.", doc_id="cats",
                     filename="cats.txt")
        await ingest(service, b"Stock markets fell sharply on Monday.", doc_id="money",
                     filename="money.txt")
        (query,) = await embedder.embed(["a happy kitten"])
        hits = await index.dense_search(AccessScope("acme"), query, 2)
        assert [h.doc_id for h in hits] == ["cats", "money"]
        assert hits[0].dense_score is not None and hits[0].dense_score > 0.3
    finally:
        await index.aclose()
