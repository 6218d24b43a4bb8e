"""Whatever a model answers, bastion either returns a success whose content satisfies the
schema (checked here independently, with the stdlib parser and a hand-written strict schema)
or refuses with ``OutputContractFailed``; never a success with an invalid object."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import jsonschema
import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bastion.config import ModelAlias, TargetConfig
from bastion.domain.chat import ChatRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import OutputContractFailed
from bastion.domain.rules import NonEmpty
from bastion.pipeline.call import ChatCall
from bastion.pipeline.contract import OutputContract
from bastion.pipeline.router import Router, call_provider

#: What the request declares (``strict: true``: bastion must add additionalProperties itself).
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 5},
        "count": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "maxItems": 3, "items": {"enum": ["a", "b"]}},
        "meta": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
    },
    "required": ["name", "count"],
}
#: The same contract written out by hand: strict objects, and the ``non_empty`` rule on name.
EXPECTED: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 5, "pattern": r"\S"},
        "count": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "maxItems": 3, "items": {"enum": ["a", "b"]}},
        "meta": {"type": "object", "additionalProperties": False,
                 "properties": {"ok": {"type": "boolean"}}},
    },
    "required": ["name", "count"],
}
REQUEST = ChatRequest.model_validate({
    "model": "chain", "messages": [{"role": "user", "content": "describe it"}],
    "response_format": {"type": "json_schema",
                        "json_schema": {"name": "thing", "strict": True, "schema": SCHEMA}}})
RULES = (NonEmpty(rule="non_empty", field="name"),)


class Constant:
    """A provider that gives the same answer to every call, repairs included."""

    def __init__(self, name: str, content: str, finish_reason: str) -> None:
        self.name = name
        self.calls = 0
        self.response = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                         "choices": [{"index": 0, "finish_reason": finish_reason,
                                      "message": {"role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                   "total_tokens": 2}}

    async def chat(self, request, model, timeout, ctx):
        self.calls += 1
        return copy.deepcopy(self.response)


def run(content: str, finish_reason: str = "stop") -> tuple[Any, list[Constant]]:
    """(the content bastion returned, or the refusal; the providers) for one answer."""
    providers = [Constant("a", content, finish_reason), Constant("b", content, finish_reason)]
    targets = [TargetConfig(provider=p.name, model=f"m-{p.name}", retries=0)
               for p in providers]
    router = Router({"chain": ModelAlias(targets=targets)}, {p.name: p for p in providers},
                    call_provider, seed=0)
    contract = OutputContract.for_request(REQUEST, rules=RULES)

    async def go() -> Any:
        call = ChatCall(RequestContext.create(budget_s=5), REQUEST, "chain", "chat", contract)
        try:
            response = await router(call)
        except OutputContractFailed as exc:
            return exc
        return response["choices"][0]["message"]["content"]

    return asyncio.run(go()), providers


def satisfies(value: Any) -> bool:
    try:
        jsonschema.validate(value, EXPECTED, cls=jsonschema.Draft202012Validator)
    except jsonschema.ValidationError:
        return False
    return True


def assert_sound(outcome: Any, providers: list[Constant]) -> bool:
    """The property itself; returns whether the outcome was a success."""
    if isinstance(outcome, OutputContractFailed):
        assert outcome.status == 502 and outcome.violations
        # Every target got exactly its first call and its one repair.
        assert [p.calls for p in providers] == [2, 2]
        return False
    assert isinstance(outcome, str), outcome
    value = json.loads(outcome)  # the stdlib parser, not the one bastion uses
    assert satisfies(value), f"an invalid object was returned as a success: {outcome!r}"
    assert [p.calls for p in providers] == [1, 0]
    return True


# --------------------------------------------------------------------------- strategies

INT = st.integers(min_value=-(2**53), max_value=2**53)
SCALARS = st.none() | st.booleans() | INT | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=8)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
#: Objects shaped like the schema, each field often right and sometimes anything, so that
#: both outcomes are common.
GOOD_NAME = st.text(min_size=1, max_size=5)
SHAPED = st.fixed_dictionaries(
    {"name": GOOD_NAME | GOOD_NAME | st.text(max_size=7) | JSON,
     "count": st.integers(0, 5) | st.integers(-2, 5) | JSON},
    optional={
        "tags": st.lists(st.sampled_from(["a", "b"]), max_size=3)
        | st.lists(st.sampled_from(["a", "b", "c"]), max_size=4) | JSON,
        "meta": st.fixed_dictionaries({}, optional={"ok": st.booleans()})
        | st.fixed_dictionaries({}, optional={"ok": st.booleans() | JSON, "extra": JSON})
        | JSON,
    },
)
#: Objects valid by construction (save a blank name): the success path gets its share.
VALID = st.fixed_dictionaries(
    {"name": GOOD_NAME, "count": st.integers(0, 2**53)},
    optional={"tags": st.lists(st.sampled_from(["a", "b"]), max_size=3),
              "meta": st.fixed_dictionaries({}, optional={"ok": st.booleans()})},
)
#: The same with one more field, declared or not.
WITH_EXTRA = st.builds(lambda value, key, extra: {**value, key: extra},
                       SHAPED, st.text(max_size=6), JSON)
VALUES = VALID | SHAPED | WITH_EXTRA | JSON


def render(value: Any, style: str) -> str:
    text = orjson.dumps(value).decode()
    if style == "fenced":
        return f"```json\n{text}\n```"
    if style == "indented":
        return "\n  " + orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n"
    return text


PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(value=VALUES, style=st.sampled_from(["plain", "fenced", "indented"]))
def test_any_json_answer_is_either_valid_or_refused(value: Any, style: str) -> None:
    outcome, providers = run(render(value, style))
    succeeded = assert_sound(outcome, providers)
    event("valid" if succeeded else "refused")
    # And the contract is not stricter than declared: a valid answer is never refused.
    assert succeeded == satisfies(value)
    if succeeded:
        assert json.loads(outcome) == value
        assert not outcome.lstrip().startswith("```")  # the fence is never passed on


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return "```" not in text
    return False


@PROPERTY
@given(text=st.text(max_size=40).filter(_not_json))
def test_text_that_is_not_json_is_always_refused(text: str) -> None:
    outcome, providers = run(text)
    assert not assert_sound(outcome, providers)


@PROPERTY
@given(value=SHAPED, cut=st.floats(min_value=0.0, max_value=0.999))
def test_an_answer_cut_off_at_the_token_limit_is_always_refused(value: Any,
                                                                cut: float) -> None:
    text = orjson.dumps(value).decode()
    outcome, providers = run(text[: int(len(text) * cut)], finish_reason="length")
    assert not assert_sound(outcome, providers)
    assert all(v in ("$: the answer was cut off at the token limit", "$: the answer has no content")
               for v in outcome.violations)


@PROPERTY
@given(text=st.text(max_size=60))
def test_any_text_at_all_never_yields_an_invalid_success(text: str) -> None:
    outcome, providers = run(text)
    assert_sound(outcome, providers)
