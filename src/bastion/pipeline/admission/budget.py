"""Budgets per tenant and per route, per day and per month, plus a ceiling per request.

Before the call, the request's worst-case cost (its prompt estimate plus ``max_tokens`` at the
most expensive price of its fallback chain) is *reserved* in every budget that applies, each
with one atomic ``reserve`` (add only if the total stays within the limit). After the call the
reservation is settled to the real cost. So concurrent requests at the edge of a budget can
never overshoot it by more than one reservation, and in practice not at all: a reservation that
does not fit is refused before anything is spent.

Amounts are integer micro-dollars in the store, so sums are exact. Periods are UTC calendar
days and months; each period's key expires a little after the period ends.

Where the totals live: reservations happen in the *hot* store, where they are atomic and cheap
(process memory for one worker, the store the workers share for several), and the totals are
written behind to the *durable* store (the SQLite file) every ``FLUSH_INTERVAL_S``; a process
that meets a period's key for the first time seeds it from there (``set_if_absent``, so
workers sharing a hot store seed it once). A reservation and its settlement against the
SQLite file cost ~110 µs of CPU per request (two transactions through its thread) against
~2 µs in memory (``bench/run.py``, profiled with py-spy); the price is that a process killed
outright loses at most the last second of spend from the file (a clean shutdown writes it
all). When the hot store is the durable one, nothing is written behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from bastion.config import Budget, BudgetsConfig
from bastion.domain.context import RequestContext
from bastion.domain.errors import BudgetExceeded
from bastion.stores.base import KeyValueStore

_DAY_TTL_S = 2 * 86_400.0
_MONTH_TTL_S = 32 * 86_400.0
#: How often totals are written behind to the durable store.
FLUSH_INTERVAL_S = 1.0
#: Budget totals written per transaction at most (see ``BudgetGuard.flush``).
FLUSH_CHUNK = 512
#: How often the keys of periods that are over are forgotten.
_PRUNE_EVERY_S = 60.0

log = logging.getLogger("bastion.budgets")


def to_micros(usd: float) -> int:
    return round(usd * 1_000_000)


@dataclass(slots=True)
class BudgetHold:
    #: (store key, its period's TTL) for every budget this request reserved in.
    keys: list[tuple[str, float]] = field(default_factory=list)
    reserved_micros: int = 0


class BudgetGuard:
    def __init__(self, store: KeyValueStore, config: BudgetsConfig,
                 clock: object = time.time, *, durable: KeyValueStore | None = None) -> None:
        """``store`` holds the running totals; ``durable``, when it is another store, keeps
        them across restarts (written behind, see the module's docstring)."""
        self.store = store
        self.durable = durable if durable is not store else None
        self.config = config
        self.clock = clock
        #: Keys this process has seeded (their TTL), or is seeding (a future to wait on).
        self._seeded: dict[str, float] = {}
        self._seeding: dict[str, asyncio.Future[None]] = {}
        #: Keys whose total changed since the last write-behind.
        self._dirty: set[str] = set()
        self._writer: asyncio.Task[None] | None = None
        self._pruned_at = time.monotonic()
        self._dates: tuple[int, str, str] = (-1, "", "")
        self._plans: dict[tuple[str, str], tuple[str, list[tuple[str, float, str, float]]]] = {}
        #: Whether any budget sets any ceiling; when none does, admission skips the guard.
        self.configured = any(
            b.per_day_usd is not None or b.per_month_usd is not None
            or b.per_request_usd is not None
            for b in (config.default, *config.tenants.values(), *config.routes.values()))

    def _periods(self, ctx: RequestContext) -> list[tuple[str, float, str, float]]:
        """(key, limit in usd, scope description, ttl) for every budget that applies, worked
        out once per tenant, route and day."""
        day, month = self._period_names(self.clock())  # type: ignore[arg-type]
        ident = (ctx.tenant, ctx.route)
        planned = self._plans.get(ident)
        if planned is not None and planned[0] == day:
            return planned[1]
        periods = self._build_periods(ctx, day, month)
        if len(self._plans) >= 65_536:
            self._plans.clear()
        self._plans[ident] = (day, periods)
        return periods

    def _build_periods(self, ctx: RequestContext, day: str,
                       month: str) -> list[tuple[str, float, str, float]]:
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

    def _period_names(self, now: float) -> tuple[str, str]:
        """The UTC day and month of ``now``, formatted once per second."""
        second = int(now)
        if second != self._dates[0]:
            t = time.gmtime(second)
            self._dates = (second, time.strftime("%Y-%m-%d", t), time.strftime("%Y-%m", t))
        return self._dates[1], self._dates[2]

    def _per_request(self, ctx: RequestContext) -> Budget:
        return self.config.tenants.get(ctx.tenant, self.config.default)

    async def reserve(self, ctx: RequestContext, worst_case_usd: float) -> BudgetHold:
        ceiling = self._per_request(ctx).per_request_usd
        if ceiling is not None and worst_case_usd > ceiling:
            raise BudgetExceeded(
                f"the request's worst-case cost ${worst_case_usd:.6f} exceeds the per-request "
                f"ceiling ${ceiling:.6f}; lower max_tokens", param="max_tokens")
        hold = BudgetHold(reserved_micros=to_micros(worst_case_usd))
        periods = self._periods(ctx)
        unseeded = self._unseeded(periods)
        if unseeded:
            await self._seed(unseeded)
        for key, limit, what, ttl in periods:
            if self.durable is not None:
                self._dirty.add(key)
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
            if self.durable is not None:
                self._dirty.update(key for key, _ in hold.keys)
            for key, ttl in hold.keys:
                if delta < 0:
                    await self.store.reserve(key, delta, 0)
                else:
                    await self.store.incr(key, delta, ttl)
        hold.keys.clear()

    async def release(self, hold: BudgetHold) -> None:
        if self.durable is not None:
            self._dirty.update(key for key, _ in hold.keys)
        for key, _ in hold.keys:
            await self.store.reserve(key, -hold.reserved_micros, 0)
        hold.keys.clear()

    # -- the durable copy

    def _unseeded(self, periods: list[tuple[str, float, str, float]]) -> list[tuple[str, float]]:
        """(key, ttl) of the periods this process has not started from the durable store yet
        (none when there is no durable store)."""
        if self.durable is None:
            return []
        return [(key, ttl) for key, _, _, ttl in periods if key not in self._seeded]

    async def _seed(self, keys: list[tuple[str, float]]) -> None:
        """Start this process's use of each (key, ttl) from the total the durable store holds,
        once, all read in one trip (a day and a month: one read, not two, on a tenant's first
        request); concurrent first requests wait for the one that reads a key."""
        waits = [self._seeding[key] for key, _ in keys if key in self._seeding]
        mine = [(key, ttl) for key, ttl in keys if key not in self._seeding]
        if mine:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for key, _ in mine:
                self._seeding[key] = done
            try:
                durable = self.durable
                assert durable is not None  # seeding happens only with a durable store
                totals = await durable.get_many([key for key, _ in mine])
                for (key, ttl), total in zip(mine, totals, strict=True):
                    if total:
                        await self.store.set_if_absent(key, int(total), ttl)
                    self._seeded[key] = ttl
                done.set_result(None)
            except BaseException as exc:
                done.set_exception(exc)
                done.exception()  # the waiters re-raise it; nobody else needs to see it
                raise
            finally:
                for key, _ in mine:
                    del self._seeding[key]
        for pending in waits:
            await asyncio.shield(pending)

    async def flush(self) -> None:
        """Write the totals that changed to the durable store."""
        if self.durable is None or not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        pending = list(dirty)
        chunk: list[str] = []
        try:
            # A transaction per ``FLUSH_CHUNK`` keys: with thousands of tenants, a write per
            # key was thousands of transactions a second; one for all of them held the event
            # loop for tens of milliseconds each second (reading 12,000 totals and binding
            # them: p99 52-66 ms at 10,000 tenants against 18-27 with no write-behind,
            # ``bench/scaling.py --quick --dimensions keys``). Between chunks the loop serves
            # requests while the store's thread writes.
            seeded = self._seeded
            while pending:
                chunk, pending = pending[:FLUSH_CHUNK], pending[FLUSH_CHUNK:]
                items = [(key, int(total), seeded.get(key, _MONTH_TTL_S))
                         for key, total in zip(chunk, await self.store.get_many(chunk),
                                               strict=True) if total is not None]
                await self.durable.set_many(items)  # type: ignore[union-attr]
        except BaseException:
            # What was not written yet goes at the next flush (a chunk that failed included).
            self._dirty.update(chunk)
            self._dirty.update(pending)
            raise
        # Forget the keys of periods that are over (their totals expire in both stores), once
        # a minute: it looks at every key this process has seeded.
        now = time.monotonic()
        if now - self._pruned_at >= _PRUNE_EVERY_S and len(self._seeded) > len(dirty) + 64:
            self._pruned_at = now
            for key in [k for k in self._seeded if k not in dirty]:
                if await self.store.get(key) is None:
                    del self._seeded[key]

    async def start(self) -> None:
        if self.durable is not None and self.configured and self._writer is None:
            self._writer = asyncio.create_task(self._write_behind(),
                                               name="bastion-budget-write-behind")

    async def aclose(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await self.flush()

    async def _write_behind(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - retried at the next tick; said once
                log.warning("budget totals not written to the durable store; retrying",
                            extra={"error": type(exc).__name__})

    async def spent_usd(self, ctx: RequestContext) -> dict[str, float]:
        """What each applicable budget has spent (reservations included), for reporting."""
        out = {}
        periods = self._periods(ctx)
        unseeded = self._unseeded(periods)
        if unseeded:
            await self._seed(unseeded)
        for key, _, what, _ in periods:
            out[what] = (await self.store.get(key) or 0) / 1_000_000
        return out
