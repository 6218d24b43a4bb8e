"""``POST /v1/answer``: a question answered from the caller's documents, with citations.

Body: ``{"question": "...", "collections": [...], "principals": [...], "max_chunks": n}``.
``collections`` empty means all of the tenant's; ``principals`` are the end user's (``user:alice``,
``group:support``) as the calling backend vouches for them: documents with an access list are
searched only when it shares one of them. The tenant always comes from the API key.
"""

from __future__ import annotations

import secrets

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from bastion.api.disconnect import until_disconnect
from bastion.api.errors import error_response
from bastion.api.openai_routes import json_response, outcome_headers
from bastion.api.request import read_json, request_context, request_id_of
from bastion.domain.answer import AnswerBody
from bastion.domain.context import RequestContext
from bastion.gateway import Gateway, invalid_from_validation


async def answer(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    server = gateway.config.server
    request_id = request_id_of(request, server.accept_request_id)
    ctx: RequestContext | None = None
    try:
        ctx = await request_context(request, gateway, "answer", request_id)
        body = await read_json(request, server.max_body_bytes)
        try:
            query = AnswerBody.model_validate(body).query()
        except ValidationError as exc:
            raise invalid_from_validation(exc) from None
        result = await until_disconnect(request, gateway.answer(query, ctx))
        headers = outcome_headers(ctx, gateway.loaded.hash)
        headers["x-bastion-answer-outcome"] = result.outcome.value
        return json_response({"id": "ans_" + secrets.token_hex(12), **result.body(),
                              "target": ctx.target, "request_id": request_id}, headers)
    except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
        headers = (outcome_headers(ctx, gateway.loaded.hash) if ctx else
                   {"x-request-id": request_id, "x-bastion-config": gateway.loaded.hash})
        return error_response(exc, request_id, headers)
