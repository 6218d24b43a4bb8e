"""Budgets per tenant and per route, per day and per month, plus a ceiling per request.

Before the call, the request's worst-case cost (its prompt estimate plus ``max_tokens`` at the
most expensive price of its fallback chain) is *reserved* in every budget that applies, each
with one atomic ``reserve`` (add only if the total stays within the limit). After the call the
reservation is settled to the real cost. So concurrent requests at the edge of a budget can
never overshoot it by more than one reservation, and in practice not at all: a reservation that
does not fit is refused before anything is spent.

Amounts are integer micro-dollars in the store, so sums are exact. Periods are UTC calendar
days and months; each period's key expires a little after the period ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bastion.config import Budget, BudgetsConfig
from bastion.domain.context import RequestContext
from bastion.domain.errors import BudgetExceeded
from bastion.stores.base import KeyValueStore

_DAY_TTL_S = 2 * 86_400.0
_MONTH_TTL_S = 32 * 86_400.0


def to_micros(usd: float) -> int:
    return round(usd * 1_000_000)


@dataclass(slots=True)
class BudgetHold:
    #: (store key, its period's TTL) for every budget this request reserved in.
    keys: list[tuple[str, float]] = field(default_factory=list)
    reserved_micros: int = 0


class BudgetGuard:
    def __init__(self, store: KeyValueStore, config: BudgetsConfig,
                 clock: object = time.time) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        #: Whether any budget sets any ceiling; when none does, admission skips the guard.
        self.configured = any(
            b.per_day_usd is not None or b.per_month_usd is not None
            or b.per_request_usd is not None
            for b in (config.default, *config.tenants.values(), *config.routes.values()))

    def _periods(self, ctx: RequestContext) -> list[tuple[str, float, str, float]]:
        """(key, limit in usd, scope description, ttl) for every budget that applies."""
        now = time.gmtime(self.clock())  # type: ignore[operator]
        day, month = time.strftime("%Y-%m-%d", now), time.strftime("%Y-%m", now)
        out: list[tuple[str, float, str, float]] = []
        tenant = self.config.tenants.get(ctx.tenant, self.config.default)
        route = self.config.routes.get(ctx.route)
        for prefix, budget, what in ((f"b:t:{ctx.tenant}", tenant, f"tenant {ctx.tenant}"),
                                     (f"b:r:{ctx.tenant}:{ctx.route}", route,
                                      f"route {ctx.route}")):
            if budget is None:
                continue
            if budget.per_day_usd is not None:
                out.append((f"{prefix}:d:{day}", budget.per_day_usd, f"{what} daily",
                            _DAY_TTL_S))
            if budget.per_month_usd is not None:
                out.append((f"{prefix}:m:{month}", budget.per_month_usd, f"{what} monthly",
                            _MONTH_TTL_S))
        return out

    def _per_request(self, ctx: RequestContext) -> Budget:
        return self.config.tenants.get(ctx.tenant, self.config.default)

    async def reserve(self, ctx: RequestContext, worst_case_usd: float) -> BudgetHold:
        ceiling = self._per_request(ctx).per_request_usd
        if ceiling is not None and worst_case_usd > ceiling:
            raise BudgetExceeded(
                f"the request's worst-case cost ${worst_case_usd:.6f} exceeds the per-request "
                f"ceiling ${ceiling:.6f}; lower max_tokens", param="max_tokens")
        hold = BudgetHold(reserved_micros=to_micros(worst_case_usd))
        for key, limit, what, ttl in self._periods(ctx):
            ok, total = await self.store.reserve(key, hold.reserved_micros, to_micros(limit),
                                                 ttl)
            if not ok:
                await self.release(hold)
                left = max(0, to_micros(limit) - total) / 1_000_000
                raise BudgetExceeded(
                    f"the {what} budget of ${limit:.2f} has ${left:.6f} left, less than this "
                    f"request's worst case ${worst_case_usd:.6f}")
            hold.keys.append((key, ttl))
        return hold

    async def settle(self, hold: BudgetHold, actual_usd: float) -> None:
        """Turn the reservation into the real cost (which may be lower, or, when the prompt
        estimate was low, a little higher: that is charged too, never lost)."""
        delta = to_micros(actual_usd) - hold.reserved_micros
        if delta:
            for key, ttl in hold.keys:
                if delta < 0:
                    await self.store.reserve(key, delta, 0)
                else:
                    await self.store.incr(key, delta, ttl)
        hold.keys.clear()

    async def release(self, hold: BudgetHold) -> None:
        for key, _ in hold.keys:
            await self.store.reserve(key, -hold.reserved_micros, 0)
        hold.keys.clear()

    async def spent_usd(self, ctx: RequestContext) -> dict[str, float]:
        """What each applicable budget has spent (reservations included), for reporting."""
        out = {}
        for key, _, what, _ in self._periods(ctx):
            out[what] = (await self.store.get(key) or 0) / 1_000_000
        return out
