"""The document index: documents, chunks, BM25 (SQLite FTS5) and vectors in one SQLite file.

Why one SQLite file: ingestion must be atomic across the text, the lexical index and the vectors
(a reader never sees a document's old chunks beside its new ones, nor chunks without vectors),
and the embedded default must need nothing installed. ``replace_document`` is one
``BEGIN IMMEDIATE`` transaction; WAL lets other processes read while it runs.

The house pattern of ``bastion.stores.sqlite`` applies: one connection, owned by one dedicated
worker thread, and each operation (a whole transaction) is one hop to that thread. A search is
one read transaction, so its rows come from a single snapshot.

Access control is applied *inside* both searches (SQL ``WHERE`` for BM25, a numpy mask for the
vectors), before ranking: a chunk the scope may not see is never a candidate. Note that FTS5's
BM25 statistics (document frequencies, average length) are those of the whole file, all tenants
together; they shape scores, never which chunks are returned.

Chunk ids are ``"{collection}/{doc_id}#{position}"`` with collection and doc id percent-encoded
(``/``, ``#``, ``%`` and anything outside ``[A-Za-z0-9_.~-]``), so they are readable, stable
across re-ingestion of the same document, and unique within a tenant.

The index records the embedding model and dimension it was created for and refuses, with
``IndexModelMismatch``, to open or store vectors of another: mixing two models' vectors in one
cosine ranking would be silently wrong.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np
import orjson

from bastion.domain.retrieval import AccessScope, ChunkDraft, ChunkHit, DocumentInfo
from bastion.retrieval.fts_query import fts_match
from bastion.retrieval.index_schema import IndexModelMismatch, check_model, open_index
from bastion.retrieval.tenant_vectors import TenantVectors

T = TypeVar("T")

#: BM25 weight of the title-and-headings column against the body's 1.0 (FTS5 sums the weighted
#: term frequencies, so 1.0 is plain concatenation). SciFact train, BM25 alone: 0.7015 at 1.0,
#: 0.7052 at 2.0, 0.7072 at 2.5, 0.7073 at 3.0; 2.0 takes most of the gain and, fused, is
#: within 0.001 of 3.0.
TITLE_WEIGHT = 2.0
#: Tenants whose vector matrix stays cached in memory (least recently used evicted).
_CACHED_TENANTS = 64

# A chunk is visible to a scope: tenant, collection (all when the JSON list is empty) and
# access list (public, or a principal in common). Parameters: tenant, collections, collections,
# principals.
_VISIBLE = """c.tenant = ?
    AND (json_array_length(?) = 0 OR c.collection IN (SELECT value FROM json_each(?)))
    AND (c.public OR EXISTS (SELECT 1 FROM rag_access a WHERE a.tenant = c.tenant
         AND a.collection = c.collection AND a.doc_id = c.doc_id
         AND a.principal IN (SELECT value FROM json_each(?))))"""

_HIT_COLUMNS = """c.id, c.chunk_id, c.doc_id, c.collection, c.title, c.text, c.position,
    c.headings, d.metadata"""

_DOC_COLUMNS = """tenant, collection, doc_id, title, content_hash, status, reason, metadata,
    access, chunk_count, media_type, embedding_model, updated_at"""


def chunk_id(collection: str, doc_id: str, position: int) -> str:
    """The stable id of a chunk, unique within a tenant (see the module docstring)."""
    return f"{quote(collection, safe='')}/{quote(doc_id, safe='')}#{position}"


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _scope_params(scope: AccessScope) -> tuple[str, str, str, str]:
    collections = _json(list(scope.collections))
    return scope.tenant, collections, collections, _json(list(scope.principals))


def _document(row: Sequence[Any]) -> DocumentInfo:
    return DocumentInfo(
        tenant=row[0], collection=row[1], doc_id=row[2], title=row[3], content_hash=row[4],
        status=row[5], reason=row[6], metadata=orjson.loads(row[7]),
        access=tuple(orjson.loads(row[8])), chunk_count=row[9], media_type=row[10],
        embedding_model=row[11], updated_at=row[12])


class DocumentIndex:
    """Documents and their chunks for every tenant, searchable by BM25 and by cosine."""

    def __init__(self, path: str | None, *, embedding_model: str, dim: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.embedding_model = embedding_model
        self.dim = dim
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-index")
        self._db: sqlite3.Connection | None = None
        self._vectors: OrderedDict[str, TenantVectors] = OrderedDict()
        self._closed = False

    # -- lifecycle

    async def start(self) -> None:
        """Open (or create) the index now, so a bad path or a model mismatch fails at start-up."""
        await self._call(self._conn)

    async def aclose(self) -> None:
        """Close the connection and stop the worker thread; later calls raise RuntimeError."""
        if not self._closed:
            self._closed = True
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
            finally:
                self._executor.shutdown(wait=True)

    # -- in the worker thread, the only one that touches the connection

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = open_index(self.path, self.embedding_model, self.dim)
        return self._db

    def _check_model(self, model: str | None, dim: int) -> None:
        check_model(self.path or "(memory)", (model, dim), (self.embedding_model, self.dim))

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._vectors.clear()

    def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = op(db)
            db.execute("COMMIT")
            return result
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """``op`` in one read transaction: every SELECT in it sees the same snapshot."""
        db = self._conn()
        db.execute("BEGIN")
        try:
            return op(db)
        finally:
            db.execute("COMMIT")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("the document index is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @staticmethod
    def _bump(db: sqlite3.Connection, tenant: str) -> None:
        db.execute("INSERT INTO rag_generations VALUES (?, 1) ON CONFLICT(tenant) "
                   "DO UPDATE SET value = value + 1", (tenant,))

    @staticmethod
    def _delete_chunks(db: sqlite3.Connection, tenant: str, collection: str,
                       doc_id: str) -> None:
        key = (tenant, collection, doc_id)
        for table in ("rag_chunks", "rag_access"):
            db.execute(f"DELETE FROM {table} WHERE tenant = ? AND collection = ? "
                       "AND doc_id = ?", key)

    # -- writes

    async def replace_document(self, info: DocumentInfo, chunks: Sequence[ChunkDraft],
                               vectors: np.ndarray, source: bytes | None = None) -> None:
        """Make ``chunks`` (with their ``vectors``, row for row) the document's only chunks.

        One transaction: a reader sees either the old chunks or the new ones, never both. The
        stored row gets status ``indexed``, the chunk count, this index's embedding model and
        the time. ``source`` (the original bytes) is kept for re-indexing; ``None`` keeps the
        stored source when ``content_hash`` is unchanged and clears it otherwise, so a kept
        source always matches the indexed text."""
        if info.embedding_model not in (None, self.embedding_model):
            self._check_model(info.embedding_model, self.dim)
        matrix = np.asarray(vectors, dtype=np.float32)
        if not chunks and matrix.size == 0:
            matrix = matrix.reshape(0, self.dim)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise IndexModelMismatch(f"vectors of shape {matrix.shape}: this index holds "
                                     f"dimension {self.dim} ({self.embedding_model!r})")
        if matrix.shape[0] != len(chunks):
            raise ValueError(f"{len(chunks)} chunks but {matrix.shape[0]} vectors")
        if not np.isfinite(matrix).all():
            raise ValueError("vectors must be finite")
        positions = [c.position for c in chunks]
        if len(set(positions)) != len(positions):
            raise ValueError("chunk positions must be distinct")
        access = sorted(set(info.access))
        public = not access
        rows = [(info.tenant, info.collection, info.doc_id, c.position,
                 chunk_id(info.collection, info.doc_id, c.position), info.title,
                 _json(list(c.headings)), " ".join((info.title, *c.headings)).strip(),
                 c.text, public, matrix[i].tobytes()) for i, c in enumerate(chunks)]
        key = (info.tenant, info.collection, info.doc_id)

        def op(db: sqlite3.Connection) -> None:
            old = db.execute("SELECT content_hash, source FROM rag_documents WHERE tenant = ? AND "
                             "collection = ? AND doc_id = ?", key).fetchone()
            kept = source
            if kept is None and old is not None and old[0] == info.content_hash:
                kept = old[1]
            self._delete_chunks(db, *key)
            db.execute(f"INSERT OR REPLACE INTO rag_documents ({_DOC_COLUMNS}, source) "
                       "VALUES (?, ?, ?, ?, ?, 'indexed', NULL, ?, ?, ?, ?, ?, ?, ?)",
                       (*key, info.title, info.content_hash, _json(info.metadata),
                        _json(access), len(chunks), info.media_type,
                        self.embedding_model, self._clock(), kept))
            db.executemany("INSERT INTO rag_access VALUES (?, ?, ?, ?)",
                           [(*key, principal) for principal in access])
            db.executemany("INSERT INTO rag_chunks (tenant, collection, doc_id, position, "
                           "chunk_id, title, headings, context, text, public, vector) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._bump(db, info.tenant)
        await self._call(self._write, op)

    async def mark_failed(self, info: DocumentInfo) -> None:
        """Record that ingesting the document failed, with ``info.reason``.

        A document indexed before keeps its chunks, access list, title and content hash: they
        stay searchable, as they were, until a successful ingest replaces them or the document
        is deleted (so a failed re-ingest never makes a working document disappear; to revoke
        access at once, delete it). A document never indexed gets a row with no chunks."""
        key = (info.tenant, info.collection, info.doc_id)

        def op(db: sqlite3.Connection) -> None:
            now = self._clock()
            updated = db.execute("UPDATE rag_documents SET status = 'failed', reason = ?, "
                                 "updated_at = ? WHERE tenant = ? AND collection = ? "
                                 "AND doc_id = ?", (info.reason, now, *key)).rowcount
            if not updated:
                db.execute(f"INSERT INTO rag_documents ({_DOC_COLUMNS}, source) "
                           "VALUES (?, ?, ?, ?, ?, 'failed', ?, ?, ?, 0, ?, NULL, ?, NULL)",
                           (*key, info.title, info.content_hash, info.reason,
                            _json(info.metadata), _json(sorted(set(info.access))),
                            info.media_type, now))
        await self._call(self._write, op)

    async def delete_document(self, tenant: str, collection: str, doc_id: str) -> bool:
        """Remove the document, its chunks and its source; ``False`` if there was none."""
        key = (tenant, collection, doc_id)

        def op(db: sqlite3.Connection) -> bool:
            gone = db.execute("DELETE FROM rag_documents WHERE tenant = ? AND collection = ? "
                              "AND doc_id = ?", key).rowcount
            self._delete_chunks(db, *key)
            if gone:
                self._bump(db, tenant)
            return bool(gone)
        return await self._call(self._write, op)

    # -- documents

    async def get_document(self, tenant: str, collection: str,
                           doc_id: str) -> DocumentInfo | None:
        def op(db: sqlite3.Connection) -> DocumentInfo | None:
            row = db.execute(f"SELECT {_DOC_COLUMNS} FROM rag_documents WHERE tenant = ? AND "
                             "collection = ? AND doc_id = ?",
                             (tenant, collection, doc_id)).fetchone()
            return None if row is None else _document(row)
        return await self._call(lambda: op(self._conn()))

    async def get_source(self, tenant: str, collection: str, doc_id: str) -> bytes | None:
        def op(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT source FROM rag_documents WHERE tenant = ? AND collection = ? "
                             "AND doc_id = ?", (tenant, collection, doc_id)).fetchone()
            return None if row is None or row[0] is None else bytes(row[0])
        return await self._call(lambda: op(self._conn()))

    async def list_documents(self, tenant: str, collection: str | None = None, *,
                             limit: int = 100,
                             after: tuple[str, str] | str | None = None) -> list[DocumentInfo]:
        """A page of the tenant's documents ordered by ``(collection, doc_id)``.

        ``after`` is the ``(collection, doc_id)`` of the last document of the previous page
        (or, when ``collection`` is given, just its doc id): keyset pagination, stable while
        documents come and go."""
        if isinstance(after, str):
            if collection is None:
                raise ValueError("after as a doc id needs a collection; pass (collection, doc_id)")
            after = (collection, after)
        sql = f"SELECT {_DOC_COLUMNS} FROM rag_documents WHERE tenant = ?"
        params: list[Any] = [tenant]
        if collection is not None:
            sql += " AND collection = ?"
            params.append(collection)
        if after is not None:
            sql += " AND (collection, doc_id) > (?, ?)"
            params.extend(after)
        sql += " ORDER BY collection, doc_id LIMIT ?"
        params.append(max(0, limit))
        return await self._call(
            lambda: [_document(r) for r in self._conn().execute(sql, params).fetchall()])

    # -- search

    def _hits(self, db: sqlite3.Connection, scored: list[tuple[int, float]],
              kind: str) -> list[ChunkHit]:
        if not scored:
            return []
        ids = _json([row_id for row_id, _ in scored])
        rows = {r[0]: r for r in db.execute(
            f"SELECT {_HIT_COLUMNS} FROM rag_chunks c JOIN rag_documents d "
            "ON d.tenant = c.tenant AND d.collection = c.collection AND d.doc_id = c.doc_id "
            "WHERE c.id IN (SELECT value FROM json_each(?))", (ids,))}
        hits = []
        for rank, (row_id, score) in enumerate(scored, start=1):
            r = rows[row_id]
            hits.append(ChunkHit(
                chunk_id=r[1], doc_id=r[2], collection=r[3], title=r[4], text=r[5],
                position=r[6], score=score, rank=rank, headings=tuple(orjson.loads(r[7])),
                metadata=orjson.loads(r[8]),
                lexical_score=score if kind == "lexical" else None,
                dense_score=score if kind == "dense" else None))
        return hits

    async def lexical_search(self, scope: AccessScope, query: str, k: int) -> list[ChunkHit]:
        """BM25 (FTS5) over the chunks ``scope`` may see; score positive, higher is better.

        The query is reduced to its words (see ``fts_query``): any text is safe, and text with
        no searchable word finds nothing."""
        match = fts_match(query)
        if match is None or k <= 0:
            return []
        sql = (f"SELECT c.id, -bm25(rag_chunks_fts, {TITLE_WEIGHT}, 1.0) AS score "
               "FROM rag_chunks_fts JOIN rag_chunks c ON c.id = rag_chunks_fts.rowid "
               f"WHERE rag_chunks_fts MATCH ? AND {_VISIBLE} "
               "ORDER BY score DESC, c.chunk_id LIMIT ?")
        params = (match, *_scope_params(scope), k)

        def op(db: sqlite3.Connection) -> list[ChunkHit]:
            scored = [(r[0], float(r[1])) for r in db.execute(sql, params)]
            return self._hits(db, scored, "lexical")
        return await self._call(self._read, op)

    async def dense_search(self, scope: AccessScope, vector: np.ndarray,
                           k: int) -> list[ChunkHit]:
        """Exact cosine similarity over the vectors of the chunks ``scope`` may see."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise IndexModelMismatch(f"query vector of dimension {query.shape[0]}: this index "
                                     f"holds dimension {self.dim} ({self.embedding_model!r})")
        norm = float(np.linalg.norm(query))
        if k <= 0 or not np.isfinite(norm) or norm == 0.0:
            return []
        query = query / norm

        def op(db: sqlite3.Connection) -> list[ChunkHit]:
            vectors = self._tenant_vectors(db, scope.tenant)
            return self._hits(db, vectors.top_k(scope, query, k), "dense")
        return await self._call(self._read, op)

    def _tenant_vectors(self, db: sqlite3.Connection, tenant: str) -> TenantVectors:
        """The tenant's matrix, rebuilt if any process wrote since it was built."""
        row = db.execute("SELECT value FROM rag_generations WHERE tenant = ?", (tenant,)).fetchone()
        generation = 0 if row is None else row[0]
        cached = self._vectors.get(tenant)
        if cached is not None and cached.generation == generation:
            self._vectors.move_to_end(tenant)
            return cached
        built = TenantVectors.build(
            generation, self.dim,
            db.execute("SELECT id, collection, doc_id, vector FROM rag_chunks WHERE tenant = ? "
                       "ORDER BY id", (tenant,)),
            db.execute("SELECT collection, doc_id, access = '[]' FROM rag_documents "
                       "WHERE tenant = ?", (tenant,)),
            db.execute("SELECT collection, doc_id, principal FROM rag_access "
                       "WHERE tenant = ?", (tenant,)))
        self._vectors[tenant] = built
        self._vectors.move_to_end(tenant)
        while len(self._vectors) > _CACHED_TENANTS:
            self._vectors.popitem(last=False)
        return built
