"""The OpenAI-compatible adapter against a real (fake) upstream on loopback: every transport
fault comes back as the right class from the taxonomy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from bastion.config import OpenAIProviderConfig
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import (
    UpstreamConnectError,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bastion.providers.base import CallTimeout
from bastion.providers.http import sse_events
from bastion.providers.openai_compat import OpenAICompatibleProvider
from tests.conftest import free_port
from tests.upstream import FakeUpstream

REQ = ChatRequest.model_validate({"model": "alias", "messages": [
    {"role": "user", "content": "hi"}], "temperature": 0, "logprobs": False})
T = CallTimeout(total_s=2.0, connect_s=1.0)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    up = await FakeUpstream().start()
    yield up
    await up.stop()


@pytest.fixture
async def adapter(upstream: FakeUpstream, monkeypatch) -> AsyncIterator[OpenAICompatibleProvider]:
    monkeypatch.setenv("FAKE_KEY", "sk-fake-123")
    p = OpenAICompatibleProvider("up", OpenAIProviderConfig(
        type="openai", base_url=upstream.url, api_key_env="FAKE_KEY"))
    await p.start()
    yield p
    await p.aclose()


def ctx() -> RequestContext:
    return RequestContext.create(budget_s=10, request_id="req_test")


async def test_chat_sends_target_model_key_request_id_and_extra_fields(adapter, upstream) -> None:
    data = await adapter.chat(REQ, "upstream-model", T, ctx())
    assert data["choices"][0]["message"]["content"] == "hello"
    sent = upstream.requests[0]
    assert sent["model"] == "upstream-model" and sent["logprobs"] is False
    assert upstream.headers[0]["authorization"] == "Bearer sk-fake-123"
    assert upstream.headers[0]["x-request-id"] == "req_test"


async def test_connections_are_pooled(adapter, upstream) -> None:
    for _ in range(5):
        await adapter.chat(REQ, "m", T, ctx())
    # five sequential calls reuse one keep-alive connection
    assert len(set(upstream.peers)) == 1 and len(upstream.peers) == 5


async def test_a_stream_closed_early_does_not_leave_its_connection_in_the_pool(adapter,
                                                                               upstream) -> None:
    upstream.script = [("stream_stall_after", 2)]
    stream = await adapter.open_stream(REQ, "m", T, ctx())
    await stream.aclose()  # the rest of the answer would still come on that connection
    for _ in range(2):
        await adapter.chat(REQ, "m", T, ctx())
    assert len(set(upstream.peers)) == 2  # a fresh connection, then reused


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after": "3"}, 3.0),
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past: now
])
async def test_429_carries_retry_after_in_every_form(adapter, upstream, headers, expected) -> None:
    upstream.script = [("status", 429, headers)]
    with pytest.raises(UpstreamRateLimited) as info:
        await adapter.chat(REQ, "m", T, ctx())
    assert info.value.retry_after == pytest.approx(expected)


@pytest.mark.parametrize(("code", "cls"), [(500, UpstreamUnavailable), (502, UpstreamUnavailable),
                                           (503, UpstreamUnavailable), (504, UpstreamTimeout),
                                           (400, UpstreamRejected), (404, UpstreamRejected),
                                           (422, UpstreamRejected)])
async def test_status_codes_are_classified(adapter, upstream, code, cls) -> None:
    upstream.script = [("status", code, {})]
    with pytest.raises(cls) as info:
        await adapter.chat(REQ, "m", T, ctx())
    assert f"fake {code}" in info.value.message


async def test_connection_reset_is_a_connect_error(adapter, upstream) -> None:
    upstream.script = ["reset"]
    with pytest.raises((UpstreamConnectError, UpstreamMalformed)) as info:
        await adapter.chat(REQ, "m", T, ctx())
    assert info.value.retryable


async def test_refused_connection_is_a_connect_error() -> None:
    p = OpenAICompatibleProvider("dead", OpenAIProviderConfig(
        type="openai", base_url=f"http://127.0.0.1:{free_port()}/v1"))
    await p.start()
    try:
        with pytest.raises(UpstreamConnectError):
            await p.chat(REQ, "m", T, ctx())
    finally:
        await p.aclose()


async def test_an_upstream_that_never_answers_times_out(adapter, upstream) -> None:
    upstream.script = ["hang"]
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await adapter.chat(REQ, "m", CallTimeout(total_s=0.2, connect_s=0.2), ctx())
    assert time.monotonic() - started < 1.5


async def test_malformed_json_is_classified(adapter, upstream) -> None:
    upstream.script = ["malformed"]
    with pytest.raises(UpstreamMalformed):
        await adapter.chat(REQ, "m", T, ctx())


async def test_stream_yields_all_chunks_and_usage(adapter, upstream) -> None:
    stream = await adapter.open_stream(REQ, "m", T, ctx())
    chunks = [c async for c in stream]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "one two three"
    assert chunks[-1]["usage"]["total_tokens"] == 6
    assert upstream.requests[0]["stream_options"] == {"include_usage": True}


async def test_stream_error_event_mid_stream_raises_after_the_chunks_before_it(adapter,
                                                                               upstream) -> None:
    upstream.script = [("stream_error_after", 2)]
    stream = await adapter.open_stream(REQ, "m", T, ctx())
    got = []
    with pytest.raises(UpstreamUnavailable) as info:
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 2 and "boom mid-stream" in info.value.message


async def test_stream_that_ends_without_done_is_malformed(adapter, upstream) -> None:
    upstream.script = ["stream_no_done"]
    stream = await adapter.open_stream(REQ, "m", T, ctx())
    with pytest.raises(UpstreamMalformed):
        async for _ in stream:
            pass


async def test_a_stream_that_goes_silent_times_out_after_the_attempt_timeout(adapter,
                                                                             upstream) -> None:
    upstream.script = [("stream_stall_after", 2)]
    stream = await adapter.open_stream(REQ, "m", CallTimeout(total_s=0.3, connect_s=0.3), ctx())
    got = []
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 2
    assert 0.25 <= time.monotonic() - started < 1.5


async def test_sse_events_are_parsed_across_reads_and_line_endings() -> None:
    async def blocks() -> AsyncIterator[bytes]:
        for block in (b"da", b"ta: {\"a\": 1}\r\n\r", b"\n: comment\nevent: ping\n",
                      b"data: x\ndata:y\n\ndata: [DONE]\n\ndata: tail"):
            yield block

    events = [e async for e in sse_events(blocks())]
    assert events == [(None, b'{"a": 1}'), ("ping", b"x\ny"), (None, b"[DONE]"),
                      (None, b"tail")]


async def test_stream_errors_before_the_first_chunk_raise_from_open(adapter, upstream) -> None:
    upstream.script = [("status", 503, {})]
    with pytest.raises(UpstreamUnavailable):
        await adapter.open_stream(REQ, "m", T, ctx())


async def test_closing_a_stream_early_releases_the_connection(adapter, upstream) -> None:
    stream = await adapter.open_stream(REQ, "m", T, ctx())
    await stream.aclose()
    await asyncio.sleep(0.05)
    data = await adapter.chat(REQ, "m", T, ctx())  # the adapter is still usable
    assert data["choices"]


async def test_embeddings_and_models(adapter, upstream) -> None:
    req = EmbeddingsRequest.model_validate({"model": "alias", "input": ["a", "b"]})
    data = await adapter.embeddings(req, "emb", T, ctx())
    assert len(data["data"]) == 2 and upstream.requests[-1]["model"] == "emb"
    models = await adapter.list_models(T)
    assert models[0]["id"] == "up-model"
