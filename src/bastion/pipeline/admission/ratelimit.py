"""Rate limits per tenant, per API key and per route: requests and tokens per minute, and
requests in flight, exact across workers because every decision is one atomic store call.

Written on the store's ``window_hit`` (a sliding-window counter) rather than the ``limits``
library: bastion must reserve an estimate before the call and settle it with the real usage
after (``limits`` has no refund), hold and release in-flight slots that a crashed worker gives
back (leases), and run on the same store protocol as budgets, breakers and the cache (memory,
SQLite now; Redis and Postgres later), where ``limits`` has no SQLite or Postgres storage.

A request that passes one scope and fails the next is rolled back in the scopes it passed, so
a refused request never consumes anyone's quota. Refusals are 429 with ``Retry-After`` and the
``x-ratelimit-*`` headers the OpenAI API sends; admitted requests carry the same headers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bastion.config import LimitsConfig, RateLimit
from bastion.domain.context import RequestContext
from bastion.domain.errors import TenantLimitExceeded
from bastion.stores.base import KeyValueStore, WindowHit

WINDOW_S = 60.0


def format_reset(seconds: float) -> str:
    """Durations as the OpenAI API writes them: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


@dataclass(slots=True)
class RateHold:
    """What one admitted request holds, to settle or release when it ends."""

    token_keys: list[str] = field(default_factory=list)
    tokens_estimated: int = 0
    leases: list[str] = field(default_factory=list)
    holder: str = ""


def _limits(limit: RateLimit) -> bool:
    return bool(limit.requests_per_minute or limit.tokens_per_minute
                or limit.concurrent_requests)


@dataclass(frozen=True, slots=True)
class Scope:
    """One scope a request counts against, with its store keys (None: no such limit)."""

    name: str
    limit: RateLimit
    requests_key: str | None
    tokens_key: str | None
    concurrency_key: str | None


def _scope(name: str, limit: RateLimit) -> Scope:
    return Scope(name, limit,
                 f"rl:{name}:req" if limit.requests_per_minute else None,
                 f"rl:{name}:tok" if limit.tokens_per_minute else None,
                 f"rl:{name}:conc" if limit.concurrent_requests else None)


#: Scope lists remembered per (tenant, key, route); cleared when this many gather.
_PLANS_MAX = 65_536


class RateLimiter:
    def __init__(self, store: KeyValueStore, config: LimitsConfig) -> None:
        self.store = store
        self.config = config
        #: Whether any scope has a limit at all; when none has, admission skips the limiter.
        self.configured = any(_limits(limit) for limit in (
            config.default, *config.tenants.values(), *config.keys.values(),
            *config.routes.values()))
        self._plans: dict[tuple[str, str | None, str], tuple[Scope, ...]] = {}

    def scopes(self, ctx: RequestContext) -> tuple[Scope, ...]:
        """The scopes of ``ctx``'s tenant, key and route, worked out once per combination
        (the config does not change while it serves)."""
        ident = (ctx.tenant, ctx.key_id, ctx.route)
        plan = self._plans.get(ident)
        if plan is None:
            tenant = self.config.tenants.get(ctx.tenant, self.config.default)
            scopes = [(f"t:{ctx.tenant}", tenant)]
            if ctx.key_id is not None and ctx.key_id in self.config.keys:
                scopes.append((f"k:{ctx.key_id}", self.config.keys[ctx.key_id]))
            if ctx.route in self.config.routes:
                scopes.append((f"r:{ctx.tenant}:{ctx.route}", self.config.routes[ctx.route]))
            plan = tuple(_scope(name, limit) for name, limit in scopes if _limits(limit))
            if len(self._plans) >= _PLANS_MAX:
                self._plans.clear()
            self._plans[ident] = plan
        return plan

    async def admit(self, ctx: RequestContext, tokens: int) -> RateHold:
        """Count the request against every scope, or raise ``TenantLimitExceeded``."""
        hold = RateHold(tokens_estimated=tokens, holder=ctx.request_id)
        tightest: dict[str, WindowHit] = {}
        request_keys: list[str] = []
        store = self.store
        try:
            for scope in self.scopes(ctx):
                limit = scope.limit
                if scope.requests_key is not None:
                    hit = await store.window_hit(scope.requests_key, 1,
                                                 limit.requests_per_minute,  # type: ignore[arg-type]
                                                 WINDOW_S)
                    self._refuse_unless(hit, "requests per minute", scope.name, tightest,
                                        "requests")
                    request_keys.append(scope.requests_key)
                if scope.tokens_key is not None:
                    hit = await store.window_hit(scope.tokens_key, tokens,
                                                 limit.tokens_per_minute,  # type: ignore[arg-type]
                                                 WINDOW_S)
                    self._refuse_unless(hit, "tokens per minute", scope.name, tightest,
                                        "tokens")
                    hold.token_keys.append(scope.tokens_key)
                if scope.concurrency_key is not None:
                    ttl = max(ctx.remaining(), 1.0) + 30.0
                    if not await store.lease_acquire(scope.concurrency_key, hold.holder,
                                                     limit.concurrent_requests,  # type: ignore[arg-type]
                                                     ttl):
                        raise TenantLimitExceeded(
                            f"too many concurrent requests for {scope.name.split(':')[0]} "
                            f"scope (limit {limit.concurrent_requests})", retry_after=1.0)
                    hold.leases.append(scope.concurrency_key)
        except TenantLimitExceeded as exc:
            for key in request_keys:
                await self.store.window_adjust(key, -1, WINDOW_S)
            await self.release(hold, refund_tokens=True)
            exc.headers.update(ratelimit_headers(tightest))
            raise
        ctx.response_headers.update(ratelimit_headers(tightest))
        return hold

    @staticmethod
    def _refuse_unless(hit: WindowHit, what: str, scope: str,
                       tightest: dict[str, WindowHit], kind: str) -> None:
        best = tightest.get(kind)
        if best is None or hit.remaining < best.remaining or not hit.allowed:
            tightest[kind] = hit
        if not hit.allowed:
            raise TenantLimitExceeded(
                f"rate limit reached: {hit.limit} {what} ({scope.split(':')[0]} scope); "
                f"retry after {hit.retry_after_s:.1f}s", retry_after=hit.retry_after_s)

    async def settle(self, hold: RateHold, tokens_used: int | None) -> None:
        """Replace the token estimate by the real figure, and release in-flight slots."""
        if tokens_used is not None and hold.token_keys:
            delta = tokens_used - hold.tokens_estimated
            if delta:
                for key in hold.token_keys:
                    await self.store.window_adjust(key, delta, WINDOW_S)
        await self.release(hold)

    async def release(self, hold: RateHold, *, refund_tokens: bool = False) -> None:
        if refund_tokens:
            for key in hold.token_keys:
                await self.store.window_adjust(key, -hold.tokens_estimated, WINDOW_S)
            hold.token_keys.clear()
        for key in hold.leases:
            await self.store.lease_release(key, hold.holder)
        hold.leases.clear()


#: The three header names of each kind, spelt once.
_HEADER_NAMES = {kind: (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}",
                        f"x-ratelimit-reset-{kind}") for kind in ("requests", "tokens")}


def ratelimit_headers(tightest: dict[str, WindowHit]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, hit in tightest.items():
        limit_name, remaining_name, reset_name = _HEADER_NAMES[kind]
        headers[limit_name] = str(hit.limit)
        headers[remaining_name] = str(hit.remaining)
        headers[reset_name] = format_reset(hit.reset_s if hit.allowed else hit.retry_after_s)
    return headers
