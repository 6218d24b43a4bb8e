"""``POST /v1/answer`` end to end: documents ingested over HTTP, answered with checked
citations by a (simulated) model or the extractive answerer, never across tenants or access
lists — including through citations, which a hypothesis property checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.config import parse_config
from bastion.domain.answer import AnswerOutcome, AnswerQuery
from bastion.gateway import Gateway
from bastion.services.answer import AnswerService
from bastion.services.ingest import IngestService
from tests.conftest import LiveGateway, run_live
from tests.test_ingest import real_embedder

CONFIG = """
version: 1
providers:
  sim: {type: simulated, seed: 5}
models:
  writer:
    targets: [{provider: sim, model: primary, retries: 0, timeout_s: 2}]
auth: {mode: required}
answer: {model: writer}
"""
DOCS = {
    # (tenant, collection, doc_id, access) -> text
    ("acme", "health", "vitd", ()):
        "Supplementation with vitamin D reduces fracture risk in elderly women.",
    ("acme", "health", "payroll", ("group:hr",)):
        "Vitamin D bonuses for the payroll team are paid in March.",
    ("acme", "pets", "cats", ()): "Cats sleep about fifteen hours a day.",
    ("globex", "health", "vitd", ()):
        "Globex internal: vitamin D supplementation reduces fracture risk in rats.",
}


def use_real_embedder(gateway: Gateway) -> None:
    """One MiniLM for the whole session (loading it is the slow part)."""
    embedder = real_embedder()
    gateway.embedder = embedder
    gateway.ingest = IngestService(gateway.index, embedder, gateway.config.retrieval)
    gateway.retriever.embedder = embedder
    service: AnswerService = gateway.answer_service
    service.count_tokens = embedder.count_tokens


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[LiveGateway, dict[str, str]]]:
    gateway = Gateway(parse_config(CONFIG))
    use_real_embedder(gateway)
    for server in run_live(gateway):
        async def setup() -> dict[str, str]:
            keys = {}
            for name in ("acme", "globex"):
                tenant = await gateway.identity.create_tenant(name)
                keys[name] = (await gateway.identity.create_key(tenant.id, "t"))[1]
            return keys

        keys = asyncio.run_coroutine_threadsafe(setup(), server.loop).result(10)
        for (tenant, collection, doc_id, access), text in DOCS.items():
            with httpx.Client(base_url=server.base_url, timeout=30,
                              headers={"x-api-key": keys[tenant]}) as http:
                resp = http.post("/v1/documents", json={
                    "collection": collection, "doc_id": doc_id, "title": doc_id.upper(),
                    "text": text, "access": list(access)})
                assert resp.status_code == 201, resp.text
        yield server, keys


def ask(live: tuple[LiveGateway, dict[str, str]], tenant: str, body: dict[str, Any],
        simulate: dict[str, Any] | None = None) -> httpx.Response:
    server, keys = live
    headers = {"authorization": f"Bearer {keys[tenant]}"}
    if simulate is not None:
        headers["x-bastion-simulate"] = json.dumps(simulate)
    with httpx.Client(base_url=server.base_url, timeout=30, headers=headers) as http:
        return http.post("/v1/answer", json=body)


def says(value: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "invalid_output", "content": json.dumps(value)}


QUESTION = "Does vitamin D supplementation reduce fracture risk?"


def test_a_model_answer_with_its_citations(live: Any) -> None:
    model = {"answer": "Yes, in elderly women.", "confidence": "high",
             "cited_chunk_ids": ["health/vitd#0"], "insufficient_context": False}
    resp = ask(live, "acme", {"question": QUESTION}, says(model))
    body = resp.json()
    assert resp.status_code == 200 and resp.headers["x-bastion-answer-outcome"] == "answered"
    assert body["outcome"] == "answered" and body["answer"] == "Yes, in elderly women."
    assert body["citations"][0]["doc_id"] == "vitd" and body["citations"][0]["title"] == "VITD"
    assert "elderly women" in body["citations"][0]["snippet"]
    assert body["prompt"] == "answer@1" and resp.headers["x-bastion-prompt"] == "answer@1"
    assert body["target"] == "sim/primary"
    assert "health/payroll#0" not in body["retrieval"]["in_prompt"]  # no group:hr


def test_a_model_that_cites_what_it_was_not_shown_falls_back_to_quotes(live: Any) -> None:
    forged = {"answer": "Bonuses are paid in March.", "confidence": "high",
              "cited_chunk_ids": ["health/payroll#0"], "insufficient_context": False}
    body = ask(live, "acme", {"question": QUESTION}, says(forged)).json()
    assert body["flags"]["extractive"] and body["flags"]["reason"] == "output_contract_failed"
    assert [c["chunk_id"] for c in body["citations"]] == ["health/vitd#0"]
    assert "March" not in json.dumps(body)


def test_access_lists_open_documents_to_their_principals(live: Any) -> None:
    down = {"kind": "status", "status": 503}  # extractive: deterministic quotes
    body = ask(live, "acme", {"question": "When are vitamin D bonuses paid to payroll?",
                              "principals": ["group:hr"], "collections": ["health"]},
               down).json()
    assert "health/payroll#0" in body["retrieval"]["in_prompt"]
    assert body["citations"][0]["chunk_id"] == "health/payroll#0"


def test_tenants_never_see_each_other(live: Any) -> None:
    body = ask(live, "globex", {"question": QUESTION}, {"kind": "status", "status": 503}).json()
    assert {c["chunk_id"] for c in body["citations"]} == {"health/vitd#0"}
    assert "rats" in body["answer"] and "elderly women" not in body["answer"]


def test_an_unanswerable_question_is_said_so(live: Any) -> None:
    resp = ask(live, "acme", {"question": "What is the boiling point of tungsten in kelvin?",
                              "collections": ["pets"]})
    body = resp.json()
    assert resp.status_code == 200 and body["outcome"] == "not_enough_context"
    assert body["answer"] is None and body["citations"] == []
    assert body["flags"]["reason"] == "below_relevance_floor"


@pytest.mark.parametrize(("body", "param"), [
    ({}, "question"),
    ({"question": ""}, "question"),
    ({"question": "x" * 5000}, "question"),
    ({"question": 7}, "question"),
    ({"question": "ok?", "collections": ["no spaces allowed"]}, "collections"),
    ({"question": "ok?", "principals": ["user alice"]}, "principals"),
    ({"question": "ok?", "max_chunks": 0}, "max_chunks"),
    ({"question": "ok?", "tenant": "globex"}, "tenant"),
])
def test_bad_input_is_a_400_naming_the_field(live: Any, body: dict[str, Any],
                                             param: str) -> None:
    resp = ask(live, "acme", body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"].split(".")[0] == param


def test_no_key_is_a_401(live: Any) -> None:
    server, _ = live
    resp = httpx.post(server.base_url + "/v1/answer", json={"question": QUESTION})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"


# --------------------------------------------------------------------------- isolation property

TENANTS = ("t1", "t2")
COLLECTIONS = ("a", "b")
PRINCIPALS = ("user:ann", "user:bob", "group:x")
WORDS = ("vitamin", "fracture", "zinc", "colds", "sleep", "cats", "risk", "dose")

document = st.tuples(st.sampled_from(TENANTS), st.sampled_from(COLLECTIONS),
                     st.lists(st.sampled_from(PRINCIPALS), max_size=2, unique=True),
                     st.lists(st.sampled_from(WORDS), min_size=3, max_size=8))


@pytest.fixture(scope="module")
def extractive_gateway() -> Iterator[Gateway]:
    gateway = Gateway(parse_config(CONFIG.replace("answer: {model: writer}", "")
                                   .replace("auth: {mode: required}", "")))
    use_real_embedder(gateway)
    gateway.config.answer.min_relevance = -1.0  # always reach the answerer: the worst case
    asyncio.run(gateway.index.start())
    yield gateway
    asyncio.run(gateway.index.aclose())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(docs=st.lists(document, min_size=1, max_size=8),
       tenant=st.sampled_from(TENANTS),
       collections=st.lists(st.sampled_from(COLLECTIONS), max_size=2, unique=True),
       principals=st.lists(st.sampled_from(PRINCIPALS), max_size=2, unique=True),
       question=st.lists(st.sampled_from(WORDS), min_size=1, max_size=4))
def test_no_answer_cites_or_quotes_a_chunk_the_caller_may_not_see(
        extractive_gateway: Gateway, docs: list[Any], tenant: str, collections: list[str],
        principals: list[str], question: list[str]) -> None:
    gateway = extractive_gateway

    async def scenario() -> tuple[Any, dict[str, str]]:
        for info in await gateway.index.list_documents("t1") + \
                await gateway.index.list_documents("t2"):
            await gateway.index.delete_document(info.tenant, info.collection, info.doc_id)
        visible: dict[str, str] = {}
        for i, (owner, collection, access, words) in enumerate(docs):
            text = " ".join(words) + f". Marker m{i}."
            await gateway.ingest.ingest(tenant=owner, collection=collection, doc_id=f"d{i}",
                                        data=text.encode(), media_type="text/plain",
                                        access=access)
            if owner == tenant and (not collections or collection in collections) and (
                    not access or set(access) & set(principals)):
                visible[f"{collection}/d{i}#0"] = f"m{i}"
        ctx = gateway.context(route="answer", tenant=tenant)
        result = await gateway.answer(AnswerQuery(" ".join(question) + "?",
                                                  tuple(collections), tuple(principals)), ctx)
        return result, visible

    result, visible = asyncio.run(scenario())
    seen = {cid for cid, _ in result.retrieved} | set(result.in_prompt) | {
        c.chunk_id for c in result.citations}
    assert seen <= set(visible)
    hidden = {f"m{i}" for i in range(len(docs))} - set(visible.values())
    text = json.dumps(result.body())
    assert not any(f"Marker {m}." in text for m in hidden)
    if result.outcome is not AnswerOutcome.not_enough_context:
        assert result.citations
