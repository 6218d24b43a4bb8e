"""The hot-state stores side by side: µs per operation, memory vs LMDB vs SQLite.

    .venv/bin/python bench/stores.py [-n 20000] [--sqlite-n 2000] [--repeats 5]

One process, one event loop, one call at a time (``await`` in a loop over 100 keys), as the
gateway's stages call the store: ``get`` (a hit), ``set`` (a small value), ``set 2 KiB`` (a
response-cache entry), ``incr``, ``set_if_absent`` (a single-flight marker: taken, then
deleted), ``window_hit`` (a rate-limit decision, admitted), ``reserve`` (a budget: reserve then
settle, two calls), ``lease_acquire+release`` (a concurrency slot, two calls). The wall clock
is used, as in production (``time.time``), so windows and TTLs are real.

Prints, per store and operation, wall µs per call (best of ``--repeats`` runs) and CPU µs per
call (process CPU time over that best run: for SQLite it includes the executor thread, which
is where its transactions run; for LMDB and memory, all work is on the loop thread). SQLite is
slow enough that it runs ``--sqlite-n`` calls per run, not ``-n``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bastion.stores.base import KeyValueStore
from bastion.stores.lmdb import LmdbStore
from bastion.stores.memory import MemoryStore
from bastion.stores.sqlite import SqliteStore

KEYS = [f"tenant-{i}" for i in range(100)]
BIG = {"at": 1.0, "json": '{"id":"chatcmpl-1","choices":[{"message":{"content":"'
       + "x" * 1900 + '"}}]}'}
LIMIT = 10**12  # never refuse: measure the admitted path, the common one


def ops(store: KeyValueStore) -> dict[str, Callable[[str], Awaitable[Any]]]:
    async def set_if_absent(key: str) -> None:
        await store.set_if_absent(f"flight:{key}", "marker", 30)
        await store.delete(f"flight:{key}")

    async def reserve(key: str) -> None:
        await store.reserve(f"budget:{key}", 100, LIMIT, 3600)
        await store.reserve(f"budget:{key}", -40, 0)

    async def lease(key: str) -> None:
        await store.lease_acquire(f"conc:{key}", "request-1", 1000, 60)
        await store.lease_release(f"conc:{key}", "request-1")

    return {
        "get": lambda key: store.get(f"value:{key}"),
        "set": lambda key: store.set(f"value:{key}", 12345, 60),
        "set 2 KiB": lambda key: store.set(f"cache:{key}", BIG, 60),
        "incr": lambda key: store.incr(f"n:{key}", 1, 60),
        "set_if_absent+delete (2 calls)": set_if_absent,
        "window_hit": lambda key: store.window_hit(f"rpm:{key}", 1, LIMIT, 60.0),
        "reserve+settle (2 calls)": reserve,
        "lease_acquire+release (2 calls)": lease,
    }


async def best_of(n: int, repeats: int,
                  one: Callable[[str], Awaitable[Any]]) -> tuple[float, float]:
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            await one(KEYS[i % len(KEYS)])
        best = min(best, ((time.perf_counter() - wall) / n * 1e6,
                          (time.process_time() - cpu) / n * 1e6))
    return best


async def measure(name: str, store: KeyValueStore, n: int,
                  repeats: int) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    try:
        for key in KEYS:  # the values ``get`` reads
            await store.set(f"value:{key}", 12345)
        for op, one in ops(store).items():
            for i in range(min(n, 200)):  # warm-up
                await one(KEYS[i % len(KEYS)])
            out[op] = await best_of(n, repeats, one)
    finally:
        await store.aclose()
    print(f"  {name} done", file=sys.stderr)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="calls per run (memory, LMDB)")
    parser.add_argument("--sqlite-n", type=int, default=2_000, help="calls per run (SQLite)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "memory": await measure("memory", MemoryStore(time.time), args.n, args.repeats),
            "lmdb": await measure("lmdb", LmdbStore(f"{tmp}/hot.lmdb"), args.n, args.repeats),
            "sqlite": await measure("sqlite", SqliteStore(f"{tmp}/state.db"), args.sqlite_n,
                                    args.repeats),
        }
    names = list(results)
    print(f"µs per call, wall / CPU (best of {args.repeats}; -n {args.n}, "
          f"sqlite {args.sqlite_n}; Python {sys.version.split()[0]})")
    print(f"| operation | {' | '.join(names)} |")
    print(f"|---|{'---:|' * len(names)}")
    for op in results["memory"]:
        cells = [f"{results[s][op][0]:.2f} / {results[s][op][1]:.2f}" for s in names]
        print(f"| {op} | {' | '.join(cells)} |")


if __name__ == "__main__":
    asyncio.run(main())
