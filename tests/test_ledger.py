"""The usage ledger: stores that sum exactly and group the same way, and a writer that never
slows a request, batches, retries a failing store, counts what it drops, and loses nothing on a
clean shutdown, across a restart and across processes sharing one SQLite file."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from bastion.config import LedgerConfig
from bastion.domain.usage import UsageRow
from bastion.services.ledger import UsageLedger
from bastion.stores.ledger import LedgerStore, MemoryLedgerStore, SqliteLedgerStore

DAY1 = 1_735_689_600.0  # 2025-01-01T00:00:00Z
DAY2 = DAY1 + 86_400


def row(n: int = 0, *, ts: float = DAY1 + 60, tenant: str = "acme", route: str = "chat",
        target: str | None = "sim/primary", outcome: str = "ok", cost: float = 0.000123,
        prompt: int = 10, completion: int = 5, latency: float = 100.0) -> UsageRow:
    return UsageRow(request_id=f"req_{n}", ts=ts, tenant=tenant, key_id=None, route=route,
                    alias="fast", target=target, prompt_tokens=prompt,
                    completion_tokens=completion, cached_tokens=0, cost_usd=cost,
                    latency_ms=latency, outcome=outcome)


def dropped_metric(reason: str) -> float:
    return REGISTRY.get_sample_value("bastion_usage_ledger_dropped_total",
                                     {"reason": reason}) or 0.0


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    s: LedgerStore = (MemoryLedgerStore() if request.param == "memory"
                      else SqliteLedgerStore(str(tmp_path / "ledger.db")))
    yield s
    await s.aclose()


SAMPLE = [
    row(1, tenant="acme", route="chat", ts=DAY1 + 10, latency=100),
    row(2, tenant="acme", route="chat", ts=DAY1 + 20, outcome="upstream_timeout", target=None,
        cost=0.0, prompt=0, completion=0, latency=300),
    row(3, tenant="acme", route="embeddings", ts=DAY2 + 5, target="sim/embed"),
    row(4, tenant="beta", route="chat", ts=DAY2 + 30, cost=0.1),
    row(5, tenant="beta", route="chat", ts=DAY2 + 40, cost=0.2),
]


# --------------------------------------------------------------------------- stores


async def test_grouped_by_tenant(store: LedgerStore) -> None:
    await store.write_many(SAMPLE)
    acme, beta = await store.aggregate(["tenant"], None, None, None)
    assert acme == {"tenant": "acme", "requests": 3, "errors": 1, "prompt_tokens": 20,
                    "completion_tokens": 10, "cached_tokens": 0, "cost_usd": 0.000246,
                    "avg_latency_ms": pytest.approx(500 / 3, abs=1e-3)}
    assert beta["requests"] == 2 and beta["cost_usd"] == 0.3  # exact: summed in micros


async def test_grouped_by_route_day_and_target(store: LedgerStore) -> None:
    await store.write_many(SAMPLE)
    by_route = await store.aggregate(["route"], None, None, None)
    assert [(r["route"], r["requests"]) for r in by_route] == [("chat", 4), ("embeddings", 1)]
    by_day = await store.aggregate(["day"], None, None, None)
    assert [(r["day"], r["requests"]) for r in by_day] == [("2025-01-01", 2), ("2025-01-02", 3)]
    by_target = await store.aggregate(["target"], None, None, None)
    # Nothing answered request 2: its target is None, listed first.
    assert [(r["target"], r["requests"]) for r in by_target] == [
        (None, 1), ("sim/embed", 1), ("sim/primary", 3)]


async def test_grouped_by_several_columns_in_order(store: LedgerStore) -> None:
    await store.write_many(SAMPLE)
    rows = await store.aggregate(["tenant", "route", "day"], None, None, None)
    assert [(r["tenant"], r["route"], r["day"], r["requests"]) for r in rows] == [
        ("acme", "chat", "2025-01-01", 2), ("acme", "embeddings", "2025-01-02", 1),
        ("beta", "chat", "2025-01-02", 2)]
    assert list(rows[0])[:3] == ["tenant", "route", "day"]


async def test_no_grouping_gives_one_row_of_totals_or_none(store: LedgerStore) -> None:
    assert await store.aggregate([], None, None, None) == []
    await store.write_many(SAMPLE)
    (total,) = await store.aggregate([], None, None, None)
    assert total["requests"] == 5 and total["errors"] == 1
    assert total["cost_usd"] == 0.300246


async def test_filters_since_inclusive_until_exclusive_and_tenant(store: LedgerStore) -> None:
    await store.write_many(SAMPLE)
    (day2,) = await store.aggregate([], DAY2, None, None)
    assert day2["requests"] == 3
    (day1,) = await store.aggregate([], None, DAY2, None)
    assert day1["requests"] == 2
    assert await store.aggregate([], DAY2 + 5, DAY2 + 5, None) == []
    (exactly,) = await store.aggregate([], DAY2 + 5, DAY2 + 6, None)
    assert exactly["requests"] == 1
    assert [r["tenant"] for r in await store.aggregate(["tenant"], None, None, "beta")] == [
        "beta"]
    assert await store.aggregate(["tenant"], None, None, "nobody") == []


async def test_count_and_unknown_groups(store: LedgerStore) -> None:
    assert await store.count() == 0
    await store.write_many(SAMPLE)
    await store.write_many([])
    assert await store.count() == 5
    with pytest.raises(ValueError, match="key_id"):
        await store.aggregate(["tenant", "key_id"], None, None, None)


async def test_sqlite_file_is_wal_with_a_tenant_time_index(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    store = SqliteLedgerStore(str(path))
    await store.write_many([row()])
    await store.aclose()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    index = db.execute("PRAGMA index_info(usage_tenant_ts)").fetchall()
    assert [c[2] for c in index] == ["tenant", "ts"]
    db.close()


WRITER = textwrap.dedent("""
    import asyncio, sys
    from bastion.domain.usage import UsageRow
    from bastion.stores.ledger import SqliteLedgerStore

    async def main(path, name):
        store = SqliteLedgerStore(path)
        for batch in range(20):
            await store.write_many([UsageRow(f"{name}_{batch}_{i}", 1.0, name, None, "chat",
                                             "fast", None, 1, 1, 0, 0.000001, 1.0, "ok")
                                    for i in range(10)])
        await store.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def test_several_processes_append_to_one_file_without_losing_a_row(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, f"p{i}"]) for i in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]

    async def totals() -> list[dict[str, Any]]:
        store = SqliteLedgerStore(path)
        try:
            return await store.aggregate(["tenant"], None, None, None)
        finally:
            await store.aclose()

    rows = asyncio.run(totals())
    assert [(r["tenant"], r["requests"], r["cost_usd"]) for r in rows] == [
        ("p0", 200, 0.0002), ("p1", 200, 0.0002), ("p2", 200, 0.0002)]


# --------------------------------------------------------------------------- the writer


class FlakyStore(MemoryLedgerStore):
    """Fails the first ``failures`` writes (or every write with -1)."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0
        self.batches: list[int] = []

    async def write_many(self, rows: Sequence[UsageRow]) -> None:
        self.calls += 1
        if self.failures == -1 or self.calls <= self.failures:
            raise sqlite3.OperationalError("database is locked")
        self.batches.append(len(rows))
        await super().write_many(rows)


def ledger(store: LedgerStore, **config: Any) -> UsageLedger:
    return UsageLedger(store, LedgerConfig(**config), backoff_s=0.001, backoff_max_s=0.005)


async def test_record_never_blocks_and_a_full_queue_drops_and_counts() -> None:
    assert not inspect.iscoroutinefunction(UsageLedger.record)
    usage = ledger(MemoryLedgerStore(), queue_size=3)  # no writer running
    before = dropped_metric("queue_full")
    for n in range(5):
        usage.record(row(n))  # returns at once even though nothing drains the queue
    assert usage.pending == 3 and usage.dropped == 2
    assert dropped_metric("queue_full") - before == 2
    await usage.aclose()  # the three queued rows are still written
    assert await usage.store.count() == 3 and usage.written == 3


async def test_aclose_writes_every_row_recorded_before_it() -> None:
    store = FlakyStore()
    usage = ledger(store, queue_size=10_000, batch_size=64, flush_interval_s=5)
    await usage.start()
    for n in range(1_000):
        usage.record(row(n))
        if n % 100 == 0:
            await asyncio.sleep(0)  # let the writer run mid-stream
    await usage.aclose()
    assert await store.count() == 1_000 and usage.written == 1_000 and usage.dropped == 0
    assert max(store.batches) <= 64
    assert [r.request_id for r in store.rows] == [f"req_{n}" for n in range(1_000)]
    usage.record(row(1_001))  # after close: counted, not silently lost
    assert usage.dropped == 1


async def test_a_partial_batch_is_written_after_the_flush_interval() -> None:
    store = FlakyStore()
    usage = ledger(store, batch_size=100, flush_interval_s=0.05)
    await usage.start()
    usage.record(row(1))
    usage.record(row(2))
    for _ in range(100):
        if await store.count() == 2:
            break
        await asyncio.sleep(0.01)
    assert store.batches == [2]
    await usage.aclose()


async def test_flush_returns_once_earlier_rows_are_written() -> None:
    store = FlakyStore()
    usage = ledger(store, batch_size=100, flush_interval_s=30)
    await usage.start()
    for n in range(5):
        usage.record(row(n))
    await asyncio.wait_for(usage.flush(), 2)  # not held back by the 30 s batching wait
    assert await store.count() == 5
    await usage.aclose()


async def test_a_failing_write_is_retried_with_backoff() -> None:
    store = FlakyStore(failures=2)
    usage = ledger(store, batch_size=10)
    await usage.start()
    for n in range(10):
        usage.record(row(n))
    await usage.aclose()
    assert store.calls == 3 and await store.count() == 10
    assert usage.written == 10 and usage.dropped == 0


async def test_a_store_that_keeps_failing_costs_the_batch_counted_and_logged_by_id(
        caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore(failures=-1)
    usage = ledger(store, batch_size=10)
    before = dropped_metric("write_failed")
    await usage.start()
    for n in range(4):
        usage.record(row(n, tenant="secret-tenant"))
    with caplog.at_level(logging.WARNING, logger="bastion.ledger"):
        await usage.aclose()
    assert store.calls == usage.retries + 1
    assert usage.dropped == 4 and usage.written == 0
    assert dropped_metric("write_failed") - before == 4
    records = [r for r in caplog.records if r.name == "bastion.ledger"]
    assert any(getattr(r, "first_request_id", None) == "req_0" for r in records)
    assert all("secret-tenant" not in str(r.__dict__) for r in records)


async def test_a_restart_sees_every_row_written_before_aclose(tmp_path: Path) -> None:
    path = str(tmp_path / "bastion.db")
    first = SqliteLedgerStore(path)
    usage = ledger(first, batch_size=7, flush_interval_s=5)
    await usage.start()
    for n in range(50):
        usage.record(row(n))
    await usage.aclose()
    await first.aclose()
    again = SqliteLedgerStore(path)  # a new process would open the file the same way
    try:
        assert await again.count() == 50
        (total,) = await again.aggregate([], None, None, None)
        assert total["cost_usd"] == pytest.approx(50 * 0.000123)
        assert total["cost_usd"] == 0.00615  # exact
    finally:
        await again.aclose()


async def test_the_in_memory_ledger_keeps_the_newest_rows_and_counts_the_rest() -> None:
    store = MemoryLedgerStore(keep=5)
    rows = [row(n) for n in range(8)]
    await store.write_many(rows[:3])
    await store.write_many(rows[3:])
    assert await store.count() == 5 and store.evicted == 3
    assert list(store.rows) == rows[3:]
