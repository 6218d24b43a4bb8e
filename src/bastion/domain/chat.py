"""The OpenAI chat and embeddings request shapes, parsed strictly where it matters.

Fields bastion acts on are typed and validated; the rest of the OpenAI surface (logprobs,
``user``, provider extensions …) is kept as extra fields and passed through untouched, so a new
SDK parameter does not break existing clients.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    # A string, a list of content parts, or null (assistant messages that only call tools).
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``. Unknown fields pass through to the upstream."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("tools")
    @classmethod
    def _tools_are_functions(cls, tools: list[dict[str, Any]] | None) -> Any:
        for i, tool in enumerate(tools or ()):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
                raise ValueError(f"tools[{i}] must be {{type: function, function: {{name, ...}}}}")
        return tools

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, rf: dict[str, Any] | None) -> Any:
        if rf is not None and rf.get("type") not in ("text", "json_object", "json_schema"):
            raise ValueError("response_format.type must be text, json_object or json_schema")
        return rf

    @cached_property
    def wire(self) -> dict[str, Any]:
        """The request as sent (unset and null fields left out), dumped once: the cache key
        and the upstream body both start from it (a dump is ~2.5 µs, a third of parsing).
        Shared: read it, copy it before changing anything (``upstream_body`` does). A request
        is never modified after parsing; a changed request is a new one (``model_validate``)."""
        return self.model_dump(exclude_none=True, exclude_unset=True)

    def upstream_body(self, model: str) -> dict[str, Any]:
        """The body to send to an OpenAI-compatible upstream, with the target's model name: a
        fresh top-level dict the caller may change (nested values are shared with ``wire``)."""
        body = dict(self.wire)
        body["model"] = model
        return body

    @property
    def output_token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        if isinstance(value, list) and len(value) > 2048:
            raise ValueError("input may hold at most 2048 items")
        return value

    def upstream_body(self, model: str) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True, exclude_unset=True)
        body["model"] = model
        return body

    def texts(self) -> list[str]:
        """The inputs as strings (token-id inputs are rendered, for providers that need text)."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], str):
            return list(value)  # type: ignore[arg-type]
        if value and isinstance(value[0], int):
            return [" ".join(map(str, value))]
        return [" ".join(map(str, item)) for item in value]  # type: ignore[union-attr]


def completion_to_chunks(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished ``chat.completion`` replayed as ``chat.completion.chunk`` dicts: a role chunk,
    the content (or tool calls) in one delta, the finish chunk, and the usage chunk.

    Used when a stream must be validated whole before any byte may reach the client."""
    base = {"id": response.get("id", ""), "object": "chat.completion.chunk",
            "created": response.get("created", 0), "model": response.get("model", "")}
    chunks: list[dict[str, Any]] = []
    for choice in response.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
        chunks.append({**base, "choices": [{"index": index, "delta": delta,
                                            "finish_reason": None}]})
        body: dict[str, Any] = {}
        if message.get("content"):
            body["content"] = message["content"]
        if message.get("tool_calls"):
            body["tool_calls"] = [{**call, "index": i}
                                  for i, call in enumerate(message["tool_calls"])]
        if body:
            chunks.append({**base, "choices": [{"index": index, "delta": body,
                                                "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": index, "delta": {},
                                            "finish_reason": choice.get("finish_reason")}]})
    if response.get("usage"):
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return chunks
