"""The embedded hot-state store: dicts with lazy expiry, for one process.

Every method completes without awaiting, so each one is atomic with respect to other
coroutines on the event loop, which is what makes ``set_if_absent``, ``incr``, ``reserve``,
``window_hit`` and ``lease_acquire`` exact here. Expired entries are dropped when touched and by
a periodic sweep, so memory stays bounded by the live keys.

Values, windows and leases are kept apart (as the SQLite store keeps them in three tables); a
key is meant to be used by one family of operations, and ``delete`` clears it whichever it is.

The sliding-window and reservation arithmetic is written once, here (``window_counts``,
``window_decide``, ``reserve_decide``), and the other stores import it, so every backend gives
the same answers for the same sequence of calls and the same clock.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bastion.stores.base import WindowHit

_SWEEP_EVERY = 4096
#: ... and at most once per this many seconds of the store's clock: a sweep walks every key,
#: and with 10,000 tenants' windows, budgets and cache entries (~50,000 keys) one every 4,096
#: writes was ~5 ms every ~300 requests, 17 µs per request; once a second it was still ~5 µs
#: per request at 3,000 requests/s (cProfile of the app in-process, 10,000 tenants against
#: one). Expired entries are dropped when touched anyway; the sweep only bounds the memory
#: of keys nobody touches again (a tenant gone quiet, a window long past), and ten seconds'
#: worth of those is little.
_SWEEP_MIN_INTERVAL_S = 10.0
#: Slack in the window comparison for float rounding (counts are whole numbers: this changes
#: no decision between whole counts).
_EPS = 1e-9
#: Added to every computed ``retry_after_s`` so that waiting exactly that long is enough: a
#: wall-clock reading near 1.7e9 s is only exact to 2.4e-7 s (one float ulp).
_RETRY_PAD_S = 1e-6


def window_counts(now: float, window_s: float,
                  counts: Mapping[float, int]) -> tuple[float, int, int]:
    """(current window start, previous window's count, current window's count).

    Windows are aligned to multiples of ``window_s`` on the clock; both starts are computed by
    the same multiplication, so a stored start compares equal to a recomputed one."""
    index = math.floor(now / window_s)
    start = index * window_s
    return start, counts.get((index - 1) * window_s, 0), counts.get(start, 0)


def window_decide(now: float, window_s: float, start: float, prev: int, curr: int,
                  cost: int, limit: int) -> WindowHit:
    """Decide one hit; the caller adds ``cost`` to the current window when it is allowed."""
    elapsed = now - start
    weighted = prev * (1.0 - elapsed / window_s) + curr
    reset_s = start + window_s - now
    if cost > limit:  # never fits, however long the caller waits
        return WindowHit(False, weighted + cost, limit, window_s, reset_s)
    if weighted + cost <= limit + _EPS:
        return WindowHit(True, weighted + cost, limit, 0.0, reset_s)
    if curr + cost <= limit:
        # Fits later in this window, once the previous window's weight has decayed enough:
        # prev * (1 - (elapsed + t) / window_s) <= limit - cost - curr.
        room = limit - cost - curr
        retry = window_s * (1.0 - room / prev) - elapsed
    else:
        # Not in this window; in the next one, this window's count becomes the decaying one:
        # curr * (1 - e / window_s) + cost <= limit, at e seconds into the next window.
        retry = reset_s + window_s * (1.0 - (limit - cost) / curr)
    return WindowHit(False, weighted + cost, limit, max(0.0, retry) + _RETRY_PAD_S, reset_s)


def reserve_decide(total: int, amount: int, limit: int) -> int | None:
    """The total after ``reserve(amount)`` on ``total``, or None when it does not fit: a
    negative amount (a settlement) always applies and never goes below zero."""
    if amount < 0:
        return max(0, total + amount)
    if total + amount <= limit:
        return total + amount
    return None


class MemoryStore:
    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 capacity: int | None = None) -> None:
        """``capacity`` bounds the values held (``set`` and friends): a new key beyond it
        evicts the oldest-written one, live or not (``evicted`` counts them). For a cache;
        never for state that must not be forgotten (budgets, claims)."""
        # Monotonic by default: one process, and no jumps when the wall clock is set.
        self._clock = clock
        self.capacity = capacity
        self.evicted = 0
        # key -> (value, expires_at or None).
        self._data: dict[str, tuple[Any, float | None]] = {}
        # key -> ({window start: count} for the current and previous window, expires_at).
        self._windows: dict[str, tuple[dict[float, int], float]] = {}
        # key -> {holder: expires_at}, and key -> the earliest of those expiries (a key's
        # holders are scanned for expired leases only once that time has come, so taking a
        # slot costs the same with 1,000 holders as with one).
        self._leases: dict[str, dict[str, float]] = {}
        self._lease_due: dict[str, float] = {}
        self._ops = 0
        self._swept_at = -math.inf

    def _live(self, key: str, now: float) -> tuple[Any, float | None] | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= now:
            del self._data[key]
            return None
        return entry

    def _tick(self) -> float:
        """The time now, sweeping every expired entry once in ``_SWEEP_EVERY`` writes (and
        ``_SWEEP_MIN_INTERVAL_S``)."""
        now = self._clock()
        self._ops += 1
        if self._ops % _SWEEP_EVERY == 0 and now - self._swept_at >= _SWEEP_MIN_INTERVAL_S:
            self._swept_at = now
            self._sweep(now)
        return now

    def _sweep(self, now: float) -> None:
        for k in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
            del self._data[k]
        for k in [k for k, (_, exp) in self._windows.items() if exp <= now]:
            del self._windows[k]
        for k in list(self._leases):
            self._live_leases(k, now)

    @staticmethod
    def _expiry(now: float, ttl_s: float | None) -> float | None:
        return None if ttl_s is None else now + ttl_s

    async def get(self, key: str) -> Any | None:
        entry = self._live(key, self._clock())
        return None if entry is None else entry[0]

    async def get_many(self, keys: Sequence[str]) -> list[Any | None]:
        now = self._clock()
        return [None if (entry := self._live(key, now)) is None else entry[0] for key in keys]

    def _make_room(self, key: str) -> None:
        """Before writing ``key``: with a capacity, evict the oldest-written values beyond it
        (dicts keep insertion order, so the first key is the oldest: O(1))."""
        data = self._data
        if key not in data and len(data) >= self.capacity:  # type: ignore[operator]
            # A 64th at a time: taking the first key of a dict skips the slots of the keys
            # deleted before it, so one at a time would cost O(n) per eviction.
            for old in list(itertools.islice(data, max(1, self.capacity // 64))):  # type: ignore[operator]
                del data[old]
                self.evicted += 1

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        now = self._tick()
        if self.capacity is not None:
            self._make_room(key)
        self._data[key] = (value, self._expiry(now, ttl_s))

    async def set_many(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        for key, value, ttl_s in items:
            await self.set(key, value, ttl_s)

    async def set_if_absent(self, key: str, value: Any, ttl_s: float | None = None) -> bool:
        now = self._tick()
        if self._live(key, now) is not None:
            return False
        if self.capacity is not None:
            self._make_room(key)
        self._data[key] = (value, self._expiry(now, ttl_s))
        return True

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        now = self._tick()
        entry = self._live(key, now)
        if entry is None:
            self._data[key] = (amount, self._expiry(now, ttl_s))
            return amount
        value = int(entry[0]) + amount
        self._data[key] = (value, entry[1])
        return value

    async def reserve(self, key: str, amount: int, limit: int,
                      ttl_s: float | None = None) -> tuple[bool, int]:
        now = self._tick()
        entry = self._live(key, now)
        total = 0 if entry is None else int(entry[0])
        new = reserve_decide(total, amount, limit)
        if new is None:
            return False, total
        # A settle (or a zero reservation) never creates the key: it would create it without
        # the period's TTL, and the next reservation would then not set one.
        if entry is not None:
            self._data[key] = (new, entry[1])
        elif amount > 0:
            self._data[key] = (new, self._expiry(now, ttl_s))
        return True, new

    def _window(self, key: str, now: float, window_s: float) -> tuple[float, int, int]:
        entry = self._windows.get(key)
        counts = entry[0] if entry is not None and entry[1] > now else {}
        return window_counts(now, window_s, counts)

    def _record(self, key: str, start: float, window_s: float, prev: int, curr: int) -> None:
        # The current window counts until two windows from its start (as the previous one).
        self._windows[key] = ({start - window_s: prev, start: curr}, start + 2 * window_s)

    async def window_hit(self, key: str, cost: int, limit: int, window_s: float) -> WindowHit:
        now = self._tick()
        start, prev, curr = self._window(key, now, window_s)
        hit = window_decide(now, window_s, start, prev, curr, cost, limit)
        if hit.allowed and cost:
            self._record(key, start, window_s, prev, curr + cost)
        return hit

    async def window_adjust(self, key: str, delta: int, window_s: float) -> None:
        now = self._tick()
        start, prev, curr = self._window(key, now, window_s)
        new = max(0, curr + delta)
        if new != curr:
            self._record(key, start, window_s, prev, new)

    def _live_leases(self, key: str, now: float) -> dict[str, float]:
        held = self._leases.get(key)
        if held is None:
            return {}
        if self._lease_due.get(key, now) <= now:
            for holder in [h for h, exp in held.items() if exp <= now]:
                del held[holder]
            if not held:
                del self._leases[key]
                self._lease_due.pop(key, None)
            else:
                self._lease_due[key] = min(held.values())
        return held

    async def lease_acquire(self, key: str, holder: str, limit: int, ttl_s: float) -> bool:
        """A holder that already holds a slot keeps that one slot and its lease is renewed
        (acquiring is idempotent per holder, so a retried acquire never takes two slots)."""
        now = self._tick()
        held = self._live_leases(key, now)
        if holder not in held and len(held) >= limit:
            return False
        expires = now + ttl_s
        self._leases.setdefault(key, held)[holder] = expires
        due = self._lease_due.get(key)
        if due is None or expires < due:
            self._lease_due[key] = expires
        return True

    async def lease_release(self, key: str, holder: str) -> None:
        held = self._leases.get(key)
        if held is not None:
            held.pop(holder, None)
            if not held:
                del self._leases[key]
                self._lease_due.pop(key, None)

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)
        self._windows.pop(key, None)
        self._leases.pop(key, None)
        self._lease_due.pop(key, None)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._data.clear()
        self._windows.clear()
        self._leases.clear()
        self._lease_due.clear()

    def size(self) -> int:
        """Keys held, live or not yet swept (deliberately not ``__len__``: an empty store must
        stay truthy, or ``store or MemoryStore()`` would silently swap it)."""
        return len(self._data) + len(self._windows) + len(self._leases)
