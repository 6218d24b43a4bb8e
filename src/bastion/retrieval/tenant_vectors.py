"""One tenant's chunk vectors as a matrix in memory, and exact top-k under an access scope.

Why brute force: at the sizes one SQLite file holds (tens of thousands of chunks per tenant) a
float32 matrix-vector product is about a millisecond and exact, where an ANN index adds a
dependency, an approximation and its own invalidation problem. Why a mask: the scope (tenant,
collections, access list) must decide which chunks are *candidates*; chunks the caller may not
see get no score at all, so they can never push a visible chunk out of the top k.

The matrix is rebuilt from SQLite when the tenant's generation (a counter every write bumps in
the same transaction) differs from the one it was built at, which is how one process sees
another's ingest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from bastion.domain.retrieval import AccessScope


@dataclass(frozen=True, slots=True)
class TenantVectors:
    generation: int
    #: The chunks' SQLite row ids, one per matrix row.
    ids: np.ndarray
    #: ``(n, dim)`` float32 unit vectors.
    matrix: np.ndarray
    #: Per chunk, the index of its document in ``public``.
    doc_of: np.ndarray
    #: Per chunk, the index of its collection in ``collections``.
    collection_of: np.ndarray
    collections: dict[str, int]
    #: Per document: visible to every caller of the tenant (no access list).
    public: np.ndarray
    #: Per principal, the indices of the documents whose access list names it.
    docs_by_principal: dict[str, np.ndarray]

    @classmethod
    def build(cls, generation: int, dim: int,
              chunks: Iterable[tuple[int, str, str, bytes]],
              documents: Iterable[tuple[str, str, bool]],
              grants: Iterable[tuple[str, str, str]]) -> TenantVectors:
        """From rows ``(id, collection, doc_id, vector)``, ``(collection, doc_id, public)`` and
        ``(collection, doc_id, principal)``."""
        doc_index: dict[tuple[str, str], int] = {}
        public: list[bool] = []
        for collection, doc_id, is_public in documents:
            doc_index[(collection, doc_id)] = len(public)
            public.append(bool(is_public))
        by_principal: dict[str, list[int]] = {}
        for collection, doc_id, principal in grants:
            if (collection, doc_id) in doc_index:
                by_principal.setdefault(principal, []).append(doc_index[(collection, doc_id)])
        collections: dict[str, int] = {}
        ids: list[int] = []
        doc_of: list[int] = []
        collection_of: list[int] = []
        blobs: list[bytes] = []
        for row_id, collection, doc_id, vector in chunks:
            ids.append(row_id)
            doc_of.append(doc_index[(collection, doc_id)])
            collection_of.append(collections.setdefault(collection, len(collections)))
            blobs.append(vector)
        matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
        return cls(generation=generation, ids=np.array(ids, dtype=np.int64), matrix=matrix,
                   doc_of=np.array(doc_of, dtype=np.int64),
                   collection_of=np.array(collection_of, dtype=np.int64),
                   collections=collections, public=np.array(public, dtype=bool),
                   docs_by_principal={p: np.array(d, dtype=np.int64)
                                      for p, d in by_principal.items()})

    def visible(self, scope: AccessScope) -> np.ndarray:
        """A boolean mask over the chunks: collection in scope AND (public OR granted)."""
        docs = self.public.copy()
        for principal in set(scope.principals):
            granted = self.docs_by_principal.get(principal)
            if granted is not None:
                docs[granted] = True
        mask = docs[self.doc_of]
        if scope.collections:
            codes = [self.collections[c] for c in set(scope.collections) if c in self.collections]
            mask &= np.isin(self.collection_of, np.array(codes, dtype=np.int64))
        return mask

    def top_k(self, scope: AccessScope, vector: np.ndarray,
              k: int) -> list[tuple[int, float]]:
        """The ``k`` visible chunks most similar to ``vector``: ``(row id, cosine)``, best first
        (ties by row id, so the order is deterministic)."""
        if k <= 0 or not len(self.ids):
            return []
        candidates = np.flatnonzero(self.visible(scope))
        if not len(candidates):
            return []
        # The whole product and then the mask: cheaper than copying the visible rows out.
        scores = (self.matrix @ vector)[candidates]
        if len(candidates) > k:
            best = np.argpartition(-scores, k - 1)[:k]
            candidates, scores = candidates[best], scores[best]
        order = np.lexsort((self.ids[candidates], -scores))
        return [(int(self.ids[candidates[i]]), float(scores[i])) for i in order]
