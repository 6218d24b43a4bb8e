"""The `limits` library vs bastion's own sliding-window primitive, per rate-limit decision.

    .venv/bin/pip install limits   # the comparison only; bastion does not depend on it
    .venv/bin/python bench/ratelimit_libs.py [-n 20000]

A rate-limit decision on the hot path must (1) decide and record atomically and (2) report
remaining and reset for the ``x-ratelimit-*`` headers. bastion's ``window_hit`` does both in
one store call. With `limits` that is ``hit`` then ``get_window_stats`` (two calls, and not
atomic together). Both sides use the same algorithm (sliding-window counter) and in-process
memory; bastion's SQLite store is shown too, since `limits` has no storage a second worker on
the same machine can share without a server (it offers memory, Redis, Memcached, MongoDB).

Prints µs per decision (best of 5 runs of ``-n`` decisions over 100 keys), in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bastion.stores.memory import MemoryStore  # noqa: E402
from bastion.stores.sqlite import SqliteStore  # noqa: E402

KEYS = [f"tenant-{i}" for i in range(100)]
LIMIT = 10**9  # never refuse: measure the admitted path, the common one


async def best_of(n: int, one: Callable[[str], Awaitable[object]], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            await one(KEYS[i % len(KEYS)])
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


async def measure(n: int) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    try:
        from limits import RateLimitItemPerMinute
        from limits.aio.storage import MemoryStorage
        from limits.aio.strategies import SlidingWindowCounterRateLimiter
    except ImportError:
        print("limits is not installed: pip install limits (comparison only)", file=sys.stderr)
    else:
        item = RateLimitItemPerMinute(LIMIT)
        limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

        async def limits_hit(key: str) -> object:
            return await limiter.hit(item, key)

        async def limits_hit_and_stats(key: str) -> object:
            await limiter.hit(item, key)
            return await limiter.get_window_stats(item, key)

        rows.append(("limits 5.x memory: hit", await best_of(n, limits_hit)))
        rows.append(("limits 5.x memory: hit + get_window_stats (what headers need)",
                     await best_of(n, limits_hit_and_stats)))

    memory = MemoryStore()

    async def bastion_memory(key: str) -> object:
        return await memory.window_hit(key, 1, LIMIT, 60.0)

    rows.append(("bastion MemoryStore.window_hit (decision + headers)",
                 await best_of(n, bastion_memory)))
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteStore(str(Path(tmp) / "bench.db"))

        async def bastion_sqlite(key: str) -> object:
            return await sqlite.window_hit(key, 1, LIMIT, 60.0)

        rows.append(("bastion SqliteStore.window_hit (shared by workers, durable)",
                     await best_of(max(1, n // 10), bastion_sqlite)))
        await sqlite.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="decisions per run")
    args = parser.parse_args()
    rows = asyncio.run(measure(args.n))
    print("| rate-limit decision | µs each |\n|---|---|")
    for name, micros in rows:
        print(f"| {name} | {micros:.2f} |")


if __name__ == "__main__":
    main()
