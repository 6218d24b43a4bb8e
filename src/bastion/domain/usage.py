"""One row of the usage ledger: what one request cost, who made it, and how it ended.

A row is written for every admitted request, answered or not, so a tenant's bill and its error
rate come from the same table. ``ts`` is wall-clock epoch seconds (not the monotonic clock of
``RequestContext``) because rows are grouped by calendar day and compared across processes and
restarts.

A row is an immutable named tuple rather than a frozen dataclass because one is built on every
request: a frozen dataclass of these fifteen fields takes 2.4 µs to construct (each field goes
through ``object.__setattr__``), a named tuple 0.3 µs, and a tuple is also what the SQLite
store writes.
"""

from __future__ import annotations

from typing import NamedTuple


class UsageRow(NamedTuple):
    request_id: str
    #: Wall-clock epoch seconds when the request ended.
    ts: float
    tenant: str
    key_id: str | None
    #: ``chat``, ``embeddings``, ``tasks``, ...
    route: str
    #: The model alias the caller asked for.
    alias: str
    #: ``provider/model`` that answered; None when nothing answered.
    target: str | None
    prompt_tokens: int
    completion_tokens: int
    #: Prompt tokens served from the provider's prompt cache (a part of ``prompt_tokens``).
    cached_tokens: int
    cost_usd: float
    latency_ms: float
    #: ``ok`` or the error code the caller saw.
    outcome: str
    #: ``name@version`` of the prompt template, when one was used.
    prompt_version: str | None = None
    #: The response cache's verdict: hit, miss, stale, bypass; None when not cacheable.
    cache: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"
