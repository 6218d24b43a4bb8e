"""The bulkhead: bounded concurrency, bounded wait, a fast classified error when full."""

from __future__ import annotations

import asyncio
import time

import pytest

from bastion.config import BulkheadPolicy
from bastion.domain.errors import BulkheadFull
from bastion.pipeline.bulkhead import Bulkhead


async def test_bounds_concurrency() -> None:
    head = Bulkhead("p", BulkheadPolicy(max_concurrency=3, max_wait_s=5))
    peak = 0

    async def work() -> None:
        nonlocal peak
        await head.acquire(10)
        try:
            peak = max(peak, head.in_flight)
            await asyncio.sleep(0.01)
        finally:
            head.release()

    await asyncio.gather(*(work() for _ in range(20)))
    assert peak == 3
    assert head.in_flight == 0


async def test_full_fails_fast_after_the_bounded_wait() -> None:
    head = Bulkhead("p", BulkheadPolicy(max_concurrency=1, max_wait_s=0.05))
    await head.acquire(10)
    started = time.monotonic()
    with pytest.raises(BulkheadFull):
        await head.acquire(10)
    waited = time.monotonic() - started
    assert 0.04 <= waited < 1.0
    assert head.rejected == 1 and head.waiting == 0


async def test_wait_never_exceeds_what_is_left_of_the_deadline() -> None:
    head = Bulkhead("p", BulkheadPolicy(max_concurrency=1, max_wait_s=30))
    await head.acquire(10)
    started = time.monotonic()
    with pytest.raises(BulkheadFull):
        await head.acquire(0.05)
    assert time.monotonic() - started < 1.0


async def test_zero_wait_rejects_immediately() -> None:
    head = Bulkhead("p", BulkheadPolicy(max_concurrency=1, max_wait_s=0))
    await head.acquire(10)
    with pytest.raises(BulkheadFull):
        await head.acquire(10)


async def test_a_waiter_gets_the_slot_when_it_frees() -> None:
    head = Bulkhead("p", BulkheadPolicy(max_concurrency=1, max_wait_s=5))
    await head.acquire(10)
    waiter = asyncio.ensure_future(head.acquire(10))
    await asyncio.sleep(0.01)
    assert head.waiting == 1
    head.release()
    await asyncio.wait_for(waiter, 1)
    assert head.in_flight == 1
