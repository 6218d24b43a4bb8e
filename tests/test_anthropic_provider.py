"""The Anthropic adapter against a fake Anthropic upstream on loopback: requests go out in the
Messages shape with the right headers, answers and streams come back in the OpenAI shape, and
every failure comes back as the right class from the taxonomy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import orjson
import pytest
from aiohttp import web

from bastion.config import AnthropicProviderConfig
from bastion.domain.anthropic import ChatChunksToMessageEvents, anthropic_error_body
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import (
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from bastion.providers.anthropic import AnthropicProvider
from bastion.providers.base import CallTimeout

T = CallTimeout(total_s=2.0, connect_s=1.0)
REPLY = ["The answer ", "is ", "42."]
USAGE = {"input_tokens": 13, "output_tokens": 7}


def message(model: str) -> dict[str, Any]:
    return {"id": "msg_fake1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "".join(REPLY)}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": USAGE}


def stream_events(model: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("message_start", {"type": "message_start", "message": {
            **message(model), "content": [], "stop_reason": None,
            "usage": {"input_tokens": USAGE["input_tokens"], "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        *[("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": piece}})
          for piece in REPLY],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": USAGE["output_tokens"]}}),
        ("message_stop", {"type": "message_stop"}),
    ]


class FakeAnthropic:
    """Each request pops the next step of ``script``: ``"ok"``, ``"stream"``,
    ``("status", code, headers)``, ``"stream_no_stop"``, ``("stream_error_after", n, type)``
    (n events, then an ``error`` event)."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeAnthropic:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/v1/models", self.models)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def models(self, request: web.Request) -> web.Response:
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"data": [
            {"type": "model", "id": "claude-a", "display_name": "A"},
            {"type": "model", "id": "claude-b", "display_name": "B"}], "has_more": False})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        step = self.script.pop(0) if self.script else ("stream" if body.get("stream") else "ok")
        kind = step[0] if isinstance(step, tuple) else step
        if kind == "ok":
            return web.json_response(message(body["model"]))
        if kind == "status":
            _, code, headers = step
            error = anthropic_error_body("overloaded_error" if code == 529 else "x", f"fake {code}")
            return web.json_response(error, status=code, headers=headers)
        events = stream_events(body["model"])
        if kind == "stream_no_stop":
            events = events[:-1]
        if kind == "stream_error_after":
            _, count, error_type = step
            events = [*events[:count], ("error", anthropic_error_body(error_type, "boom"))]
        return await self._stream(request, events)

    @staticmethod
    async def _stream(request: web.Request,
                      events: list[tuple[str, dict[str, Any]]]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for name, data in events:
            await resp.write(f"event: {name}\n".encode() + b"data: " + orjson.dumps(data)
                             + b"\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture
async def upstream() -> AsyncIterator[FakeAnthropic]:
    up = await FakeAnthropic().start()
    yield up
    await up.stop()


def make_provider(base_url: str, **config: Any) -> AnthropicProvider:
    return AnthropicProvider("claude", AnthropicProviderConfig(
        type="anthropic", base_url=base_url, api_key_env="FAKE_ANTHROPIC_KEY", **config))


@pytest.fixture
async def provider(upstream: FakeAnthropic, monkeypatch) -> AsyncIterator[AnthropicProvider]:
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "sk-ant-fake-123")
    p = make_provider(upstream.url, default_max_tokens=333)
    await p.start()
    yield p
    await p.aclose()


def chat(**overrides: Any) -> ChatRequest:
    body: dict[str, Any] = {"model": "alias", "messages": [
        {"role": "system", "content": "Be exact."}, {"role": "user", "content": "6 x 7?"}]}
    body.update(overrides)
    return ChatRequest.model_validate(body)


def ctx() -> RequestContext:
    return RequestContext.create(budget_s=10, request_id="req_anthropic_test")


async def collect(stream: Any) -> list[dict[str, Any]]:
    chunks = []
    try:
        async for c in stream:
            chunks.append(c)
    finally:
        await stream.aclose()
    return chunks


# --------------------------------------------------------------------------- plain calls


async def test_chat_sends_a_messages_request_and_returns_a_chat_completion(provider,
                                                                           upstream) -> None:
    data = await provider.chat(chat(), "claude-up", T, ctx())
    sent = upstream.requests[0]
    assert sent["model"] == "claude-up"
    assert sent["max_tokens"] == provider.config.default_max_tokens
    assert sent["system"] == "Be exact."
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text",
                                                              "text": "6 x 7?"}]}]
    assert "stream" not in sent
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] == "".join(REPLY)
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["prompt_tokens"] == USAGE["input_tokens"]
    assert data["usage"]["completion_tokens"] == USAGE["output_tokens"]


async def test_the_api_key_version_and_request_id_headers_are_sent(provider, upstream) -> None:
    await provider.chat(chat(), "claude-up", T, ctx())
    headers = upstream.headers[0]
    assert headers["x-api-key"] == "sk-ant-fake-123"
    assert headers["anthropic-version"] == provider.config.anthropic_version
    assert headers["x-request-id"] == "req_anthropic_test"
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers


async def test_a_base_url_ending_in_v1_reaches_the_same_endpoint(upstream, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "k")
    p = make_provider(upstream.url + "/v1/")
    await p.start()
    try:
        data = await p.chat(chat(), "claude-up", T, ctx())
    finally:
        await p.aclose()
    assert data["choices"][0]["message"]["content"] == "".join(REPLY)


async def test_the_caller_max_tokens_wins_over_the_default(provider, upstream) -> None:
    await provider.chat(chat(max_tokens=12), "claude-up", T, ctx())
    assert upstream.requests[0]["max_tokens"] == 12


async def test_a_request_anthropic_cannot_express_is_rejected_without_a_call(provider,
                                                                             upstream) -> None:
    request = chat(messages=[{"role": "user", "content": "q"},
                             {"role": "function", "name": "f", "content": "x"}])
    with pytest.raises(UpstreamRejected) as info:
        await provider.chat(request, "claude-up", T, ctx())
    assert info.value.param == "messages.1.role"
    assert not info.value.retryable
    assert upstream.requests == []


async def test_429_is_rate_limited_with_retry_after(provider, upstream) -> None:
    upstream.script = [("status", 429, {"retry-after": "7"})]
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.chat(chat(), "claude-up", T, ctx())
    assert info.value.retry_after == 7.0
    assert info.value.upstream_status == 429


async def test_529_overloaded_is_unavailable_and_retryable(provider, upstream) -> None:
    upstream.script = [("status", 529, {})]
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat(), "claude-up", T, ctx())
    assert info.value.upstream_status == 529 and info.value.retryable
    assert "fake 529" in info.value.message


async def test_400_is_rejected_and_not_retryable(provider, upstream) -> None:
    upstream.script = [("status", 400, {})]
    with pytest.raises(UpstreamRejected) as info:
        await provider.chat(chat(), "claude-up", T, ctx())
    assert not info.value.retryable and info.value.status == 400


async def test_embeddings_are_refused(provider) -> None:
    request = EmbeddingsRequest.model_validate({"model": "e", "input": "text"})
    with pytest.raises(UpstreamRejected) as info:
        await provider.embeddings(request, "claude-up", T, ctx())
    assert info.value.upstream_status == 400


async def test_list_models_maps_ids(provider, upstream) -> None:
    models = await provider.list_models(T)
    assert [m["id"] for m in models] == ["claude-a", "claude-b"]
    assert upstream.headers[0]["x-api-key"] == "sk-ant-fake-123"


async def test_healthy_follows_the_lifecycle(upstream) -> None:
    p = make_provider(upstream.url)
    assert not p.healthy()
    await p.start()
    assert p.healthy()
    await p.aclose()
    assert not p.healthy()
    with pytest.raises(UpstreamUnavailable):
        await p.chat(chat(), "claude-up", T, ctx())


# --------------------------------------------------------------------------- streaming


async def test_a_stream_comes_back_as_openai_chunks(provider, upstream) -> None:
    stream = await provider.open_stream(chat(), "claude-up", T, ctx())
    chunks = await collect(stream)
    assert upstream.requests[0]["stream"] is True
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(REPLY)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == USAGE["input_tokens"]
    assert chunks[-1]["usage"]["completion_tokens"] == USAGE["output_tokens"]
    assert {c["model"] for c in chunks} == {"claude-up"}


async def test_a_status_error_surfaces_from_open_stream(provider, upstream) -> None:
    upstream.script = [("status", 429, {"retry-after-ms": "1500"})]
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.open_stream(chat(), "claude-up", T, ctx())
    assert info.value.retry_after == 1.5


async def test_an_error_before_the_first_chunk_surfaces_from_open_stream(provider,
                                                                         upstream) -> None:
    """open_stream reads the first chunk, so an upstream failing at once is still retryable."""
    upstream.script = [("stream_error_after", 0, "overloaded_error")]
    with pytest.raises(UpstreamUnavailable):
        await provider.open_stream(chat(), "claude-up", T, ctx())


@pytest.mark.parametrize(("error_type", "error"), [
    ("overloaded_error", UpstreamUnavailable),
    ("rate_limit_error", UpstreamRateLimited),
    ("api_error", UpstreamUnavailable),
])
async def test_an_error_event_mid_stream_raises(provider, upstream, error_type: str,
                                                error: type[Exception]) -> None:
    upstream.script = [("stream_error_after", 4, error_type)]
    stream = await provider.open_stream(chat(), "claude-up", T, ctx())
    received: list[dict[str, Any]] = []
    with pytest.raises(error):
        async for c in stream:
            received.append(c)
    await stream.aclose()
    # the text that did arrive before the error was passed on
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in received)


async def test_a_stream_without_message_stop_is_malformed(provider, upstream) -> None:
    upstream.script = ["stream_no_stop"]
    stream = await provider.open_stream(chat(), "claude-up", T, ctx())
    with pytest.raises(UpstreamMalformed):
        await collect(stream)


async def test_a_stream_can_be_served_back_to_the_anthropic_sdk(provider, upstream) -> None:
    """Full circle: Anthropic upstream → adapter (OpenAI chunks) → Anthropic events → SDK."""
    stream = await provider.open_stream(chat(), "claude-up", T, ctx())
    chunks = await collect(stream)
    converter = ChatChunksToMessageEvents("alias", "msg_circle")
    events = [e for c in chunks for e in converter.feed(c)] + converter.finish()

    async def messages(request: web.Request) -> web.StreamResponse:
        return await FakeAnthropic._stream(request, events)

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    def consume() -> anthropic.types.Message:
        client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="x",
                                     max_retries=0)
        with client.messages.stream(model="alias", max_tokens=10,
                                    messages=[{"role": "user", "content": "q"}]) as s:
            return s.get_final_message()

    try:
        final = await asyncio.to_thread(consume)
    finally:
        await runner.cleanup()
    assert final.content[0].text == "".join(REPLY)
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        USAGE["input_tokens"], USAGE["output_tokens"])
    assert json.loads(final.model_dump_json())["id"] == "msg_circle"
