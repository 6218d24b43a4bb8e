"""Outbound: an Anthropic upstream behind the pipeline; requests and answers are translated back."""

from __future__ import annotations

import secrets
import time
from typing import Any

from bastion.domain.anthropic.shared import (
    dumps,
    finish_reason,
    invalid,
    new_tool_use_id,
    strip_prefix,
    text_of,
    tool_input,
    usage_to_chat,
)
from bastion.domain.errors import (
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

# --------------------------------------------------------------------------- outbound request


def chat_request_to_messages(body: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat request as an Anthropic Messages request, for an Anthropic upstream.

    Anthropic takes one ``system`` string and strictly alternating turns, so system and
    developer messages are gathered into ``system`` and consecutive same-role turns (a run of
    tool results, say) are merged. Parameters with no Anthropic twin (``n``, ``seed``,
    ``logprobs`` …) are left out, because Anthropic rejects unknown fields.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
            continue
        turn = _chat_message_to_turn(i, message)
        if turn["content"]:
            _append_turn(turns, turn)
    instruction = _response_format_instruction(body.get("response_format"))
    if instruction:
        system.append(instruction)
    out: dict[str, Any] = {
        "model": body.get("model"),
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
        or default_max_tokens,
        "messages": turns,
    }
    if any(system):
        out["system"] = "\n\n".join(s for s in system if s)
    out.update(_sampling_to_messages(body))
    out.update(_tools_to_messages(body))
    return out


def _append_turn(turns: list[dict[str, Any]], turn: dict[str, Any]) -> None:
    if turns and turns[-1]["role"] == turn["role"]:
        turns[-1]["content"].extend(turn["content"])
    else:
        turns.append(turn)


def _chat_message_to_turn(i: int, message: dict[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid("tool messages need a tool_call_id", f"messages.{i}.tool_call_id")
        return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id,
                                             "content": text_of(message.get("content"))}]}
    if role == "user":
        return {"role": "user",
                "content": _parts_to_blocks(f"messages.{i}.content", message.get("content"))}
    if role == "assistant":
        return {"role": "assistant", "content": _assistant_to_blocks(i, message)}
    raise invalid(f"role {role!r} cannot be sent to an Anthropic model; use tools",
                   f"messages.{i}.role")


def _parts_to_blocks(param: str, content: Any) -> list[dict[str, Any]]:
    """Empty text is skipped: Anthropic rejects empty text blocks, and OpenAI clients send
    ``""`` routinely (for example beside tool calls)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url":
            blocks.append(_image_url_to_block(f"{param}.{j}.image_url", part.get("image_url")))
        else:
            raise invalid(f"content part type {kind!r} cannot be sent to an Anthropic model",
                           f"{param}.{j}.type")
    return blocks


def _image_url_to_block(param: str, image: Any) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise invalid("image_url needs a url", param)
    if not url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    header, sep, data = url[5:].partition(",")
    media, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not media:
        raise invalid("data URLs must be base64 with a media type", f"{param}.url")
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}


def _assistant_to_blocks(i: int, message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = _parts_to_blocks(f"messages.{i}.content", message.get("content"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append({"type": "tool_use", "id": call.get("id") or new_tool_use_id(),
                       "name": function.get("name") or "",
                       "input": tool_input(function.get("arguments"))})
    return blocks


def _response_format_instruction(response_format: Any) -> str:
    """Anthropic has no ``response_format``. Dropping it would silently lose the caller's
    contract, so it is restated as a system instruction; the output contract stage still
    validates what comes back."""
    if not isinstance(response_format, dict):
        return ""
    kind = response_format.get("type")
    if kind == "json_object":
        return ("Reply with a single valid JSON object and nothing else: no prose, "
                "no Markdown code fences.")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", {}) if isinstance(spec, dict) else {}
        return ("Reply with a single JSON value that conforms to the JSON Schema below, and "
                "nothing else: no prose, no Markdown code fences.\nJSON Schema:\n"
                + dumps(schema))
    return ""


def _sampling_to_messages(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if body.get("temperature") is not None:
        # OpenAI allows 0..2, Anthropic 0..1; past 1 the caller wanted "most random".
        out["temperature"] = min(float(body["temperature"]), 1.0)
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    return out


def _tools_to_messages(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = body.get("tools") or []
    if tools:
        out["tools"] = [_function_to_tool(t.get("function") or {}) for t in tools]
    choice = _tool_choice_to_messages(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and tools:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice:
        out["tool_choice"] = choice
    return out


def _function_to_tool(function: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        tool["description"] = function["description"]
    return tool


def _tool_choice_to_messages(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not name:
            raise invalid("tool_choice must name a function", "tool_choice.function.name")
        return {"type": "tool", "name": name}
    mapped = {"auto": "auto", "required": "any", "none": "none"}.get(choice)
    if mapped is None:
        raise invalid("must be auto, required, none or a function", "tool_choice")
    return {"type": mapped}


# --------------------------------------------------------------------------- outbound response


def message_to_chat_response(msg: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic ``message`` as a ``chat.completion``, so the pipeline (contracts, cache,
    usage accounting) treats an Anthropic upstream like any other."""
    content = msg.get("content")
    if msg.get("type") not in (None, "message") or not isinstance(content, list):
        raise UpstreamMalformed("anthropic upstream returned something that is not a message")
    text = "".join(str(b.get("text") or "") for b in content
                   if isinstance(b, dict) and b.get("type") == "text")
    calls = [{"id": b.get("id") or new_tool_use_id(), "type": "function",
              "function": {"name": b.get("name") or "", "arguments": dumps(b.get("input", {}))}}
             for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + (strip_prefix(msg.get("id"), "msg_") or secrets.token_hex(12)),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": msg.get("model"),
        "choices": [{"index": 0, "message": message,
                     "finish_reason": finish_reason(msg.get("stop_reason"))}],
        "usage": usage_to_chat(msg.get("usage")),
    }


class MessageEventsToChatChunks:
    """Turns an Anthropic event stream into ``chat.completion.chunk`` dicts: a role chunk
    first, then content and tool-call deltas, a chunk carrying ``finish_reason``, and a final
    usage chunk (``choices: []``) as OpenAI sends with ``include_usage``.

    ``done`` becomes true at ``message_stop``: a stream that ends before it was cut short,
    and the adapter must say so rather than pass on a truncated answer as complete.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False
        self._id = "chatcmpl-" + secrets.token_hex(12)
        self._created = int(time.time())
        self._tool_index: dict[int, int] = {}
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None

    def feed(self, event: str | None, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks one event causes. Unknown events are ignored, as Anthropic asks of
        clients (new event types may be added)."""
        if self.done:
            return []
        kind = event or data.get("type")
        handler = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
            "error": self._error,
        }.get(str(kind))
        return handler(data) if handler else []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def _message_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        message = data.get("message") or {}
        if message.get("id"):
            self._id = "chatcmpl-" + strip_prefix(message["id"], "msg_")
        self._merge_usage(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block") or {}
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []
        position = len(self._tool_index)
        self._tool_index[_block_index(data)] = position
        return [self._chunk({"tool_calls": [{
            "index": position, "id": block.get("id") or new_tool_use_id(), "type": "function",
            "function": {"name": block.get("name") or "", "arguments": ""}}]})]

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        position = self._tool_index.get(_block_index(data))
        if delta.get("type") == "input_json_delta" and position is not None \
                and delta.get("partial_json"):
            return [self._chunk({"tool_calls": [{
                "index": position, "function": {"arguments": delta["partial_json"]}}]})]
        return []

    def _message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self._stop_reason = (data.get("delta") or {}).get("stop_reason") or self._stop_reason
        self._merge_usage(data.get("usage"))
        return []

    def _message_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.done = True
        usage_chunk = {"id": self._id, "object": "chat.completion.chunk",
                       "created": self._created, "model": self.model, "choices": [],
                       "usage": usage_to_chat(self._usage)}
        return [self._chunk({}, finish_reason(self._stop_reason)), usage_chunk]

    def _merge_usage(self, usage: Any) -> None:
        """Anthropic's usage counts are running totals: a later value replaces an earlier one."""
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if v is not None})

    @staticmethod
    def _error(data: dict[str, Any]) -> list[dict[str, Any]]:
        """An ``error`` event is how Anthropic reports a failure after the 200 was sent
        (overload is the usual one); it is classified like the equivalent HTTP status."""
        error = data.get("error") if isinstance(data.get("error"), dict) else {}
        kind, text = str(error.get("type") or "api_error"), str(error.get("message") or "")
        message = f"stream: anthropic upstream error {kind}: {text[:300]}"
        if kind == "rate_limit_error":
            raise UpstreamRateLimited(message)
        raise UpstreamUnavailable(message)


def _block_index(data: dict[str, Any]) -> int:
    index = data.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool):
        raise UpstreamMalformed("stream: anthropic upstream sent a content block without an "
                                "integer index")
    return index
