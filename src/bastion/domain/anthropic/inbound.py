"""Inbound: an Anthropic SDK calls ``POST /v1/messages``; the pipeline speaks chat completions.

The request becomes a chat request; the answer (or stream) goes back as Messages API objects.
"""

from __future__ import annotations

import secrets
from typing import Any

from bastion.domain.anthropic.shared import (
    dumps,
    invalid,
    new_tool_use_id,
    stop_reason,
    strip_prefix,
    text_of,
    tool_input,
    usage_to_anthropic,
)
from bastion.domain.errors import (
    InvalidRequest,
)

# --------------------------------------------------------------------------- inbound request




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
        raise invalid("field required: a non-empty string", "model")
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise invalid("field required: a positive integer", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("must be a non-empty list", "messages")

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
        raise invalid("must be a string or a list of text blocks", "system")
    texts = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" \
                or not isinstance(block.get("text"), str):
            raise invalid("must be a text block", f"system.{j}")
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
            raise invalid("must be a number between 0 and 1", name)
        out[name] = value
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise invalid("must be a list of strings", "stop_sequences")
        if stops:
            out["stop"] = stops
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise invalid("must be a boolean", "stream")
        out["stream"] = stream
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise invalid("must be an object", "metadata")
        user = metadata.get("user_id")
        if user is not None and not isinstance(user, str):
            raise invalid("must be a string", "metadata.user_id")
        if user:
            out["user"] = user
    return out


def _message_to_chat(i: int, message: Any) -> list[dict[str, Any]]:
    param = f"messages.{i}"
    if not isinstance(message, dict):
        raise invalid("must be an object with role and content", param)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise invalid("role must be 'user' or 'assistant' (system goes in the top-level "
                       "'system' field)", f"{param}.role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise invalid("must be a string or a list of content blocks", f"{param}.content")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise invalid("must be a content block with a type", f"{param}.content.{j}")
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
            raise invalid(f"unsupported content block type {kind!r} in a user message",
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
        raise invalid("text blocks need a string 'text'", f"{param}.text")
    return text


def _image_to_chat(param: str, source: Any) -> dict[str, Any]:
    if not isinstance(source, dict):
        raise invalid("image blocks need a source object", param)
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise invalid("base64 images need string media_type and data", param)
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise invalid("url images need a string url", f"{param}.url")
    else:
        raise invalid("image source type must be 'base64' or 'url'", f"{param}.type")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_to_chat(param: str, block: dict[str, Any]) -> dict[str, Any]:
    """OpenAI tool messages carry text only and have no error flag, so an error result says
    so in its text: the model must still learn that its call failed."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise invalid("tool_result blocks need a tool_use_id", f"{param}.tool_use_id")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, inner in enumerate(content):
            if not isinstance(inner, dict) or inner.get("type") != "text":
                raise invalid("tool results can only hold text blocks through this gateway",
                               f"{param}.content.{k}")
            texts.append(_block_text(f"{param}.content.{k}", inner))
        text = "\n".join(texts)
    else:
        raise invalid("must be a string or a list of text blocks", f"{param}.content")
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
            raise invalid(f"unsupported content block type {kind!r} in an assistant message",
                           f"{param}.{j}.type")
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_use_to_chat(param: str, block: dict[str, Any]) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id:
        raise invalid("tool_use blocks need a string id", f"{param}.id")
    if not isinstance(name, str) or not name:
        raise invalid("tool_use blocks need a string name", f"{param}.name")
    if not isinstance(arguments, dict):
        raise invalid("must be an object", f"{param}.input")
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": dumps(arguments)}}


def _tools_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("must be a list of tools", "tools")
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
        raise invalid("must be an object", param)
    if tool.get("type") not in (None, "custom"):
        raise invalid(f"tool type {tool.get('type')!r} is not supported; only custom tools "
                       "with an input_schema are", f"{param}.type")
    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise invalid("tools need a string name", f"{param}.name")
    if not isinstance(schema, dict):
        raise invalid("tools need an input_schema object", f"{param}.input_schema")
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice_to_chat(choice: Any) -> dict[str, Any]:
    if not isinstance(choice, dict):
        raise invalid("must be an object with a type", "tool_choice")
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
            raise invalid("tool_choice of type 'tool' needs a name", "tool_choice.name")
        out = {"tool_choice": {"type": "function", "function": {"name": name}}}
    else:
        raise invalid("type must be auto, any, tool or none", "tool_choice.type")
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
    text = text_of(message.get("content")) or str(message.get("refusal") or "")
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use",
                        "id": call.get("id") or new_tool_use_id(),
                        "name": function.get("name") or "",
                        "input": tool_input(function.get("arguments"))})
    finish = choice.get("finish_reason")
    if message.get("refusal") and not message.get("content"):
        finish = "content_filter"
    return {
        "id": "msg_" + (strip_prefix(resp.get("id"), "chatcmpl-") or secrets.token_hex(12)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": None,
        "usage": usage_to_anthropic(resp.get("usage")),
    }




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
        usage = (usage_to_anthropic(self._usage) if self._usage is not None
                 else {"output_tokens": 0})
        events.append(("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": "refusal" if self._refused
                      else stop_reason(self._finish_reason), "stop_sequence": None},
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
                "type": "tool_use", "id": call.get("id") or new_tool_use_id(),
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
