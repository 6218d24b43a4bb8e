"""What travels with one request through every stage: identity, deadline, and the decisions made.

The deadline is absolute (``time.monotonic()`` seconds) so every stage asks the same question,
"how much is left?", and nothing can quietly extend it.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple, TypeVar

from bastion.domain.errors import outcome_of

T = TypeVar("T")


class Priority(str, Enum):
    critical = "critical"
    default = "default"
    batch = "batch"


#: Request ids must be unique, not secret (a client may even choose its own), so they come from
#: a Mersenne Twister seeded from the OS rather than from ``secrets``, whose ``os.urandom`` is
#: a system call that releases the GIL: 23 µs per call in a cProfile of the app while the
#: ledger's writer thread was busy. Re-seeded in a forked child so two workers never share a
#: sequence.
_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    return f"req_{_ids.getrandbits(96):024x}"


def new_span_id() -> str:
    """A W3C trace-context span id: 16 hex digits, never all zeros."""
    return f"{_ids.getrandbits(64) or 1:016x}"


def new_trace_id() -> str:
    """A W3C trace-context trace id: 32 hex digits, never all zeros."""
    return f"{_ids.getrandbits(128) or 1:032x}"


class StageTiming(NamedTuple):
    """One stage of a request: when it started (seconds after the request did), how long it
    took, and how it ended (``ok`` or an error code)."""

    name: str
    start_s: float
    duration_s: float
    outcome: str = "ok"


@dataclass(slots=True)
class Attempt:
    """One call to one target: what happened and how long it took."""

    target: str
    number: int
    outcome: str  # "ok" or an error code
    duration_s: float
    #: False when the target was skipped without a call (open breaker, full bulkhead).
    called: bool = True
    #: Seconds after the request started that this attempt began.
    start_s: float = 0.0
    #: The attempt's span id when the request is traced (see ``RequestContext.trace_id``).
    span_id: str | None = None


@dataclass(slots=True)
class ContractStep:
    """One output-contract check: which target, first answer or repair, and the verdict."""

    target: str
    phase: str  # "first" or "repair"
    valid: bool
    violations: tuple[str, ...] = ()
    #: Seconds after the request started that the check ran, and how long it took.
    start_s: float = 0.0
    duration_s: float = 0.0


class RequestContext:
    """One request's identity, deadline and decisions.

    A plain class, not a dataclass: every request makes one, and a generated ``__init__``
    sets all 29 fields and calls four default factories (21K instructions per context,
    callgrind); here the fields a request rarely sets are class attributes until it does,
    and ``__init__`` sets only its own (13K, of which 4.7K is the request id)."""

    # -- what the request starts with
    route: str = "chat"
    tenant: str = "default"
    key_id: str | None = None
    priority: Priority = Priority.default
    idempotency_key: str | None = None
    #: Test-only fault override for the simulated provider (see providers/simulated.py).
    simulate: dict[str, Any] | None = None
    # -- filled in by the stages as it goes
    target: str | None = None
    fallback_used: bool = False
    #: The prompt template used, as ``name@version`` (tasks, answers).
    prompt: str | None = None
    #: The response cache's verdict: hit, miss, stale, bypass (None: not cacheable).
    cache: str | None = None
    #: Token usage of every upstream answer of this request (repairs included), summed.
    usage: dict[str, Any] | None = None
    cost_usd: float = 0.0
    #: Chunks retrieved for this request (id, score), for answers: metadata for the logs.
    retrieved: list[tuple[str, float]] | None = None
    #: Seconds from the request's start to the first streamed token (streams only).
    first_token_s: float | None = None
    #: W3C trace context: the trace this request belongs to, the caller's span (from its
    #: ``traceparent``), this request's own span, and the sampled flag. ``trace_id`` is None
    #: when the request is not traced and the caller sent no ``traceparent``.
    trace_id: str | None = None
    parent_span_id: str | None = None
    span_id: str | None = None
    trace_flags: str = "01"
    #: The ``traceparent`` to send with the current upstream attempt (None: send none).
    upstream_traceparent: str | None = None

    def __init__(self, request_id: str, deadline: float, *, route: str = "chat",
                 tenant: str = "default", key_id: str | None = None,
                 priority: Priority = Priority.default, idempotency_key: str | None = None,
                 simulate: dict[str, Any] | None = None, started: float | None = None,
                 wall_started: float | None = None) -> None:
        self.request_id = request_id
        #: Absolute, in ``time.monotonic()`` seconds.
        self.deadline = deadline
        self.started = time.monotonic() if started is None else started
        #: Wall-clock epoch seconds at ``started``: timestamps for traces and the journal.
        self.wall_started = time.time() if wall_started is None else wall_started
        if route != "chat":
            self.route = route
        if tenant != "default":
            self.tenant = tenant
        if key_id is not None:
            self.key_id = key_id
        if priority is not Priority.default:
            self.priority = priority
        if idempotency_key is not None:
            self.idempotency_key = idempotency_key
        if simulate is not None:
            self.simulate = simulate
        #: Every upstream attempt, in order (skipped targets included).
        self.attempts: list[Attempt] = []
        #: Output-contract checks in order (empty when the request declared no contract).
        self.contract_steps: list[ContractStep] = []
        #: Headers any stage wants on the response.
        self.response_headers: dict[str, str] = {}
        #: The stages this request went through, in the order they ended.
        self.stages: list[StageTiming] = []

    def __repr__(self) -> str:
        return (f"RequestContext(request_id={self.request_id!r}, route={self.route!r}, "
                f"tenant={self.tenant!r}, target={self.target!r})")

    @classmethod
    def create(
        cls,
        *,
        budget_s: float,
        request_id: str | None = None,
        **kw: Any,
    ) -> RequestContext:
        now = time.monotonic()
        return cls(request_id or new_request_id(), now + budget_s, started=now,
                   wall_started=time.time(), **kw)

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        left = self.deadline - time.monotonic()
        return max(0.0, left)

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def calls(self) -> int:
        """Upstream calls actually made (skipped targets are recorded but not counted)."""
        return sum(1 for a in self.attempts if a.called)

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        """Add one upstream answer's ``usage`` to the request's total."""
        if not usage:
            return
        total = self.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            total[key] = total.get(key, 0) + int(usage.get(key) or 0)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached:
            details = total.setdefault("prompt_tokens_details", {"cached_tokens": 0})
            details["cached_tokens"] += int(cached)
        self.usage = total

    def contract_outcome(self) -> str | None:
        """``valid``, ``repaired`` or ``failed``; None when nothing was checked."""
        if not self.contract_steps:
            return None
        last = self.contract_steps[-1]
        if not last.valid:
            return "failed"
        return "repaired" if len(self.contract_steps) > 1 else "valid"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def offset(self, monotonic: float) -> float:
        """``monotonic`` (a ``time.monotonic()`` reading) as seconds after the request began."""
        return monotonic - self.started

    def add_stage(self, name: str, since: float, outcome: str = "ok") -> None:
        """Record stage ``name`` as having run from ``since`` (``time.monotonic()``) to now."""
        now = time.monotonic()
        self.stages.append(StageTiming(name, since - self.started, now - since, outcome))

    async def staged(self, name: str, work: Awaitable[T]) -> T:
        """Await ``work``, recorded as stage ``name`` with how it ended."""
        started = time.monotonic()
        try:
            result = await work
        except BaseException as exc:
            self.add_stage(name, started, outcome_of(exc))
            raise
        self.add_stage(name, started)
        return result

    def first_token(self) -> None:
        """Note the first streamed token (only the first call counts)."""
        if self.first_token_s is None:
            self.first_token_s = time.monotonic() - self.started
