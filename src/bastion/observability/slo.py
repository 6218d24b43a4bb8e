"""The SLO view of a window of requests: latency percentiles, error rate by class, fallback
and cache-hit rates, cost by tenant, and a per-minute series.

Percentiles are exact (nearest rank over the window's requests), not read off histogram
buckets: the dashboard reads them from the journal, which has every request's latency.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from bastion.stores.journal import SummaryRow

#: Cache verdicts that mean a lookup happened (``bypass`` and None did not look).
_LOOKED_UP = frozenset({"hit", "miss", "stale"})
#: Tenants listed by cost; the rest are summed as one line.
TOP_TENANTS = 20


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of an ascending sequence."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _percentiles(values: list[float]) -> dict[str, float | None]:
    values.sort()
    return {"p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99)}


def summarize(rows: Sequence[SummaryRow], *, window_s: float, now: float,
              truncated: bool = False, **extra: Any) -> dict[str, Any]:
    """``rows`` are (ts, tenant, outcome, latency_ms, ttft_ms, fallback, cache, cost_usd)."""
    latencies: list[float] = []
    ttfts: list[float] = []
    by_outcome: dict[str, int] = defaultdict(int)
    tenants: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    minutes: dict[int, list[Any]] = defaultdict(lambda: [0, 0, []])
    fallbacks = hits = lookups = 0
    for ts, tenant, outcome, latency_ms, ttft_ms, fallback, cache, cost in rows:
        latencies.append(latency_ms)
        if ttft_ms is not None:
            ttfts.append(ttft_ms)
        by_outcome[outcome] += 1
        fallbacks += fallback
        if cache in _LOOKED_UP:
            lookups += 1
            hits += cache != "miss"
        spent = tenants[tenant]
        spent[0] += 1
        spent[1] += cost
        minute = minutes[int(ts // 60) * 60]
        minute[0] += 1
        minute[1] += outcome != "ok"
        minute[2].append(latency_ms)
    total = len(rows)
    errors = total - by_outcome.get("ok", 0)
    ranked = sorted(tenants.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))
    cost_by_tenant = [{"tenant": t, "requests": int(n), "cost_usd": round(usd, 8)}
                      for t, (n, usd) in ranked[:TOP_TENANTS]]
    if len(ranked) > TOP_TENANTS:
        rest = ranked[TOP_TENANTS:]
        cost_by_tenant.append({"tenant": f"({len(rest)} more)",
                               "requests": int(sum(v[0] for _, v in rest)),
                               "cost_usd": round(sum(v[1] for _, v in rest), 8)})
    series = []
    for start in sorted(minutes):
        n, failed, values = minutes[start]
        values.sort()
        series.append({"minute": start, "requests": n, "errors": failed,
                       "p95_ms": percentile(values, 95)})
    return {
        "window_s": window_s,
        "now": now,
        "requests": total,
        "truncated": truncated,
        "errors": errors,
        "error_rate": errors / total if total else 0.0,
        "errors_by_class": {k: v for k, v in sorted(by_outcome.items()) if k != "ok"},
        "latency_ms": _percentiles(latencies),
        "ttft_ms": _percentiles(ttfts),
        "fallback_rate": fallbacks / total if total else 0.0,
        "cache": {"lookups": lookups, "hits": hits,
                  "hit_rate": hits / lookups if lookups else None},
        "cost_usd": round(sum(v[1] for v in tenants.values()), 8),
        "cost_by_tenant": cost_by_tenant,
        "series": series,
        **extra,
    }
