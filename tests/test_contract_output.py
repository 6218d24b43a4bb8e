"""The output contract of one request, checked against fixture answers: every way a model's
answer can break it is reported with its kind and JSON path, and what passes is exactly what
was validated."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, TypeAdapter, field_validator

from bastion.domain.chat import ChatRequest
from bastion.domain.errors import InvalidRequest
from bastion.domain.rules import RuleSpec
from bastion.pipeline.contract import (
    OutputContract,
    RuleContext,
    Violation,
    compile_schema,
    register_rule,
)
from bastion.pipeline.contract.rules import (
    check_rule,
    check_rules,
    registered_rules,
    resolve,
    unknown_custom_rules,
)
from bastion.pipeline.contract.schema import MAX_VIOLATIONS, strictify

TICKET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "priority": {"type": "string", "enum": ["low", "normal", "high"]},
        "summary": {"type": "string", "maxLength": 40},
        "score": {"type": "integer"},
        "citations": {"type": "array", "items": {"type": "string"}},
        "author": {"type": "object", "properties": {"name": {"type": "string"}}},
    },
    "required": ["priority", "summary", "score"],
}
VALID = '{"priority": "high", "summary": "printer on fire", "score": 3}'

LOOKUP_TOOL = {"type": "function", "function": {
    "name": "lookup", "parameters": {
        "type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}}}
FREE_TOOL = {"type": "function", "function": {"name": "ping"}}  # no parameters declared

RULES = TypeAdapter(list[RuleSpec])


def request(*, schema: dict[str, Any] | None = None, strict: bool = True,
            response_format: dict[str, Any] | None = None,
            tools: list[dict[str, Any]] | None = None) -> ChatRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "triage"}]}
    if schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "ticket", "strict": strict, "schema": schema}}
    if response_format is not None:
        body["response_format"] = response_format
    if tools is not None:
        body["tools"] = tools
    return ChatRequest.model_validate(body)


def contract(schema: dict[str, Any] | None = TICKET_SCHEMA, **kw: Any) -> OutputContract:
    built = OutputContract.for_request(request(schema=schema, strict=kw.pop("strict", True)),
                                       **kw)
    assert built is not None
    return built


def answer(content: Any, finish_reason: str = "stop") -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def tool_answer(*calls: tuple[str | None, Any]) -> dict[str, Any]:
    tool_calls = [{"id": f"call_{i}", "type": "function",
                   "function": {"name": name, "arguments": args}}
                  for i, (name, args) in enumerate(calls)]
    response = answer(None, "tool_calls")
    response["choices"][0]["message"]["tool_calls"] = tool_calls
    return response


def ticket(**fields: Any) -> str:
    value = {"priority": "high", "summary": "printer on fire", "score": 3}
    value.update(fields)
    return orjson.dumps({k: v for k, v in value.items() if v is not ...}).decode()


def kinds_and_paths(violations: list[Violation]) -> list[tuple[str, str]]:
    return [(v.kind, v.path) for v in violations]


# --------------------------------------------------------------------------- valid answers


def test_a_valid_answer_passes_with_its_parsed_value_and_unchanged_content() -> None:
    checked = contract().check(answer(VALID))
    assert checked.ok and checked.violations == []
    assert checked.value == {"priority": "high", "summary": "printer on fire", "score": 3}
    assert checked.response is not None
    assert checked.response["choices"][0]["message"]["content"] == VALID
    assert checked.response["usage"]["total_tokens"] == 2  # the rest of the answer is kept


@pytest.mark.parametrize("content", [
    "```json\n" + VALID + "\n```",
    "```\n" + VALID + "\n```",
    "  ```JSON\n" + VALID + "\n```\n",
    "```json\n" + VALID + "```",
])
def test_a_markdown_fence_around_valid_json_is_accepted_and_removed(content: str) -> None:
    original = answer(content)
    checked = contract().check(original)
    assert checked.ok, checked.violations
    # What the caller receives is exactly the JSON that was validated, fence removed ...
    assert checked.response["choices"][0]["message"]["content"] == VALID
    assert orjson.loads(checked.response["choices"][0]["message"]["content"]) == checked.value
    # ... and the upstream's answer itself was not modified in place.
    assert original["choices"][0]["message"]["content"] == content


def test_a_fence_does_not_make_invalid_json_valid() -> None:
    checked = contract().check(answer('```json\n{"priority": "high",\n```'))
    assert kinds_and_paths(checked.violations) == [("malformed_json", "$")]


def test_a_request_without_json_or_tools_declares_no_contract() -> None:
    assert OutputContract.for_request(request()) is None
    assert OutputContract.for_request(request(response_format={"type": "text"})) is None


def test_json_object_mode_wants_any_object_and_nothing_else() -> None:
    built = OutputContract.for_request(request(response_format={"type": "json_object"}))
    assert built is not None and built.json_mode == "object" and built.validator is None
    assert built.check(answer('{"anything": [1, 2]}')).value == {"anything": [1, 2]}
    checked = built.check(answer("[1, 2]"))
    assert kinds_and_paths(checked.violations) == [("schema", "$")]
    assert "JSON object" in checked.violations[0].message


def test_rules_alone_make_the_answer_a_json_object() -> None:
    built = OutputContract.for_request(
        request(), rules=RULES.validate_python([{"rule": "non_empty", "field": "summary"}]))
    assert built is not None and built.json_mode == "object"
    assert kinds_and_paths(built.check(answer("plain words")).violations) == [
        ("malformed_json", "$")]
    assert kinds_and_paths(built.check(answer('{"summary": " "}')).violations) == [
        ("rule", "$.summary")]


# --------------------------------------------------------------------------- JSON failures


@pytest.mark.parametrize("content", ["{not json", "Sure! Here is the JSON: {}", "{'a': 1}",
                                     '{"priority": "high"} trailing', "NaN"])
def test_malformed_json_is_reported_at_the_root(content: str) -> None:
    checked = contract().check(answer(content))
    assert not checked.ok and checked.value is None and checked.response is None
    assert kinds_and_paths(checked.violations) == [("malformed_json", "$")]
    assert checked.violations[0].message.startswith("not valid JSON")


def test_json_cut_off_at_the_token_limit_is_truncated_not_malformed() -> None:
    cut = VALID[: len(VALID) // 2]
    truncated = contract().check(answer(cut, finish_reason="length"))
    assert kinds_and_paths(truncated.violations) == [("truncated_json", "$")]
    assert "token limit" in truncated.violations[0].message
    # The same bytes with a normal stop are just malformed.
    assert kinds_and_paths(contract().check(answer(cut)).violations) == [("malformed_json", "$")]


def test_a_complete_answer_that_hit_the_limit_is_still_judged_on_its_content() -> None:
    assert contract().check(answer(VALID, finish_reason="length")).ok


@pytest.mark.parametrize("content", ["", "   \n\t", None, 42])
def test_an_answer_without_content_is_empty_output(content: Any) -> None:
    checked = contract().check(answer(content))
    assert kinds_and_paths(checked.violations) == [("empty_output", "$")]


@pytest.mark.parametrize("response", [
    {"choices": []}, {"choices": None}, {}, {"choices": ["not a choice"]}])
def test_an_answer_without_a_choice_is_empty_output(response: dict[str, Any]) -> None:
    checked = contract().check(response)
    assert kinds_and_paths(checked.violations) == [("empty_output", "$.choices")]


# --------------------------------------------------------------------------- schema failures


def test_a_missing_required_field() -> None:
    checked = contract().check(answer(ticket(score=...)))
    assert kinds_and_paths(checked.violations) == [("schema", "$")]
    assert checked.violations[0].message == "'score' is a required property"


def test_a_field_of_the_wrong_type() -> None:
    checked = contract().check(answer(ticket(score="three")))
    assert kinds_and_paths(checked.violations) == [("schema", "$.score")]
    assert "is not of type 'integer'" in checked.violations[0].message


def test_a_value_outside_the_enum() -> None:
    checked = contract().check(answer(ticket(priority="urgent")))
    assert kinds_and_paths(checked.violations) == [("schema", "$.priority")]
    assert "'urgent' is not one of ['low', 'normal', 'high']" in checked.violations[0].message


def test_a_string_longer_than_max_length() -> None:
    assert contract().check(answer(ticket(summary="x" * 40))).ok
    checked = contract().check(answer(ticket(summary="x" * 41)))
    assert kinds_and_paths(checked.violations) == [("schema", "$.summary")]
    assert "is too long" in checked.violations[0].message


def test_errors_in_array_items_carry_the_index() -> None:
    checked = contract().check(answer(ticket(citations=["d1", 7, "d3", False])))
    assert kinds_and_paths(checked.violations) == [("schema", "$.citations[1]"),
                                                   ("schema", "$.citations[3]")]


def test_every_violation_is_reported_in_path_order_up_to_a_bound() -> None:
    checked = contract().check(answer(ticket(priority="urgent", score="x", summary=1)))
    assert [v.path for v in checked.violations] == ["$.priority", "$.score", "$.summary"]
    many = contract().check(answer(ticket(citations=list(range(30)))))
    assert len(many.violations) == MAX_VIOLATIONS
    # A long message is cut so it fits in a header, a log line and a repair prompt.
    long_enum = {"type": "string", "enum": ["v" * 50 + str(i) for i in range(10)]}
    cut = contract({"type": "object", "properties": {"p": long_enum}}).check(answer('{"p": "z"}'))
    assert len(cut.violations[0].message) == 200 and cut.violations[0].message.endswith("...")


def test_strict_rejects_fields_beyond_those_declared_at_every_level() -> None:
    extra = contract(strict=True).check(answer(ticket(mood="grumpy")))
    assert kinds_and_paths(extra.violations) == [("schema", "$")]
    assert "'mood' was unexpected" in extra.violations[0].message
    nested = contract(strict=True).check(answer(ticket(author={"name": "a", "age": 3})))
    assert kinds_and_paths(nested.violations) == [("schema", "$.author")]


def test_without_strict_extra_fields_are_accepted_and_kept() -> None:
    checked = contract(strict=False).check(answer(ticket(mood="grumpy",
                                                         author={"name": "a", "age": 3})))
    assert checked.ok
    assert checked.value["mood"] == "grumpy" and checked.value["author"]["age"] == 3


def test_strict_keeps_what_the_schema_says_explicitly() -> None:
    open_map = {"type": "object", "properties": {"labels": {
        "type": "object", "additionalProperties": {"type": "string"}}}}
    built = contract(open_map, strict=True)
    assert built.check(answer('{"labels": {"any": "thing"}}')).ok
    assert kinds_and_paths(built.check(answer('{"labels": {"any": 1}}')).violations) == [
        ("schema", "$.labels.any")]
    # enum/const/default values are data, never rewritten as schemas.
    enum_of_objects = {"type": "object", "properties": {"p": {"enum": [{"properties": 1}]}}}
    assert strictify(enum_of_objects)["properties"]["p"] == {"enum": [{"properties": 1}]}
    assert strictify(enum_of_objects)["additionalProperties"] is False


def test_strict_holds_for_fields_named_like_schema_keywords() -> None:
    # Field names are the caller's: "default", "examples" or "properties" are plain fields,
    # and the objects under them are as strict as any other.
    nested = {"type": "object", "properties": {"x": {"type": "string"}}}
    schema = {"type": "object", "properties": {
        "default": nested, "examples": {"type": "array", "items": nested},
        "properties": {"type": "string"}}}
    built = contract(schema, strict=True)
    assert built.check(answer('{"default": {"x": "a"}, "examples": [{}], '
                              '"properties": "p"}')).ok
    checked = built.check(answer('{"default": {"x": "a", "sneaky": 1}, '
                                 '"examples": [{"x": "b", "z": 2}]}'))
    assert kinds_and_paths(checked.violations) == [("schema", "$.default"),
                                                   ("schema", "$.examples[0]")]
    assert strictify(schema)["properties"]["properties"] == {"type": "string"}
    assert "additionalProperties" not in strictify(schema)["properties"]


def test_a_schema_with_local_refs_validates_through_them() -> None:
    schema = {"type": "object", "properties": {"item": {"$ref": "#/$defs/Item"}},
              "required": ["item"],
              "$defs": {"Item": {"type": "object", "properties": {"n": {"type": "integer"}},
                                 "required": ["n"]}}}
    built = contract(schema, strict=True)
    assert built.check(answer('{"item": {"n": 1}}')).ok
    assert kinds_and_paths(built.check(answer('{"item": {"n": 1, "x": 0}}')).violations) == [
        ("schema", "$.item")]
    assert kinds_and_paths(built.check(answer('{"item": {"n": "1"}}')).violations) == [
        ("schema", "$.item.n")]


# --------------------------------------------------------------------------- rules


def test_rule_max_length_applies_where_the_schema_has_no_limit() -> None:
    rules = RULES.validate_python([{"rule": "max_length", "field": "summary", "max": 10}])
    built = contract(rules=rules)
    assert built.check(answer(ticket(summary="ten chars!"))).ok
    checked = built.check(answer(ticket(summary="eleven char")))
    assert kinds_and_paths(checked.violations) == [("rule", "$.summary")]
    assert checked.violations[0].message == "length 11 exceeds the maximum 10"


def test_rules_run_only_on_schema_valid_output() -> None:
    rules = RULES.validate_python([{"rule": "max_length", "field": "summary", "max": 2}])
    checked = contract(rules=rules).check(answer(ticket(score="x")))
    assert kinds_and_paths(checked.violations) == [("schema", "$.score")]


def test_a_citation_of_an_id_that_was_not_supplied() -> None:
    rules = RULES.validate_python([{"rule": "subset_of", "field": "citations",
                                    "source": "doc_ids"}])
    ctx = RuleContext(values={"doc_ids": ["d1", "d2"]})
    built = contract(rules=rules, rule_context=ctx)
    assert built.check(answer(ticket(citations=["d2", "d1"]))).ok
    assert built.check(answer(ticket(citations=[]))).ok
    checked = built.check(answer(ticket(citations=["d1", "d9"])))
    assert kinds_and_paths(checked.violations) == [("rule", "$.citations")]
    assert checked.violations[0].message == "'d9' is not one of the supplied doc_ids"


def test_a_citation_rule_with_no_supplied_ids_accepts_no_citation() -> None:
    rules = RULES.validate_python([{"rule": "subset_of", "field": "citations",
                                    "source": "doc_ids"}])
    checked = contract(rules=rules).check(answer(ticket(citations=["d1"])))
    assert kinds_and_paths(checked.violations) == [("rule", "$.citations")]


class Ticket(BaseModel):
    priority: str
    summary: str
    score: int

    @field_validator("summary")
    @classmethod
    def _not_shouting(cls, value: str) -> str:
        if value.isupper():
            raise ValueError("must not be all caps")
        return value


def test_a_pydantic_model_validates_after_the_schema_and_is_the_value() -> None:
    built = contract(model=Ticket)
    checked = built.check(answer(VALID))
    assert isinstance(checked.value, Ticket) and checked.value.score == 3
    shouting = built.check(answer(ticket(summary="ON FIRE")))
    assert kinds_and_paths(shouting.violations) == [("schema", "$.summary")]
    assert "must not be all caps" in shouting.violations[0].message


def test_rules_see_a_pydantic_value_as_plain_json() -> None:
    rules = RULES.validate_python([{"rule": "one_of", "field": "priority",
                                    "values": ["high"]}])
    built = contract(model=Ticket, rules=rules)
    assert built.check(answer(VALID)).ok
    assert kinds_and_paths(built.check(answer(ticket(priority="low"))).violations) == [
        ("rule", "$.priority")]


# --------------------------------------------------------------------------- tool calls


def tools_contract(*tools: dict[str, Any]) -> OutputContract:
    built = OutputContract.for_request(request(tools=list(tools or (LOOKUP_TOOL,))))
    assert built is not None and built.json_mode is None
    return built


def test_valid_tool_calls_pass_with_their_parsed_arguments() -> None:
    response = tool_answer(("lookup", '{"id": 7}'), ("ping", '{"any": true}'))
    checked = tools_contract(LOOKUP_TOOL, FREE_TOOL).check(response)
    assert checked.ok
    assert checked.value == [{"name": "lookup", "arguments": {"id": 7}},
                             {"name": "ping", "arguments": {"any": True}}]
    assert checked.response is response


def test_a_plain_answer_is_fine_when_tools_were_only_offered() -> None:
    checked = tools_contract().check(answer("I do not need a tool."))
    assert checked.ok and checked.value == "I do not need a tool."


def test_tool_arguments_that_are_not_json() -> None:
    checked = tools_contract().check(tool_answer(("lookup", '{"id": 7')))
    assert kinds_and_paths(checked.violations) == [
        ("tool_arguments", "$.tool_calls[0].function.arguments")]
    assert checked.violations[0].message.startswith("not valid JSON")


@pytest.mark.parametrize("args", ["[7]", "7", None, '"id"'])
def test_tool_arguments_that_are_not_an_object(args: Any) -> None:
    checked = tools_contract().check(tool_answer(("lookup", args)))
    assert kinds_and_paths(checked.violations) == [
        ("tool_arguments", "$.tool_calls[0].function.arguments")]
    assert checked.violations[0].message == "arguments must be a JSON object"


def test_tool_arguments_of_the_wrong_type_point_into_the_arguments() -> None:
    checked = tools_contract().check(tool_answer(("lookup", '{"id": "seven"}')))
    assert kinds_and_paths(checked.violations) == [
        ("tool_arguments", "$.tool_calls[0].function.arguments.id")]
    assert "is not of type 'integer'" in checked.violations[0].message
    missing = tools_contract().check(tool_answer(("lookup", "{}")))
    assert kinds_and_paths(missing.violations) == [
        ("tool_arguments", "$.tool_calls[0].function.arguments")]


def test_already_parsed_tool_arguments_are_validated_too() -> None:
    assert tools_contract().check(tool_answer(("lookup", {"id": 1}))).ok
    checked = tools_contract().check(tool_answer(("lookup", {"id": 1.5})))
    assert kinds_and_paths(checked.violations) == [
        ("tool_arguments", "$.tool_calls[0].function.arguments.id")]


@pytest.mark.parametrize("name", ["delete_everything", None, ""])
def test_a_call_to_a_tool_that_was_not_declared(name: str | None) -> None:
    checked = tools_contract(LOOKUP_TOOL, FREE_TOOL).check(tool_answer((name, "{}")))
    assert kinds_and_paths(checked.violations) == [
        ("unknown_tool", "$.tool_calls[0].function.name")]
    assert "(declared: lookup, ping)" in checked.violations[0].message


def test_every_bad_call_is_reported_with_its_index() -> None:
    checked = tools_contract().check(tool_answer(
        ("lookup", '{"id": 1}'), ("nope", "{}"), ("lookup", '{"id": []}')))
    assert kinds_and_paths(checked.violations) == [
        ("unknown_tool", "$.tool_calls[1].function.name"),
        ("tool_arguments", "$.tool_calls[2].function.arguments.id")]


def test_strict_tool_parameters_reject_extra_arguments() -> None:
    strict_tool = copy.deepcopy(LOOKUP_TOOL)
    strict_tool["function"]["strict"] = True
    assert tools_contract(LOOKUP_TOOL).check(tool_answer(("lookup", '{"id": 1, "x": 2}'))).ok
    checked = tools_contract(strict_tool).check(tool_answer(("lookup", '{"id": 1, "x": 2}')))
    assert kinds_and_paths(checked.violations) == [
        ("tool_arguments", "$.tool_calls[0].function.arguments")]


def test_tool_calls_are_checked_even_when_the_content_must_be_json() -> None:
    body = request(schema=TICKET_SCHEMA, tools=[LOOKUP_TOOL])
    built = OutputContract.for_request(body)
    assert built is not None
    assert built.check(tool_answer(("lookup", '{"id": 2}'))).ok
    assert kinds_and_paths(built.check(tool_answer(("lookup", '{"id": "2"}'))).violations) == [
        ("tool_arguments", "$.tool_calls[0].function.arguments.id")]
    assert kinds_and_paths(built.check(answer(ticket(score=...))).violations) == [
        ("schema", "$")]


# --------------------------------------------------------------------------- invalid requests


@pytest.mark.parametrize(("response_format", "param"), [
    ({"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "strng"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "t", "strict": True,
                                             "schema": {"type": "object",
                                                        "properties": {"a": {"minLength": -1}}}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "t", "schema": {"required": "a"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "t", "schema": [1]}},
     "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": "not an object"}, "response_format.json_schema"),
    ({"type": "json_schema"}, "response_format.json_schema"),
])
def test_an_invalid_response_schema_is_the_callers_mistake(response_format, param) -> None:
    with pytest.raises(InvalidRequest) as info:
        OutputContract.for_request(request(response_format=response_format))
    assert info.value.param == param
    assert info.value.status == 400


@pytest.mark.parametrize("parameters", [{"type": 5}, ["not", "a", "schema"]])
def test_invalid_tool_parameters_name_the_tool(parameters: Any) -> None:
    bad = {"type": "function", "function": {"name": "bad", "parameters": parameters}}
    with pytest.raises(InvalidRequest) as info:
        OutputContract.for_request(request(tools=[LOOKUP_TOOL, bad]))
    assert info.value.param == "tools.1.function.parameters"


# --------------------------------------------------------------------------- the schema cache


def test_a_schema_is_compiled_once_and_its_validator_reused() -> None:
    schema = {"type": "object", "properties": {"cache_probe": {"type": "string"}}}
    reordered = {"properties": {"cache_probe": {"type": "string"}}, "type": "object"}
    first = compile_schema(schema)
    assert compile_schema(copy.deepcopy(schema)) is first
    assert compile_schema(reordered) is first  # key order is not a different schema
    strict = compile_schema(schema, strict=True)
    assert strict is not first
    assert compile_schema(schema, strict=True) is strict
    assert strict.schema["additionalProperties"] is False
    assert "additionalProperties" not in first.schema
    assert "additionalProperties" not in schema  # the caller's schema is never modified


def test_two_requests_with_the_same_schema_share_one_validator() -> None:
    a = contract(copy.deepcopy(TICKET_SCHEMA))
    b = contract(copy.deepcopy(TICKET_SCHEMA))
    assert a.validator is b.validator
    assert contract(TICKET_SCHEMA, strict=False).validator is not a.validator


# --------------------------------------------------------------------------- rules on their own

CITED = {"summary": "ok", "citations": [{"id": "d1", "quote": "short"},
                                        {"id": "d7", "quote": "a much longer quote"},
                                        {"quote": "no id"}]}


def rule(spec: dict[str, Any]) -> RuleSpec:
    return RULES.validate_python([spec])[0]


def test_list_paths_walk_every_element() -> None:
    assert [(path, value) for path, value in resolve(CITED, "citations[].id")][:2] == [
        ("$.citations[0].id", "d1"), ("$.citations[1].id", "d7")]
    assert resolve(CITED, "citations[].id")[2][0] == "$.citations[2].id"
    assert resolve({"citations": "not a list"}, "citations[].id")[0][0] == "$.citations.id"


def test_max_length_on_each_element_names_the_element() -> None:
    found = check_rule(rule({"rule": "max_length", "field": "citations[].quote", "max": 10}),
                       CITED, RuleContext())
    assert kinds_and_paths(found) == [("rule", "$.citations[1].quote")]
    assert found[0].message == "length 19 exceeds the maximum 10"


def test_max_length_counts_list_items_too() -> None:
    found = check_rule(rule({"rule": "max_length", "field": "citations", "max": 2}),
                       CITED, RuleContext())
    assert found == [Violation("rule", "$.citations", "length 3 exceeds the maximum 2")]


def test_min_length() -> None:
    spec = rule({"rule": "min_length", "field": "summary", "min": 3})
    assert check_rule(spec, {"summary": "abc"}, RuleContext()) == []
    assert check_rule(spec, {"summary": "ab"}, RuleContext()) == [
        Violation("rule", "$.summary", "length 2 is below the minimum 3")]


@pytest.mark.parametrize("value", [{}, {"summary": None}, {"summary": "  "},
                                   {"summary": []}, {"summary": {}}])
def test_non_empty_rejects_missing_and_blank(value: dict[str, Any]) -> None:
    found = check_rule(rule({"rule": "non_empty", "field": "summary"}), value, RuleContext())
    assert found == [Violation("rule", "$.summary", "must not be empty")]


@pytest.mark.parametrize("value", [{"summary": "x"}, {"summary": 0}, {"summary": False},
                                   {"summary": [0]}])
def test_non_empty_accepts_any_present_value(value: dict[str, Any]) -> None:
    assert check_rule(rule({"rule": "non_empty", "field": "summary"}), value,
                      RuleContext()) == []


def test_length_rules_skip_a_missing_field() -> None:
    spec = rule({"rule": "max_length", "field": "citations[].id", "max": 1})
    # d1 and d7 are 2 long; the third citation has no id, which is not a length problem.
    assert [v.path for v in check_rule(spec, CITED, RuleContext())] == [
        "$.citations[0].id", "$.citations[1].id"]


def test_one_of() -> None:
    spec = rule({"rule": "one_of", "field": "priority", "values": ["low", "high"]})
    assert check_rule(spec, {"priority": "low"}, RuleContext()) == []
    assert check_rule(spec, {"priority": "mid"}, RuleContext()) == [
        Violation("rule", "$.priority", "'mid' is not one of ['low', 'high']")]


def test_subset_of_through_a_list_path() -> None:
    spec = rule({"rule": "subset_of", "field": "citations[].id", "source": "retrieved"})
    ctx = RuleContext(values={"retrieved": ("d1", "d2")})
    assert kinds_and_paths(check_rule(spec, CITED, ctx)) == [("rule", "$.citations[1].id")]
    assert check_rule(spec, {"citations": [{"id": "d2"}]}, ctx) == []


def test_check_rules_reports_every_rule_in_order() -> None:
    specs = RULES.validate_python([
        {"rule": "non_empty", "field": "missing"},
        {"rule": "max_length", "field": "summary", "max": 1},
    ])
    assert [v.path for v in check_rules(specs, CITED, RuleContext())] == [
        "$.missing", "$.summary"]


def test_a_custom_registered_rule_runs_with_the_value_and_context() -> None:
    seen: list[tuple[Any, RuleContext]] = []

    @register_rule("test_contract_no_refund_promises")
    def no_refunds(value: Any, ctx: RuleContext) -> Any:
        seen.append((value, ctx))
        if "refund" in value.get("reply", "").lower():
            yield "$.reply: must not promise a refund"
        if value.get("customer") not in ctx.values.get("customers", ()):
            yield "$.customer: unknown customer"

    spec = rule({"rule": "custom", "name": "test_contract_no_refund_promises"})
    ctx = RuleContext(values={"customers": ["acme"]})
    assert "test_contract_no_refund_promises" in registered_rules()
    assert check_rule(spec, {"reply": "We will look into it", "customer": "acme"}, ctx) == []
    found = check_rule(spec, {"reply": "Full REFUND today", "customer": "evil"}, ctx)
    assert found == [Violation("rule", "$", "$.reply: must not promise a refund"),
                     Violation("rule", "$", "$.customer: unknown customer")]
    assert seen[0] == ({"reply": "We will look into it", "customer": "acme"}, ctx)


def test_a_custom_rule_that_returns_none_passes() -> None:
    register_rule("test_contract_returns_none")(lambda value, ctx: None)
    spec = rule({"rule": "custom", "name": "test_contract_returns_none"})
    assert check_rule(spec, {"a": 1}, RuleContext()) == []


def test_an_unregistered_custom_rule_fails_loudly() -> None:
    spec = rule({"rule": "custom", "name": "test_contract_never_registered"})
    assert check_rule(spec, {}, RuleContext()) == [
        Violation("rule", "$", "custom rule 'test_contract_never_registered' is not registered")]
    assert unknown_custom_rules([spec, rule({"rule": "non_empty", "field": "a"})]) == [
        "test_contract_never_registered"]


def test_a_custom_rule_in_a_contract_triggers_like_a_schema_failure() -> None:
    register_rule("test_contract_score_is_odd")(
        lambda value, ctx: [] if value["score"] % 2 else ["$.score: must be odd"])
    built = contract(rules=[rule({"rule": "custom", "name": "test_contract_score_is_odd"})])
    assert built.check(answer(ticket(score=3))).ok
    assert kinds_and_paths(built.check(answer(ticket(score=4))).violations) == [("rule", "$")]


@pytest.mark.parametrize("spec", [
    {"rule": "max_length", "field": "a", "max": -1},
    {"rule": "max_length", "field": "a"},
    {"rule": "one_of", "field": "a", "values": []},
    {"rule": "non_empty", "field": "a", "extra": 1},
    {"rule": "no_such_rule", "field": "a"},
])
def test_rule_declarations_are_validated(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # pydantic ValidationError is a ValueError
        RULES.validate_python([spec])
