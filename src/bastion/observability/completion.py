"""What is written down when a request finishes — its metrics, its ``request.completed`` log
line, its journal entry — done for a batch of finished requests at a time.

On the request path a finished request only appends its context and outcome to a list (its
total time and end time are taken then, so nothing depends on when the batch runs). The batch
is processed ``DELAY_S`` after its first request finished, or at once when ``BATCH`` have
gathered: metrics, fields, the rendered line (written to the log and kept by the journal).

Why a batch: the same work done inside each request cost ~40 µs of CPU per chat completion
(the ASGI app driven in-process against the benchmark's mock, 16,000 requests, with it and with
it stubbed out), while the functions themselves take ~15 µs in a tight loop; the difference is
the interpreter running this code cold, between two requests' worth of other code. Done for a
few hundred requests in a row it runs warm. Log lines were already written in batches
(``BufferedLines``, 0.2 s) and journal entries stored every second, so nothing is visible later
than before; ``flush_logs``, ``/metrics`` and the journal's readers process what is pending
first.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from bastion.domain.context import RequestContext
from bastion.observability.logging import (
    before_flush,
    completion_fields,
    completion_logging,
    render_completion,
    write_completion,
)
from bastion.observability.request_metrics import REQUEST_METRICS

if TYPE_CHECKING:
    from bastion.observability.journal import RequestJournal

#: Finished requests processed together, at most.
BATCH = 256
#: How long the first finished request of a batch waits for others.
DELAY_S = 0.05

_Finished = tuple[RequestContext | None, str, str, int, "str | None", float, float,
                  "RequestJournal | None"]
_pending: list[_Finished] = []
_scheduled = False


def record_completion(ctx: RequestContext | None, method: str, path: str, status: int,
                      error: str | None, journal: RequestJournal | None) -> None:
    """Note one finished request (``error``: the error class it answered with, if any)."""
    global _scheduled
    elapsed = ctx.elapsed() if ctx is not None else 0.0
    _pending.append((ctx, method, path, status, error, elapsed, time.time(), journal))
    if len(_pending) >= BATCH:
        flush_completions()
    elif not _scheduled:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            flush_completions()
            return
        _scheduled = True
        loop.call_later(DELAY_S, flush_completions)


def flush_completions() -> None:
    """Process every finished request noted so far."""
    global _scheduled, _pending
    _scheduled = False
    if not _pending:
        return
    batch, _pending = _pending, []
    logging_on = completion_logging()
    for ctx, method, path, status, error, elapsed, ended, journal in batch:
        REQUEST_METRICS.record(ctx, error or ("ok" if status < 400 else f"http_{status}"),
                               elapsed)
        journaled = journal is not None and journal.enabled and ctx is not None
        if not (logging_on or journaled):
            continue
        fields = completion_fields(ctx, method=method, path=path, status=status, error=error,
                                   elapsed_s=elapsed)
        line = render_completion(fields, ended)
        if logging_on:
            write_completion(line)
        if journaled:
            journal.record(fields, line)  # type: ignore[union-attr]


before_flush(flush_completions)
