"""Bounded concurrency per dependency, with a bounded wait.

A provider that slows down must not absorb every worker coroutine: at most ``max_concurrency``
calls are in flight; a caller waits at most ``max_wait_s`` (and never past its deadline) for a
slot, then fails fast with ``BulkheadFull`` so the fallback chain can try elsewhere.
Concurrency is a property of this process's connections, so this state is deliberately local.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bastion.config import BulkheadPolicy
from bastion.domain.errors import BulkheadFull
from bastion.pipeline.call import AttemptCall
from bastion.pipeline.stage import Handler
from bastion.pipeline.stream import TargetStream


class Bulkhead:
    __slots__ = ("__weakref__", "_sem", "max_concurrency", "max_wait_s", "name", "rejected",
                 "waited", "waited_s", "waiting")

    def __init__(self, name: str, policy: BulkheadPolicy) -> None:
        self.name = name
        self.max_concurrency = policy.max_concurrency
        self.max_wait_s = policy.max_wait_s
        self._sem = asyncio.Semaphore(policy.max_concurrency)
        self.waiting = 0
        self.rejected = 0
        #: Callers that had to wait for a slot, and their total wait (seconds).
        self.waited = 0
        self.waited_s = 0.0

    @property
    def in_flight(self) -> int:
        return self.max_concurrency - self._sem._value

    async def acquire(self, remaining_s: float) -> None:
        if not self._sem.locked():
            await self._sem.acquire()  # a free slot: no timer, no task
            return
        wait = min(self.max_wait_s, remaining_s)
        if wait <= 0:
            self.rejected += 1
            raise BulkheadFull(f"{self.name}: all {self.max_concurrency} slots are busy")
        self.waiting += 1
        self.waited += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(wait):
                await self._sem.acquire()
        except TimeoutError:
            self.rejected += 1
            raise BulkheadFull(
                f"{self.name}: all {self.max_concurrency} slots stayed busy for {wait:.3g}s"
            ) from None
        finally:
            self.waiting -= 1
            self.waited_s += time.monotonic() - started

    def release(self) -> None:
        self._sem.release()


class BulkheadStage:
    """Holds a slot of the provider's bulkhead (and of the target's own, if it has one) for the
    duration of the attempt. Streams keep their slot until they end: see ``router``."""

    def __init__(self, by_provider: dict[str, Bulkhead], by_target: dict[str, Bulkhead]) -> None:
        self.by_provider = by_provider
        self.by_target = by_target

    def for_attempt(self, attempt: AttemptCall) -> list[Bulkhead]:
        heads = [self.by_provider[attempt.target.provider]]
        own = self.by_target.get(attempt.target.key)
        if own is not None:
            heads.append(own)
        return heads

    async def __call__(self, attempt: AttemptCall, next: Handler[AttemptCall, Any]) -> Any:
        acquired: list[Bulkhead] = []
        try:
            for head in self.for_attempt(attempt):
                await head.acquire(attempt.chat.ctx.remaining())
                acquired.append(head)
        except BaseException:
            for head in acquired:
                head.release()
            raise
        release = _Releaser(acquired)
        try:
            result = await next(attempt)
        except BaseException:
            release()
            raise
        if isinstance(result, TargetStream):
            # A stream keeps its slot until the client has it all, or goes away.
            result.add_done_callback(release)
        else:
            release()
        return result


class _Releaser:
    """Releases a set of slots exactly once, however many paths try."""

    __slots__ = ("_heads",)

    def __init__(self, heads: list[Bulkhead]) -> None:
        self._heads: list[Bulkhead] | None = heads

    def __call__(self, _outcome: BaseException | None = None) -> None:
        heads, self._heads = self._heads, None
        for head in heads or ():
            head.release()
