"""Prometheus metrics read off the pipeline's own objects when ``/metrics`` is scraped: each
circuit breaker's state and how often this process opened it, each bulkhead's slots in use,
callers waiting, waits and rejections.

Nothing is updated per request for these: the breakers and bulkheads already keep the figures
(``CircuitBreaker.seen_state``, ``Bulkhead.waited``), so the request path pays nothing and the
scrape reads them. A breaker's state is as this process last saw it in the store; with state
shared between workers, ``GET /ready`` reads the store itself.

Pipelines register themselves weakly, so a gateway that is dropped (tests build many) stops
being reported. Labels are targets and bulkhead names from the config: bounded.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

if TYPE_CHECKING:
    from bastion.pipeline.breaker import CircuitBreaker
    from bastion.pipeline.bulkhead import Bulkhead

#: Worst first: several gateways in one process reporting one target show the worst state.
BREAKER_STATES = ("open", "half_open", "closed")


class PipelineMetrics(Collector):
    def __init__(self) -> None:
        self._breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
        self._bulkheads: weakref.WeakSet[Bulkhead] = weakref.WeakSet()

    def watch(self, breakers: Any, bulkheads: Any) -> None:
        self._breakers.update(breakers)
        self._bulkheads.update(bulkheads)

    def collect(self) -> Iterator[Any]:
        state: dict[str, str] = {}
        opened: dict[str, int] = defaultdict(int)
        for breaker in list(self._breakers):
            seen = breaker.seen_state()
            known = state.get(breaker.key)
            if known is None or BREAKER_STATES.index(seen) < BREAKER_STATES.index(known):
                state[breaker.key] = seen
            opened[breaker.key] += breaker.opened
        gauge = GaugeMetricFamily(
            "bastion_breaker_state", "Circuit breaker state per target: 1 for the state it is "
            "in (closed, open, half_open), 0 for the others.", labels=["target", "state"])
        for target, current in sorted(state.items()):
            for name in BREAKER_STATES:
                gauge.add_metric([target, name], 1.0 if name == current else 0.0)
        yield gauge
        opens = CounterMetricFamily("bastion_breaker_opened", "Times this process opened a "
                                    "target's circuit breaker.", labels=["target"])
        for target, n in sorted(opened.items()):
            opens.add_metric([target], n)
        yield opens

        in_flight = GaugeMetricFamily("bastion_bulkhead_in_flight", "Calls holding a slot of "
                                      "the bulkhead.", labels=["bulkhead"])
        waiting = GaugeMetricFamily("bastion_bulkhead_waiting", "Callers waiting for a slot "
                                    "of the bulkhead.", labels=["bulkhead"])
        waits = CounterMetricFamily("bastion_bulkhead_waits", "Callers that found every slot "
                                    "busy and waited.", labels=["bulkhead"])
        waited = CounterMetricFamily("bastion_bulkhead_wait_seconds", "Total time callers "
                                     "spent waiting for a slot.", labels=["bulkhead"])
        rejected = CounterMetricFamily("bastion_bulkhead_rejected", "Callers refused a slot "
                                       "(every slot stayed busy past the wait).",
                                       labels=["bulkhead"])
        sums: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0, 0])
        for head in list(self._bulkheads):
            acc = sums[head.name]
            acc[0] += head.in_flight
            acc[1] += head.waiting
            acc[2] += head.waited
            acc[3] += head.waited_s
            acc[4] += head.rejected
        for name, (flying, queued, n_waits, seconds, refused) in sorted(sums.items()):
            in_flight.add_metric([name], flying)
            waiting.add_metric([name], queued)
            waits.add_metric([name], n_waits)
            waited.add_metric([name], seconds)
            rejected.add_metric([name], refused)
        yield from (in_flight, waiting, waits, waited, rejected)


PIPELINE_METRICS = PipelineMetrics()
REGISTRY.register(PIPELINE_METRICS)
