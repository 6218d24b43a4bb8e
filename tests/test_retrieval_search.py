"""The embedder, rank fusion and the Retriever (lexical, dense, hybrid) on a small corpus.

The real all-MiniLM-L6-v2 model is loaded once for the module: the checks on it are about
sanity (similar texts are closer than unrelated ones), not about exact numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from bastion.config.retrieval import EmbedderConfig, SearchConfig
from bastion.domain.retrieval import AccessScope, ChunkDraft, ChunkHit, DocumentInfo
from bastion.retrieval import (
    DocumentIndex,
    MiniLMEmbedder,
    Retriever,
    passage_text,
    reciprocal_rank_fusion,
    weighted_rrf,
)
from bastion.retrieval.fusion import convex_fusion

CORPUS = {
    "solar": ("Solar power", "Photovoltaic panels turn sunlight into electricity on rooftops."),
    "wind": ("Wind energy", "Turbines on hills convert moving air into electrical power."),
    "bread": ("Baking", "Knead the dough, let it rise overnight and bake it until golden."),
    "cats": ("Pets", "Cats sleep most of the day and hunt small rodents at night."),
    "refund": ("Billing", "Customers may request a refund within 30 days using form RX-7731."),
}
SCOPE = AccessScope(tenant="acme")


@pytest.fixture(scope="module")
def embedder() -> Iterator[MiniLMEmbedder]:
    model = MiniLMEmbedder(EmbedderConfig(threads=2, batch_size=4, max_tokens=64))
    yield model
    model.close()


@pytest.fixture
async def retriever(embedder: MiniLMEmbedder) -> AsyncIterator[Retriever]:
    index = DocumentIndex(None, embedding_model=embedder.name, dim=embedder.dim)
    await index.start()
    for doc_id, (title, text) in CORPUS.items():
        chunk = ChunkDraft(text, 0)
        (vector,) = await embedder.embed([passage_text(title, chunk)])
        await index.replace_document(
            DocumentInfo(tenant="acme", collection="kb", doc_id=doc_id, title=title,
                         content_hash=doc_id, status="indexed"), [chunk], vector[None, :])
    yield Retriever(index, embedder, SearchConfig())
    await index.aclose()


def hit(chunk_id: str, score: float = 0.0, **components: float) -> ChunkHit:
    return ChunkHit(chunk_id=chunk_id, doc_id=chunk_id, collection="c", title="", text="",
                    position=0, score=score, rank=0, **components)


# -- the embedder


def test_embeddings_are_unit_vectors_and_similar_texts_are_closer(
        embedder: MiniLMEmbedder) -> None:
    v = embedder.embed_sync(["A man is eating food.", "Someone is having a meal.",
                             "The stock market fell sharply today."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]


def test_embedding_keeps_input_order_across_batches(embedder: MiniLMEmbedder) -> None:
    texts = ["short", "a much longer sentence about the weather in spring", "mid length",
             "tiny", "another fairly long sentence about trains and stations", "x"]
    together = embedder.embed_sync(texts)
    one_by_one = np.vstack([embedder.embed_sync([t]) for t in texts])
    assert np.allclose(together, one_by_one, atol=1e-4)
    assert embedder.embed_sync([]).shape == (0, 384)


def test_long_texts_are_truncated_and_tokens_are_counted(embedder: MiniLMEmbedder) -> None:
    assert embedder.count_tokens("Hello world") == 2
    long = "word " * 1000
    assert embedder.count_tokens(long) == 1000  # counting never truncates
    assert embedder.embed_sync([long]).shape == (1, 384)


async def test_embedding_does_not_block_the_event_loop(embedder: MiniLMEmbedder) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await embedder.embed(["a sentence to embed, several times over"] * 16)
    elapsed = time.perf_counter() - started
    task.cancel()
    assert elapsed < 0.02 or ticks > 3


# -- fusion


def test_rrf_sums_reciprocal_ranks_and_keeps_component_scores() -> None:
    lexical = [hit("a", lexical_score=9.0), hit("b", lexical_score=5.0)]
    dense = [hit("b", dense_score=0.9), hit("c", dense_score=0.8)]
    fused = reciprocal_rank_fusion([lexical, dense], k=60)
    assert [h.chunk_id for h in fused] == ["b", "a", "c"]
    assert [h.rank for h in fused] == [1, 2, 3]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[1].score == pytest.approx(1 / 61)
    assert (fused[0].lexical_score, fused[0].dense_score) == (5.0, 0.9)
    assert (fused[2].lexical_score, fused[2].dense_score) == (None, 0.8)


def test_weighted_rrf_lets_one_list_count_more() -> None:
    lexical = [hit("a"), hit("b")]
    dense = [hit("b"), hit("a")]
    assert weighted_rrf(lexical, dense, k=1, lexical_weight=2.0)[0].chunk_id == "a"
    assert weighted_rrf(lexical, dense, k=1, dense_weight=2.0)[0].chunk_id == "b"


def test_fusion_ties_are_broken_by_best_rank_then_chunk_id() -> None:
    # x and y tie on score (ranks 1+3 vs 2+2 do not, so use symmetric lists).
    fused = reciprocal_rank_fusion([[hit("y"), hit("x")], [hit("x"), hit("y")]], k=60)
    assert [h.chunk_id for h in fused] == ["x", "y"]
    again = reciprocal_rank_fusion([[hit("x"), hit("y")], [hit("y"), hit("x")]], k=60)
    assert [h.chunk_id for h in again] == ["x", "y"]
    assert [h.chunk_id for h in reciprocal_rank_fusion([[hit("b"), hit("a")]], limit=1)] == [
        "b"]


def test_convex_fusion_combines_normalised_scores() -> None:
    lexical = [hit("a", score=10.0, lexical_score=10.0), hit("b", score=5.0, lexical_score=5.0)]
    dense = [hit("b", score=0.8, dense_score=0.8), hit("c", score=0.4, dense_score=0.4)]
    fused = convex_fusion(lexical, dense, lexical_weight=1.0, dense_weight=1.0,
                          normalisation="max")
    scores = {h.chunk_id: h.score for h in fused}
    # a: (1.0 + 0.5 floor) / 2; b: (0.5 + 1.0) / 2; c: (0.5 floor + 0.5) / 2
    assert scores == pytest.approx({"a": 0.75, "b": 0.75, "c": 0.5})
    assert [h.chunk_id for h in fused] == ["a", "b", "c"]  # tie: best rank, then id
    assert fused[1].lexical_score == 5.0 and fused[1].dense_score == 0.8
    assert convex_fusion([], [], limit=3) == []


# -- the retriever


async def test_lexical_finds_exact_codes_and_dense_finds_paraphrases(
        retriever: Retriever) -> None:
    lexical = await retriever.lexical(SCOPE, "form RX-7731", 3)
    assert lexical[0].doc_id == "refund"
    dense = await retriever.dense(SCOPE, "generating electricity from the sun", 3)
    assert dense[0].doc_id == "solar"


@pytest.mark.parametrize("fusion", ["rrf", "weighted_rrf", "convex"])
async def test_hybrid_search_fuses_both_and_ranks_one_to_k(retriever: Retriever,
                                                           fusion: str) -> None:
    retriever.config = SearchConfig(fusion=fusion)  # type: ignore[arg-type]
    hits = await retriever.search(SCOPE, "how do I get my money back (RX-7731)?", 3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].doc_id == "refund"
    assert hits[0].lexical_score is not None and hits[0].dense_score is not None
    assert await retriever.search(SCOPE, "   ", 3) == []
    assert await retriever.search(SCOPE, "sunlight", 0) == []


async def test_hybrid_search_is_deterministic(retriever: Retriever) -> None:
    runs = [[h.chunk_id for h in await retriever.search(SCOPE, "power", 5)] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


async def test_the_retriever_refuses_an_embedder_of_another_model(
        embedder: MiniLMEmbedder) -> None:
    index = DocumentIndex(None, embedding_model="other", dim=384)
    with pytest.raises(ValueError, match="does not match"):
        Retriever(index, embedder)
    await index.aclose()
