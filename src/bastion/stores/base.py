"""Store protocols: the only way a stage keeps state.

Stages hold no global state; whatever must survive a request (breaker state today; limits,
cache and idempotency records later) lives behind this small protocol so the same stage runs
against process memory on a laptop and against Redis across replicas. Every operation that
must be exact under concurrency is a single atomic call (``set_if_absent``, ``incr``), never a
read followed by a write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol


class WindowHit(NamedTuple):
    """The outcome of one sliding-window rate-limit hit. (A named tuple: a frozen dataclass
    sets each field through ``object.__setattr__``: 0.56 µs against 0.22 for five fields,
    and a request makes two.)"""

    allowed: bool
    #: The weighted count after this hit (or what it would have been, when refused).
    count: float
    limit: int
    #: Seconds until enough of the window has slid by for ``cost`` to fit (0 when allowed).
    retry_after_s: float
    #: Seconds until the current window ends (the ``x-ratelimit-reset-*`` figure).
    reset_s: float

    @property
    def remaining(self) -> int:
        return max(0, int(self.limit - self.count))


class KeyValueStore(Protocol):
    #: True when other processes see the same state (SQLite, Redis): then stages that
    #: coordinate concurrent requests (the cache's single flight) coordinate through the store
    #: too, not only inside this process.
    shared: bool

    async def get(self, key: str) -> Any | None:
        ...

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        ...

    async def get_many(self, keys: Sequence[str]) -> list[Any | None]:
        """``get`` for each key, in order, in one step: a request's budget periods are read
        from the state file in one trip, not one per period."""
        ...

    async def set_many(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        """``set`` for each (key, value, ttl_s), all in one step: writing totals behind in a
        batch costs one transaction, not one per key."""
        ...

    async def set_if_absent(self, key: str, value: Any, ttl_s: float | None = None) -> bool:
        """Atomically store ``value`` unless the key holds a live value; True if stored."""
        ...

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Atomically add ``amount`` and return the new value. The TTL is set when the key is
        created and not extended by later increments (a fixed window)."""
        ...

    async def reserve(self, key: str, amount: int, limit: int,
                      ttl_s: float | None = None) -> tuple[bool, int]:
        """Atomically add ``amount`` only if the total stays <= ``limit``.

        Returns (reserved, total): the new total when reserved, else the unchanged one. The
        TTL is set when the key is created (a budget period). A negative ``amount`` always
        applies (settling a reservation) and the total never goes below zero."""
        ...

    async def window_hit(self, key: str, cost: int, limit: int, window_s: float) -> WindowHit:
        """A sliding-window-counter rate limit, decided and recorded in one atomic step.

        The weighted count is ``previous_window * (1 - elapsed_fraction) + current_window``;
        the hit is recorded in the current window only if that count plus ``cost`` stays
        <= ``limit``. ``cost`` 0 only reports the state."""
        ...

    async def window_adjust(self, key: str, delta: int, window_s: float) -> None:
        """Add ``delta`` (may be negative) to the current window of ``key``, never below zero:
        settling an estimate (tokens per minute) with the real figure after the call."""
        ...

    async def lease_acquire(self, key: str, holder: str, limit: int, ttl_s: float) -> bool:
        """Hold one of ``limit`` slots of ``key`` as ``holder`` for at most ``ttl_s`` (a crashed
        holder's slot comes back when its lease expires). True if a slot was taken."""
        ...

    async def lease_release(self, key: str, holder: str) -> None:
        ...

    async def delete(self, key: str) -> None:
        ...

    async def ping(self) -> bool:
        """Reachability for ``/ready``."""
        ...

    async def aclose(self) -> None:
        ...
