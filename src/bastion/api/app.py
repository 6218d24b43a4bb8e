"""The app factory: a thin Starlette layer over one ``Gateway``.

Starlette rather than FastAPI: the hot routes parse their bodies with pydantic themselves and
render errors in the OpenAI shape, so FastAPI's dependency injection and response validation
would be pure overhead on every request.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from bastion.api.admin_routes import admin_routes
from bastion.api.answer_routes import answer
from bastion.api.anthropic_routes import create_message
from bastion.api.document_routes import document_routes
from bastion.api.errors import error_response
from bastion.api.health import health, ready
from bastion.api.metrics_routes import metrics
from bastion.api.openai_routes import chat_completions, embeddings, get_model, list_models
from bastion.api.request import CTX_SCOPE_KEY, request_id_of
from bastion.api.serving import tune_for_serving
from bastion.api.task_routes import list_tasks, run_task
from bastion.api.traces import export_trace
from bastion.api.ui_routes import ui_routes
from bastion.api.usage_routes import authenticated_usage
from bastion.domain.errors import InvalidRequest, NotFound
from bastion.gateway import Gateway
from bastion.observability.completion import flush_completions, record_completion
from bastion.observability.journal import RequestJournal
from bastion.observability.logging import configure_logging, flush_logs, take_error

CONFIG_ENV = "BASTION_CONFIG"

Endpoint = Callable[[Request], Awaitable[Response]]
#: Probes, scrapes and the dashboard's own polling: frequent, and nothing to explain.
_UNLOGGED = frozenset({"/health", "/ready", "/metrics"})
_UNLOGGED_PREFIX = "/ui"


def log_completion(scope: Scope, status: int, journal: RequestJournal | None = None) -> None:
    """Note the finished request for its metrics, its one ``request.completed`` event
    (metadata only; see ``observability.logging``) and its journal entry, which are written a
    batch at a time (``observability.completion``); its trace is exported now."""
    error = take_error()
    ctx = scope.get(CTX_SCOPE_KEY)
    if ctx is not None and ctx.span_id is not None:
        export_trace(scope, ctx, status, error)
    record_completion(ctx, scope["method"], scope["path"], status, error, journal)


class GatewayApp(Starlette):
    """Starlette, with the model-call endpoints dispatched before its middleware and router.

    Through Starlette's stack a request passes two middlewares and the route table, and each
    ``send`` two wrapping closures: 6.5 µs per plain request and 0.55 µs per streamed event
    more than calling the endpoint directly (measured in-process with a trivial endpoint),
    2-3% of bastion's CPU per chat completion. Those layers turn exceptions into responses, and
    the model-call endpoints already answer every failure in their API's error shape, so for
    an exact method and path they add nothing; their status comes from the response they
    return, so their ``send`` is not wrapped either. Everything else, and these paths too
    when the app is mounted under a root path, goes through Starlette as usual."""

    def __init__(self, *, gateway: Gateway, direct: Mapping[tuple[str, str], Endpoint],
                 journal: RequestJournal | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: What the endpoints serve (read by ``openai_routes._gateway``); also ``state.gateway``.
        self.gateway = gateway
        self._direct = dict(direct)
        self._journal = journal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        endpoint = (None if scope.get("root_path")
                    else self._direct.get((scope["method"], scope["path"])))
        if endpoint is not None:
            # The endpoint's response says its status: no wrapper around every ``send``.
            status = 500
            try:
                scope["app"] = self
                response = await endpoint(Request(scope, receive, send))
                status = response.status_code
                await response(scope, receive, send)
            finally:
                log_completion(scope, status, self._journal)
            return
        status_seen = [500]

        async def sent(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = message["status"]
            await send(message)

        try:
            await super().__call__(scope, receive, sent)
        finally:
            path = scope["path"]
            if path not in _UNLOGGED and not path.startswith(_UNLOGGED_PREFIX):
                log_completion(scope, status_seen[0], self._journal)


def create_app(gateway: Gateway | None = None, *, config_path: str | None = None,
               tune: bool = False) -> Starlette:
    """Build the app around ``gateway`` or, when None, one loaded from ``config_path`` (or the
    ``BASTION_CONFIG`` environment variable, or the embedded default). ``tune`` applies the
    server's interpreter settings once started (``api.serving``): for a process that
    only serves this app, as ``bastion serve`` workers do."""
    if gateway is None:
        gateway = Gateway.from_config(config_path or os.environ.get(CONFIG_ENV) or None)
    if not structlog.is_configured():
        configure_logging(os.environ.get("BASTION_LOG_LEVEL", "info"))  # JSON lines on stderr, redacted; an app may configure its own

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        if tune:
            tune_for_serving()
        try:
            yield
        finally:
            flush_completions()  # into the journal before it closes
            await gateway.aclose()
            flush_logs()

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
        Route("/v1/answer", answer, methods=["POST"]),
        *document_routes(),
        *admin_routes(),
        *ui_routes(),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    # Each of these answers every failure itself (see ``GatewayApp``).
    direct: dict[tuple[str, str], Endpoint] = {
        ("POST", "/v1/chat/completions"): chat_completions,
        ("POST", "/v1/messages"): create_message,
        ("POST", "/v1/embeddings"): embeddings,
    }
    app = GatewayApp(gateway=gateway, direct=direct, journal=gateway.journal, routes=routes,
                     lifespan=lifespan,
                     exception_handlers={404: not_found, 405: not_found})
    app.state.gateway = gateway
    return app


def app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` and multi-worker serving: config from the environment."""
    return create_app(tune=True)
