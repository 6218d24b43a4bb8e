"""The embedded hot-state store: a dict with lazy expiry, for one process.

Every method completes without awaiting, so each one is atomic with respect to other
coroutines on the event loop, which is what makes ``set_if_absent`` and ``incr`` exact here.
Expired keys are dropped when touched and by a periodic sweep, so memory stays bounded by the
live keys.
"""

from __future__ import annotations

import time
from typing import Any

_SWEEP_EVERY = 4096


class MemoryStore:
    def __init__(self) -> None:
        # key -> (value, expires_at or None); expires_at on the monotonic clock.
        self._data: dict[str, tuple[Any, float | None]] = {}
        self._ops = 0

    def _live(self, key: str, now: float) -> tuple[Any, float | None] | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= now:
            del self._data[key]
            return None
        return entry

    def _tick(self, now: float) -> None:
        self._ops += 1
        if self._ops % _SWEEP_EVERY == 0:
            dead = [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]
            for k in dead:
                del self._data[k]

    @staticmethod
    def _expiry(now: float, ttl_s: float | None) -> float | None:
        return None if ttl_s is None else now + ttl_s

    async def get(self, key: str) -> Any | None:
        entry = self._live(key, time.monotonic())
        return None if entry is None else entry[0]

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        now = time.monotonic()
        self._tick(now)
        self._data[key] = (value, self._expiry(now, ttl_s))

    async def set_if_absent(self, key: str, value: Any, ttl_s: float | None = None) -> bool:
        now = time.monotonic()
        self._tick(now)
        if self._live(key, now) is not None:
            return False
        self._data[key] = (value, self._expiry(now, ttl_s))
        return True

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        now = time.monotonic()
        self._tick(now)
        entry = self._live(key, now)
        if entry is None:
            self._data[key] = (amount, self._expiry(now, ttl_s))
            return amount
        value = int(entry[0]) + amount
        self._data[key] = (value, entry[1])
        return value

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._data.clear()

    def size(self) -> int:
        """Keys held, live or not yet swept (deliberately not ``__len__``: an empty store must
        stay truthy, or ``store or MemoryStore()`` would silently swap it)."""
        return len(self._data)
