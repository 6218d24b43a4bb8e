"""Search a scope of the document index: lexical, dense, or both fused (hybrid).

Why hybrid by default: on SciFact (train split) neither BM25 nor MiniLM alone is best; BM25
finds exact terms (gene names, numbers) the small embedding model blurs, the embedding finds
paraphrases BM25 misses, and fusing their rankings beats both (figures in BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np

from bastion.config.retrieval import SearchConfig
from bastion.domain.retrieval import AccessScope, ChunkHit
from bastion.retrieval.fusion import convex_fusion, reciprocal_rank_fusion
from bastion.retrieval.index import DocumentIndex


class Embedder(Protocol):
    name: str
    dim: int

    async def embed(self, texts: list[str]) -> np.ndarray: ...


class Retriever:
    """Scoped search over one ``DocumentIndex`` with one embedder."""

    def __init__(self, index: DocumentIndex, embedder: Embedder,
                 config: SearchConfig | None = None) -> None:
        if embedder.name != index.embedding_model or embedder.dim != index.dim:
            raise ValueError(f"embedder {embedder.name!r} (dim {embedder.dim}) does not match "
                             f"the index's {index.embedding_model!r} (dim {index.dim})")
        self.index = index
        self.embedder = embedder
        self.config = config or SearchConfig()

    async def lexical(self, scope: AccessScope, query: str, k: int) -> list[ChunkHit]:
        """BM25 over the chunks ``scope`` may see."""
        return await self.index.lexical_search(scope, query, k)

    async def dense(self, scope: AccessScope, query: str, k: int) -> list[ChunkHit]:
        """Cosine similarity of the query's embedding over the chunks ``scope`` may see."""
        if not query.strip() or k <= 0:
            return []
        (vector,) = await self.embedder.embed([query])
        return await self.index.dense_search(scope, vector, k)

    async def search(self, scope: AccessScope, query: str, k: int) -> list[ChunkHit]:
        """Hybrid: both retrievers at once (``lexical_k``/``dense_k`` candidates each, never
        fewer than ``k``), fused as configured; ranks 1..k."""
        if k <= 0:
            return []
        cfg = self.config
        lexical, dense = await asyncio.gather(
            self.lexical(scope, query, max(k, cfg.lexical_k)),
            self.dense(scope, query, max(k, cfg.dense_k)))
        if cfg.fusion == "convex":
            return convex_fusion(lexical, dense, lexical_weight=cfg.lexical_weight,
                                 dense_weight=cfg.dense_weight,
                                 normalisation=cfg.normalisation, limit=k)
        weights = ((cfg.lexical_weight, cfg.dense_weight) if cfg.fusion == "weighted_rrf"
                   else (1.0, 1.0))
        return reciprocal_rank_fusion([lexical, dense], k=cfg.rrf_k, weights=weights, limit=k)
