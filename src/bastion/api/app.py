"""The app factory: a thin Starlette layer over one ``Gateway``.

Starlette rather than FastAPI: the hot routes parse their bodies with pydantic themselves and
render errors in the OpenAI shape, so FastAPI's dependency injection and response validation
would be pure overhead on every request.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.admin_routes import admin_routes
from bastion.api.anthropic_routes import create_message
from bastion.api.errors import error_response
from bastion.api.health import health, ready
from bastion.api.metrics_routes import metrics
from bastion.api.openai_routes import chat_completions, embeddings, get_model, list_models
from bastion.api.request import request_id_of
from bastion.api.task_routes import list_tasks, run_task
from bastion.api.usage_routes import authenticated_usage
from bastion.domain.errors import InvalidRequest, NotFound
from bastion.gateway import Gateway

CONFIG_ENV = "BASTION_CONFIG"


def create_app(gateway: Gateway | None = None, *, config_path: str | None = None) -> Starlette:
    """Build the app around ``gateway`` or, when None, one loaded from ``config_path`` (or the
    ``BASTION_CONFIG`` environment variable, or the embedded default)."""
    if gateway is None:
        gateway = Gateway.from_config(config_path or os.environ.get(CONFIG_ENV) or None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.aclose()

    async def not_found(request: Request, exc: Any) -> Response:
        request_id = request_id_of(request, gateway.config.server.accept_request_id)
        status = getattr(exc, "status_code", 404)
        err = (NotFound(f"no route for {request.method} {request.url.path}")
               if status == 404 else
               InvalidRequest(f"{request.method} is not allowed on {request.url.path}"))
        if status == 405:
            err.status = 405
            err.code = "method_not_allowed"
        return error_response(err, request_id, {"x-request-id": request_id,
                                                "x-bastion-config": gateway.loaded.hash})

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/messages", create_message, methods=["POST"]),
        Route("/v1/tasks", list_tasks, methods=["GET"]),
        Route("/v1/tasks/{name}", run_task, methods=["POST"]),
        Route("/v1/usage", authenticated_usage, methods=["GET"]),
        *admin_routes(),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_found})
    app.state.gateway = gateway
    return app


def app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` and multi-worker serving: config from the environment."""
    return create_app()
