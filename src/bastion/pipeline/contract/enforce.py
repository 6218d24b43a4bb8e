"""Enforce the output contract on one target's answer: check, one repair, or give up on it.

The router calls this after a target answered. A valid answer goes back to the caller; an
invalid one earns exactly one repair on the same target; if the repair is invalid too, the
target has failed (``ContractViolation``) and the router moves on to the next one. When the
chain ends without a valid answer, the router turns the violations into the safe refusal,
``OutputContractFailed``. Every check is recorded on the context (for the response headers and
logs) and counted.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from bastion.config import TargetConfig
from bastion.domain.context import ContractStep
from bastion.domain.errors import ContractViolation
from bastion.observability.metrics import CONTRACT_CHECKS, CONTRACT_VIOLATIONS
from bastion.pipeline.call import ChatCall
from bastion.pipeline.contract.output import Checked, OutputContract
from bastion.pipeline.contract.repair import repair_request, summarize

Retry = Callable[[ChatCall], Awaitable[Any]]


def _check(call: ChatCall, contract: OutputContract, target: TargetConfig, phase: str,
           response: dict[str, Any]) -> Checked:
    """Check ``response``, and record and count the verdict."""
    started = time.monotonic()
    checked = contract.check(response)
    ctx = call.ctx
    ctx.contract_steps.append(ContractStep(
        target.key, phase, checked.ok, tuple(str(v) for v in checked.violations),
        start_s=started - ctx.started, duration_s=time.monotonic() - started))
    CONTRACT_CHECKS.labels(phase, "valid" if checked.ok else "invalid").inc()
    for violation in checked.violations:
        CONTRACT_VIOLATIONS.labels(violation.kind).inc()
    return checked


async def enforce(call: ChatCall, target: TargetConfig, response: dict[str, Any],
                  call_target: Retry) -> tuple[dict[str, Any], Any]:
    """The (response, validated value) of a valid answer from ``target``, repairing once.

    ``call_target`` runs one chat call against the same target (with its retries)."""
    contract: OutputContract = call.contract  # type: ignore[assignment]
    checked = _check(call, contract, target, "first", response)
    if checked.ok:
        return checked.response, checked.value  # type: ignore[return-value]
    repair = ChatCall(call.ctx, repair_request(call.request, response, checked.violations),
                      call.alias, "chat", contract)
    repaired = _check(call, contract, target, "repair", await call_target(repair))
    if repaired.ok:
        return repaired.response, repaired.value  # type: ignore[return-value]
    raise ContractViolation(f"{target.key}: {summarize(repaired.violations)}",
                            violations=repaired.violations)
