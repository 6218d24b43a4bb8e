"""The output contract of one request: what a model's answer must be before it is a success.

Built from what the request declares (``response_format``, ``tools``), plus the product rules
and, in the library, a pydantic model. ``check`` parses and validates one completion and either
returns the validated value (with any Markdown fence around the JSON removed from the content,
so what the caller parses is exactly what was checked) or the list of violations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from bastion.domain.chat import ChatRequest
from bastion.domain.errors import InvalidRequest
from bastion.pipeline.contract.rules import RuleContext, RuleSpec, check_rules
from bastion.pipeline.contract.schema import (
    MAX_VIOLATIONS,
    InvalidSchema,
    Violation,
    compile_schema,
    json_path,
    schema_violations,
)

# Small models often wrap JSON in a Markdown fence; the fence is packaging, not content.
_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


@dataclass(slots=True)
class Checked:
    """The outcome of checking one completion."""

    violations: list[Violation]
    value: Any = None
    #: The completion as it may be returned (content canonicalised) when there is no violation.
    response: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(slots=True)
class OutputContract:
    #: "schema", "object" or None (no JSON expected in the content).
    json_mode: str | None = None
    validator: Draft202012Validator | None = None
    schema_name: str | None = None
    tools: dict[str, Draft202012Validator | None] = field(default_factory=dict)
    rules: Sequence[RuleSpec] = ()
    rule_context: RuleContext = field(default_factory=RuleContext)
    model: type[BaseModel] | None = None

    @classmethod
    def for_request(cls, request: ChatRequest, *, rules: Sequence[RuleSpec] = (),
                    rule_context: RuleContext | None = None,
                    model: type[BaseModel] | None = None) -> OutputContract | None:
        """The contract ``request`` declares, or None when it declares nothing to enforce.

        Raises ``InvalidRequest`` (``param`` set) when a declared schema is not valid JSON
        Schema: that is the caller's mistake and must not reach a model.
        """
        if not (request.response_format or request.tools or model is not None or rules):
            return None  # most requests: nothing declared, nothing to build
        contract = cls(rules=tuple(rules), rule_context=rule_context or RuleContext(),
                       model=model)
        rf = request.response_format or {}
        kind = rf.get("type")
        if kind == "json_schema":
            spec = rf.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise InvalidRequest("response_format.json_schema must be an object with a "
                                     "'schema' object", param="response_format.json_schema")
            contract.json_mode = "schema"
            contract.schema_name = spec.get("name")
            contract.validator = _compile(spec.get("schema", {}), bool(spec.get("strict")),
                                          "response_format.json_schema.schema")
        elif kind == "json_object" or model is not None or rules:
            contract.json_mode = "object"
        for i, tool in enumerate(request.tools or ()):
            fn = tool["function"]
            params = fn.get("parameters")
            contract.tools[fn["name"]] = None if params is None else _compile(
                params, bool(fn.get("strict")), f"tools.{i}.function.parameters")
        if contract.json_mode is None and not contract.tools:
            return None
        return contract

    def check(self, response: dict[str, Any]) -> Checked:
        choices = response.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return Checked([Violation("empty_output", "$.choices", "no choice in the answer")])
        choice = choices[0]
        message = choice.get("message") or {}
        calls = message.get("tool_calls") or []
        if calls:
            return self._check_tool_calls(response, calls)
        if self.json_mode is None:
            return Checked([], message.get("content"), response)
        return self._check_content(response, message.get("content"),
                                   choice.get("finish_reason"))

    # -- content

    def _check_content(self, response: dict[str, Any], content: Any,
                       finish_reason: Any) -> Checked:
        if not isinstance(content, str) or not content.strip():
            return Checked([Violation("empty_output", "$", "the answer has no content")])
        text = content
        fenced = _FENCE.match(text)
        if fenced:
            text = fenced.group(1)
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            kind = "truncated_json" if finish_reason == "length" else "malformed_json"
            why = "the answer was cut off at the token limit" if kind == "truncated_json" \
                else f"not valid JSON ({exc})"
            return Checked([Violation(kind, "$", why)])
        if self.json_mode == "object" and not isinstance(value, dict):
            return Checked([Violation("schema", "$", "the answer must be a JSON object")])
        violations = schema_violations(self.validator, value) if self.validator else []
        if not violations and self.model is not None:
            try:
                value = self.model.model_validate(value)
            except ValidationError as exc:
                violations = [Violation("schema", json_path(e["loc"]), e["msg"])
                              for e in exc.errors(include_url=False)[:MAX_VIOLATIONS]]
        if not violations and self.rules:
            plain = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            violations = check_rules(self.rules, plain, self.rule_context)[:MAX_VIOLATIONS]
        if violations:
            return Checked(violations)
        return Checked([], value, _with_content(response, text if not fenced else text.strip()))

    # -- tool calls

    def _check_tool_calls(self, response: dict[str, Any], calls: list[Any]) -> Checked:
        violations: list[Violation] = []
        parsed: list[Any] = []
        for i, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            where = f"$.tool_calls[{i}]"
            name = fn.get("name") if isinstance(fn, dict) else None
            if name not in self.tools:
                known = ", ".join(sorted(self.tools)) or "none"
                violations.append(Violation("unknown_tool", f"{where}.function.name",
                                            f"{name!r} is not a declared tool (declared: "
                                            f"{known})"))
                continue
            raw = fn.get("arguments")
            try:
                args = orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw
            except orjson.JSONDecodeError as exc:
                violations.append(Violation("tool_arguments", f"{where}.function.arguments",
                                            f"not valid JSON ({exc})"))
                continue
            if not isinstance(args, dict):
                violations.append(Violation("tool_arguments", f"{where}.function.arguments",
                                            "arguments must be a JSON object"))
                continue
            validator = self.tools[name]
            for v in schema_violations(validator, args) if validator else []:
                violations.append(Violation("tool_arguments",
                                            where + ".function.arguments" + v.path[1:],
                                            v.message))
            parsed.append({"name": name, "arguments": args})
        if violations:
            return Checked(violations[:MAX_VIOLATIONS])
        return Checked([], parsed, response)


def _compile(schema: Any, strict: bool, param: str) -> Draft202012Validator:
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param} must be a JSON Schema object", param=param)
    try:
        return compile_schema(schema, strict=strict)
    except InvalidSchema as exc:
        raise InvalidRequest(f"{param} is not a valid JSON Schema: {exc}", param=param) from None


def _with_content(response: dict[str, Any], content: str) -> dict[str, Any]:
    choice = dict(response["choices"][0])
    choice["message"] = {**choice["message"], "content": content}
    return {**response, "choices": [choice, *response["choices"][1:]]}
