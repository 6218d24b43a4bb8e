"""Translation between the Anthropic Messages API and the OpenAI Chat Completions shapes.

bastion runs one pipeline, and it speaks OpenAI: every stage (cache, limits, contracts, routing)
sees a chat request and a ``chat.completion``. Anthropic enters in two places, and both are
translations kept here, as pure functions over plain dicts, so they can be tested without HTTP:

- inbound, ``POST /v1/messages`` from an Anthropic SDK: ``messages_request_to_chat`` turns the
  request into a chat request, ``chat_response_to_message`` and ``ChatChunksToMessageEvents``
  turn the pipeline's answer (or stream) back into what the SDK expects;
- outbound, an Anthropic upstream behind the pipeline: ``chat_request_to_messages``,
  ``message_to_chat_response`` and ``MessageEventsToChatChunks`` do the reverse.

The inbound direction is a public API surface, so a request it cannot express faithfully is
rejected with an ``InvalidRequest`` whose ``param`` is the field path, the way Anthropic itself
answers; nothing is silently dropped that would change what the model is asked.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from bastion.domain.errors import (
    InvalidRequest,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

# --------------------------------------------------------------------------- errors

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """The Anthropic error ``type`` for an HTTP status, so the SDK's error body reads as
    Anthropic's own. Statuses Anthropic never sends fall into the nearest family."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_error_body(error_type: str, message: str) -> dict[str, Any]:
    """Anthropic's error envelope: the SDK reads ``error.type`` and ``error.message`` from it."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


# --------------------------------------------------------------------------- shared pieces

_FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _stop_reason(finish_reason: str | None) -> str:
    return _FINISH_TO_STOP.get(finish_reason or "stop", "end_turn")


def _finish_reason(stop_reason: str | None) -> str:
    return _STOP_TO_FINISH.get(stop_reason or "end_turn", "stop")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic requires. Models do emit broken JSON;
    keeping the raw text under ``_raw`` lets the caller see what the model said instead of
    losing the call."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        parsed = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        return {"_raw": str(arguments)}
    return parsed if isinstance(parsed, dict) else {"_raw": str(arguments)}


def _text_of(content: Any) -> str:
    """The text of an OpenAI ``content`` (a string, a list of parts, or null)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content
                       if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _strip_prefix(value: Any, prefix: str) -> str:
    text = str(value or "")
    return text.removeprefix(prefix)


def _usage_to_anthropic(usage: Any) -> dict[str, int]:
    """OpenAI counts cached prompt tokens inside ``prompt_tokens``; Anthropic counts them apart
    from ``input_tokens``, so they are moved, not copied."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt = int(usage.get("prompt_tokens") or 0)
    out = {"input_tokens": prompt - int(cached or 0),
           "output_tokens": int(usage.get("completion_tokens") or 0)}
    if cached is not None:
        out["cache_read_input_tokens"] = int(cached)
    return out


def _usage_to_chat(usage: Any) -> dict[str, Any]:
    """The reverse of ``_usage_to_anthropic``: every input token, cached or not, is a prompt
    token to OpenAI."""
    usage = usage if isinstance(usage, dict) else {}
    read = int(usage.get("cache_read_input_tokens") or 0)
    prompt = (int(usage.get("input_tokens") or 0) + read
              + int(usage.get("cache_creation_input_tokens") or 0))
    completion = int(usage.get("output_tokens") or 0)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if read:
        out["prompt_tokens_details"] = {"cached_tokens": read}
    return out


# --------------------------------------------------------------------------- inbound request


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def messages_request_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic ``POST /v1/messages`` body as an OpenAI chat request, validated first so a
    client gets Anthropic-style errors naming its own field paths, not the chat shape's."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("field required: a non-empty string", "model")
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise _invalid("field required: a positive integer", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("must be a non-empty list", "messages")

    chat: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": []}
    system = _system_text(body.get("system"))
    if system:
        chat["messages"].append({"role": "system", "content": system})
    for i, message in enumerate(messages):
        chat["messages"].extend(_message_to_chat(i, message))
    chat.update(_sampling_to_chat(body))
    chat.update(_tools_to_chat(body))
    return chat


def _system_text(system: Any) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise _invalid("must be a string or a list of text blocks", "system")
    texts = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" \
                or not isinstance(block.get("text"), str):
            raise _invalid("must be a text block", f"system.{j}")
        texts.append(block["text"])
    return "\n".join(texts)


def _sampling_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """Sampling parameters with an OpenAI twin. ``top_k`` has none (OpenAI rejects unknown
    arguments), and ``thinking`` is Anthropic-only; both are left out."""
    out: dict[str, Any] = {}
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise _invalid("must be a number between 0 and 1", name)
        out[name] = value
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _invalid("must be a list of strings", "stop_sequences")
        if stops:
            out["stop"] = stops
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise _invalid("must be a boolean", "stream")
        out["stream"] = stream
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _invalid("must be an object", "metadata")
        user = metadata.get("user_id")
        if user is not None and not isinstance(user, str):
            raise _invalid("must be a string", "metadata.user_id")
        if user:
            out["user"] = user
    return out


def _message_to_chat(i: int, message: Any) -> list[dict[str, Any]]:
    param = f"messages.{i}"
    if not isinstance(message, dict):
        raise _invalid("must be an object with role and content", param)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise _invalid("role must be 'user' or 'assistant' (system goes in the top-level "
                       "'system' field)", f"{param}.role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _invalid("must be a string or a list of content blocks", f"{param}.content")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _invalid("must be a content block with a type", f"{param}.content.{j}")
    if role == "user":
        return _user_blocks_to_chat(f"{param}.content", content)
    return [_assistant_blocks_to_chat(f"{param}.content", content)]


def _user_blocks_to_chat(param: str, blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool results become ``tool`` messages placed first, because OpenAI requires them to
    follow the assistant's tool calls directly; the rest stays one user message."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": _block_text(f"{param}.{j}", block)})
        elif kind == "image":
            parts.append(_image_to_chat(f"{param}.{j}.source", block.get("source")))
        elif kind == "tool_result":
            tool_messages.append(_tool_result_to_chat(f"{param}.{j}", block))
        else:
            raise _invalid(f"unsupported content block type {kind!r} in a user message",
                           f"{param}.{j}.type")
    if not parts and tool_messages:
        return tool_messages
    return [*tool_messages, {"role": "user", "content": _chat_content(parts)}]


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only content as one string: every OpenAI-compatible server accepts that, while
    some local servers reject lists of parts. Images need the list form."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _block_text(param: str, block: dict[str, Any]) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _invalid("text blocks need a string 'text'", f"{param}.text")
    return text


def _image_to_chat(param: str, source: Any) -> dict[str, Any]:
    if not isinstance(source, dict):
        raise _invalid("image blocks need a source object", param)
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _invalid("base64 images need string media_type and data", param)
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise _invalid("url images need a string url", f"{param}.url")
    else:
        raise _invalid("image source type must be 'base64' or 'url'", f"{param}.type")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_to_chat(param: str, block: dict[str, Any]) -> dict[str, Any]:
    """OpenAI tool messages carry text only and have no error flag, so an error result says
    so in its text: the model must still learn that its call failed."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise _invalid("tool_result blocks need a tool_use_id", f"{param}.tool_use_id")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, inner in enumerate(content):
            if not isinstance(inner, dict) or inner.get("type") != "text":
                raise _invalid("tool results can only hold text blocks through this gateway",
                               f"{param}.content.{k}")
            texts.append(_block_text(f"{param}.content.{k}", inner))
        text = "\n".join(texts)
    else:
        raise _invalid("must be a string or a list of text blocks", f"{param}.content")
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _assistant_blocks_to_chat(param: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Thinking blocks are dropped: they are signed for Anthropic's own models and mean
    nothing to another upstream."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block["type"]
        if kind == "text":
            texts.append(_block_text(f"{param}.{j}", block))
        elif kind == "tool_use":
            calls.append(_tool_use_to_chat(f"{param}.{j}", block))
        elif kind not in ("thinking", "redacted_thinking"):
            raise _invalid(f"unsupported content block type {kind!r} in an assistant message",
                           f"{param}.{j}.type")
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_use_to_chat(param: str, block: dict[str, Any]) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id:
        raise _invalid("tool_use blocks need a string id", f"{param}.id")
    if not isinstance(name, str) or not name:
        raise _invalid("tool_use blocks need a string name", f"{param}.name")
    if not isinstance(arguments, dict):
        raise _invalid("must be an object", f"{param}.input")
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": _dumps(arguments)}}


def _tools_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("must be a list of tools", "tools")
        if tools:
            out["tools"] = [_tool_to_chat(f"tools.{i}", t) for i, t in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        out.update(_tool_choice_to_chat(choice))
    return out


def _tool_to_chat(param: str, tool: Any) -> dict[str, Any]:
    """Only client tools translate; Anthropic's server tools (web search, code execution …)
    run inside Anthropic and have no meaning to another upstream."""
    if not isinstance(tool, dict):
        raise _invalid("must be an object", param)
    if tool.get("type") not in (None, "custom"):
        raise _invalid(f"tool type {tool.get('type')!r} is not supported; only custom tools "
                       "with an input_schema are", f"{param}.type")
    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise _invalid("tools need a string name", f"{param}.name")
    if not isinstance(schema, dict):
        raise _invalid("tools need an input_schema object", f"{param}.input_schema")
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice_to_chat(choice: Any) -> dict[str, Any]:
    if not isinstance(choice, dict):
        raise _invalid("must be an object with a type", "tool_choice")
    kind = choice.get("type")
    out: dict[str, Any]
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        out = {"tool_choice": "none"}
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid("tool_choice of type 'tool' needs a name", "tool_choice.name")
        out = {"tool_choice": {"type": "function", "function": {"name": name}}}
    else:
        raise _invalid("type must be auto, any, tool or none", "tool_choice.type")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False
    return out


# --------------------------------------------------------------------------- inbound response


def chat_response_to_message(resp: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``chat.completion`` as an Anthropic ``message``. ``model`` is the name the client asked
    for (the alias), not the upstream's, as the OpenAI routes also answer."""
    choices = resp.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = _text_of(message.get("content")) or str(message.get("refusal") or "")
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use",
                        "id": call.get("id") or _new_tool_use_id(),
                        "name": function.get("name") or "",
                        "input": _tool_input(function.get("arguments"))})
    finish = choice.get("finish_reason")
    if message.get("refusal") and not message.get("content"):
        finish = "content_filter"
    return {
        "id": "msg_" + (_strip_prefix(resp.get("id"), "chatcmpl-") or secrets.token_hex(12)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(finish),
        "stop_sequence": None,
        "usage": _usage_to_anthropic(resp.get("usage")),
    }


def _new_tool_use_id() -> str:
    return "toolu_" + secrets.token_hex(12)


Event = tuple[str, dict[str, Any]]


class ChatChunksToMessageEvents:
    """Turns a stream of ``chat.completion.chunk`` dicts into Anthropic's event sequence:
    ``message_start``, then for each content block ``content_block_start``, deltas and
    ``content_block_stop``, then ``message_delta`` and ``message_stop``.

    OpenAI interleaves text and tool-call deltas freely while Anthropic speaks in numbered,
    non-overlapping blocks, so the converter keeps which block is open and opens a new one
    whenever the kind of delta changes. Usage arrives only in the last OpenAI chunk, so input
    tokens are reported in ``message_delta`` (the SDK takes them from there).
    """

    def __init__(self, model: str, message_id: str) -> None:
        self.model = model
        self.message_id = message_id
        self._started = False
        self._finished = False
        self._next_index = 0
        self._open: int | None = None
        self._open_is_text = False
        self._tool_blocks: dict[int, int] = {}
        self._finish_reason: str | None = None
        self._refused = False
        self._usage: dict[str, Any] | None = None

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        """The events one chunk causes (none for a chunk with nothing to say)."""
        if self._finished:
            return []
        events = self._start()
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                events.extend(self._choice(choice))
        return events

    def finish(self) -> list[Event]:
        """Close the message; called once the chunk stream has ended."""
        if self._finished:
            return []
        events = self._start()
        events.extend(self._close_open())
        self._finished = True
        usage = (_usage_to_anthropic(self._usage) if self._usage is not None
                 else {"output_tokens": 0})
        events.append(("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": "refusal" if self._refused
                      else _stop_reason(self._finish_reason), "stop_sequence": None},
            "usage": usage,
        }))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def _start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        return [("message_start", {"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }})]

    def _choice(self, choice: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        delta = choice.get("delta") or {}
        for text in (delta.get("content"), delta.get("refusal")):
            if isinstance(text, str) and text:
                events.extend(self._text(text))
        # A refusal is reported as such even if the upstream then says it stopped normally.
        self._refused = self._refused or bool(delta.get("refusal"))
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                events.extend(self._tool_call(call))
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
        return events

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open is None or not self._open_is_text:
            events.extend(self._open_block({"type": "text", "text": ""}, is_text=True))
        events.append(("content_block_delta", {
            "type": "content_block_delta", "index": self._open,
            "delta": {"type": "text_delta", "text": text}}))
        return events

    def _tool_call(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        function = call.get("function") or {}
        position = int(call.get("index") or 0)
        if position not in self._tool_blocks:
            events.extend(self._open_block({
                "type": "tool_use", "id": call.get("id") or _new_tool_use_id(),
                "name": function.get("name") or "", "input": {}}, is_text=False))
            self._tool_blocks[position] = self._next_index - 1  # the block just opened
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(("content_block_delta", {
                "type": "content_block_delta", "index": self._tool_blocks[position],
                "delta": {"type": "input_json_delta", "partial_json": arguments}}))
        return events

    def _open_block(self, block: dict[str, Any], *, is_text: bool) -> list[Event]:
        events = self._close_open()
        self._open, self._open_is_text = self._next_index, is_text
        self._next_index += 1
        events.append(("content_block_start", {
            "type": "content_block_start", "index": self._open, "content_block": block}))
        return events

    def _close_open(self) -> list[Event]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]


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
            system.append(_text_of(message.get("content")))
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
            raise _invalid("tool messages need a tool_call_id", f"messages.{i}.tool_call_id")
        return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id,
                                             "content": _text_of(message.get("content"))}]}
    if role == "user":
        return {"role": "user",
                "content": _parts_to_blocks(f"messages.{i}.content", message.get("content"))}
    if role == "assistant":
        return {"role": "assistant", "content": _assistant_to_blocks(i, message)}
    raise _invalid(f"role {role!r} cannot be sent to an Anthropic model; use tools",
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
            raise _invalid(f"content part type {kind!r} cannot be sent to an Anthropic model",
                           f"{param}.{j}.type")
    return blocks


def _image_url_to_block(param: str, image: Any) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise _invalid("image_url needs a url", param)
    if not url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    header, sep, data = url[5:].partition(",")
    media, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not media:
        raise _invalid("data URLs must be base64 with a media type", f"{param}.url")
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}


def _assistant_to_blocks(i: int, message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = _parts_to_blocks(f"messages.{i}.content", message.get("content"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append({"type": "tool_use", "id": call.get("id") or _new_tool_use_id(),
                       "name": function.get("name") or "",
                       "input": _tool_input(function.get("arguments"))})
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
                + _dumps(schema))
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
            raise _invalid("tool_choice must name a function", "tool_choice.function.name")
        return {"type": "tool", "name": name}
    mapped = {"auto": "auto", "required": "any", "none": "none"}.get(choice)
    if mapped is None:
        raise _invalid("must be auto, required, none or a function", "tool_choice")
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
    calls = [{"id": b.get("id") or _new_tool_use_id(), "type": "function",
              "function": {"name": b.get("name") or "", "arguments": _dumps(b.get("input", {}))}}
             for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + (_strip_prefix(msg.get("id"), "msg_") or secrets.token_hex(12)),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": msg.get("model"),
        "choices": [{"index": 0, "message": message,
                     "finish_reason": _finish_reason(msg.get("stop_reason"))}],
        "usage": _usage_to_chat(msg.get("usage")),
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
            self._id = "chatcmpl-" + _strip_prefix(message["id"], "msg_")
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
            "index": position, "id": block.get("id") or _new_tool_use_id(), "type": "function",
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
                       "usage": _usage_to_chat(self._usage)}
        return [self._chunk({}, _finish_reason(self._stop_reason)), usage_chunk]

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
