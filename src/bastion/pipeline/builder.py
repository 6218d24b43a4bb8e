"""Composes the stages of DESIGN.md into the chat route, once, at start-up."""

from __future__ import annotations

from typing import Any

from bastion.config import BastionConfig, BulkheadPolicy
from bastion.observability.pipeline_metrics import PIPELINE_METRICS
from bastion.pipeline.breaker import BreakerStage, CircuitBreaker
from bastion.pipeline.bulkhead import Bulkhead, BulkheadStage
from bastion.pipeline.call import AttemptCall, ChatCall
from bastion.pipeline.deadline import DeadlineStage
from bastion.pipeline.router import Router, call_provider
from bastion.pipeline.stage import Handler, compose
from bastion.providers.base import Provider
from bastion.stores.base import KeyValueStore


class ChatPipeline:
    """The request stages in front of the router, and the attempt stages behind it.

    request:  deadline ─► route (fallback chain, classified retry per target)
    attempt:  circuit breaker ─► bulkhead (provider, then target) ─► provider call

    The breaker is consulted before the bulkhead so a request never queues for a slot of a
    target it would then skip.
    """

    def __init__(self, config: BastionConfig, providers: dict[str, Provider],
                 store: KeyValueStore, *, seed: int | None = None) -> None:
        self.bulkheads = {name: Bulkhead(f"provider {name}", p.bulkhead)
                          for name, p in config.providers.items()}
        target_heads: dict[str, Bulkhead] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        for spec in config.models.values():
            for target in spec.targets:
                self.breakers.setdefault(
                    target.key, CircuitBreaker(target.key, target.breaker, store))
                if target.max_concurrency:
                    target_heads.setdefault(target.key, Bulkhead(
                        f"target {target.key}",
                        BulkheadPolicy(max_concurrency=target.max_concurrency,
                                       max_wait_s=config.providers[target.provider]
                                       .bulkhead.max_wait_s)))
        attempt: Handler[AttemptCall, Any] = compose(
            [BreakerStage(self.breakers), BulkheadStage(self.bulkheads, target_heads)],
            call_provider,
        )
        PIPELINE_METRICS.watch(self.breakers.values(),
                               [*self.bulkheads.values(), *target_heads.values()])
        self.router = Router(config.models, providers, attempt, seed=seed)
        self.handle: Handler[ChatCall, Any] = compose([DeadlineStage()], self.router)

    async def breaker_states(self) -> dict[str, str]:
        return {key: await b.state() for key, b in self.breakers.items()}
