"""Named tasks: the model suggests a structured answer, deterministic code decides.

A task declares everything that makes its output trustworthy: the input it accepts (a JSON
Schema), the versioned prompt that turns the input into messages, the output schema and the
product rules the answer must satisfy, the model alias that answers, and a deterministic
fallback used when every target fails. All of it is checked at start-up.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from bastion.config.base import Strict
from bastion.domain.rules import RuleSpec


class TaskConfig(Strict):
    description: str = ""
    #: A chat model alias from ``models``.
    model: str
    #: A prompt template reference, ``name@version`` (a bare name means the latest version).
    prompt: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    rules: list[RuleSpec] = Field(default_factory=list)
    #: The deterministic answer when no target produced a valid one: an object of the output
    #: schema's shape whose strings are templates rendered with the task input. None means
    #: the task fails with ``output_contract_failed`` (or the upstream error) instead.
    fallback: dict[str, Any] | None = None
    max_tokens: int = Field(default=512, ge=1, le=32_768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
