"""The document index: atomic replacement, documents, failures, model pinning, safe queries.

Vectors here are small hand-made ones (dimension 4): the index does not care where they come
from, and the tests stay fast and exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.domain.retrieval import AccessScope, ChunkDraft, DocumentInfo
from bastion.retrieval.fts_query import fts_match
from bastion.retrieval.index import DocumentIndex, IndexModelMismatch, chunk_id

DIM = 4
SCOPE = AccessScope(tenant="acme")


def info(doc_id: str = "d1", *, collection: str = "docs", title: str = "Title",
         content_hash: str = "h1", tenant: str = "acme",
         access: tuple[str, ...] = ()) -> DocumentInfo:
    return DocumentInfo(tenant=tenant, collection=collection, doc_id=doc_id, title=title,
                        content_hash=content_hash, status="indexed", access=access,
                        metadata={"source": doc_id})


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def vectors(n: int, direction: int = 0) -> np.ndarray:
    out = np.zeros((n, DIM), dtype=np.float32)
    out[:, direction] = 1.0
    return out


@pytest.fixture
async def index() -> AsyncIterator[DocumentIndex]:
    idx = DocumentIndex(None, embedding_model="test-model", dim=DIM)
    await idx.start()
    yield idx
    await idx.aclose()


async def test_a_replaced_document_is_searchable_both_ways(index: DocumentIndex) -> None:
    chunks = [ChunkDraft("solar panels convert sunlight", 0, ("Energy",)),
              ChunkDraft("wind turbines spin", 1)]
    await index.replace_document(info(), chunks, vectors(2), source=b"raw bytes")

    lexical = await index.lexical_search(SCOPE, "sunlight", 5)
    assert [h.chunk_id for h in lexical] == ["docs/d1#0"]
    hit = lexical[0]
    assert (hit.doc_id, hit.collection, hit.title, hit.position, hit.rank) == (
        "d1", "docs", "Title", 0, 1)
    assert hit.headings == ("Energy",) and hit.metadata == {"source": "d1"}
    assert hit.score > 0 and hit.lexical_score == hit.score and hit.dense_score is None

    dense = await index.dense_search(SCOPE, unit(1, 0, 0, 0), 5)
    assert [h.rank for h in dense] == [1, 2]
    assert dense[0].dense_score == pytest.approx(1.0) and dense[0].lexical_score is None

    stored = await index.get_document("acme", "docs", "d1")
    assert stored is not None
    assert (stored.status, stored.chunk_count, stored.embedding_model) == (
        "indexed", 2, "test-model")
    assert stored.updated_at > 0
    assert await index.get_source("acme", "docs", "d1") == b"raw bytes"


async def test_replacing_a_document_drops_its_old_chunks(index: DocumentIndex) -> None:
    await index.replace_document(info(), [ChunkDraft("old apples", 0),
                                          ChunkDraft("old pears", 1)], vectors(2))
    await index.replace_document(info(content_hash="h2"), [ChunkDraft("new bananas", 0)],
                                 vectors(1))
    assert await index.lexical_search(SCOPE, "apples pears", 5) == []
    assert [h.text for h in await index.dense_search(SCOPE, unit(1, 0, 0, 0), 5)] == [
        "new bananas"]
    stored = await index.get_document("acme", "docs", "d1")
    assert stored is not None and stored.chunk_count == 1


async def test_readers_never_see_old_and_new_chunks_together(tmp_path: Path) -> None:
    """A writer flips a document between two versions while a reader (another connection,
    as another process would have) searches: every result is all-A or all-B."""
    path = str(tmp_path / "index.db")
    writer = DocumentIndex(path, embedding_model="test-model", dim=DIM)
    reader = DocumentIndex(path, embedding_model="test-model", dim=DIM)
    await writer.start()
    await reader.start()
    versions = {v: [ChunkDraft(f"shared words version{v} part{i}", i) for i in range(6)]
                for v in "ab"}
    await writer.replace_document(info(), versions["a"], vectors(6))
    stop = asyncio.Event()

    async def flip() -> None:
        for n in range(40):
            v = "ab"[n % 2]
            await writer.replace_document(info(content_hash=v), versions[v], vectors(6))
        stop.set()

    seen: set[frozenset[str]] = set()

    async def read() -> None:
        while not stop.is_set():
            for hits in (await reader.lexical_search(SCOPE, "shared words", 20),
                         await reader.dense_search(SCOPE, unit(1, 0, 0, 0), 20)):
                assert len(hits) == 6
                seen.add(frozenset(h.text.split()[2] for h in hits))
    try:
        await asyncio.gather(flip(), read())
    finally:
        await writer.aclose()
        await reader.aclose()
    assert seen <= {frozenset({"versiona"}), frozenset({"versionb"})}


async def test_another_process_ingest_is_seen_by_dense_search(tmp_path: Path) -> None:
    """The vector matrix is cached per tenant and rebuilt when the generation moves."""
    path = str(tmp_path / "index.db")
    one = DocumentIndex(path, embedding_model="test-model", dim=DIM)
    two = DocumentIndex(path, embedding_model="test-model", dim=DIM)
    try:
        await one.replace_document(info("d1"), [ChunkDraft("first", 0)], vectors(1, 0))
        assert [h.doc_id for h in await two.dense_search(SCOPE, unit(0, 1, 0, 0), 5)] == ["d1"]
        await one.replace_document(info("d2"), [ChunkDraft("second", 0)], vectors(1, 1))
        assert [h.doc_id for h in await two.dense_search(SCOPE, unit(0, 1, 0, 0), 5)] == [
            "d2", "d1"]
        await one.delete_document("acme", "docs", "d2")
        assert [h.doc_id for h in await two.dense_search(SCOPE, unit(0, 1, 0, 0), 5)] == ["d1"]
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_failed_ingest_keeps_the_indexed_version_searchable(
        index: DocumentIndex) -> None:
    await index.replace_document(info(), [ChunkDraft("durable knowledge", 0)], vectors(1))
    await index.mark_failed(DocumentInfo(
        tenant="acme", collection="docs", doc_id="d1", title="Other", content_hash="h2",
        status="failed", reason="pdf is encrypted"))
    stored = await index.get_document("acme", "docs", "d1")
    assert stored is not None
    assert (stored.status, stored.reason, stored.chunk_count, stored.title,
            stored.content_hash) == ("failed", "pdf is encrypted", 1, "Title", "h1")
    assert len(await index.lexical_search(SCOPE, "durable", 5)) == 1
    # A successful ingest clears the failure.
    await index.replace_document(info(content_hash="h3"), [ChunkDraft("fresh", 0)], vectors(1))
    stored = await index.get_document("acme", "docs", "d1")
    assert stored is not None and (stored.status, stored.reason) == ("indexed", None)


async def test_a_document_that_never_indexed_is_recorded_as_failed(
        index: DocumentIndex) -> None:
    await index.mark_failed(DocumentInfo(
        tenant="acme", collection="docs", doc_id="bad", title="Bad", content_hash="x",
        status="failed", reason="empty document", access=("user:a",)))
    stored = await index.get_document("acme", "docs", "bad")
    assert stored is not None
    assert (stored.status, stored.reason, stored.chunk_count, stored.access) == (
        "failed", "empty document", 0, ("user:a",))
    assert await index.get_source("acme", "docs", "bad") is None


async def test_source_is_kept_only_while_it_matches_the_content(index: DocumentIndex) -> None:
    await index.replace_document(info(content_hash="h1"), [ChunkDraft("x", 0)], vectors(1),
                                 source=b"v1")
    await index.replace_document(info(content_hash="h1"), [ChunkDraft("x", 0)], vectors(1))
    assert await index.get_source("acme", "docs", "d1") == b"v1"
    await index.replace_document(info(content_hash="h2"), [ChunkDraft("y", 0)], vectors(1))
    assert await index.get_source("acme", "docs", "d1") is None


async def test_delete_removes_the_document_and_its_chunks(index: DocumentIndex) -> None:
    await index.replace_document(info(), [ChunkDraft("ephemeral", 0)], vectors(1), b"src")
    assert await index.delete_document("acme", "docs", "d1") is True
    assert await index.delete_document("acme", "docs", "d1") is False
    assert await index.get_document("acme", "docs", "d1") is None
    assert await index.get_source("acme", "docs", "d1") is None
    assert await index.lexical_search(SCOPE, "ephemeral", 5) == []
    assert await index.dense_search(SCOPE, unit(1, 0, 0, 0), 5) == []


async def test_documents_are_listed_in_stable_pages(index: DocumentIndex) -> None:
    for collection, doc_id in [("b", "2"), ("a", "9"), ("b", "1"), ("a", "10")]:
        await index.replace_document(info(doc_id, collection=collection),
                                     [ChunkDraft("t", 0)], vectors(1))
    await index.replace_document(info("z", tenant="other"), [ChunkDraft("t", 0)], vectors(1))
    everything = [(d.collection, d.doc_id) for d in await index.list_documents("acme")]
    assert everything == [("a", "10"), ("a", "9"), ("b", "1"), ("b", "2")]
    first = await index.list_documents("acme", limit=3)
    rest = await index.list_documents("acme", limit=3,
                                      after=(first[-1].collection, first[-1].doc_id))
    assert [(d.collection, d.doc_id) for d in first + rest] == everything
    in_b = await index.list_documents("acme", "b", after="1")
    assert [d.doc_id for d in in_b] == ["2"]


async def test_chunk_ids_are_unique_even_with_separators_in_names(
        index: DocumentIndex) -> None:
    assert chunk_id("a/b", "c", 0) != chunk_id("a", "b/c", 0)
    assert chunk_id("docs", "guide#2", 1) == "docs/guide%232#1"
    await index.replace_document(info("b/c", collection="a"), [ChunkDraft("same", 0)],
                                 vectors(1))
    await index.replace_document(info("c", collection="a/b"), [ChunkDraft("same", 0)],
                                 vectors(1))
    hits = await index.lexical_search(SCOPE, "same", 5)
    assert len({h.chunk_id for h in hits}) == 2


async def test_the_index_refuses_another_embedding_model(tmp_path: Path) -> None:
    path = str(tmp_path / "index.db")
    first = DocumentIndex(path, embedding_model="test-model", dim=DIM)
    await first.start()
    await first.aclose()
    for model, dim in [("other-model", DIM), ("test-model", 8)]:
        other = DocumentIndex(path, embedding_model=model, dim=dim)
        with pytest.raises(IndexModelMismatch, match="test-model"):
            await other.start()
        await other.aclose()


async def test_vectors_of_the_wrong_shape_are_refused(index: DocumentIndex) -> None:
    with pytest.raises(IndexModelMismatch):
        await index.replace_document(info(), [ChunkDraft("x", 0)], np.zeros((1, 8)))
    with pytest.raises(ValueError, match="1 chunks but 2 vectors"):
        await index.replace_document(info(), [ChunkDraft("x", 0)], vectors(2))
    with pytest.raises(IndexModelMismatch):
        await index.replace_document(
            DocumentInfo(tenant="acme", collection="docs", doc_id="d1", title="t",
                         content_hash="h", status="indexed", embedding_model="other"),
            [ChunkDraft("x", 0)], vectors(1))
    with pytest.raises(IndexModelMismatch):
        await index.dense_search(SCOPE, np.zeros(8), 3)
    assert await index.get_document("acme", "docs", "d1") is None


async def test_in_memory_indexes_are_private() -> None:
    one = DocumentIndex(None, embedding_model="test-model", dim=DIM)
    two = DocumentIndex(None, embedding_model="test-model", dim=DIM)
    try:
        await one.replace_document(info(), [ChunkDraft("private", 0)], vectors(1))
        assert await two.lexical_search(SCOPE, "private", 5) == []
    finally:
        await one.aclose()
        await two.aclose()


@pytest.mark.parametrize("query", [
    "", "   ", '"', '""', "'", "*", "NEAR", "NEAR(a b)", "a NEAR/2 b", "AND OR NOT", "(", ")",
    "^start", "col:term", "a:b:c", "+-", "the of and", "日本語のテキスト", "ünïcödé café",
    "emoji 🚀 rocket", "\x00null", "x" * 5000, " ".join(["word"] * 500), "a_b",
    "🚀",
])
async def test_any_query_text_is_safe(index: DocumentIndex, query: str) -> None:
    await index.replace_document(info(), [ChunkDraft("rocket word café", 0)], vectors(1))
    hits = await index.lexical_search(SCOPE, query, 5)
    assert all(h.score > 0 for h in hits)


async def test_a_query_of_stopwords_only_finds_nothing(index: DocumentIndex) -> None:
    await index.replace_document(info(), [ChunkDraft("the of and", 0)], vectors(1))
    assert fts_match("the of and") is None
    assert await index.lexical_search(SCOPE, "the of and", 5) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80))
def test_fuzzed_query_text_never_raises(text: str) -> None:
    async def run() -> None:
        idx = DocumentIndex(None, embedding_model="test-model", dim=DIM)
        try:
            await idx.replace_document(info(), [ChunkDraft("alpha beta gamma", 0)], vectors(1))
            await idx.lexical_search(SCOPE, text, 3)
        finally:
            await idx.aclose()
    asyncio.run(run())


async def test_a_document_may_have_no_chunks(index: DocumentIndex) -> None:
    await index.replace_document(info(), [], np.zeros((0,)))
    stored = await index.get_document("acme", "docs", "d1")
    assert stored is not None and (stored.status, stored.chunk_count) == ("indexed", 0)
    assert await index.dense_search(SCOPE, unit(1, 0, 0, 0), 3) == []
