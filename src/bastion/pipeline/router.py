"""The route stage: walk the alias's fallback chain, one target at a time, in order.

Bounded by construction: each target is tried at most once per request (config rejects a
chain that names a target twice), each with its own retries, and nothing starts once the
deadline is spent. A request the upstream rejected as invalid (400, 413, 422) ends the chain:
another model would reject it too. Everything else moves on to the next target.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from bastion.config import ModelAlias, TargetConfig
from bastion.domain.errors import (
    AllTargetsFailed,
    ContractViolation,
    DeadlineExceeded,
    DependencyError,
    ModelNotFound,
    OutputContractFailed,
    UpstreamRejected,
    UpstreamTimeout,
)
from bastion.observability.metrics import CONTRACT_REFUSALS
from bastion.pipeline.call import AttemptCall, ChatCall
from bastion.pipeline.contract.enforce import enforce
from bastion.pipeline.retry import try_target
from bastion.pipeline.stage import Handler
from bastion.pipeline.stream import TargetStream
from bastion.providers.base import CallTimeout, Provider
from bastion.providers.watchdog import TimeLimit

_REQUEST_FAULTS = frozenset({400, 413, 422})
log = logging.getLogger("bastion.contract")


async def call_provider(attempt: AttemptCall) -> Any:
    """The terminal attempt handler: one provider call with min(target timeout, time left)."""
    ctx = attempt.chat.ctx
    budget = min(attempt.target.timeout_s, ctx.remaining())
    if budget <= 0:
        raise DeadlineExceeded("the request deadline was spent before the attempt")
    connect = getattr(getattr(attempt.provider, "config", None), "connect_timeout_s", budget)
    # The limit below ends the call after ``budget``: the adapter need not arm a timer too.
    timeout = attempt.timeout = CallTimeout(total_s=budget, connect_s=min(connect, budget),
                                            caller_bounds=True)
    provider, request, model = attempt.provider, attempt.chat.request, attempt.target.model
    loop = asyncio.get_running_loop()
    limit = TimeLimit(loop, loop.time() + budget)
    try:
        op = attempt.chat.operation
        if op == "chat":
            response = await provider.chat(request, model, timeout, ctx)
            ctx.add_usage(response.get("usage"))
            return response
        if op == "stream":
            opened = await provider.open_stream(request, model, timeout, ctx)
            return TargetStream(opened, attempt.target.key)
        response = await provider.embeddings(request, model, timeout, ctx)
        ctx.add_usage(response.get("usage"))
        return response
    except asyncio.CancelledError:
        try:
            limit.raise_if_expired()
        except TimeoutError:
            raise UpstreamTimeout(
                f"{attempt.target.key}: no answer within {budget:.3g}s") from None
        raise
    finally:
        limit.close()


class Router:
    def __init__(self, aliases: dict[str, ModelAlias], providers: dict[str, Provider],
                 attempt_handler: Handler[AttemptCall, Any], seed: int | None = None) -> None:
        self.aliases = aliases
        self.providers = providers
        self.attempt_handler = attempt_handler
        self.rng = random.Random(seed)

    def alias(self, call: ChatCall) -> ModelAlias:
        spec = self.aliases.get(call.alias)
        want = "embeddings" if call.operation == "embeddings" else "chat"
        if spec is None or spec.kind != want:
            known = sorted(a for a, s in self.aliases.items() if s.kind == want)
            raise ModelNotFound(
                f"The model '{call.alias}' does not exist or is not a {want} model. "
                f"Known {want} models: {', '.join(known) or '(none)'}", param="model")
        return spec

    async def __call__(self, call: ChatCall) -> Any:
        targets: list[TargetConfig] = self.alias(call).targets
        last: DependencyError | None = None
        violated: list[ContractViolation] = []
        for index, target in enumerate(targets):
            if call.ctx.expired():
                raise DeadlineExceeded("the request deadline was spent during the fallback chain")
            try:
                result = await self._answer(call, target)
            except UpstreamRejected as exc:
                if exc.status in _REQUEST_FAULTS:
                    raise
                last = exc
            except ContractViolation as exc:
                violated.append(exc)
                last = exc
            except DependencyError as exc:
                last = exc
            else:
                call.ctx.target = target.key
                call.ctx.fallback_used = index > 0
                return result
        if violated:
            refusal = OutputContractFailed(
                f"no answer of '{call.alias}' satisfied the output contract",
                violations=[str(v) for exc in violated for v in exc.violations])
            CONTRACT_REFUSALS.inc()
            # Kinds and paths only: a violation message may quote the model's output.
            log.warning("output contract failed", extra={
                "request_id": call.ctx.request_id, "incident_id": refusal.incident_id,
                "alias": call.alias, "violations": [
                    f"{v.kind}@{v.path}" for exc in violated for v in exc.violations]})
            raise refusal
        raise AllTargetsFailed(
            f"all {len(targets)} target(s) of '{call.alias}' failed; last: "
            f"{last.message if last else 'none tried'}", last=last)

    async def _answer(self, call: ChatCall, target: TargetConfig) -> Any:
        """One target's answer: its retries, then (if declared) its output contract."""
        provider = self.providers[target.provider]

        def call_target(c: ChatCall) -> Any:
            return try_target(c, target, provider, self.attempt_handler, self.rng)

        result = await call_target(call)
        if call.contract is None or call.operation != "chat":
            return result
        response, call.validated = await enforce(call, target, result, call_target)
        return response
