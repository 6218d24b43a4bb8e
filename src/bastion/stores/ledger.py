"""Where usage rows live, and the one query the ledger needs: sums grouped by a few columns.

Money is stored as integer micro-dollars (``cost_micros``) and summed as integers, so a
report's total is exact and the memory and SQLite stores agree to the cent and beyond.
``day`` is the UTC calendar date of ``ts``, so a day means the same thing on every replica.
Time filters are ``since <= ts < until``.

The SQLite store follows ``stores/identity.py``: one dedicated worker thread owns the
connection (sqlite3 blocks; one thread keeps it off the event loop with no pool and no
cross-thread sharing); WAL lets the CLI read while servers write; ``busy_timeout`` makes a
writer wait for another process's lock instead of failing; each batch is one ``BEGIN
IMMEDIATE`` transaction, so a batch is all-or-nothing and a retried batch is never half
written.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from bastion.domain.usage import UsageRow
from bastion.services.pricing import from_micros, to_micros
from bastion.stores.sqlite_setup import prepare_wal

T = TypeVar("T")

#: The columns a report may be grouped by.
GROUPS = ("tenant", "route", "day", "target")
_BUSY_TIMEOUT_MS = 10_000


class LedgerStore(Protocol):
    async def write_many(self, rows: Sequence[UsageRow]) -> None:
        """Append ``rows`` all together or not at all."""

    async def aggregate(self, group_by: Sequence[str], since: float | None,
                        until: float | None, tenant: str | None) -> list[dict[str, Any]]:
        """One dict per group, ordered by the group columns (None first): the group columns,
        then ``requests``, ``errors`` (outcome not ``ok``), ``prompt_tokens``,
        ``completion_tokens``, ``cached_tokens``, ``cost_usd`` and ``avg_latency_ms``. With
        an empty ``group_by``, one row of totals (none when nothing matches)."""

    async def count(self) -> int: ...

    async def aclose(self) -> None: ...


def check_groups(group_by: Sequence[str]) -> list[str]:
    """``group_by`` without repeats; ``ValueError`` naming an unknown column."""
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)} (known: {', '.join(GROUPS)})")
    return list(dict.fromkeys(group_by))


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _report(keys: Sequence[str], values: Sequence[Any], requests: int, errors: int,
            prompt: int, completion: int, cached: int, micros: int,
            latency_sum: float) -> dict[str, Any]:
    out: dict[str, Any] = dict(zip(keys, values, strict=True))
    out.update(requests=requests, errors=errors, prompt_tokens=prompt,
               completion_tokens=completion, cached_tokens=cached,
               cost_usd=from_micros(micros),
               avg_latency_ms=round(latency_sum / requests, 3) if requests else 0.0)
    return out


def _null_first(values: tuple[Any, ...]) -> tuple[tuple[bool, str], ...]:
    """Sort key matching SQLite's ORDER BY: NULL before any text."""
    return tuple((v is not None, "" if v is None else str(v)) for v in values)


#: Rows the in-memory ledger keeps (the newest): ~30 MB. A process without a state file that
#: serves for days must not grow without bound; a deployment that needs every row sets
#: ``state.sqlite_path``.
MEMORY_LEDGER_ROWS = 100_000


class MemoryLedgerStore:
    """For tests and the in-memory state mode: lost on restart, one process only, and only
    the newest ``keep`` rows (``evicted`` counts the rest)."""

    def __init__(self, keep: int = MEMORY_LEDGER_ROWS) -> None:
        self.rows: deque[UsageRow] = deque(maxlen=keep)
        self.evicted = 0

    async def write_many(self, rows: Sequence[UsageRow]) -> None:
        overflow = len(self.rows) + len(rows) - (self.rows.maxlen or 0)
        if overflow > 0:
            self.evicted += min(overflow, len(self.rows) + len(rows))
        self.rows.extend(rows)

    async def aggregate(self, group_by: Sequence[str], since: float | None,
                        until: float | None, tenant: str | None) -> list[dict[str, Any]]:
        groups = check_groups(group_by)
        sums: dict[tuple[Any, ...], list[Any]] = {}
        for row in self.rows:
            if ((since is not None and row.ts < since) or (until is not None and row.ts >= until)
                    or (tenant is not None and row.tenant != tenant)):
                continue
            key = tuple(utc_day(row.ts) if g == "day" else getattr(row, g) for g in groups)
            acc = sums.setdefault(key, [0, 0, 0, 0, 0, 0, 0.0])
            for i, value in enumerate((1, int(not row.ok), row.prompt_tokens,
                                       row.completion_tokens, row.cached_tokens,
                                       to_micros(row.cost_usd), row.latency_ms)):
                acc[i] += value
        return [_report(groups, key, *sums[key]) for key in sorted(sums, key=_null_first)]

    async def count(self) -> int:
        return len(self.rows)

    async def aclose(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (request_id TEXT NOT NULL, ts REAL NOT NULL,
    tenant TEXT NOT NULL, key_id TEXT, route TEXT NOT NULL, alias TEXT NOT NULL, target TEXT,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, cost_micros INTEGER NOT NULL, latency_ms REAL NOT NULL,
    outcome TEXT NOT NULL, prompt_version TEXT, cache TEXT);
CREATE INDEX IF NOT EXISTS usage_tenant_ts ON usage(tenant, ts);
CREATE INDEX IF NOT EXISTS usage_ts ON usage(ts);
"""
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: Rows per INSERT statement. One statement for many rows rather than ``executemany``: the
#: sqlite3 module lets go of the GIL for every statement step, and a thread that gives up
#: the GIL waits up to the switch interval (5 ms) to get it back from a busy event loop, so
#: ``executemany`` took 80-140 ms per 256 rows next to a saturated loop, and the writer fell
#: behind until rows were dropped; one statement of 256 rows took 11-22 ms, at 1.5 µs of
#: CPU per row against 1.9 (the ``usage`` table on this machine, a busy thread beside it).
_ROWS_PER_INSERT = 256
_INSERT_MANY = "INSERT INTO usage VALUES " + ", ".join([_ROW] * _ROWS_PER_INSERT)


def _insert_sql(rows: int) -> str:
    return _INSERT_MANY if rows == _ROWS_PER_INSERT else (
        "INSERT INTO usage VALUES " + ", ".join([_ROW] * rows))
#: Trusted SQL per group name; user input only ever selects among these.
_GROUP_SQL = {"tenant": "tenant", "route": "route", "target": "target",
              "day": "strftime('%Y-%m-%d', ts, 'unixepoch')"}


def _values(row: UsageRow) -> tuple[Any, ...]:
    return (row.request_id, row.ts, row.tenant, row.key_id, row.route, row.alias, row.target,
            row.prompt_tokens, row.completion_tokens, row.cached_tokens,
            to_micros(row.cost_usd), row.latency_ms, row.outcome, row.prompt_version, row.cache)


class SqliteLedgerStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-ledger")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    # -- in the worker thread, the only one that touches the connection

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000,
                                 isolation_level=None)
            try:
                prepare_wal(db, _SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _insert(self, values: list[tuple[Any, ...]]) -> None:
        db = self._conn()
        with db:  # commits, or rolls the whole batch back
            db.execute("BEGIN IMMEDIATE")
            for start in range(0, len(values), _ROWS_PER_INSERT):
                chunk = values[start:start + _ROWS_PER_INSERT]
                db.execute(_insert_sql(len(chunk)), [v for row in chunk for v in row])

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn().execute(sql, tuple(args)).fetchall()

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- the protocol

    async def write_many(self, rows: Sequence[UsageRow]) -> None:
        if rows:
            await self._call(self._insert, [_values(r) for r in rows])

    async def aggregate(self, group_by: Sequence[str], since: float | None,
                        until: float | None, tenant: str | None) -> list[dict[str, Any]]:
        groups = check_groups(group_by)
        where, args = [], []
        for clause, value in (("tenant = ?", tenant), ("ts >= ?", since), ("ts < ?", until)):
            if value is not None:
                where.append(clause)
                args.append(value)
        columns = [f"{_GROUP_SQL[g]} AS g{i}" for i, g in enumerate(groups)]
        # SUM over integers stays an exact integer (TOTAL would be a float).
        sql = ("SELECT " + ", ".join([*columns, "COUNT(*)", "SUM(outcome != 'ok')",
                                      "SUM(prompt_tokens)", "SUM(completion_tokens)",
                                      "SUM(cached_tokens)", "SUM(cost_micros)",
                                      "TOTAL(latency_ms)"])
               + " FROM usage" + (" WHERE " + " AND ".join(where) if where else ""))
        if groups:
            order = ", ".join(f"g{i}" for i in range(len(groups)))
            sql += f" GROUP BY {order} ORDER BY {order}"
        result = []
        for row in await self._call(self._read, sql, args):
            values, sums = row[:len(groups)], row[len(groups):]
            if sums[0]:
                result.append(_report(groups, values, sums[0], *(int(s) for s in sums[1:6]),
                                      sums[6]))
        return result

    async def count(self) -> int:
        rows = await self._call(self._read, "SELECT COUNT(*) FROM usage")
        return int(rows[0][0])

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._call(self._close)
            finally:
                self._executor.shutdown(wait=True)
