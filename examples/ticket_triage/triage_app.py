"""Ticket triage where the model only suggests and deterministic code decides and writes.

The ``ticket_triage`` task returns a validated suggestion (summary, reply, priority, reason) or,
when no model answer passed the contract, the task's deterministic fallback. Everything with a
consequence is decided here, by plain code a reviewer can read: the SLA, the due time, the
queue, the enterprise floor, and whether anything is written at all. Writes are idempotent: a
ticket is decided once, a re-run costs no model call, and a changed ticket is never silently
overwritten.

    python examples/ticket_triage/triage_app.py --demo
    python examples/ticket_triage/triage_app.py [--config FILE] [--db PATH] TICKETS.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sqlite3
import sys
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from bastion import BastionError, Gateway

HERE = Path(__file__).resolve().parent
TASK = "ticket_triage"
ACTION = "triage"  # the side effect the idempotency key names
#: Minutes until a first human response is due, by the final (decided) priority.
SLA_MINUTES = {"high": 15, "medium": 60, "low": 240}

Status = Literal["applied", "already applied", "conflict", "error"]


@dataclass(frozen=True, slots=True)
class Ticket:
    ticket_id: str
    subject: str
    body: str
    received_at: datetime
    customer_tier: str | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Ticket:
        received = datetime.fromisoformat(raw["received_at"])
        if received.tzinfo is None:  # a naive time would make due_at ambiguous
            raise ValueError(f"{raw['ticket_id']}: received_at needs a timezone")
        return cls(raw["ticket_id"], raw["subject"], raw["body"], received,
                   raw.get("customer_tier"))

    def task_input(self) -> dict[str, str]:
        """What the model sees: never received_at, which only the code uses."""
        data = {"ticket_id": self.ticket_id, "subject": self.subject, "body": self.body}
        return data | ({"customer_tier": self.customer_tier} if self.customer_tier else {})


@dataclass(frozen=True, slots=True)
class Decision:
    """One row of ``triage_decisions``, field for field."""

    ticket_id: str
    idempotency_key: str
    fingerprint: str
    priority: str
    reason: str
    sla_minutes: int
    due_at: str
    queue: str
    summary: str
    suggested_reply: str
    fallback_used: bool
    prompt_version: str
    request_id: str
    decided_at: str


@dataclass(frozen=True, slots=True)
class Outcome:
    ticket_id: str
    status: Status
    decision: Decision | None  # the stored row (for a conflict: the one kept, not overwritten)
    model_called: bool
    detail: str = ""


COLUMNS = [f.name for f in fields(Decision)]
SCHEMA = """CREATE TABLE IF NOT EXISTS triage_decisions (
    ticket_id TEXT NOT NULL, idempotency_key TEXT NOT NULL UNIQUE, fingerprint TEXT NOT NULL,
    priority TEXT NOT NULL, reason TEXT NOT NULL, sla_minutes INTEGER NOT NULL,
    due_at TEXT NOT NULL, queue TEXT NOT NULL, summary TEXT NOT NULL,
    suggested_reply TEXT NOT NULL, fallback_used INTEGER NOT NULL,
    prompt_version TEXT NOT NULL, request_id TEXT NOT NULL, decided_at TEXT NOT NULL)"""


def idempotency_key(ticket: Ticket) -> str:
    """Names the side effect (triaging this ticket), so it happens once whatever the input."""
    return f"{ACTION}:{ticket.ticket_id}"


def fingerprint(ticket: Ticket, prompt_version: str) -> str:
    """What the decision was computed from; a different one under the same key means the
    ticket (or the prompt) changed since it was decided: a conflict, not a silent rewrite."""
    canonical = json.dumps({"task": TASK, "prompt": prompt_version, "input": ticket.task_input(),
                            "received_at": ticket.received_at.isoformat()},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def decide(ticket: Ticket, suggestion: dict[str, Any], *, fallback_used: bool,
           prompt_version: str, request_id: str, now: datetime) -> Decision:
    """The product rules, applied to a validated suggestion. Pure: same inputs, same row."""
    priority, reason = suggestion["priority"], suggestion["reason"]
    # Rule: enterprise customers have a contractual response time, so their tickets are never
    # below medium whatever the model thinks; the raise is recorded in the reason.
    if ticket.customer_tier == "enterprise" and priority == "low":
        priority, reason = "medium", f"[enterprise floor: low raised to medium] {reason}"
    # Rule: the queue follows from facts the code holds, first match wins. A fallback decision
    # means nobody (not even the model) read the ticket, so a person triages it first.
    if fallback_used:
        queue = "triage-review"
    elif priority == "high":
        queue = "urgent"
    elif ticket.customer_tier == "enterprise":
        queue = "enterprise"
    else:
        queue = "standard"
    sla = SLA_MINUTES[priority]
    return Decision(
        ticket.ticket_id, idempotency_key(ticket), fingerprint(ticket, prompt_version),
        priority, reason, sla, (ticket.received_at + timedelta(minutes=sla)).isoformat(), queue,
        suggestion["summary"], suggestion["suggested_reply"], fallback_used, prompt_version,
        request_id, now.isoformat())


def connect(path: str | Path) -> sqlite3.Connection:
    """Autocommit mode, so every transaction below is explicit; waits for a busy writer."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute(SCHEMA)
    return conn


def stored(conn: sqlite3.Connection, key: str) -> Decision | None:
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM triage_decisions "
                       "WHERE idempotency_key = ?", (key,)).fetchone()
    return None if row is None else Decision(*row[:10], bool(row[10]), *row[11:])


def apply_decision(conn: sqlite3.Connection, decision: Decision) -> tuple[Status, Decision]:
    """Write the decision exactly once. The UNIQUE key, not the earlier read, is what makes
    two concurrent runs safe: the loser's INSERT does nothing and it reads the winner's row."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        inserted = conn.execute(
            f"INSERT INTO triage_decisions ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(COLUMNS))}) "
            "ON CONFLICT(idempotency_key) DO NOTHING", astuple(decision)).rowcount
        existing = decision if inserted else stored(conn, decision.idempotency_key)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    assert existing is not None
    if inserted:
        return "applied", existing
    same = existing.fingerprint == decision.fingerprint
    return ("already applied" if same else "conflict"), existing


async def triage(gateway: Gateway, conn: sqlite3.Connection, ticket: Ticket,
                 now: datetime | None = None) -> Outcome:
    """One ticket: check the key first (a decided ticket costs no model call), then ask the
    model, decide in code and apply."""
    prompt_version = gateway.task_service.get(TASK).template.ref  # resolved, e.g. name@1
    existing = stored(conn, idempotency_key(ticket))
    if existing is not None:
        same = existing.fingerprint == fingerprint(ticket, prompt_version)
        return Outcome(ticket.ticket_id, "already applied" if same else "conflict", existing,
                       False, "" if same else "ticket or prompt changed since decided")
    try:
        result = await gateway.task(TASK, ticket.task_input())
    except BastionError as exc:  # classified (bad input, no fallback...): nothing is written
        return Outcome(ticket.ticket_id, "error", None, True, f"{exc.code}: {exc}")
    decision = decide(ticket, result.output, fallback_used=result.fallback_used,
                      prompt_version=result.prompt, request_id=result.ctx.request_id,
                      now=now or datetime.now(UTC))
    status, row = apply_decision(conn, decision)
    detail = f"fallback: {result.fallback_reason}" if result.fallback_used else ""
    if decision.priority != result.output["priority"]:
        detail = f"model said {result.output['priority']}; enterprise floor applied"
    if status != "applied":  # a concurrent run wrote first; its row stands
        detail = "decided by a concurrent run" + ("" if status != "conflict" else ", differently")
    return Outcome(ticket.ticket_id, status, row, True, detail)


def load_tickets(path: str | Path) -> list[Ticket]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [Ticket.from_json(json.loads(line)) for line in lines if line.strip()]


def report(outcome: Outcome) -> str:
    d = outcome.decision
    line = f"{outcome.ticket_id:<8} {outcome.status:<16}"
    if d is not None:
        line += (f" priority={d.priority:<6} sla={d.sla_minutes:>3}m due={d.due_at}"
                 f" queue={d.queue:<13} fallback={'yes' if d.fallback_used else 'no'}")
    return line + (f"  ({outcome.detail})" if outcome.detail else "")


async def run(config: str | None, db: Path, tickets: list[Ticket]) -> list[Outcome]:
    conn = connect(db)
    try:
        async with Gateway.from_config(config) as gateway:
            outcomes = []
            for ticket in tickets:  # one at a time: the embedded model serves one call
                outcomes.append(await triage(gateway, conn, ticket))
                print(report(outcomes[-1]), flush=True)
            return outcomes
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tickets", nargs="?", help="a JSONL file, one ticket a line")
    parser.add_argument("--demo", action="store_true", help="use the bundled tickets.jsonl")
    parser.add_argument("--config", help="bastion config (default: the embedded one)")
    parser.add_argument("--db", type=Path, default=Path(__file__).parent / "triage.db", help="SQLite file")
    args = parser.parse_args(argv)
    if bool(args.demo) == bool(args.tickets):
        parser.error("give either TICKETS.jsonl or --demo")
    tickets = load_tickets(HERE / "tickets.jsonl" if args.demo else args.tickets)
    outcomes = asyncio.run(run(args.config, args.db, tickets))
    count = {s: sum(o.status == s for o in outcomes)
             for s in ("applied", "already applied", "conflict", "error")}
    fallbacks = sum(o.status == "applied" and o.decision is not None and o.decision.fallback_used
                    for o in outcomes)
    print(f"\n{len(outcomes)} tickets: " + ", ".join(f"{n} {s}" for s, n in count.items())
          + f"; model calls: {sum(o.model_called for o in outcomes)}"
          + f"; new decisions on the fallback: {fallbacks}; database: {args.db}")
    return 1 if count["error"] or count["conflict"] else 0  # both need a person


if __name__ == "__main__":
    sys.exit(main())
