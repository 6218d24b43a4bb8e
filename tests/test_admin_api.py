"""The admin API and API-key authentication over real ASGI HTTP.

The app here is built from the admin routes alone around a stub gateway that has exactly what
the handlers use (``identity``, ``config.auth``, ``config.server.accept_request_id``,
``loaded.hash``), plus a ``/v1/models`` route that authenticates like the real ones, so the
official SDKs can be pointed at it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion.api.admin_routes import admin_routes
from bastion.api.auth import principal_for, token_from_headers
from bastion.api.errors import error_response
from bastion.api.http_protocol import HTTP_PROTOCOL
from bastion.config import AuthConfig
from bastion.services.identity import IdentityService
from bastion.stores.identity import MemoryIdentityStore
from tests.conftest import free_port

ADMIN_KEY = "admin-secret-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


async def whoami_models(request: Request) -> Response:
    """A stand-in for a /v1 route: authenticate, then answer in the models-list shape."""
    gateway = request.app.state.gateway
    try:
        principal = await principal_for(request, gateway.identity, gateway.config.auth)
    except Exception as exc:  # noqa: BLE001
        return error_response(exc, "req_test", {})
    gateway.seen.append(request.headers.get("authorization"))
    return JSONResponse({"object": "list", "data": [
        {"id": "whoami", "object": "model", "created": 0, "owned_by": principal.tenant_id,
         "key_id": principal.key_id}]})


def make_app(mode: str = "off") -> Starlette:
    app = Starlette(routes=[*admin_routes(), Route("/v1/models", whoami_models)])
    app.state.gateway = SimpleNamespace(
        identity=IdentityService(MemoryIdentityStore()),
        config=SimpleNamespace(auth=AuthConfig(mode=mode),  # type: ignore[arg-type]
                               server=SimpleNamespace(accept_request_id=True)),
        loaded=SimpleNamespace(hash="cfg123"), seen=[])
    return app


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Starlette:
    monkeypatch.setenv("BASTION_ADMIN_KEY", ADMIN_KEY)
    return make_app()


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://bastion.test") as client:
        yield client


def error_of(resp: httpx.Response) -> dict[str, Any]:
    return resp.json()["error"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- the admin key


async def test_the_admin_api_is_off_without_an_admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_ADMIN_KEY", raising=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app()),
                                 base_url="http://bastion.test") as http:
        resp = await http.get("/admin/tenants", headers=ADMIN)
    assert resp.status_code == 403
    assert error_of(resp)["message"] == "admin API disabled: set BASTION_ADMIN_KEY"
    assert error_of(resp)["type"] == "permission_error"


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"},
                                     {"authorization": f"Basic {ADMIN_KEY}"},
                                     {"x-api-key": ADMIN_KEY[:-1]}])
async def test_a_missing_or_wrong_admin_key_is_401(http: httpx.AsyncClient,
                                                   headers: dict[str, str]) -> None:
    resp = await http.post("/admin/tenants", json={"name": "acme"}, headers=headers)
    assert resp.status_code == 401
    assert error_of(resp)["type"] == "authentication_error"
    assert (await http.get("/admin/tenants", headers=ADMIN)).json()["data"] == []


async def test_the_admin_key_may_come_as_x_api_key(http: httpx.AsyncClient) -> None:
    resp = await http.get("/admin/tenants", headers={"x-api-key": ADMIN_KEY})
    assert resp.status_code == 200


# --------------------------------------------------------------------------- tenants


async def test_tenants_are_created_listed_and_unique(http: httpx.AsyncClient) -> None:
    resp = await http.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    assert resp.status_code == 201
    body = resp.json()
    assert body["object"] == "tenant" and body["id"] == "acme" and body["disabled"] is False
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["x-bastion-config"] == "cfg123" and resp.headers["x-request-id"]
    dup = await http.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    assert dup.status_code == 409 and error_of(dup)["param"] == "name"
    listed = await http.get("/admin/tenants", headers=ADMIN)
    assert [t["id"] for t in listed.json()["data"]] == ["acme"]


@pytest.mark.parametrize(("body", "param"), [({}, "name"), ({"name": 7}, "name"),
                                             ({"name": "Not A Slug"}, "name")])
async def test_a_bad_tenant_is_400_naming_the_field(http: httpx.AsyncClient, body: Any,
                                                    param: str) -> None:
    resp = await http.post("/admin/tenants", json=body, headers=ADMIN)
    assert resp.status_code == 400 and error_of(resp)["param"] == param


async def test_a_body_that_is_not_json_is_400(http: httpx.AsyncClient) -> None:
    resp = await http.post("/admin/tenants", content=b"name=acme", headers=ADMIN)
    assert resp.status_code == 400 and error_of(resp)["param"] == "body"


# --------------------------------------------------------------------------- keys


async def test_a_key_is_returned_once_then_listed_without_it(http: httpx.AsyncClient) -> None:
    await http.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    resp = await http.post("/admin/keys", json={"tenant": "acme", "name": "ci"}, headers=ADMIN)
    assert resp.status_code == 201
    created = resp.json()
    plaintext = created["key"]
    assert plaintext.startswith("bst_") and created["prefix"] == plaintext[:12]
    assert created["tenant_id"] == "acme" and created["revoked"] is False
    listed = await http.get("/admin/keys", params={"tenant": "acme"}, headers=ADMIN)
    assert [k["id"] for k in listed.json()["data"]] == [created["id"]]
    assert plaintext not in listed.text and "key" not in listed.json()["data"][0]
    everyone = await http.get("/admin/keys", headers=ADMIN)
    assert len(everyone.json()["data"]) == 1


async def test_keys_of_an_unknown_tenant_are_404(http: httpx.AsyncClient) -> None:
    resp = await http.post("/admin/keys", json={"tenant": "nobody"}, headers=ADMIN)
    assert resp.status_code == 404 and error_of(resp)["param"] == "tenant"
    listed = await http.get("/admin/keys", params={"tenant": "nobody"}, headers=ADMIN)
    assert listed.status_code == 404


@pytest.mark.parametrize(("body", "param"), [({}, "tenant"), ({"tenant": ["acme"]}, "tenant"),
                                             ({"tenant": "acme", "name": 3}, "name"),
                                             ({"tenant": "acme", "name": ""}, "name")])
async def test_a_bad_key_request_is_400_naming_the_field(http: httpx.AsyncClient, body: Any,
                                                         param: str) -> None:
    await http.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    resp = await http.post("/admin/keys", json=body, headers=ADMIN)
    assert resp.status_code == 400 and error_of(resp)["param"] == param


async def test_a_revoked_key_is_refused(app: Starlette, http: httpx.AsyncClient) -> None:
    await http.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    created = (await http.post("/admin/keys", json={"tenant": "acme"}, headers=ADMIN)).json()
    bearer = {"authorization": f"Bearer {created['key']}"}
    assert (await http.get("/v1/models", headers=bearer)).status_code == 200
    resp = await http.delete(f"/admin/keys/{created['id']}", headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["revoked"] is True
    refused = await http.get("/v1/models", headers=bearer)
    assert refused.status_code == 401 and error_of(refused)["code"] == "api_key_revoked"
    missing = await http.delete("/admin/keys/key_nope", headers=ADMIN)
    assert missing.status_code == 404


# --------------------------------------------------------------------------- API keys on /v1


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """``app`` under uvicorn on loopback, so the SDK uses its own HTTP client unchanged.
    (uvicorn installs no signal handlers off the main thread.)"""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           http=HTTP_PROTOCOL, proxy_headers=False,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_openai_sdk_sends_the_key_as_bearer(app: Starlette) -> None:
    with serve(app) as base, httpx.Client(base_url=base, headers=ADMIN) as http:
        http.post("/admin/tenants", json={"name": "acme"})
        created = http.post("/admin/keys", json={"tenant": "acme"}).json()
        client = openai.OpenAI(api_key=created["key"], base_url=base + "/v1", max_retries=0)
        assert client.models.list().data[0].owned_by == "acme"
        assert app.state.gateway.seen[-1] == f"Bearer {created['key']}"
        wrong = openai.OpenAI(api_key="bst_not-a-real-key", base_url=base + "/v1",
                              max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


async def test_the_anthropic_style_header_works_too(http: httpx.AsyncClient) -> None:
    await http.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
    created = (await http.post("/admin/keys", json={"tenant": "acme"}, headers=ADMIN)).json()
    resp = await http.get("/v1/models", headers={"x-api-key": created["key"]})
    assert resp.json()["data"][0]["key_id"] == created["id"]


async def test_with_auth_off_placeholders_run_as_default_but_real_keys_count(
        http: httpx.AsyncClient) -> None:
    for headers in ({}, {"authorization": "Bearer unused"}, {"x-api-key": "sk-no-key"}):
        resp = await http.get("/v1/models", headers=headers)
        assert resp.json()["data"][0]["owned_by"] == "default"
    bad = await http.get("/v1/models", headers={"authorization": "Bearer bst_wrong"})
    assert bad.status_code == 401  # a bastion key that is wrong must say so


async def test_with_auth_required_every_request_needs_a_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_ADMIN_KEY", ADMIN_KEY)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app("required")),
                                 base_url="http://bastion.test") as http:
        for headers in ({}, {"authorization": "Bearer unused"}):
            resp = await http.get("/v1/models", headers=headers)
            assert resp.status_code == 401 and error_of(resp)["type"] == "authentication_error"
        await http.post("/admin/tenants", json={"name": "acme"}, headers=ADMIN)
        key = (await http.post("/admin/keys", json={"tenant": "acme"}, headers=ADMIN)).json()
        ok = await http.get("/v1/models", headers={"authorization": f"Bearer {key['key']}"})
        assert ok.json()["data"][0]["owned_by"] == "acme"


def test_tokens_are_read_from_bearer_first_then_x_api_key() -> None:
    assert token_from_headers({"authorization": "Bearer  abc "}) == "abc"
    assert token_from_headers({"authorization": "bearer abc", "x-api-key": "def"}) == "abc"
    assert token_from_headers({"authorization": "Basic abc", "x-api-key": "def"}) == "def"
    assert token_from_headers({"authorization": "Bearer "}) is None
    assert token_from_headers({}) is None
