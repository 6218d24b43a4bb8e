"""OpenTelemetry traces: a span per stage and per upstream attempt with the GenAI semantic
conventions, a caller's W3C ``traceparent`` joined and propagated upstream with the ids of the
exported spans, real OTLP/HTTP export when configured, and nothing at all when not."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bastion.config import TracingConfig
from bastion.gateway import Gateway
from bastion.observability.trace_context import TraceParent, parse_traceparent
from bastion.observability.tracing import RequestTracer, otlp_endpoint
from tests.conftest import SIM_CONFIG, LiveGateway, make_gateway, run_live
from tests.upstream import FakeUpstream

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
PROMPT = "the secret plan is 42"
CHAT = {"model": "fast", "messages": [{"role": "user", "content": PROMPT}]}
OTEL_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER")


@pytest.fixture(autouse=True)
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell exports, these tests decide what is configured."""
    for name in OTEL_ENV:
        monkeypatch.delenv(name, raising=False)


def hexid(value: int, width: int) -> str:
    return f"{value:0{width}x}"


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return hexid(span.context.span_id, 16)


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else hexid(span.parent.span_id, 16)


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return hexid(span.context.trace_id, 32)


def traced(gateway: Gateway, **tracing: Any) -> InMemorySpanExporter:
    """Trace ``gateway`` into memory (what an OTLP endpoint would enable)."""
    exporter = InMemorySpanExporter()
    gateway.tracer = RequestTracer(TracingConfig(**tracing), exporter=exporter)
    return exporter


def exported(exporter: InMemorySpanExporter, timeout_s: float = 5.0) -> list[ReadableSpan]:
    """The spans once the request's server span is in: the client has its response before the
    server exports (that happens after the last byte is sent)."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = list(exporter.get_finished_spans())
        if any(s.kind == SpanKind.SERVER for s in spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.005)


def one(spans: list[ReadableSpan], **match: Any) -> ReadableSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [s.name for s in spans])
    return found[0]


def server_span(spans: list[ReadableSpan]) -> ReadableSpan:
    return one(spans, kind=SpanKind.SERVER)


def attempts(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)


@pytest.fixture
def live_traced() -> Iterator[tuple[LiveGateway, InMemorySpanExporter]]:
    gateway = make_gateway()
    exporter = traced(gateway)
    for live in run_live(gateway):
        yield live, exporter


# -- W3C trace context


@pytest.mark.parametrize("header, expected", [
    (TRACEPARENT, TraceParent(TRACE_ID, CALLER_SPAN, "01")),
    (f" {TRACEPARENT}\t", TraceParent(TRACE_ID, CALLER_SPAN, "01")),
    (f"00-{TRACE_ID}-{CALLER_SPAN}-00", TraceParent(TRACE_ID, CALLER_SPAN, "00")),
    # A future version: its first four fields are read, whatever follows a "-".
    (f"cc-{TRACE_ID}-{CALLER_SPAN}-01-what-the-future-holds",
     TraceParent(TRACE_ID, CALLER_SPAN, "01")),
    (f"cc-{TRACE_ID}-{CALLER_SPAN}-01", TraceParent(TRACE_ID, CALLER_SPAN, "01")),
])
def test_valid_traceparents_are_read(header: str, expected: TraceParent) -> None:
    assert parse_traceparent(header) == expected


@pytest.mark.parametrize("header", [
    None, "", "garbage",
    TRACEPARENT.upper(),  # uppercase hex is invalid
    f"00-{TRACE_ID.upper()}-{CALLER_SPAN}-01",
    f"00-{'0' * 32}-{CALLER_SPAN}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"ff-{TRACE_ID}-{CALLER_SPAN}-01",  # version ff is forbidden
    f"00-{TRACE_ID}-{CALLER_SPAN}-01-extra",  # version 00 has exactly four fields
    f"cc-{TRACE_ID}-{CALLER_SPAN}-01extra",  # a future version's extra part follows a "-"
    f"00-{TRACE_ID[:-1]}-{CALLER_SPAN}-01",
    f"00-{TRACE_ID}-{CALLER_SPAN}-0g",
    f"00_{TRACE_ID}_{CALLER_SPAN}_01",
    f"0x-{TRACE_ID}-{CALLER_SPAN}-01",
])
def test_invalid_traceparents_are_ignored(header: str | None) -> None:
    assert parse_traceparent(header) is None


def test_sampled_flag() -> None:
    assert parse_traceparent(f"00-{TRACE_ID}-{CALLER_SPAN}-03").sampled  # type: ignore[union-attr]
    assert not parse_traceparent(f"00-{TRACE_ID}-{CALLER_SPAN}-02").sampled  # type: ignore[union-attr]


# -- configuration


def test_endpoint_from_config_then_env() -> None:
    configured = TracingConfig(otlp_endpoint="http://cfg:4318/v1/traces")
    assert otlp_endpoint(TracingConfig(), {}) is None
    assert otlp_endpoint(configured, {}) == "http://cfg:4318/v1/traces"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318/"}
    assert otlp_endpoint(TracingConfig(), env) == "http://base:4318/v1/traces"
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://traces:4318/custom"
    assert otlp_endpoint(TracingConfig(), env) == "http://traces:4318/custom"
    assert otlp_endpoint(configured, env) == "http://cfg:4318/v1/traces"
    assert otlp_endpoint(configured, {"OTEL_SDK_DISABLED": "true"}) is None
    assert otlp_endpoint(configured, {"OTEL_TRACES_EXPORTER": "none"}) is None


def test_gateway_builds_a_tracer_only_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_gateway().tracer is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    tracer = make_gateway().tracer
    assert tracer is not None and tracer.endpoint == "http://127.0.0.1:9/v1/traces"
    tracer.shutdown()


# -- spans


def test_request_joins_the_callers_trace_with_stage_and_attempt_spans(
        live_traced: tuple[LiveGateway, InMemorySpanExporter]) -> None:
    live, exporter = live_traced
    resp = httpx.post(live.v1 + "/chat/completions", json=CHAT,
                      headers={"traceparent": TRACEPARENT}, timeout=10)
    assert resp.status_code == 200
    spans = exported(exporter)
    assert {trace_id(s) for s in spans} == {TRACE_ID}

    server = server_span(spans)
    assert parent_id(server) == CALLER_SPAN and server.parent is not None
    assert server.parent.is_remote
    assert server.name == "POST /v1/chat/completions"
    assert server.status.status_code == StatusCode.UNSET
    attrs = server.attributes
    assert attrs["http.request.method"] == "POST"
    assert attrs["url.path"] == "/v1/chat/completions"
    assert attrs["http.response.status_code"] == 200
    assert attrs["bastion.request_id"] == resp.headers["x-request-id"]
    assert attrs["bastion.tenant"] == "default" and attrs["bastion.route"] == "chat"
    assert attrs["bastion.fallback"] is False
    assert "error.type" not in attrs

    stages = {s.name: s for s in spans if s.kind == SpanKind.INTERNAL}
    assert {"admission", "route"} <= set(stages)
    for stage in stages.values():
        assert parent_id(stage) == span_id(server)
        assert server.start_time <= stage.start_time <= stage.end_time <= server.end_time

    [attempt] = attempts(spans)
    assert parent_id(attempt) == span_id(stages["route"])
    assert attempt.name == "chat sim-primary"
    assert attempt.attributes["gen_ai.operation.name"] == "chat"
    assert attempt.attributes["gen_ai.provider.name"] == "sim"
    assert attempt.attributes["gen_ai.system"] == "sim"
    assert attempt.attributes["gen_ai.request.model"] == "sim-primary"
    assert attempt.attributes["gen_ai.response.model"] == "sim-primary"
    usage = resp.json()["usage"]
    assert attempt.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attempt.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attempt.attributes["bastion.attempt.number"] == 1
    assert attempt.attributes["bastion.attempt.called"] is True
    assert stages["route"].start_time <= attempt.start_time <= attempt.end_time \
        <= stages["route"].end_time

    # Metadata only: the prompt and the completion appear nowhere in what was exported.
    reply = resp.json()["choices"][0]["message"]["content"]
    for span in spans:
        for value in span.attributes.values():
            assert PROMPT not in str(value) and reply not in str(value)


def test_retries_and_fallback_are_one_span_per_attempt(
        live_traced: tuple[LiveGateway, InMemorySpanExporter]) -> None:
    live, exporter = live_traced
    down = json.dumps({"kind": "status", "status": 503, "only_model": "sim-primary"})
    resp = httpx.post(live.v1 + "/chat/completions", json=CHAT, timeout=10,
                      headers={"traceparent": TRACEPARENT, "x-bastion-simulate": down})
    assert resp.status_code == 200
    spans = exported(exporter)
    tries = attempts(spans)
    assert [(s.name, s.attributes["bastion.attempt.number"]) for s in tries] == [
        ("chat sim-primary", 1), ("chat sim-primary", 2), ("chat sim-primary", 3),
        ("chat sim-backup", 1)]
    for failed in tries[:3]:
        assert failed.attributes["error.type"] == "upstream_unavailable"
        assert failed.status.status_code == StatusCode.ERROR
        assert "gen_ai.response.model" not in failed.attributes
        assert "gen_ai.usage.input_tokens" not in failed.attributes
    ok = tries[3]
    assert "error.type" not in ok.attributes and ok.status.status_code == StatusCode.UNSET
    assert ok.attributes["gen_ai.provider.name"] == "backup"
    assert ok.attributes["gen_ai.usage.output_tokens"] > 0
    assert len({span_id(s) for s in tries}) == 4
    assert server_span(spans).attributes["bastion.fallback"] is True
    assert server_span(spans).attributes["bastion.target"] == "backup/sim-backup"


def test_a_failed_request_is_an_error_span(
        live_traced: tuple[LiveGateway, InMemorySpanExporter]) -> None:
    live, exporter = live_traced
    down = json.dumps({"kind": "status", "status": 503})
    resp = httpx.post(live.v1 + "/chat/completions", json={**CHAT, "model": "solo"},
                      headers={"x-bastion-simulate": down}, timeout=10)
    assert resp.status_code == 503
    spans = exported(exporter)
    server = server_span(spans)
    assert server.parent is None  # no traceparent: a new trace, bastion's span is the root
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes["error.type"] == "upstream_unavailable"
    route = one(spans, name="route")
    assert route.status.status_code == StatusCode.ERROR
    assert route.attributes["error.type"] == "upstream_unavailable"
    assert len(attempts(spans)) == 2  # the first try and its one retry


def test_a_client_error_is_no_server_error(
        live_traced: tuple[LiveGateway, InMemorySpanExporter]) -> None:
    live, exporter = live_traced
    resp = httpx.post(live.v1 + "/chat/completions", json={**CHAT, "model": "nope"}, timeout=10)
    assert resp.status_code == 404
    server = server_span(exported(exporter))
    assert server.attributes["error.type"] == "model_not_found"
    assert server.status.status_code == StatusCode.UNSET


def test_contract_checks_are_spans_under_the_route(
        live_traced: tuple[LiveGateway, InMemorySpanExporter]) -> None:
    live, exporter = live_traced
    # The model answers in prose: the first answer and its repair both break the contract.
    prose = json.dumps({"kind": "invalid_output", "content": "not json at all"})
    body = {**CHAT, "model": "solo", "response_format": {"type": "json_object"}}
    resp = httpx.post(live.v1 + "/chat/completions", json=body, timeout=10,
                      headers={"x-bastion-simulate": prose})
    assert resp.status_code == 502
    spans = exported(exporter)
    checks = sorted((s for s in spans if s.name == "contract.check"), key=lambda s: s.start_time)
    assert [c.attributes["bastion.contract.phase"] for c in checks] == ["first", "repair"]
    route = one(spans, name="route")
    for check in checks:
        assert parent_id(check) == span_id(route)
        assert check.attributes["bastion.contract.valid"] is False
        assert check.attributes["bastion.contract.violations"] >= 1
    server = server_span(spans)
    assert server.attributes["error.type"] == "output_contract_failed"
    assert server.attributes["bastion.contract"] == "failed"


def test_a_stream_has_its_stage_and_first_token(
        live_traced: tuple[LiveGateway, InMemorySpanExporter]) -> None:
    live, exporter = live_traced
    with httpx.stream("POST", live.v1 + "/chat/completions", json={**CHAT, "stream": True},
                      headers={"traceparent": TRACEPARENT}, timeout=10) as resp:
        assert resp.status_code == 200
        assert "[DONE]" in resp.read().decode()
    spans = exported(exporter)
    server = server_span(spans)
    stream = one(spans, name="stream")
    assert parent_id(stream) == span_id(server)
    assert [e.name for e in server.events] == ["first_token"]
    assert server.start_time < server.events[0].timestamp <= server.end_time
    assert len(attempts(spans)) == 1


def test_a_stream_that_breaks_after_its_200_is_an_error_span(
        live_traced: tuple[LiveGateway, InMemorySpanExporter]) -> None:
    live, exporter = live_traced
    broken = json.dumps({"kind": "stream_error_after", "chunks": 2})
    with httpx.stream("POST", live.v1 + "/chat/completions", json={**CHAT, "stream": True},
                      headers={"x-bastion-simulate": broken}, timeout=10) as resp:
        assert resp.status_code == 200
        assert "[DONE]" not in resp.read().decode()
    spans = exported(exporter)
    stream = one(spans, name="stream")
    assert stream.status.status_code == StatusCode.ERROR
    server = server_span(spans)
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["error.type"] == stream.attributes["error.type"]
    assert server.status.status_code == StatusCode.ERROR


def test_embeddings_attempts_use_the_embeddings_operation(
        live_traced: tuple[LiveGateway, InMemorySpanExporter]) -> None:
    live, exporter = live_traced
    resp = httpx.post(live.v1 + "/embeddings", json={"model": "vectors", "input": "x"},
                      timeout=10)
    assert resp.status_code == 200
    spans = exported(exporter)
    [attempt] = attempts(spans)
    assert attempt.name == "embeddings sim-embed"
    assert attempt.attributes["gen_ai.operation.name"] == "embeddings"
    assert server_span(spans).name == "POST /v1/embeddings"


@pytest.mark.parametrize("header", [
    "00-zzzz", TRACEPARENT.upper(), f"00-{'0' * 32}-{CALLER_SPAN}-01"])
def test_an_invalid_traceparent_starts_a_new_trace(
        live_traced: tuple[LiveGateway, InMemorySpanExporter], header: str) -> None:
    live, exporter = live_traced
    resp = httpx.post(live.v1 + "/chat/completions", json=CHAT,
                      headers={"traceparent": header}, timeout=10)
    assert resp.status_code == 200
    server = server_span(exported(exporter))
    assert server.parent is None
    assert trace_id(server) not in (TRACE_ID, "0" * 32)


def test_the_callers_sampling_decision_wins() -> None:
    gateway = make_gateway()
    exporter = traced(gateway, sample_ratio=0.0)
    for live in run_live(gateway):
        with httpx.Client(base_url=live.v1, timeout=10) as http:
            # Ratio 0 and the caller undecided, then the caller saying no: not traced.
            assert http.post("/chat/completions", json=CHAT).status_code == 200
            unsampled = f"00-{TRACE_ID}-{CALLER_SPAN}-00"
            assert http.post("/chat/completions", json=CHAT,
                             headers={"traceparent": unsampled}).status_code == 200
            # The caller saying yes: traced, whatever the ratio.
            assert http.post("/chat/completions", json=CHAT,
                             headers={"traceparent": TRACEPARENT}).status_code == 200
    # Stopping the server finished every request: only the last one left spans.
    assert trace_id(server_span(list(exporter.get_finished_spans()))) == TRACE_ID


# -- propagation to a real OpenAI-compatible upstream


def upstream_config(url: str) -> str:
    return f"""
    version: 1
    providers:
      up: {{type: openai, base_url: "{url}"}}
    models:
      remote:
        targets:
          - {{provider: up, model: up-model, timeout_s: 5, retries: 1, backoff_base_s: 0.01,
             backoff_max_s: 0.02}}
    """


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    up = await FakeUpstream().start()
    yield up
    await up.stop()


async def post_through(gateway: Gateway, headers: dict[str, str]) -> httpx.Response:
    """One chat request through ``gateway`` served live (the upstream runs on this loop)."""
    for live in run_live(gateway):
        async with httpx.AsyncClient(base_url=live.v1, timeout=10) as http:
            resp = await http.post("/chat/completions", headers=headers,
                                   json={"model": "remote", "messages": CHAT["messages"]})
    return resp


async def test_upstream_receives_the_attempt_spans_as_parents(upstream: FakeUpstream) -> None:
    upstream.script = [("status", 503, {}), "ok"]
    gateway = make_gateway(upstream_config(upstream.url))
    exporter = traced(gateway)
    resp = await post_through(gateway, {"traceparent": TRACEPARENT})
    assert resp.status_code == 200
    tries = attempts(list(exporter.get_finished_spans()))
    assert [s.attributes.get("error.type") for s in tries] == ["upstream_unavailable", None]
    assert [h["traceparent"] for h in upstream.headers] == [
        f"00-{TRACE_ID}-{span_id(s)}-01" for s in tries]


async def test_a_traced_request_without_a_caller_trace_propagates_its_own(
        upstream: FakeUpstream) -> None:
    gateway = make_gateway(upstream_config(upstream.url))
    exporter = traced(gateway)
    assert (await post_through(gateway, {})).status_code == 200
    [attempt] = attempts(list(exporter.get_finished_spans()))
    [headers] = upstream.headers
    assert headers["traceparent"] == f"00-{trace_id(attempt)}-{span_id(attempt)}-01"


async def test_untraced_the_callers_traceparent_passes_unchanged(
        upstream: FakeUpstream) -> None:
    upstream.script = [("status", 503, {}), "ok"]
    gateway = make_gateway(upstream_config(upstream.url))
    assert gateway.tracer is None
    assert (await post_through(gateway, {"traceparent": TRACEPARENT})).status_code == 200
    assert [h["traceparent"] for h in upstream.headers] == [TRACEPARENT, TRACEPARENT]


@pytest.mark.parametrize("headers", [{}, {"traceparent": "00-not-a-trace"}])
async def test_untraced_without_a_valid_caller_trace_no_traceparent_is_sent(
        upstream: FakeUpstream, headers: dict[str, str]) -> None:
    gateway = make_gateway(upstream_config(upstream.url))
    assert (await post_through(gateway, headers)).status_code == 200
    [sent] = upstream.headers
    assert "traceparent" not in sent


# -- OTLP/HTTP export


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: keeps each decoded export request and its headers."""

    received: list[tuple[str, dict[str, str], ExportTraceServiceRequest]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.received.append((self.path, {k.lower(): v for k, v in self.headers.items()},
                              export))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[Any]]]:
    received: list[Any] = []
    handler = type("Handler", (Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_spans_reach_a_configured_otlp_endpoint(collector: tuple[str, list[Any]]) -> None:
    base, received = collector
    config = SIM_CONFIG + textwrap.dedent(f"""
    observability:
      tracing:
        otlp_endpoint: {base}/v1/traces
        otlp_headers: {{x-collector-token: t0k3n}}
        service_name: bastion-under-test
    """)
    gateway = make_gateway(config)
    assert gateway.tracer is not None
    for live in run_live(gateway):
        resp = httpx.post(live.v1 + "/chat/completions", json=CHAT,
                          headers={"traceparent": TRACEPARENT}, timeout=10)
        assert resp.status_code == 200
    # Leaving run_live closed the gateway, which flushed the batch processor.
    assert received, "no export request reached the collector"
    assert {path for path, _, _ in received} == {"/v1/traces"}
    assert all(headers["x-collector-token"] == "t0k3n" for _, headers, _ in received)
    spans = [(resource_spans.resource, span)
             for _, _, export in received for resource_spans in export.resource_spans
             for scope_spans in resource_spans.scope_spans for span in scope_spans.spans]
    resource = {a.key: a.value.string_value for a in spans[0][0].attributes}
    assert resource["service.name"] == "bastion-under-test"
    by_name = {span.name: span for _, span in spans}
    server = by_name["POST /v1/chat/completions"]
    assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == CALLER_SPAN
    attempt = by_name["chat sim-primary"]
    assert {a.key for a in attempt.attributes} >= {
        "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
        "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"}
    assert by_name["route"].parent_span_id == server.span_id
    assert attempt.parent_span_id == by_name["route"].span_id


@pytest.mark.parametrize("switched_off", [False, True])
def test_unconfigured_nothing_is_exported(collector: tuple[str, list[Any]], switched_off: bool,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    base, received = collector
    if switched_off:  # an endpoint, but the operator's off switch wins
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", base)
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    gateway = make_gateway()
    assert gateway.tracer is None
    for live in run_live(gateway):
        assert httpx.post(live.v1 + "/chat/completions", json=CHAT, timeout=10,
                          headers={"traceparent": TRACEPARENT}).status_code == 200
    assert received == []


_NO_OTEL_SCRIPT = """
import sys
import httpx
from tests.conftest import make_gateway, run_live

gateway = make_gateway()
assert gateway.tracer is None
for live in run_live(gateway):
    for headers in ({}, {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}):
        resp = httpx.post(live.v1 + "/chat/completions", headers=headers, timeout=10,
                          json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 200, resp.text
print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
"""


def test_unconfigured_no_opentelemetry_module_is_imported() -> None:
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", _NO_OTEL_SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
