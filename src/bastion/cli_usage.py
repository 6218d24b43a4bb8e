"""``bastion usage``: the usage ledger as a table (or JSON), read from the SQLite file.

It opens the config's ``state.sqlite_path`` directly, so it works with the server stopped or
running (WAL lets it read while servers write). Rows still queued in a running server's
memory (at most ``ledger.flush_interval_s`` old) are not in the file yet. Without a
``sqlite_path`` the ledger lives only in the server's memory, so there is nothing to read and
the command says so and exits 1.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import typer

from bastion.api.usage_routes import DEFAULT_GROUP_BY, parse_group_by, parse_instant
from bastion.config import ConfigError, load_config
from bastion.domain.errors import BastionError
from bastion.services.pricing import from_micros, to_micros
from bastion.stores.ledger import SqliteLedgerStore

_COLUMNS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd",
            "avg_latency_ms")

ConfigOption = typer.Option(None, "--config", "-c", envvar="BASTION_CONFIG",
                            help="Config file whose state.sqlite_path holds the ledger "
                                 "(default: $BASTION_CONFIG, else the embedded default).")
GroupByOption = typer.Option(DEFAULT_GROUP_BY, "--group-by", "-g",
                             help="Comma list of tenant, route, day, target ('' for totals).")
SinceOption = typer.Option(None, "--since", help="Epoch seconds, ISO date or datetime (UTC).")
UntilOption = typer.Option(None, "--until", help="Exclusive; a bare date includes that day.")
TenantOption = typer.Option(None, "--tenant", "-t", help="Only this tenant.")
JsonOption = typer.Option(False, "--json", help="Print the rows as a JSON array.")


def _ledger_path(config: Path | None) -> Path:
    try:
        cfg = load_config(config).config
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if cfg.state.sqlite_path is None:
        typer.echo("the usage ledger needs a durable store: set state.sqlite_path in the config "
                   "(and pass it with --config); without one it lives only in the server's "
                   "memory", err=True)
        raise typer.Exit(1)
    return Path(cfg.state.sqlite_path).expanduser()


async def _aggregate(path: Path, group_by: list[str], since: float | None,
                     until: float | None, tenant: str | None) -> list[dict[str, Any]]:
    store = SqliteLedgerStore(str(path))
    try:
        return await store.aggregate(group_by, since, until, tenant)
    finally:
        await store.aclose()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}" if value and abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _table(rows: list[dict[str, Any]], group_by: list[str]) -> list[str]:
    headers = [*group_by, *_COLUMNS]
    cells = [[_cell(row.get(h)) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    numeric = [False] * len(group_by) + [True] * len(_COLUMNS)

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if right else v.ljust(w)
                         for v, w, right in zip(values, widths, numeric, strict=True)).rstrip()

    return [line([h.upper() for h in headers]), *(line(c) for c in cells)]


def usage(config: Path | None = ConfigOption, group_by: str = GroupByOption,
          since: str | None = SinceOption, tenant: str | None = TenantOption,
          json_out: bool = JsonOption, until: str | None = UntilOption) -> None:
    """Requests, errors, tokens and cost from the usage ledger, grouped (UTC days)."""
    try:
        groups = parse_group_by(group_by)
        start = parse_instant(since, "since") if since else None
        end = parse_instant(until, "until", end_of_day=True) if until else None
    except BastionError as exc:
        typer.echo(f"error: --{exc.param.replace('_', '-') if exc.param else 'option'}: "
                   f"{exc.message}", err=True)
        raise typer.Exit(2) from None
    path = _ledger_path(config)
    if not path.exists():
        typer.echo(f"no usage recorded yet ({path} does not exist)", err=True)
        rows: list[dict[str, Any]] = []
    else:
        rows = asyncio.run(_aggregate(path, groups, start, end, tenant))
    if json_out:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        typer.echo("no usage in this range", err=True)
        return
    for text in _table(rows, groups):
        typer.echo(text)
    total_cost = from_micros(sum(to_micros(r["cost_usd"]) for r in rows))
    typer.echo(f"total: {sum(r['requests'] for r in rows)} requests, "
               f"{sum(r['errors'] for r in rows)} errors, ${total_cost:.6f}", err=True)
