"""Hot state in one LMDB environment, shared by the worker processes of one machine.

Why LMDB: with ``bastion serve --workers N`` the hot state (rate-limit windows, concurrency
leases, breakers, the response cache and its single-flight markers, budget reservations) must be
shared so limits stay exact. The SQLite state file does that at ~100-140 us of CPU per operation
(a transaction through an executor thread). LMDB is a memory-mapped B+tree whose write
transactions are serialised across processes by a robust mutex in its lock file, so a
read-modify-write inside one write transaction is exact across processes, and a transaction
costs so little that it can run synchronously, on the event loop's thread.

Every operation is one LMDB transaction (a write transaction for every operation that writes, so
``reserve``, ``incr``, ``window_hit``, ``lease_acquire`` and ``set_if_absent`` read and write
under the lock; ``get`` is a read-only transaction, which takes no lock), run to its end inside
the ``async def`` with no await and no executor: atomic with respect to the other coroutines of
the loop (as in ``MemoryStore``) and to the other processes (the lock). Measured with
``bench/stores.py`` (2 cores, Python 3.11, py-lmdb 3.0.0 with LMDB 0.9, one process): ``get``
1.1 us, ``set``/``incr``/``window_hit``/``reserve``/``lease_acquire`` 3.4-4.2 us, a 2 KiB cache
entry 6.4 us, against 0.3-1.3 us for ``MemoryStore`` and 100-120 us for ``SqliteStore``; of
that, a bare write transaction doing get+put is 1.2 us. A writer waiting for another process's
lock blocks its loop that long: transactions here last microseconds.

The environment is opened for rebuildable state (``reset_lmdb_dir`` empties it at server start):
``writemap=True`` (dirty pages written in place: 1.2 against 3.5 us per get+put transaction),
``sync=False`` and ``metasync=False`` (no fsync: 860 us per commit with both on, 260 us with
``metasync`` alone; a process crash loses nothing, the OS holds the pages; a machine crash can
lose or corrupt the file, which the next start discards anyway), ``map_async`` off (it only
changes how a sync is done, and none is), ``readahead=False`` (random access), ``lock=True``
(the cross-process exactness), ``max_readers=512`` (``serve`` allows 64 workers, each holding a
reader slot for its spare read transaction, plus any threads; a slot is 64 bytes), six named
databases (``max_dbs=8``).

Time is the wall clock (``time.time``), read after the write lock is taken: every process must
agree on it. Tests inject a clock.

Values are stored as JSON (orjson), as in ``SqliteStore``: str, int (64-bit), float, bool, None,
and lists and str-keyed dicts of these. A tuple comes back as a list; anything else raises
``TypeError`` on ``set``, in the caller, before any transaction. Keys are UTF-8; a key longer
than 400 bytes (LMDB keys stop at 511), or empty (LMDB refuses those), is stored as its first
368 bytes and its SHA-256; a lease holder longer than 100 bytes likewise (68 bytes and the hash).

Layout, one named database per family: ``values`` (key -> expiry + JSON), ``windows`` (key -> the
previous and current window's start and count, and when the entry stops counting), ``leases``
(key -> holders, earliest holder expiry, when to look at the key again) and ``holders`` (key +
holder -> expiry, one entry per slot: taking a slot costs the same with 1,000 holders as with
one; a key's holders are scanned for expired ones only once the earliest is due, as in
``MemoryStore``). Two indexes keep the size bounded: ``expiry`` (expiry + family + key, for
every entry that expires) and ``big`` (expiry + key, for values of 256 bytes or more).

Bounded size. Expired entries are ignored on read, removed when their key is written, and swept:
once in ``_SWEEP_EVERY`` (16) writes of a process, the write also removes up to
``_SWEEP_BATCH`` (32) expired entries from the head of the ``expiry`` index (~3.6 us an entry:
~120 us at most; two entries a write, more than a write creates). The map is the cap: 1 GiB by
default, a sparse file (only pages written take space; 1 GiB holds the cache's default 10,000
entries at 100 KiB each; address space is free on 64 bits). It must never fill up: a full map
refuses even the deletes that would make room (measured: ``MDB_MAP_FULL`` from ``mdb_del``;
copy-on-write needs free pages, and the pages the last commit freed become reusable only after
the next commit). So every ``_CHECK_EVERY`` (64) writes, and after every 1/256 of the map written
in values, the pages in use are counted (~4 us); past 15/16 of the map, expired entries are
swept and then values evicted down to 7/8, at most 1,024 entries per look (a few ms). If a write
still finds the map full (``lmdb.MapFullError``: a value larger than the room kept free),
expired entries are swept and the write retried; if still full, values are evicted, 1/64 of the
map more each round, and the write retried, up to 8 rounds. Eviction takes the values of 256
bytes or more first (the response cache's entries; counters, budgets and markers are tens of
bytes), soonest-to-expire first, and only then, as a last resort, small values with a TTL; it
never takes windows, leases or values without a TTL (tiny, or breaker state). ``evicted`` counts
the values this process evicted, ``swept`` the expired entries. Only a value too large to find
room for even so raises ``MapFullError`` (its pages must be contiguous: measured in a 2 MiB map
full of cache entries, a tenth of the map fits, a third does not). Should not even one entry be
deletable, the map grows by 1/64 (``grown`` counts it; every process follows through
``MapResizedError``) rather than failing every write from then on: never seen with the headroom
above, in the tests nor in fills of 4-8 MiB maps with values of 300 bytes to 200 KiB.

Fork safety. An LMDB environment must not be used in a child after ``fork``, nor closed there
(closing clears the reader slots of the process that opened it: measured, the parent's slot
vanished from ``readers()``). The environment is opened lazily, by the first operation, in the
process that uses it, and reopened when ``os.getpid()`` changed; the inherited one is kept,
unused and never closed (py-lmdb >= 3.0 does not close it when a process that did not open it
deallocates it). LMDB also forbids opening one environment twice in a process (closing either
handle drops the process's fcntl locks), so the stores of one process share one handle per path,
closed with the last of them.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import shutil
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import orjson

from bastion.stores.base import WindowHit
from bastion.stores.memory import reserve_decide, window_counts, window_decide

T = TypeVar("T")

#: 1 GiB, sparse: see the module docstring.
DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_READERS = 512
_DB_NAMES = (b"values", b"windows", b"leases", b"holders", b"expiry", b"big")
#: An amortised sweep once in this many writes of one process...
_SWEEP_EVERY = 16
#: ...removing at most this many expired entries (two per write: more than a write creates;
#: measured ~3.6 us an entry, so a sweeping write takes ~120 us at most).
_SWEEP_BATCH = 32
#: How full the map is, looked at once in this many writes (~5 us).
_CHECK_EVERY = 64
#: Entries handled per transaction when the map is full: the first batch, and the most.
_ROOM_FIRST_BATCH = 16
_ROOM_BATCH = 1024
#: Rounds of sweeping/evicting before a write that still does not fit gives up.
_ROOM_ROUNDS = 8
#: Values this large (bytes stored) are the first evicted: the response cache's entries.
_BIG = 256
#: Past this share of the map in use, big values are evicted down to the lower share.
_HIGH = 15 / 16
_LOW = 7 / 8
#: Entries removed at most per look at the map (a few ms); the next look removes more.
_HEADROOM_MAX_ENTRIES = 1024
#: ...and the map is looked at after every 1/256 of it written in values (a 16th of the room).
_CHECK_EVERY_BIG = 256
_KEY_MAX = 400
_HOLDER_MAX = 100
#: Files LMDB keeps in its directory: ``reset_lmdb_dir`` removes nothing else.
_LMDB_FILES = frozenset({"data.mdb", "lock.mdb"})

_INF = math.inf
_F_VALUE, _F_WINDOW, _F_LEASE = b"v", b"w", b"l"
_EXP = struct.Struct("<d")
#: previous window start, its count, current window start, its count, expires_at.
_WIN = struct.Struct("<dqdqd")
_WIN_EXP_AT = 32
#: holders, earliest holder expiry, the time of the key's entry in the ``expiry`` index.
_META = struct.Struct("<qdd")
_BE_D = struct.Struct(">d")
_BE_Q = struct.Struct(">Q")
_LEN = struct.Struct(">H")
_SIGN = 1 << 63
_ALL = (1 << 64) - 1


def _kb(key: str, limit: int = _KEY_MAX) -> bytes:
    """A key's bytes: UTF-8, or its head and SHA-256 when too long (or empty: LMDB refuses
    empty keys)."""
    b = key.encode()
    if 0 < len(b) <= limit:
        return b
    digest = hashlib.sha256(b).digest()
    return b[:max(0, limit - len(digest))] + digest if len(b) > limit else digest


def _sortable(x: float) -> bytes:
    """8 bytes that sort as the floats do (the IEEE 754 trick: flip the sign bit of a
    positive number, every bit of a negative one)."""
    (u,) = _BE_Q.unpack(_BE_D.pack(x))
    return _BE_Q.pack(u ^ _ALL if u & _SIGN else u | _SIGN)


def _ix(expires_at: float, family: bytes, k: bytes) -> bytes:
    return _sortable(expires_at) + family + k


def _expiry(now: float, ttl_s: float | None) -> float:
    return _INF if ttl_s is None else now + ttl_s


@dataclass(eq=False, slots=True)
class _Handle:
    """One open environment of this process, shared by the stores opened on its path."""

    path: str
    env: lmdb.Environment
    values: Any
    windows: Any
    leases: Any
    holders: Any
    expiry: Any
    big: Any
    psize: int
    #: The map's size now (it grows only in ``LmdbStore._grow``, here or in another process).
    map_size: int
    users: int = 0

    #: Values written between two looks at how full the map is (set with ``map_size``).
    check_bytes: int = 0

    def __post_init__(self) -> None:
        self.check_bytes = self.map_size // _CHECK_EVERY_BIG

    def resized(self, size: int = 0) -> None:
        """Adopt the map's new size: ``size`` (this process grows it), or another process's."""
        self.env.set_mapsize(size)
        self.map_size = self.env.info()["map_size"]
        self.check_bytes = self.map_size // _CHECK_EVERY_BIG

    @property
    def dbs(self) -> tuple[Any, ...]:
        return (self.values, self.windows, self.leases, self.holders, self.expiry, self.big)


#: This process's id, kept current across forks: ``os.getpid()`` is a system call, and every
#: operation checks it (about 0.5 µs each, 14 operations in a chat completion).
_PID = os.getpid()


def _pid_after_fork() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_pid_after_fork)

_OPEN: dict[str, _Handle] = {}
_OPEN_PID = os.getpid()
#: Environments inherited across a fork, by path: referenced for ever, never closed (closing
#: one in the child would clear the parent's reader slots; py-lmdb >= 3.0 does not close an
#: environment when a process that did not open it deallocates it).
_INHERITED: dict[str, list[lmdb.Environment]] = {}


def _forget_inherited() -> None:
    global _OPEN_PID
    if _OPEN_PID != os.getpid():
        for path, handle in _OPEN.items():
            _INHERITED.setdefault(path, []).append(handle.env)
        _OPEN.clear()
        _OPEN_PID = os.getpid()


def _open_env(path: str, map_size: int, max_readers: int) -> lmdb.Environment:
    def env() -> lmdb.Environment:
        return lmdb.open(path, map_size=map_size, max_dbs=len(_DB_NAMES) + 2, subdir=True,
                         writemap=True, sync=False, metasync=False, map_async=False,
                         lock=True, readahead=False, max_readers=max_readers,
                         max_spare_txns=1)
    if path not in _INHERITED:
        return env()
    # py-lmdb refuses to open files a live Environment object of this process has open, to
    # keep LMDB's rule "never open an environment twice in a process" (closing one handle
    # would drop the other's fcntl locks). The inherited object holds no lock here (fcntl locks
    # are not inherited) and is never used nor closed, so the rule is kept; its guard, which
    # cannot tell, is stepped over for this one open.
    from lmdb import _envid

    keys = _envid.env_keys
    _envid.env_keys = lambda *_: ()
    try:
        return env()
    finally:
        _envid.env_keys = keys


def _acquire(path: str, map_size: int, max_readers: int) -> _Handle:
    _forget_inherited()
    real = os.path.realpath(path)
    handle = _OPEN.get(real)
    if handle is None:
        Path(real).mkdir(parents=True, exist_ok=True)
        env = _open_env(real, map_size, max_readers)
        try:
            env.reader_check()  # free the reader slots of processes that died holding them
            dbs = [env.open_db(name, create=True) for name in _DB_NAMES]
        except BaseException:
            env.close()
            raise
        handle = _OPEN[real] = _Handle(real, env, *dbs, env.stat()["psize"],
                                       env.info()["map_size"])
    handle.users += 1
    return handle


def _release(handle: _Handle) -> None:
    _forget_inherited()
    if _OPEN.get(handle.path) is not handle:
        return  # inherited across a fork: leaked, never closed here
    handle.users -= 1
    if handle.users <= 0:
        del _OPEN[handle.path]
        handle.env.close()


def reset_lmdb_dir(path: str | os.PathLike[str]) -> None:
    """Delete and recreate the LMDB directory ``path``: hot state starts from nothing.

    For the server supervisor, before it starts the workers. Refuses (``ValueError``) a
    directory holding anything but LMDB's two files, so a mistyped path cannot delete unrelated
    data, and (``RuntimeError``) an environment open in this process or in another one, such as
    the workers of a server still running on the same state: emptying it under them would split
    hot state between two sets of files without a word."""
    p = Path(path).expanduser()
    _forget_inherited()
    if os.path.realpath(p) in _OPEN:
        raise RuntimeError(f"{p} is open in this process: close its stores first")
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        raise ValueError(f"{p} is not a directory")
    if p.exists():
        foreign = sorted(c.name for c in p.iterdir() if c.name not in _LMDB_FILES)
        if foreign:
            raise ValueError(f"{p} holds files LMDB did not write ({', '.join(foreign[:5])});"
                             " not deleting it")
        if _in_use(p / "lock.mdb"):
            raise RuntimeError(f"{p} is open in another process (a server still running on "
                               "this state?): stop it first")
        shutil.rmtree(p)
    p.mkdir(parents=True)


def _in_use(lock_file: Path) -> bool:
    """Whether a process has the environment open: each holds a shared fcntl lock on the lock
    file's first byte (LMDB 0.9's ``mdb_env_excl_lock``) while it does."""
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError:
        return True
    finally:
        os.close(fd)  # drops the lock, if taken (no environment of this process uses the file)
    return False


class LmdbStore:
    shared = True

    def __init__(self, path: str, clock: Callable[[], float] = time.time, *,
                 map_size: int = DEFAULT_MAP_SIZE,
                 max_readers: int = DEFAULT_MAX_READERS,
                 big_capacity: int | None = None) -> None:
        """``big_capacity`` bounds the values of ``_BIG`` bytes or more (the response cache's
        entries) by count, as ``MemoryStore(capacity=...)`` bounds the in-process cache:
        beyond it, the soonest to expire go first. Without it they are bounded by their
        lifetime and the map."""
        self.path = str(Path(path).expanduser())
        self._clock = clock
        self.map_size = map_size
        self.max_readers = max_readers
        self.big_capacity = big_capacity
        #: Values this process evicted because the map was full.
        self.evicted = 0
        #: Expired entries this process swept.
        self.swept = 0
        #: Times this process had to grow the map (see ``_grow``).
        self.grown = 0
        self._handle: _Handle | None = None
        self._pid = 0
        self._writes = 0
        self._big_written = 0
        self._closed = False

    async def start(self) -> None:
        """Open the environment now, so a bad path fails at start-up (otherwise the first
        operation opens it)."""
        self._h()

    # -- the environment, opened in the process that uses it

    def _h(self) -> _Handle:
        handle = self._handle
        if handle is not None and self._pid == _PID:
            return handle
        if self._closed:
            raise RuntimeError("the LMDB store is closed")
        # First use, or first use after a fork: the inherited handle is left alone (leaked).
        self._handle = None
        self._handle = _acquire(self.path, self.map_size, self.max_readers)
        self._pid = os.getpid()
        return self._handle

    def _read(self, fn: Callable[[_Handle, lmdb.Transaction], T]) -> T:
        h = self._h()
        while True:
            try:
                with h.env.begin(buffers=True) as txn:
                    return fn(h, txn)
            except lmdb.MapResizedError:  # another process grew the map
                h.resized()

    def _write(self, fn: Callable[..., T], *args: Any, big: int = 0) -> T:
        """``fn(handle, txn, now, *args)`` in one write transaction; with, once in
        ``_SWEEP_EVERY`` writes, a bounded sweep of expired entries, and after it, once in
        ``_CHECK_EVERY`` writes and after every 1/256 of the map written in values (``big`` is
        the bytes of this write's value), a look at how full the map is."""
        h = self._handle
        if h is None or self._pid != _PID:
            h = self._h()
        rounds = 0
        while True:
            sweep = self._writes % _SWEEP_EVERY == 0
            try:
                txn = h.env.begin(write=True)
            except lmdb.MapResizedError:
                h.resized()
                continue
            try:
                now = self._clock()  # after the lock: the order of the writes
                result = fn(h, txn, now, *args)
                swept = self._sweep(h, txn, now, _SWEEP_BATCH)[0] if sweep else 0
                txn.commit()
            except lmdb.MapFullError:
                txn.abort()
                rounds += 1
                if rounds > _ROOM_ROUNDS:
                    raise
                # Swept, then (from the second round) evicted, 1/64 of the map more each round.
                self._make_room(h, h.map_size // 64 * rounds,
                                ("sweep",) if rounds == 1 else ("sweep", "big", "any"))
                continue
            except BaseException:
                txn.abort()
                raise
            self._writes += 1
            if sweep:
                self.swept += swept
            self._big_written += big
            if self._writes % _CHECK_EVERY == 1 or self._big_written >= h.check_bytes:
                self._big_written = 0
                self._keep_headroom(h)
            return result

    def _used(self, h: _Handle) -> int:
        """Bytes of the map in use: the pages of our databases (free pages excluded; the main
        database and the free list are a few pages). ~4 us."""
        def pages(h: _Handle, txn: lmdb.Transaction) -> int:
            return sum(st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                       for st in map(txn.stat, h.dbs))
        return h.psize * self._read(pages)

    def _keep_headroom(self, h: _Handle) -> None:
        """Past ``_HIGH`` of the map, sweep and evict down to ``_LOW``: a full map refuses
        even the deletes that would make room (see ``_make_room``), so it must not fill up.
        Evicts as a write that found the map full would (big values first), only sooner."""
        try:
            used = self._used(h)
            if used > h.map_size * _HIGH:
                self._make_room(h, used - int(h.map_size * _LOW), ("sweep", "big", "any"),
                                _HEADROOM_MAX_ENTRIES)
            if self.big_capacity is not None:
                # Down to 63/64 of the capacity, so the next looks find little to do: every
                # process writing big values evicts at most what it finds over.
                big = self._read(lambda h, txn: int(txn.stat(h.big)["entries"]))
                over = big - self.big_capacity
                if over > 0:
                    self._make_room(h, 1 << 62, ("big",), min(
                        _HEADROOM_MAX_ENTRIES, over + self.big_capacity // 64))
        except lmdb.Error:
            pass  # the write it follows is committed: never fail it; the next look retries

    # -- values

    @staticmethod
    def _drop_value(h: _Handle, txn: lmdb.Transaction, k: bytes, raw: bytes) -> None:
        """Delete the value ``k`` (its stored record ``raw``) and its index entries."""
        exp = _EXP.unpack_from(raw)[0]
        txn.delete(k, db=h.values)
        if exp != _INF:
            txn.delete(_ix(exp, _F_VALUE, k), db=h.expiry)
        if len(raw) >= _BIG:
            txn.delete(_sortable(exp) + k, db=h.big)

    def _live(self, h: _Handle, txn: lmdb.Transaction, k: bytes,
              now: float) -> tuple[Any, float] | None:
        """The live (value, expires_at) of ``k`` in a write transaction; an expired one is
        removed."""
        raw = txn.get(k, db=h.values)
        if raw is None:
            return None
        exp = _EXP.unpack_from(raw)[0]
        if exp <= now:
            self._drop_value(h, txn, k, raw)
            return None
        return orjson.loads(raw[8:] if len(raw) < _BIG else memoryview(raw)[8:]), exp

    @staticmethod
    def _put(h: _Handle, txn: lmdb.Transaction, k: bytes, data: bytes, exp: float,
             old: tuple[float, int] | None) -> None:
        """Store ``data`` under ``k`` until ``exp``, keeping the indexes in step; ``old`` is
        the (expiry, record length) of the record it replaces, if any."""
        rec = _EXP.pack(exp) + data
        txn.put(k, rec, db=h.values)
        big = len(rec) >= _BIG
        if old is None:
            if exp != _INF:
                txn.put(_ix(exp, _F_VALUE, k), b"", db=h.expiry)
            if big:
                txn.put(_sortable(exp) + k, b"", db=h.big)
            return
        old_exp, old_len = old
        if old_exp != exp:
            if old_exp != _INF:
                txn.delete(_ix(old_exp, _F_VALUE, k), db=h.expiry)
            if exp != _INF:
                txn.put(_ix(exp, _F_VALUE, k), b"", db=h.expiry)
        was_big = old_len >= _BIG
        if was_big and (old_exp != exp or not big):
            txn.delete(_sortable(old_exp) + k, db=h.big)
        if big and (old_exp != exp or not was_big):
            txn.put(_sortable(exp) + k, b"", db=h.big)

    def _set(self, h: _Handle, txn: lmdb.Transaction, now: float, k: bytes, data: bytes,
             ttl_s: float | None) -> None:
        raw = txn.get(k, db=h.values)
        old = None if raw is None else (_EXP.unpack_from(raw)[0], len(raw))
        self._put(h, txn, k, data, _expiry(now, ttl_s), old)

    def _set_many(self, h: _Handle, txn: lmdb.Transaction, now: float,
                  rows: list[tuple[bytes, bytes, float | None]]) -> None:
        for k, data, ttl_s in rows:
            self._set(h, txn, now, k, data, ttl_s)

    def _set_if_absent(self, h: _Handle, txn: lmdb.Transaction, now: float, k: bytes,
                       data: bytes, ttl_s: float | None) -> bool:
        if self._live(h, txn, k, now) is not None:
            return False
        self._put(h, txn, k, data, _expiry(now, ttl_s), None)
        return True

    def _incr(self, h: _Handle, txn: lmdb.Transaction, now: float, k: bytes, amount: int,
              ttl_s: float | None) -> int:
        entry = self._live(h, txn, k, now)
        if entry is None:
            self._put(h, txn, k, orjson.dumps(amount), _expiry(now, ttl_s), None)
            return amount
        value = int(entry[0]) + amount
        # Small ints: the record stays below ``_BIG``, so its length does not matter here.
        self._put(h, txn, k, orjson.dumps(value), entry[1], (entry[1], 0))
        return value

    def _reserve(self, h: _Handle, txn: lmdb.Transaction, now: float, k: bytes, amount: int,
                 limit: int, ttl_s: float | None) -> tuple[bool, int]:
        entry = self._live(h, txn, k, now)
        total = 0 if entry is None else int(entry[0])
        new = reserve_decide(total, amount, limit)
        if new is None:
            return False, total
        # As in MemoryStore: a settle never creates the key (it would lack the TTL).
        if entry is not None:
            self._put(h, txn, k, orjson.dumps(new), entry[1], (entry[1], 0))
        elif amount > 0:
            self._put(h, txn, k, orjson.dumps(new), _expiry(now, ttl_s), None)
        return True, new

    # -- windows

    @staticmethod
    def _window(h: _Handle, txn: lmdb.Transaction, k: bytes, now: float,
                window_s: float) -> tuple[float, int, int, float | None]:
        raw = txn.get(k, db=h.windows)
        if raw is None:
            return (*window_counts(now, window_s, {}), None)
        prev_start, prev, start, curr, exp = _WIN.unpack(raw)
        counts = {prev_start: prev, start: curr} if exp > now else {}
        return (*window_counts(now, window_s, counts), exp)

    @staticmethod
    def _record(h: _Handle, txn: lmdb.Transaction, k: bytes, start: float, window_s: float,
                prev: int, curr: int, old_exp: float | None) -> None:
        # As MemoryStore: both windows, until the current one stops counting as the previous.
        exp = start + 2 * window_s
        txn.put(k, _WIN.pack(start - window_s, prev, start, curr, exp), db=h.windows)
        if old_exp != exp:
            if old_exp is not None:
                txn.delete(_ix(old_exp, _F_WINDOW, k), db=h.expiry)
            txn.put(_ix(exp, _F_WINDOW, k), b"", db=h.expiry)

    def _window_hit(self, h: _Handle, txn: lmdb.Transaction, now: float, k: bytes, cost: int,
                    limit: int, window_s: float) -> WindowHit:
        start, prev, curr, old_exp = self._window(h, txn, k, now, window_s)
        hit = window_decide(now, window_s, start, prev, curr, cost, limit)
        if hit.allowed and cost:
            self._record(h, txn, k, start, window_s, prev, curr + cost, old_exp)
        return hit

    def _window_adjust(self, h: _Handle, txn: lmdb.Transaction, now: float, k: bytes,
                       delta: int, window_s: float) -> None:
        start, prev, curr, old_exp = self._window(h, txn, k, now, window_s)
        new = max(0, curr + delta)
        if new != curr:
            self._record(h, txn, k, start, window_s, prev, new, old_exp)

    # -- leases

    @staticmethod
    def _prune(h: _Handle, txn: lmdb.Transaction, k: bytes,
               now: float) -> tuple[int, float, float]:
        """Remove the expired holders of ``k``: (live holders, earliest and latest expiry)."""
        prefix = _LEN.pack(len(k)) + k
        cur = txn.cursor(db=h.holders)
        count, due, latest = 0, _INF, -_INF
        expired: list[bytes] = []
        if cur.set_range(prefix):
            for hk, raw in cur:
                if not hk.startswith(prefix):
                    break
                exp = _EXP.unpack(raw)[0]
                if exp <= now:
                    expired.append(hk)
                else:
                    count += 1
                    due = min(due, exp)
                    latest = max(latest, exp)
        for hk in expired:
            txn.delete(hk, db=h.holders)
        return count, due, latest

    def _lease_acquire(self, h: _Handle, txn: lmdb.Transaction, now: float, k: bytes,
                       hk: bytes, limit: int, ttl_s: float) -> bool:
        raw = txn.get(k, db=h.leases)
        if raw is None:
            count, due, indexed = 0, _INF, None
        else:
            count, due, indexed = _META.unpack(raw)
            if due <= now:
                count, due, _ = self._prune(h, txn, k, now)
        # Every holder still stored is live now (``due`` is no later than any of them).
        held = count > 0 and txn.get(hk, db=h.holders) is not None
        if not held and count >= limit:
            if raw is not None:
                if count == 0:  # limit 0, and every holder gone
                    txn.delete(k, db=h.leases)
                    txn.delete(_ix(indexed, _F_LEASE, k), db=h.expiry)  # type: ignore[arg-type]
                else:
                    txn.put(k, _META.pack(count, due, indexed), db=h.leases)
            return False
        expires = now + ttl_s
        txn.put(hk, _EXP.pack(expires), db=h.holders)
        if not held:
            count += 1
        if indexed is None:
            indexed = expires
            txn.put(_ix(indexed, _F_LEASE, k), b"", db=h.expiry)
        txn.put(k, _META.pack(count, min(due, expires), indexed), db=h.leases)
        return True

    @staticmethod
    def _lease_release(h: _Handle, txn: lmdb.Transaction, now: float, k: bytes,
                       hk: bytes) -> None:
        raw = txn.get(k, db=h.leases)
        if raw is None or not txn.delete(hk, db=h.holders):
            return
        count, due, indexed = _META.unpack(raw)
        if count <= 1:
            txn.delete(k, db=h.leases)
            txn.delete(_ix(indexed, _F_LEASE, k), db=h.expiry)
        else:
            txn.put(k, _META.pack(count - 1, due, indexed), db=h.leases)

    # -- delete

    def _delete(self, h: _Handle, txn: lmdb.Transaction, now: float, k: bytes) -> None:
        raw = txn.get(k, db=h.values)
        if raw is not None:
            self._drop_value(h, txn, k, raw)
        raw = txn.get(k, db=h.windows)
        if raw is not None:
            txn.delete(k, db=h.windows)
            txn.delete(_ix(_EXP.unpack_from(raw, _WIN_EXP_AT)[0], _F_WINDOW, k), db=h.expiry)
        raw = txn.get(k, db=h.leases)
        if raw is not None:
            txn.delete(k, db=h.leases)
            txn.delete(_ix(_META.unpack(raw)[2], _F_LEASE, k), db=h.expiry)
            self._prune(h, txn, k, _INF)  # every holder counts as expired: all removed

    # -- keeping the size bounded

    def _sweep(self, h: _Handle, txn: lmdb.Transaction, now: float,
               limit: int) -> tuple[int, int]:
        """Remove up to ``limit`` expired entries, soonest-expired first: (entries, bytes)."""
        bound = _sortable(now)
        due: list[bytes] = []
        cur = txn.cursor(db=h.expiry)
        if cur.first():
            for ik in cur.iternext(values=False):
                if ik[:8] > bound or len(due) >= limit:
                    break
                due.append(ik)
        freed = 0
        for ik in due:
            txn.delete(ik, db=h.expiry)
            family, k = ik[8:9], ik[9:]
            if family == _F_VALUE:
                raw = txn.get(k, db=h.values)
                if raw is not None and _EXP.unpack_from(raw)[0] <= now:
                    self._drop_value(h, txn, k, raw)
                    freed += len(raw) + len(k)
            elif family == _F_WINDOW:
                raw = txn.get(k, db=h.windows)
                if raw is not None and _EXP.unpack_from(raw, _WIN_EXP_AT)[0] <= now:
                    txn.delete(k, db=h.windows)
                    freed += len(raw) + len(k)
            else:
                raw = txn.get(k, db=h.leases)
                if raw is None:
                    continue
                count, first, latest = self._prune(h, txn, k, now)
                if count == 0:
                    txn.delete(k, db=h.leases)
                    freed += len(raw) + len(k)
                else:  # still held: look again when the last of its holders is due
                    txn.put(k, _META.pack(count, first, latest), db=h.leases)
                    txn.put(_ix(latest, _F_LEASE, k), b"", db=h.expiry)
        return len(due), freed

    def _evict(self, h: _Handle, txn: lmdb.Transaction, limit: int, want: int,
               big_only: bool, after: bytes) -> tuple[int, int, bytes]:
        """Remove up to ``limit`` values (or ``want`` bytes of them), soonest-to-expire first:
        the big ones (``big`` index), else any with a TTL (``expiry`` index, scanned from
        ``after``). Returns (values, bytes, where to resume)."""
        index = h.big if big_only else h.expiry
        victims: list[tuple[bytes, bytes]] = []  # (index entry, key)
        cur = txn.cursor(db=index)
        if cur.set_range(after) if after else cur.first():
            for ik in cur.iternext(values=False):
                after = ik + b"\x00"
                if big_only:
                    victims.append((ik, ik[8:]))
                elif ik[8:9] == _F_VALUE:
                    victims.append((ik, ik[9:]))
                if len(victims) >= limit:
                    break
        freed = n = 0
        for ik, k in victims:
            if freed >= want:
                break
            n += 1
            raw = txn.get(k, db=h.values)
            if raw is None:
                txn.delete(ik, db=index)  # an entry without its value: never left to loop on
                continue
            self._drop_value(h, txn, k, raw)
            freed += len(raw) + len(k)
        return n, freed, after

    def _make_room(self, h: _Handle, want: int, stages: tuple[str, ...],
                   max_entries: int | None = None) -> None:
        """Free about ``want`` bytes: expired entries first (``sweep``), then values of
        ``_BIG`` bytes or more soonest-to-expire first (``big``: the cache's), then any value
        with a TTL (``any``: the last resort of a write that found the map full).

        Each batch is its own transaction. A map that is really full refuses even a delete
        (measured: ``MDB_MAP_FULL`` from ``mdb_del``): copy-on-write needs free pages, and the
        pages the last commit freed are reusable only after the next one. So batches start
        small, shrink when refused and grow when they pass, and if not even one entry can be
        deleted the map grows (``_grow``). ``max_entries`` bounds the work (and the pause)."""
        h.env.reader_check()  # a dead process's reader would pin old pages
        freed = done = 0
        batch = _ROOM_FIRST_BATCH
        for stage in stages:
            after = b""
            while freed < want and (max_entries is None or done < max_entries):
                most = batch if max_entries is None else min(batch, max_entries - done)
                try:
                    with h.env.begin(write=True) as txn:
                        if stage == "sweep":
                            n, f = self._sweep(h, txn, self._clock(), most)
                        else:
                            n, f, resume = self._evict(h, txn, most, want - freed,
                                                       stage == "big", after)
                except lmdb.MapFullError:
                    if batch == 1:
                        self._grow(h)
                    batch = max(1, batch // 4)
                    continue
                except lmdb.MapResizedError:
                    h.resized()
                    continue
                freed += f
                done += n
                if stage == "sweep":
                    self.swept += n
                else:
                    self.evicted += n
                    if stage == "any":
                        after = resume
                if n < most:
                    break
                batch = min(_ROOM_BATCH, batch * 2)

    def _grow(self, h: _Handle) -> None:
        """The last resort, when the map is so full that not even one entry can be deleted:
        grow it by 1/64 (every process follows: ``MapResizedError``)."""
        h.resized(h.map_size + max(h.map_size // 64, 1 << 20))
        self.grown += 1

    # -- the protocol

    async def get(self, key: str) -> Any | None:
        h = self._handle
        if h is None or self._pid != _PID:
            h = self._h()
        k = _kb(key)
        while True:
            try:
                txn = h.env.begin(buffers=True)  # read-only: takes no lock
                break
            except lmdb.MapResizedError:
                h.resized()
        try:
            raw = txn.get(k, None, h.values)
            if raw is None or _EXP.unpack_from(raw)[0] <= self._clock():
                return None
            return orjson.loads(raw[8:])  # a memoryview into the map: parsed in the txn
        finally:
            txn.abort()

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        data = orjson.dumps(value)  # fail here, in the caller, on a value JSON can't hold
        self._write(self._set, _kb(key), data, ttl_s, big=len(data))

    async def get_many(self, keys: Sequence[str]) -> list[Any | None]:
        def read(h: _Handle, txn: lmdb.Transaction) -> list[Any | None]:  # one transaction
            now = self._clock()
            out: list[Any | None] = []
            for key in keys:
                raw = txn.get(_kb(key), None, h.values)
                out.append(None if raw is None or _EXP.unpack_from(raw)[0] <= now
                           else orjson.loads(raw[8:]))  # memoryviews: parsed in the txn
            return out
        return self._read(read)

    async def set_many(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        """One write transaction for the lot (~3 us a key: 10,000 block the loop ~30 ms)."""
        rows = [(_kb(key), orjson.dumps(value), ttl_s) for key, value, ttl_s in items]
        if rows:
            self._write(self._set_many, rows, big=sum(len(data) for _, data, _ in rows))

    async def set_if_absent(self, key: str, value: Any, ttl_s: float | None = None) -> bool:
        data = orjson.dumps(value)
        return self._write(self._set_if_absent, _kb(key), data, ttl_s,
                           big=len(data))

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        return self._write(self._incr, _kb(key), amount, ttl_s)

    async def reserve(self, key: str, amount: int, limit: int,
                      ttl_s: float | None = None) -> tuple[bool, int]:
        return self._write(self._reserve, _kb(key), amount, limit, ttl_s)

    async def window_hit(self, key: str, cost: int, limit: int, window_s: float) -> WindowHit:
        return self._write(self._window_hit, _kb(key), cost, limit, window_s)

    async def window_adjust(self, key: str, delta: int, window_s: float) -> None:
        self._write(self._window_adjust, _kb(key), delta, window_s)

    async def lease_acquire(self, key: str, holder: str, limit: int, ttl_s: float) -> bool:
        """Idempotent per holder, as in MemoryStore: a holder re-acquiring keeps its one slot
        and renews its lease."""
        k = _kb(key)
        return self._write(self._lease_acquire, k,
                           _LEN.pack(len(k)) + k + _kb(holder, _HOLDER_MAX), limit, ttl_s)

    async def lease_release(self, key: str, holder: str) -> None:
        k = _kb(key)
        self._write(self._lease_release, k, _LEN.pack(len(k)) + k + _kb(holder, _HOLDER_MAX))

    async def delete(self, key: str) -> None:
        self._write(self._delete, _kb(key))

    async def ping(self) -> bool:
        try:
            return self._read(lambda h, txn: True)
        except (lmdb.Error, OSError, RuntimeError):  # RuntimeError: closed
            return False

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            handle, self._handle = self._handle, None
            if handle is not None and self._pid == os.getpid():
                _release(handle)

    def size(self) -> int:
        """Keys held, live or not yet swept: values, windows and lease keys (as
        ``MemoryStore.size``)."""
        def count(h: _Handle, txn: lmdb.Transaction) -> int:
            return sum(txn.stat(db)["entries"] for db in (h.values, h.windows, h.leases))
        return self._read(count)
