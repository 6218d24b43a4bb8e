"""``POST /v1/messages``: the Anthropic Messages API over the same pipeline.

The request is translated to the OpenAI shape, runs through exactly the same stages as a chat
completion, and the result (or stream) is translated back; errors use Anthropic's error shape
so the official SDK raises its own exception types.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from bastion.api.disconnect import until_disconnect
from bastion.api.errors import classify, error_response
from bastion.api.headers import headers_of
from bastion.api.idempotent import idempotent
from bastion.api.openai_routes import json_response, outcome_headers
from bastion.api.request import read_json, request_context, request_id_of
from bastion.api.sse import SSE_HEADERS, EventStreamResponse, named_event
from bastion.domain.anthropic import (
    ChatChunksToMessageEvents,
    anthropic_error_body,
    anthropic_error_type,
    chat_response_to_message,
    messages_request_to_chat,
)
from bastion.domain.chat import ChatRequest
from bastion.domain.context import RequestContext
from bastion.gateway import Gateway
from bastion.services.chat import ChatStreamResult


async def create_message(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    server = gateway.config.server
    request_id = request_id_of(request, server.accept_request_id)
    base = {"x-request-id": request_id, "request-id": request_id,
            "x-bastion-config": gateway.loaded.hash}
    ctx: RequestContext | None = None
    try:
        ctx = await request_context(request, gateway, "chat", request_id)
        body = await read_json(request, server.max_body_bytes)
        chat = gateway.parse_chat(messages_request_to_chat(body))
        admitted = ctx

        async def handle() -> Response:
            try:
                return await _complete(request, gateway, chat, admitted)
            except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
                headers = {**outcome_headers(admitted, gateway.loaded.hash),
                           "request-id": request_id}
                return error_response(exc, request_id, headers, shape="anthropic")

        return await idempotent(request, gateway, ctx, "messages", handle)
    except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
        headers = outcome_headers(ctx, gateway.loaded.hash) if ctx else base
        return error_response(exc, request_id, {**headers, "request-id": request_id},
                              shape="anthropic")


async def _complete(request: Request, gateway: Gateway, chat: ChatRequest,
                    ctx: RequestContext) -> Response:
    alias, request_id = chat.model, ctx.request_id
    if chat.stream:
        opened = await until_disconnect(request, gateway.chat_stream(chat, ctx))
        headers = {**SSE_HEADERS, **outcome_headers(ctx, gateway.loaded.hash),
                   "request-id": request_id}
        return EventStreamResponse(_anthropic_sse(opened, alias, request_id), headers=headers)
    result = await until_disconnect(request, gateway.chat(
        chat, ctx, cache_control=headers_of(request).get("cache-control", "")))
    return json_response(chat_response_to_message(result.response, alias),
                         {**outcome_headers(ctx, gateway.loaded.hash), "request-id": request_id})


async def _anthropic_sse(opened: ChatStreamResult, model: str,
                         request_id: str) -> AsyncIterator[bytes]:
    # Anthropic streams always report usage; ask the chat stream to keep it.
    opened.include_usage = True
    events = ChatChunksToMessageEvents(model, "msg_" + secrets.token_hex(12))
    try:
        async for chunk in opened:
            for name, data in events.feed(chunk):
                yield named_event(name, data)
    except Exception as exc:  # noqa: BLE001
        err = classify(exc, request_id)
        yield named_event("error", anthropic_error_body(anthropic_error_type(err.status),
                                                        err.message))
        return
    for name, data in events.finish():
        yield named_event(name, data)
