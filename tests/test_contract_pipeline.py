"""The output contract through the in-process Gateway: one repair on the same target, then the
next target, then a safe refusal with an incident id; what the upstream is sent for a repair,
how many calls are made, what is counted and what is logged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel, Field, field_validator

from bastion.domain.chat import ChatRequest
from bastion.domain.errors import OutputContractFailed, UpstreamUnavailable
from bastion.domain.rules import SubsetOf
from bastion.gateway import Gateway
from tests.conftest import make_gateway
from tests.fakes import ScriptedProvider

CONFIG = """
version: 1
providers:
  a: {type: simulated}
  b: {type: simulated}
models:
  chain:
    targets:
      - {provider: a, model: m-a, timeout_s: 2, retries: 1, backoff_base_s: 0.001,
         backoff_max_s: 0.001}
      - {provider: b, model: m-b, timeout_s: 2, retries: 1, backoff_base_s: 0.001,
         backoff_max_s: 0.001}
routes:
  chat: {deadline_s: 5, max_deadline_s: 30}
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "priority": {"type": "string", "enum": ["low", "normal", "high"]},
        "summary": {"type": "string", "maxLength": 60},
    },
    "required": ["priority", "summary"],
}
SYSTEM = "You triage support tickets. Answer with JSON."
USER = "Ticket 4711: the printer in room 3 is on fire."
GOOD = '{"priority": "high", "summary": "printer on fire"}'
BAD = '{"priority": "urgent", "summary": "printer on fire"}'  # outside the enum
#: A value that must never reach a log line, though the violation message quotes it.
CANARY = "CANARY-SSN-123-45-6789"
BAD_CANARY = orjson.dumps({"priority": CANARY, "summary": "x"}).decode()


class RecordingProvider(ScriptedProvider):
    """ScriptedProvider that also keeps every chat request it was sent, with the model."""

    def __init__(self, name: str, script: list[Any] | None = None) -> None:
        super().__init__(name, script)
        self.requests: list[tuple[str, ChatRequest]] = []

    async def chat(self, request, model, timeout, ctx):
        self.requests.append((model, request))
        return await super().chat(request, model, timeout, ctx)


def reply(content: str | None, finish_reason: str = "stop", model: str = "m") -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def tool_reply(*calls: tuple[str, str, str]) -> dict[str, Any]:
    response = reply(None, "tool_calls")
    response["choices"][0]["message"]["tool_calls"] = [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
        for call_id, name, args in calls]
    return response


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "chain",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "triage", "strict": True, "schema": SCHEMA}},
            **extra}


def content_of(response: dict[str, Any]) -> Any:
    return response["choices"][0]["message"]["content"]


def steps(ctx: Any) -> list[tuple[str, str, bool]]:
    return [(s.target, s.phase, s.valid) for s in ctx.contract_steps]


def texts(request: ChatRequest) -> list[str]:
    return [m.content for m in request.messages if isinstance(m.content, str)]


class Chain:
    def __init__(self, gateway: Gateway, a: RecordingProvider, b: RecordingProvider) -> None:
        self.gateway, self.a, self.b = gateway, a, b


@pytest.fixture
async def chain() -> AsyncIterator[Chain]:
    a, b = RecordingProvider("a"), RecordingProvider("b")
    gateway = make_gateway(CONFIG, providers={"a": a, "b": b}, seed=0)
    async with gateway:
        yield Chain(gateway, a, b)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


CHECKS = "bastion_output_contract_checks_total"
VIOLATIONS = "bastion_output_contract_violations_total"
REFUSALS = "bastion_output_contract_refusals_total"


# --------------------------------------------------------------------------- valid first time


async def test_a_valid_first_answer_is_returned_as_is(chain: Chain) -> None:
    chain.a.script = [reply(GOOD)]
    result = await chain.gateway.chat(body())
    assert content_of(result.response) == GOOD
    assert result.value == {"priority": "high", "summary": "printer on fire"}
    assert (chain.a.calls, chain.b.calls) == (1, 0)
    assert steps(result.ctx) == [("a/m-a", "first", True)]
    assert result.ctx.contract_outcome() == "valid"


async def test_a_request_without_a_contract_is_not_checked(chain: Chain) -> None:
    chain.a.script = [reply("plain words, not JSON")]
    plain = body()
    del plain["response_format"]
    result = await chain.gateway.chat(plain)
    assert content_of(result.response) == "plain words, not JSON"
    assert chain.a.calls == 1 and result.ctx.contract_steps == []
    assert result.ctx.contract_outcome() is None


# --------------------------------------------------------------------------- repair


async def test_an_invalid_answer_is_repaired_once_on_the_same_target(chain: Chain) -> None:
    chain.a.script = [reply(BAD), reply(GOOD)]
    result = await chain.gateway.chat(body())
    assert content_of(result.response) == GOOD
    assert result.value == {"priority": "high", "summary": "printer on fire"}
    assert (chain.a.calls, chain.b.calls) == (2, 0)
    assert steps(result.ctx) == [("a/m-a", "first", False), ("a/m-a", "repair", True)]
    assert result.ctx.contract_outcome() == "repaired"
    assert result.ctx.target == "a/m-a" and result.ctx.fallback_used is False
    # Both answers' tokens were spent, so both are counted.
    assert result.ctx.usage["total_tokens"] == 10


async def test_the_repair_request_carries_the_rejected_answer_and_errors_once(chain) -> None:
    chain.a.script = [reply(BAD), reply(GOOD)]
    await chain.gateway.chat(body())
    (first_model, first), (repair_model, repair) = chain.a.requests
    assert first_model == repair_model == "m-a"
    assert [m.role for m in first.messages] == ["system", "user"]  # not modified in place
    assert [m.role for m in repair.messages] == ["system", "user", "assistant", "user"]
    # The history once, then the rejected answer verbatim, then what was wrong with it.
    assert texts(repair)[:2] == [SYSTEM, USER]
    assert repair.messages[2].content == BAD
    instruction = repair.messages[3].content
    assert "$.priority: 'urgent' is not one of ['low', 'normal', 'high']" in instruction
    assert "rejected" in instruction
    everything = "\n".join(texts(repair))
    assert everything.count(USER) == 1 and everything.count(SYSTEM) == 1
    assert everything.count(BAD) == 1
    # Still the same contract: the repair asks for the same response format.
    assert repair.response_format == body()["response_format"]


async def test_each_target_repairs_its_own_answer_from_the_original_history(chain) -> None:
    other_bad = '{"priority": "low"}'  # missing summary
    chain.a.script = [reply(BAD), reply(BAD)]
    chain.b.script = [reply(other_bad), reply(GOOD)]
    result = await chain.gateway.chat(body())
    assert content_of(result.response) == GOOD
    (_, b_first), (_, b_repair) = chain.b.requests
    assert [m.role for m in b_first.messages] == ["system", "user"]  # nothing of a's repair
    assert [m.role for m in b_repair.messages] == ["system", "user", "assistant", "user"]
    assert b_repair.messages[2].content == other_bad
    assert BAD not in "\n".join(texts(b_repair))
    assert "'summary' is a required property" in b_repair.messages[3].content
    assert steps(result.ctx) == [("a/m-a", "first", False), ("a/m-a", "repair", False),
                                 ("b/m-b", "first", False), ("b/m-b", "repair", True)]


async def test_a_huge_rejected_answer_is_echoed_only_in_part(chain: Chain) -> None:
    chain.a.script = [reply("x" * 10_000), reply(GOOD)]
    await chain.gateway.chat(body())
    echoed = chain.a.requests[1][1].messages[2].content
    assert echoed == "x" * 4000


async def test_a_transient_failure_is_retried_and_not_counted_as_a_repair(chain) -> None:
    chain.a.script = [UpstreamUnavailable("blip"), reply(BAD), UpstreamUnavailable("blip"),
                      reply(GOOD)]
    result = await chain.gateway.chat(body())
    assert content_of(result.response) == GOOD
    assert (chain.a.calls, chain.b.calls) == (4, 0)
    assert result.ctx.calls() == 4
    assert steps(result.ctx) == [("a/m-a", "first", False), ("a/m-a", "repair", True)]


# --------------------------------------------------------------------------- fallback


async def test_a_failed_repair_moves_on_to_the_next_target(chain: Chain) -> None:
    chain.a.script = [reply(BAD), reply(BAD)]
    chain.b.script = [reply(GOOD)]
    result = await chain.gateway.chat(body())
    assert content_of(result.response) == GOOD
    assert (chain.a.calls, chain.b.calls) == (2, 1)  # first + repair, then b's first answer
    assert result.ctx.target == "b/m-b" and result.ctx.fallback_used is True
    assert steps(result.ctx) == [("a/m-a", "first", False), ("a/m-a", "repair", False),
                                 ("b/m-b", "first", True)]
    assert [model for model, _ in chain.b.requests] == ["m-b"]


async def test_when_every_target_fails_the_caller_gets_a_safe_refusal(chain, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    chain.a.script = [reply(BAD_CANARY)] * 2
    chain.b.script = [reply(BAD_CANARY)] * 2
    ctx = chain.gateway.context(request_id="req-contract-1")
    with pytest.raises(OutputContractFailed) as info:
        await chain.gateway.chat(body(), ctx)
    refusal = info.value
    assert (chain.a.calls, chain.b.calls) == (2, 2)  # exactly first + repair per target
    assert refusal.status == 502 and refusal.retryable is False
    assert refusal.incident_id and refusal.incident_id in refusal.message
    error = refusal.body("req-contract-1")["error"]
    assert error["type"] == "output_contract_failed"
    assert error["code"] == "output_contract_failed"
    assert error["incident_id"] == refusal.incident_id
    assert error["request_id"] == "req-contract-1"
    # The caller is told what was wrong with each target's last answer (its own data, so the
    # value may be quoted back to it).
    assert len(error["violations"]) == 2
    assert all(v.startswith("$.priority: ") for v in error["violations"])
    assert steps(ctx) == [("a/m-a", "first", False), ("a/m-a", "repair", False),
                          ("b/m-b", "first", False), ("b/m-b", "repair", False)]
    assert ctx.contract_outcome() == "failed"

    # One warning names the incident, with kinds and paths only ...
    warnings = [r for r in caplog.records if r.name == "bastion.contract"]
    assert len(warnings) == 1
    record = warnings[0]
    assert record.levelno == logging.WARNING
    assert record.incident_id == refusal.incident_id
    assert record.request_id == "req-contract-1"
    assert record.alias == "chain"
    assert record.violations == ["schema@$.priority"] * 2
    # ... and the model's content appears in no log record at all.
    for r in caplog.records:
        assert CANARY not in r.getMessage()
        assert CANARY not in repr(vars(r))


async def test_a_refusal_is_not_raised_when_the_chain_failed_for_other_reasons(chain) -> None:
    from bastion.domain.errors import AllTargetsFailed

    chain.a.script = [UpstreamUnavailable("down")] * 2
    chain.b.script = [UpstreamUnavailable("down")] * 2
    with pytest.raises(AllTargetsFailed):
        await chain.gateway.chat(body())
    assert (chain.a.calls, chain.b.calls) == (2, 2)


async def test_a_contract_failure_then_an_outage_is_still_a_contract_refusal(chain) -> None:
    chain.a.script = [reply(BAD), reply(BAD)]
    chain.b.script = [UpstreamUnavailable("down")] * 2
    with pytest.raises(OutputContractFailed) as info:
        await chain.gateway.chat(body())
    assert len(info.value.violations) == 1


# --------------------------------------------------------------------------- metrics


async def test_checks_violations_and_refusals_are_counted(chain: Chain) -> None:
    labels = [("first", "valid"), ("first", "invalid"), ("repair", "valid"),
              ("repair", "invalid")]
    kinds = ["malformed_json", "truncated_json", "empty_output", "schema", "rule"]
    before_checks = {lab: sample(CHECKS, phase=lab[0], outcome=lab[1]) for lab in labels}
    before_kinds = {k: sample(VIOLATIONS, kind=k) for k in kinds}
    before_refusals = sample(REFUSALS)

    chain.a.script = [reply("{oops"), reply('{"priority": "hi', finish_reason="length")]
    chain.b.script = [reply("   "), reply('{"priority": "low", "summary": 2}')]
    with pytest.raises(OutputContractFailed):
        await chain.gateway.chat(body())

    def delta_checks() -> dict[tuple[str, str], float]:
        return {lab: sample(CHECKS, phase=lab[0], outcome=lab[1]) - before_checks[lab]
                for lab in labels}

    assert delta_checks() == {("first", "valid"): 0, ("first", "invalid"): 2,
                              ("repair", "valid"): 0, ("repair", "invalid"): 2}
    assert {k: sample(VIOLATIONS, kind=k) - before_kinds[k] for k in kinds} == {
        "malformed_json": 1, "truncated_json": 1, "empty_output": 1, "schema": 1, "rule": 0}
    assert sample(REFUSALS) - before_refusals == 1

    # A repaired request: one invalid first check, one valid repair, no refusal.
    before_checks = {lab: sample(CHECKS, phase=lab[0], outcome=lab[1]) for lab in labels}
    before_refusals = sample(REFUSALS)
    chain.a.script = [reply(BAD), reply(GOOD)]
    await chain.gateway.chat(body())
    assert delta_checks() == {("first", "valid"): 0, ("first", "invalid"): 1,
                              ("repair", "valid"): 1, ("repair", "invalid"): 0}
    assert sample(REFUSALS) - before_refusals == 0


# --------------------------------------------------------------------------- streams


async def test_a_structured_stream_is_validated_whole_then_replayed(chain: Chain) -> None:
    chain.a.script = [reply(BAD), reply(GOOD)]
    opened = await chain.gateway.chat_stream(body(stream=True))
    chunks = [chunk async for chunk in opened]
    text = "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in chunks if c.get("choices"))
    assert text == GOOD
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chain.a.calls == 2  # two complete answers were checked, no upstream stream opened
    assert opened.ctx.contract_outcome() == "repaired"


async def test_a_structured_stream_that_cannot_be_satisfied_fails_before_opening(chain) -> None:
    chain.a.script = [reply(BAD)] * 2
    chain.b.script = [reply(BAD)] * 2
    with pytest.raises(OutputContractFailed):
        await chain.gateway.chat_stream(body(stream=True))
    assert (chain.a.calls, chain.b.calls) == (2, 2)


# --------------------------------------------------------------------------- tool calls

LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}}}


def tool_body() -> dict[str, Any]:
    return {"model": "chain", "messages": [{"role": "user", "content": "look up order 7"}],
            "tools": [LOOKUP]}


async def test_bad_tool_arguments_are_repaired_through_tool_messages(chain: Chain) -> None:
    chain.a.script = [tool_reply(("call_abc", "lookup", '{"id": "seven"}')),
                      tool_reply(("call_def", "lookup", '{"id": 7}'))]
    result = await chain.gateway.chat(tool_body())
    assert result.value == [{"name": "lookup", "arguments": {"id": 7}}]
    calls = result.response["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_def"]
    assert steps(result.ctx) == [("a/m-a", "first", False), ("a/m-a", "repair", True)]

    repair = chain.a.requests[1][1]
    assert [m.role for m in repair.messages] == ["user", "assistant", "tool"]
    assistant, tool = repair.messages[1], repair.messages[2]
    assert assistant.content is None
    assert assistant.tool_calls == [{"id": "call_abc", "type": "function", "function": {
        "name": "lookup", "arguments": '{"id": "seven"}'}}]
    assert tool.tool_call_id == "call_abc"
    assert "$.tool_calls[0].function.arguments.id: 'seven' is not of type 'integer'" \
        in tool.content
    assert repair.tools == [LOOKUP]


async def test_every_rejected_call_gets_its_own_tool_message(chain: Chain) -> None:
    chain.a.script = [tool_reply(("c1", "lookup", "{}"), ("c2", "drop_tables", "{}")),
                      tool_reply(("c3", "lookup", '{"id": 1}'))]
    await chain.gateway.chat(tool_body())
    repair = chain.a.requests[1][1]
    tool_messages = [m for m in repair.messages if m.role == "tool"]
    assert [m.tool_call_id for m in tool_messages] == ["c1", "c2"]
    assert "'drop_tables' is not a declared tool" in tool_messages[0].content


async def test_tool_arguments_that_stay_bad_end_in_a_refusal(chain: Chain) -> None:
    bad = tool_reply(("call_1", "lookup", '{"id": "seven"'))
    chain.a.script = [bad, bad]
    chain.b.script = [bad, bad]
    with pytest.raises(OutputContractFailed) as info:
        await chain.gateway.chat(tool_body())
    assert all(v.startswith("$.tool_calls[0].function.arguments: not valid JSON")
               for v in info.value.violations)
    assert (chain.a.calls, chain.b.calls) == (2, 2)


# --------------------------------------------------------------------------- the library API


class Triage(BaseModel):
    priority: Literal["low", "normal", "high"]
    summary: str = Field(max_length=60)
    citations: list[str] = []

    @field_validator("summary")
    @classmethod
    def _not_shouting(cls, value: str) -> str:
        if value.isupper():
            raise ValueError("must not be all caps")
        return value


MESSAGES = [{"role": "user", "content": USER}]


async def test_structured_returns_a_validated_instance(chain: Chain) -> None:
    chain.a.script = [reply(GOOD)]
    triage = await chain.gateway.structured(Triage, MESSAGES, alias="chain")
    assert isinstance(triage, Triage)
    assert triage == Triage(priority="high", summary="printer on fire")
    sent = chain.a.requests[0][1]
    assert sent.response_format == {"type": "json_schema", "json_schema": {
        "name": "Triage", "strict": True, "schema": Triage.model_json_schema()}}


async def test_structured_repairs_what_only_the_pydantic_model_rejects(chain: Chain) -> None:
    chain.a.script = [reply('{"priority": "low", "summary": "ON FIRE"}'), reply(GOOD)]
    triage = await chain.gateway.structured(Triage, MESSAGES, alias="chain")
    assert triage.summary == "printer on fire"
    assert "$.summary: Value error, must not be all caps" in \
        chain.a.requests[1][1].messages[-1].content


async def test_structured_enforces_rules_against_supplied_values(chain: Chain) -> None:
    cites_unknown = '{"priority": "low", "summary": "s", "citations": ["d1", "d9"]}'
    cites_known = '{"priority": "low", "summary": "s", "citations": ["d1"]}'
    chain.a.script = [reply(cites_unknown), reply(cites_known)]
    triage = await chain.gateway.structured(
        Triage, MESSAGES, alias="chain",
        rules=[SubsetOf(rule="subset_of", field="citations", source="doc_ids")],
        values={"doc_ids": ["d1", "d2"]})
    assert triage.citations == ["d1"]
    assert "$.citations: 'd9' is not one of the supplied doc_ids" in \
        chain.a.requests[1][1].messages[-1].content


async def test_structured_raises_the_refusal_when_nothing_satisfies_it(chain: Chain) -> None:
    chain.a.script = [reply(BAD)] * 2
    chain.b.script = [reply("no JSON here")] * 2
    with pytest.raises(OutputContractFailed) as info:
        await chain.gateway.structured(Triage, MESSAGES, alias="chain")
    assert info.value.violations[0].startswith("$.priority: 'urgent' is not one of")
    assert info.value.violations[1].startswith("$: not valid JSON")
    assert len(info.value.violations) == 2
    assert (chain.a.calls, chain.b.calls) == (2, 2)
