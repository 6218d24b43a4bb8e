"""Named tasks: the model suggests, deterministic code decides (POST /v1/tasks/{name})."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

import bastion
from bastion.config import ConfigError, parse_config
from bastion.gateway import Gateway
from tests.conftest import run_live

PROMPTS = Path(bastion.__file__).parent / "defaults" / "prompts"

TASK_CONFIG = f"""
version: 1
providers:
  sim: {{type: simulated, seed: 3}}
  backup: {{type: simulated, seed: 4}}
models:
  triage-model:
    targets:
      - {{provider: sim, model: primary, retries: 0, timeout_s: 2}}
      - {{provider: backup, model: secondary, retries: 0, timeout_s: 2}}
prompts_dir: {PROMPTS}
tasks:
  ticket_triage:
    model: triage-model
    prompt: ticket_triage@1
    input_schema:
      type: object
      required: [ticket_id, subject, body]
      additionalProperties: false
      properties:
        ticket_id: {{type: string}}
        subject: {{type: string, maxLength: 300}}
        body: {{type: string}}
        customer_tier: {{enum: [free, pro, enterprise]}}
    output_schema:
      type: object
      required: [summary, suggested_reply, priority, reason]
      properties:
        summary: {{type: string}}
        suggested_reply: {{type: string}}
        priority: {{enum: [low, medium, high]}}
        reason: {{type: string}}
    rules:
      - {{rule: min_length, field: reason, min: 10}}
      - {{rule: max_length, field: reason, max: 500}}
    fallback:
      summary: "{{{{ subject }}}}"
      suggested_reply: "We received ticket {{{{ ticket_id }}}}."
      priority: medium
      reason: Automatic triage was unavailable; default priority.
  strict_triage:
    model: triage-model
    prompt: ticket_triage@1
    input_schema:
      type: object
      required: [ticket_id, subject, body]
      properties: {{ticket_id: {{type: string}}, subject: {{type: string}}, body: {{type: string}},
                   customer_tier: {{type: string}}}}
    output_schema:
      type: object
      required: [priority]
      properties: {{priority: {{enum: [low, medium, high]}}}}
"""

TICKET = {"ticket_id": "T-1", "subject": "Cannot log in", "body": "The login page says 500."}
GOOD = {"summary": "Login fails with a server error.", "suggested_reply": "We are on it.",
        "priority": "high", "reason": "The customer cannot work at all."}


def gateway(text: str = TASK_CONFIG) -> Gateway:
    return Gateway(parse_config(textwrap.dedent(text)))


def answer(content: Any, **extra: Any) -> str:
    text = content if isinstance(content, str) else json.dumps(content)
    return json.dumps({"kind": "invalid_output", "content": text, **extra})


@pytest.fixture
def client() -> Any:
    for live in run_live(gateway()):
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            yield http, live


def run(http: httpx.Client, body: Any, simulate: str | None = None,
        name: str = "ticket_triage") -> httpx.Response:
    headers = {"x-bastion-simulate": simulate} if simulate else {}
    return http.post(f"/v1/tasks/{name}", json=body, headers=headers)


def test_a_valid_suggestion_is_returned_as_the_decision(client: Any) -> None:
    http, live = client
    resp = run(http, {"input": TICKET}, answer(GOOD))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["output"] == GOOD
    assert (body["fallback_used"], body["fallback_reason"]) == (False, None)
    assert body["prompt"] == "ticket_triage@1" == resp.headers["x-bastion-prompt"]
    assert body["target"] == "sim/primary"
    assert resp.headers["x-bastion-contract"] == "valid"
    assert resp.headers["x-bastion-task-fallback"] == "false"
    assert body["request_id"] == resp.headers["x-request-id"]


def test_the_prompt_is_rendered_from_the_input(client: Any) -> None:
    http, live = client
    seen: list[Any] = []
    sim = live.provider("sim")
    original = sim.chat

    async def spy(request: Any, *args: Any) -> Any:
        seen.append(request)
        return await original(request, *args)

    sim.chat = spy
    run(http, {"input": {**TICKET, "customer_tier": "enterprise"}}, answer(GOOD))
    user = seen[0].messages[-1].content
    assert "Ticket T-1 (customer tier: enterprise)" in user
    assert "The login page says 500." in user
    assert seen[0].response_format["json_schema"]["strict"] is True


def test_a_suggestion_breaking_a_rule_is_repaired_or_replaced_by_the_fallback(client: Any) -> None:
    http, _ = client
    short_reason = {**GOOD, "reason": "bad"}
    resp = run(http, {"input": TICKET}, answer(short_reason))
    body = resp.json()
    assert resp.status_code == 200
    assert body["fallback_used"] is True
    assert body["fallback_reason"] == "output_contract_failed"
    assert body["output"] == {"summary": "Cannot log in", "suggested_reply":
                              "We received ticket T-1.", "priority": "medium",
                              "reason": "Automatic triage was unavailable; default priority."}
    assert resp.headers["x-bastion-task-fallback"] == "true"
    # Both targets were asked, each with one repair, before falling back.
    assert resp.headers["x-bastion-contract-steps"] == (
        "sim/primary:first=invalid,sim/primary:repair=invalid,"
        "backup/secondary:first=invalid,backup/secondary:repair=invalid")


def test_a_repaired_suggestion_is_used(client: Any) -> None:
    http, _ = client
    faults = {"faults": [json.loads(answer("{not json", fail_times=1)), json.loads(answer(GOOD))]}
    resp = run(http, {"input": TICKET}, json.dumps(faults))
    body = resp.json()
    assert body["fallback_used"] is False
    assert resp.headers["x-bastion-contract"] == "repaired"
    assert resp.headers["x-bastion-contract-steps"] == (
        "sim/primary:first=invalid,sim/primary:repair=valid")
    assert body["output"] == GOOD


def test_upstream_failure_uses_the_fallback_with_its_reason(client: Any) -> None:
    http, _ = client
    resp = run(http, {"input": TICKET}, json.dumps({"kind": "status", "status": 503}))
    body = resp.json()
    assert resp.status_code == 200
    assert body["fallback_used"] is True
    assert body["fallback_reason"] == "upstream_unavailable"


def test_without_a_fallback_the_task_fails_with_the_contract_error(client: Any) -> None:
    http, _ = client
    resp = run(http, {"input": TICKET}, answer({"priority": "urgent"}), name="strict_triage")
    assert resp.status_code == 502
    err = resp.json()["error"]
    assert err["type"] == "output_contract_failed"
    assert err["incident_id"].startswith("inc_")
    assert any("urgent" in v for v in err["violations"])


@pytest.mark.parametrize(("body", "param"), [
    ({"input": {"ticket_id": "T", "subject": "x"}}, "input"),
    ({"input": {**TICKET, "subject": "x" * 301}}, "input.subject"),
    ({"input": {**TICKET, "customer_tier": "gold"}}, "input.customer_tier"),
    ({"input": {**TICKET, "extra": 1}}, "input"),
    ({"input": "text"}, "input"),
    ({"ticket": TICKET}, "ticket"),
    ({}, "input"),
])
def test_bad_input_is_a_400_naming_the_field(client: Any, body: Any, param: str) -> None:
    http, live = client
    calls_before = live.provider("sim").calls
    resp = run(http, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert live.provider("sim").calls == calls_before  # no model call for bad input


def test_an_unknown_task_is_a_404(client: Any) -> None:
    http, _ = client
    resp = run(http, {"input": TICKET}, name="nope")
    assert resp.status_code == 404
    assert "ticket_triage" in resp.json()["error"]["message"]


def test_tasks_are_listed(client: Any) -> None:
    http, _ = client
    data = {t["name"]: t for t in http.get("/v1/tasks").json()["data"]}
    assert set(data) == {"ticket_triage", "strict_triage"}
    assert data["ticket_triage"]["prompt"] == "ticket_triage@1"
    assert data["ticket_triage"]["has_fallback"] is True
    assert data["strict_triage"]["has_fallback"] is False


async def test_the_library_runs_the_same_task() -> None:
    async with gateway() as gw:
        ctx = gw.context(route="tasks")
        ctx.simulate = json.loads(answer(GOOD))
        result = await gw.task("ticket_triage", TICKET, ctx)
    assert result.output == GOOD and result.fallback_used is False
    assert result.prompt == "ticket_triage@1"


def _broken(replace: str, with_: str) -> str:
    assert replace in TASK_CONFIG
    return TASK_CONFIG.replace(replace, with_, 1)


@pytest.mark.parametrize(("text", "field", "reason"), [
    (_broken("prompt: ticket_triage@1", "prompt: ticket_triage@9"), "tasks.ticket_triage.prompt",
     "ticket_triage@1"),
    (_broken("        customer_tier: {enum: [free, pro, enterprise]}\n", ""),
     "tasks.ticket_triage.prompt", "customer_tier"),
    (_broken("      - {rule: max_length, field: reason, max: 500}",
             "      - {rule: custom, name: not_registered}"), "tasks.ticket_triage.rules",
     "not_registered"),
    (_broken("    model: triage-model", "    model: nope"), "tasks.ticket_triage.model", "nope"),
])
def test_a_task_that_cannot_work_fails_at_start_up(text: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        gateway(text)
    assert any(f == field and reason in why for f, why in info.value.problems), \
        info.value.problems
