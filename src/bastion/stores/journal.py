"""Where the request journal lives: each finished request's metadata, newest kept, oldest
dropped.

An entry is a few columns the dashboard filters and aggregates on, plus the request's
``request.completed`` event as one JSON line (the same bytes the log gets: metadata only,
masked). The memory store is a ring of the last N entries; the SQLite store keeps the last
``keep`` entries in the state file, so every worker of ``serve --workers N`` writes to it and
``bastion trace`` and ``/ui`` read all of them. Like the ledger's store, one worker thread
owns the SQLite connection; entries are stored a batch per row (see ``SqliteJournalStore``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson
import zstandard

from bastion.stores.sqlite_setup import prepare_wal

T = TypeVar("T")


class JournalEntry(NamedTuple):
    request_id: str
    #: Wall-clock epoch seconds when the request started.
    ts: float
    tenant: str
    route: str
    #: ``ok`` or the error code the caller saw.
    outcome: str
    status: int
    latency_ms: float
    #: Time to the first streamed token, for streams.
    ttft_ms: float | None
    fallback: bool
    #: The cache's verdict (hit, miss, stale, bypass) or None when not cacheable.
    cache: str | None
    cost_usd: float
    #: The ``request.completed`` event, one JSON object.
    event: bytes


#: Columns the dashboard's summary needs, in this order.
SUMMARY_COLUMNS = ("ts", "tenant", "outcome", "latency_ms", "ttft_ms", "fallback", "cache",
                   "cost_usd")
SummaryRow = tuple[float, str, str, float, float | None, bool, str | None, float]


class JournalStore(Protocol):
    async def write_many(self, entries: Sequence[JournalEntry]) -> None: ...

    async def get(self, request_id: str) -> JournalEntry | None:
        """The newest entry of ``request_id`` (a client may reuse an id)."""

    async def recent(self, limit: int, *, tenant: str | None = None,
                     outcome: str | None = None, errors_only: bool = False,
                     before: float | None = None) -> list[JournalEntry]:
        """Newest first, at most ``limit``; ``before`` pages back (entries with ts < it)."""

    async def since(self, ts: float, limit: int) -> list[SummaryRow]:
        """``SUMMARY_COLUMNS`` of the entries that started at or after ``ts``, newest first."""

    async def aclose(self) -> None: ...


def _matches(entry: JournalEntry, tenant: str | None, outcome: str | None, errors_only: bool,
             before: float | None) -> bool:
    return ((tenant is None or entry.tenant == tenant)
            and (outcome is None or entry.outcome == outcome)
            and (not errors_only or entry.outcome != "ok")
            and (before is None or entry.ts < before))


class MemoryJournalStore:
    """The last ``keep`` entries of this process."""

    def __init__(self, keep: int) -> None:
        self.entries: deque[JournalEntry] = deque(maxlen=keep)

    async def write_many(self, entries: Sequence[JournalEntry]) -> None:
        self.entries.extend(entries)

    async def get(self, request_id: str) -> JournalEntry | None:
        for entry in reversed(self.entries):
            if entry.request_id == request_id:
                return entry
        return None

    async def recent(self, limit: int, *, tenant: str | None = None,
                     outcome: str | None = None, errors_only: bool = False,
                     before: float | None = None) -> list[JournalEntry]:
        found: list[JournalEntry] = []
        for entry in reversed(self.entries):
            if _matches(entry, tenant, outcome, errors_only, before):
                found.append(entry)
                if len(found) >= limit:
                    break
        return sorted(found, key=lambda e: e.ts, reverse=True)

    async def since(self, ts: float, limit: int) -> list[SummaryRow]:
        rows: list[SummaryRow] = []
        for e in reversed(self.entries):
            if e.ts >= ts:
                rows.append((e.ts, e.tenant, e.outcome, e.latency_ms, e.ttft_ms, e.fallback,
                             e.cache, e.cost_usd))
                if len(rows) >= limit:
                    break
        return rows

    async def aclose(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_batches (id INTEGER PRIMARY KEY, first_ts REAL NOT NULL,
    last_ts REAL NOT NULL, entries INTEGER NOT NULL, ids BLOB NOT NULL, events BLOB NOT NULL,
    columns BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS journal_batches_last_ts ON journal_batches(last_ts);
"""
#: The columns of a batch, stored as one JSON object of equal-length arrays.
_COLUMN_NAMES = JournalEntry._fields[:-1]
#: Trim to ``keep`` entries after every this many batches written by this process.
_TRIM_EVERY = 64
#: Batches a read looks at, at most (newest first): bounds a query's cost.
MAX_SCAN_BATCHES = 5_000


#: Every zstd frame starts with these bytes; batches written before zstd are zlib streams.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _compressor() -> zstandard.ZstdCompressor:
    """zstd at level 1 for a batch: on 256 request events (183 KB) 0.71 µs per request and
    8.2 KB, against zlib level 1's 2.80 µs and 12.9 KB (the journal's compression was ~2.3%
    of bastion's instructions per chat completion with zlib)."""
    return zstandard.ZstdCompressor(level=1)


def _decompress(blob: bytes) -> bytes:
    if blob[:4] == _ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().decompress(blob)  # type: ignore[no-any-return]
    return zlib.decompress(blob)


class _Batch:
    """One stored batch: its columns decoded; its events decompressed only when asked for."""

    __slots__ = ("_compressed", "_lines", "columns")

    def __init__(self, events: bytes, columns: bytes) -> None:
        self._compressed = events
        self._lines: list[bytes] | None = None
        self.columns: dict[str, list[Any]] = orjson.loads(_decompress(columns))

    def __len__(self) -> int:
        return len(self.columns["ts"])

    def entry(self, i: int) -> JournalEntry:
        if self._lines is None:
            self._lines = _decompress(self._compressed).split(b"\n")
        c = self.columns
        return JournalEntry(*(c[name][i] for name in _COLUMN_NAMES), self._lines[i])


def _pack(entries: Sequence[JournalEntry]) -> tuple[float, float, int, bytes, bytes, bytes]:
    """The parts of one stored batch: its time span, size, request ids (newline-separated,
    searched without decompressing anything), events and columns (compressed in the store's
    thread, where zstd releases the GIL)."""
    columns = list(zip(*entries, strict=True))
    packed = orjson.dumps(dict(zip(_COLUMN_NAMES, columns, strict=False)))
    timestamps = columns[1]
    return (min(timestamps), max(timestamps), len(entries), "\n".join(columns[0]).encode(),
            b"\n".join(columns[-1]), packed)


def _drop_outdated_layout(db: sqlite3.Connection) -> None:
    """A state file written before batches kept their ids apart (and compressed) holds a
    table this code cannot read: the journal is a diagnostic record, so it starts afresh
    rather than failing every write."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(journal_batches)")}
    if columns and "ids" not in columns:
        db.execute("DROP TABLE IF EXISTS journal_batches")


class SqliteJournalStore:
    """The journal in the SQLite state file, one row per *batch* of entries.

    A row per request would cost more than the rest of observability together: with its
    indexes, an insert into a table of 200,000 requests took 11 µs of CPU per request in
    isolation (4.5 µs without the request-id index; ``/tmp`` microbenchmark), and under the
    gateway's load the journal's writer thread took ~10% of a core at 4,000 requests/s —
    +51 µs of CPU per request in ``bench/run.py`` (journal on against off, same run). So each
    flush writes one row: the events as newline-separated JSON, and the columns the dashboard
    reads as one JSON object of arrays (transposed with ``zip``, encoded by orjson: both C
    speed), both zstd-compressed (older batches: zlib), beside the batch's request ids, uncompressed. A lookup by
    request id scans the newest batches' ids instead of an index: rare reads pay, the request
    path does not.
    """

    def __init__(self, path: str, keep: int) -> None:
        self.path = path
        self.keep = keep
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-journal")
        self._db: sqlite3.Connection | None = None
        self._since_trim = 0
        self._closed = False
        #: Used only on the worker thread (a compressor is not safe across threads).
        self._zstd = _compressor()

    # -- in the worker thread, the only one that touches the connection

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            try:
                _drop_outdated_layout(db)
                prepare_wal(db, _SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _insert(self, parts: tuple[float, float, int, bytes, bytes, bytes]) -> None:
        first, last, n, ids, events, columns = parts
        zstd = self._zstd
        row = (first, last, n, ids, zstd.compress(events), zstd.compress(columns))
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO journal_batches (first_ts, last_ts, entries, ids, events, "
                       "columns) VALUES (?, ?, ?, ?, ?, ?)", row)
            self._since_trim += 1
            if self._since_trim >= _TRIM_EVERY:
                self._since_trim = 0
                self._trim(db)

    def _trim(self, db: sqlite3.Connection) -> None:
        """Delete the oldest batches beyond ``keep`` entries (a whole batch at a time): every
        batch older than the newest one at which the running total passes ``keep``. One
        statement, not a Python loop over the rows: the sqlite3 module gives up the GIL for
        every row it steps to, and next to a busy event loop each costs a wait of up to the
        switch interval."""
        db.execute(
            "DELETE FROM journal_batches WHERE id < (SELECT id FROM (SELECT id, SUM(entries) "
            "OVER (ORDER BY id DESC) AS total FROM journal_batches) WHERE total > ? "
            "ORDER BY id DESC LIMIT 1)", (self.keep,))

    def _batches(self, newer_than: float | None = None) -> Iterator[_Batch]:
        sql = "SELECT events, columns FROM journal_batches"
        args: tuple[Any, ...] = ()
        if newer_than is not None:
            sql += " WHERE last_ts >= ?"
            args = (newer_than,)
        sql += " ORDER BY last_ts DESC LIMIT ?"
        for events, columns in self._conn().execute(sql, (*args, MAX_SCAN_BATCHES)):
            yield _Batch(events, columns)

    def _get(self, request_id: str) -> JournalEntry | None:
        needle = request_id.encode()
        best: JournalEntry | None = None
        for ids, events, columns in self._conn().execute(
                "SELECT ids, events, columns FROM journal_batches ORDER BY last_ts DESC "
                "LIMIT ?", (MAX_SCAN_BATCHES,)):
            if needle not in ids.split(b"\n"):
                continue
            batch = _Batch(events, columns)
            for i in range(len(batch)):
                if batch.columns["request_id"][i] == request_id:
                    found = batch.entry(i)
                    if best is None or found.ts > best.ts:
                        best = found
            if best is not None:
                return best
        return None

    def _recent(self, limit: int, tenant: str | None, outcome: str | None,
                errors_only: bool, before: float | None) -> list[JournalEntry]:
        found: list[JournalEntry] = []
        for batch in self._batches():
            c = batch.columns
            oldest_kept = min(e.ts for e in found) if len(found) >= limit else None
            if oldest_kept is not None and max(c["ts"]) < oldest_kept:
                break  # batches come newest first: nothing older can make the cut
            for i in range(len(batch)):
                if ((tenant is None or c["tenant"][i] == tenant)
                        and (outcome is None or c["outcome"][i] == outcome)
                        and (not errors_only or c["outcome"][i] != "ok")
                        and (before is None or c["ts"][i] < before)):
                    found.append(batch.entry(i))
            if len(found) > 4 * limit:
                found.sort(key=lambda e: e.ts, reverse=True)
                del found[limit:]
        found.sort(key=lambda e: e.ts, reverse=True)
        return found[:limit]

    def _since(self, ts: float, limit: int) -> list[SummaryRow]:
        rows: list[SummaryRow] = []
        for batch in self._batches(newer_than=ts):
            c = batch.columns
            for row in zip(c["ts"], c["tenant"], c["outcome"], c["latency_ms"], c["ttft_ms"],
                           c["fallback"], c["cache"], c["cost_usd"], strict=True):
                if row[0] >= ts:
                    rows.append(row)
            if len(rows) >= limit:
                break
        rows.sort(key=lambda r: r[0], reverse=True)
        return rows[:limit]

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- the protocol

    async def write_many(self, entries: Sequence[JournalEntry]) -> None:
        if entries:
            await self._call(self._insert, _pack(entries))

    async def get(self, request_id: str) -> JournalEntry | None:
        return await self._call(self._get, request_id)

    async def recent(self, limit: int, *, tenant: str | None = None,
                     outcome: str | None = None, errors_only: bool = False,
                     before: float | None = None) -> list[JournalEntry]:
        return await self._call(self._recent, limit, tenant, outcome, errors_only, before)

    async def since(self, ts: float, limit: int) -> list[SummaryRow]:
        return await self._call(self._since, ts, limit)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._call(self._close)
            finally:
                self._executor.shutdown(wait=True)
