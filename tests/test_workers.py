"""`bastion serve --workers 2`: limits, budgets, single flight and idempotency are exact across
worker processes, because they share hot state (the LMDB environment beside the state file by
default, or the state file itself) instead of keeping a copy each."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

CONFIG = """
version: 1
providers:
  sim: {{type: simulated, seed: 1, reply: "one two three four five",
         latency: {{value_s: {latency}}}, bulkhead: {{max_concurrency: 1000, max_wait_s: 5}}}}
models:
  fast:
    targets:
      - {{provider: sim, model: primary, retries: 0, timeout_s: 5,
          breaker: {{failure_threshold: 1000}}}}
state: {{sqlite_path: "{db}"}}
{extra}
"""
MSG = [{"role": "user", "content": "hello"}]


def _worker_pids(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(x) for x in out.split()]


@pytest.fixture(params=["auto", "sqlite"])
def serve_two(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start ``bastion serve --workers 2``, hot state shared the default way (``auto``: LMDB)
    or in the state file (``sqlite``)."""
    procs: list[subprocess.Popen[bytes]] = []
    hot = request.param

    def start(extra: str = "", latency: float = 0.0) -> str:
        path = tmp_path / "bastion.yaml"
        text = CONFIG.format(db=tmp_path / "bastion.db", extra=extra, latency=latency)
        if hot != "auto":
            text = text.replace('bastion.db"}', f'bastion.db", hot: {hot}}}')
        path.write_text(text)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "BASTION_CONFIG"}
        proc = subprocess.Popen([sys.executable, "-m", "bastion.cli", "serve", "--config",
                                 str(path), "--port", str(port), "--workers", "2"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                ready = httpx.get(base + "/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                ready = False
            # Both workers must be up, or one process would take the whole burst.
            if ready and len(_worker_pids(proc.pid)) >= 2:
                time.sleep(0.5)  # the second worker's lifespan start
                return base
            assert time.monotonic() < deadline, "bastion serve --workers 2 did not start"
            time.sleep(0.2)

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def burst(base_url: str, n: int, body: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> list[httpx.Response]:
    # A fresh connection per request, so the kernel spreads them over both workers.
    async def one() -> httpx.Response:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            return await client.post("/v1/chat/completions",
                                     json=body or {"model": "fast", "messages": MSG},
                                     headers=headers or {})

    return await asyncio.gather(*(one() for _ in range(n)))


def test_the_start_up_notice_says_where_hot_state_lives(tmp_path: Path) -> None:
    from bastion.cli import _security_notice
    from bastion.config import parse_config

    shared = parse_config(CONFIG.format(db=tmp_path / "b.db", extra="", latency=0)).config
    assert f"hot state shared in {tmp_path / 'b.db.hot'}" in _security_notice(
        shared, "127.0.0.1", 2)
    assert "hot state in each worker's memory" in _security_notice(shared, "127.0.0.1", 1)
    in_file = parse_config(CONFIG.format(db=tmp_path / "b.db", extra="", latency=0)
                           .replace('b.db"}', 'b.db", hot: sqlite}')).config
    assert "hot state shared in it" in _security_notice(in_file, "127.0.0.1", 2)
    memory = parse_config(CONFIG.format(db=tmp_path / "b.db", extra="", latency=0)
                          .replace('b.db"}', 'b.db", hot: memory}')).config
    assert "WARNING: rate limits apply per worker" in _security_notice(memory, "127.0.0.1", 2)


def test_a_rate_limit_is_exact_across_two_workers(serve_two: Any) -> None:
    base = serve_two("limits: {default: {requests_per_minute: 30}}", latency=0.05)
    statuses = Counter(r.status_code for r in asyncio.run(burst(base, 90)))
    assert statuses == {200: 30, 429: 60}


def test_a_budget_is_not_overspent_across_two_workers(serve_two: Any) -> None:
    base = serve_two("pricing:\n  sim/primary: {input_per_mtok: 1000000, output_per_mtok: "
                     "1000000}\nbudgets:\n  default: {per_day_usd: 100}\n", latency=0.05)
    body = {"model": "fast", "messages": MSG, "max_tokens": 10}
    responses = asyncio.run(burst(base, 120, body))
    statuses = Counter(r.status_code for r in responses)
    assert statuses[402] > 0 and statuses[200] > 0 and set(statuses) <= {200, 402}
    spent = sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)
    assert spent <= 100  # $1 a token, $100 a day


def test_a_stampede_across_two_workers_makes_one_upstream_call(serve_two: Any) -> None:
    base = serve_two(latency=0.4)
    body = {"model": "fast", "messages": MSG, "temperature": 0}
    responses = asyncio.run(burst(base, 80, body))
    assert {r.status_code for r in responses} == {200}
    # The simulated provider gives every call a random id: one id means one upstream call.
    assert len({r.json()["id"] for r in responses}) == 1
    assert Counter(r.headers["x-bastion-cache"] for r in responses) == {"miss": 1, "hit": 79}


def test_idempotent_duplicates_across_two_workers_make_one_call(serve_two: Any) -> None:
    base = serve_two(latency=0.4)
    responses = asyncio.run(burst(base, 80, headers={"idempotency-key": "order-9"}))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 79


def test_serve_refuses_a_hot_state_directory_it_did_not_write(tmp_path: Path) -> None:
    # ``bastion serve --workers 2`` empties ``<state>.hot/`` before the workers start; a
    # directory holding anything else is refused with a message, not a traceback.
    path = tmp_path / "bastion.yaml"
    path.write_text(CONFIG.format(db=tmp_path / "bastion.db", extra="", latency=0))
    hot = tmp_path / "bastion.db.hot"
    hot.mkdir()
    (hot / "notes.txt").write_text("not LMDB's")
    env = {k: v for k, v in os.environ.items() if k != "BASTION_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "bastion.cli", "serve", "--config", str(path),
                           "--port", str(free_port()), "--workers", "2"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "cannot prepare the shared hot state" in proc.stderr
    assert "notes.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert (hot / "notes.txt").exists()
