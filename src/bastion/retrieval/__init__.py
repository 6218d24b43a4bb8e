"""Retrieval: the document index (BM25 + vectors in SQLite), the embedded embedder, scoped
lexical / dense / hybrid search and reciprocal rank fusion.

Every search takes an ``AccessScope``; tenant, collections and access list are applied inside
the search, before ranking.
"""

from bastion.retrieval.embedder import MiniLMEmbedder, passage_text
from bastion.retrieval.fusion import reciprocal_rank_fusion, weighted_rrf
from bastion.retrieval.index import DocumentIndex, IndexModelMismatch, chunk_id
from bastion.retrieval.search import Retriever

__all__ = [
    "DocumentIndex",
    "IndexModelMismatch",
    "MiniLMEmbedder",
    "Retriever",
    "chunk_id",
    "passage_text",
    "reciprocal_rank_fusion",
    "weighted_rrf",
]
