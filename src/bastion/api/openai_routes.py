"""The OpenAI-compatible surface: chat completions (plain and SSE), embeddings, models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from bastion.api.disconnect import until_disconnect
from bastion.api.errors import classify, error_response
from bastion.api.headers import headers_of
from bastion.api.idempotent import idempotent
from bastion.api.request import read_json, request_context, request_id_of
from bastion.api.sse import DONE, SSE_HEADERS, EventStreamResponse, data_event
from bastion.domain.chat import ChatRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import ModelNotFound
from bastion.gateway import Gateway
from bastion.services.chat import ChatStreamResult


def _gateway(request: Request) -> Gateway:
    app = request.scope["app"]
    gateway = getattr(app, "gateway", None)  # a GatewayApp's; else the app's state
    return gateway if gateway is not None else app.state.gateway  # type: ignore[no-any-return]


def outcome_headers(ctx: RequestContext, config_hash: str) -> dict[str, str]:
    headers = {"x-request-id": ctx.request_id, "x-bastion-config": config_hash}
    if ctx.target is not None:
        headers["x-bastion-target"] = ctx.target
        headers["x-bastion-attempts"] = str(ctx.calls())
        headers["x-bastion-fallback"] = "true" if ctx.fallback_used else "false"
    elif ctx.attempts:
        headers["x-bastion-attempts"] = str(ctx.calls())
    contract = ctx.contract_outcome()
    if contract is not None:
        headers["x-bastion-contract"] = contract
        headers["x-bastion-contract-steps"] = ",".join(
            f"{step.target}:{step.phase}={'valid' if step.valid else 'invalid'}"
            for step in ctx.contract_steps)
    if ctx.prompt is not None:
        headers["x-bastion-prompt"] = ctx.prompt
    if ctx.cache is not None:
        headers["x-bastion-cache"] = ctx.cache
    headers.update(ctx.response_headers)
    return headers


class JSONAnswer(Response):
    """A JSON body and headers whose names are lower-case already, as every bastion header
    is. Starlette's ``init_headers`` lower-cases each name and scans the list twice for a
    Content-Length and a Content-Type the caller might have set: 3.2 µs for the 14 headers of
    a rate-limited chat completion. This encodes them and appends the two."""

    media_type = "application/json"

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        raw.append((b"content-length", str(len(self.body)).encode()))
        raw.append((b"content-type", b"application/json"))
        self.raw_headers = raw


def json_response(body: Any, headers: dict[str, str], status: int = 200) -> Response:
    return JSONAnswer(orjson.dumps(body), status_code=status, headers=headers)


async def chat_completions(request: Request) -> Response:
    gateway = _gateway(request)
    server = gateway.config.server
    request_id = request_id_of(request, server.accept_request_id)
    base = {"x-request-id": request_id, "x-bastion-config": gateway.loaded.hash}
    ctx: RequestContext | None = None
    try:
        ctx = await request_context(request, gateway, "chat", request_id)
        body = await read_json(request, server.max_body_bytes)
        chat = gateway.parse_chat(body)
        admitted = ctx

        async def handle() -> Response:
            try:
                return await _complete(request, gateway, chat, admitted)
            except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
                return error_response(exc, request_id,
                                      outcome_headers(admitted, gateway.loaded.hash))

        return await idempotent(request, gateway, ctx, "chat.completions", handle)
    except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
        headers = outcome_headers(ctx, gateway.loaded.hash) if ctx else base
        return error_response(exc, request_id, headers)


async def _complete(request: Request, gateway: Gateway, chat: ChatRequest,
                    ctx: RequestContext) -> Response:
    if chat.stream:
        opened = await until_disconnect(request, gateway.chat_stream(chat, ctx))
        return EventStreamResponse(_openai_sse(opened, ctx.request_id),
                                   headers={**SSE_HEADERS,
                                            **outcome_headers(ctx, gateway.loaded.hash)})
    result = await until_disconnect(request, gateway.chat(
        chat, ctx, cache_control=headers_of(request).get("cache-control", "")))
    return json_response(result.response, outcome_headers(ctx, gateway.loaded.hash))


async def _openai_sse(opened: ChatStreamResult, request_id: str) -> AsyncIterator[bytes]:
    """Chunks as SSE; a failure after the first byte ends with an error event in the OpenAI
    shape and no ``[DONE]``, so no client mistakes a broken stream for a complete one."""
    try:
        async for chunk in opened:
            yield data_event(chunk)
    except Exception as exc:  # noqa: BLE001
        yield data_event(classify(exc, request_id).body(request_id))
        return
    yield DONE


async def embeddings(request: Request) -> Response:
    gateway = _gateway(request)
    server = gateway.config.server
    request_id = request_id_of(request, server.accept_request_id)
    base = {"x-request-id": request_id, "x-bastion-config": gateway.loaded.hash}
    ctx: RequestContext | None = None
    try:
        ctx = await request_context(request, gateway, "embeddings", request_id)
        body = await read_json(request, server.max_body_bytes)
        result = await until_disconnect(request, gateway.embeddings(body, ctx))
        return json_response(result, outcome_headers(ctx, gateway.loaded.hash))
    except Exception as exc:  # noqa: BLE001
        headers = outcome_headers(ctx, gateway.loaded.hash) if ctx else base
        return error_response(exc, request_id, headers)


async def list_models(request: Request) -> Response:
    gateway = _gateway(request)
    request_id = request_id_of(request, gateway.config.server.accept_request_id)
    return json_response({"object": "list", "data": gateway.models()},
                         {"x-request-id": request_id, "x-bastion-config": gateway.loaded.hash})


async def get_model(request: Request) -> Response:
    gateway = _gateway(request)
    request_id = request_id_of(request, gateway.config.server.accept_request_id)
    headers = {"x-request-id": request_id, "x-bastion-config": gateway.loaded.hash}
    wanted = request.path_params["model"]
    for model in gateway.models():
        if model["id"] == wanted:
            return json_response(model, headers)
    return error_response(ModelNotFound(f"The model '{wanted}' does not exist", param="model"),
                          request_id, headers)
