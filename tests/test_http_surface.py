"""The HTTP surface with the official SDKs as clients, on real loopback HTTP."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import LiveGateway

MSG = [{"role": "user", "content": "hello there"}]


def client(live: LiveGateway, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.v1, api_key="unused", max_retries=0, **kw)


def test_sync_sdk_chat_with_outcome_headers(live: LiveGateway) -> None:
    raw = client(live).chat.completions.with_raw_response.create(
        model="fast", messages=MSG, extra_headers={"X-Request-ID": "req-from-client-1"})
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the simulated model."
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.headers["x-request-id"] == "req-from-client-1"
    assert raw.headers["x-bastion-target"] == "sim/sim-primary"
    assert raw.headers["x-bastion-attempts"] == "1"
    assert raw.headers["x-bastion-fallback"] == "false"
    assert raw.headers["x-bastion-config"] == live.gateway.loaded.hash


async def test_async_sdk_chat(live: LiveGateway) -> None:
    async with openai.AsyncOpenAI(base_url=live.v1, api_key="unused", max_retries=0) as c:
        completion = await c.chat.completions.create(model="fast", messages=MSG)
    assert completion.choices[0].message.content == "Hello from the simulated model."


def test_request_ids_are_generated_when_absent_or_unsafe(live: LiveGateway) -> None:
    c = client(live)
    a = c.chat.completions.with_raw_response.create(model="fast", messages=MSG)
    b = c.chat.completions.with_raw_response.create(
        model="fast", messages=MSG, extra_headers={"X-Request-ID": "bad id\twith spaces"})
    assert a.headers["x-request-id"].startswith("req_")
    assert b.headers["x-request-id"].startswith("req_")
    assert a.headers["x-request-id"] != b.headers["x-request-id"]


def test_sdk_stream_reassembles_the_reply(live: LiveGateway) -> None:
    stream = client(live).chat.completions.create(model="fast", messages=MSG, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the simulated model."
    assert all(c.usage is None for c in chunks)  # usage not asked for, not sent


def test_stream_include_usage(live: LiveGateway) -> None:
    stream = client(live).chat.completions.create(
        model="fast", messages=MSG, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].choices == []


async def test_async_sdk_stream(live: LiveGateway) -> None:
    async with openai.AsyncOpenAI(base_url=live.v1, api_key="unused", max_retries=0) as c:
        stream = await c.chat.completions.create(model="fast", messages=MSG, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream
                        if ch.choices])
    assert text == "Hello from the simulated model."


def test_raw_stream_ends_with_done(live: LiveGateway, http: httpx.Client) -> None:
    with http.stream("POST", "/v1/chat/completions",
                     json={"model": "fast", "messages": MSG, "stream": True}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        body = resp.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_tools_and_response_format_pass_through(live: LiveGateway) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
    completion = client(live).chat.completions.create(
        model="fast", messages=MSG, tools=tools,
        extra_headers={"X-Bastion-Simulate": '{"kind": "tool_call", "arguments": "{\\"q\\": \\"x\\"}"}'})
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup" and call.function.arguments == '{"q": "x"}'


def test_models_and_embeddings(live: LiveGateway) -> None:
    c = client(live)
    ids = {m.id for m in c.models.list()}
    assert ids == set(live.gateway.config.models)
    emb = c.embeddings.create(model="vectors", input=["a", "b", "a"])
    assert len(emb.data) == 3
    assert emb.data[0].embedding == emb.data[2].embedding != emb.data[1].embedding


def test_unknown_model_is_404_in_the_openai_shape(live: LiveGateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(live).chat.completions.create(model="no-such-model", messages=MSG)
    body = info.value.body
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert body["request_id"] == info.value.response.headers["x-request-id"]


@pytest.mark.parametrize(("payload", "param"), [
    ({"messages": MSG}, "model"),
    ({"model": "fast"}, "messages"),
    ({"model": "fast", "messages": []}, "messages"),
    ({"model": "fast", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": "fast", "messages": MSG, "temperature": 7}, "temperature"),
    ({"model": "fast", "messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"model": "fast", "messages": MSG, "stream": "yes please"}, "stream"),
    ({"model": "fast", "messages": MSG, "response_format": {"type": "yaml"}}, "response_format"),
])
def test_schema_violations_are_400_with_param(http: httpx.Client, payload, param) -> None:
    resp = http.post("/v1/chat/completions", json=payload)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["request_id"] == resp.headers["x-request-id"]
    assert error["retryable"] is False


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b"\xff\xfe\x00binary"])
def test_malformed_bodies_are_400(http: httpx.Client, body: bytes) -> None:
    resp = http.post("/v1/chat/completions", content=body,
                     headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "body"


def test_oversized_body_is_413(live: LiveGateway, http: httpx.Client) -> None:
    limit = live.gateway.config.server.max_body_bytes
    big = {"model": "fast", "messages": [{"role": "user", "content": "x" * (limit + 10)}]}
    resp = http.post("/v1/chat/completions", json=big)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"


def test_oversized_chunked_body_is_413_too(live: LiveGateway, http: httpx.Client) -> None:
    limit = live.gateway.config.server.max_body_bytes

    def gen():
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    resp = http.post("/v1/chat/completions", content=gen(),
                     headers={"content-type": "application/json"})
    assert resp.status_code == 413


@pytest.mark.parametrize(("header", "value"), [("X-Bastion-Deadline", "-1"),
                                               ("X-Bastion-Deadline", "soon"),
                                               ("X-Bastion-Priority", "urgent"),
                                               ("X-Bastion-Simulate", "[1]")])
def test_bad_control_headers_are_400_naming_the_header(http: httpx.Client, header, value) -> None:
    resp = http.post("/v1/chat/completions", json={"model": "fast", "messages": MSG},
                     headers={header: value})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == header.lower()


def test_unknown_route_and_method_answer_in_the_error_shape(http: httpx.Client) -> None:
    resp = http.get("/v1/nowhere")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = http.get("/v1/chat/completions")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


def test_health_and_ready(live: LiveGateway, http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready")
    assert ready.status_code == 200
    report = ready.json()
    assert report["ready"] is True
    assert report["config"]["hash"] == live.gateway.loaded.hash
    assert report["breakers"]["sim/sim-primary"] == "closed"
    assert report["providers"] == {"sim": True, "backup": True}
