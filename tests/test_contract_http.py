"""Output contracts over real HTTP with the official SDK: structured answers are validated,
repaired or refused, the outcome is visible in headers, and streams are validated whole before
the first byte."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import LiveGateway

MSG = [{"role": "user", "content": "triage: the printer is on fire"}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "priority": {"type": "string", "enum": ["low", "normal", "high"]},
        "summary": {"type": "string", "maxLength": 40},
        "score": {"type": "integer", "minimum": 1},
    },
    "required": ["priority", "summary", "score"],
}
STRICT = {**SCHEMA, "additionalProperties": False}
RESPONSE_FORMAT = {"type": "json_schema",
                   "json_schema": {"name": "triage", "strict": True, "schema": SCHEMA}}
#: What the simulated model answers for SCHEMA: required fields, first enum value, minimum.
SAMPLE = {"priority": "low", "summary": "simulated", "score": 1}
BAD = '{"priority": "urgent", "summary": "fire", "score": 1}'
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}}}

PRIMARY, BACKUP = "sim/sim-primary", "backup/sim-backup"


def client(live: LiveGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.v1, api_key="unused", max_retries=0)


def simulate(fault: dict[str, Any]) -> dict[str, str]:
    return {"X-Bastion-Simulate": json.dumps(fault)}


def invalid(content: str = BAD, **kw: Any) -> dict[str, str]:
    return simulate({"kind": "invalid_output", "content": content, **kw})


def structured(live: LiveGateway, headers: dict[str, str] | None = None, **kw: Any) -> Any:
    return client(live).chat.completions.with_raw_response.create(
        model="fast", messages=MSG, response_format=kw.pop("response_format", RESPONSE_FORMAT),
        extra_headers=headers or {}, **kw)


def outcome(headers: httpx.Headers) -> dict[str, str | None]:
    return {name: headers.get(f"x-bastion-{name}")
            for name in ("contract", "contract-steps", "target", "attempts", "fallback")}


def calls(live: LiveGateway) -> tuple[int, int]:
    return live.provider("sim").calls, live.provider("backup").calls


def since(live: LiveGateway, before: tuple[int, int]) -> tuple[int, int]:
    now = calls(live)
    return now[0] - before[0], now[1] - before[1]


# --------------------------------------------------------------------------- valid, repaired


def test_a_strict_json_schema_answer_is_valid(live: LiveGateway) -> None:
    raw = structured(live)
    content = raw.parse().choices[0].message.content
    jsonschema.validate(json.loads(content), STRICT)
    assert json.loads(content) == SAMPLE
    assert outcome(raw.headers) == {"contract": "valid", "contract-steps": f"{PRIMARY}:first=valid",
                                    "target": PRIMARY, "attempts": "1", "fallback": "false"}


def test_the_sdk_parse_helper_gets_a_pydantic_object(live: LiveGateway) -> None:
    class Triage(BaseModel):
        priority: Literal["low", "normal", "high"]
        summary: str

    completion = client(live).chat.completions.parse(model="fast", messages=MSG,
                                                     response_format=Triage)
    assert completion.choices[0].message.parsed == Triage(priority="low", summary="simulated")


def test_a_fenced_answer_reaches_the_client_without_its_fence(live: LiveGateway) -> None:
    fenced = "```json\n" + json.dumps(SAMPLE) + "\n```"
    raw = structured(live, invalid(fenced))
    assert raw.parse().choices[0].message.content == json.dumps(SAMPLE)
    assert raw.headers["x-bastion-contract"] == "valid"


def test_an_invalid_answer_is_repaired_once(live: LiveGateway) -> None:
    before = calls(live)
    raw = structured(live, invalid(fail_times=1))
    content = raw.parse().choices[0].message.content
    jsonschema.validate(json.loads(content), STRICT)
    assert outcome(raw.headers) == {
        "contract": "repaired",
        "contract-steps": f"{PRIMARY}:first=invalid,{PRIMARY}:repair=valid",
        "target": PRIMARY, "attempts": "2", "fallback": "false"}
    assert since(live, before) == (2, 0)


def test_json_object_mode_is_repaired_into_an_object(live: LiveGateway) -> None:
    raw = structured(live, invalid("[1, 2]", fail_times=1),
                     response_format={"type": "json_object"})
    assert json.loads(raw.parse().choices[0].message.content) == {
        "reply": "Hello from the simulated model."}
    assert raw.headers["x-bastion-contract"] == "repaired"


# --------------------------------------------------------------------------- fallback, refusal


def test_invalid_on_the_primary_only_falls_back_to_a_valid_answer(live: LiveGateway) -> None:
    before = calls(live)
    raw = structured(live, invalid(only_model="sim-primary"))
    content = raw.parse().choices[0].message.content
    jsonschema.validate(json.loads(content), STRICT)
    assert outcome(raw.headers) == {
        "contract": "repaired",
        "contract-steps": f"{PRIMARY}:first=invalid,{PRIMARY}:repair=invalid,"
                          f"{BACKUP}:first=valid",
        "target": BACKUP, "attempts": "3", "fallback": "true"}
    assert since(live, before) == (2, 1)


def test_invalid_everywhere_is_a_502_refusal_with_an_incident_id(live: LiveGateway) -> None:
    before = calls(live)
    with pytest.raises(openai.APIStatusError) as info:
        structured(live, invalid())
    err = info.value
    assert err.status_code == 502
    body = err.response.json()["error"]
    assert body["type"] == "output_contract_failed"
    assert body["code"] == "output_contract_failed"
    assert body["retryable"] is False
    assert body["incident_id"] and body["incident_id"] in body["message"]
    assert body["request_id"] == err.response.headers["x-request-id"]
    assert body["violations"] == [
        "$.priority: 'urgent' is not one of ['low', 'normal', 'high']"] * 2
    assert outcome(err.response.headers) == {
        "contract": "failed",
        "contract-steps": f"{PRIMARY}:first=invalid,{PRIMARY}:repair=invalid,"
                          f"{BACKUP}:first=invalid,{BACKUP}:repair=invalid",
        "target": None, "attempts": "4", "fallback": None}
    assert since(live, before) == (2, 2)  # first + repair per target, nothing more


def test_strict_rejects_an_extra_field_over_http(live: LiveGateway) -> None:
    extra = json.dumps({**SAMPLE, "internal_note": "x"})
    with pytest.raises(openai.APIStatusError) as info:
        structured(live, invalid(extra))
    assert info.value.status_code == 502
    assert all("'internal_note' was unexpected" in v
               for v in info.value.response.json()["error"]["violations"])
    # Without strict, the same answer is fine.
    lenient = {"type": "json_schema", "json_schema": {"name": "triage", "schema": SCHEMA}}
    raw = structured(live, invalid(extra), response_format=lenient)
    assert json.loads(raw.parse().choices[0].message.content)["internal_note"] == "x"


def test_an_invalid_schema_in_the_request_is_a_400_and_calls_no_model(live) -> None:
    before = calls(live)
    bad_format = {"type": "json_schema", "json_schema": {
        "name": "triage", "schema": {"type": "object", "properties": {"a": {"type": "strng"}}}}}
    with pytest.raises(openai.BadRequestError) as info:
        structured(live, response_format=bad_format)
    error = info.value.response.json()["error"]
    assert info.value.status_code == 400
    assert error["param"] == "response_format.json_schema.schema"
    assert error["type"] == "invalid_request_error"
    assert since(live, before) == (0, 0)


# --------------------------------------------------------------------------- streams


def joined(stream: Any) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def test_a_structured_stream_joins_to_valid_json(live: LiveGateway) -> None:
    raw = client(live).chat.completions.with_raw_response.create(
        model="fast", messages=MSG, response_format=RESPONSE_FORMAT, stream=True,
        extra_headers=invalid(fail_times=1))
    text = joined(raw.parse())
    assert json.loads(text) == SAMPLE
    assert raw.headers["x-bastion-contract"] == "repaired"
    assert raw.headers["content-type"].startswith("text/event-stream")


def test_a_stream_of_invalid_output_is_refused_before_any_chunk(live: LiveGateway,
                                                                http: httpx.Client) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(live).chat.completions.create(model="fast", messages=MSG, stream=True,
                                             response_format=RESPONSE_FORMAT,
                                             extra_headers=invalid())
    assert info.value.status_code == 502
    assert info.value.response.json()["error"]["type"] == "output_contract_failed"

    with http.stream("POST", "/v1/chat/completions", headers=invalid(),
                     json={"model": "fast", "messages": MSG, "stream": True,
                           "response_format": RESPONSE_FORMAT}) as resp:
        raw = resp.read().decode()
    assert resp.status_code == 502
    assert resp.headers["content-type"] == "application/json"
    assert "data:" not in raw and BAD not in raw
    assert json.loads(raw)["error"]["incident_id"]


# --------------------------------------------------------------------------- tool calls

BAD_THEN_GOOD_TOOL = simulate({"faults": [
    {"kind": "tool_call", "arguments": {"id": "seven"}, "fail_times": 1},
    {"kind": "tool_call", "arguments": {"id": 7}},
]})


def test_bad_tool_arguments_are_repaired(live: LiveGateway) -> None:
    raw = client(live).chat.completions.with_raw_response.create(
        model="fast", messages=MSG, tools=[LOOKUP], extra_headers=BAD_THEN_GOOD_TOOL)
    message = raw.parse().choices[0].message
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("lookup", {"id": 7})]
    assert raw.headers["x-bastion-contract-steps"] == (
        f"{PRIMARY}:first=invalid,{PRIMARY}:repair=valid")


def test_a_repaired_tool_call_streams_as_tool_call_deltas(live: LiveGateway) -> None:
    stream = client(live).chat.completions.create(
        model="fast", messages=MSG, tools=[LOOKUP], stream=True,
        extra_headers=BAD_THEN_GOOD_TOOL)
    arguments, names, finish = "", [], None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                names += [call.function.name] if call.function.name else []
                arguments += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert names == ["lookup"] and json.loads(arguments) == {"id": 7}
    assert finish == "tool_calls"


def test_tool_arguments_bad_everywhere_are_refused(live: LiveGateway) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(live).chat.completions.create(
            model="fast", messages=MSG, tools=[LOOKUP],
            extra_headers=simulate({"kind": "tool_call", "arguments": '{"id": "seven"}'}))
    assert info.value.status_code == 502
    assert info.value.response.json()["error"]["violations"] == [
        "$.tool_calls[0].function.arguments.id: 'seven' is not of type 'integer'"] * 2
