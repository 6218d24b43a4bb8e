"""The circuit breaker: closed, open after N failures in a window, one half-open probe."""

from __future__ import annotations

import asyncio

import pytest

from bastion.config import BreakerPolicy
from bastion.domain.errors import (
    BulkheadFull,
    CircuitOpen,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bastion.pipeline.breaker import CircuitBreaker
from bastion.stores.memory import MemoryStore


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def breaker(threshold: int = 3, window: float = 10, cooldown: float = 5,
            store: MemoryStore | None = None, clock: Clock | None = None) -> CircuitBreaker:
    return CircuitBreaker("p/m", BreakerPolicy(failure_threshold=threshold, window_s=window,
                                               cooldown_s=cooldown),
                          store or MemoryStore(), clock=clock or Clock())


async def fail(b: CircuitBreaker, n: int, exc: Exception | None = None) -> None:
    for _ in range(n):
        probe = await b.allow()
        await b.record(exc or UpstreamUnavailable("down"), probe)


async def test_opens_after_threshold_within_window() -> None:
    b = breaker(threshold=3)
    await fail(b, 2)
    assert await b.state() == "closed"
    await fail(b, 1)
    assert await b.state() == "open"
    with pytest.raises(CircuitOpen):
        await b.allow()


async def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = Clock()
    b = breaker(threshold=3, window=10, clock=clock)
    await fail(b, 2)
    clock.now += 25  # two windows later: the old failures have aged out
    await fail(b, 2)
    assert await b.state() == "closed"


@pytest.mark.parametrize("exc", [UpstreamRejected("bad request", upstream_status=400),
                                 BulkheadFull("busy"), asyncio.CancelledError()])
async def test_failures_that_are_not_the_targets_fault_do_not_count(exc) -> None:
    b = breaker(threshold=1)
    await b.record(exc, probe=False)
    assert await b.state() == "closed"


async def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    store = MemoryStore()
    b = breaker(threshold=1, cooldown=5, clock=clock, store=store)
    await fail(b, 1, UpstreamTimeout("slow"))
    clock.now += 5.1
    assert await b.state() == "half_open"
    assert await b.allow() is True  # the probe
    with pytest.raises(CircuitOpen):
        await b.allow()  # everyone else still skips
    # A second breaker object on the same store (another replica) also sees the probe taken.
    other = breaker(threshold=1, cooldown=5, clock=clock, store=store)
    with pytest.raises(CircuitOpen):
        await other.allow()


async def test_probe_success_closes() -> None:
    clock = Clock()
    b = breaker(threshold=1, cooldown=5, clock=clock)
    await fail(b, 1)
    clock.now += 6
    probe = await b.allow()
    await b.record(None, probe)
    assert await b.state() == "closed"
    assert await b.allow() is False


async def test_probe_failure_reopens_for_a_new_cooldown() -> None:
    clock = Clock()
    b = breaker(threshold=1, cooldown=5, clock=clock)
    await fail(b, 1)
    clock.now += 6
    probe = await b.allow()
    await b.record(UpstreamUnavailable("still down"), probe)
    assert await b.state() == "open"
    clock.now += 4
    with pytest.raises(CircuitOpen):
        await b.allow()
    clock.now += 2
    assert await b.allow() is True


async def test_a_probe_cancelled_by_its_client_frees_the_probe_slot() -> None:
    clock = Clock()
    b = breaker(threshold=1, cooldown=5, clock=clock)
    await fail(b, 1)
    clock.now += 6
    probe = await b.allow()
    await b.record(asyncio.CancelledError(), probe)
    assert await b.allow() is True
