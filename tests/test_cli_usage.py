"""``bastion usage`` reads the config's SQLite ledger: an aligned table or JSON, the same sums
as the API; a config without ``state.sqlite_path`` exits 1 saying why."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bastion.cli_usage import usage
from bastion.domain.usage import UsageRow
from bastion.stores.ledger import SqliteLedgerStore
from tests.conftest import SIM_CONFIG

DAY1 = 1_735_689_600.0  # 2025-01-01T00:00:00Z

app = typer.Typer()
app.command("usage")(usage)
app.command("noop")(lambda: None)  # two commands, so `usage` is invoked by name as in bastion


def seed(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)

    async def go() -> None:
        store = SqliteLedgerStore(str(db))
        await store.write_many([
            UsageRow("req_1", DAY1 + 1, "acme", None, "chat", "fast", "sim/sim-primary", 100,
                     20, 0, 0.25, 120.0, "ok"),
            UsageRow("req_2", DAY1 + 2, "acme", None, "chat", "fast", None, 0, 0, 0, 0.0,
                     80.0, "upstream_timeout"),
            UsageRow("req_3", DAY1 + 86_400, "beta", None, "chat", "fast", "sim/sim-primary",
                     10, 5, 0, 0.125, 40.0, "ok"),
        ])
        await store.aclose()

    asyncio.run(go())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "state.db"


@pytest.fixture
def config(tmp_path: Path, db: Path) -> Path:
    path = tmp_path / "bastion.yaml"
    path.write_text(SIM_CONFIG + f"state: {{sqlite_path: {db}}}\n")
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["usage", *args])
    return result.exit_code, result.stdout, result.stderr


def test_a_table_grouped_by_tenant_route_and_day(config: Path, db: Path) -> None:
    seed(db)
    code, out, err = run("--config", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TENANT", "ROUTE", "DAY", "REQUESTS", "ERRORS",
                                "PROMPT_TOKENS", "COMPLETION_TOKENS", "COST_USD",
                                "AVG_LATENCY_MS"]
    assert lines[1].split()[:5] == ["acme", "chat", "2025-01-01", "2", "1"]
    assert lines[2].split()[:4] == ["beta", "chat", "2025-01-02", "1"]
    assert lines[1].index("2025-01-01") == lines[0].index("DAY")  # aligned columns
    assert "total: 3 requests, 1 errors, $0.375000" in err


def test_json_with_filters(config: Path, db: Path) -> None:
    seed(db)
    code, out, _ = run("--config", str(config), "--group-by", "tenant,target", "--json",
                       "--since", "2025-01-01", "--tenant", "acme")
    assert code == 0
    rows = json.loads(out)
    assert [(r["tenant"], r["target"], r["requests"], r["cost_usd"]) for r in rows] == [
        ("acme", None, 1, 0.0), ("acme", "sim/sim-primary", 1, 0.25)]
    code, out, _ = run("--config", str(config), "--json", "--group-by", "",
                       "--since", "2025-01-02")
    assert [r["requests"] for r in json.loads(out)] == [1]


def test_config_from_the_environment(config: Path, db: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seed(db)
    monkeypatch.setenv("BASTION_CONFIG", str(config))
    code, out, _ = run("--json", "--group-by", "tenant")
    assert code == 0 and [r["tenant"] for r in json.loads(out)] == ["acme", "beta"]


def test_no_ledger_file_yet_is_empty_not_an_error(config: Path) -> None:
    code, out, err = run("--config", str(config), "--json")
    assert code == 0 and json.loads(out) == [] and "no usage recorded yet" in err


def test_without_a_sqlite_path_exits_1_saying_why(tmp_path: Path) -> None:
    path = tmp_path / "memory.yaml"
    path.write_text(SIM_CONFIG)
    code, out, err = run("--config", str(path))
    assert code == 1 and out == ""
    assert "state.sqlite_path" in err


def test_bad_options_name_the_option(config: Path) -> None:
    code, _, err = run("--config", str(config), "--group-by", "colour")
    assert code == 2 and "--group-by" in err and "colour" in err
    code, _, err = run("--config", str(config), "--since", "last tuesday")
    assert code == 2 and "--since" in err
