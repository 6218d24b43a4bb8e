"""Per-request metrics on ``/metrics``: counted by route and outcome, latency split into
upstream time and bastion's own overhead, attempts by target, fallbacks, tokens and cost —
with tenants bounded so label cardinality cannot grow with traffic."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bastion.domain.context import Attempt, RequestContext
from bastion.observability.request_metrics import MAX_TENANTS, OTHER, RequestMetrics
from tests.conftest import SIM_CONFIG, make_gateway, run_live


def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(base_url + "/metrics").text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_attempts_and_fallbacks_are_counted() -> None:
    down = json.dumps({"kind": "status", "status": 503, "only_model": "sim-primary"})
    for live in run_live(make_gateway(SIM_CONFIG + "pricing:\n  sim/sim-primary: "
                                      "{input_per_mtok: 1000000, output_per_mtok: 1000000}\n")):
        before = scrape(live.base_url)
        msg = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            assert http.post("/v1/chat/completions", json=msg).status_code == 200
            assert http.post("/v1/chat/completions", json=msg,
                             headers={"x-bastion-simulate": down}).status_code == 200
            assert http.post("/v1/chat/completions",
                             json={**msg, "model": "nope"}).status_code == 404
        after = scrape(live.base_url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("bastion_requests_total", route="chat", outcome="ok") == 2
    assert grew("bastion_requests_total", route="chat", outcome="model_not_found") == 1
    assert grew("bastion_fallbacks_total", route="chat") == 1
    assert grew("bastion_upstream_attempts_total", target="sim/sim-primary",
                outcome="upstream_unavailable") == 3  # the first try and its 2 retries
    assert grew("bastion_upstream_attempts_total", target="backup/sim-backup", outcome="ok") == 1
    assert grew("bastion_request_duration_seconds_count", route="chat") == 3
    assert grew("bastion_overhead_seconds_count", route="chat") == 3
    assert grew("bastion_upstream_duration_seconds_count", route="chat") == 2
    assert grew("bastion_tokens_total", tenant="default", route="chat", kind="prompt") > 0
    assert grew("bastion_cost_usd_total", tenant="default", route="chat") > 0


def test_tenant_labels_are_bounded() -> None:
    metrics = RequestMetrics()
    for i in range(MAX_TENANTS + 50):
        ctx = RequestContext.create(budget_s=1, tenant=f"t{i}")
        ctx.usage = {"prompt_tokens": 1, "completion_tokens": 1}
        ctx.attempts.append(Attempt("p/m", 1, "ok", 0.01))
        metrics.record(ctx, "ok")
    tenants = {tenant for tenant, _, _ in metrics.tokens}
    assert len(tenants) == MAX_TENANTS + 1 and OTHER in tenants
    assert metrics.tokens[OTHER, "chat", "prompt"] == 50


def test_retries_stages_and_time_to_first_token() -> None:
    down = json.dumps({"kind": "status", "status": 503, "only_model": "sim-primary"})
    msg = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    for live in run_live(make_gateway()):
        before = scrape(live.base_url)
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            assert http.post("/v1/chat/completions", json=msg,
                             headers={"x-bastion-simulate": down}).status_code == 200
            with http.stream("POST", "/v1/chat/completions",
                             json={**msg, "stream": True}) as resp:
                assert resp.status_code == 200
                assert "[DONE]" in resp.read().decode()
        after = scrape(live.base_url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("bastion_upstream_retries_total", target="sim/sim-primary") == 2
    assert grew("bastion_time_to_first_token_seconds_count", route="chat") == 1
    assert grew("bastion_stage_duration_seconds_count", stage="admission") == 2
    assert grew("bastion_stage_duration_seconds_count", stage="route") == 2
    assert grew("bastion_stage_duration_seconds_count", stage="stream") == 1


BREAKER_CONFIG = """
version: 1
providers:
  sim:
    type: simulated
    bulkhead: {max_concurrency: 1, max_wait_s: 5}
models:
  flaky:
    targets:
      - {provider: sim, model: sim-a, timeout_s: 2, retries: 0,
         breaker: {failure_threshold: 2, window_s: 60, cooldown_s: 30}}
"""


def test_breaker_state_and_bulkhead_waits_are_reported() -> None:
    msg = {"model": "flaky", "messages": [{"role": "user", "content": "hi"}]}
    down = json.dumps({"kind": "status", "status": 503})
    slow = json.dumps({"kind": "slow_first_token", "delay_s": 0.3})
    for live in run_live(make_gateway(BREAKER_CONFIG)):
        before = scrape(live.base_url)
        assert value(before, "bastion_breaker_state", target="sim/sim-a", state="closed") == 1

        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            codes = list(pool.map(lambda _: httpx.post(
                live.v1 + "/chat/completions", json=msg, timeout=10,
                headers={"x-bastion-simulate": slow}).status_code, range(3)))
        assert codes == [200, 200, 200]
        waited = scrape(live.base_url)
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            for _ in range(2):
                assert http.post("/v1/chat/completions", json=msg,
                                 headers={"x-bastion-simulate": down}).status_code == 503
            refused = http.post("/v1/chat/completions", json=msg)
        after = scrape(live.base_url)
    # one slot, three callers: the two behind the first waited for it
    assert value(waited, "bastion_bulkhead_waits_total", bulkhead="provider sim") - value(
        before, "bastion_bulkhead_waits_total", bulkhead="provider sim") == 2
    assert value(waited, "bastion_bulkhead_wait_seconds_total", bulkhead="provider sim") > 0.2
    assert refused.status_code == 503 and refused.json()["error"]["code"] != "upstream_unavailable"
    assert value(after, "bastion_breaker_state", target="sim/sim-a", state="open") == 1
    assert value(after, "bastion_breaker_state", target="sim/sim-a", state="closed") == 0
    assert value(after, "bastion_breaker_opened_total", target="sim/sim-a") == 1
