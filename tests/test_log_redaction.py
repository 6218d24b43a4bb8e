"""Logs explain every request without carrying its content: a prompt canary and a secret sent
through every path (chat plain and streamed, Anthropic messages, embeddings, tasks, documents,
answers, contract failures, upstream failures, bad input, bad keys) never reach the logs,
while the completion events that explain those requests do."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog

from bastion.gateway import Gateway
from bastion.observability.logging import (
    REDACTED,
    configure_logging,
    flush_logs,
    mask_secrets,
    redact,
)
from bastion.services.ingest import IngestService
from tests.conftest import run_live
from tests.test_ingest import real_embedder

CANARY = "canary-7f3a91-do-not-log"
SECRET_KEY = "bst_live_Zq8rT5mW2nX4pL6k"  # shaped like a bastion key, never issued
UPSTREAM_SECRET = "sk-proj-Hh3Kk8Qq2Ww9Ee4Rr"
CONFIG = """
version: 1
providers:
  sim: {type: simulated, seed: 2, reply: "reply with canary-7f3a91-do-not-log inside"}
models:
  fast:
    targets: [{provider: sim, model: primary, retries: 1, timeout_s: 2, backoff_base_s: 0.01}]
  vectors:
    kind: embeddings
    targets: [{provider: sim, model: embed}]
answer: {model: fast}
tasks:
  echo:
    model: fast
    prompt: echo@1
    input_schema: {type: object, required: [text], properties: {text: {type: string}}}
    output_schema: {type: object, required: [label], properties: {label: {type: string}}}
"""
PROMPT = {"description": "echo", "messages": [{"role": "user", "content": "Say {{ text }}"}]}


class Sink(io.BytesIO):
    def lines(self) -> list[dict[str, Any]]:
        flush_logs()
        return [json.loads(line) for line in self.getvalue().decode().splitlines() if line]


@pytest.fixture
def logs() -> Iterator[Sink]:
    sink = Sink()
    configure_logging("debug", stream=sink)
    yield sink
    structlog.reset_defaults()
    logging.getLogger("bastion").handlers = []


@pytest.fixture
def live(tmp_path: Any, logs: Sink) -> Iterator[Any]:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "echo@1.yaml").write_text(json.dumps(PROMPT))
    config = tmp_path / "bastion.yaml"
    config.write_text(CONFIG + "prompts_dir: prompts\n")
    from bastion.config import load_config

    gateway = Gateway(load_config(config))
    gateway.embedder = real_embedder()
    gateway.ingest = IngestService(gateway.index, gateway.embedder, gateway.config.retrieval)
    gateway.retriever.embedder = gateway.embedder
    yield from run_live(gateway)


def test_no_prompt_document_completion_or_secret_reaches_the_logs(live: Any,
                                                                    logs: Sink) -> None:
    msg = [{"role": "user", "content": f"my password is {CANARY} {UPSTREAM_SECRET}"}]
    auth = {"authorization": f"Bearer {SECRET_KEY}"}
    bad = json.dumps({"kind": "invalid_output", "content": f'{{"oops": "{CANARY}"}}'})
    down = json.dumps({"kind": "status", "status": 503})
    with httpx.Client(base_url=live.base_url, timeout=30) as http:
        calls = [
            http.post("/v1/chat/completions", json={"model": "fast", "messages": msg}),
            http.post("/v1/chat/completions", json={"model": "fast", "messages": msg,
                                                    "stream": True}),
            http.post("/v1/chat/completions", json={"model": "fast", "messages": msg},
                      headers={"x-bastion-simulate": down}),
            http.post("/v1/chat/completions", json={
                "model": "fast", "messages": msg,
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "x", "strict": True, "schema": {
                        "type": "object", "required": ["a"],
                        "properties": {"a": {"type": "integer"}}}}}},
                headers={"x-bastion-simulate": bad}),
            http.post("/v1/messages", json={"model": "fast", "max_tokens": 20,
                                            "messages": msg}),
            http.post("/v1/embeddings", json={"model": "vectors", "input": CANARY}),
            http.post("/v1/tasks/echo", json={"input": {"text": CANARY}}),
            http.post("/v1/documents", json={"collection": "kb", "doc_id": "d1",
                                             "text": f"The vault code is {CANARY}."}),
            http.post("/v1/documents", json={"collection": "kb", "doc_id": "bin",
                                             "content_base64": "AAECAwQ=",
                                             "media_type": "text/plain"}),
            http.post("/v1/answer", json={"question": f"What is the vault code {CANARY}?"}),
            http.post("/v1/answer", json={"question": f"vault code {CANARY}?"},
                      headers={"x-bastion-simulate": down}),
            http.post("/v1/chat/completions", content=f'{{"model": "{CANARY}",'.encode(),
                      headers={"content-type": "application/json"}),
            http.post("/v1/chat/completions", json={"model": CANARY, "messages": msg}),
            http.post("/v1/chat/completions", json={"model": "fast", "messages": msg},
                      headers=auth),
            http.get("/v1/usage", headers=auth),
        ]
    statuses = [r.status_code for r in calls]
    assert statuses[0] == 200 and statuses[1] == 200 and statuses[2] == 503
    assert statuses[3] == 502 and statuses[11] == 400 and statuses[13] == 401
    asyncio.run_coroutine_threadsafe(live.gateway.ledger.flush(), live.loop).result(5)

    flush_logs()
    text = logs.getvalue().decode()
    assert CANARY not in text
    assert SECRET_KEY not in text and UPSTREAM_SECRET not in text
    events = [e for e in logs.lines() if e.get("event") == "request.completed"]
    assert len(events) == len(calls)  # one completion event per request, failures included
    by_path = [(e["path"], e["status"]) for e in events]
    assert ("/v1/chat/completions", 503) in by_path and ("/v1/answer", 200) in by_path
    failed = next(e for e in events if e["status"] == 502)
    assert failed["outcome"] == "output_contract_failed" and failed["contract"] == "failed"
    assert failed["attempts"] and failed["request_id"] == calls[3].headers["x-request-id"]
    answered = [e for e in events if e["path"] == "/v1/answer"]
    assert answered[0]["retrieved"] and answered[0]["retrieved"][0][0] == "kb/d1#0"
    # The contract failure was also logged on its own, by incident id, without content.
    assert any(e.get("event") == "output contract failed" for e in logs.lines())


def test_the_redaction_step_blanks_content_fields_and_masks_credentials() -> None:
    event = {"event": "x", "messages": [{"content": CANARY}], "headers": {
        "authorization": f"Bearer {SECRET_KEY}", "x-api-key": SECRET_KEY, "accept": "*/*"},
        "note": f"failed with key {SECRET_KEY} and Bearer abcdefghijkl", "count": 3}
    out = redact(None, "info", dict(event))
    assert out["messages"] == REDACTED and out["count"] == 3
    assert out["headers"] == {"authorization": REDACTED, "x-api-key": REDACTED, "accept": "*/*"}
    line = mask_secrets(json.dumps(out).encode()).decode()
    assert SECRET_KEY not in line and "abcdefghijkl" not in line
    assert json.loads(line)["note"].startswith("failed with key ")


def test_completion_events_use_no_content_or_credential_names_at_any_depth() -> None:
    """The per-request event skips the field-name redaction walk (it is built from metadata
    keys only); this holds it to that for a request that filled every optional part."""
    from bastion.domain.context import Attempt, ContractStep, RequestContext
    from bastion.observability.logging import REDACTED_FIELDS, completion_fields

    ctx = RequestContext.create(budget_s=5)
    ctx.attempts.append(Attempt("p/m", 1, "upstream_timeout", 0.1, start_s=0.01, span_id="a"))
    ctx.contract_steps.append(ContractStep("p/m", "first", False, ("x",)))
    ctx.retrieved = [("c1", 0.5)]
    ctx.usage = {"prompt_tokens": 1, "completion_tokens": 2}
    ctx.first_token_s = 0.2
    ctx.trace_id = "0" * 31 + "1"
    ctx.add_stage("route", ctx.started)
    fields = completion_fields(ctx, method="POST", path="/v1/x", status=200, error=None)

    def keys(value: Any) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        if isinstance(value, (list, tuple)):
            return {k for v in value for k in keys(v)}
        return set()

    assert {"contract_steps", "ttft_ms", "trace_id", "retrieved", "stages"} <= set(fields)
    assert not {k.lower() for k in keys(fields)} & REDACTED_FIELDS
