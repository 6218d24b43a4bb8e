"""Circuit breaker per target, with its state in a store so replicas can share it.

closed: calls flow; failures are counted in a sliding window (two fixed buckets, weighted).
open: after ``failure_threshold`` failures within ``window_s`` the target is skipped without a
  call for ``cooldown_s``.
half-open: after the cooldown exactly one probe is let through (an atomic set-if-absent, so
  only one replica's request probes); its success closes the breaker, its failure re-opens it.

Only failures that say something about the target count: timeouts, connection errors, 5xx,
429 and malformed responses. A rejected request (4xx), a full bulkhead or a client that went
away do not. Wall-clock time is used because the state may be shared between machines.

The success path of a closed breaker costs one store read and no write.
"""

from __future__ import annotations

import time
from typing import Any

from bastion.config import BreakerPolicy
from bastion.domain.errors import (
    BulkheadFull,
    CircuitOpen,
    DependencyError,
    StreamInterrupted,
)
from bastion.pipeline.call import AttemptCall
from bastion.pipeline.stage import Handler
from bastion.pipeline.stream import TargetStream
from bastion.stores.base import KeyValueStore


def counts_against_target(exc: BaseException | None) -> bool:
    if not isinstance(exc, DependencyError) or isinstance(exc, (BulkheadFull, CircuitOpen)):
        return False
    if isinstance(exc, StreamInterrupted):
        return False
    return exc.retryable


class CircuitBreaker:
    """The state machine for one target. ``clock`` is injectable for tests."""

    def __init__(self, key: str, policy: BreakerPolicy, store: KeyValueStore,
                 clock: Any = time.time) -> None:
        self.key = key
        self.policy = policy
        self.store = store
        self.clock = clock
        self._open_key = f"breaker:{key}:open"
        self._probe_key = f"breaker:{key}:probe"
        self._fail_prefix = f"breaker:{key}:fail:"
        #: When the breaker was last seen open by this process (None: last seen closed), and
        #: how many times this process opened it: what the metrics report without a store
        #: read (``observability.pipeline_metrics``).
        self.seen_open_at: float | None = None
        self.opened = 0

    def seen_state(self) -> str:
        """The state as of this process's last look at the store."""
        opened_at = self.seen_open_at
        if opened_at is None:
            return "closed"
        return "open" if self.clock() - opened_at < self.policy.cooldown_s else "half_open"

    async def state(self) -> str:
        opened_at = self.seen_open_at = await self.store.get(self._open_key)
        if opened_at is None:
            return "closed"
        if self.clock() - opened_at < self.policy.cooldown_s:
            return "open"
        return "half_open"

    async def allow(self) -> bool:
        """Let a call through or raise ``CircuitOpen`` to skip the target without calling it.
        Returns True when this call is the single half-open probe, False for a normal call."""
        opened_at = self.seen_open_at = await self.store.get(self._open_key)
        if opened_at is None:
            return False  # closed: a normal call, not a probe
        if self.clock() - opened_at < self.policy.cooldown_s:
            raise CircuitOpen(f"{self.key}: circuit open", retry_after=self.policy.cooldown_s)
        # half-open: exactly one probe at a time, bounded so a lost probe cannot wedge it
        if await self.store.set_if_absent(self._probe_key, self.clock(),
                                          ttl_s=max(self.policy.cooldown_s, 1.0)):
            return True
        raise CircuitOpen(f"{self.key}: circuit half-open, a probe is in flight")

    async def record(self, exc: BaseException | None, probe: bool) -> None:
        if exc is None:
            if probe:
                await self.store.delete(self._open_key)
                await self.store.delete(self._probe_key)
                self.seen_open_at = None
            return
        if not counts_against_target(exc):
            if probe:  # the probe said nothing about the target: let another one try
                await self.store.delete(self._probe_key)
            return
        now = self.clock()
        if probe:
            await self.store.set(self._open_key, now)
            await self.store.delete(self._probe_key)
            self.seen_open_at = now
            self.opened += 1
            return
        failures = self._window_failures(now, await self._count_failure(now))
        if failures >= self.policy.failure_threshold and \
                await self.store.set_if_absent(self._open_key, now):
            self.seen_open_at = now
            self.opened += 1

    async def _count_failure(self, now: float) -> tuple[int, int]:
        window = self.policy.window_s
        bucket = int(now // window)
        current = await self.store.incr(f"{self._fail_prefix}{bucket}", 1, ttl_s=window * 2 + 1)
        previous = await self.store.get(f"{self._fail_prefix}{bucket - 1}") or 0
        return current, int(previous)

    def _window_failures(self, now: float, counts: tuple[int, int]) -> float:
        current, previous = counts
        window = self.policy.window_s
        into_bucket = (now % window) / window
        return current + previous * (1.0 - into_bucket)


class BreakerStage:
    def __init__(self, breakers: dict[str, CircuitBreaker]) -> None:
        self.breakers = breakers

    async def __call__(self, attempt: AttemptCall, next: Handler[AttemptCall, Any]) -> Any:
        breaker = self.breakers[attempt.target.key]
        attempt.probe = await breaker.allow()
        try:
            result = await next(attempt)
        except BaseException as exc:
            await breaker.record(exc, attempt.probe)
            raise
        if isinstance(result, TargetStream):
            probe = attempt.probe
            result.add_done_callback(lambda outcome: breaker.record(outcome, probe))
        else:
            await breaker.record(None, attempt.probe)
        return result
