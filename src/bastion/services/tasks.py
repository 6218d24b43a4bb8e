"""Named tasks: the model suggests, deterministic code decides.

``POST /v1/tasks/{name}`` (or ``gateway.task(name, input)``) validates the input against the
task's schema, renders its versioned prompt, asks the task's model alias for JSON under the
output contract (schema, then product rules; one repair, then the fallback chain), and returns
the validated object. When no target produced a valid answer, the task's deterministic fallback
(a template answer rendered from the input, itself checked against the same contract) is
returned instead, flagged as such, so the caller always gets a usable, valid decision or a
classified error, never a half-valid one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment
from jsonschema import Draft202012Validator

from bastion.config import BastionConfig, ConfigError, TaskConfig
from bastion.domain.chat import ChatRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import (
    BastionError,
    DeadlineExceeded,
    DependencyError,
    InternalError,
    InvalidRequest,
    NotFound,
)
from bastion.pipeline.contract import OutputContract, RuleContext
from bastion.pipeline.contract.rules import check_rules, unknown_custom_rules
from bastion.pipeline.contract.schema import InvalidSchema, compile_schema, schema_violations
from bastion.services.chat import ChatService
from bastion.services.prompts import PromptLibrary, PromptTemplate, check_variables

_FALLBACK_ENV = ImmutableSandboxedEnvironment(autoescape=False)


@dataclass(slots=True)
class TaskResult:
    task: str
    output: dict[str, Any]
    prompt: str
    fallback_used: bool
    #: Why the fallback was used (the error code of the failure it replaced), else None.
    fallback_reason: str | None
    ctx: RequestContext

    def body(self) -> dict[str, Any]:
        return {
            "id": "task_" + secrets.token_hex(12),
            "object": "task.result",
            "task": self.task,
            "output": self.output,
            "prompt": self.prompt,
            "fallback_used": self.fallback_used,
            "fallback_reason": self.fallback_reason,
            "target": self.ctx.target,
            "contract": self.ctx.contract_outcome(),
            "request_id": self.ctx.request_id,
        }


@dataclass(slots=True)
class CompiledTask:
    name: str
    config: TaskConfig
    template: PromptTemplate
    input_validator: Draft202012Validator
    output_validator: Draft202012Validator
    fallback: Any  # the fallback object with its strings compiled to templates, or None

    def request(self, messages: list[dict[str, str]]) -> ChatRequest:
        return ChatRequest.model_validate({
            "model": self.config.model,
            "messages": messages,
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": self.name, "strict": True, "schema": self.config.output_schema}},
        })


def _compile_fallback(value: Any) -> Any:
    if isinstance(value, str):
        return _FALLBACK_ENV.from_string(value)
    if isinstance(value, dict):
        return {k: _compile_fallback(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compile_fallback(v) for v in value]
    return value


def _render_fallback(value: Any, variables: dict[str, Any]) -> Any:
    if hasattr(value, "render"):
        return value.render(variables)
    if isinstance(value, dict):
        return {k: _render_fallback(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_fallback(v, variables) for v in value]
    return value


def compile_tasks(config: BastionConfig, prompts: PromptLibrary,
                  source: str) -> dict[str, CompiledTask]:
    """Every task, checked at start-up: schemas compile, the prompt exists and uses only
    variables the input schema declares, custom rules are registered, the fallback parses."""
    problems: list[tuple[str, str]] = []
    compiled: dict[str, CompiledTask] = {}
    for name, task in config.tasks.items():
        where = f"tasks.{name}"
        try:
            input_validator = compile_schema(task.input_schema)
            output_validator = compile_schema(task.output_schema, strict=True)
        except InvalidSchema as exc:
            problems.append((f"{where}", f"invalid JSON Schema: {exc}"))
            continue
        try:
            template = prompts.get(task.prompt)
        except LookupError as exc:
            problems.append((f"{where}.prompt", str(exc)))
            continue
        declared = (task.input_schema.get("properties") or {}).keys()
        missing = check_variables(template, declared)
        if missing:
            problems.append((f"{where}.prompt", (f"{template.ref} uses {', '.join(missing)}, "
                                                 "which the input schema does not declare")))
        for rule in unknown_custom_rules(task.rules):
            problems.append((f"{where}.rules", f"custom rule {rule!r} is not registered"))
        try:
            fallback = _compile_fallback(task.fallback) if task.fallback is not None else None
        except Exception as exc:  # noqa: BLE001 - any template syntax error
            problems.append((f"{where}.fallback", f"not a valid template: {exc}"))
            continue
        compiled[name] = CompiledTask(name, task, template, input_validator, output_validator,
                                      fallback)
    if problems:
        raise ConfigError(source, problems)
    return compiled


class TaskService:
    def __init__(self, tasks: dict[str, CompiledTask], chat: ChatService) -> None:
        self.tasks = tasks
        self.chat = chat

    def names(self) -> list[str]:
        return sorted(self.tasks)

    def get(self, name: str) -> CompiledTask:
        task = self.tasks.get(name)
        if task is None:
            raise NotFound(f"no task named {name!r} (known: {', '.join(self.names()) or 'none'})",
                           param="name")
        return task

    async def run(self, name: str, task_input: Any, ctx: RequestContext) -> TaskResult:
        task = self.get(name)
        if not isinstance(task_input, dict):
            raise InvalidRequest("input must be a JSON object", param="input")
        errors = schema_violations(task.input_validator, task_input)
        if errors:
            first = errors[0]
            raise InvalidRequest(f"input{first.path[1:]}: {first.message}",
                                 param="input" + first.path[1:])
        messages = task.template.render(task_input)
        ctx.prompt = task.template.ref
        request = task.request(messages)
        rule_context = RuleContext(values=task_input)
        contract = OutputContract.for_request(request, rules=task.config.rules,
                                              rule_context=rule_context)
        try:
            result = await self.chat.complete(request, ctx, contract=contract)
        except (DependencyError, DeadlineExceeded) as exc:
            if task.fallback is None:
                raise
            return TaskResult(name, self._fallback(task, task_input, rule_context),
                              task.template.ref, True, exc.code, ctx)
        return TaskResult(name, result.value, task.template.ref, False, None, ctx)

    def _fallback(self, task: CompiledTask, task_input: dict[str, Any],
                  rule_context: RuleContext) -> dict[str, Any]:
        try:
            output = _render_fallback(task.fallback, task_input)
        except BastionError:
            raise
        except Exception as exc:
            raise InternalError(f"task {task.name}: the fallback could not be rendered") from exc
        problems = schema_violations(task.output_validator, output) or check_rules(
            task.config.rules, output, rule_context)
        if problems:
            raise InternalError(f"task {task.name}: the configured fallback breaks the task's "
                                f"own contract ({problems[0]})")
        return output
