"""Ingestion goes through admission like every other route: per-route rate limits refuse with
429 before any embedding work, and every ingest leaves a ledger row on route ``documents``."""

from __future__ import annotations

import asyncio

import httpx

from bastion.config import parse_config
from bastion.gateway import Gateway
from bastion.services.ingest import IngestService
from tests.conftest import SIM_CONFIG, run_live
from tests.test_ingest import real_embedder


def test_document_uploads_are_rate_limited_and_recorded() -> None:
    gateway = Gateway(parse_config(
        SIM_CONFIG + "limits: {routes: {documents: {requests_per_minute: 2}}}\n"))
    gateway.embedder = real_embedder()
    gateway.ingest = IngestService(gateway.index, gateway.embedder, gateway.config.retrieval)
    for live in run_live(gateway):
        with httpx.Client(base_url=live.base_url, timeout=30) as http:
            statuses = [http.post("/v1/documents", json={
                "collection": "kb", "doc_id": f"d{i}", "text": f"Document number {i}."}
            ).status_code for i in range(3)]
            listed = http.get("/v1/documents", params={"collection": "kb"}).json()["data"]
        asyncio.run_coroutine_threadsafe(gateway.ledger.flush(), live.loop).result(5)
        rows = asyncio.run_coroutine_threadsafe(
            gateway.ledger.store.aggregate(["route"], None, None, None), live.loop).result(5)
    assert statuses == [201, 201, 429]
    assert [d["doc_id"] for d in listed] == ["d0", "d1"]  # the refused one was never indexed
    # The list request is not admission-limited (it reads only); the two ingests are recorded.
    assert {row["route"]: row["requests"] for row in rows}.get("documents") == 2
