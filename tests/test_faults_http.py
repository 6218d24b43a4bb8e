"""Failure injection over real HTTP: for every fault, the attempts made, the target that
answered, that deadlines hold, and that no upstream task outlives its request."""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest

from tests.conftest import SIM_CONFIG, LiveGateway, make_gateway, run_live

MSG = [{"role": "user", "content": "hello there"}]


def post(http: httpx.Client, fault: dict | None = None, model: str = "fast",
         deadline: float | None = None, **body) -> httpx.Response:
    headers = {}
    if fault is not None:
        headers["X-Bastion-Simulate"] = json.dumps(fault)
    if deadline is not None:
        headers["X-Bastion-Deadline"] = str(deadline)
    return http.post("/v1/chat/completions", json={"model": model, "messages": MSG, **body},
                     headers=headers)


def outcome(resp: httpx.Response) -> tuple[str | None, int, str | None]:
    return (resp.headers.get("x-bastion-target"), int(resp.headers["x-bastion-attempts"]),
            resp.headers.get("x-bastion-fallback"))


def wait_for_no_tasks(live: LiveGateway, baseline: int, limit: float = 2.0) -> int:
    """The number of tasks on the server loop once it settles back to ``baseline``."""
    deadline = time.monotonic() + limit
    while True:
        count = len(live.tasks())
        if count <= baseline or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 500, "fail_times": 2},
    {"kind": "status", "status": 502, "fail_times": 2},
    {"kind": "status", "status": 503, "fail_times": 2},
    {"kind": "connect_error", "fail_times": 2},
    {"kind": "malformed_json", "fail_times": 2},
    {"kind": "rate_limit", "retry_after_s": 0.05, "fail_times": 2},
    {"kind": "rate_limit", "retry_after_ms": 50, "fail_times": 2},
])
def test_transient_faults_are_retried_on_the_same_target(http: httpx.Client, fault) -> None:
    resp = post(http, fault)
    assert resp.status_code == 200, resp.text
    assert outcome(resp) == ("sim/sim-primary", 3, "false")


def test_retry_after_as_an_http_date_is_honoured(http: httpx.Client) -> None:
    resp = post(http, {"kind": "rate_limit", "retry_after_date": True, "retry_after_s": 1,
                       "fail_times": 1})
    assert resp.status_code == 200
    assert outcome(resp) == ("sim/sim-primary", 2, "false")


def test_read_timeout_is_retried(http: httpx.Client) -> None:
    started = time.monotonic()
    resp = post(http, {"kind": "read_timeout", "fail_times": 1}, model="solo")
    assert resp.status_code == 200
    assert outcome(resp) == ("sim/sim-solo", 2, "false")
    assert time.monotonic() - started < 3  # one attempt timeout (1 s), then success


def test_persistent_failure_falls_back_to_the_next_target(live: LiveGateway,
                                                          http: httpx.Client) -> None:
    before = live.provider("backup").calls
    resp = post(http, {"kind": "status", "status": 503, "only_model": "sim-primary"})
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "Hello from the backup model."
    assert outcome(resp) == ("backup/sim-backup", 4, "true")  # 1 + 2 retries, then backup
    assert live.provider("backup").calls == before + 1


@pytest.mark.parametrize("status", [400, 422])
def test_invalid_request_upstream_is_not_retried_nor_sent_elsewhere(http, status) -> None:
    resp = post(http, {"kind": "status", "status": status})
    assert resp.status_code == status
    assert resp.headers["x-bastion-attempts"] == "1"
    assert resp.json()["error"]["retryable"] is False


@pytest.mark.parametrize("status", [401, 404])
def test_non_transient_upstream_errors_skip_retries_but_fall_back(http, status) -> None:
    resp = post(http, {"kind": "status", "status": status, "only_model": "sim-primary"})
    assert resp.status_code == 200
    assert outcome(resp) == ("backup/sim-backup", 2, "true")


def test_when_every_target_fails_the_client_gets_a_classified_error(http: httpx.Client) -> None:
    resp = post(http, {"kind": "status", "status": 503})
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["type"] == "upstream_error" and error["retryable"] is True
    assert error["request_id"] == resp.headers["x-request-id"]
    assert resp.headers["x-bastion-attempts"] == "4"


def test_a_retry_after_beyond_the_cap_is_not_waited_for(http: httpx.Client) -> None:
    started = time.monotonic()
    resp = post(http, {"kind": "rate_limit", "retry_after_s": 120}, model="solo")
    assert time.monotonic() - started < 2
    assert resp.status_code == 429
    assert int(resp.headers["retry-after"]) == 120
    assert resp.headers["x-bastion-attempts"] == "1"


def test_a_hung_upstream_is_cut_at_the_deadline_and_leaves_no_task(live: LiveGateway,
                                                                    http: httpx.Client) -> None:
    baseline = len(live.tasks())
    started = time.monotonic()
    resp = post(http, {"kind": "hang"}, deadline=0.5)
    elapsed = time.monotonic() - started
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] in ("deadline_exceeded", "upstream_timeout")
    assert 0.45 <= elapsed < 1.5
    assert wait_for_no_tasks(live, baseline) <= baseline


def test_slow_first_token_past_the_deadline_is_504(http: httpx.Client) -> None:
    resp = post(http, {"kind": "slow_first_token", "delay_s": 5}, deadline=0.4, stream=True)
    assert resp.status_code == 504


def test_a_client_that_disconnects_cancels_the_upstream_call(live: LiveGateway) -> None:
    baseline = len(live.tasks())
    with httpx.Client(base_url=live.base_url, timeout=0.3) as short:
        with pytest.raises(httpx.ReadTimeout):
            post(short, {"kind": "hang"}, deadline=30)
    # The request had 30 s left; its work must be gone long before that.
    assert wait_for_no_tasks(live, baseline, limit=2.0) <= baseline


def test_a_client_that_leaves_while_sending_its_body_is_a_499_not_our_bug(
        live: LiveGateway) -> None:
    def outcomes() -> dict[str, float]:
        found: dict[str, float] = {}
        for line in httpx.get(live.base_url + "/metrics", timeout=10).text.splitlines():
            if line.startswith('bastion_requests_total{') and 'route="chat"' in line:
                label = line.split('outcome="')[1].split('"')[0]
                found[label] = float(line.rsplit(" ", 1)[1])
        return found

    before = outcomes()
    host, port = live.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
                     b'{"model": "fast", "mess')
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = outcomes()
        if after.get("client_closed_request", 0) > before.get("client_closed_request", 0):
            break
        time.sleep(0.05)
    assert after.get("client_closed_request", 0) == before.get("client_closed_request", 0) + 1
    assert after.get("internal_error", 0) == before.get("internal_error", 0)


def test_a_client_that_leaves_mid_stream_ends_the_stream_and_releases_the_request(
        live: LiveGateway) -> None:
    baseline = len(live.tasks())
    with httpx.Client(base_url=live.base_url, timeout=10) as client, client.stream(
            "POST", "/v1/chat/completions",
            json={"model": "fast", "messages": MSG, "stream": True},
            headers={"X-Bastion-Simulate": json.dumps(
                {"kind": "slow_stream", "interval_s": 1.0})}) as resp:
        assert resp.status_code == 200
        next(resp.iter_bytes())  # the first event arrived; then the client goes away
    # The stream had seconds to go; its work and its admission slot must go long before.
    assert wait_for_no_tasks(live, baseline, limit=1.5) <= baseline
    assert live.gateway.admission.shedder.in_flight == 0


def test_stream_faults_before_the_first_chunk_are_retried(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/chat/completions",
                     json={"model": "fast", "messages": MSG, "stream": True},
                     headers={"X-Bastion-Simulate": json.dumps(
                         {"kind": "status", "status": 503, "fail_times": 1})}) as resp:
        body = resp.read().decode()
        assert resp.status_code == 200
        assert outcome(resp) == ("sim/sim-primary", 2, "false")
    assert body.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("fault", [{"kind": "stream_error_after", "chunks": 2},
                                   {"kind": "stream_no_done"}])
def test_a_stream_that_fails_after_it_started_ends_with_an_error_event(http, fault) -> None:
    with http.stream("POST", "/v1/chat/completions",
                     json={"model": "fast", "messages": MSG, "stream": True},
                     headers={"X-Bastion-Simulate": json.dumps(fault)}) as resp:
        assert resp.status_code == 200
        events = [e for e in resp.read().decode().split("\n\n") if e]
    assert "[DONE]" not in events[-1]
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["request_id"] == resp.headers["x-request-id"]
    assert last["error"]["type"] == "upstream_error"
    assert len(events) >= 2  # the client did get the chunks before the failure


def test_the_sdk_raises_on_a_mid_stream_failure_instead_of_ending_cleanly(live) -> None:
    c = openai.OpenAI(base_url=live.v1, api_key="unused", max_retries=0)
    stream = c.chat.completions.create(
        model="fast", messages=MSG, stream=True,
        extra_headers={"X-Bastion-Simulate": '{"kind": "stream_error_after", "chunks": 2}'})
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 2


BREAKER_CONFIG = SIM_CONFIG.replace(
    "breaker: {failure_threshold: 100, window_s: 60, cooldown_s: 1}",
    "breaker: {failure_threshold: 2, window_s: 60, cooldown_s: 0.5}").replace(
    "retries: 2, backoff_base_s", "retries: 0, backoff_base_s")


def test_an_open_breaker_skips_the_target_without_calling_it() -> None:
    for live in run_live(make_gateway(BREAKER_CONFIG)):
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            fail = {"kind": "status", "status": 500, "only_model": "sim-primary"}
            for _ in range(2):
                assert post(http, fail).headers["x-bastion-target"] == "backup/sim-backup"
            calls = live.provider("sim").calls
            resp = post(http)  # no fault at all: the primary is skipped anyway
            assert outcome(resp) == ("backup/sim-backup", 1, "true")
            assert live.provider("sim").calls == calls
            assert http.get("/ready").json()["breakers"]["sim/sim-primary"] == "open"
            time.sleep(0.6)  # cooldown: one probe goes through and closes it
            resp = post(http)
            assert outcome(resp) == ("sim/sim-primary", 1, "false")
            assert http.get("/ready").json()["breakers"]["sim/sim-primary"] == "closed"


BULKHEAD_CONFIG = SIM_CONFIG.replace(
    "  sim:\n    type: simulated\n",
    "  sim:\n    type: simulated\n    bulkhead: {max_concurrency: 1, max_wait_s: 0.05}\n")


def test_a_full_bulkhead_fails_fast_and_falls_back() -> None:
    import concurrent.futures

    for live in run_live(make_gateway(BULKHEAD_CONFIG)):
        slow = {"kind": "slow_first_token", "delay_s": 0.5, "only_model": "sim-primary"}

        def one(_: int) -> httpx.Response:
            with httpx.Client(base_url=live.base_url, timeout=10) as http:
                return post(http, slow)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(4)))
        targets = sorted(r.headers["x-bastion-target"] for r in results)
        assert all(r.status_code == 200 for r in results)
        assert targets.count("sim/sim-primary") == 1
        assert targets.count("backup/sim-backup") == 3
        assert live.gateway.pipeline.bulkheads["sim"].rejected == 3
