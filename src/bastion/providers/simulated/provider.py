"""``SimulatedProvider``: the provider interface, with the faults of ``faults.py`` injected."""

from __future__ import annotations

import asyncio
import base64
import math
import random
import secrets
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Any

from bastion.config import SimulatedProviderConfig
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import (
    UpstreamConnectError,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_upstream_status,
)
from bastion.providers.base import CallTimeout, ChatStream, PrefetchedStream
from bastion.providers.simulated.answers import *
from bastion.providers.simulated.faults import *

# --------------------------------------------------------------------------- the provider


class SimulatedProvider:
    def __init__(self, name: str, config: SimulatedProviderConfig) -> None:
        self.name = name
        self.config = config
        try:
            self._faults = parse_faults(config.faults)
        except ValueError as exc:
            raise ValueError(f"providers.{name}.{exc}") from None
        self._rng = random.Random(config.seed)
        self._latency = config.latency
        self._fixed_latency = config.latency.value_s if config.latency.distribution == "fixed" \
            else None
        self._log_median = math.log(config.latency.median_s)
        self._reply_pieces = split_text(config.reply, config.stream_chunks)
        self._reply_tokens = count_tokens(config.reply)
        #: (request id, source, fault index) -> calls seen, for ``fail_times``.
        self._seen: OrderedDict[tuple[str, str, int], int] = OrderedDict()
        self._started = False
        self.calls = 0
        self.calls_by_model: Counter[str] = Counter()
        #: Injected faults by kind, for tests and benchmark reports.
        self.faults_injected: Counter[str] = Counter()

    # -- lifecycle

    async def start(self) -> None:
        self._started = True

    async def aclose(self) -> None:
        self._started = False

    def healthy(self) -> bool:
        return self._started

    # -- choosing what happens

    def _draw_latency(self) -> float:
        if self._fixed_latency is not None:
            return self._fixed_latency
        spec = self._latency
        if spec.distribution == "uniform":
            return self._rng.uniform(spec.low_s, spec.high_s)
        return self._rng.lognormvariate(self._log_median, spec.sigma)

    def _pick(self, operation: str, model: str, ctx: RequestContext,
              request: ChatRequest | None = None) -> Fault | None:
        faults, source = self._faults, "config"
        if ctx.simulate is not None and self.config.allow_request_override:
            faults, source = parse_override(ctx.simulate), "request"
        applies = APPLIES[operation]
        for index, fault in enumerate(faults):
            if fault.kind not in applies:
                continue
            if fault.only_model is not None and fault.only_model != model:
                continue
            if fault.kind == "tool_call" and (request is None or tool_to_call(request) is None):
                continue
            if fault.fail_times is not None:
                key = (ctx.request_id, source, index)
                seen = self._seen.get(key, 0) + 1
                self._seen[key] = seen
                if len(self._seen) > FAIL_TIMES_MEMORY:
                    self._seen.popitem(last=False)
                if seen > fault.fail_times:
                    continue
            if fault.rate >= 1.0 or (fault.rate > 0.0 and self._rng.random() < fault.rate):
                self.faults_injected[fault.kind] += 1
                return fault
        return None

    def _begin(self, operation: str, model: str, ctx: RequestContext,
               request: ChatRequest | None = None) -> tuple[float, Fault | None]:
        self.calls += 1
        self.calls_by_model[model] += 1
        latency = self._draw_latency()
        return latency, self._pick(operation, model, ctx, request)

    @staticmethod
    async def _wait(seconds: float, limit: float, what: str) -> None:
        """Wait as an upstream that takes ``seconds`` would; past ``limit`` the client's read
        timeout fires first, as aiohttp's would in the HTTP adapters."""
        if seconds <= 0.0:
            return
        if seconds >= limit:
            await asyncio.sleep(limit)
            raise UpstreamTimeout(f"{what}: upstream did not answer in time")
        await asyncio.sleep(seconds)

    async def _before_answer(self, fault: Fault | None, latency: float, timeout: CallTimeout,
                             ctx: RequestContext, what: str) -> None:
        """Everything that happens before the answer (or first chunk): latency and the
        transport faults, which end here by raising."""
        if fault is None:
            await self._wait(latency, timeout.total_s, what)
            return
        kind = fault.kind
        if kind == "connect_error":
            raise UpstreamConnectError(f"{what}: cannot connect to upstream (simulated)")
        if kind == "hang":
            # Accepted, never answered: only cancellation (the deadline) ends this.
            await asyncio.get_running_loop().create_future()
        if kind == "read_timeout":
            await asyncio.sleep(min(timeout.total_s, ctx.remaining()))
            raise UpstreamTimeout(f"{what}: upstream did not answer in time")
        delay = latency + fault.delay_s if kind == "slow_first_token" else latency
        await self._wait(delay, timeout.total_s, what)
        if kind == "status":
            raise error_for_upstream_status(
                fault.status, f"upstream {fault.status}: simulated error",
                retry_after=fault.retry_after())
        if kind == "rate_limit":
            raise error_for_upstream_status(429, "upstream 429: simulated rate limit",
                                            retry_after=fault.retry_after())
        if kind == "malformed_json":
            raise UpstreamMalformed(f"{what}: upstream returned invalid JSON")

    def _content(self, request: ChatRequest, fault: Fault | None) -> str:
        if fault is not None and fault.kind == "invalid_output":
            return fault.content
        if request.response_format is not None:
            shaped = json_reply(request, self.config.reply)
            if shaped is not None:
                return shaped
        return self.config.reply

    # -- calls

    async def chat(self, request: ChatRequest, model: str, timeout: CallTimeout,
                   ctx: RequestContext) -> dict[str, Any]:
        latency, fault = self._begin("chat", model, ctx, request)
        await self._before_answer(fault, latency, timeout, ctx, "chat")
        message: dict[str, Any]
        if fault is not None and fault.kind == "tool_call":
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_sim_" + secrets.token_hex(6), "type": "function",
                "function": {"name": tool_to_call(request), "arguments": fault.arguments}}]}
            finish_reason, completion_tokens = "tool_calls", count_tokens(fault.arguments)
        else:
            content = self._content(request, fault)
            message = {"role": "assistant", "content": content}
            finish_reason = "stop"
            completion_tokens = self._reply_tokens if content is self.config.reply \
                else count_tokens(content)
        prompt_tokens = count_prompt_tokens(request)
        return {
            "id": "chatcmpl-sim-" + secrets.token_hex(8),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    async def open_stream(self, request: ChatRequest, model: str, timeout: CallTimeout,
                          ctx: RequestContext) -> ChatStream:
        latency, fault = self._begin("stream", model, ctx, request)
        await self._before_answer(fault, latency, timeout, ctx, "stream")
        chunks = self._stream(request, model, timeout, fault)
        try:
            first = await anext(chunks)
        except BaseException:
            await chunks.aclose()
            raise
        return PrefetchedStream(first, chunks)

    def _deltas(self, request: ChatRequest, fault: Fault | None
                ) -> tuple[Iterator[dict[str, Any]], str, int]:
        """The content deltas of a stream, its finish reason and its completion tokens."""
        parts = self.config.stream_chunks
        if fault is not None and fault.kind == "tool_call":
            pieces = split_text(fault.arguments, parts)
            head = {"index": 0, "id": "call_sim_" + secrets.token_hex(6), "type": "function",
                    "function": {"name": tool_to_call(request), "arguments": pieces[0]}}
            deltas = [{"role": "assistant", "content": None, "tool_calls": [head]}]
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                       for piece in pieces[1:]]
            return iter(deltas), "tool_calls", count_tokens(fault.arguments)
        content = self._content(request, fault)
        if content is self.config.reply:
            pieces, tokens = self._reply_pieces, self._reply_tokens
        else:
            pieces, tokens = split_text(content, parts), count_tokens(content)

        def content_deltas() -> Iterator[dict[str, Any]]:
            yield {"role": "assistant", "content": pieces[0]}
            for piece in pieces[1:]:
                yield {"content": piece}

        return content_deltas(), "stop", tokens

    async def _stream(self, request: ChatRequest, model: str, timeout: CallTimeout,
                      fault: Fault | None) -> AsyncIterator[dict[str, Any]]:
        """All chunks: content, then a finish chunk, then a usage chunk (``choices: []``),
        with ``chunk_interval_s`` before every chunk but the first and the usage chunk."""
        kind = fault.kind if fault is not None else None
        interval = fault.interval_s if fault is not None and kind == "slow_stream" \
            else self.config.chunk_interval_s
        fail_after = fault.chunks if fault is not None and kind == "stream_error_after" else -1
        deltas, finish_reason, completion_tokens = self._deltas(request, fault)
        ident, created = "chatcmpl-sim-" + secrets.token_hex(8), int(time.time())
        limit = timeout.total_s

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish}]}

        sent = 0
        for delta in deltas:
            if sent == fail_after:
                raise UpstreamUnavailable("simulated mid-stream error")
            if sent and interval > 0.0:
                await self._wait(interval, limit, "stream")
            yield chunk(delta, None)
            sent += 1
        if kind == "stream_no_done":
            # openai_compat's missing ``[DONE]``; the message avoids that literal, which SSE
            # clients and tests look for to tell a clean end from a broken one.
            raise UpstreamMalformed("stream: upstream ended the stream without its DONE event")
        if sent == fail_after:
            raise UpstreamUnavailable("simulated mid-stream error")
        if interval > 0.0:
            await self._wait(interval, limit, "stream")
        yield chunk({}, finish_reason)
        sent += 1
        if sent == fail_after:
            raise UpstreamUnavailable("simulated mid-stream error")
        prompt_tokens = count_prompt_tokens(request)
        yield {"id": ident, "object": "chat.completion.chunk", "created": created,
               "model": model, "choices": [],
               "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}}
        sent += 1
        if sent == fail_after:  # every chunk went out, but the stream never finished cleanly
            raise UpstreamUnavailable("simulated mid-stream error")

    async def embeddings(self, request: EmbeddingsRequest, model: str, timeout: CallTimeout,
                         ctx: RequestContext) -> dict[str, Any]:
        latency, fault = self._begin("embeddings", model, ctx)
        await self._before_answer(fault, latency, timeout, ctx, "embeddings")
        texts = request.texts()
        dimensions = min(request.dimensions or self.config.embedding_dimensions, 8192)
        as_base64 = request.encoding_format == "base64"
        data = []
        tokens = 0
        for index, text in enumerate(texts):
            tokens += count_tokens(text)
            vector = embed_text(text, dimensions)
            embedding: Any = vector
            if as_base64:
                packed = array.array("f", vector)
                if sys.byteorder != "little":
                    packed.byteswap()
                embedding = base64.b64encode(packed.tobytes()).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def list_models(self, timeout: CallTimeout) -> list[dict[str, Any]]:
        return []
