"""The key-value stores: every backend against the shared contract, then what is backend-only.

A new backend (Redis, Postgres) joins the contract by adding one entry to ``BACKENDS`` (and, for
a server, a fixture that starts it).
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bastion.stores import KeyValueStore, MemoryStore, SqliteStore
from bastion.stores.lmdb import LmdbStore
from bastion.stores.memory import _SWEEP_EVERY
from tests.store_contract import FakeClock, StoreContract, StoreFactory, W

BACKENDS: dict[str, Callable[[Path, FakeClock], KeyValueStore]] = {
    "memory": lambda tmp, clock: MemoryStore(clock),
    "sqlite": lambda tmp, clock: SqliteStore(str(tmp / "state" / "kv.db"), clock),
    "lmdb": lambda tmp, clock: LmdbStore(str(tmp / "state" / "hot.lmdb"), clock),
}


@pytest.fixture(params=sorted(BACKENDS))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    make = BACKENDS[request.param]
    return lambda clock: make(tmp_path, clock)


class TestKeyValueStoreContract(StoreContract):
    """Every backend in ``BACKENDS``, against the whole contract."""


# -- memory and SQLite agree, call for call


async def _random_calls(store: KeyValueStore, clock: FakeClock, seed: int) -> list[Any]:
    rng = random.Random(seed)
    out: list[Any] = []
    for _ in range(400):
        clock.advance(rng.choice([0, 0, 0.25, 1.5, 4, 9.75]))
        key = rng.choice("ab")
        op = rng.randrange(8)
        if op == 0:
            out.append(await store.window_hit(f"w{key}", rng.randrange(0, 6), 12, W))
        elif op == 1:
            out.append(await store.window_adjust(f"w{key}", rng.randrange(-8, 8), W))
        elif op == 2:
            out.append(await store.reserve(f"r{key}", rng.randrange(-20, 30), 60, ttl_s=30))
        elif op == 3:
            out.append(await store.incr(f"i{key}", rng.randrange(-3, 5), ttl_s=7))
        elif op == 4:
            out.append(await store.set_if_absent(f"s{key}", rng.random(), ttl_s=5))
        elif op == 5:
            out.append(await store.lease_acquire(f"l{key}", rng.choice("xyz"), 2, 6))
        elif op == 6:
            out.append(await store.lease_release(f"l{key}", rng.choice("xyz")))
        else:
            out.append([await store.get(f"{p}{key}") for p in "ris"])
    return out


@pytest.mark.parametrize("seed", range(4))
async def test_memory_and_sqlite_answer_the_same_sequence_alike(tmp_path: Path,
                                                                 seed: int) -> None:
    memory, sqlite = MemoryStore(mclock := FakeClock()), SqliteStore(
        str(tmp_path / "kv.db"), sclock := FakeClock())
    try:
        assert await _random_calls(memory, mclock, seed) == await _random_calls(
            sqlite, sclock, seed)
    finally:
        await sqlite.aclose()


# -- memory only


async def test_memory_sweeps_expired_entries_it_is_never_asked_about() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    assert store  # empty, yet truthy: ``store or MemoryStore()`` must keep it
    for i in range(10):
        await store.set(f"k{i}", i, ttl_s=1)
        await store.window_hit(f"w{i}", 1, 5, 1)
        await store.lease_acquire(f"c{i}", "a", 1, 1)
    clock.advance(5)
    assert store.size() == 30
    for _ in range(_SWEEP_EVERY):
        await store.set("live", 1)
    assert store.size() == 1


# -- SQLite only


async def test_sqlite_state_survives_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "kv.db")
    clock = FakeClock()
    store = SqliteStore(path, clock)
    await store.start()
    await store.set("k", {"a": [1, 2]})
    await store.reserve("b", 40, 100, ttl_s=60)
    await store.window_hit("w", 3, 5, W)
    await store.lease_acquire("c", "a", 1, 30)
    await store.aclose()
    await store.aclose()  # idempotent
    assert await store.ping() is False

    again = SqliteStore(path, clock)
    try:
        assert await again.get("k") == {"a": [1, 2]}
        assert await again.reserve("b", 61, 100) == (False, 40)
        assert (await again.window_hit("w", 0, 5, W)).count == 3
        assert not await again.lease_acquire("c", "b", 1, 30)
        clock.advance(60)
        assert await again.get("b") is None
    finally:
        await again.aclose()


@pytest.mark.parametrize("backend", ["sqlite", "lmdb"])
async def test_shared_stores_keep_values_as_json(tmp_path: Path, backend: str) -> None:
    store = BACKENDS[backend](tmp_path, time.time)
    try:
        value = {"unicode": "日本語 ✓", "big": 2**62, "neg": -7, "float": 0.1, "t": True,
                 "f": False, "none": None, "empty": {}, "list": [[], [1.5, "x"]]}
        await store.set("k", value)
        assert await store.get("k") == value
        await store.set("t", (1, 2))
        assert await store.get("t") == [1, 2]  # JSON has no tuples
        with pytest.raises(TypeError):
            await store.set("bad", {1, 2})
        with pytest.raises(TypeError):
            await store.set_if_absent("bad", object())
        assert await store.get("bad") is None
    finally:
        await store.aclose()


async def test_sqlite_uses_the_wall_clock_and_sweeps_expired_rows(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    store = SqliteStore(str(path))
    await store.set("k", 1, ttl_s=100)
    await store.aclose()
    with sqlite3.connect(path) as db:
        (expires_at,) = db.execute("SELECT expires_at FROM kv").fetchone()
    assert abs(expires_at - (time.time() + 100)) < 5  # shared by processes: wall time

    path = tmp_path / "swept.db"
    clock = FakeClock()
    store = SqliteStore(str(path), clock)
    try:
        await store.set("gone", 1, ttl_s=1)
        await store.window_hit("w", 1, 5, 1)
        await store.lease_acquire("c", "a", 1, 1)
        clock.advance(61)  # past the sweep interval: the next write sweeps every table
        await store.set("live", 1)
        with sqlite3.connect(path) as db:
            counts = [db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                      for t in ("kv", "kv_windows", "kv_leases")]
        assert counts == [1, 0, 0]  # only "live"
    finally:
        await store.aclose()


def test_one_sqlite_store_serves_several_event_loops(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "kv.db"))
    assert asyncio.run(store.incr("n")) == 1
    assert asyncio.run(store.incr("n")) == 2
    asyncio.run(store.aclose())


_HAMMER = textwrap.dedent("""
    import asyncio, json, sys
    from bastion.stores.sqlite import SqliteStore

    async def main(path: str, name: str) -> None:
        store = SqliteStore(path)
        await store.start()
        print("ready", flush=True)
        sys.stdin.readline()  # both processes start hammering at once
        results = []
        for burst in range(30):
            ops = []
            for i in range(burst * 10, burst * 10 + 10):
                ops.append(store.reserve("budget", 1, 250))
                ops.append(store.window_hit("rpm", 1, 250, 1e9))  # one window for the run
                ops.append(store.lease_acquire("slots", f"{name}-{i}", 40, 600))
                ops.append(store.set_if_absent("claim", name))
                ops.append(store.incr("n"))
            results += await asyncio.gather(*ops)
            # SQLite's busy handler is not fair: a waiting process sleeps while the other
            # commits back to back. A pause between bursts lets the two really interleave.
            await asyncio.sleep(0.002)
        await store.aclose()
        print(json.dumps({
            "reserved": sum(r[0] for r in results[0::5]),
            "admitted": sum(h.allowed for h in results[1::5]),
            "leased": sum(results[2::5]),
            "claimed": sum(results[3::5]),
        }))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


async def test_two_processes_sharing_the_file_stay_exact(tmp_path: Path) -> None:
    path = str(tmp_path / "kv.db")
    procs = [await asyncio.create_subprocess_exec(
                 sys.executable, "-c", _HAMMER, path, name, stdin=asyncio.subprocess.PIPE,
                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
             for name in ("p1", "p2")]
    for proc in procs:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
    ended = await asyncio.wait_for(asyncio.gather(*(p.communicate(b"go\n") for p in procs)), 60)
    for proc, (_, stderr) in zip(procs, ended, strict=True):
        assert proc.returncode == 0, stderr.decode()
    outs = [json.loads(stdout) for stdout, _ in ended]
    totals = {k: sum(o[k] for o in outs) for k in outs[0]}
    assert totals == {"reserved": 250, "admitted": 250, "leased": 40, "claimed": 1}
    assert all(o["reserved"] > 0 for o in outs), outs  # both really took part
    store = SqliteStore(path)
    try:
        assert await store.get("budget") == 250
        assert await store.get("n") == 600
    finally:
        await store.aclose()


async def test_a_memory_store_with_a_capacity_evicts_the_oldest_written_values() -> None:
    store = MemoryStore(capacity=2)
    await store.set("a", 1)
    await store.set("b", 2)
    await store.set("a", 10)  # rewriting a held key evicts nothing
    assert store.evicted == 0
    await store.set("c", 3)
    assert (await store.get("a"), await store.get("b"), await store.get("c")) == (None, 2, 3)
    assert await store.set_if_absent("d", 4)
    assert (await store.get("b"), store.evicted) == (None, 2)


# -- memory and LMDB agree, call for call (LMDB is the shared hot store under ``--workers``)


@pytest.mark.parametrize("seed", range(4))
async def test_memory_and_lmdb_answer_the_same_sequence_alike(tmp_path: Path,
                                                               seed: int) -> None:
    memory, lmdb_store = MemoryStore(mclock := FakeClock()), LmdbStore(
        str(tmp_path / "hot.lmdb"), lclock := FakeClock())
    try:
        assert await _random_calls(memory, mclock, seed) == await _random_calls(
            lmdb_store, lclock, seed)
    finally:
        await lmdb_store.aclose()
