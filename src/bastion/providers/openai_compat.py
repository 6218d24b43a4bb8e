"""Any OpenAI-compatible endpoint: OpenAI, vLLM, Ollama, llama.cpp server, the local model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from bastion.config import OpenAIProviderConfig, read_secret
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import UpstreamMalformed, UpstreamUnavailable
from bastion.providers.base import CallTimeout, ChatStream, PrefetchedStream
from bastion.providers.http import (
    classified,
    client_timeout,
    new_session,
    raise_for_status,
    read_json,
    sse_events,
)


class OpenAICompatibleProvider:
    def __init__(self, name: str, config: OpenAIProviderConfig) -> None:
        self.name = name
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle

    async def start(self) -> None:
        if self._session is None:
            self._session = new_session(self.config.pool_size, self._headers())

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def healthy(self) -> bool:
        return self._session is not None and not self._session.closed

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", **self.config.headers}
        key = read_secret(self.config.api_key_env)
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamUnavailable(f"provider {self.name} is not started")
        return self._session

    @staticmethod
    def _call_headers(ctx: RequestContext) -> dict[str, str]:
        return {"x-request-id": ctx.request_id}

    # -- calls

    async def chat(self, request: ChatRequest, model: str, timeout: CallTimeout,
                   ctx: RequestContext) -> dict[str, Any]:
        body = request.upstream_body(model)
        body["stream"] = False
        body.pop("stream_options", None)
        async with classified("chat"), self.session.post(
            f"{self.base_url}/chat/completions", data=orjson.dumps(body),
            headers=self._call_headers(ctx), timeout=client_timeout(timeout, streaming=False),
        ) as resp:
            await raise_for_status(resp)
            data = await read_json(resp, "chat")
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
        async with classified("stream"):
            resp = await self.session.post(
                f"{self.base_url}/chat/completions", data=orjson.dumps(body),
                headers=self._call_headers(ctx), timeout=client_timeout(timeout, streaming=True),
            )
            try:
                await raise_for_status(resp)
                chunks = self._chunks(resp)
                first = await anext(chunks, None)
            except BaseException:
                resp.release()
                raise
        return PrefetchedStream(first, chunks, resp.release)

    async def _chunks(self, resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
        async with classified("stream"):
            async for _event, data in sse_events(resp):
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
        async with classified("embeddings"), self.session.post(
            f"{self.base_url}/embeddings", data=orjson.dumps(request.upstream_body(model)),
            headers=self._call_headers(ctx), timeout=client_timeout(timeout, streaming=False),
        ) as resp:
            await raise_for_status(resp)
            data = await read_json(resp, "embeddings")
        if not isinstance(data.get("data"), list):
            raise UpstreamMalformed("embeddings: upstream response has no data")
        return data

    async def list_models(self, timeout: CallTimeout) -> list[dict[str, Any]]:
        async with classified("models"), self.session.get(
            f"{self.base_url}/models", timeout=client_timeout(timeout, streaming=False)
        ) as resp:
            await raise_for_status(resp)
            data = await read_json(resp, "models")
        models = data.get("data") or data.get("models") or []
        return [m for m in models if isinstance(m, dict)]
