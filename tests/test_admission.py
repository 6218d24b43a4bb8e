"""Admission and economy over real HTTP, under concurrency: rate limits, budgets, cache,
idempotency, load shedding, authentication and the usage ledger must be exact."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bastion.config import parse_config
from bastion.gateway import Gateway
from tests.conftest import LiveGateway, run_live

BASE = """
version: 1
providers:
  sim: {{type: simulated, seed: 1, reply: "one two three four five", latency: {{value_s: {latency}}},
         bulkhead: {{max_concurrency: 1000, max_wait_s: 5}}}}
  backup: {{type: simulated, seed: 2, reply: "backup answer"}}
models:
  fast:
    targets:
      - {{provider: sim, model: primary, retries: 0, timeout_s: 5,
          breaker: {{failure_threshold: 1000}}}}
      - {{provider: backup, model: secondary, retries: 0, timeout_s: 5}}
state: {{sqlite_path: "{db}"}}
{extra}
"""
MSG = [{"role": "user", "content": "hello"}]


def config(tmp_path: Path, extra: str = "", latency: float = 0.0) -> str:
    return BASE.format(db=tmp_path / "bastion.db", extra=textwrap.dedent(extra),
                       latency=latency)


def gateway(text: str) -> Gateway:
    return Gateway(parse_config(text))


@pytest.fixture
def make_live(tmp_path: Path) -> Iterator[Any]:
    stack: list[Iterator[LiveGateway]] = []

    def start(extra: str = "", latency: float = 0.0) -> LiveGateway:
        runner = run_live(gateway(config(tmp_path, extra, latency)))
        stack.append(runner)
        return next(runner)

    yield start
    for runner in reversed(stack):
        for _ in runner:  # finish the generator: stops the server
            pass


async def burst(base_url: str, n: int, body: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        return await asyncio.gather(*(
            client.post("/v1/chat/completions", json=body or {"model": "fast", "messages": MSG},
                        headers=headers or {}) for _ in range(n)))


# --------------------------------------------------------------------------- rate limits


def test_requests_per_minute_refuse_with_429_and_openai_headers(make_live: Any) -> None:
    live = make_live("limits: {default: {requests_per_minute: 3}}")
    client = openai.OpenAI(base_url=live.v1, api_key="unused", max_retries=0)
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="fast", messages=MSG)
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fast", messages=MSG)
    resp = info.value.response
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_burst_admits_exactly_the_limit(make_live: Any) -> None:
    live = make_live("limits: {default: {requests_per_minute: 40}}")
    calls = live.provider("sim").calls
    statuses = Counter(r.status_code for r in asyncio.run(burst(live.base_url, 150)))
    assert statuses == {200: 40, 429: 110}
    assert live.provider("sim").calls - calls == 40  # refused requests cost no model call


def test_tokens_per_minute_are_estimated_then_settled(make_live: Any) -> None:
    live = make_live("limits: {default: {tokens_per_minute: 100}}")
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        body = {"model": "fast", "messages": MSG, "max_tokens": 60}
        first = http.post("/v1/chat/completions", json=body)
        assert first.status_code == 200
        # The reservation (prompt estimate + 60) was replaced by the real usage (a few tokens),
        # so a second request with the same reservation fits.
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 40
        second = http.post("/v1/chat/completions", json=body)
        assert second.status_code == 200, second.text
        too_big = http.post("/v1/chat/completions", json={**body, "max_tokens": 200})
        assert too_big.status_code == 429
        assert "tokens per minute" in too_big.json()["error"]["message"]


def test_concurrent_requests_limit(make_live: Any) -> None:
    live = make_live("limits: {default: {concurrent_requests: 3}}", latency=0.3)
    statuses = Counter(r.status_code for r in asyncio.run(burst(live.base_url, 12)))
    assert statuses[200] == 3 and statuses[429] == 9
    # The slots come back when the requests end.
    assert Counter(r.status_code for r in asyncio.run(burst(live.base_url, 3))) == {200: 3}


# --------------------------------------------------------------------------- budgets

BUDGET = """
pricing:
  sim/primary: {input_per_mtok: 1000000, output_per_mtok: 1000000}
budgets:
  default: {per_day_usd: 100}
"""


def test_concurrent_requests_never_overspend_a_budget(make_live: Any) -> None:
    live = make_live(BUDGET, latency=0.05)
    body = {"model": "fast", "messages": MSG, "max_tokens": 10}
    responses = asyncio.run(burst(live.base_url, 200, body))
    statuses = Counter(r.status_code for r in responses)
    assert statuses[402] > 0 and statuses[200] > 0
    assert set(statuses) <= {200, 402}
    refusal = next(r for r in responses if r.status_code == 402).json()["error"]
    assert refusal["code"] == "budget_exceeded"
    spent = sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)
    assert spent <= 100  # $1 per token, $100 a day: never overshot
    gw = live.gateway
    ctx = gw.context()
    totals = asyncio.run_coroutine_threadsafe(gw.admission.budgets.spent_usd(ctx),
                                              live.loop).result(5)
    assert totals == {"tenant default daily": pytest.approx(spent)}


def test_a_restart_keeps_what_the_budget_has_spent(tmp_path: Path) -> None:
    text = config(tmp_path, BUDGET)
    body = {"model": "fast", "messages": MSG, "max_tokens": 5}
    for live in run_live(gateway(text)):
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            spent = sum(http.post("/v1/chat/completions", json=body).json()["usage"]
                        ["total_tokens"] for _ in range(4))
            # Written behind within a second, without waiting for the shutdown.
            time.sleep(1.5)
            durable = live.gateway.stores.durable
            keys = asyncio.run_coroutine_threadsafe(
                live.gateway.admission.budgets.spent_usd(live.gateway.context()),
                live.loop).result(5)
            day_key = next(iter(live.gateway.admission.budgets._seeded))
            written = asyncio.run_coroutine_threadsafe(durable.get(day_key),
                                                       live.loop).result(5)
    assert keys == {"tenant default daily": pytest.approx(spent)}
    assert written == spent * 1_000_000
    for live in run_live(gateway(text)):
        totals = asyncio.run_coroutine_threadsafe(
            live.gateway.admission.budgets.spent_usd(live.gateway.context()),
            live.loop).result(5)
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            # $100 a day at $1 a token: after `spent`, a request whose worst case does not
            # fit in what is left is refused by the restarted server.
            big = http.post("/v1/chat/completions",
                            json={**body, "max_tokens": 101 - spent})
            after = asyncio.run_coroutine_threadsafe(
                live.gateway.admission.budgets.spent_usd(live.gateway.context()),
                live.loop).result(5)
    assert totals == {"tenant default daily": pytest.approx(spent)}
    assert big.status_code == 402, big.text
    assert after == {"tenant default daily": pytest.approx(spent)}


def test_a_per_request_ceiling_refuses_before_any_call(make_live: Any) -> None:
    live = make_live(BUDGET + "  tenants: {}\n")
    live.gateway.config.budgets.default.per_request_usd = 5.0
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        resp = http.post("/v1/chat/completions",
                         json={"model": "fast", "messages": MSG, "max_tokens": 50})
    assert resp.status_code == 402
    assert resp.json()["error"]["param"] == "max_tokens"
    assert live.provider("sim").calls == 0


# --------------------------------------------------------------------------- cache


def test_deterministic_requests_are_cached_per_tenant(make_live: Any) -> None:
    live = make_live()
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        before = {r: cache_count(http.get("/metrics").text, r) for r in ("hit", "miss", "bypass")}
    body = {"model": "fast", "messages": MSG, "temperature": 0}
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        first = http.post("/v1/chat/completions", json=body)
        second = http.post("/v1/chat/completions", json=body)
        other = http.post("/v1/chat/completions", json={**body, "max_tokens": 7})
        sampled = http.post("/v1/chat/completions", json={**body, "temperature": 0.7})
        bypass = http.post("/v1/chat/completions", json=body,
                           headers={"cache-control": "no-cache"})
    assert [r.headers.get("x-bastion-cache") for r in (first, second, other, sampled, bypass)] \
        == ["miss", "hit", "miss", None, "bypass"]
    assert second.json() == first.json()
    assert live.provider("sim").calls == 4  # first, other, sampled, bypass
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        scraped = http.get("/metrics").text
    assert cache_count(scraped, "hit") - before["hit"] == 1
    assert cache_count(scraped, "miss") - before["miss"] == 2
    assert cache_count(scraped, "bypass") - before["bypass"] == 1


def cache_count(scraped: str, result: str) -> float:
    prefix = f'bastion_cache_results_total{{result="{result}",route="chat"}} '
    line = next((line for line in scraped.splitlines() if line.startswith(prefix)), None)
    return float(line.removeprefix(prefix)) if line else 0.0


def test_the_in_process_cache_keeps_at_most_max_entries_newest_first(make_live: Any) -> None:
    live = make_live("cache: {max_entries: 3}")
    bodies = [{"model": "fast", "messages": [{"role": "user", "content": f"q{n}"}],
               "temperature": 0} for n in range(5)]
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        for body in bodies:
            assert http.post("/v1/chat/completions", json=body).headers["x-bastion-cache"] \
                == "miss"
        again = [http.post("/v1/chat/completions", json=body).headers["x-bastion-cache"]
                 for body in bodies[::-1]]
    # q4, q3, q2 are the three kept; q1 and q0 were evicted (and re-stored, evicting others).
    assert again == ["hit", "hit", "hit", "miss", "miss"]
    assert live.provider("sim").calls == 7


def test_a_stampede_makes_one_upstream_call(make_live: Any) -> None:
    live = make_live(latency=0.3)
    body = {"model": "fast", "messages": MSG, "temperature": 0}
    responses = asyncio.run(burst(live.base_url, 200, body))
    assert {r.status_code for r in responses} == {200}
    assert live.provider("sim").calls == 1
    assert Counter(r.headers["x-bastion-cache"] for r in responses) == {"miss": 1, "hit": 199}
    assert len({r.json()["id"] for r in responses}) == 1


def test_a_stale_entry_answers_when_every_target_fails(make_live: Any) -> None:
    live = make_live("cache: {ttl_s: 0.2, stale_if_error_s: 60}")
    body = {"model": "fast", "messages": MSG, "seed": 42}
    down = json.dumps({"kind": "status", "status": 503})
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        fresh = http.post("/v1/chat/completions", json=body)
        import time
        time.sleep(0.3)
        stale = http.post("/v1/chat/completions", json=body,
                          headers={"x-bastion-simulate": down})
        uncached = http.post("/v1/chat/completions", json={**body, "seed": 43},
                             headers={"x-bastion-simulate": down})
    assert stale.status_code == 200 and stale.headers["x-bastion-cache"] == "stale"
    assert stale.json() == fresh.json()
    assert uncached.status_code == 503


# --------------------------------------------------------------------------- idempotency


def test_a_repeated_key_replays_the_stored_answer(make_live: Any) -> None:
    live = make_live()
    body = {"model": "fast", "messages": MSG}
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        key = {"idempotency-key": "order-17"}
        first = http.post("/v1/chat/completions", json=body, headers=key)
        again = http.post("/v1/chat/completions", json=body, headers=key)
        reused = http.post("/v1/chat/completions", json={**body, "max_tokens": 3}, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.json() == first.json()
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert live.provider("sim").calls == 1


def test_concurrent_duplicates_make_exactly_one_upstream_call(make_live: Any) -> None:
    live = make_live(latency=0.3)
    responses = asyncio.run(burst(live.base_url, 200, headers={"idempotency-key": "dup-1"}))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1
    assert live.provider("sim").calls == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 199


def test_a_transient_failure_releases_the_key(make_live: Any) -> None:
    live = make_live()
    body = {"model": "fast", "messages": MSG}
    down = json.dumps({"kind": "status", "status": 503})
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        key = {"idempotency-key": "retry-me"}
        failed = http.post("/v1/chat/completions", json=body,
                           headers={**key, "x-bastion-simulate": down})
        retried = http.post("/v1/chat/completions", json=body, headers=key)
    assert failed.status_code == 503
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers


def test_streams_are_replayed_too(make_live: Any) -> None:
    live = make_live()
    body = {"model": "fast", "messages": MSG, "stream": True}
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        key = {"idempotency-key": "stream-1"}
        first = http.post("/v1/chat/completions", json=body, headers=key)
        again = http.post("/v1/chat/completions", json=body, headers=key)
    assert first.text.rstrip().endswith("data: [DONE]")
    assert again.text == first.text and again.headers["idempotent-replayed"] == "true"
    assert live.provider("sim").calls == 1


def test_restart_loses_no_idempotency_record_and_no_ledger_row(tmp_path: Path) -> None:
    text = config(tmp_path)
    body = {"model": "fast", "messages": MSG}
    for live in run_live(gateway(text)):
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            first = http.post("/v1/chat/completions", json=body,
                              headers={"idempotency-key": "survives"})
            for _ in range(24):
                assert http.post("/v1/chat/completions", json=body).status_code == 200
    for live in run_live(gateway(text)):
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            again = http.post("/v1/chat/completions", json=body,
                              headers={"idempotency-key": "survives"})
        count = asyncio.run_coroutine_threadsafe(live.gateway.ledger.store.count(),
                                                 live.loop).result(5)
        assert live.provider("sim").calls == 0
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert count >= 25  # every acknowledged request of the first run is in the ledger


# --------------------------------------------------------------------------- shedding


def test_batch_traffic_is_shed_first_and_critical_keeps_flowing(make_live: Any) -> None:
    live = make_live("admission: {max_in_flight: 8, batch_share: 0.25, default_share: 0.5}",
                     latency=0.4)

    async def scenario() -> dict[str, Counter[int]]:
        async with httpx.AsyncClient(base_url=live.base_url, timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as client:
            def send(priority: str) -> Any:
                return client.post("/v1/chat/completions",
                                   json={"model": "fast", "messages": MSG},
                                   headers={"x-bastion-priority": priority})
            batch = [asyncio.ensure_future(send("batch")) for _ in range(6)]
            await asyncio.sleep(0.1)
            default = [asyncio.ensure_future(send("default")) for _ in range(6)]
            await asyncio.sleep(0.1)
            critical = [asyncio.ensure_future(send("critical")) for _ in range(4)]
            out = {}
            for name, group in (("batch", batch), ("default", default),
                                ("critical", critical)):
                out[name] = Counter(r.status_code for r in await asyncio.gather(*group))
            return out

    result = asyncio.run(scenario())
    assert result["batch"] == {200: 2, 503: 4}
    assert result["default"] == {200: 2, 503: 4}
    assert result["critical"] == {200: 4}


# --------------------------------------------------------------------------- auth and ledger


def test_keys_are_required_when_auth_is_on_and_usage_is_per_tenant(make_live: Any) -> None:
    live = make_live("auth: {mode: required}")
    identity = live.gateway.identity

    async def setup() -> str:
        tenant = await identity.create_tenant("acme")
        _, plaintext = await identity.create_key(tenant.id, "ci")
        return plaintext

    key = asyncio.run_coroutine_threadsafe(setup(), live.loop).result(5)
    anonymous = openai.OpenAI(base_url=live.v1, api_key="bst_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.chat.completions.create(model="fast", messages=MSG)
    client = openai.OpenAI(base_url=live.v1, api_key=key, max_retries=0)
    assert client.chat.completions.create(model="fast", messages=MSG).choices
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        resp = http.post("/v1/chat/completions", json={"model": "fast", "messages": MSG},
                         headers={"x-api-key": key})
        assert resp.status_code == 200
    asyncio.run_coroutine_threadsafe(live.gateway.ledger.flush(), live.loop).result(5)
    rows = asyncio.run_coroutine_threadsafe(
        live.gateway.ledger.store.aggregate(["tenant"], None, None, None), live.loop).result(5)
    by_tenant = {row["tenant"]: row["requests"] for row in rows}
    assert by_tenant.get("acme") == 2
    with httpx.Client(base_url=live.base_url, timeout=10) as http:
        own = http.get("/v1/usage", params={"group_by": "tenant"},
                       headers={"authorization": f"Bearer {key}"})
        refused = http.get("/v1/usage")
    assert own.status_code == 200
    assert [(row["tenant"], row["requests"]) for row in own.json()["data"]] == [("acme", 2)]
    assert refused.status_code == 401 and refused.json()["error"]["type"]
