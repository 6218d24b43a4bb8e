"""The Anthropic ⇄ OpenAI translations, as specifications of what each side must see.

Pure functions are checked directly; the streaming converters are checked the only way that
really counts, by the official SDKs' own accumulators (the ``anthropic`` SDK over real HTTP,
the ``openai`` SDK's ``ChatCompletionStreamState``).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import orjson
import pytest
from aiohttp import web
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bastion.domain.anthropic import (
    ChatChunksToMessageEvents,
    MessageEventsToChatChunks,
    anthropic_error_body,
    anthropic_error_type,
    chat_request_to_messages,
    chat_response_to_message,
    message_to_chat_response,
    messages_request_to_chat,
)
from bastion.domain.chat import ChatRequest
from bastion.domain.errors import (
    InvalidRequest,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

WEATHER_TOOL = {"name": "get_weather", "description": "Current weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}


def request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "claude-x", "max_tokens": 64,
                            "messages": [{"role": "user", "content": "hello"}]}
    body.update(overrides)
    return body


def chat_completion(content: str | None = "Hi there", *, finish: str = "stop",
                    tool_calls: list[dict[str, Any]] | None = None,
                    usage: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-abc123", "object": "chat.completion", "created": 1, "model": "up",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# =========================================================================== inbound request


def test_a_plain_request_keeps_model_limits_and_puts_system_first() -> None:
    chat = messages_request_to_chat(request(system="Be brief."))
    assert chat["model"] == "claude-x" and chat["max_tokens"] == 64
    assert chat["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello"}]
    # the HTTP layer parses the result as a chat request: it must be valid
    ChatRequest.model_validate(chat)


def test_system_as_text_blocks_is_one_system_message() -> None:
    blocks = [{"type": "text", "text": "Rule one."},
              {"type": "text", "text": "Rule two.", "cache_control": {"type": "ephemeral"}}]
    chat = messages_request_to_chat(request(system=blocks))
    assert chat["messages"][0] == {"role": "system",
                                   "content": "\n".join(b["text"] for b in blocks)}


def test_sampling_stop_stream_and_user_carry_over() -> None:
    chat = messages_request_to_chat(request(
        temperature=0.3, top_p=0.9, stop_sequences=["END", "STOP"], stream=True,
        metadata={"user_id": "u-42"}))
    assert (chat["temperature"], chat["top_p"]) == (0.3, 0.9)
    assert chat["stop"] == ["END", "STOP"]
    assert chat["stream"] is True
    assert chat["user"] == "u-42"


def test_fields_without_an_openai_twin_are_not_passed_on() -> None:
    chat = messages_request_to_chat(request(top_k=5, thinking={"type": "disabled"}))
    assert "top_k" not in chat and "thinking" not in chat


def test_tools_become_functions_with_the_input_schema_as_parameters() -> None:
    chat = messages_request_to_chat(request(tools=[WEATHER_TOOL]))
    assert chat["tools"] == [{"type": "function", "function": {
        "name": WEATHER_TOOL["name"], "description": WEATHER_TOOL["description"],
        "parameters": WEATHER_TOOL["input_schema"]}}]
    ChatRequest.model_validate(chat)


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"},
     {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice_maps_to_its_openai_meaning(choice: dict[str, Any], expected: Any) -> None:
    chat = messages_request_to_chat(request(tools=[WEATHER_TOOL], tool_choice=choice))
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat


def test_disabling_parallel_tool_use_disables_parallel_tool_calls() -> None:
    chat = messages_request_to_chat(request(
        tools=[WEATHER_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True}))
    assert chat["parallel_tool_calls"] is False


def test_images_become_image_url_parts_beside_the_text() -> None:
    data = "iVBORw0KGgo="
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What is in these?"},
    ]
    chat = messages_request_to_chat(request(messages=[{"role": "user", "content": content}]))
    assert chat["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        {"type": "image_url", "image_url": {"url": content[1]["source"]["url"]}},
        {"type": "text", "text": content[2]["text"]},
    ]
    ChatRequest.model_validate(chat)


def test_text_only_blocks_become_one_string() -> None:
    content = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    chat = messages_request_to_chat(request(messages=[{"role": "user", "content": content}]))
    assert chat["messages"][0]["content"] == "first\nsecond"


TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
    ]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_2",
         "content": [{"type": "text", "text": "21C"}, {"type": "text", "text": "cloudy"}]},
        {"type": "text", "text": "Which is warmer?"},
    ]},
]


def test_tool_use_becomes_assistant_tool_calls_with_json_string_arguments() -> None:
    chat = messages_request_to_chat(request(messages=TOOL_CONVERSATION, tools=[WEATHER_TOOL]))
    assistant = chat["messages"][1]
    blocks = TOOL_CONVERSATION[1]["content"]
    assert assistant["role"] == "assistant" and assistant["content"] == blocks[0]["text"]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in assistant["tool_calls"]] == [
        (b["id"], b["name"], b["input"]) for b in blocks[1:]]


def test_tool_results_become_tool_messages_before_the_remaining_user_text() -> None:
    chat = messages_request_to_chat(request(messages=TOOL_CONVERSATION, tools=[WEATHER_TOOL]))
    results = TOOL_CONVERSATION[2]["content"]
    assert chat["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": results[0]["content"]},
        {"role": "tool", "tool_call_id": "toolu_2",
         "content": "\n".join(b["text"] for b in results[1]["content"])},
        {"role": "user", "content": results[2]["text"]},
    ]
    ChatRequest.model_validate(chat)


def test_a_failed_tool_result_says_so_in_its_text() -> None:
    messages = [*TOOL_CONVERSATION[:2], {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such city",
         "is_error": True}]}]
    chat = messages_request_to_chat(request(messages=messages))
    tool = chat["messages"][-1]
    assert tool["role"] == "tool" and tool["content"].startswith("Error")
    assert "no such city" in tool["content"]


def test_an_assistant_turn_of_only_tool_use_has_null_content() -> None:
    messages = [TOOL_CONVERSATION[0],
                {"role": "assistant", "content": [TOOL_CONVERSATION[1]["content"][1]]}]
    chat = messages_request_to_chat(request(messages=messages))
    assert chat["messages"][1]["content"] is None
    assert len(chat["messages"][1]["tool_calls"]) == 1


def test_thinking_blocks_are_not_sent_to_other_models() -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "secret", "signature": "sig"},
        {"type": "text", "text": "answer"}]}, {"role": "user", "content": "and?"}]
    chat = messages_request_to_chat(request(messages=messages))
    assert chat["messages"][1] == {"role": "assistant", "content": "answer"}


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.pop(key)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return apply


@pytest.mark.parametrize(("mutate", "param"), [
    (_without("model"), "model"),
    (_set("model", 7), "model"),
    (_without("max_tokens"), "max_tokens"),
    (_set("max_tokens", 0), "max_tokens"),
    (_set("max_tokens", True), "max_tokens"),
    (_set("max_tokens", "64"), "max_tokens"),
    (_set("messages", []), "messages"),
    (_set("messages", "hello"), "messages"),
    (_set("messages.0", "hello"), "messages.0"),
    (_set("messages.0.role", "system"), "messages.0.role"),
    (_set("messages.0.content", 5), "messages.0.content"),
    (_set("messages.0.content", [{"text": "no type"}]), "messages.0.content.0"),
    (_set("messages.0.content", [{"type": "text"}]), "messages.0.content.0.text"),
    (_set("messages.0.content", [{"type": "document", "source": {}}]),
     "messages.0.content.0.type"),
    (_set("messages.0.content", [{"type": "image", "source": {"type": "file"}}]),
     "messages.0.content.0.source.type"),
    (_set("messages.0.content", [{"type": "tool_result", "content": "x"}]),
     "messages.0.content.0.tool_use_id"),
    (_set("messages.0.content", [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "image", "source": {}}]}]), "messages.0.content.0.content.0"),
    (_set("system", 5), "system"),
    (_set("system", [{"type": "image"}]), "system.0"),
    (_set("temperature", 1.5), "temperature"),
    (_set("top_p", "high"), "top_p"),
    (_set("stop_sequences", "END"), "stop_sequences"),
    (_set("stream", "yes"), "stream"),
    (_set("metadata", {"user_id": 5}), "metadata.user_id"),
    (_set("tools", [{"name": "f"}]), "tools.0.input_schema"),
    (_set("tools", [{"input_schema": {}}]), "tools.0.name"),
    (_set("tools", [{"type": "web_search_20250305", "name": "web_search"}]), "tools.0.type"),
    (_set("tool_choice", {"type": "sometimes"}), "tool_choice.type"),
    (_set("tool_choice", {"type": "tool"}), "tool_choice.name"),
])
def test_invalid_requests_name_the_field_path(mutate: Callable[[dict[str, Any]], None],
                                              param: str) -> None:
    body = request()
    mutate(body)
    with pytest.raises(InvalidRequest) as info:
        messages_request_to_chat(body)
    assert info.value.param == param
    assert info.value.status == 400
    assert param in info.value.message


def test_an_assistant_image_is_rejected_naming_its_block() -> None:
    body = request(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://x"}}]}])
    with pytest.raises(InvalidRequest) as info:
        messages_request_to_chat(body)
    assert info.value.param == "messages.1.content.0.type"


def test_a_body_that_is_not_an_object_is_invalid() -> None:
    with pytest.raises(InvalidRequest):
        messages_request_to_chat([])  # type: ignore[arg-type]


# =========================================================================== inbound response


def test_a_completion_becomes_an_anthropic_message() -> None:
    resp = chat_completion("Hi there")
    message = chat_response_to_message(resp, "alias")
    assert message["id"] == "msg_" + resp["id"].removeprefix("chatcmpl-")
    assert (message["type"], message["role"], message["model"]) == ("message", "assistant",
                                                                      "alias")
    assert message["content"] == [{"type": "text", "text": resp["choices"][0]["message"]["content"]}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": resp["usage"]["prompt_tokens"],
                                "output_tokens": resp["usage"]["completion_tokens"]}
    # the SDK's own model accepts it
    parsed = anthropic.types.Message.model_validate(message)
    assert parsed.content[0].text == "Hi there"


@pytest.mark.parametrize(("finish", "stop"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("content_filter", "refusal"), (None, "end_turn"),
])
def test_finish_reasons_map_to_stop_reasons(finish: str | None, stop: str) -> None:
    resp = chat_completion()
    resp["choices"][0]["finish_reason"] = finish
    assert chat_response_to_message(resp, "m")["stop_reason"] == stop


def test_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    calls = [call("call_1", "get_weather", '{"city": "Paris"}'),
             call("call_2", "get_weather", '{"city": "Ro'),
             call("call_3", "now", "")]
    message = chat_response_to_message(chat_completion(None, finish="tool_calls",
                                                       tool_calls=calls), "m")
    assert message["stop_reason"] == "tool_use"
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather",
         "input": json.loads(calls[0]["function"]["arguments"])},
        {"type": "tool_use", "id": "call_2", "name": "get_weather",
         "input": {"_raw": calls[1]["function"]["arguments"]}},
        {"type": "tool_use", "id": "call_3", "name": "now", "input": {}},
    ]
    anthropic.types.Message.model_validate(message)


def test_cached_prompt_tokens_are_reported_as_cache_reads() -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
             "prompt_tokens_details": {"cached_tokens": 60}}
    message = chat_response_to_message(chat_completion(usage=usage), "m")
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert message["usage"] == {"input_tokens": usage["prompt_tokens"] - cached,
                                "output_tokens": usage["completion_tokens"],
                                "cache_read_input_tokens": cached}


def test_a_refusal_is_text_with_stop_reason_refusal() -> None:
    resp = chat_completion(None)
    resp["choices"][0]["message"]["refusal"] = "I can't help with that."
    message = chat_response_to_message(resp, "m")
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert message["stop_reason"] == "refusal"


# =========================================================================== streaming out


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, *,
          usage: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
                            "model": "up", "choices": []}
    if delta is not None or finish is not None:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    if usage is not None:
        body["usage"] = usage
    return body


USAGE = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
TEXT_PIECES = ["Hel", "lo, ", "wor", "ld"]


def text_chunks(pieces: list[str] = TEXT_PIECES) -> list[dict[str, Any]]:
    return ([chunk({"role": "assistant", "content": ""})]
            + [chunk({"content": p}) for p in pieces]
            + [chunk({}, "stop"), chunk(usage=USAGE)])


def tool_chunks() -> list[dict[str, Any]]:
    """Text, then two tool calls whose arguments arrive in pieces, as OpenAI streams them."""
    return [
        chunk({"role": "assistant", "content": "Checking."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "get_weather",
                                            "arguments": '{"city": "Rome"}'}}]}),
        chunk({}, "tool_calls"),
        chunk(usage=USAGE),
    ]


def convert(chunks: list[dict[str, Any]], model: str = "alias",
            message_id: str = "msg_1") -> list[tuple[str, dict[str, Any]]]:
    converter = ChatChunksToMessageEvents(model, message_id)
    events = [event for c in chunks for event in converter.feed(c)]
    return events + converter.finish()


def test_a_text_stream_is_one_text_block_between_start_and_stop() -> None:
    events = convert(text_chunks())
    names = [name for name, _ in events]
    assert names == (["message_start", "content_block_start"]
                     + ["content_block_delta"] * len(TEXT_PIECES)
                     + ["content_block_stop", "message_delta", "message_stop"])
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert (start["id"], start["model"], start["role"]) == ("msg_1", "alias", "assistant")
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") \
        == "".join(TEXT_PIECES)
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == USAGE["completion_tokens"]
    assert delta["usage"]["input_tokens"] == USAGE["prompt_tokens"]


def test_tool_call_deltas_become_tool_use_blocks_with_input_json_deltas() -> None:
    events = convert(tool_chunks())
    starts = [d for n, d in events if n == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [
        (0, "text"), (1, "tool_use"), (2, "tool_use")]
    assert [s["content_block"].get("id") for s in starts[1:]] == ["call_a", "call_b"]
    for index in (1, 2):
        partial = "".join(d["delta"]["partial_json"] for n, d in events
                          if n == "content_block_delta" and d["index"] == index)
        assert json.loads(partial)["city"] == ("Paris" if index == 1 else "Rome")
    # every block is stopped, once, before the message ends
    stops = [d["index"] for n, d in events if n == "content_block_stop"]
    assert stops == [0, 1, 2]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_finish_is_idempotent_and_feed_after_it_is_silent() -> None:
    converter = ChatChunksToMessageEvents("m", "msg_x")
    converter.feed(text_chunks()[1])
    assert [n for n, _ in converter.finish()][-1] == "message_stop"
    assert converter.finish() == []
    assert converter.feed(text_chunks()[1]) == []


def test_an_empty_stream_still_makes_a_complete_message() -> None:
    events = ChatChunksToMessageEvents("m", "msg_x").finish()
    assert [n for n, _ in events] == ["message_start", "message_delta", "message_stop"]


def test_a_streamed_refusal_ends_with_stop_reason_refusal() -> None:
    events = convert([chunk({"refusal": "No."}), chunk({}, "stop")])
    assert events[-2][1]["delta"]["stop_reason"] == "refusal"


# --------------------------------------------------------------------- the official SDK


@asynccontextmanager
async def serve_events(events: list[tuple[str, dict[str, Any]]]) -> AsyncIterator[str]:
    """A one-route Anthropic look-alike on loopback that streams the given events."""
    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert body["stream"] is True
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for name, data in events:
            await resp.write(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data)
                             + b"\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def sdk_final_message(base_url: str) -> tuple[str, anthropic.types.Message]:
    client = anthropic.Anthropic(base_url=base_url, api_key="x", max_retries=0)
    with client.messages.stream(model="alias", max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        return text, stream.get_final_message()


async def test_the_anthropic_sdk_accumulates_a_converted_text_stream() -> None:
    chunks = text_chunks()
    async with serve_events(convert(chunks, message_id="msg_sdk")) as url:
        text, final = await asyncio.to_thread(sdk_final_message, url)
    expected = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks if c["choices"])
    assert text == expected
    assert final.id == "msg_sdk" and final.model == "alias"
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == expected
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == USAGE["completion_tokens"]
    assert final.usage.input_tokens == USAGE["prompt_tokens"]


async def test_the_anthropic_sdk_accumulates_converted_tool_calls() -> None:
    chunks = tool_chunks()
    async with serve_events(convert(chunks)) as url:
        _, final = await asyncio.to_thread(sdk_final_message, url)
    expected_calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for tc in (c["choices"][0]["delta"].get("tool_calls") or []) if c["choices"] else []:
            entry = expected_calls.setdefault(tc["index"], {"id": "", "args": ""})
            entry["id"] = tc.get("id") or entry["id"]
            entry["args"] += tc["function"].get("arguments") or ""
    assert final.content[0].type == "text" and final.content[0].text == "Checking."
    tools = [b for b in final.content if b.type == "tool_use"]
    assert [(b.id, b.input) for b in tools] == [
        (e["id"], json.loads(e["args"])) for _, e in sorted(expected_calls.items())]
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == USAGE["completion_tokens"]


# =========================================================================== errors


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "request_too_large"), (422, "invalid_request_error"),
    (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"),
    (503, "overloaded_error"), (504, "timeout_error"), (529, "overloaded_error"),
])
def test_statuses_map_to_anthropic_error_types(status: int, kind: str) -> None:
    assert anthropic_error_type(status) == kind


def test_the_error_body_is_the_anthropic_envelope() -> None:
    body = anthropic_error_body("rate_limit_error", "slow down")
    assert body == {"type": "error", "error": {"type": "rate_limit_error",
                                               "message": "slow down"}}


# =========================================================================== outbound request


def chat_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "claude-up", "messages": [
        {"role": "user", "content": "hello"}]}
    body.update(overrides)
    return ChatRequest.model_validate(body).upstream_body(body["model"])


def test_system_and_developer_messages_are_joined_into_system() -> None:
    body = chat_body(messages=[{"role": "system", "content": "A."},
                               {"role": "user", "content": "q"},
                               {"role": "developer", "content": [{"type": "text", "text": "B."}]}])
    out = chat_request_to_messages(body, 100)
    assert out["system"] == "A.\n\nB."
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "q"}]}]


def test_max_tokens_prefers_the_caller_then_the_default() -> None:
    assert chat_request_to_messages(chat_body(), 321)["max_tokens"] == 321
    assert chat_request_to_messages(chat_body(max_tokens=50), 321)["max_tokens"] == 50
    assert chat_request_to_messages(
        chat_body(max_tokens=50, max_completion_tokens=70), 321)["max_tokens"] == 70


def test_consecutive_same_role_messages_are_merged() -> None:
    body = chat_body(messages=[{"role": "user", "content": "one"},
                               {"role": "user", "content": "two"},
                               {"role": "assistant", "content": "three"}])
    out = chat_request_to_messages(body, 10)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant"]
    assert [b["text"] for b in out["messages"][0]["content"]] == ["one", "two"]


def test_tool_calls_and_tool_results_become_tool_use_and_tool_result_blocks() -> None:
    calls = [call("call_1", "get_weather", '{"city": "Paris"}'),
             call("call_2", "get_weather", '{"city": "Rome"}')]
    body = chat_body(messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
    ])
    out = chat_request_to_messages(body, 10)
    assistant, results = out["messages"][1], out["messages"][2]
    # no empty text block: Anthropic rejects those
    assert assistant == {"role": "assistant", "content": [
        {"type": "tool_use", "id": c["id"], "name": c["function"]["name"],
         "input": json.loads(c["function"]["arguments"])} for c in calls]}
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "21C"}]}


def test_image_parts_become_image_blocks() -> None:
    data = "R0lGODlhAQABAAAAACw="
    body = chat_body(messages=[{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{data}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])
    blocks = chat_request_to_messages(body, 10)["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64",
                                                     "media_type": "image/gif", "data": data}}
    assert blocks[2] == {"type": "image", "source": {"type": "url",
                                                     "url": "https://example.com/a.png"}}


@pytest.mark.parametrize(("content", "param"), [
    ([{"type": "input_audio", "input_audio": {}}], "messages.0.content.0.type"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}],
     "messages.0.content.0.image_url.url"),
])
def test_parts_anthropic_cannot_take_are_refused_by_path(content: list[dict[str, Any]],
                                                         param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_request_to_messages(chat_body(messages=[{"role": "user", "content": content}]), 10)
    assert info.value.param == param


def test_sampling_stop_stream_user_and_unknown_fields() -> None:
    out = chat_request_to_messages(chat_body(temperature=1.7, top_p=0.5, stop="END",
                                             stream=True, user="u-1", seed=3, n=1,
                                             logprobs=False), 10)
    assert out["temperature"] == 1.0  # OpenAI's 0..2 clipped to Anthropic's 0..1
    assert out["top_p"] == 0.5
    assert out["stop_sequences"] == ["END"]
    assert out["stream"] is True
    assert out["metadata"] == {"user_id": "u-1"}
    assert not {"seed", "n", "logprobs", "stop", "user"} & out.keys()


def test_functions_become_tools_with_input_schema() -> None:
    fn = {"name": "get_weather", "description": "weather",
          "parameters": WEATHER_TOOL["input_schema"]}
    out = chat_request_to_messages(chat_body(tools=[{"type": "function", "function": fn}]), 10)
    assert out["tools"] == [{"name": fn["name"], "description": fn["description"],
                             "input_schema": fn["parameters"]}]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"}),
])
def test_tool_choice_maps_to_the_anthropic_shape(choice: Any, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    out = chat_request_to_messages(chat_body(tools=tools, tool_choice=choice), 10)
    assert out["tool_choice"] == expected


def test_no_parallel_tool_calls_disables_parallel_tool_use() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    out = chat_request_to_messages(chat_body(tools=tools, parallel_tool_calls=False), 10)
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_a_json_schema_response_format_is_restated_as_a_system_instruction() -> None:
    schema = {"type": "object", "properties": {"priority": {"enum": ["low", "high"]}},
              "required": ["priority"]}
    out = chat_request_to_messages(chat_body(
        messages=[{"role": "system", "content": "Triage."}, {"role": "user", "content": "t"}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "triage", "schema": schema}}), 10)
    assert "response_format" not in out
    assert out["system"].startswith("Triage.")
    # the schema itself is in the instruction, intact
    assert json.loads(out["system"].split("JSON Schema:\n", 1)[1]) == schema


def test_a_json_object_response_format_asks_for_json() -> None:
    out = chat_request_to_messages(chat_body(response_format={"type": "json_object"}), 10)
    assert "JSON" in out["system"]
    assert "system" not in chat_request_to_messages(
        chat_body(response_format={"type": "text"}), 10)


def test_legacy_function_messages_are_refused() -> None:
    body = chat_body(messages=[{"role": "user", "content": "q"},
                               {"role": "function", "name": "f", "content": "x"}])
    with pytest.raises(InvalidRequest) as info:
        chat_request_to_messages(body, 10)
    assert info.value.param == "messages.1.role"


def _as_blocks(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic allows a string where it means one text block; compare in block form."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        out.append({"role": m["role"], "content": content})
    return out


def test_an_anthropic_conversation_survives_the_round_trip_through_chat() -> None:
    original = request(system="Be brief.", messages=TOOL_CONVERSATION[:2] + [
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "21C"},
            {"type": "text", "text": "Which is warmer?"}]}],
        tools=[WEATHER_TOOL], tool_choice={"type": "any"}, stop_sequences=["END"],
        temperature=0.2, metadata={"user_id": "u"})
    back = chat_request_to_messages(messages_request_to_chat(copy.deepcopy(original)), 999)
    assert _as_blocks(back["messages"]) == _as_blocks(original["messages"])
    for key in ("model", "max_tokens", "system", "tools", "tool_choice", "stop_sequences",
                "temperature", "metadata"):
        assert back[key] == original[key], key


# =========================================================================== outbound response


def anthropic_message(**overrides: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "id": "msg_01abc", "type": "message", "role": "assistant", "model": "claude-up",
        "content": [{"type": "text", "text": "Paris is "}, {"type": "text", "text": "warmer."}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 6}}
    msg.update(overrides)
    return msg


def test_a_message_becomes_a_chat_completion() -> None:
    msg = anthropic_message()
    resp = message_to_chat_response(msg)
    assert resp["id"] == "chatcmpl-" + msg["id"].removeprefix("msg_")
    assert resp["model"] == msg["model"]
    choice = resp["choices"][0]
    assert choice["message"] == {"role": "assistant",
                                 "content": "".join(b["text"] for b in msg["content"])}
    assert choice["finish_reason"] == "stop"
    usage = msg["usage"]
    assert resp["usage"] == {"prompt_tokens": usage["input_tokens"],
                             "completion_tokens": usage["output_tokens"],
                             "total_tokens": usage["input_tokens"] + usage["output_tokens"]}
    ChatCompletion.model_validate(resp)


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
])
def test_stop_reasons_map_to_finish_reasons(stop: str, finish: str) -> None:
    resp = message_to_chat_response(anthropic_message(stop_reason=stop))
    assert resp["choices"][0]["finish_reason"] == finish


def test_tool_use_blocks_become_tool_calls_with_json_arguments() -> None:
    tool = {"type": "tool_use", "id": "toolu_9", "name": "get_weather",
            "input": {"city": "Paris"}}
    resp = message_to_chat_response(anthropic_message(content=[tool], stop_reason="tool_use"))
    message = resp["choices"][0]["message"]
    assert message["content"] is None
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in message["tool_calls"]] == [(tool["id"], tool["name"], tool["input"])]
    ChatCompletion.model_validate(resp)


def test_cache_reads_and_writes_count_as_prompt_tokens() -> None:
    usage = {"input_tokens": 5, "output_tokens": 3, "cache_read_input_tokens": 40,
             "cache_creation_input_tokens": 10}
    resp = message_to_chat_response(anthropic_message(usage=usage))
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"] \
        + usage["cache_creation_input_tokens"]
    assert resp["usage"]["prompt_tokens"] == prompt
    assert resp["usage"]["total_tokens"] == prompt + usage["output_tokens"]
    assert resp["usage"]["prompt_tokens_details"] == {
        "cached_tokens": usage["cache_read_input_tokens"]}


def test_a_message_survives_the_round_trip_through_a_chat_completion() -> None:
    msg = anthropic_message(content=[
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1, 2]}}],
        stop_reason="tool_use", usage={"input_tokens": 9, "output_tokens": 4,
                                       "cache_read_input_tokens": 3})
    back = chat_response_to_message(message_to_chat_response(msg), msg["model"])
    for key in ("id", "content", "stop_reason", "usage", "model"):
        assert back[key] == msg[key], key


@pytest.mark.parametrize("bad", [{"type": "error"}, {"type": "message", "content": "x"}, {}])
def test_something_that_is_not_a_message_is_malformed(bad: dict[str, Any]) -> None:
    with pytest.raises(UpstreamMalformed):
        message_to_chat_response(bad)


# =========================================================================== streaming in


def anthropic_stream() -> list[tuple[str, dict[str, Any]]]:
    """An Anthropic event stream as the API documents it: text, then a tool call whose input
    arrives as partial JSON, with a ping and an unknown event type mixed in."""
    return [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_s1", "type": "message", "role": "assistant", "model": "claude-up",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Let me "}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "check."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_s", "name": "get_weather", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
            "type": "input_json_delta", "partial_json": '{"city": "Pa'}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
            "type": "input_json_delta", "partial_json": 'ris"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("future_event", {"type": "future_event"}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"output_tokens": 17}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def to_chunks(events: list[tuple[str, dict[str, Any]]],
              model: str = "claude-up") -> tuple[MessageEventsToChatChunks, list[dict[str, Any]]]:
    converter = MessageEventsToChatChunks(model)
    return converter, [c for name, data in events for c in converter.feed(name, data)]


def test_an_anthropic_stream_becomes_chunks_the_openai_sdk_accumulates() -> None:
    events = anthropic_stream()
    converter, chunks = to_chunks(events)
    assert converter.done
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and "usage" in chunks[-1]
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(c))
    final = state.get_final_completion()
    text = "".join(d["delta"]["text"] for n, d in events
                   if n == "content_block_delta" and d["delta"]["type"] == "text_delta")
    partial = "".join(d["delta"]["partial_json"] for n, d in events
                      if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert final.choices[0].message.content == text
    tool = final.choices[0].message.tool_calls[0]
    assert (tool.id, tool.function.name) == ("toolu_s", "get_weather")
    assert json.loads(tool.function.arguments) == json.loads(partial)
    assert final.choices[0].finish_reason == "tool_calls"
    start_usage = events[0][1]["message"]["usage"]
    output = events[-2][1]["usage"]["output_tokens"]
    prompt = start_usage["input_tokens"] + start_usage["cache_read_input_tokens"]
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (prompt, output)
    assert final.usage.total_tokens == prompt + output


def test_chunks_carry_the_message_id_and_the_given_model() -> None:
    _, chunks = to_chunks(anthropic_stream(), model="target-model")
    assert {c["id"] for c in chunks} == {"chatcmpl-s1"}
    assert {c["model"] for c in chunks} == {"target-model"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_the_stream_is_not_done_until_message_stop() -> None:
    converter, _ = to_chunks(anthropic_stream()[:-1])
    assert not converter.done
    assert converter.feed("message_stop", {"type": "message_stop"})
    assert converter.done
    assert converter.feed("content_block_delta", anthropic_stream()[3][1]) == []


def test_the_event_type_is_read_from_data_when_the_event_has_no_name() -> None:
    converter = MessageEventsToChatChunks("m")
    start = anthropic_stream()[0][1]
    assert converter.feed(None, start)[0]["choices"][0]["delta"]["role"] == "assistant"


@pytest.mark.parametrize(("kind", "error"), [
    ("rate_limit_error", UpstreamRateLimited),
    ("overloaded_error", UpstreamUnavailable),
    ("api_error", UpstreamUnavailable),
])
def test_an_error_event_raises_from_the_taxonomy(kind: str, error: type[Exception]) -> None:
    converter, _ = to_chunks(anthropic_stream()[:4])
    with pytest.raises(error) as info:
        converter.feed("error", anthropic_error_body(kind, "busy"))
    assert kind in str(info.value)


def test_chunks_to_events_to_chunks_keeps_what_the_client_sees() -> None:
    """The two stream converters are inverses for everything an OpenAI client reads."""
    original = tool_chunks()
    events = convert(original)
    _, chunks = to_chunks(events)

    def final(cs: list[dict[str, Any]]) -> Any:
        state = ChatCompletionStreamState()
        for c in cs:
            state.handle_chunk(ChatCompletionChunk.model_validate(c))
        return state.get_final_completion()

    a, b = final(original), final(chunks)
    assert b.choices[0].message.content == a.choices[0].message.content
    assert [(t.id, t.function.name, json.loads(t.function.arguments))
            for t in b.choices[0].message.tool_calls] == [
        (t.id, t.function.name, json.loads(t.function.arguments))
        for t in a.choices[0].message.tool_calls]
    assert b.choices[0].finish_reason == a.choices[0].finish_reason
    assert b.usage == a.usage


def test_a_block_event_without_an_integer_index_is_malformed() -> None:
    converter, _ = to_chunks(anthropic_stream()[:1])
    start = copy.deepcopy(anthropic_stream()[6][1])
    start["index"] = "one"
    with pytest.raises(UpstreamMalformed):
        converter.feed("content_block_start", start)
