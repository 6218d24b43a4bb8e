"""Admission and economy: who may call, how much, at what cost, and what is reused.

Every section has a default that keeps the embedded gateway usable on a laptop with no
ceremony: no authentication on loopback (said loudly at start-up), no limits, no budgets, the
cache and idempotency on, state in process memory plus one SQLite file for durable records.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from bastion.config.base import Strict


class StateConfig(Strict):
    #: Where hot state lives (breakers, rate limits, concurrency leases, budget reservations,
    #: the response cache). ``lmdb`` shares it between the workers of one machine through an
    #: LMDB environment next to the state file (``<sqlite_path>.hot/``, emptied at every
    #: ``bastion serve``), ~3-5 µs per operation; ``sqlite`` shares it through the state file
    #: itself (~140 µs per operation; no extra directory); ``memory`` is the fastest and one
    #: process's only; ``auto`` is memory for one worker and lmdb when several serve (and
    #: ``sqlite_path`` is set).
    hot: Literal["auto", "memory", "sqlite", "lmdb"] = "auto"
    #: The SQLite file for durable records (tenants, keys, usage ledger, idempotency, budget
    #: totals) and, with ``hot: sqlite``, hot state too. Relative paths are relative to the
    #: working directory. None keeps everything in memory (lost on restart; tests and
    #: experiments).
    sqlite_path: str | None = None


class AuthConfig(Strict):
    #: ``required``: every /v1 request needs a key. ``off``: requests run as the tenant
    #: ``default`` without a key, refused at start-up unless the server binds to loopback.
    mode: Literal["required", "off"] = "off"
    #: The environment variable holding the admin key for /admin (never the key itself).
    admin_key_env: str | None = "BASTION_ADMIN_KEY"
    #: Keys whose principal a process remembers (least recently used first out; ~250 bytes
    #: each). Revocations made elsewhere are seen within ``key_recheck_s``.
    key_cache_entries: int = Field(default=50_000, ge=0)
    key_recheck_s: float = Field(default=5.0, gt=0, le=300)


class RateLimit(Strict):
    """Limits for one scope; None means unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    concurrent_requests: int | None = Field(default=None, ge=1)


class LimitsConfig(Strict):
    #: Applied to every tenant without an entry of its own in ``tenants``.
    default: RateLimit = Field(default_factory=RateLimit)
    tenants: dict[str, RateLimit] = Field(default_factory=dict)
    #: Per API key (by key id), on top of the tenant's limits.
    keys: dict[str, RateLimit] = Field(default_factory=dict)
    #: Per route (``chat``, ``embeddings``, ``tasks``), for every tenant separately.
    routes: dict[str, RateLimit] = Field(default_factory=dict)


class Budget(Strict):
    """Spending ceilings in US dollars; None means no ceiling."""

    per_day_usd: float | None = Field(default=None, ge=0)
    per_month_usd: float | None = Field(default=None, ge=0)
    #: The most one request may reserve (its worst case, from ``max_tokens``).
    per_request_usd: float | None = Field(default=None, ge=0)


class BudgetsConfig(Strict):
    default: Budget = Field(default_factory=Budget)
    tenants: dict[str, Budget] = Field(default_factory=dict)
    #: Per route, for every tenant separately.
    routes: dict[str, Budget] = Field(default_factory=dict)
    #: The output tokens assumed for the worst case when a request sets no ``max_tokens``.
    default_max_output_tokens: int = Field(default=4096, ge=1)


class Price(Strict):
    """US dollars per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)


class CacheConfig(Strict):
    enabled: bool = True
    #: Fresh for this long, per route (seconds); a route without an entry uses ``ttl_s``.
    ttl_s: float = Field(default=300.0, gt=0)
    routes_ttl_s: dict[str, float] = Field(default_factory=dict)
    #: How long past its TTL an entry may still be served when every target fails.
    stale_if_error_s: float = Field(default=3600.0, ge=0)
    max_entry_bytes: int = Field(default=1_048_576, ge=1024)
    #: Entries the cache keeps in this process's memory (one worker, ``state.hot`` memory;
    #: beyond it the oldest-written go first) or in the workers' shared LMDB hot state (the
    #: soonest to expire go first). Entries are stored as compact JSON (about 1 KB for a short
    #: chat answer), so the default holds ~10 MB. In the SQLite state file (``state.hot:
    #: sqlite``) entries are bounded by their lifetime instead.
    max_entries: int = Field(default=10_000, ge=1)


class IdempotencyConfig(Strict):
    ttl_s: float = Field(default=86_400.0, gt=0)
    #: A duplicate that arrives while the first request still runs waits for it this long
    #: (bounded by its own deadline), then answers 409.
    wait_s: float = Field(default=30.0, ge=0)


class AdmissionConfig(Strict):
    """Load shedding: requests in flight in this process, by priority. ``batch`` work is shed
    first (at ``batch_share`` of capacity), then ``default`` (at ``default_share``);
    ``critical`` only when the process is full."""

    max_in_flight: int = Field(default=512, ge=1)
    batch_share: float = Field(default=0.5, gt=0, le=1)
    default_share: float = Field(default=0.9, gt=0, le=1)
    retry_after_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AdmissionConfig:
        if self.batch_share > self.default_share:
            raise ValueError("batch_share must not exceed default_share")
        return self


class LedgerConfig(Strict):
    #: Rows waiting to be written; beyond it rows are dropped and counted, never blocking.
    queue_size: int = Field(default=10_000, ge=1)
    batch_size: int = Field(default=256, ge=1)
    flush_interval_s: float = Field(default=0.5, gt=0)
