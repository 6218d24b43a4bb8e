"""Admission: the stages that decide whether a model call happens at all, and the bookkeeping
after it: shedding, rate limits, budgets, then usage, cost and the ledger row.

``enter`` runs before the call, cheapest refusal first: load shedding (no store call), rate
limits (requests, tokens, concurrency), then the budget reservation of the worst-case cost.
``leave`` runs exactly once when the request ends, whatever the outcome: it settles tokens and
cost with the real usage, releases what was held, and records one ledger row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bastion.config import BastionConfig, Price
from bastion.domain.context import RequestContext
from bastion.domain.errors import BastionError, outcome_of
from bastion.domain.usage import UsageRow
from bastion.observability.metrics import ADMISSION_REFUSALS, cache_result_counter
from bastion.pipeline.admission.budget import BudgetGuard, BudgetHold
from bastion.pipeline.admission.ratelimit import RateHold, RateLimiter
from bastion.pipeline.admission.shedding import LoadShedder
from bastion.services.ledger import UsageLedger
from bastion.services.pricing import cost_usd, worst_case_cost_usd
from bastion.stores.base import KeyValueStore


@dataclass(slots=True)
class Ticket:
    """What one admitted request holds until ``leave``; None where nothing is configured."""

    rate: RateHold | None
    budget: BudgetHold | None
    alias: str
    left: bool = False


class AdmissionService:
    def __init__(self, config: BastionConfig, hot: KeyValueStore, durable: KeyValueStore,
                 ledger: UsageLedger) -> None:
        self.config = config
        self.shedder = LoadShedder(config.admission)
        self.limiter = RateLimiter(hot, config.limits)
        # Budgets are money: reserved in the hot store (atomic, shared by the workers), their
        # totals kept in the durable store (written behind; see ``BudgetGuard``).
        self.budgets = BudgetGuard(hot, config.budgets, durable=durable)
        self.ledger = ledger
        # The config does not change while it serves: what can be decided once is. A stage
        # with nothing configured (the default: no limits, no budgets, no prices) then costs
        # no store call, no date and no arithmetic per request.
        self._limits_on = self.limiter.configured
        self._budgets_on = self.budgets.configured
        self._worst_prices = {alias: self._worst_price(alias) for alias in config.models}

    async def start(self) -> None:
        await self.budgets.start()

    async def aclose(self) -> None:
        """After the last request: the budgets' totals are written to the durable store."""
        await self.budgets.aclose()

    def _worst_price(self, alias: str) -> Price | None:
        spec = self.config.models.get(alias)
        prices = [self.config.pricing[t.key] for t in (spec.targets if spec else [])
                  if t.key in self.config.pricing]
        if not prices:
            return None
        return max(prices, key=lambda p: (p.input_per_mtok, p.output_per_mtok))

    async def enter(self, ctx: RequestContext, alias: str, prompt_tokens: int,
                    max_output_tokens: int | None) -> Ticket:
        """Admit the request or raise (``Overloaded``, ``TenantLimitExceeded``,
        ``BudgetExceeded``); nothing is held when it raises."""
        try:
            self.shedder.enter(ctx.priority)
        except BastionError as exc:
            ADMISSION_REFUSALS.labels(ctx.route, exc.code).inc()
            raise
        output = (self.config.budgets.default_max_output_tokens if max_output_tokens is None
                  else max_output_tokens)
        rate: RateHold | None = None
        budget: BudgetHold | None = None
        try:
            if self._limits_on:
                rate = await self.limiter.admit(ctx, prompt_tokens + output)
            if self._budgets_on:
                try:
                    worst = worst_case_cost_usd(prompt_tokens, output,
                                                self._worst_prices.get(alias))
                    budget = await self.budgets.reserve(ctx, worst)
                except BaseException:
                    if rate is not None:
                        await self.limiter.release(rate, refund_tokens=True)
                    raise
        except BaseException as exc:
            self.shedder.leave()
            if isinstance(exc, BastionError):
                ADMISSION_REFUSALS.labels(ctx.route, exc.code).inc()
            raise
        return Ticket(rate, budget, alias)

    async def leave(self, ticket: Ticket, ctx: RequestContext,
                    error: BaseException | None = None) -> None:
        if ticket.left:
            return
        ticket.left = True
        if ctx.cache is not None:
            cache_result_counter(ctx.route, ctx.cache).inc()
        try:
            usage = ctx.usage
            price = self.config.pricing.get(ctx.target) if ctx.target else None
            ctx.cost_usd = cost_usd(usage, price) if ctx.cache != "hit" else 0.0
            if ticket.rate is not None:
                tokens = _total_tokens(usage) if ctx.cache != "hit" else 0
                await self.limiter.settle(ticket.rate, tokens)
            if ticket.budget is not None:
                await self.budgets.settle(ticket.budget, ctx.cost_usd)
        finally:
            self.shedder.leave()
            self.ledger.record(usage_row(ctx, ticket.alias, error))


def _total_tokens(usage: dict[str, Any] | None) -> int:
    if not usage:
        return 0
    return int(usage.get("total_tokens") or (usage.get("prompt_tokens", 0) +
                                             usage.get("completion_tokens", 0)))


def usage_row(ctx: RequestContext, alias: str, error: BaseException | None) -> UsageRow:
    usage = ctx.usage or {}
    details = usage.get("prompt_tokens_details") or {}
    return UsageRow(
        request_id=ctx.request_id, ts=time.time(), tenant=ctx.tenant, key_id=ctx.key_id,
        route=ctx.route, alias=alias, target=ctx.target,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
        cost_usd=ctx.cost_usd, latency_ms=ctx.elapsed() * 1000.0, outcome=outcome_of(error),
        prompt_version=ctx.prompt, cache=ctx.cache)
