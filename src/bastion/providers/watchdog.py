"""Bounding each wait on a stream with one timer per stream instead of one per item.

A streamed answer is awaited item by item, and each wait must end at the request's deadline
and, for an HTTP upstream, when the upstream stays silent for longer than the attempt's
timeout. ``asyncio.timeout`` around each wait says exactly that, but it arms and cancels a
timer per item: 4.5 µs per SSE event with uvloop, about 100 µs of a 22-event stream, a tenth of
everything bastion spends on the stream (``bench/run.py --stream``; aiohttp's ``sock_read``
costs the same, as it re-arms its timer on every read). ``Watchdog`` keeps the semantics with
one timer armed per stream and re-armed only when it fires early, so a wait costs a few
attribute writes.

Semantics, as ``asyncio.timeout``: when a limit passes while the task waits in ``next``, the
task is cancelled and ``next`` raises ``TimeoutError`` (and ``expired`` is True), unless the
task was also cancelled by someone else, in which case the ``CancelledError`` goes on. A limit
that passes between waits fails the next wait at once. The caller turns ``TimeoutError`` into
the taxonomy error it means (deadline, or upstream timeout).

It lives with the providers because the HTTP adapters use it for their idle limit; the chat
service uses it for the request deadline.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


class Watchdog:
    """Limits for the waits of one task on one stream: an absolute ``deadline`` (event-loop
    clock, i.e. ``time.monotonic``) and/or ``idle_s`` per wait. Call ``close`` when done."""

    __slots__ = (
        "_armed_for",
        "_cancelling",
        "_deadline",
        "_idle_s",
        "_loop",
        "_since",
        "_task",
        "_timer",
        "_timer_is_deadline",
        "_waiting",
        "_waits",
        "expired",
    )

    def __init__(self, *, deadline: float | None = None, idle_s: float | None = None) -> None:
        self._deadline = deadline
        self._idle_s = idle_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_is_deadline = False
        self._armed_for = 0  # the wait the idle timer was armed for
        self._waits = 0
        self._since = 0.0  # when the current wait began (only kept with an idle limit)
        self._waiting = False
        self._cancelling = 0
        #: True once a limit has passed; every later ``next`` raises ``TimeoutError``.
        self.expired = False

    async def next(self, iterator: AsyncIterator[T]) -> T:
        """``anext(iterator)`` within the limits."""
        if self.expired:
            raise TimeoutError
        self._waits += 1
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._idle_s is not None:
            self._since = loop.time()
        # The waits of one stream may come from different tasks (an adapter reads the first
        # event while the request opens the stream, the response task reads the rest). With
        # the loop given, ``current_task`` is a dict lookup; without, CPython 3.11 looks the
        # running loop up, a ``getpid()`` system call: two per SSE event (this wait and the
        # adapter's). py-spy charged ~7% of a stream to it; ``bench/run.py --stream`` did not
        # move beyond its noise (0.837 -> 0.839 ms per stream).
        self._task = asyncio.current_task(loop)
        if self._timer is None:
            self._arm()
        self._waiting = True
        try:
            return await anext(iterator)
        except asyncio.CancelledError:
            if self.expired and self._task is not None and \
                    self._task.uncancel() <= self._cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._waiting = False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        due = self._deadline
        self._timer_is_deadline = due is not None
        if self._idle_s is not None:
            idle_due = self._since + self._idle_s
            if due is None or idle_due < due:
                due, self._timer_is_deadline = idle_due, False
            self._armed_for = self._waits
        if due is not None:
            self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._timer_is_deadline:
            if not self._waiting:
                return  # idle between waits is the consumer's time, not the upstream's
            if self._armed_for != self._waits:
                self._arm()  # the wait it was armed for ended; time the current one
                return
        self.expired = True
        if self._waiting and self._task is not None:
            self._cancelling = self._task.cancelling()
            self._task.cancel()


#: How often a loop's ticker looks at its running ``TimeLimit``s: a limit fires up to this
#: much after its time.
TICK_S = 0.01


class TimeLimit:
    """``asyncio.timeout_at(when)`` for one block of code, for the two scopes every model call
    enters (the request deadline and the attempt's timeout):

        limit = TimeLimit(loop, when)
        try:
            return await work()
        except asyncio.CancelledError:
            limit.raise_if_expired()   # TimeoutError if this limit cancelled the task
            raise
        finally:
            limit.close()

    Same semantics as ``asyncio.Timeout``, to the nearest ``TICK_S`` (10 ms): instead of a
    timer each, the running limits of a loop share one ticker that looks at them every
    ``TICK_S`` while any runs. A uvloop timer armed and cancelled per scope, with the running
    loop looked up around it (a ``getpid()`` system call each time in CPython 3.11), cost
    about 10 µs per scope on the benchmark machine: 20 µs of the ~0.26 ms of CPU of a chat
    completion (``bastion serve`` under the load of ``bench/run.py``, with the two scopes and
    with them stubbed out); entering and leaving the ticker's set costs well under 1 µs.
    Deadlines are seconds long: 10 ms late is nothing."""

    __slots__ = ("_cancelling", "_task", "_ticker", "_uncancelled", "expired", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("TimeLimit must be used inside a task")
        self._task: asyncio.Task[object] = task
        self._cancelling = task.cancelling()
        self._uncancelled = False
        self.expired = False
        self.when = when
        self._ticker = _ticker_of(loop)
        self._ticker.add(self, loop)

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def raise_if_expired(self) -> None:
        """Call on ``CancelledError``: ``TimeoutError`` when the cancellation was this limit's
        own (and nobody else's), else nothing and the caller re-raises."""
        if self.expired and not self._uncancelled:
            self._uncancelled = True
            if self._task.uncancel() <= self._cancelling:
                raise TimeoutError from None

    def close(self) -> None:
        self._ticker.discard(self)
        if self.expired and not self._uncancelled:
            # Expired, but the block ended otherwise (its code turned the cancellation into
            # another error): take back the cancellation, as asyncio.Timeout does.
            self._uncancelled = True
            self._task.uncancel()


class _Ticker:
    """The one timer of a loop for all its running ``TimeLimit``s; armed only while any runs.
    It holds no reference to its loop (the loop is a weak key of ``_tickers``)."""

    __slots__ = ("_armed", "_limits")

    def __init__(self) -> None:
        self._limits: set[TimeLimit] = set()
        self._armed = False

    def add(self, limit: TimeLimit, loop: asyncio.AbstractEventLoop) -> None:
        self._limits.add(limit)
        if not self._armed:
            self._armed = True
            loop.call_later(TICK_S, self._tick, loop)

    def discard(self, limit: TimeLimit) -> None:
        self._limits.discard(limit)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for limit in [limit for limit in self._limits if limit.when <= now]:
            self._limits.discard(limit)
            limit._expire()
        if self._limits:
            loop.call_later(TICK_S, self._tick, loop)
        else:
            self._armed = False


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker] = \
    weakref.WeakKeyDictionary()


def _ticker_of(loop: asyncio.AbstractEventLoop) -> _Ticker:
    ticker = _tickers.get(loop)
    if ticker is None:
        ticker = _tickers[loop] = _Ticker()
    return ticker
