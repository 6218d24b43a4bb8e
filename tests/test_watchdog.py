"""The stream watchdog (the semantics of ``asyncio.timeout`` around each wait, one timer per
stream) and ``TimeLimit`` (``asyncio.timeout_at`` for one block, cheaper)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable

import pytest

from bastion.providers.watchdog import TimeLimit, Watchdog


async def paced(*delays: float) -> AsyncIterator[int]:
    """Yields 0, 1, ... after each of ``delays`` seconds."""
    for i, delay in enumerate(delays):
        await asyncio.sleep(delay)
        yield i


async def drain(watchdog: Watchdog, iterator: AsyncIterator[int]) -> list[int]:
    got = []
    try:
        while True:
            try:
                got.append(await watchdog.next(iterator))
            except StopAsyncIteration:
                return got
    finally:
        watchdog.close()


async def test_items_within_the_limits_pass_through() -> None:
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(deadline=loop.time() + 5, idle_s=1)
    assert await drain(watchdog, paced(0, 0.01, 0)) == [0, 1, 2]
    assert not watchdog.expired


async def test_a_wait_past_the_deadline_raises_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(deadline=loop.time() + 0.1)
    iterator = paced(0, 0, 10)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await drain(watchdog, iterator)
    assert time.monotonic() - started < 1
    assert watchdog.expired
    assert asyncio.current_task().cancelling() == 0  # nothing left over for later awaits


async def test_the_idle_limit_applies_to_each_wait_not_to_the_stream() -> None:
    # Five waits of 0.06 s each: the stream takes 0.3 s, more than the idle limit of 0.15 s,
    # yet no single wait does; the idle timer must follow the progress.
    watchdog = Watchdog(idle_s=0.15)
    assert await drain(watchdog, paced(0.06, 0.06, 0.06, 0.06, 0.06)) == [0, 1, 2, 3, 4]
    with pytest.raises(TimeoutError):
        await drain(Watchdog(idle_s=0.1), paced(0, 0.5))


async def test_time_spent_between_waits_is_not_idle_but_the_deadline_still_counts() -> None:
    loop = asyncio.get_running_loop()
    idle = Watchdog(idle_s=0.05)
    iterator = paced(0, 0, 0)
    assert await idle.next(iterator) == 0
    await asyncio.sleep(0.15)  # the consumer is slow: not the upstream's fault
    assert await idle.next(iterator) == 1
    idle.close()

    deadline = Watchdog(deadline=loop.time() + 0.05)
    iterator = paced(0, 0, 0)
    assert await deadline.next(iterator) == 0
    await asyncio.sleep(0.15)
    with pytest.raises(TimeoutError):  # the deadline passed between waits: fail at once
        await deadline.next(iterator)
    deadline.close()


async def test_a_cancellation_from_elsewhere_is_not_turned_into_a_timeout() -> None:
    loop = asyncio.get_running_loop()
    watchdog = Watchdog(deadline=loop.time() + 0.05)
    task = asyncio.create_task(drain(watchdog, paced(10)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not watchdog.expired


async def test_waits_from_different_tasks_cancel_the_task_that_waits() -> None:
    watchdog = Watchdog(idle_s=0.1)
    iterator = paced(0, 10)
    assert await asyncio.create_task(watchdog.next(iterator)) == 0
    with pytest.raises(TimeoutError):
        await asyncio.create_task(watchdog.next(iterator))
    watchdog.close()


async def limited(seconds: float, work: Awaitable[object]) -> object:
    loop = asyncio.get_running_loop()
    limit = TimeLimit(loop, loop.time() + seconds)
    try:
        return await work
    except asyncio.CancelledError:
        limit.raise_if_expired()
        raise
    finally:
        limit.close()


async def test_a_time_limit_cuts_a_block_with_timeout_error_and_leaves_no_cancellation() -> None:
    assert await limited(1, asyncio.sleep(0.01, "done")) == "done"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await limited(0.05, asyncio.sleep(10))
    assert time.monotonic() - started < 1
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0)  # and no cancellation is left pending either


async def test_a_time_limit_lets_another_cancellation_through() -> None:
    task = asyncio.create_task(limited(0.05, asyncio.sleep(10)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_expired_limit_whose_block_turned_the_cancellation_into_an_error() -> None:
    async def converts() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ValueError("cleaned up") from None

    with pytest.raises(ValueError):
        await limited(0.05, converts())
    assert asyncio.current_task().cancelling() == 0


async def test_limits_share_one_ticker_that_stops_when_none_runs() -> None:
    from bastion.providers.watchdog import _ticker_of

    loop = asyncio.get_running_loop()
    results = await asyncio.gather(*(limited(0.05 if i == 0 else 5, asyncio.sleep(0.2, i))
                                     for i in range(5)), return_exceptions=True)
    assert isinstance(results[0], TimeoutError) and results[1:] == [1, 2, 3, 4]
    ticker = _ticker_of(loop)
    assert not ticker._limits
    await asyncio.sleep(0.05)
    assert not ticker._armed  # nothing runs: no timer is left behind


async def test_a_limit_already_past_fires_at_the_next_tick() -> None:
    loop = asyncio.get_running_loop()
    limit = TimeLimit(loop, loop.time() - 1)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            limit.raise_if_expired()
            raise
        finally:
            limit.close()
    assert time.monotonic() - started < 0.2
