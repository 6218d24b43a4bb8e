"""Named tasks over HTTP: ``POST /v1/tasks/{name}`` with ``{"input": {...}}``, and the list."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from bastion.api.disconnect import until_disconnect
from bastion.api.errors import error_response
from bastion.api.idempotent import idempotent
from bastion.api.openai_routes import json_response, outcome_headers
from bastion.api.request import read_json, request_context, request_id_of
from bastion.domain.context import RequestContext
from bastion.domain.errors import InvalidRequest
from bastion.gateway import Gateway


async def run_task(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    server = gateway.config.server
    request_id = request_id_of(request, server.accept_request_id)
    base = {"x-request-id": request_id, "x-bastion-config": gateway.loaded.hash}
    ctx: RequestContext | None = None
    try:
        ctx = await request_context(request, gateway, "tasks", request_id)
        body = await read_json(request, server.max_body_bytes)
        unknown = sorted(set(body) - {"input"})
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r}; send {{\"input\": {{...}}}}",
                                 param=unknown[0])
        if "input" not in body:
            raise InvalidRequest("the body must be {\"input\": {...}}", param="input")
        admitted, name = ctx, request.path_params["name"]

        async def handle() -> Response:
            try:
                result = await until_disconnect(request, gateway.task(name, body["input"],
                                                                      admitted))
            except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
                return error_response(exc, request_id,
                                      outcome_headers(admitted, gateway.loaded.hash))
            headers = outcome_headers(admitted, gateway.loaded.hash)
            headers["x-bastion-task-fallback"] = "true" if result.fallback_used else "false"
            return json_response(result.body(), headers)

        return await idempotent(request, gateway, ctx, f"tasks/{name}", handle)
    except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
        headers = outcome_headers(ctx, gateway.loaded.hash) if ctx else base
        return error_response(exc, request_id, headers)


async def list_tasks(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    request_id = request_id_of(request, gateway.config.server.accept_request_id)
    data = [{"name": name, "object": "task", "description": task.config.description,
             "model": task.config.model, "prompt": task.template.ref,
             "input_schema": task.config.input_schema,
             "output_schema": task.config.output_schema,
             "has_fallback": task.fallback is not None}
            for name, task in gateway.task_service.tasks.items()]
    return json_response({"object": "list", "data": data},
                         {"x-request-id": request_id, "x-bastion-config": gateway.loaded.hash})
