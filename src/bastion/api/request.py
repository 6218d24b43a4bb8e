"""Turning an HTTP request into a parsed body and a ``RequestContext``.

Header contract (all optional):
- ``X-Request-ID``: reused as the request id when it is 1-128 safe characters.
- ``X-Bastion-Deadline``: the request's deadline in seconds, capped by the route's maximum.
- ``X-Bastion-Priority``: ``critical``, ``default`` or ``batch``.
- ``X-Bastion-Simulate``: a JSON fault spec for the simulated provider (tests and demos; see
  ``providers/simulated.py``).
- ``traceparent``: the caller's W3C trace context; the request joins that trace (see
  ``api.traces``). Invalid values are ignored.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request

from bastion.api.auth import principal_for
from bastion.api.headers import headers_of
from bastion.api.traces import join_trace
from bastion.domain.context import Priority, RequestContext, new_request_id
from bastion.domain.errors import ClientClosedRequest, InvalidRequest, PayloadTooLarge
from bastion.gateway import Gateway

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(request: Request, accept: bool) -> str:
    given = headers_of(request).get("x-request-id")
    if accept and given and _SAFE_ID.match(given):
        return given
    return new_request_id()


#: Where ``request_context`` leaves the request's context in the ASGI scope.
CTX_SCOPE_KEY = "bastion.ctx"


def raw_body_of(request: Request) -> bytes:
    """The body ``read_json`` read, as sent (for stages that hash it: idempotency)."""
    return request.scope["state"][_RAW_BODY]  # type: ignore[no-any-return]


#: Where ``read_json`` keeps the raw body: the scope's ``state`` (what ``request.state``
#: wraps), written directly rather than through a ``State`` object per request.
_RAW_BODY = "raw_body"


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, refusing oversized bodies before reading them whole.

    The raw bytes stay in the request's state (``raw_body_of``) for stages that hash the body
    as sent (idempotency), since the stream can be read only once. Read with ``receive``
    directly: almost every body arrives in one message, and Starlette's ``stream()`` is an
    async generator around the same loop."""
    declared = headers_of(request).get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {max_bytes}")
        except ValueError:
            raise InvalidRequest("Content-Length is not a number", param="content-length") \
                from None
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientClosedRequest("the client went away while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request.scope.setdefault("state", {})[_RAW_BODY] = raw
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object", param="body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", param="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", param="body")
    return data


def context_for(request: Request, gateway: Gateway, route: str,
                request_id: str) -> RequestContext:
    headers = headers_of(request)
    deadline_s: float | None = None
    raw_deadline = headers.get("x-bastion-deadline")
    if raw_deadline is not None:
        try:
            deadline_s = float(raw_deadline)
        except ValueError:
            deadline_s = -1.0
        if not (deadline_s > 0):
            raise InvalidRequest("X-Bastion-Deadline must be a positive number of seconds",
                                 param="x-bastion-deadline")
    priority = Priority.default
    raw_priority = headers.get("x-bastion-priority")
    if raw_priority is not None:
        try:
            priority = Priority(raw_priority.lower())
        except ValueError:
            raise InvalidRequest("X-Bastion-Priority must be critical, default or batch",
                                 param="x-bastion-priority") from None
    simulate = None
    raw_simulate = headers.get("x-bastion-simulate")
    if raw_simulate:
        try:
            simulate = orjson.loads(raw_simulate)
        except orjson.JSONDecodeError:
            simulate = None
        if not isinstance(simulate, dict):
            raise InvalidRequest("X-Bastion-Simulate must be a JSON object",
                                 param="x-bastion-simulate")
    return gateway.context(route=route, request_id=request_id, deadline_s=deadline_s,
                           priority=priority, simulate=simulate)


async def request_context(request: Request, gateway: Gateway, route: str,
                          request_id: str) -> RequestContext:
    """Authenticate the caller, then build the request's context with its tenant and key."""
    principal = await principal_for(request, gateway.identity, gateway.config.auth)
    request.scope.setdefault("state", {})["principal"] = principal  # ``request.state``
    ctx = context_for(request, gateway, route, request_id)
    ctx.tenant = principal.tenant_id
    ctx.key_id = principal.key_id
    traceparent = headers_of(request).get("traceparent")
    if traceparent is not None or gateway.tracer is not None:
        join_trace(ctx, traceparent, gateway.tracer)
    request.scope[CTX_SCOPE_KEY] = ctx  # for the completion log event and the trace
    return ctx
