"""The usage ledger: one row per request, written in the background in batches.

Recording sits on the request path, so ``record`` is synchronous and never waits: it puts the
row on a bounded queue and returns. A store that is slow or down must not slow requests or
grow memory without bound, so when the queue is full the row is *dropped and counted*
(``dropped``, and the ``bastion_usage_ledger_dropped`` metric), never blocked on. One writer
task takes rows off the queue in batches of up to ``batch_size``, waiting at most
``flush_interval_s`` for a batch to fill, and appends each batch in one store call; a failed
write is retried with exponential backoff a few times, then the batch is dropped and counted.

``flush`` waits until every row recorded before it was written (or dropped); ``aclose`` stops
accepting rows, flushes, and stops the writer, so a clean shutdown loses nothing. The store
belongs to whoever built it (``state.Stores``) and is not closed here. Logs name request ids
and counts only, never a row's tenant, key or tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from bastion.config import LedgerConfig
from bastion.domain.usage import UsageRow
from bastion.observability.ledger_metrics import LEDGER_DROPPED, LEDGER_WRITTEN
from bastion.stores.ledger import LedgerStore

log = logging.getLogger("bastion.ledger")

#: At most one "rows dropped" warning per this many seconds: a full queue is an overload, and
#: a log line per dropped row would add to it.
_DROP_LOG_INTERVAL_S = 10.0


class UsageLedger:
    def __init__(self, store: LedgerStore, config: LedgerConfig, *, retries: int = 3,
                 backoff_s: float = 0.1, backoff_max_s: float = 2.0) -> None:
        self.store = store
        self.config = config
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        #: Rows written to the store, and rows lost (queue full, write failed, or closed).
        self.written = 0
        self.dropped = 0
        # Rows waiting for the writer, oldest first, at most ``config.queue_size``. A deque and
        # an event rather than ``asyncio.Queue``, whose ``put_nowait`` is six Python calls
        # (bookkeeping for ``join``, which nothing here uses) on every request.
        self._rows: deque[UsageRow] = deque()
        self._has_rows = asyncio.Event()
        # Rows accepted onto the queue and rows taken off it and settled (written or
        # dropped). The queue is FIFO, so "settled >= n" means the first n rows are settled.
        self._accepted = 0
        self._settled = 0
        self._progress = asyncio.Condition()
        self._wake = asyncio.Event()  # skip the rest of the batching wait
        self._urgent = 0  # flushes in progress: write what is queued without waiting
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = float("-inf")

    # -- the request path

    def record(self, row: UsageRow) -> None:
        """Queue ``row`` for writing; drop and count it if the queue is full. Never blocks."""
        if self._closed:
            self._drop(1, "closed", row.request_id)
            return
        rows = self._rows
        if len(rows) >= self.config.queue_size:
            self._drop(1, "queue_full", row.request_id)
            return
        rows.append(row)
        self._accepted += 1
        if len(rows) == 1:
            self._has_rows.set()
        elif len(rows) >= self.config.batch_size:
            self._wake.set()

    def _drop(self, n: int, reason: str, request_id: str) -> None:
        self.dropped += n
        LEDGER_DROPPED.labels(reason).inc(n)
        now = time.monotonic()
        # A failed write is logged where it fails; a full queue at most every few seconds.
        if reason != "write_failed" and now - self._last_drop_log >= _DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning("usage rows dropped", extra={
                "reason": reason, "rows": n, "request_id": request_id,
                "dropped_total": self.dropped})

    # -- lifecycle

    async def start(self) -> None:
        """Start the writer task (idempotent); rows recorded before it are kept."""
        if self._task is None or self._task.done():
            self._closed = False
            self._task = asyncio.create_task(self._writer(), name="bastion-usage-ledger")
            # A flush waiting on a writer that ended (cancelled with its loop) must wake up.
            self._task.add_done_callback(lambda _: asyncio.ensure_future(self._settle(0)))

    async def flush(self) -> None:
        """Return once every row recorded before this call is written or dropped."""
        target = self._accepted
        if self._task is None or self._task.done():
            await self._write_queued()
            return
        self._urgent += 1
        self._wake.set()
        try:
            async with self._progress:
                await self._progress.wait_for(
                    lambda: self._settled >= target or self._task is None or self._task.done())
        finally:
            self._urgent -= 1
        if self._settled < target:  # the writer died: finish its work here
            await self._write_queued()

    async def aclose(self) -> None:
        """Stop accepting rows, write every row already recorded, stop the writer."""
        self._closed = True
        try:
            await self.flush()
        finally:
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @property
    def pending(self) -> int:
        """Rows waiting in the queue."""
        return len(self._rows)

    # -- the writer

    async def _writer(self) -> None:
        while True:
            batch = await self._collect()
            try:
                await self._write(batch)
            except Exception:  # a bug here must not stop the ledger
                log.exception("usage ledger writer failed", extra={"rows": len(batch)})
                self._drop(len(batch), "write_failed", batch[0].request_id)
            finally:
                await self._settle(len(batch))

    async def _collect(self) -> list[UsageRow]:
        """The next batch: wait for one row, then up to ``flush_interval_s`` for more."""
        while not self._rows:
            self._has_rows.clear()
            await self._has_rows.wait()
        batch: list[UsageRow] = []
        self._take(batch)
        if len(batch) < self.config.batch_size and not self._urgent:
            self._wake.clear()
            # Waiting on an Event, never on ``queue.get``, so a timeout cannot lose a row.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.flush_interval_s)
            self._take(batch)
        return batch

    def _take(self, batch: list[UsageRow]) -> None:
        rows = self._rows
        while len(batch) < self.config.batch_size and rows:
            batch.append(rows.popleft())

    async def _write_queued(self) -> None:
        """Write what is queued from the caller's task (no writer running)."""
        while self._rows:
            batch: list[UsageRow] = []
            self._take(batch)
            try:
                await self._write(batch)
            finally:
                await self._settle(len(batch))

    async def _settle(self, n: int) -> None:
        self._settled += n
        async with self._progress:
            self._progress.notify_all()

    async def _write(self, batch: list[UsageRow]) -> None:
        """Write ``batch`` with retries; after the last failure drop and count it."""
        for attempt in range(self.retries + 1):
            try:
                await self.store.write_many(batch)
            except Exception as exc:  # noqa: BLE001 - any store failure is retried the same
                if attempt == self.retries:
                    log.error("usage batch dropped after %d attempts", attempt + 1, extra={
                        "rows": len(batch), "error": type(exc).__name__,
                        "first_request_id": batch[0].request_id,
                        "last_request_id": batch[-1].request_id})
                    self._drop(len(batch), "write_failed", batch[0].request_id)
                    return
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** attempt)
                log.warning("usage batch write failed; retrying", extra={
                    "rows": len(batch), "error": type(exc).__name__, "attempt": attempt + 1,
                    "retry_in_s": delay})
                await asyncio.sleep(delay)
            else:
                self.written += len(batch)
                LEDGER_WRITTEN.inc(len(batch))
                return
