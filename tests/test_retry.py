"""Classified retry: transient failures only, backoff with jitter, Retry-After, the deadline."""

from __future__ import annotations

import random
import time

import pytest

from bastion.config import TargetConfig
from bastion.domain.chat import ChatRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import (
    BulkheadFull,
    CircuitOpen,
    UpstreamConnectError,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_upstream_status,
)
from bastion.pipeline.call import ChatCall
from bastion.pipeline.retry import backoff_delay, try_target
from bastion.pipeline.router import call_provider
from tests.fakes import ScriptedProvider

REQUEST = ChatRequest.model_validate({"model": "a", "messages": [{"role": "user",
                                                                  "content": "hi"}]})


def target(**kw) -> TargetConfig:
    base = {"provider": "p", "model": "m", "retries": 3, "backoff_base_s": 0.001,
            "backoff_max_s": 0.002}
    return TargetConfig(**{**base, **kw})


def call(budget: float = 5.0) -> ChatCall:
    return ChatCall(RequestContext.create(budget_s=budget), REQUEST, "a", "chat")


def test_backoff_grows_exponentially_with_full_jitter_and_a_ceiling() -> None:
    t = target(backoff_base_s=0.1, backoff_max_s=0.5)
    rng = random.Random(1)
    exc = UpstreamUnavailable("x")
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (8, 0.5)]:
        draws = [backoff_delay(attempt, t, exc, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling * 0.8  # the jitter covers the range


def test_retry_after_is_honoured_with_bounded_jitter_and_capped() -> None:
    t = target(retry_after_cap_s=10)
    rng = random.Random(2)
    delays = [backoff_delay(1, t, UpstreamRateLimited("x", retry_after=2.0), rng)
              for _ in range(100)]
    assert all(2.0 <= d <= 2.2 for d in delays)
    assert backoff_delay(1, t, UpstreamRateLimited("x", retry_after=11.0), rng) is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_never_transient(status: int) -> None:
    assert not error_for_upstream_status(status, "x").retryable


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_server_errors_and_429_are_transient(status: int) -> None:
    assert error_for_upstream_status(status, "x").retryable


@pytest.mark.parametrize("exc", [UpstreamTimeout("t"), UpstreamConnectError("c"),
                                 UpstreamUnavailable("u"), UpstreamMalformed("m"),
                                 UpstreamRateLimited("r", retry_after=0.001)])
async def test_transient_failures_are_retried_until_success(exc) -> None:
    provider = ScriptedProvider(script=[exc, exc])
    c = call()
    result = await try_target(c, target(), provider, call_provider, random.Random(0))
    assert result["choices"]
    assert provider.calls == 3
    assert [a.outcome for a in c.ctx.attempts] == [exc.code, exc.code, "ok"]


async def test_gives_up_after_the_configured_retries() -> None:
    provider = ScriptedProvider(script=[UpstreamUnavailable("x")] * 10)
    with pytest.raises(UpstreamUnavailable):
        await try_target(call(), target(retries=2), provider, call_provider, random.Random(0))
    assert provider.calls == 3


@pytest.mark.parametrize("exc", [UpstreamRejected("bad", upstream_status=400),
                                 UpstreamRejected("unauth", upstream_status=401),
                                 UpstreamRejected("missing", upstream_status=404),
                                 UpstreamRejected("unprocessable", upstream_status=422),
                                 BulkheadFull("busy"), CircuitOpen("open")])
async def test_non_transient_failures_are_not_retried(exc) -> None:
    provider = ScriptedProvider(script=[exc])
    with pytest.raises(type(exc)):
        await try_target(call(), target(), provider, call_provider, random.Random(0))
    assert provider.calls == 1


async def test_a_retry_that_would_wait_past_the_deadline_does_not_start() -> None:
    provider = ScriptedProvider(script=[UpstreamRateLimited("slow down", retry_after=2.0)])
    started = time.monotonic()
    with pytest.raises(UpstreamRateLimited):
        await try_target(call(budget=0.5), target(), provider, call_provider, random.Random(0))
    assert provider.calls == 1
    assert time.monotonic() - started < 0.4  # it did not sleep toward the Retry-After


async def test_each_attempt_gets_min_of_its_timeout_and_what_is_left() -> None:
    provider = ScriptedProvider()
    await try_target(call(budget=0.8), target(timeout_s=30), provider, call_provider,
                     random.Random(0))
    assert 0 < provider.timeouts[0].total_s <= 0.8
    provider = ScriptedProvider()
    await try_target(call(budget=30), target(timeout_s=0.3), provider, call_provider,
                     random.Random(0))
    assert provider.timeouts[0].total_s == pytest.approx(0.3)


async def test_an_attempt_that_hangs_is_cancelled_at_its_timeout_and_retried() -> None:
    provider = ScriptedProvider(script=["hang"])
    started = time.monotonic()
    result = await try_target(call(), target(timeout_s=0.1), provider, call_provider,
                              random.Random(0))
    assert result["choices"]
    assert provider.cancelled == 1 and provider.calls == 2
    assert time.monotonic() - started < 1.0
