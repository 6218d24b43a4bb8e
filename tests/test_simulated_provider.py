"""The simulated provider: every upstream failure on demand, reproducible under a seed."""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from typing import Any

import pytest

from bastion.config import SimulatedProviderConfig
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import (
    BastionError,
    InvalidRequest,
    UpstreamConnectError,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bastion.providers.base import CallTimeout, PrefetchedStream
from bastion.providers.simulated import SimulatedProvider, answers, faults
from bastion.providers.simulated import provider as simulated_provider

TIMEOUT = CallTimeout(total_s=2.0, connect_s=1.0)
PROMPT = "hello there, simulated model"
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}]


def make(**kw: Any) -> SimulatedProvider:
    return SimulatedProvider("sim", SimulatedProviderConfig(type="simulated", **kw))


def chat_request(**kw: Any) -> ChatRequest:
    return ChatRequest(model="alias", messages=[{"role": "user", "content": PROMPT}], **kw)


def context(simulate: dict[str, Any] | None = None, **kw: Any) -> RequestContext:
    return RequestContext.create(budget_s=5, simulate=simulate, **kw)


async def outcome(provider: SimulatedProvider, ctx: RequestContext | None = None,
                  model: str = "m") -> str:
    try:
        await provider.chat(chat_request(), model, TIMEOUT, ctx or context())
    except BastionError as exc:
        return exc.code
    return "ok"


async def collect(stream: Any) -> list[dict[str, Any]]:
    return [chunk async for chunk in stream]


async def collect_until_error(stream: Any) -> tuple[list[dict[str, Any]], BaseException]:
    received: list[dict[str, Any]] = []
    with pytest.raises(BastionError) as info:
        async for chunk in stream:
            received.append(chunk)
    return received, info.value


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the provider's sleeps instead of waiting them out."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float, *args: Any) -> None:
        recorded.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(simulated_provider.asyncio, "sleep", fake_sleep)
    return recorded


# --------------------------------------------------------------------------- success


async def test_chat_answers_a_complete_completion_with_the_configured_reply() -> None:
    reply = "Four words of reply."
    provider = make(reply=reply)
    data = await provider.chat(chat_request(), "target-model", TIMEOUT, context())
    assert data["id"].startswith("chatcmpl-sim-")
    assert data["object"] == "chat.completion" and isinstance(data["created"], int)
    assert data["model"] == "target-model"
    (choice,) = data["choices"]
    assert choice["message"] == {"role": "assistant", "content": reply}
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["prompt_tokens"] == len(PROMPT.split())
    assert usage["completion_tokens"] == len(reply.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert provider.calls == 1 and provider.calls_by_model == {"target-model": 1}


async def test_zero_latency_never_sleeps(sleeps: list[float]) -> None:
    provider = make()
    await provider.chat(chat_request(), "m", TIMEOUT, context())
    await collect(await provider.open_stream(chat_request(), "m", TIMEOUT, context()))
    assert sleeps == []


async def test_fixed_latency_is_waited_before_the_answer() -> None:
    provider = make(latency={"distribution": "fixed", "value_s": 0.05})
    started = time.monotonic()
    await provider.chat(chat_request(), "m", TIMEOUT, context())
    assert time.monotonic() - started >= 0.05 * 0.9


async def test_latency_longer_than_the_attempt_timeout_is_an_upstream_timeout() -> None:
    provider = make(latency={"distribution": "fixed", "value_s": 10})
    short = CallTimeout(total_s=0.05, connect_s=0.05)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await provider.chat(chat_request(), "m", short, context())
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("latency", [
    {"distribution": "uniform", "low_s": 0.01, "high_s": 0.03},
    {"distribution": "lognormal", "median_s": 0.02, "sigma": 0.5},
])
async def test_latency_draws_are_reproducible_under_a_seed(sleeps: list[float], latency) -> None:
    async def draws(seed: int) -> list[float]:
        sleeps.clear()
        provider = make(seed=seed, latency=latency)
        for _ in range(200):
            await provider.chat(chat_request(), "m", TIMEOUT, context())
        return list(sleeps)

    first, again, other = await draws(1), await draws(1), await draws(2)
    assert len(first) == 200 and first == again and first != other
    if latency["distribution"] == "uniform":
        assert all(latency["low_s"] <= d <= latency["high_s"] for d in first)
    else:
        median = sorted(first)[len(first) // 2]
        assert math.isclose(median, latency["median_s"], rel_tol=0.2)


async def test_stream_splits_the_reply_then_finishes_then_reports_usage() -> None:
    reply = "one two three four five six seven"
    provider = make(reply=reply, stream_chunks=3)
    stream = await provider.open_stream(chat_request(), "target-model", TIMEOUT, context())
    assert isinstance(stream, PrefetchedStream)
    chunks = await collect(stream)
    content, finish, usage = chunks[:3], chunks[3], chunks[4]
    assert len(chunks) == 3 + 2
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "target-model"
               for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in content[1:])
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == reply
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == len(reply.split())
    assert usage["usage"]["prompt_tokens"] == len(PROMPT.split())


@pytest.mark.parametrize(("reply", "parts"), [("a b c", 5), ("ab", 4), ("", 3),
                                              ("  lead and trail  ", 2), ("x " * 50, 7)])
def test_split_text_gives_exactly_the_asked_pieces_that_join_back(reply: str, parts: int) -> None:
    pieces = answers.split_text(reply, parts)
    assert len(pieces) == parts and "".join(pieces) == reply


async def test_stream_waits_the_chunk_interval_between_chunks(sleeps: list[float]) -> None:
    provider = make(stream_chunks=4, chunk_interval_s=0.01)
    chunks = await collect(await provider.open_stream(chat_request(), "m", TIMEOUT, context()))
    # Before every chunk but the first and the usage chunk.
    assert sleeps == [0.01] * (len(chunks) - 2)


async def test_embeddings_are_deterministic_unit_vectors() -> None:
    provider = make(embedding_dimensions=24)
    request = EmbeddingsRequest(model="e", input=["alpha", "beta", "alpha"])
    data = await provider.embeddings(request, "embed-model", TIMEOUT, context())
    vectors = [item["embedding"] for item in data["data"]]
    assert [item["index"] for item in data["data"]] == [0, 1, 2]
    assert all(len(v) == 24 for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    again = await make(embedding_dimensions=24, seed=99).embeddings(
        EmbeddingsRequest(model="e", input="alpha"), "embed-model", TIMEOUT, context())
    assert again["data"][0]["embedding"] == vectors[0]
    assert data["model"] == "embed-model"
    assert data["usage"]["prompt_tokens"] == 3


async def test_list_models_is_empty() -> None:
    assert await make().list_models(TIMEOUT) == []


# --------------------------------------------------------------------------- determinism


async def test_the_same_seed_replays_the_same_outcomes_and_another_seed_differs() -> None:
    faults = [{"kind": "status", "status": 503, "rate": 0.3},
              {"kind": "rate_limit", "rate": 0.3}]

    async def run(seed: int) -> list[str]:
        provider = make(seed=seed, faults=faults)
        return [await outcome(provider) for _ in range(60)]

    first, again, other = await run(11), await run(11), await run(12)
    assert first == again
    assert first != other
    assert {"ok", "upstream_unavailable", "upstream_rate_limited"} <= set(first)


async def test_a_fault_with_rate_zero_never_fires_and_rate_one_always_does() -> None:
    never = make(faults=[{"kind": "connect_error", "rate": 0.0}])
    always = make(faults=[{"kind": "connect_error"}])
    assert {await outcome(never) for _ in range(20)} == {"ok"}
    assert {await outcome(always) for _ in range(20)} == {"upstream_connect_error"}


# --------------------------------------------------------------------------- fault kinds


@pytest.mark.parametrize(("status", "error"), [
    (500, UpstreamUnavailable), (502, UpstreamUnavailable), (503, UpstreamUnavailable),
    (504, UpstreamTimeout), (400, UpstreamRejected), (401, UpstreamRejected),
    (404, UpstreamRejected), (422, UpstreamRejected),
])
async def test_status_faults_are_classified_like_real_upstream_statuses(status, error) -> None:
    provider = make(faults=[{"kind": "status", "status": status}])
    with pytest.raises(error) as info:
        await provider.chat(chat_request(), "m", TIMEOUT, context())
    assert type(info.value) is error
    assert info.value.upstream_status == status


@pytest.mark.parametrize(("fault", "error"), [
    ({"kind": "connect_error"}, UpstreamConnectError),
    ({"kind": "malformed_json"}, UpstreamMalformed),
    ({"kind": "rate_limit"}, UpstreamRateLimited),
])
async def test_transport_faults_raise_their_taxonomy_error(fault, error) -> None:
    provider = make()
    for call in (provider.chat, provider.open_stream):
        with pytest.raises(error):
            await call(chat_request(), "m", TIMEOUT, context(fault))
    with pytest.raises(error):
        await provider.embeddings(EmbeddingsRequest(model="e", input="x"), "m", TIMEOUT,
                                  context(fault))


async def test_rate_limit_retry_after_in_seconds_and_milliseconds() -> None:
    provider = make()
    for fault, expected in (({"kind": "rate_limit", "retry_after_s": 7}, 7.0),
                            ({"kind": "rate_limit", "retry_after_s": 0.25}, 0.25),
                            ({"kind": "rate_limit", "retry_after_ms": 1500}, 1500 / 1000)):
        with pytest.raises(UpstreamRateLimited) as info:
            await provider.chat(chat_request(), "m", TIMEOUT, context(fault))
        assert info.value.retry_after == pytest.approx(expected)
        assert info.value.status == 429


async def test_rate_limit_retry_after_as_an_http_date(monkeypatch) -> None:
    seen: list[dict[str, str]] = []
    real_parse = faults.parse_retry_after

    def spy(headers: dict[str, str], **kw: Any) -> float | None:
        seen.append(dict(headers))
        return real_parse(headers, **kw)

    monkeypatch.setattr(faults, "parse_retry_after", spy)
    seconds = 3
    with pytest.raises(UpstreamRateLimited) as info:
        await make().chat(chat_request(), "m", TIMEOUT, context(
            {"kind": "rate_limit", "retry_after_date": True, "retry_after_s": seconds}))
    # It travelled as an HTTP date (whole seconds, rounded up) through the adapters' parser.
    assert email.utils.parsedate_to_datetime(seen[-1]["retry-after"]) is not None
    assert seconds - 0.1 <= info.value.retry_after <= seconds + 1


async def test_read_timeout_waits_the_attempt_timeout_then_raises() -> None:
    short = CallTimeout(total_s=0.05, connect_s=0.05)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await make().chat(chat_request(), "m", short, context({"kind": "read_timeout"}))
    assert 0.05 * 0.9 <= time.monotonic() - started < 1


async def test_read_timeout_never_waits_past_the_request_deadline() -> None:
    ctx = RequestContext.create(budget_s=0.05, simulate={"kind": "read_timeout"})
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await make().chat(chat_request(), "m", CallTimeout(total_s=30, connect_s=1), ctx)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("operation", ["chat", "open_stream", "embeddings"])
async def test_a_hang_is_ended_only_by_cancellation_and_leaves_no_task(operation) -> None:
    provider = make()
    request = EmbeddingsRequest(model="e", input="x") if operation == "embeddings" \
        else chat_request()
    call = getattr(provider, operation)(request, "m", TIMEOUT, context({"kind": "hang"}))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call, 0.05)
    # It did not give up on its own before being cancelled (the timeout here is 2 s).
    assert time.monotonic() - started >= 0.05 * 0.9
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_slow_first_token_delays_the_answer_and_the_first_chunk() -> None:
    delay = 0.05
    provider = make()
    for call in (provider.chat, provider.open_stream):
        started = time.monotonic()
        await call(chat_request(), "m", TIMEOUT,
                   context({"kind": "slow_first_token", "delay_s": delay}))
        assert time.monotonic() - started >= delay * 0.9


async def test_slow_first_token_past_the_attempt_timeout_is_an_upstream_timeout() -> None:
    short = CallTimeout(total_s=0.05, connect_s=0.05)
    with pytest.raises(UpstreamTimeout):
        await make().open_stream(chat_request(), "m", short,
                                 context({"kind": "slow_first_token", "delay_s": 30}))


async def test_slow_stream_overrides_the_chunk_interval(sleeps: list[float]) -> None:
    provider = make(stream_chunks=3, chunk_interval_s=0.5)
    stream = await provider.open_stream(chat_request(), "m", TIMEOUT,
                                        context({"kind": "slow_stream", "interval_s": 0.02}))
    chunks = await collect(stream)
    assert sleeps == [0.02] * (len(chunks) - 2)


async def test_invalid_output_succeeds_with_the_given_content() -> None:
    for fault, expected in (({"kind": "invalid_output"}, "{not json"),
                            ({"kind": "invalid_output", "content": '{"a": 1'}, '{"a": 1')):
        data = await make().chat(chat_request(), "m", TIMEOUT, context(fault))
        assert data["choices"][0]["message"]["content"] == expected
        chunks = await collect(await make().open_stream(chat_request(), "m", TIMEOUT,
                                                        context(fault)))
        assert "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks if c["choices"]) == expected


async def test_tool_call_calls_the_first_declared_tool_with_the_given_arguments() -> None:
    arguments = '{"q": "x"}'
    fault = {"kind": "tool_call", "arguments": arguments}
    data = await make().chat(chat_request(tools=TOOLS), "m", TIMEOUT, context(fault))
    choice = data["choices"][0]
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"] == {"name": TOOLS[0]["function"]["name"], "arguments": arguments}
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None


async def test_tool_call_honours_a_named_tool_choice_and_streams_its_arguments() -> None:
    arguments = '{"query": "several words of arguments here"}'
    named = TOOLS[1]["function"]["name"]
    request = chat_request(tools=TOOLS, tool_choice={"type": "function",
                                                     "function": {"name": named}})
    stream = await make(stream_chunks=3).open_stream(
        request, "m", TIMEOUT, context({"kind": "tool_call", "arguments": arguments}))
    chunks = await collect(stream)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
             if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0]["function"]["name"] == named
    assert "".join(c["function"]["arguments"] for c in calls) == arguments
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("kw", [{}, {"tools": TOOLS, "tool_choice": "none"}])
async def test_tool_call_does_not_apply_without_callable_tools(kw) -> None:
    provider = make(reply="plain words")
    data = await provider.chat(chat_request(**kw), "m", TIMEOUT, context({"kind": "tool_call"}))
    assert data["choices"][0]["message"]["content"] == "plain words"


async def test_stream_faults_do_not_apply_to_non_stream_calls() -> None:
    provider = make(reply="fine")
    for fault in ({"kind": "stream_error_after", "chunks": 0}, {"kind": "stream_no_done"},
                  {"kind": "slow_stream", "interval_s": 10}):
        data = await provider.chat(chat_request(), "m", TIMEOUT, context(fault))
        assert data["choices"][0]["message"]["content"] == "fine"


# --------------------------------------------------------------------------- stream faults


@pytest.mark.parametrize("n", [1, 2, 4, 5, 6])
async def test_stream_error_after_yields_exactly_n_chunks_then_raises(n: int) -> None:
    provider = make(stream_chunks=4)  # 4 content chunks, a finish chunk, a usage chunk
    stream = await provider.open_stream(chat_request(), "m", TIMEOUT,
                                        context({"kind": "stream_error_after", "chunks": n}))
    received, error = await collect_until_error(stream)
    assert len(received) == n
    assert type(error) is UpstreamUnavailable
    assert error.message == "simulated mid-stream error"


async def test_stream_error_after_zero_chunks_fails_while_opening() -> None:
    with pytest.raises(UpstreamUnavailable):
        await make().open_stream(chat_request(), "m", TIMEOUT,
                                 context({"kind": "stream_error_after", "chunks": 0}))


async def test_stream_no_done_sends_the_content_then_fails_without_finishing() -> None:
    reply = "content that never finishes"
    provider = make(reply=reply, stream_chunks=3)
    stream = await provider.open_stream(chat_request(), "m", TIMEOUT,
                                        context({"kind": "stream_no_done"}))
    received, error = await collect_until_error(stream)
    assert type(error) is UpstreamMalformed and "DONE" in error.message
    assert len(received) == 3
    assert "".join(c["choices"][0]["delta"]["content"] for c in received) == reply
    assert all(c["choices"][0]["finish_reason"] is None and "usage" not in c for c in received)


# --------------------------------------------------------------------------- targeting


async def test_fail_times_fails_the_first_n_calls_of_a_request_then_succeeds() -> None:
    n = 2
    provider = make()
    fault = {"kind": "status", "status": 503, "fail_times": n}
    ctx = context(fault)
    results = [await outcome(provider, ctx) for _ in range(n + 2)]
    assert results == ["upstream_unavailable"] * n + ["ok", "ok"]
    # Another request id starts its own count.
    assert await outcome(provider, context(fault)) == "upstream_unavailable"


async def test_fail_times_in_the_config_applies_to_every_request() -> None:
    provider = make(faults=[{"kind": "connect_error", "fail_times": 1}])
    for request_id in ("req_a", "req_b"):
        ctx = context(request_id=request_id)
        assert [await outcome(provider, ctx) for _ in range(2)] == [
            "upstream_connect_error", "ok"]


async def test_fail_times_memory_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(simulated_provider, "FAIL_TIMES_MEMORY", 5)
    provider = make(faults=[{"kind": "connect_error", "fail_times": 1}])
    for i in range(20):
        await outcome(provider, context(request_id=f"req_{i}"))
    assert len(provider._seen) == 5


async def test_only_model_fails_that_target_and_spares_the_others() -> None:
    provider = make(faults=[{"kind": "status", "status": 500, "only_model": "primary"}])
    assert await outcome(provider, model="primary") == "upstream_unavailable"
    assert await outcome(provider, model="fallback") == "ok"
    assert provider.calls_by_model == {"primary": 1, "fallback": 1}
    assert provider.calls == 2


# --------------------------------------------------------------------------- overrides


async def test_a_request_override_replaces_the_configured_faults() -> None:
    provider = make(faults=[{"kind": "connect_error"}])
    assert await outcome(provider) == "upstream_connect_error"
    assert await outcome(provider, context({"kind": "malformed_json"})) == (
        "upstream_malformed_response")
    assert await outcome(provider, context({"faults": []})) == "ok"
    assert await outcome(provider, context({"faults": [
        {"kind": "status", "status": 502, "only_model": "other"},
        {"kind": "rate_limit"}]})) == "upstream_rate_limited"


async def test_the_override_is_ignored_when_the_config_does_not_allow_it() -> None:
    provider = make(allow_request_override=False)
    assert await outcome(provider, context({"kind": "connect_error"})) == "ok"


@pytest.mark.parametrize("simulate", [
    {"kind": "meteor_strike"}, {"kind": "status", "status": "five hundred"},
    {"kind": "rate_limit", "retry_after": 3}, {"faults": "none"}, {"kind": "hang", "rate": 2},
])
async def test_a_malformed_override_is_the_callers_error(simulate) -> None:
    with pytest.raises(InvalidRequest) as info:
        await make().chat(chat_request(), "m", TIMEOUT, context(simulate))
    assert info.value.param == "x-bastion-simulate"


def test_a_malformed_configured_fault_fails_at_construction() -> None:
    with pytest.raises(ValueError, match=r"faults\[1\]"):
        make(faults=[{"kind": "hang"}, {"kind": "status", "status": 999}])


# --------------------------------------------------------------------------- structured output

SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "minLength": 12},
        "priority": {"type": "string", "enum": ["high", "low"]},
        "count": {"type": "integer", "minimum": 3},
        "score": {"type": "number", "exclusiveMinimum": 0.5},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {"$ref": "#/$defs/Person"},
        "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
        "optional": {"type": "string"},
    },
    "required": ["summary", "priority", "count", "score", "urgent", "tags", "owner", "note"],
    "$defs": {"Person": {"type": "object", "properties": {"name": {"type": "string"}},
                         "required": ["name"]}},
}
TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
         "array": list, "object": dict}


@pytest.mark.parametrize("streaming", [False, True])
async def test_json_schema_output_parses_and_has_the_required_keys(streaming: bool) -> None:
    request = chat_request(response_format={"type": "json_schema", "json_schema": {
        "name": "ticket", "schema": SCHEMA, "strict": True}})
    provider = make()
    if streaming:
        chunks = await collect(await provider.open_stream(request, "m", TIMEOUT, context()))
        text = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks if c["choices"])
    else:
        data = await provider.chat(request, "m", TIMEOUT, context())
        text = data["choices"][0]["message"]["content"]
    value = json.loads(text)
    assert set(value) == set(SCHEMA["required"])
    props = SCHEMA["properties"]
    for key in SCHEMA["required"]:
        if "type" in props[key]:
            assert isinstance(value[key], TYPES[props[key]["type"]]), key
    assert value["priority"] in props["priority"]["enum"]
    assert len(value["summary"]) >= props["summary"]["minLength"]
    assert value["count"] >= props["count"]["minimum"]
    assert value["score"] > props["score"]["exclusiveMinimum"]
    assert set(value["owner"]) == set(SCHEMA["$defs"]["Person"]["required"])


async def test_json_object_output_is_a_json_object() -> None:
    data = await make().chat(chat_request(response_format={"type": "json_object"}), "m",
                             TIMEOUT, context())
    assert isinstance(json.loads(data["choices"][0]["message"]["content"]), dict)
