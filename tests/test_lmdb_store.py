"""The LMDB hot store beyond the shared contract (``tests/test_stores.py`` runs that one):
exactness across processes, a full map, fork safety, the directory reset, the value rules."""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import sys
import textwrap
import time
from pathlib import Path

import lmdb
import orjson
import pytest

from bastion.stores import LmdbStore, reset_lmdb_dir
from bastion.stores import lmdb as lmdb_module
from bastion.stores.lmdb import _SWEEP_EVERY
from tests.store_contract import FakeClock, W

MiB = 1 << 20


def cache_entry(i: int, size: int) -> dict[str, object]:
    """A response-cache-shaped value of about ``size`` bytes."""
    return {"at": float(i), "json": f'{{"id":"{i}","content":"' + "x" * size + '"}'}


# -- several processes on one environment


_HAMMER = textwrap.dedent("""
    import asyncio, json, sys
    from bastion.stores.lmdb import LmdbStore

    async def main(path: str, name: str, rounds: int) -> None:
        store = LmdbStore(path)
        await store.start()
        print("ready", flush=True)
        sys.stdin.readline()  # every process starts hammering at once
        out = {"reserved": 0, "admitted": 0, "leased": 0, "claimed": 0, "cycled": 0}
        for i in range(rounds):
            if (await store.reserve("budget", 3, 1500))[0]:
                out["reserved"] += 1
                await store.reserve("budget", -1, 0)  # settled: 2 of the 3 stay
            out["admitted"] += (await store.window_hit("rpm", 1, 700, 1e9)).allowed
            out["leased"] += await store.lease_acquire("slots", f"{name}-{i}", 40, 600)
            # A slot taken and given back at once: never more than 3 at a time overall.
            if await store.lease_acquire("cycle", f"{name}-{i}", 3, 600):
                out["cycled"] += 1
                await store.lease_release("cycle", f"{name}-{i}")
            out["claimed"] += await store.set_if_absent("claim", name)
            await store.incr("n")
            if i % 50 == 0:
                await asyncio.sleep(0.001)  # let the processes interleave
        await store.aclose()
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
""")


async def test_processes_sharing_the_environment_stay_exact(tmp_path: Path) -> None:
    path = str(tmp_path / "hot.lmdb")
    rounds, names = 1000, ("p1", "p2", "p3")
    procs = [await asyncio.create_subprocess_exec(
                 sys.executable, "-c", _HAMMER, path, name, str(rounds),
                 stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                 stderr=asyncio.subprocess.PIPE)
             for name in names]
    for proc in procs:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
    ended = await asyncio.wait_for(asyncio.gather(*(p.communicate(b"go\n") for p in procs)), 60)
    for proc, (_, stderr) in zip(procs, ended, strict=True):
        assert proc.returncode == 0, stderr.decode()
    outs = [json.loads(stdout) for stdout, _ in ended]
    totals = {k: sum(o[k] for o in outs) for k in outs[0]}
    # 3,000 reservations of 3 (each settled down to 2) against 1,500: the budget is never
    # overshot, so exactly the reservations that fit were taken, and the total is exact.
    reserved = totals.pop("reserved")
    assert totals == {"admitted": 700, "leased": 40, "claimed": 1,
                      "cycled": 3 * rounds}
    assert all(o["admitted"] > 0 for o in outs), outs  # every process really took part
    store = LmdbStore(path)
    try:
        assert await store.get("n") == 3 * rounds
        budget = await store.get("budget")
        assert budget == 2 * reserved
        assert 1500 - 3 < budget <= 1500
        assert not await store.lease_acquire("slots", "late", 40, 600)  # all 40 still held
        assert await store.lease_acquire("cycle", "late", 3, 600)  # every cycle gave back
    finally:
        await store.aclose()


_GROW = textwrap.dedent("""
    import asyncio, sys
    from bastion.stores.lmdb import LmdbStore

    async def main(path: str) -> None:
        store = LmdbStore(path, map_size=16 << 20)  # a bigger map than the test's
        for i in range(400):
            await store.set(f"big:{i}", "x" * 20_000)  # ~8 MiB: past the test's map
        await store.aclose()

    asyncio.run(main(sys.argv[1]))
""")


async def test_a_map_grown_by_another_process_is_adopted(tmp_path: Path) -> None:
    path = str(tmp_path / "hot.lmdb")
    store = LmdbStore(path, map_size=4 * MiB)
    try:
        await store.set("k", 1)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _GROW, path,
                                                    stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()
        # This process's map is smaller than the data now: LMDB says MAP_RESIZED, the store
        # adopts the new size and goes on.
        assert await store.get("big:399") == "x" * 20_000
        assert await store.incr("k") == 2
        assert store._h().map_size == 16 * MiB
    finally:
        await store.aclose()


# -- a full map


async def test_a_full_map_sweeps_expired_entries_before_evicting(tmp_path: Path) -> None:
    clock = FakeClock()
    store = LmdbStore(str(tmp_path / "hot.lmdb"), clock, map_size=4 * MiB)
    try:
        for i in range(3000):  # ~12 MiB written into 4 MiB, each entry living 5 s
            clock.advance(0.01)
            await store.set(f"cache:{i}", cache_entry(i, 4000), ttl_s=5)
        assert store.evicted == 0  # expired entries made all the room needed
        assert store.swept > 2000
        assert await store.get("cache:2999") == cache_entry(2999, 4000)
        assert await store.get("cache:0") is None
    finally:
        await store.aclose()


async def test_big_values_are_bounded_by_count_small_state_never(tmp_path: Path) -> None:
    clock = FakeClock()
    store = LmdbStore(str(tmp_path / "hot.lmdb"), clock, big_capacity=200)
    try:
        await store.set("breaker:open", clock.now)
        for i in range(3000):  # well inside the 1 GiB map: only the capacity evicts
            clock.advance(0.01)
            await store.set(f"cache:{i}", cache_entry(i, 600), ttl_s=3600 + i)
            await store.reserve(f"budget:{i}", 5, 100, ttl_s=3600)
        h = store._h()
        big = store._read(lambda h, txn: int(txn.stat(h.big)["entries"]))
        # At most the capacity and what the writes since the last look added.
        assert 150 <= big <= 200 + 64
        assert store.evicted >= 3000 - 200 - 64
        # The soonest to expire (here the oldest) went; the newest are there.
        assert await store.get("cache:0") is None
        assert await store.get("cache:2999") == cache_entry(2999, 600)
        # Small values are never taken for the capacity: every budget is there.
        assert await store.get_many([f"budget:{i}" for i in range(0, 3000, 300)]) == [5] * 10
        assert await store.get("breaker:open") == FakeClock().now
        assert store._used(h) < 8 * MiB
    finally:
        await store.aclose()


async def test_a_full_map_evicts_big_values_first_and_never_raises(tmp_path: Path) -> None:
    clock = FakeClock()
    store = LmdbStore(str(tmp_path / "hot.lmdb"), clock, map_size=4 * MiB)
    try:
        await store.reserve("budget", 40, 100, ttl_s=3600)
        await store.set("breaker:open", clock.now)
        await store.set_if_absent("flight", "marker", ttl_s=60)
        for i in range(1500):  # ~9 MiB of cache entries that outlive the test
            clock.advance(0.01)
            await store.set(f"cache:{i}", cache_entry(i, 2000 + (i % 7) * 1000), ttl_s=10**6)
            assert (await store.window_hit("rpm", 1, 10**6, 60)).allowed
            assert await store.lease_acquire("slots", f"r{i}", 10**6, 3600)
            assert await store.reserve("budget", 1, 10**6) == (True, 41 + i)
        assert store.evicted > 500
        assert store.grown == 0  # room was made before the map was really full
        # The oldest entries went (they expire first), the newest are there...
        assert await store.get("cache:0") is None
        assert await store.get("cache:1499") == cache_entry(1499, 2000 + (1499 % 7) * 1000)
        # ...and no small state was evicted: budgets, markers, windows, leases.
        assert await store.get("budget") == 40 + 1500
        assert await store.get("breaker:open") == FakeClock().now
        assert await store.get("flight") == "marker"
        assert (await store.window_hit("rpm", 0, 10**6, 60)).count == 1500
        assert not await store.lease_acquire("slots", "x", 1500, 3600)
        used = store._used(store._h())
        assert used < 4 * MiB
    finally:
        await store.aclose()


async def test_a_value_bigger_than_the_map_raises(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "hot.lmdb"), map_size=2 * MiB)
    try:
        await store.set("small", 1)
        with pytest.raises(lmdb.MapFullError):
            await store.set("huge", "x" * (3 * MiB))
        assert await store.get("small") == 1  # the store goes on
        for i in range(600):  # fill the map with cache entries...
            await store.set(f"cache:{i}", cache_entry(i, 4000), ttl_s=3600)
        evicted = store.evicted
        # ...then a value larger than the room kept free (1/16 of the map): made room for.
        await store.set("large", "y" * 200_000)
        assert await store.get("large") == "y" * 200_000
        assert store.evicted > evicted and store.grown == 0
        assert await store.get("small") == 1
    finally:
        await store.aclose()


async def test_a_map_full_of_small_values_evicts_them_as_the_last_resort(
        tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "hot.lmdb"), FakeClock(), map_size=2 * MiB)
    try:
        for i in range(60_000):  # ~3 MiB of small values with a TTL: more than the map
            await store.set(f"s:{i:06}", i, ttl_s=3600 + i)
        assert store.evicted > 0 and store.grown == 0
        assert await store.get("s:059999") == 59_999
        assert await store.get("s:000000") is None  # soonest to expire: evicted first
    finally:
        await store.aclose()


# -- sweeping


async def test_expired_entries_nobody_asks_about_are_swept(tmp_path: Path) -> None:
    clock = FakeClock()
    store = LmdbStore(str(tmp_path / "hot.lmdb"), clock)
    try:
        assert store  # empty, yet truthy
        for i in range(10):
            await store.set(f"k{i}", i, ttl_s=1)
            await store.window_hit(f"w{i}", 1, 5, 1)
            await store.lease_acquire(f"c{i}", "a", 1, 1)
        await store.lease_acquire("held", "a", 1, 3600)  # one lease still held
        await store.lease_acquire("held", "b", 2, 1)  # and one of its holders expires
        clock.advance(5)
        assert store.size() == 31
        for _ in range(_SWEEP_EVERY):
            await store.set("live", 1)
        assert store.size() == 2  # "live" and the lease key still held
        assert await store.lease_acquire("held", "c", 2, 3600)  # "b" is gone, "a" holds
        assert not await store.lease_acquire("held", "d", 2, 3600)
    finally:
        await store.aclose()


async def test_the_indexes_follow_rewrites_and_deletes(tmp_path: Path) -> None:
    clock = FakeClock()
    store = LmdbStore(str(tmp_path / "hot.lmdb"), clock)
    try:
        await store.set("v", "x" * 1000, ttl_s=10)  # big, with a TTL
        await store.set("v", "y" * 1000, ttl_s=20)  # rewritten: new expiry
        await store.set("v", "small")  # small, no TTL
        await store.window_hit("w", 1, 5, W)
        clock.advance(W)
        await store.window_hit("w", 1, 5, W)  # the next window: a new expiry
        await store.lease_acquire("c", "a", 2, 30)
        await store.lease_acquire("c", "b", 2, 30)
        await store.lease_release("c", "a")
        h = store._h()
        with h.env.begin() as txn:
            assert txn.stat(h.expiry)["entries"] == 2  # the window's and the lease key's
            assert txn.stat(h.big)["entries"] == 0
            assert txn.stat(h.holders)["entries"] == 1
        for key in ("v", "w", "c"):
            await store.delete(key)
        with h.env.begin() as txn:
            assert all(txn.stat(db)["entries"] == 0 for db in h.dbs)
    finally:
        await store.aclose()


# -- values, keys, clock


async def test_long_and_empty_keys_and_holders(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "hot.lmdb"))
    try:
        long_a, long_b = "k" * 600 + "a", "k" * 600 + "b"  # LMDB keys stop at 511 bytes
        await store.set(long_a, 1)
        await store.set(long_b, 2)
        await store.set("", 3)
        assert (await store.get(long_a), await store.get(long_b), await store.get("")) == (1, 2, 3)
        holder = "h" * 300
        assert await store.lease_acquire(long_a, holder + "1", 1, 30)
        assert await store.lease_acquire(long_a, holder + "1", 1, 30)  # the same holder
        assert not await store.lease_acquire(long_a, holder + "2", 1, 30)
        assert (await store.window_hit(long_b, 2, 2, W)).allowed
        # A key holding a NUL cannot reach another key's holders.
        assert await store.lease_acquire("a", "\x00b", 1, 30)
        assert await store.lease_acquire("a\x00", "b", 1, 30)
    finally:
        await store.aclose()


async def test_the_wall_clock_is_the_default(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "hot.lmdb"))
    try:
        await store.set("k", 1, ttl_s=100)
        h = store._h()
        with h.env.begin() as txn:
            (expires_at,) = lmdb_module._EXP.unpack_from(txn.get(b"k", db=h.values))
        assert abs(expires_at - (time.time() + 100)) < 5  # shared by processes: wall time
    finally:
        await store.aclose()


# -- the environment: one handle per process and path, closing, fork


async def test_stores_on_one_path_share_one_environment(tmp_path: Path) -> None:
    path = str(tmp_path / "hot.lmdb")
    a, b = LmdbStore(path), LmdbStore(path + "/../hot.lmdb")
    await a.set("k", 1)
    assert await b.get("k") == 1
    assert a._h() is b._h()  # LMDB forbids opening one environment twice in a process
    await a.aclose()
    await a.aclose()  # idempotent
    assert await a.ping() is False
    with pytest.raises(RuntimeError):
        await a.get("k")
    assert await b.incr("k") == 2  # still open for the other store
    assert b.size() == 1
    await b.aclose()
    assert os.path.realpath(path) not in lmdb_module._OPEN
    again = LmdbStore(path)
    try:
        await again.start()
        assert await again.get("k") == 2  # the directory keeps it until it is reset
    finally:
        await again.aclose()


def reader_pids(env: lmdb.Environment) -> set[int]:
    """The pids in LMDB's reader table (``readers()``: a header, then pid, thread, txnid)."""
    return {int(line.split()[0]) for line in env.readers().splitlines()[1:] if line.strip()}


def _child_uses_the_inherited_store(store: LmdbStore, conn: object) -> None:
    async def work() -> tuple[int, bool]:
        n = await store.incr("n")
        return n, await store.lease_acquire("c", f"child-{os.getpid()}", 2, 30)
    inherited = store._handle
    try:
        n, leased = asyncio.run(work())
    except BaseException as exc:
        conn.send(repr(exc))  # type: ignore[attr-defined]
        raise
    reopened = store._handle is not inherited
    del inherited
    gc.collect()  # the inherited environment must survive this (it is never closed here)
    conn.send((n, leased, reopened, os.getpid()))  # type: ignore[attr-defined]
    conn.close()  # type: ignore[attr-defined]


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
async def test_a_forked_child_reopens_and_leaves_the_parents_environment_alone(
        tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "hot.lmdb"))
    try:
        assert await store.incr("n") == 1
        assert await store.get("n") == 1  # this process now holds a reader slot
        h = store._h()
        assert os.getpid() in reader_pids(h.env)
        ctx = multiprocessing.get_context("fork")
        parent_end, child_end = ctx.Pipe()
        child = ctx.Process(target=_child_uses_the_inherited_store, args=(store, child_end))
        child.start()
        child_end.close()
        try:
            assert await asyncio.to_thread(parent_end.poll, 30), "the child sent nothing"
            n, leased, reopened, child_pid = parent_end.recv()
        finally:
            await asyncio.to_thread(child.join, 30)
            if child.exitcode is None:
                child.kill()
        assert child.exitcode == 0
        assert (n, leased, reopened) == (2, True, True)
        # The child did not close the inherited environment: this process's reader slot is
        # still its own, and the environment works on.
        assert os.getpid() in reader_pids(h.env)
        assert store._h() is h
        assert await store.incr("n") == 3
        assert await store.lease_acquire("c", "parent", 2, 30)
        assert not await store.lease_acquire("c", "third", 2, 30)  # the child's slot counts
        h.env.reader_check()  # the child's slot, if any was left, belonged to a dead pid
        assert child_pid not in reader_pids(h.env)
    finally:
        await store.aclose()


# -- the directory reset, for the supervisor


async def test_reset_lmdb_dir_starts_hot_state_from_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "hot.lmdb"
    reset_lmdb_dir(path)  # creates it (and its parents)
    assert path.is_dir() and not any(path.iterdir())
    store = LmdbStore(str(path))
    await store.set("k", 1)
    await store.window_hit("w", 1, 5, W)
    with pytest.raises(RuntimeError):
        reset_lmdb_dir(path)  # open in this process: refused
    await store.aclose()
    assert sorted(p.name for p in path.iterdir()) == ["data.mdb", "lock.mdb"]
    reset_lmdb_dir(path)
    assert path.is_dir() and not any(path.iterdir())
    fresh = LmdbStore(str(path))
    try:
        assert await fresh.get("k") is None
        assert (await fresh.window_hit("w", 0, 5, W)).count == 0
    finally:
        await fresh.aclose()


_HOLD_OPEN = textwrap.dedent("""
    import asyncio, sys
    from bastion.stores.lmdb import LmdbStore

    store = LmdbStore(sys.argv[1])
    asyncio.run(store.set("k", 1))
    print("ready", flush=True)
    sys.stdin.readline()
""")


async def test_reset_lmdb_dir_refuses_an_environment_another_process_has_open(
        tmp_path: Path) -> None:
    path = tmp_path / "hot.lmdb"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD_OPEN, str(path), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
        with pytest.raises(RuntimeError, match="another process"):
            reset_lmdb_dir(path)  # a server still running on this state
        assert (path / "data.mdb").exists()
    finally:
        _, stderr = await asyncio.wait_for(proc.communicate(b"done\n"), 60)
    assert proc.returncode == 0, stderr.decode()
    reset_lmdb_dir(path)  # the process is gone: its lock went with it
    assert not any(path.iterdir())


def test_reset_lmdb_dir_refuses_what_is_not_an_lmdb_directory(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        reset_lmdb_dir(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="not a directory"):
        reset_lmdb_dir(tmp_path / "notes.txt")


def test_operations_run_without_an_executor(tmp_path: Path) -> None:
    # Synchronous inside the coroutine: one step of the coroutine does the whole operation.
    store = LmdbStore(str(tmp_path / "hot.lmdb"))
    coro = store.reserve("b", 5, 10, ttl_s=60)
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    assert done.value.value == (True, 5)
    assert orjson.loads(orjson.dumps(asyncio.run(store.get("b")))) == 5
    asyncio.run(store.aclose())
