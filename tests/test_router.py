"""The fallback chain: in order, bounded, and honest about which target answered."""

from __future__ import annotations

import pytest

from bastion.config import ModelAlias, TargetConfig
from bastion.domain.chat import ChatRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import (
    AllTargetsFailed,
    DeadlineExceeded,
    ModelNotFound,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from bastion.pipeline.call import ChatCall
from bastion.pipeline.router import Router, call_provider
from tests.fakes import ScriptedProvider

REQUEST = ChatRequest.model_validate({"model": "chain",
                                      "messages": [{"role": "user", "content": "hi"}]})


def router(*providers: ScriptedProvider, retries: int = 1) -> Router:
    targets = [TargetConfig(provider=p.name, model=f"m-{p.name}", retries=retries,
                            backoff_base_s=0.001, backoff_max_s=0.001) for p in providers]
    aliases = {"chain": ModelAlias(targets=targets),
               "vec": ModelAlias(kind="embeddings", targets=targets[:1])}
    return Router(aliases, {p.name: p for p in providers}, call_provider, seed=0)


def call(alias: str = "chain", budget: float = 5.0, operation: str = "chat") -> ChatCall:
    return ChatCall(RequestContext.create(budget_s=budget), REQUEST, alias, operation)


async def test_primary_answers_without_fallback() -> None:
    a, b = ScriptedProvider("a"), ScriptedProvider("b")
    c = call()
    result = await router(a, b)(c)
    assert result["model"] == "m-a"
    assert c.ctx.target == "a/m-a" and c.ctx.fallback_used is False
    assert b.calls == 0


async def test_falls_back_after_the_primary_exhausts_its_retries() -> None:
    a = ScriptedProvider("a", [UpstreamUnavailable("down")] * 5)
    b = ScriptedProvider("b")
    c = call()
    result = await router(a, b, retries=1)(c)
    assert result["model"] == "m-b"
    assert a.calls == 2 and b.calls == 1
    assert c.ctx.target == "b/m-b" and c.ctx.fallback_used is True
    assert [(x.target, x.outcome) for x in c.ctx.attempts] == [
        ("a/m-a", "upstream_unavailable"), ("a/m-a", "upstream_unavailable"), ("b/m-b", "ok")]


async def test_an_invalid_request_ends_the_chain_with_the_upstream_status() -> None:
    a = ScriptedProvider("a", [UpstreamRejected("context too long", upstream_status=400)])
    b = ScriptedProvider("b")
    with pytest.raises(UpstreamRejected) as info:
        await router(a, b)(call())
    assert info.value.status == 400
    assert b.calls == 0


async def test_our_credentials_refused_moves_on_to_the_next_target() -> None:
    a = ScriptedProvider("a", [UpstreamRejected("bad key", upstream_status=401)])
    b = ScriptedProvider("b")
    c = call()
    await router(a, b)(c)
    assert a.calls == 1 and b.calls == 1 and c.ctx.fallback_used


async def test_when_every_target_fails_the_last_failure_is_reported() -> None:
    a = ScriptedProvider("a", [UpstreamUnavailable("down")] * 5)
    b = ScriptedProvider("b", [UpstreamRateLimited("busy", retry_after=60)] * 5)
    with pytest.raises(AllTargetsFailed) as info:
        await router(a, b)(call())
    assert info.value.status == 429 and info.value.retry_after == 60
    assert "busy" in info.value.message
    assert a.calls == 2 and b.calls == 1  # a Retry-After over the cap is not waited for


async def test_unknown_alias_or_wrong_kind_is_model_not_found() -> None:
    with pytest.raises(ModelNotFound) as info:
        await router(ScriptedProvider("a"))(call(alias="nope"))
    assert info.value.param == "model" and "chain" in info.value.message
    with pytest.raises(ModelNotFound):
        await router(ScriptedProvider("a"))(call(alias="vec", operation="chat"))


async def test_no_target_is_tried_once_the_deadline_is_spent() -> None:
    a = ScriptedProvider("a")
    with pytest.raises(DeadlineExceeded):
        await router(a)(call(budget=0.0))
    assert a.calls == 0
