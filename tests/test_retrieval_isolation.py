"""Access control inside retrieval: no search ever returns a chunk its scope may not see, and
the filter runs before the top k is taken, never after.

A scope sees a chunk when the tenant matches, its collection is one of the scope's (or the
scope names none), and its document is public or shares a principal with the scope. The
property test draws random tenants, collections, access lists, principals and queries and
checks lexical, dense and hybrid search against that definition - including after a document
is re-ingested with another access list, which must invalidate the cached vector matrix.

The embedder is a fake bag-of-words model (one dimension per vocabulary word): exact, instant,
and it makes "better matching" easy to construct.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.config.retrieval import SearchConfig
from bastion.domain.retrieval import AccessScope, ChunkDraft, ChunkHit, DocumentInfo
from bastion.retrieval import DocumentIndex, Retriever

VOCAB = ("apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "quartz")
TENANTS = ("t1", "t2")
COLLECTIONS = ("c1", "c2", "c3")
PRINCIPALS = ("user:ann", "user:bob", "group:ops")


class BagOfWords:
    name = "bag-of-words"
    dim = len(VOCAB)

    def vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for word in text.lower().split():
            if word in VOCAB:
                v[VOCAB.index(word)] += 1.0
        norm = np.linalg.norm(v)
        return v / norm if norm else v

    async def embed(self, texts: list[str]) -> np.ndarray:
        return np.array([self.vector(t) for t in texts], dtype=np.float32).reshape(-1, self.dim)


EMBEDDER = BagOfWords()


@dataclass(frozen=True)
class Doc:
    tenant: str
    collection: str
    doc_id: str
    access: tuple[str, ...]
    texts: tuple[str, ...]

    def info(self) -> DocumentInfo:
        return DocumentInfo(tenant=self.tenant, collection=self.collection, doc_id=self.doc_id,
                            title="", content_hash="h", status="indexed", access=self.access)


def visible(doc: Doc, scope: AccessScope) -> bool:
    return (doc.tenant == scope.tenant
            and (not scope.collections or doc.collection in scope.collections)
            and (not doc.access or bool(set(doc.access) & set(scope.principals))))


async def ingest(index: DocumentIndex, doc: Doc) -> None:
    chunks = [ChunkDraft(text, i) for i, text in enumerate(doc.texts)]
    await index.replace_document(doc.info(), chunks, await EMBEDDER.embed(list(doc.texts)))


words = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=5).map(" ".join)
access_lists = st.lists(st.sampled_from(PRINCIPALS), max_size=2, unique=True).map(tuple)


@st.composite
def corpora(draw: st.DrawFn) -> list[Doc]:
    n = draw(st.integers(min_value=1, max_value=14))
    return [Doc(tenant=draw(st.sampled_from(TENANTS)),
                collection=draw(st.sampled_from(COLLECTIONS)), doc_id=f"d{i}",
                access=draw(access_lists),
                texts=tuple(draw(st.lists(words, min_size=1, max_size=3))))
            for i in range(n)]


scopes = st.builds(
    AccessScope, tenant=st.sampled_from(TENANTS),
    collections=st.lists(st.sampled_from(COLLECTIONS), max_size=2, unique=True).map(tuple),
    principals=st.lists(st.sampled_from(PRINCIPALS), max_size=2, unique=True).map(tuple))
queries = st.one_of(words, st.text(max_size=20),
                    st.tuples(words, st.text(max_size=10)).map(" ".join))


def check(hits: list[ChunkHit], docs: list[Doc], scope: AccessScope, expected: int) -> None:
    by_key = {(d.collection, d.doc_id): d for d in docs}
    for hit in hits:
        assert visible(by_key[(hit.collection, hit.doc_id)], scope), hit
    assert len(hits) == expected
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


async def check_all_searches(index: DocumentIndex, docs: list[Doc], scope: AccessScope,
                             query: str, k: int) -> None:
    retriever = Retriever(index, EMBEDDER, SearchConfig())  # type: ignore[arg-type]
    seen = [(d, i, t) for d in docs if visible(d, scope) for i, t in enumerate(d.texts)]
    terms = set(query.lower().split()) & set(VOCAB)
    lexical_pool = {(d.doc_id, i) for d, i, t in seen if terms & set(t.split())}
    query_vector = EMBEDDER.vector(query)
    dense_pool = {(d.doc_id, i) for d, i, _ in seen} if query_vector.any() else set()

    lexical = await retriever.lexical(scope, query, k)
    check(lexical, docs, scope, min(k, len(lexical_pool)))
    dense = await retriever.dense(scope, query, k)
    check(dense, docs, scope, min(k, len(dense_pool)))
    if dense:  # exactly the best cosines among the visible chunks
        best = sorted((float(EMBEDDER.vector(t) @ query_vector) for _, _, t in seen),
                      reverse=True)[:k]
        assert np.allclose([h.score for h in dense], best, atol=1e-5)
    for fusion in ("convex", "rrf"):
        retriever.config = SearchConfig(fusion=fusion)  # type: ignore[arg-type]
        hybrid = await retriever.search(scope, query, k)
        check(hybrid, docs, scope, min(k, len(lexical_pool | dense_pool)))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(docs=corpora(), scope=scopes, query=queries, k=st.integers(1, 6),
       change=st.tuples(st.integers(0, 13), access_lists))
def test_no_search_returns_a_chunk_outside_its_scope(
        docs: list[Doc], scope: AccessScope, query: str, k: int,
        change: tuple[int, tuple[str, ...]]) -> None:
    async def run() -> None:
        index = DocumentIndex(None, embedding_model=EMBEDDER.name, dim=EMBEDDER.dim)
        try:
            for doc in docs:
                await ingest(index, doc)
            await check_all_searches(index, docs, scope, query, k)
            # Re-ingest one document under another access list: the cached matrix must follow.
            position, access = change
            target = docs[position % len(docs)]
            moved = Doc(target.tenant, target.collection, target.doc_id, access, target.texts)
            await ingest(index, moved)
            now = [moved if d is target else d for d in docs]
            await check_all_searches(index, now, scope, query, k)
        finally:
            await index.aclose()
    asyncio.run(run())


async def test_a_visible_match_is_found_behind_many_better_invisible_ones() -> None:
    """50 chunks the caller may not see match the query far better than the one it may see;
    with k=1 every search must still return the visible one."""
    index = DocumentIndex(None, embedding_model=EMBEDDER.name, dim=EMBEDDER.dim)
    strong = ("apple river " * 5).strip()
    hidden = [Doc("t2", "c1", f"other-tenant-{i}", (), (strong,)) for i in range(20)]
    hidden += [Doc("t1", "c2", f"other-collection-{i}", (), (strong,)) for i in range(15)]
    hidden += [Doc("t1", "c1", f"restricted-{i}", ("group:ops",), (strong,)) for i in range(15)]
    mine = Doc("t1", "c1", "mine", ("user:ann",), ("apple stone cloud tiger piano lemon",))
    try:
        for doc in [*hidden, mine]:
            await ingest(index, doc)
        scope = AccessScope("t1", collections=("c1",), principals=("user:ann",))
        retriever = Retriever(index, EMBEDDER, SearchConfig())  # type: ignore[arg-type]
        for search in (retriever.lexical, retriever.dense, retriever.search):
            hits = await search(scope, "apple river", 1)
            assert [h.doc_id for h in hits] == ["mine"], search
        # ... and the hidden ones are there, for a scope that may see them.
        ops = AccessScope("t1", collections=("c1",), principals=("group:ops",))
        assert (await retriever.search(ops, "apple river", 1))[0].doc_id.startswith(
            "restricted-")
    finally:
        await index.aclose()
