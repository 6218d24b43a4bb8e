"""Anthropic's Messages API as an upstream, behind the same interface as every other adapter.

The pipeline speaks OpenAI shapes; this adapter translates each request to
``POST /v1/messages`` and each answer (or event stream) back, with the pure translators in
``bastion.domain.anthropic``. Transport and status handling are the shared helpers of
``providers.http``, so a 429 or 529 from Anthropic is classified exactly like one from OpenAI.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson

from bastion.config import AnthropicProviderConfig, read_secret
from bastion.domain.anthropic import (
    MessageEventsToChatChunks,
    chat_request_to_messages,
    message_to_chat_response,
)
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import (
    InvalidRequest,
    UpstreamMalformed,
    UpstreamRejected,
    UpstreamUnavailable,
)
from bastion.providers.base import CallTimeout, ChatStream, PrefetchedStream
from bastion.providers.http import (
    classified,
    client_timeout,
    new_session,
    raise_for_status,
    read_json,
    sse_events,
)


class AnthropicProvider:
    def __init__(self, name: str, config: AnthropicProviderConfig) -> None:
        self.name = name
        self.config = config
        # The Anthropic SDK's base URL has no /v1 and the OpenAI one does; accept either.
        base = config.base_url.rstrip("/")
        self.base_url = base.removesuffix("/v1")
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle

    async def start(self) -> None:
        if self._session is None:
            self._session = new_session(self.config.connections, self._headers())

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def healthy(self) -> bool:
        return self._session is not None and not self._session.closed

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json",
                   "anthropic-version": self.config.anthropic_version}
        key = read_secret(self.config.api_key_env)
        if key:
            headers["x-api-key"] = key
        return headers

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamUnavailable(f"provider {self.name} is not started")
        return self._session

    @staticmethod
    def _call_headers(ctx: RequestContext) -> dict[str, str]:
        headers = {"x-request-id": ctx.request_id}
        if ctx.upstream_traceparent is not None:
            headers["traceparent"] = ctx.upstream_traceparent
        return headers

    def _body(self, request: ChatRequest, model: str, *, stream: bool) -> bytes:
        """The Anthropic request. A chat request this upstream cannot express (a legacy
        ``function`` message, an audio part) is this target refusing it, like a 400 would be,
        so it is reported as ``UpstreamRejected`` and the next target may still serve it."""
        chat = request.upstream_body(model)
        chat["stream"] = stream
        try:
            body = chat_request_to_messages(chat, self.config.default_max_tokens)
        except InvalidRequest as exc:
            raise UpstreamRejected(f"anthropic: {exc.message}", upstream_status=400,
                                   param=exc.param) from None
        return orjson.dumps(body)

    # -- calls

    async def chat(self, request: ChatRequest, model: str, timeout: CallTimeout,
                   ctx: RequestContext) -> dict[str, Any]:
        body = self._body(request, model, stream=False)
        async with classified("chat"), self.session.post(
            f"{self.base_url}/v1/messages", data=body, headers=self._call_headers(ctx),
            timeout=client_timeout(timeout, streaming=False),
        ) as resp:
            await raise_for_status(resp)
            data = await read_json(resp, "chat")
        return message_to_chat_response(data)

    async def open_stream(self, request: ChatRequest, model: str, timeout: CallTimeout,
                          ctx: RequestContext) -> ChatStream:
        body = self._body(request, model, stream=True)
        # Opening (headers and first event) within the attempt's timeout; later reads may each
        # idle that long (``sse_events``).
        async with classified("stream"), asyncio.timeout(
                None if timeout.caller_bounds else timeout.total_s):
            resp = await self.session.post(
                f"{self.base_url}/v1/messages", data=body, headers=self._call_headers(ctx),
                timeout=client_timeout(timeout, streaming=True),
            )
            try:
                await raise_for_status(resp)
                chunks = self._chunks(resp, model, timeout.total_s)
                first = await anext(chunks, None)
            except BaseException:
                resp.release()
                raise
        return PrefetchedStream(first, chunks, resp.release)

    async def _chunks(self, resp: aiohttp.ClientResponse, model: str,
                      idle_s: float) -> AsyncIterator[dict[str, Any]]:
        translator = MessageEventsToChatChunks(model)
        async with classified("stream"), aclosing(sse_events(resp.content.iter_any(),
                                                       idle_s=idle_s)) as events:
            async for event, data in events:
                for chunk in translator.feed(event, _event_data(data)):
                    yield chunk
                if translator.done:
                    return
        raise UpstreamMalformed("stream: anthropic upstream ended the stream without "
                                "message_stop")

    async def embeddings(self, request: EmbeddingsRequest, model: str, timeout: CallTimeout,
                         ctx: RequestContext) -> dict[str, Any]:
        raise UpstreamRejected("anthropic has no embeddings API", upstream_status=400)

    async def list_models(self, timeout: CallTimeout) -> list[dict[str, Any]]:
        """Anthropic's models as OpenAI ``model`` objects (the shape ``/v1/models`` serves)."""
        async with classified("models"), self.session.get(
            f"{self.base_url}/v1/models", params={"limit": "1000"},
            timeout=client_timeout(timeout, streaming=False),
        ) as resp:
            await raise_for_status(resp)
            data = await read_json(resp, "models")
        models = data.get("data") or []
        return [{"id": m["id"], "object": "model", "owned_by": "anthropic"}
                for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]


def _event_data(data: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamMalformed("stream: anthropic upstream sent an event that is not JSON") \
            from None
    if not isinstance(parsed, dict):
        raise UpstreamMalformed("stream: anthropic upstream sent an event that is not an object")
    return parsed
