"""examples/ticket_triage: the model suggests, deterministic code decides and writes once.

The app runs against the simulated provider with the embedded default's ``ticket_triage`` task
(same prompt, schemas, rules and fallback). The simulated model's answer is scripted per ticket
with an ``invalid_output`` fault whose ``content`` is the triage JSON to return.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import bastion
from bastion import Gateway

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = Path(bastion.__file__).parent / "defaults"


def _load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "ticket_triage_app", ROOT / "examples" / "ticket_triage" / "triage_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


app = _load_app()
RECEIVED = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
NOW = datetime(2025, 3, 3, 9, 1, tzinfo=UTC)


def suggestion(priority: str = "high", **extra: str) -> dict[str, str]:
    return {"summary": "Checkout API fails with 500.", "suggested_reply": "We are on it.",
            "priority": priority, "reason": "The customer cannot take orders at all.", **extra}


def write_config(tmp_path: Path, content: str | None = None, prompt: str | None = None) -> Path:
    """The embedded default's tasks, with its ``smollm2`` alias on a simulated provider.
    ``content``, if given, is what the model answers to every request."""
    default = yaml.safe_load((DEFAULTS / "bastion.yaml").read_text())
    if prompt is not None:
        default["tasks"]["ticket_triage"]["prompt"] = prompt
    faults = [] if content is None else [{"kind": "invalid_output", "content": content}]
    config = {
        "version": 1,
        "providers": {"sim": {"type": "simulated", "seed": 1, "faults": faults}},
        "models": {"smollm2": {"targets": [{"provider": "sim", "model": "sim-triage",
                                            "timeout_s": 2, "retries": 0}]}},
        "routes": {"tasks": {"deadline_s": 10, "max_deadline_s": 10}},
        "prompts_dir": str(DEFAULTS / "prompts"),
        "tasks": default["tasks"],
    }
    path = tmp_path / "bastion.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def script(gateway: Gateway, answers: dict[str, Any]) -> None:
    """Make the model answer ``answers[ticket_id]`` (an object, or raw text) for that ticket."""
    original = gateway.task

    async def task(name: str, task_input: dict[str, Any], ctx: Any = None) -> Any:
        answer = answers[task_input["ticket_id"]]
        content = answer if isinstance(answer, str) else json.dumps(answer)
        ctx = gateway.context(route="tasks", simulate={"kind": "invalid_output",
                                                       "content": content})
        return await original(name, task_input, ctx)

    gateway.task = task  # type: ignore[method-assign]


def ticket(ticket_id: str = "T-1", tier: str | None = "pro", **changes: Any) -> Any:
    raw = {"ticket_id": ticket_id, "subject": "Checkout API returns 500",
           "body": "Every order fails since 09:00.", "received_at": RECEIVED.isoformat(),
           "customer_tier": tier, **changes}
    return app.Ticket.from_json(raw)


def rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM triage_decisions ORDER BY ticket_id").fetchall()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with Gateway.from_config(write_config(tmp_path)) as gw:
        yield gw


@pytest.fixture
def conn(tmp_path: Path) -> Any:
    connection = app.connect(tmp_path / "triage.db")
    yield connection
    connection.close()


def model_calls(gateway: Gateway) -> int:
    return int(gateway.providers["sim"].calls)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("priority", "sla", "queue"),
                         [("high", 15, "urgent"), ("medium", 60, "standard"),
                          ("low", 240, "standard")])
async def test_sla_and_due_at_follow_the_priority(gateway: Gateway, conn: Any, tmp_path: Path,
                                                  priority: str, sla: int, queue: str) -> None:
    script(gateway, {"T-1": suggestion(priority)})
    outcome = await app.triage(gateway, conn, ticket(), now=NOW)
    assert (outcome.status, outcome.model_called) == ("applied", True)
    d = outcome.decision
    assert (d.priority, d.sla_minutes, d.queue) == (priority, sla, queue)
    assert d.due_at == (RECEIVED + timedelta(minutes=sla)).isoformat()
    assert (d.fallback_used, d.prompt_version, d.decided_at) == (False, "ticket_triage@1",
                                                                 NOW.isoformat())
    assert d.idempotency_key == "triage:T-1" and d.request_id
    assert d.fingerprint == app.fingerprint(ticket(), "ticket_triage@1")
    assert app.stored(conn, "triage:T-1") == d
    assert len(rows(tmp_path / "triage.db")) == 1


@pytest.mark.parametrize(("suggested", "decided", "queue"),
                         [("low", "medium", "enterprise"), ("medium", "medium", "enterprise"),
                          ("high", "high", "urgent")])
async def test_an_enterprise_ticket_is_never_below_medium(
        gateway: Gateway, conn: Any, suggested: str, decided: str, queue: str) -> None:
    script(gateway, {"T-9": suggestion(suggested), "T-8": suggestion(suggested)})
    outcome = await app.triage(gateway, conn, ticket("T-9", tier="enterprise"), now=NOW)
    d = outcome.decision
    assert (d.priority, d.sla_minutes, d.queue) == (decided, app.SLA_MINUTES[decided], queue)
    assert d.due_at == (RECEIVED + timedelta(minutes=app.SLA_MINUTES[decided])).isoformat()
    raised = suggested == "low"
    assert d.reason.startswith("[enterprise floor: low raised to medium] ") == raised
    assert (outcome.detail == "model said low; enterprise floor applied") == raised
    # Other tiers keep the model's priority.
    other = (await app.triage(gateway, conn, ticket("T-8", tier="free"))).decision
    assert other.priority == suggested


async def test_a_second_run_writes_nothing_and_calls_no_model(
        gateway: Gateway, conn: Any, tmp_path: Path) -> None:
    tickets = [ticket("T-1"), ticket("T-2", tier=None), ticket("T-3", tier="enterprise")]
    script(gateway, {"T-1": suggestion("high"), "T-2": suggestion("low"),
                     "T-3": suggestion("low")})
    first = [await app.triage(gateway, conn, t) for t in tickets]
    assert [o.status for o in first] == ["applied"] * 3
    calls, before = model_calls(gateway), rows(tmp_path / "triage.db")
    second = [await app.triage(gateway, conn, t) for t in tickets]
    assert [(o.status, o.model_called) for o in second] == [("already applied", False)] * 3
    assert [o.decision for o in second] == [o.decision for o in first]
    assert model_calls(gateway) == calls
    assert rows(tmp_path / "triage.db") == before


async def test_a_changed_ticket_is_a_conflict_and_nothing_is_overwritten(
        gateway: Gateway, conn: Any, tmp_path: Path) -> None:
    script(gateway, {"T-1": suggestion("low")})
    await app.triage(gateway, conn, ticket())
    calls, before = model_calls(gateway), rows(tmp_path / "triage.db")
    changed = ticket(body="Every order fails since 09:00. Now refunds fail too!")
    outcome = await app.triage(gateway, conn, changed)
    assert (outcome.status, outcome.model_called) == ("conflict", False)
    assert outcome.decision.fingerprint != app.fingerprint(changed, "ticket_triage@1")
    assert rows(tmp_path / "triage.db") == before and model_calls(gateway) == calls
    # Applying a decision for the changed ticket directly is refused the same way.
    decision = app.decide(changed, suggestion("high"), fallback_used=False,
                          prompt_version="ticket_triage@1", request_id="req_x", now=NOW)
    assert app.apply_decision(conn, decision)[0] == "conflict"
    assert rows(tmp_path / "triage.db") == before


async def test_the_fingerprint_names_the_resolved_prompt_version(tmp_path: Path,
                                                                 conn: Any) -> None:
    """A bare prompt name ("latest") is pinned to the version that ran, so a re-run matches."""
    async with Gateway.from_config(write_config(tmp_path, prompt="ticket_triage")) as gw:
        script(gw, {"T-1": suggestion("low")})
        first = await app.triage(gw, conn, ticket())
        again = await app.triage(gw, conn, ticket())
    assert first.decision.prompt_version == "ticket_triage@1"
    assert (first.status, again.status) == ("applied", "already applied")


def test_concurrent_application_in_threads_writes_one_row(tmp_path: Path) -> None:
    db = tmp_path / "triage.db"
    app.connect(db).close()
    decision = app.decide(ticket(), suggestion("high"), fallback_used=False,
                          prompt_version="ticket_triage@1", request_id="req_1", now=NOW)
    start, statuses = threading.Barrier(8), []

    def apply() -> None:
        conn = app.connect(db)
        start.wait()
        statuses.append(app.apply_decision(conn, decision)[0])
        conn.close()

    threads = [threading.Thread(target=apply) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == ["already applied"] * 7 + ["applied"]
    assert len(rows(db)) == 1


async def test_two_concurrent_runs_of_one_ticket_write_one_row(
        gateway: Gateway, conn: Any, tmp_path: Path) -> None:
    # Both pass the early check before either writes, so both ask the model; the UNIQUE key
    # still lets exactly one decision through.
    script(gateway, {"T-1": suggestion("medium")})
    scripted, both_checked = gateway.task, asyncio.Barrier(2)

    async def racing(*args: Any) -> Any:  # neither model call starts before both checked
        await both_checked.wait()
        return await scripted(*args)

    gateway.task = racing  # type: ignore[method-assign]
    first, second = await asyncio.gather(app.triage(gateway, conn, ticket()),
                                         app.triage(gateway, conn, ticket()))
    assert sorted([first.status, second.status]) == ["already applied", "applied"]
    assert "decided by a concurrent run" in (first.detail + second.detail)
    assert model_calls(gateway) == 2
    assert first.decision == second.decision
    assert len(rows(tmp_path / "triage.db")) == 1


async def test_the_fallback_still_writes_a_decision_flagged_as_such(
        gateway: Gateway, conn: Any) -> None:
    script(gateway, {"T-1": "{not json", "T-2": suggestion("high", reason="short")})
    for ticket_id in ("T-1", "T-2"):
        outcome = await app.triage(gateway, conn, ticket(ticket_id))
        assert outcome.status == "applied"
        assert "output_contract_failed" in outcome.detail
        d = app.stored(conn, f"triage:{ticket_id}")
        assert (d.fallback_used, d.priority, d.sla_minutes, d.queue) == (
            True, "medium", 60, "triage-review")
        assert ticket_id in d.suggested_reply


def test_the_command_line_runs_twice_and_the_second_run_is_a_no_op(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, json.dumps(suggestion("high")))
    tickets = tmp_path / "tickets.jsonl"
    demo = (ROOT / "examples" / "ticket_triage" / "tickets.jsonl").read_text()
    tickets.write_text(demo)
    count = len(app.load_tickets(tickets))
    args = ["--config", str(config), "--db", str(tmp_path / "t.db"), str(tickets)]
    assert app.main(args) == 0
    out = capsys.readouterr().out
    assert out.count(" applied ") == count
    assert f"{count} applied, 0 already applied, 0 conflict, 0 error; model calls: {count}" in out
    assert app.main(args) == 0
    out = capsys.readouterr().out
    assert f"0 applied, {count} already applied, 0 conflict, 0 error; model calls: 0" in out
    before = rows(tmp_path / "t.db")
    assert len(before) == count
    tickets.write_text(demo.replace('"body": "', '"body": "Update: ', 1))
    assert app.main(args) == 1  # a conflict needs a person
    out = capsys.readouterr().out
    assert f"0 applied, {count - 1} already applied, 1 conflict, 0 error; model calls: 0" in out
    assert rows(tmp_path / "t.db") == before
