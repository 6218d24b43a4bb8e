"""``bastion trace REQUEST_ID`` prints the path a real request took (stages, each attempt with
its outcome, the fallback, tokens), read from the state file every worker writes, or from a
running server with ``--url``; an unknown id or a memory-only config exits 1 saying why."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from bastion.cli_trace import trace
from tests.conftest import SIM_CONFIG, make_gateway, run_live

app = typer.Typer()
app.command("trace")(trace)
app.command("noop")(lambda: None)  # two commands, so `trace` is invoked by name as in bastion

DOWN = json.dumps({"kind": "status", "status": 503, "only_model": "sim-primary"})
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "trace canary 5521"}]}


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["trace", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bastion.yaml"
    path.write_text(SIM_CONFIG + f"state: {{sqlite_path: {tmp_path / 'state.db'}}}\n")
    return path


def fallback_request(base_url: str) -> str:
    resp = httpx.post(base_url + "/v1/chat/completions", json=CHAT, timeout=10,
                      headers={"x-bastion-simulate": DOWN})
    assert resp.status_code == 200
    return resp.headers["x-request-id"]


def test_trace_prints_every_step_of_a_fallback(config: Path) -> None:
    gateway = make_gateway(config.read_text())
    for live in run_live(gateway):
        request_id = fallback_request(live.base_url)
    # the server stopped: its journal was flushed to the state file on the way out
    code, out, err = run(request_id, "--config", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{request_id}  POST /v1/chat/completions -> 200 ok")
    assert "answered by backup/sim-backup (after falling back, 4 upstream call(s))" in out
    steps = [line for line in lines if re.match(r"\s+\d+\.\d+ ms", line)]
    names = [re.sub(r"^\s*[\d.]+ ms\s+[\d.]+ ms\s+", "", s).split()[:3] for s in steps]
    assert names == [["admission", "ok"], ["route", "ok"],
                     ["attempt", "1", "sim/sim-primary"], ["attempt", "2", "sim/sim-primary"],
                     ["attempt", "3", "sim/sim-primary"], ["attempt", "1", "backup/sim-backup"]]
    assert out.count("upstream_unavailable") == 3
    assert "canary" not in out

    code, out, _ = run(request_id, "--config", str(config), "--json")
    event = json.loads(out)
    assert code == 0 and event["request_id"] == request_id and event["fallback"] is True


def test_trace_asks_a_running_server_with_url() -> None:
    for live in run_live(make_gateway()):  # state in memory: only the server has it
        request_id = fallback_request(live.base_url)
        code, out, err = run(request_id, "--url", live.base_url)
        missing = run("req_unknown", "--url", live.base_url)
    assert code == 0, err
    assert "attempt 1 backup/sim-backup" in out
    assert missing[0] == 1 and "no request 'req_unknown'" in missing[2]


def test_unknown_ids_and_memory_only_configs_exit_1(config: Path, tmp_path: Path) -> None:
    for live in run_live(make_gateway(config.read_text())):
        fallback_request(live.base_url)
    code, _, err = run("req_nope", "--config", str(config))
    assert code == 1 and "no request 'req_nope'" in err
    memory = tmp_path / "memory.yaml"
    memory.write_text(SIM_CONFIG)
    code, _, err = run("req_nope", "--config", str(memory))
    assert code == 1 and "--url" in err
