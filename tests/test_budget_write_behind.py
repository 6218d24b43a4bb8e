"""Budget totals written behind to the durable store: in chunks, and nothing lost when a write
fails part way."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bastion.config import BudgetsConfig
from bastion.domain.context import RequestContext
from bastion.pipeline.admission.budget import FLUSH_CHUNK, BudgetGuard
from bastion.stores.memory import MemoryStore
from bastion.stores.sqlite import SqliteStore


class FailingOnce(SqliteStore):
    """A SQLite store whose ``fail_at``-th ``set_many`` raises (the ones before it write)."""

    def __init__(self, path: str, fail_at: int) -> None:
        super().__init__(path)
        self.fail_at = fail_at
        self.calls: list[int] = []

    async def set_many(self, items: Any) -> None:
        self.calls.append(len(items))
        if len(self.calls) == self.fail_at:
            raise OSError("disk went away")
        await super().set_many(items)


def test_a_failed_chunk_and_the_rest_are_written_at_the_next_flush(tmp_path: Path) -> None:
    async def main() -> None:
        hot = MemoryStore()
        durable = FailingOnce(str(tmp_path / "state.db"), fail_at=2)
        guard = BudgetGuard(hot, BudgetsConfig.model_validate(
            {"default": {"per_day_usd": 1000.0, "per_month_usd": 10000.0}}), durable=durable)
        tenants = FLUSH_CHUNK + 40  # two keys each (day, month): four or five chunks
        for t in range(tenants):
            ctx = RequestContext.create(budget_s=30)
            ctx.tenant = f"tenant-{t}"
            hold = await guard.reserve(ctx, 0.002)
            await guard.settle(hold, 0.001 * (t + 1))
        keys = 2 * tenants
        try:
            await guard.flush()
        except OSError:
            pass
        else:
            raise AssertionError("the second chunk's write was to fail")
        # The first chunk is written; the failed one and those after it wait for the next.
        assert durable.calls == [FLUSH_CHUNK, FLUSH_CHUNK]
        assert len(guard._dirty) == keys - FLUSH_CHUNK
        await guard.flush()
        assert sum(durable.calls[2:]) == keys - FLUSH_CHUNK
        assert all(n <= FLUSH_CHUNK for n in durable.calls)
        assert not guard._dirty
        for t in (0, tenants // 2, tenants - 1):
            ctx = RequestContext.create(budget_s=30)
            ctx.tenant = f"tenant-{t}"
            for key, _, _, _ in guard._periods(ctx):
                assert await durable.get(key) == await hot.get(key) == 1000 * (t + 1)
        await durable.aclose()

    asyncio.run(main())


class CountingReads(SqliteStore):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads: list[list[str]] = []

    async def get_many(self, keys: Any) -> list[Any]:
        self.reads.append(list(keys))
        return await super().get_many(keys)


def test_a_tenants_first_requests_read_its_totals_once_in_one_trip(tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "state.db")
        config = BudgetsConfig.model_validate(
            {"default": {"per_day_usd": 1000.0, "per_month_usd": 10000.0}})
        first = BudgetGuard(MemoryStore(), config, durable=SqliteStore(path))
        ctx = RequestContext.create(budget_s=30)
        ctx.tenant = "acme"
        await first.settle(await first.reserve(ctx, 0.002), 0.25)
        await first.aclose()  # writes the totals behind
        await first.durable.aclose()  # type: ignore[union-attr]

        durable = CountingReads(path)
        hot = MemoryStore()
        again = BudgetGuard(hot, config, durable=durable)
        holds = await asyncio.gather(*(again.reserve(ctx, 0.002) for _ in range(8)))
        keys = [key for key, _, _, _ in again._periods(ctx)]
        assert durable.reads == [keys]  # day and month together, once for all eight
        for key in keys:  # what the file held, plus eight reservations
            assert await hot.get(key) == 250_000 + 8 * 2_000
        for hold in holds:
            await again.release(hold)
        await durable.aclose()

    asyncio.run(main())
