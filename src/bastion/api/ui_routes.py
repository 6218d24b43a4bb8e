"""``/ui``: the operator dashboard, a static page and the JSON it reads.

    GET /ui                          the page (``api/ui/index.html``; no build step)
    GET /ui/static/{name}            its script and style sheet
    GET /ui/api/summary?window_s=300 the SLO view of the window, with breaker states
    GET /ui/api/requests             recent requests, newest first (limit, tenant, outcome,
                                     errors=1, before=<epoch s> to page back)
    GET /ui/api/requests/{id}        one request's path: stages, attempts, contract checks

Everything shown is the request journal's metadata (``observability.journal``): never a
prompt, a completion or a key. Tenants and costs are still an operator's view, so the JSON is
open only with ``auth.mode: off`` (loopback only, see ``bastion serve``) and otherwise needs the
admin key, like ``/admin``. The page itself holds no data and is served to anyone.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from bastion.api.auth import admin_guard
from bastion.api.errors import error_response
from bastion.api.request import request_id_of
from bastion.domain.errors import InvalidRequest, NotFound
from bastion.gateway import Gateway

UI_DIR = Path(__file__).parent / "ui"
_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}
#: The page's own resources may come only from bastion itself.
_PAGE_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
MIN_WINDOW_S, MAX_WINDOW_S = 60.0, 86_400.0
MAX_LIMIT = 500

Handler = Callable[[Request, Gateway], Awaitable[Any]]


async def page(request: Request) -> Response:
    index = UI_DIR / "index.html"
    if not index.is_file():  # an install without the package data
        return Response("the dashboard's files are not installed", status_code=404,
                        media_type="text/plain")
    return FileResponse(index, media_type=_STATIC_TYPES[".html"], headers=_PAGE_HEADERS)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    path = (UI_DIR / name).resolve()
    if (path.parent != UI_DIR.resolve() or path.suffix not in _STATIC_TYPES
            or not path.is_file()):
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type=_STATIC_TYPES[path.suffix], headers=_PAGE_HEADERS)


def _number(request: Request, name: str, default: float | None, low: float,
            high: float) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a number", param=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low:g} and {high:g}", param=name)
    return value


async def _summary(request: Request, gateway: Gateway) -> Any:
    window = _number(request, "window_s", 300.0, MIN_WINDOW_S, MAX_WINDOW_S)
    assert window is not None
    breakers = await gateway.pipeline.breaker_states()
    return await gateway.journal.summary(window, time.time(), breakers=breakers,
                                         config=gateway.loaded.hash)


async def _requests(request: Request, gateway: Gateway) -> Any:
    q = request.query_params
    limit = _number(request, "limit", 50, 1, MAX_LIMIT)
    if limit is None or limit != int(limit):
        raise InvalidRequest("'limit' must be a whole number", param="limit")
    before = _number(request, "before", None, 0, 1e12)
    data = await gateway.journal.recent(
        int(limit), tenant=q.get("tenant") or None, outcome=q.get("outcome") or None,
        errors_only=q.get("errors") in ("1", "true"), before=before)
    return {"object": "list", "data": data}


async def _one(request: Request, gateway: Gateway) -> Any:
    request_id = request.path_params["request_id"]
    event = await gateway.journal.get(request_id)
    if event is None:
        raise NotFound(f"no request {request_id!r} in the journal (it keeps the most recent "
                       "requests; see observability.journal)", param="request_id")
    return event


def _json(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        request_id = request_id_of(request, gateway.config.server.accept_request_id)
        headers = {"x-request-id": request_id, "x-bastion-config": gateway.loaded.hash,
                   "cache-control": "no-store"}
        try:
            if gateway.config.auth.mode != "off":
                admin_guard(request, gateway.config.auth)
            if not gateway.journal.enabled:
                raise NotFound("the request journal is off (observability.journal.enabled)")
            body = await handler(request, gateway)
        except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
            return error_response(exc, request_id, headers)
        return Response(orjson.dumps(body), media_type="application/json", headers=headers)

    return endpoint


def ui_routes() -> list[Route]:
    return [
        Route("/ui", page, methods=["GET"]),
        Route("/ui/static/{name}", static, methods=["GET"]),
        Route("/ui/api/summary", _json(_summary), methods=["GET"]),
        Route("/ui/api/requests", _json(_requests), methods=["GET"]),
        Route("/ui/api/requests/{request_id}", _json(_one), methods=["GET"]),
    ]
