"""Store protocols: the only way a stage keeps state.

Stages hold no global state; whatever must survive a request (breaker state today; limits,
cache and idempotency records later) lives behind this small protocol so the same stage runs
against process memory on a laptop and against Redis across replicas. Every operation that
must be exact under concurrency is a single atomic call (``set_if_absent``, ``incr``), never a
read followed by a write.
"""

from __future__ import annotations

from typing import Any, Protocol


class KeyValueStore(Protocol):
    async def get(self, key: str) -> Any | None:
        ...

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        ...

    async def set_if_absent(self, key: str, value: Any, ttl_s: float | None = None) -> bool:
        """Atomically store ``value`` unless the key holds a live value; True if stored."""
        ...

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Atomically add ``amount`` and return the new value. The TTL is set when the key is
        created and not extended by later increments (a fixed window)."""
        ...

    async def delete(self, key: str) -> None:
        ...

    async def ping(self) -> bool:
        """Reachability for ``/ready``."""
        ...

    async def aclose(self) -> None:
        ...
