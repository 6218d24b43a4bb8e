"""``GET /v1/usage``: the usage ledger, summed by tenant, route, day or target.

Query parameters (all optional):

- ``group_by``: a comma list of ``tenant``, ``route``, ``day`` (UTC date), ``target``;
  default ``tenant,route,day``; empty (``group_by=``) gives one row of totals.
- ``since`` / ``until``: epoch seconds, an ISO date (``2025-01-31``, UTC) or an ISO datetime
  (``2025-01-31T12:00:00Z``; no offset means UTC). ``since`` is inclusive and ``until``
  exclusive, except that a bare *date* as ``until`` includes that whole day, so
  ``since=2025-01-31&until=2025-01-31`` is that one day.
- ``tenant``: only this tenant's rows.

Answers ``{"object": "list", "data": [{<group columns>, requests, errors, prompt_tokens,
completion_tokens, cached_tokens, cost_usd, avg_latency_ms}, ...]}``; a bad parameter is a 400
in the OpenAI error shape naming it in ``param``. Rows still queued in the ledger (at most
``ledger.flush_interval_s`` old) are not counted yet.

Tenant scoping is decided by whoever sets ``request.state.principal`` (an object with
``tenant_id``): with one, the report is forced to that tenant, and asking for another tenant
is a 403. ``usage`` itself authenticates nobody; ``authenticated_usage`` does (the admin key
sees every tenant, an API key only its own), and is what a server should mount.
"""

from __future__ import annotations

import hmac
import re
from datetime import UTC, date, datetime, timedelta

import orjson
from starlette.requests import Request
from starlette.responses import Response

from bastion.api.auth import principal_for, token_from_headers
from bastion.api.errors import error_response
from bastion.api.request import request_id_of
from bastion.config import AuthConfig, read_secret
from bastion.domain.errors import Forbidden, InvalidRequest
from bastion.stores.ledger import GROUPS

DEFAULT_GROUP_BY = "tenant,route,day"
_EPOCH = re.compile(r"^\d{1,12}(\.\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_group_by(text: str) -> list[str]:
    """``tenant,route`` as a list; ``InvalidRequest`` (param ``group_by``) for anything else."""
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InvalidRequest(f"cannot group by {', '.join(map(repr, unknown))}; use a comma "
                             f"list of {', '.join(GROUPS)}", param="group_by")
    return list(dict.fromkeys(groups))


def parse_instant(text: str, param: str, *, end_of_day: bool = False) -> float:
    """Epoch seconds from epoch seconds, an ISO date or an ISO datetime (naive means UTC).
    With ``end_of_day`` a bare date means the midnight *after* it, so an exclusive upper
    bound still covers the whole day."""
    text = text.strip()
    try:
        if _EPOCH.match(text):
            return float(text)
        if _DATE.match(text):
            day = date.fromisoformat(text) + timedelta(days=1 if end_of_day else 0)
            return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        moment = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    raise InvalidRequest(f"'{param}' must be epoch seconds, an ISO date (2025-01-31) or an ISO "
                         f"datetime (2025-01-31T12:00:00Z); got {text[:64]!r}", param=param)


def _scoped_tenant(request: Request, asked: str | None) -> str | None:
    principal = getattr(request.state, "principal", None)
    if principal is None:
        return asked
    own: str = principal.tenant_id
    if asked is not None and asked != own:
        raise Forbidden(f"this caller may see only the usage of tenant {own!r}",
                        param="tenant")
    return own


async def usage(request: Request) -> Response:
    gateway = request.app.state.gateway
    request_id = request_id_of(request, gateway.config.server.accept_request_id)
    headers = {"x-request-id": request_id, "x-bastion-config": gateway.loaded.hash,
               "cache-control": "no-store"}
    try:
        query = request.query_params
        group_by = parse_group_by(query.get("group_by", DEFAULT_GROUP_BY))
        since = parse_instant(query["since"], "since") if query.get("since") else None
        until = (parse_instant(query["until"], "until", end_of_day=True)
                 if query.get("until") else None)
        if since is not None and until is not None and since >= until:
            raise InvalidRequest("'until' must be after 'since'", param="until")
        tenant = _scoped_tenant(request, query.get("tenant") or None)
        data = await gateway.ledger.store.aggregate(group_by, since, until, tenant)
    except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
        return error_response(exc, request_id, headers)
    return Response(orjson.dumps({"object": "list", "data": data}),
                    media_type="application/json", headers=headers)


def _is_admin(request: Request, auth: AuthConfig) -> bool:
    expected = read_secret(auth.admin_key_env)
    given = token_from_headers(request.headers)
    return bool(expected and given and hmac.compare_digest(given.encode(), expected.encode()))


async def authenticated_usage(request: Request) -> Response:
    """``usage`` behind authentication: the admin key sees every tenant; any other caller is
    authenticated like a ``/v1`` request and sees only its own tenant (with ``auth.mode:
    off`` and no bastion key, that is the tenant ``default``)."""
    gateway = request.app.state.gateway
    if not _is_admin(request, gateway.config.auth):
        try:
            request.state.principal = await principal_for(request, gateway.identity,
                                                          gateway.config.auth)
        except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
            request_id = request_id_of(request, gateway.config.server.accept_request_id)
            return error_response(exc, request_id, {
                "x-request-id": request_id, "x-bastion-config": gateway.loaded.hash})
    return await usage(request)
