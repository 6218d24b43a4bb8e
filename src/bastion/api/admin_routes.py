"""The admin API: tenants and API keys, behind the admin key (see ``api/auth.admin_guard``).

    POST   /admin/tenants        {"name": "acme"}               201 the tenant
    GET    /admin/tenants                                       200 {"object": "list", "data"}
    POST   /admin/keys           {"tenant": "acme", "name": ""} 201 the key, with "key" once
    GET    /admin/keys?tenant=acme                              200 {"object": "list", "data"}
    DELETE /admin/keys/{key_id}                                 200 the revoked key

Handlers are plain Starlette endpoints that read ``request.app.state.gateway`` like every other
route, and use only its ``identity``, ``config.auth``, ``config.server.accept_request_id`` and
``loaded.hash``. Errors leave in the OpenAI shape. Every answer is ``Cache-Control: no-store``:
one of them carries a plaintext key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.auth import admin_guard
from bastion.api.errors import error_response
from bastion.api.request import read_json, request_id_of
from bastion.domain.errors import InvalidRequest
from bastion.domain.identity import ApiKey, Tenant
from bastion.services.identity import IdentityService

#: Admin bodies are a name or two; anything larger is a mistake.
_MAX_BODY_BYTES = 64 * 1024

Action = Callable[[Request, IdentityService], Awaitable[tuple[int, Any]]]


def tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {"object": "tenant", "id": tenant.id, "name": tenant.name,
            "created_at": tenant.created_at, "disabled": tenant.disabled}


def key_json(key: ApiKey) -> dict[str, Any]:
    return {"object": "api_key", "id": key.id, "tenant_id": key.tenant_id, "name": key.name,
            "prefix": key.prefix, "created_at": key.created_at, "revoked_at": key.revoked_at,
            "revoked": key.revoked}


def _listing(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": items}


def _text(body: dict[str, Any], field: str, default: str | None = None) -> str:
    value = body.get(field, default)
    if value is None:
        raise InvalidRequest(f"'{field}' is required", param=field)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{field}' must be a string", param=field)
    return value


async def _run(request: Request, action: Action) -> Response:
    gateway = request.app.state.gateway
    request_id = request_id_of(request, gateway.config.server.accept_request_id)
    headers = {"x-request-id": request_id, "x-bastion-config": gateway.loaded.hash,
               "cache-control": "no-store"}
    try:
        admin_guard(request, gateway.config.auth)
        status, body = await action(request, gateway.identity)
    except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
        return error_response(exc, request_id, headers)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


async def _create_tenant(request: Request, identity: IdentityService) -> tuple[int, Any]:
    body = await read_json(request, _MAX_BODY_BYTES)
    return 201, tenant_json(await identity.create_tenant(_text(body, "name")))


async def _list_tenants(request: Request, identity: IdentityService) -> tuple[int, Any]:
    return 200, _listing([tenant_json(t) for t in await identity.list_tenants()])


async def _create_key(request: Request, identity: IdentityService) -> tuple[int, Any]:
    body = await read_json(request, _MAX_BODY_BYTES)
    key, plaintext = await identity.create_key(_text(body, "tenant"),
                                               _text(body, "name", "default"))
    return 201, {**key_json(key), "key": plaintext}


async def _list_keys(request: Request, identity: IdentityService) -> tuple[int, Any]:
    tenant = request.query_params.get("tenant") or None
    return 200, _listing([key_json(k) for k in await identity.list_keys(tenant)])


async def _revoke_key(request: Request, identity: IdentityService) -> tuple[int, Any]:
    return 200, key_json(await identity.revoke_key(request.path_params["key_id"]))


async def create_tenant(request: Request) -> Response:
    return await _run(request, _create_tenant)


async def list_tenants(request: Request) -> Response:
    return await _run(request, _list_tenants)


async def create_key(request: Request) -> Response:
    return await _run(request, _create_key)


async def list_keys(request: Request) -> Response:
    return await _run(request, _list_keys)


async def revoke_key(request: Request) -> Response:
    return await _run(request, _revoke_key)


def admin_routes() -> list[Route]:
    """The admin routes, to add to the app's route list."""
    return [
        Route("/admin/tenants", create_tenant, methods=["POST"]),
        Route("/admin/tenants", list_tenants, methods=["GET"]),
        Route("/admin/keys", create_key, methods=["POST"]),
        Route("/admin/keys", list_keys, methods=["GET"]),
        Route("/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
    ]
