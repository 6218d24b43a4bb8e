"""``/v1/documents`` over real HTTP on loopback: ingest (201, then 200 unchanged), show, list,
delete and re-index; every bad input is a 4xx in the OpenAI error shape naming the field,
never a 500; and a key of one tenant can neither see nor touch another tenant's documents.

One gateway serves the whole module (auth required, small body and document limits), with
the real MiniLM embedder shared with ``test_ingest``."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
import uvloop

from bastion.api.http_protocol import HTTP_PROTOCOL
from bastion.gateway import Gateway
from bastion.services.ingest import IngestService
from tests.conftest import SIM_CONFIG, free_port, make_gateway
from tests.test_extract import make_pdf
from tests.test_ingest import real_embedder

CONFIG = SIM_CONFIG + """
auth: {mode: required}
server: {max_body_bytes: 65536}
retrieval: {max_document_bytes: 20000, chunking: {max_tokens: 64, overlap_tokens: 8}}
"""


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread cannot own signals
        pass


class Live:
    def __init__(self, gateway: Gateway, base_url: str, loop: asyncio.AbstractEventLoop,
                 keys: dict[str, str]) -> None:
        self.gateway, self.base_url, self.loop, self.keys = gateway, base_url, loop, keys

    def client(self, tenant: str | None) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.keys[tenant]}"} if tenant else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


def _app(gateway: Gateway) -> Any:
    from bastion.api.app import create_app

    return create_app(gateway)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    gateway = make_gateway(CONFIG)
    embedder = real_embedder()
    gateway.embedder = embedder
    gateway.ingest = IngestService(gateway.index, embedder, gateway.config.retrieval)
    port = free_port()
    server = _Server(uvicorn.Config(_app(gateway), host="127.0.0.1", port=port, loop="none",
                                    http=HTTP_PROTOCOL, proxy_headers=False,
                                    log_level="warning", access_log=False, lifespan="on"))
    holder: dict[str, Any] = {}

    def target() -> None:
        loop = uvloop.new_event_loop()
        holder["loop"] = loop
        loop.run_until_complete(server.serve())
        loop.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the gateway did not start"
        time.sleep(0.01)

    async def keys() -> dict[str, str]:
        out = {}
        for tenant in ("acme", "beta"):
            await gateway.identity.create_tenant(tenant)
            out[tenant] = (await gateway.identity.create_key(tenant, "docs"))[1]
        return out

    plaintext = asyncio.run_coroutine_threadsafe(keys(), holder["loop"]).result(10)
    try:
        yield Live(gateway, f"http://127.0.0.1:{port}", holder["loop"], plaintext)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def acme(live: Live) -> Iterator[httpx.Client]:
    with live.client("acme") as client:
        yield client


@pytest.fixture(scope="module")
def beta(live: Live) -> Iterator[httpx.Client]:
    with live.client("beta") as client:
        yield client


def error(resp: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    err = resp.json()["error"]
    assert err["param"] == param, err
    assert err["message"] and err["request_id"] == resp.headers["x-request-id"]
    return err


def post(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/documents", json={"collection": "c", "doc_id": "d", **body})


# --------------------------------------------------------------------------- the happy path


def test_ingest_then_unchanged_then_show_and_list(acme: httpx.Client) -> None:
    body = {"collection": "handbook", "doc_id": "leave", "title": "Leave policy",
            "text": "# Leave\n\nEmployees get 25 days of paid leave per year.",
            "media_type": "text/markdown", "metadata": {"team": "hr"},
            "access": ["group:staff"]}
    created = acme.post("/v1/documents", json=body)
    assert created.status_code == 201, created.text
    doc = created.json()
    assert doc["object"] == "document" and doc["changed"] is True
    assert (doc["collection"], doc["doc_id"], doc["title"], doc["status"]) == (
        "handbook", "leave", "Leave policy", "indexed")
    assert (doc["media_type"], doc["metadata"], doc["access"]) == (
        "text/markdown", {"team": "hr"}, ["group:staff"])
    assert doc["chunk_count"] == 1 and doc["embedding_model"] == "all-MiniLM-L6-v2-int8"
    again = acme.post("/v1/documents", json=body)
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["content_hash"] == doc["content_hash"]
    shown = acme.get("/v1/documents/handbook/leave")
    assert shown.status_code == 200
    assert shown.json() == {k: v for k, v in doc.items() if k != "changed"}
    listed = acme.get("/v1/documents", params={"collection": "handbook"}).json()
    assert listed["object"] == "list" and listed["has_more"] is False
    assert [d["doc_id"] for d in listed["data"]] == ["leave"]


def test_a_pdf_is_sent_as_base64(acme: httpx.Client) -> None:
    pdf = make_pdf([["Quarterly results were strong."], ["Revenue grew."]], title="Q3")
    resp = post(acme, collection="reports", doc_id="q3",
                content_base64=base64.b64encode(pdf).decode(), filename="q3.pdf")
    assert resp.status_code == 201, resp.text
    assert (resp.json()["media_type"], resp.json()["title"]) == ("application/pdf", "Q3")


def test_delete_then_it_is_gone(acme: httpx.Client) -> None:
    assert post(acme, collection="tmp", doc_id="x", text="Short lived.").status_code == 201
    resp = acme.delete("/v1/documents/tmp/x")
    assert resp.status_code == 200
    assert resp.json() == {"object": "document.deleted", "collection": "tmp", "doc_id": "x",
                           "deleted": True}
    error(acme.get("/v1/documents/tmp/x"), 404, "doc_id")
    error(acme.delete("/v1/documents/tmp/x"), 404, "doc_id")


def test_reindex_and_a_failed_document_shows_its_reason(acme: httpx.Client) -> None:
    assert post(acme, collection="re", doc_id="a", text="Some text.").status_code == 201
    resp = acme.post("/v1/documents/re/a/reindex")
    assert resp.status_code == 200 and resp.json()["status"] == "indexed"
    error(acme.post("/v1/documents/re/missing/reindex"), 404, "doc_id")
    error(post(acme, collection="re", doc_id="bad",
               content_base64=base64.b64encode(b"\x89PNG\r\n\x1a\n\x00").decode()),
          400, "content_base64")
    failed = acme.get("/v1/documents/re/bad").json()
    assert failed["status"] == "failed" and "PNG" in failed["reason"]
    assert error(acme.post("/v1/documents/re/bad/reindex"), 409, None)["code"] == "no_source"


def test_listing_pages_with_a_cursor(acme: httpx.Client) -> None:
    for name in ("p1", "p2", "p3"):
        assert post(acme, collection="paged", doc_id=name, text=f"Page {name}.").status_code \
            == 201
    first = acme.get("/v1/documents", params={"collection": "paged", "limit": 2}).json()
    assert [d["doc_id"] for d in first["data"]] == ["p1", "p2"]
    assert first["has_more"] and first["next_after"] == "paged/p2"
    rest = acme.get("/v1/documents", params={"collection": "paged",
                                             "after": first["next_after"]}).json()
    assert [d["doc_id"] for d in rest["data"]] == ["p3"] and not rest["has_more"]
    short = acme.get("/v1/documents", params={"collection": "paged", "after": "p2"}).json()
    assert [d["doc_id"] for d in short["data"]] == ["p3"]
    everything = acme.get("/v1/documents", params={"limit": 1000}).json()["data"]
    assert {"paged"} <= {d["collection"] for d in everything}
    error(acme.get("/v1/documents", params={"limit": 0}), 400, "limit")
    error(acme.get("/v1/documents", params={"limit": "many"}), 400, "limit")
    error(acme.get("/v1/documents", params={"after": "p2"}), 400, "after")
    error(acme.get("/v1/documents", params={"collection": "bad name"}), 400, "collection")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"text": ""}, 400, "text"),
    ({"text": "  \n\t "}, 400, "text"),
    ({"text": "x" * 30_000}, 413, "text"),  # over retrieval.max_document_bytes
    ({"content_base64": base64.b64encode(bytes(range(1, 256)) * 8).decode()}, 400,
     "content_base64"),
    ({"content_base64": "not base64!"}, 400, "content_base64"),
    ({"content_base64": 42}, 400, "content_base64"),
    ({"text": "hello", "media_type": "image/png"}, 400, "media_type"),
    ({"text": "hello", "media_type": "application/pdf"}, 400, "text"),
    ({"text": "a", "content_base64": "YQ=="}, 400, "content_base64"),
    ({}, 400, "text"),
    ({"text": 12}, 400, "text"),
    ({"text": "ok", "surprise": 1}, 400, "surprise"),
    ({"text": "ok", "doc_id": "a/b"}, 400, "doc_id"),
    ({"text": "ok", "collection": ""}, 400, "collection"),
    ({"text": "ok", "metadata": {"deep": {"x": 1}}}, 400, "metadata.deep"),
    ({"text": "ok", "metadata": "tags"}, 400, "metadata"),
    ({"text": "ok", "access": "user:alice"}, 400, "access"),
    ({"text": "ok", "access": ["nobody"]}, 400, "access"),
    ({"text": "ok", "title": 7}, 400, "title"),
])
def test_bad_input_is_a_clear_error_naming_the_field(acme: httpx.Client, body: dict[str, Any],
                                                     status: int, param: str) -> None:
    err = error(post(acme, **{"collection": "bad", "doc_id": "input", **body}), status, param)
    assert err["type"] == "invalid_request_error"


def test_missing_ids_and_bodies_that_are_not_json_objects(acme: httpx.Client) -> None:
    error(acme.post("/v1/documents", json={"doc_id": "d", "text": "x"}), 400, "collection")
    error(acme.post("/v1/documents", json={"collection": "c", "text": "x"}), 400, "doc_id")
    error(acme.post("/v1/documents", content=b"{not json"), 400, "body")
    error(acme.post("/v1/documents", json=["a", "list"]), 400, "body")
    error(acme.post("/v1/documents", content=b""), 400, "body")


def test_a_body_over_the_server_limit_is_413_before_it_is_read(acme: httpx.Client) -> None:
    huge = base64.b64encode(b"word " * 20_000).decode()  # ~133 kB of JSON
    err = error(post(acme, content_base64=huge), 413, "body")
    assert "bastion ingest" in err["message"]


def test_accepted_data_survives_bad_input(acme: httpx.Client) -> None:
    assert post(acme, collection="keep", doc_id="d", text="Original text.").status_code == 201
    error(post(acme, collection="keep", doc_id="d", text=""), 400, "text")
    error(post(acme, collection="keep", doc_id="d", text="x" * 30_000), 413, "text")
    doc = acme.get("/v1/documents/keep/d").json()
    assert doc["chunk_count"] == 1  # the indexed version is still there, marked failed
    assert doc["status"] == "failed" and doc["reason"] == "the document is empty"


def test_no_junk_body_is_a_500(acme: httpx.Client) -> None:
    junk: list[Any] = [None, 1, "s", [], {"collection": None, "doc_id": None},
                       {"collection": ["x"], "doc_id": {"y": 1}, "text": "t"},
                       {"collection": "c", "doc_id": "d", "text": "\ud7ff\ufffe\u0000x"},
                       {"collection": "c", "doc_id": "d", "content_base64": "===="},
                       {"collection": "c", "doc_id": "d", "text": "<html><script>",
                        "media_type": "text/html"},
                       {"collection": "c", "doc_id": "d", "text": "ok", "access": [None]},
                       {"collection": "c", "doc_id": "d", "text": "ok", "metadata": {"": 1}},
                       {"collection": "c", "doc_id": "d", "text": "ok",
                        "media_type": "text/plain; charset=\"bogus"}]
    for body in junk:
        resp = acme.post("/v1/documents", json=body)
        assert resp.status_code < 500, (body, resp.text)
        assert resp.status_code in (200, 201) or "error" in resp.json()


# --------------------------------------------------------------------------- tenants


def test_a_key_needs_to_be_valid(live: Live) -> None:
    with live.client(None) as anonymous:
        assert anonymous.get("/v1/documents").status_code == 401
        assert post(anonymous, text="x").status_code == 401
    with httpx.Client(base_url=live.base_url, headers={"x-api-key": "bst_wrong"}) as wrong:
        assert wrong.get("/v1/documents/handbook/leave").status_code == 401


def test_a_tenant_cannot_see_or_touch_another_tenants_documents(acme: httpx.Client,
                                                                beta: httpx.Client) -> None:
    assert post(acme, collection="secret", doc_id="plan", text="Acme's plan.").status_code \
        in (200, 201)
    error(beta.get("/v1/documents/secret/plan"), 404, "doc_id")
    error(beta.delete("/v1/documents/secret/plan"), 404, "doc_id")
    error(beta.post("/v1/documents/secret/plan/reindex"), 404, "doc_id")
    assert beta.get("/v1/documents", params={"collection": "secret"}).json()["data"] == []
    assert all(d["collection"] != "secret" for d in beta.get("/v1/documents").json()["data"])
    # the same ids in another tenant are another document
    own = post(beta, collection="secret", doc_id="plan", text="Beta's own plan.")
    assert own.status_code == 201
    assert acme.get("/v1/documents/secret/plan").json()["content_hash"] != \
        own.json()["content_hash"]
    assert acme.get("/v1/documents/secret/plan").json()["status"] == "indexed"
