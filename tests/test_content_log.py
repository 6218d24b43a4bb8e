"""Content logging is an explicit, sampled opt-in: off by default (no prompt or answer in any
line), with ``sample_rate: 1`` every chat, task and answer writes one ``request.content``
event with the input and output (credentials still masked, text clipped), and a fractional
rate samples about that share of requests."""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog

from bastion.config import ContentLoggingConfig
from bastion.domain.context import RequestContext
from bastion.observability.content_log import ContentLog
from bastion.observability.logging import configure_logging, flush_logs
from tests.conftest import SIM_CONFIG, make_gateway, run_live

CANARY = "content-canary-40c2"
SECRET = "bst_live_Pq7rS2tU9vW3xY5z"


class Sink(io.BytesIO):
    def events(self, name: str) -> list[dict[str, Any]]:
        flush_logs()
        lines = [json.loads(line) for line in self.getvalue().decode().splitlines() if line]
        return [e for e in lines if e.get("event") == name]


@pytest.fixture
def sink() -> Iterator[Sink]:
    out = Sink()
    configure_logging("info", stream=out)
    yield out
    structlog.reset_defaults()
    logging.getLogger("bastion").handlers = []


def chat(base_url: str, text: str) -> httpx.Response:
    return httpx.post(base_url + "/v1/chat/completions", timeout=10, json={
        "model": "fast", "messages": [{"role": "user", "content": text}]})


def test_off_by_default(sink: Sink) -> None:
    for live in run_live(make_gateway()):
        assert chat(live.base_url, CANARY).status_code == 200
    assert sink.events("request.content") == []
    assert CANARY not in sink.getvalue().decode()


def test_sampled_in_requests_log_their_content_with_secrets_masked(sink: Sink) -> None:
    config = SIM_CONFIG + ("observability:\n  content_logging: "
                           "{sample_rate: 1, max_chars: 200}\n")
    for live in run_live(make_gateway(config)):
        resp = chat(live.base_url, f"{CANARY} my key is {SECRET} " + "x" * 500)
    [event] = sink.events("request.content")
    assert event["request_id"] == resp.headers["x-request-id"]
    assert CANARY in event["input"] and SECRET not in sink.getvalue().decode()
    assert "more]" in event["input"]  # clipped at max_chars
    answer = resp.json()["choices"][0]["message"]["content"]
    assert answer in event["output"]
    # the completion event of the same request still carries no content
    [completed] = sink.events("request.completed")
    assert CANARY not in json.dumps(completed)


def test_a_fractional_rate_samples_that_share(sink: Sink) -> None:
    log = ContentLog(ContentLoggingConfig(sample_rate=0.25), rng=random.Random(11))
    for i in range(2000):
        log.record(RequestContext.create(budget_s=1, request_id=f"req_{i}"), "in", "out")
    n = len(sink.events("request.content"))
    assert 400 <= n <= 600  # 500 expected; a binomial(2000, 0.25) is within ±100 by 5 sigma
