"""Any OpenAI-compatible endpoint: OpenAI, vLLM, Ollama, llama.cpp server, the local model.

Its HTTP is ``providers.http1``, a small keep-alive client, rather than aiohttp: this adapter
makes the one upstream call of every chat completion, and aiohttp costs twice the CPU per call
or more (see ``http1`` for the figures)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

from bastion.config import OpenAIProviderConfig, read_secret
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import UpstreamMalformed, UpstreamUnavailable
from bastion.providers.base import CallTimeout, ChatStream, PrefetchedStream
from bastion.providers.http import (
    TRANSPORT_ERRORS,
    classified,
    raise_for_status,
    read_json,
    sse_events,
    transport_error,
)
from bastion.providers.http1 import Pool, Response


class OpenAICompatibleProvider:
    def __init__(self, name: str, config: OpenAIProviderConfig) -> None:
        self.name = name
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._pool: Pool | None = None

    # -- lifecycle

    async def start(self) -> None:
        if self._pool is None:
            self._pool = Pool(self.base_url, size=self.config.connections,
                              headers=self._headers())

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    def healthy(self) -> bool:
        return self._pool is not None and not self._pool.closed

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", **self.config.headers}
        key = read_secret(self.config.api_key_env)
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise UpstreamUnavailable(f"provider {self.name} is not started")
        return self._pool

    async def _send(self, method: str, path: str, body: bytes, timeout: CallTimeout,
                    ctx: RequestContext | None = None) -> Response:
        headers = None
        if ctx is not None:
            headers = {"x-request-id": ctx.request_id}
            if ctx.upstream_traceparent is not None:
                headers["traceparent"] = ctx.upstream_traceparent
        return await self.pool.request(method, path, body, headers=headers,
                                       connect_timeout=timeout.connect_s)

    async def _call(self, what: str, method: str, path: str, body: bytes,
                    timeout: CallTimeout, ctx: RequestContext | None = None) -> dict[str, Any]:
        """A whole JSON answer within ``timeout.total_s``, or a taxonomy error."""
        try:
            if timeout.caller_bounds:
                return await self._exchange(what, method, path, body, timeout, ctx)
            async with asyncio.timeout(timeout.total_s):
                return await self._exchange(what, method, path, body, timeout, ctx)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(what, exc) from exc

    async def _exchange(self, what: str, method: str, path: str, body: bytes,
                        timeout: CallTimeout, ctx: RequestContext | None) -> dict[str, Any]:
        resp = await self._send(method, path, body, timeout, ctx)
        try:
            await raise_for_status(resp)
            return await read_json(resp, what)
        finally:
            resp.release()

    # -- calls

    async def chat(self, request: ChatRequest, model: str, timeout: CallTimeout,
                   ctx: RequestContext) -> dict[str, Any]:
        body = request.upstream_body(model)
        body["stream"] = False
        body.pop("stream_options", None)
        data = await self._call("chat", "POST", "/chat/completions", orjson.dumps(body),
                                timeout, ctx)
        if not isinstance(data.get("choices"), list) or not data["choices"]:
            raise UpstreamMalformed("chat: upstream response has no choices")
        return data

    async def open_stream(self, request: ChatRequest, model: str, timeout: CallTimeout,
                          ctx: RequestContext) -> ChatStream:
        body = request.upstream_body(model)
        body["stream"] = True
        # Always ask for usage so bastion can account for the stream; it is dropped again on the
        # way out unless the client asked for it too.
        body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        # Opening (the answer's headers and first event) takes at most the attempt's timeout;
        # after that each read may idle that long (``sse_events``), and the request's deadline
        # bounds the whole stream.
        async with classified("stream"), asyncio.timeout(
                None if timeout.caller_bounds else timeout.total_s):
            resp = await self._send("POST", "/chat/completions", orjson.dumps(body), timeout,
                                    ctx)
            try:
                await raise_for_status(resp)
                chunks = self._chunks(resp, timeout.total_s)
                first = await anext(chunks, None)
            except BaseException:
                resp.release()
                raise
        return PrefetchedStream(first, chunks, resp.release)

    async def _chunks(self, resp: Response, idle_s: float) -> AsyncIterator[dict[str, Any]]:
        async with classified("stream"), \
                aclosing(sse_events(resp.blocks(), idle_s=idle_s)) as events:
            async for _event, data in events:
                if data == b"[DONE]":
                    return
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamMalformed("stream: upstream sent an event that is not JSON") \
                        from None
                if not isinstance(chunk, dict):
                    raise UpstreamMalformed("stream: upstream sent an event that is not an object")
                if "error" in chunk:
                    err = chunk["error"] if isinstance(chunk["error"], dict) else {}
                    raise UpstreamUnavailable(
                        f"stream: upstream error: {str(err.get('message', ''))[:300]}")
                yield chunk
        raise UpstreamMalformed("stream: upstream ended the stream without its DONE event")

    async def embeddings(self, request: EmbeddingsRequest, model: str, timeout: CallTimeout,
                         ctx: RequestContext) -> dict[str, Any]:
        data = await self._call("embeddings", "POST", "/embeddings",
                                orjson.dumps(request.upstream_body(model)), timeout, ctx)
        if not isinstance(data.get("data"), list):
            raise UpstreamMalformed("embeddings: upstream response has no data")
        return data

    async def list_models(self, timeout: CallTimeout) -> list[dict[str, Any]]:
        data = await self._call("models", "GET", "/models", b"", timeout)
        models = data.get("data") or data.get("models") or []
        return [m for m in models if isinstance(m, dict)]
