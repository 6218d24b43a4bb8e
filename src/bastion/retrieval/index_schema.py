"""The document index's tables, and opening a file for it.

Why its own module: what is on disk (tables, the FTS5 tokenizer, the pinned embedding model)
changes far more rarely than the queries over it, and must be read as a whole when it does.

Every table is prefixed ``rag_``: by default the index shares the SQLite file of the durable
state (``state.sqlite_path``) with other stores. ``rag_chunks_fts`` is an external-content
FTS5 table over ``rag_chunks`` kept in step by triggers, so the text is stored once and an
insert or delete of a chunk updates BM25 in the same transaction. ``rag_generations`` holds a
counter per tenant that every write bumps, so a process can tell its cached vectors are stale.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

SCHEMA_VERSION = "1"
#: FTS5 tokenizer: Porter stemming over unicode61 with diacritics folded. On the SciFact train
#: split (BM25 alone, nDCG@10): 0.7015, against 0.6712 without stemming and 0.6999 with
#: ``porter ascii`` (BENCHMARKS.md, "Retrieval on SciFact"). Fixed when a file is created.
FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"
_BUSY_TIMEOUT_MS = 10_000

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS rag_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rag_generations (tenant TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rag_documents (
    tenant TEXT NOT NULL, collection TEXT NOT NULL, doc_id TEXT NOT NULL,
    title TEXT NOT NULL, content_hash TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    metadata TEXT NOT NULL, access TEXT NOT NULL, chunk_count INTEGER NOT NULL,
    media_type TEXT NOT NULL, embedding_model TEXT, updated_at REAL NOT NULL, source BLOB,
    PRIMARY KEY (tenant, collection, doc_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rag_access (
    tenant TEXT NOT NULL, collection TEXT NOT NULL, doc_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    PRIMARY KEY (tenant, collection, doc_id, principal)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rag_chunks (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, collection TEXT NOT NULL,
    doc_id TEXT NOT NULL, position INTEGER NOT NULL, chunk_id TEXT NOT NULL,
    title TEXT NOT NULL, headings TEXT NOT NULL, context TEXT NOT NULL, text TEXT NOT NULL,
    public INTEGER NOT NULL, vector BLOB NOT NULL, UNIQUE (tenant, chunk_id));
CREATE INDEX IF NOT EXISTS rag_chunks_doc ON rag_chunks (tenant, collection, doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS rag_chunks_fts USING fts5(
    context, text, content='rag_chunks', content_rowid='id', tokenize='{FTS_TOKENIZER}');
CREATE TRIGGER IF NOT EXISTS rag_chunks_fts_insert AFTER INSERT ON rag_chunks BEGIN
    INSERT INTO rag_chunks_fts (rowid, context, text) VALUES (new.id, new.context, new.text);
END;
CREATE TRIGGER IF NOT EXISTS rag_chunks_fts_delete AFTER DELETE ON rag_chunks BEGIN
    INSERT INTO rag_chunks_fts (rag_chunks_fts, rowid, context, text)
    VALUES ('delete', old.id, old.context, old.text);
END;
"""


class IndexModelMismatch(ValueError):
    """The index holds vectors of another embedding model or dimension than the one offered."""


def check_model(where: str, stored: tuple[str | None, int], offered: tuple[str, int]) -> None:
    """Refuse vectors of another model: mixing two models in one cosine ranking is silently
    wrong, never an error anyone would see."""
    if stored != offered:
        raise IndexModelMismatch(
            f"document index {where} holds vectors of {stored[0]!r} (dim {stored[1]}), not of "
            f"{offered[0]!r} (dim {offered[1]}): configure the embedder it was built with, or "
            "point retrieval.sqlite_path at a new file and ingest the documents again")


def statements(script: str) -> list[str]:
    """Split a script into statements (a trigger body holds ``;`` too). Not ``executescript``:
    it would commit the transaction the schema is created in."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current)
            current = ""
    return out


def open_index(path: str | None, embedding_model: str, dim: int) -> sqlite3.Connection:
    """Connect (``None``: a private in-memory database), create the tables if needed, and pin
    or check the embedding model. The caller's thread owns the connection."""
    if path is None:
        db = sqlite3.connect(":memory:", isolation_level=None)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # ``timeout`` is SQLite's busy timeout: wait for another process's lock.
        db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        _prepare(db, path, embedding_model, dim)
    except BaseException:
        db.close()
        raise
    return db


def _prepare(db: sqlite3.Connection, path: str | None, model: str, dim: int) -> None:
    if path is not None:
        for attempt in range(200):  # as in stores.sqlite: the switch can race another process
            try:
                db.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 199:
                    raise
                time.sleep(0.05)
        db.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes under WAL
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in statements(SCHEMA):
            db.execute(statement)
        meta = dict(db.execute("SELECT key, value FROM rag_meta").fetchall())
        if not meta:
            db.executemany("INSERT INTO rag_meta VALUES (?, ?)", [
                ("schema_version", SCHEMA_VERSION), ("embedding_model", model),
                ("dim", str(dim)), ("fts_tokenizer", FTS_TOKENIZER)])
        else:
            check_model(path or "(memory)",
                        (meta.get("embedding_model"), int(meta.get("dim", "0"))), (model, dim))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
