"""The request journal behind ``/ui`` and ``bastion trace``: every finished request's path
(stages, attempts, contract checks) as metadata, its SLO summary, shared by the workers of one
state file, bounded, and guarded like the admin API when auth is on."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from bastion.config import JournalConfig
from bastion.observability.journal import MAX_PENDING, RequestJournal
from bastion.observability.slo import percentile, summarize
from bastion.stores.journal import JournalEntry, MemoryJournalStore, SqliteJournalStore
from tests.conftest import SIM_CONFIG, make_gateway, run_live

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "journal canary 7731"}]}
DOWN = json.dumps({"kind": "status", "status": 503, "only_model": "sim-primary"})


def sqlite_config(path: Path) -> str:
    return SIM_CONFIG + (f"state:\n  sqlite_path: {path}\n"
                         "observability:\n  journal: {flush_interval_s: 0.05}\n")


def eventually_listed(base_url: str, want: set[str]) -> list[dict]:
    """The journal's recent list once it holds ``want``: another worker's entries arrive
    within its flush interval."""
    deadline = time.monotonic() + 5
    while True:
        data = httpx.get(base_url + "/ui/api/requests", timeout=10).json()["data"]
        if want <= {e["request_id"] for e in data} or time.monotonic() > deadline:
            return data
        time.sleep(0.02)


def test_each_request_path_is_journaled_and_served_by_id() -> None:
    for live in run_live(make_gateway()):
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            ok = http.post("/v1/chat/completions", json=CHAT)
            fell_back = http.post("/v1/chat/completions", json=CHAT,
                                  headers={"x-bastion-simulate": DOWN})
            missing = http.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
            with http.stream("POST", "/v1/chat/completions",
                             json={**CHAT, "stream": True}) as streamed:
                streamed.read()
            ids = [r.headers["x-request-id"] for r in (ok, fell_back, missing, streamed)]
            listed = http.get("/ui/api/requests", params={"limit": 10}).json()["data"]
            path = http.get(f"/ui/api/requests/{ids[1]}").json()
            stream_path = http.get(f"/ui/api/requests/{ids[3]}").json()
            unknown = http.get("/ui/api/requests/req_nope")
            errors = http.get("/ui/api/requests", params={"errors": "1"}).json()["data"]

    assert [e["request_id"] for e in listed] == ids[::-1]  # newest first
    assert "canary" not in json.dumps(listed)  # metadata only
    assert path["fallback"] is True and path["target"] == "backup/sim-backup"
    assert [(a["target"], a["n"], a["outcome"], a["called"]) for a in path["attempts"]] == [
        ("sim/sim-primary", 1, "upstream_unavailable", True),
        ("sim/sim-primary", 2, "upstream_unavailable", True),
        ("sim/sim-primary", 3, "upstream_unavailable", True),
        ("backup/sim-backup", 1, "ok", True)]
    starts = [a["start_ms"] for a in path["attempts"]]
    assert starts == sorted(starts)  # timed from the request's start, in order
    stages = [s[0] for s in path["stages"]]
    assert stages == ["admission", "route"]
    route = path["stages"][1]
    assert route[1] <= starts[0] and route[1] + route[2] >= starts[-1]  # attempts in route
    assert "ttft_ms" in stream_path and [s[0] for s in stream_path["stages"]] == [
        "admission", "route", "stream"]
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert [e["request_id"] for e in errors] == [ids[2]]
    assert errors[0]["outcome"] == "model_not_found"


def test_summary_reports_slo_figures_from_real_traffic() -> None:
    config = SIM_CONFIG + ("pricing:\n  sim/sim-primary: "
                           "{input_per_mtok: 1000000, output_per_mtok: 1000000}\n")
    for live in run_live(make_gateway(config)):
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            cached = {**CHAT, "temperature": 0}
            for _ in range(3):
                assert http.post("/v1/chat/completions", json=cached).status_code == 200
            assert http.post("/v1/chat/completions", json=CHAT,
                             headers={"x-bastion-simulate": DOWN}).status_code == 200
            assert http.post("/v1/chat/completions",
                             json={**CHAT, "model": "nope"}).status_code == 404
            summary = http.get("/ui/api/summary", params={"window_s": 300}).json()
            bad = http.get("/ui/api/summary", params={"window_s": "forever"})
            too_small = http.get("/ui/api/summary", params={"window_s": 1})

    assert summary["requests"] == 5 and summary["errors"] == 1
    assert summary["errors_by_class"] == {"model_not_found": 1}
    assert summary["error_rate"] == pytest.approx(0.2)
    assert summary["fallback_rate"] == pytest.approx(0.2)
    assert summary["cache"] == {"lookups": 3, "hits": 2, "hit_rate": pytest.approx(2 / 3)}
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    [default] = summary["cost_by_tenant"]
    assert default["tenant"] == "default" and default["requests"] == 5
    assert default["cost_usd"] > 0 and summary["cost_usd"] == default["cost_usd"]
    assert summary["breakers"] == {"sim/sim-primary": "closed", "backup/sim-backup": "closed",
                                   "sim/sim-solo": "closed", "sim/sim-embed": "closed"}
    assert sum(m["requests"] for m in summary["series"]) == 5
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "window_s"
    assert too_small.status_code == 400


def test_workers_share_the_journal_in_the_state_file(tmp_path: Path) -> None:
    """Two gateways on one state file (as ``serve --workers 2`` runs): each one's requests are
    visible from the other, and they survive a restart."""
    db = tmp_path / "state.db"
    ids = []
    for first in run_live(make_gateway(sqlite_config(db))):
        for second in run_live(make_gateway(sqlite_config(db))):
            for live in (first, second, first):
                resp = httpx.post(live.v1 + "/chat/completions", json=CHAT, timeout=10)
                ids.append(resp.headers["x-request-id"])
            seen = eventually_listed(second.base_url, set(ids))
            from_first = httpx.get(f"{second.base_url}/ui/api/requests/{ids[0]}",
                                   timeout=10).json()
    assert {e["request_id"] for e in seen} == set(ids)
    assert from_first["request_id"] == ids[0] and from_first["attempts"]
    for again in run_live(make_gateway(sqlite_config(db))):
        after = httpx.get(again.base_url + "/ui/api/requests", timeout=10).json()["data"]
    assert {e["request_id"] for e in after} == set(ids)


ADMIN_ENV = "BASTION_TEST_UI_ADMIN_KEY"


def test_with_auth_on_the_data_needs_the_admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    config = SIM_CONFIG + f"auth:\n  mode: required\n  admin_key_env: {ADMIN_ENV}\n"
    monkeypatch.setenv(ADMIN_ENV, "admin-secret-123456")
    for live in run_live(make_gateway(config)):
        page = httpx.get(live.base_url + "/ui", timeout=10)
        anonymous = httpx.get(live.base_url + "/ui/api/summary", timeout=10)
        wrong = httpx.get(live.base_url + "/ui/api/requests", timeout=10,
                          headers={"authorization": "Bearer nope"})
        right = httpx.get(live.base_url + "/ui/api/requests", timeout=10,
                          headers={"authorization": "Bearer admin-secret-123456"})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"]
    assert wrong.status_code == 401
    assert right.status_code == 200 and right.json()["object"] == "list"


def test_static_files_stay_inside_the_ui_folder() -> None:
    for live in run_live(make_gateway()):
        escape = httpx.get(live.base_url + "/ui/static/..%2F..%2Fgateway.py", timeout=10)
        wrong_kind = httpx.get(live.base_url + "/ui/static/ui_routes.py", timeout=10)
    assert escape.status_code == 404 and wrong_kind.status_code == 404


def entry(n: int, ts: float, **kw: object) -> JournalEntry:
    base: dict[str, object] = {
        "request_id": f"req_{n}", "ts": ts, "tenant": "t", "route": "chat", "outcome": "ok",
        "status": 200, "latency_ms": float(n), "ttft_ms": None, "fallback": False,
        "cache": None, "cost_usd": 0.0,
        "event": json.dumps({"request_id": f"req_{n}"}, separators=(",", ":")).encode()}
    base.update(kw)
    return JournalEntry(**base)  # type: ignore[arg-type]


async def test_sqlite_store_keeps_only_the_newest(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import bastion.stores.journal as module
    monkeypatch.setattr(module, "_TRIM_EVERY", 10)
    store = SqliteJournalStore(str(tmp_path / "j.db"), keep=25)
    try:
        for start in range(0, 100, 10):
            await store.write_many([entry(n, 1000.0 + n) for n in range(start, start + 10)])
        kept = await store.recent(1000)
        # whole batches go: the newest three (30 entries) cover the 25 to keep
        assert [e.request_id for e in kept] == [f"req_{n}" for n in range(99, 69, -1)]
        assert await store.get("req_3") is None
        found = await store.get("req_80")
        assert found is not None and found.latency_ms == 80.0
        assert json.loads(found.event) == {"request_id": "req_80"}
        assert [e.request_id for e in await store.recent(3, before=1085.0)] == [
            "req_84", "req_83", "req_82"]
        assert len(await store.since(1090.0, 1000)) == 10
    finally:
        await store.aclose()


async def test_a_journal_that_falls_behind_drops_the_oldest_and_counts() -> None:
    journal = RequestJournal(MemoryJournalStore(10), JournalConfig())
    fields = {"request_id": "r", "ts": 1.0, "tenant": "t", "route": "chat", "outcome": "ok",
              "status": 200, "latency_ms": 1.0, "fallback": False, "cache": None,
              "cost_usd": 0.0}
    for _ in range(MAX_PENDING + 7):
        journal.record(fields, b"{}")
    assert journal.dropped == 7
    await journal.flush()
    assert len(journal.store.entries) == 10  # type: ignore[attr-defined]


async def test_a_failing_store_is_counted_not_raised() -> None:
    class Broken(MemoryJournalStore):
        async def write_many(self, entries: object) -> None:
            raise OSError("disk full")

    journal = RequestJournal(Broken(10), JournalConfig(flush_interval_s=0.01))
    await journal.start()
    journal.record({"request_id": "r", "ts": 1.0, "tenant": "t", "route": "chat",
                    "outcome": "ok", "status": 200, "latency_ms": 1.0, "fallback": False,
                    "cache": None, "cost_usd": 0.0}, b"{}")
    await asyncio.sleep(0.05)
    await journal.aclose()
    assert journal.dropped == 1


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (
        50.0, 95.0, 99.0)
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None
    rows = [(60.0 * i, "t", "ok" if i % 4 else "upstream_timeout", float(i), None, i % 2 == 0,
             "hit" if i % 3 == 0 else "miss", 0.5) for i in range(1, 9)]
    summary = summarize(rows, window_s=600, now=600.0)
    assert summary["errors_by_class"] == {"upstream_timeout": 2}
    assert summary["fallback_rate"] == 0.5 and summary["cache"]["hits"] == 2
    assert [m["requests"] for m in summary["series"]] == [1] * 8


def test_bad_listing_parameters_are_400s() -> None:
    for live in run_live(make_gateway()):
        answers = [httpx.get(live.base_url + "/ui/api/requests", params=p, timeout=10)
                   for p in ({"limit": "1.5"}, {"limit": "0"}, {"limit": "x"},
                             {"before": "-1"})]
    assert [r.status_code for r in answers] == [400, 400, 400, 400]
    assert {r.json()["error"]["param"] for r in answers} == {"limit", "before"}


async def test_entries_are_written_in_bounded_batches_without_waiting_for_the_timer(
        tmp_path: Path) -> None:
    from bastion.observability.journal import BATCH

    class Counting(MemoryJournalStore):
        sizes: list[int] = []

        async def write_many(self, entries: object) -> None:
            self.sizes.append(len(entries))  # type: ignore[arg-type]
            await super().write_many(entries)  # type: ignore[arg-type]

    store = Counting(10_000)
    journal = RequestJournal(store, JournalConfig(flush_interval_s=60))
    await journal.start()
    fields = {"request_id": "r", "ts": 1.0, "tenant": "t", "route": "chat", "outcome": "ok",
              "status": 200, "latency_ms": 1.0, "fallback": False, "cache": None,
              "cost_usd": 0.0}
    for _ in range(BATCH):
        journal.record(fields, b"{}")
    for _ in range(100):  # a full batch goes out long before the 60 s timer
        if store.sizes:
            break
        await asyncio.sleep(0.01)
    assert store.sizes == [BATCH]
    for _ in range(2 * BATCH + 5):
        journal.record(fields, b"{}")
    await journal.aclose()
    assert sum(store.sizes) == 3 * BATCH + 5 and max(store.sizes) == BATCH


async def test_a_state_file_from_the_older_layout_starts_a_fresh_journal(
        tmp_path: Path) -> None:
    import sqlite3
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE journal_batches (id INTEGER PRIMARY KEY, first_ts REAL, "
                   "last_ts REAL, entries INTEGER, events BLOB, columns BLOB)")
        db.execute("INSERT INTO journal_batches VALUES (1, 1.0, 1.0, 1, x'00', x'00')")
    store = SqliteJournalStore(str(path), keep=100)
    try:
        await store.write_many([entry(1, 1000.0)])
        assert [e.request_id for e in await store.recent(10)] == ["req_1"]
        assert (await store.get("req_1")) is not None
    finally:
        await store.aclose()


async def test_batches_written_with_zlib_are_still_read(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches are zstd-compressed now; a state file holding zlib batches from before reads
    on, old and new side by side."""
    import zlib

    import bastion.stores.journal as module

    class Zlib:
        def compress(self, data: bytes) -> bytes:
            return zlib.compress(data, 1)

    path = str(tmp_path / "j.db")
    monkeypatch.setattr(module, "_compressor", Zlib)
    old = SqliteJournalStore(path, keep=100)
    try:
        await old.write_many([entry(n, 1000.0 + n) for n in range(3)])
    finally:
        await old.aclose()
    monkeypatch.undo()
    store = SqliteJournalStore(path, keep=100)
    try:
        await store.write_many([entry(n, 1000.0 + n) for n in range(3, 6)])
        assert [e.request_id for e in await store.recent(10)] == [
            f"req_{n}" for n in range(5, -1, -1)]
        for n in (1, 4):
            found = await store.get(f"req_{n}")
            assert found is not None and json.loads(found.event) == {"request_id": f"req_{n}"}
        import sqlite3
        with sqlite3.connect(path) as db:
            blobs = [row[0][:4] for row in db.execute("SELECT events FROM journal_batches")]
        assert blobs[0] != module._ZSTD_MAGIC and blobs[1] == module._ZSTD_MAGIC
    finally:
        await store.aclose()
