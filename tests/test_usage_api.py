"""``GET /v1/usage`` over ASGI: sums grouped as asked, time ranges in epoch or ISO form, a bad
parameter is a 400 naming it, and a caller with a principal sees only its own tenant.

The app is built from the usage handlers alone around a stub gateway with exactly what they
use: ``ledger.store``, ``loaded.hash``, ``config.server.accept_request_id``, and for
``authenticated_usage`` also ``identity`` and ``config.auth``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.usage_routes import authenticated_usage, usage
from bastion.config import AuthConfig, LedgerConfig
from bastion.domain.identity import Principal
from bastion.domain.usage import UsageRow
from bastion.services.identity import IdentityService
from bastion.services.ledger import UsageLedger
from bastion.stores.identity import MemoryIdentityStore
from bastion.stores.ledger import MemoryLedgerStore

DAY1 = 1_735_689_600.0  # 2025-01-01T00:00:00Z
DAY2 = DAY1 + 86_400
ADMIN_ENV = "BASTION_TEST_USAGE_ADMIN_KEY"


def row(n: int, tenant: str, ts: float, *, route: str = "chat", outcome: str = "ok",
        cost: float = 0.5) -> UsageRow:
    return UsageRow(f"req_{n}", ts, tenant, None, route, "fast", "sim/primary", 10, 5, 0, cost,
                    50.0, outcome)


ROWS = [row(1, "acme", DAY1 + 1), row(2, "acme", DAY1 + 2, outcome="upstream_timeout"),
        row(3, "acme", DAY2 + 1, route="embeddings"), row(4, "beta", DAY2 + 2),
        row(5, "default", DAY2 + 3)]


async def as_acme(request: Request) -> Response:
    """What an authenticating layer in front of ``usage`` does: set the principal."""
    request.state.principal = Principal("acme", "key_1")
    return await usage(request)


@pytest.fixture
async def gateway() -> SimpleNamespace:
    store = MemoryLedgerStore()
    await store.write_many(ROWS)
    return SimpleNamespace(
        ledger=UsageLedger(store, LedgerConfig()),
        loaded=SimpleNamespace(hash="cfg-test"),
        config=SimpleNamespace(server=SimpleNamespace(accept_request_id=True),
                               auth=AuthConfig(mode="off", admin_key_env=ADMIN_ENV)),
        identity=IdentityService(MemoryIdentityStore()))


@pytest.fixture
async def client(gateway: SimpleNamespace) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=[Route("/v1/usage", usage, methods=["GET"]),
                            Route("/as-acme/usage", as_acme, methods=["GET"]),
                            Route("/auth/usage", authenticated_usage, methods=["GET"])])
    app.state.gateway = gateway
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
        yield c


async def get(client: httpx.AsyncClient, path: str = "/v1/usage", **params: Any) -> Any:
    resp = await client.get(path, params=params)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list"
    return body["data"]


async def test_default_groups_are_tenant_route_and_utc_day(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/usage", headers={"x-request-id": "req_usage_1"})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == "req_usage_1"
    assert resp.headers["x-bastion-config"] == "cfg-test"
    assert resp.headers["cache-control"] == "no-store"
    data = resp.json()["data"]
    assert [(d["tenant"], d["route"], d["day"], d["requests"]) for d in data] == [
        ("acme", "chat", "2025-01-01", 2), ("acme", "embeddings", "2025-01-02", 1),
        ("beta", "chat", "2025-01-02", 1), ("default", "chat", "2025-01-02", 1)]
    assert data[0]["errors"] == 1 and data[0]["cost_usd"] == 1.0
    assert data[0]["prompt_tokens"] == 20 and data[0]["completion_tokens"] == 10


async def test_group_by_a_chosen_list_or_nothing(client: httpx.AsyncClient) -> None:
    data = await get(client, group_by="target, tenant")
    assert [(d["target"], d["tenant"]) for d in data][:1] == [("sim/primary", "acme")]
    (total,) = await get(client, group_by="")
    assert total["requests"] == 5 and total["cost_usd"] == 2.5


@pytest.mark.parametrize(("since", "until", "expected"), [
    ("2025-01-02", None, 3),
    (None, "2025-01-01", 2),  # a bare date as `until` covers that whole day
    ("2025-01-01", "2025-01-01", 2),
    (str(int(DAY2)), None, 3),
    ("2025-01-01T00:00:01.5Z", "2025-01-02T00:00:02", 2),  # no offset means UTC
    ("2025-01-02T01:00:00+01:00", None, 3),
])
async def test_time_ranges(client: httpx.AsyncClient, since: str | None, until: str | None,
                           expected: int) -> None:
    params = {"group_by": "", **({"since": since} if since else {}),
              **({"until": until} if until else {})}
    data = await get(client, **params)
    assert sum(d["requests"] for d in data) == expected


async def test_one_tenant(client: httpx.AsyncClient) -> None:
    assert [d["tenant"] for d in await get(client, group_by="tenant", tenant="beta")] == ["beta"]
    assert await get(client, tenant="nobody") == []


@pytest.mark.parametrize(("params", "param"), [
    ({"group_by": "tenant,key_id"}, "group_by"),
    ({"since": "yesterday"}, "since"),
    ({"until": "2025-13-45"}, "until"),
    ({"since": "2025-01-02", "until": "2025-01-01T12:00:00Z"}, "until"),
])
async def test_bad_parameters_are_a_400_naming_them(client: httpx.AsyncClient,
                                                    params: dict[str, str], param: str) -> None:
    resp = await client.get("/v1/usage", params=params)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["request_id"] == resp.headers["x-request-id"]


async def test_a_principal_sees_only_its_own_tenant(client: httpx.AsyncClient) -> None:
    data = await get(client, "/as-acme/usage", group_by="tenant")
    assert [d["tenant"] for d in data] == ["acme"]
    assert [d["tenant"] for d in await get(client, "/as-acme/usage", group_by="tenant",
                                           tenant="acme")] == ["acme"]
    resp = await client.get("/as-acme/usage", params={"tenant": "beta"})
    assert resp.status_code == 403 and resp.json()["error"]["param"] == "tenant"


async def test_authenticated_usage_admin_sees_all_and_a_key_its_own_tenant(
        client: httpx.AsyncClient, gateway: SimpleNamespace,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADMIN_ENV, "admin-secret")
    tenant = await gateway.identity.create_tenant("beta")
    _, key = await gateway.identity.create_key(tenant.id, "ci")

    async def tenants(headers: dict[str, str]) -> list[str]:
        resp = await client.get("/auth/usage", params={"group_by": "tenant"}, headers=headers)
        assert resp.status_code == 200, resp.text
        return [d["tenant"] for d in resp.json()["data"]]

    assert await tenants({"authorization": "Bearer admin-secret"}) == ["acme", "beta",
                                                                       "default"]
    assert await tenants({"authorization": f"Bearer {key}"}) == ["beta"]
    assert await tenants({}) == ["default"]  # auth off, no key: the tenant `default`
    wrong = await client.get("/auth/usage", headers={"authorization": "Bearer bst_wrong"})
    assert wrong.status_code == 401


async def test_authenticated_usage_requires_a_key_when_auth_is_on(
        client: httpx.AsyncClient, gateway: SimpleNamespace) -> None:
    gateway.config.auth = AuthConfig(mode="required", admin_key_env=ADMIN_ENV)
    resp = await client.get("/auth/usage")
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
