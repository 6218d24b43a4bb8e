"""Classified retry of one target, inside the request's deadline.

Written by hand rather than with tenacity or stamina because each decision here depends on
state those loops do not see: what is left of the request deadline (a retry never starts if
its wait would not leave time for it), a ``Retry-After`` that exceeds the cap (then the next
target is the better bet, so the loop ends early), an open breaker or full bulkhead (move on
without waiting), and the stream commit point (a stream is retried only until its first chunk,
which ``open_stream`` reads before returning). The whole loop is ~40 lines.

Only transient failures are retried: timeouts, connection errors, 429 and 5xx, malformed
upstream responses. Never 400/401/403/404/422, never a full bulkhead or an open circuit.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bastion.config import TargetConfig
from bastion.domain.context import Attempt, RequestContext, new_span_id
from bastion.domain.errors import (
    BastionError,
    BulkheadFull,
    CircuitOpen,
    DeadlineExceeded,
    DependencyError,
)
from bastion.pipeline.call import AttemptCall, ChatCall
from bastion.pipeline.stage import Handler
from bastion.providers.base import Provider


def backoff_delay(attempt: int, target: TargetConfig, exc: BastionError,
                  rng: random.Random) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``; None means "do not retry this target".

    Exponential backoff with full jitter; a ``Retry-After`` from the upstream replaces it (plus
    up to 10% jitter so a crowd of clients does not return in lockstep) unless it exceeds the
    target's ``retry_after_cap_s``.
    """
    if exc.retry_after is not None:
        if exc.retry_after > target.retry_after_cap_s:
            return None
        return exc.retry_after * (1.0 + 0.1 * rng.random())
    ceiling = min(target.backoff_max_s, target.backoff_base_s * (2 ** (attempt - 1)))
    return rng.uniform(0.0, ceiling)


def _no_retry(exc: DependencyError) -> bool:
    return not exc.retryable or isinstance(exc, (BulkheadFull, CircuitOpen))


async def try_target(call: ChatCall, target: TargetConfig, provider: Provider,
                     attempt_handler: Handler[AttemptCall, Any], rng: random.Random) -> Any:
    """Call one target, retrying transient failures; raise the last failure when done."""
    ctx = call.ctx
    attempts = 1 + target.retries
    for number in range(1, attempts + 1):
        if ctx.expired():
            raise DeadlineExceeded("the request deadline was spent before the next attempt")
        started = time.monotonic()
        span_id = _trace_attempt(ctx)
        try:
            result = await attempt_handler(AttemptCall(call, target, provider, number))
        except DependencyError as exc:
            skipped = isinstance(exc, (BulkheadFull, CircuitOpen))
            ctx.attempts.append(Attempt(target.key, number, exc.code,
                                        time.monotonic() - started, called=not skipped,
                                        start_s=started - ctx.started, span_id=span_id))
            if number == attempts or _no_retry(exc):
                raise
            delay = backoff_delay(number, target, exc, rng)
            if delay is None or delay >= ctx.remaining():
                raise
            await asyncio.sleep(delay)
            continue
        ctx.attempts.append(Attempt(target.key, number, "ok", time.monotonic() - started,
                                    start_s=started - ctx.started, span_id=span_id))
        return result
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


def _trace_attempt(ctx: RequestContext) -> str | None:
    """The attempt's span id when the request is traced, and the ``traceparent`` it sends
    upstream: the attempt's own span when bastion traces the request; the caller's, unchanged,
    when only the caller does; none when nobody does."""
    if ctx.span_id is not None:
        span_id = new_span_id()
        ctx.upstream_traceparent = f"00-{ctx.trace_id}-{span_id}-{ctx.trace_flags}"
        return span_id
    if ctx.trace_id is not None:
        ctx.upstream_traceparent = f"00-{ctx.trace_id}-{ctx.parent_span_id}-{ctx.trace_flags}"
    return None
