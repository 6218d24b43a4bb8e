"""``bastion tenants …`` and ``bastion keys …``: identity administration on the SQLite file.

The commands open the config's ``state.sqlite_path`` directly, so they work with the server
stopped, and while it runs (WAL and busy timeouts make the file safe to share). A running
server notices a revocation within its key-cache TTL (5 s). Keys need a durable store: with no
``sqlite_path`` a key would vanish with this process, so the commands refuse.

``keys create`` prints the plaintext key alone on stdout (``KEY=$(bastion keys create …)``) and
everything else on stderr; it is the only time the key is shown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import typer

from bastion.config import ConfigError, load_config
from bastion.domain.errors import BastionError
from bastion.domain.identity import ApiKey
from bastion.services.identity import IdentityService
from bastion.stores.identity import SqliteIdentityStore

T = TypeVar("T")

tenants_app = typer.Typer(help="Tenants: who calls the gateway.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (stored only as hashes).", no_args_is_help=True)

_CONFIG_HELP = ("Config file whose state.sqlite_path holds tenants and keys "
                "(default: $BASTION_CONFIG, else the embedded default).")


def _sqlite_path(config: Path | None) -> str:
    try:
        cfg = load_config(config).config
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if cfg.state.sqlite_path is None:
        typer.echo("tenants and API keys need a durable store: set state.sqlite_path in the "
                   "config (and pass it with --config)", err=True)
        raise typer.Exit(1)
    path = Path(cfg.state.sqlite_path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def _run(config: Path | None, work: Callable[[IdentityService], Awaitable[T]]) -> T:
    """Run ``work`` against the SQLite file; a ``BastionError`` becomes its message and exit 1."""
    path = _sqlite_path(config)

    async def main() -> T:
        identity = IdentityService(SqliteIdentityStore(path))
        try:
            return await work(identity)
        finally:
            await identity.aclose()

    try:
        return asyncio.run(main())
    except BastionError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None


def _when(ts: int | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _key_line(key: ApiKey) -> str:
    status = f"revoked {_when(key.revoked_at)}" if key.revoked else "active"
    return (f"{key.id:<20} {key.tenant_id:<20} {key.name:<20} {key.prefix}…  "
            f"{_when(key.created_at):<20} {status}")


ConfigOption = typer.Option(None, "--config", "-c", envvar="BASTION_CONFIG", help=_CONFIG_HELP)


@tenants_app.command("create")
def tenants_create(name: str = typer.Argument(..., help="Lower-case slug, e.g. acme."),
                   config: Path | None = ConfigOption) -> None:
    """Create tenant NAME (its id, used in limits, budgets and the usage ledger)."""
    tenant = _run(config, lambda identity: identity.create_tenant(name))
    typer.echo(f"created tenant {tenant.id}")


@tenants_app.command("list")
def tenants_list(config: Path | None = ConfigOption) -> None:
    """List tenants."""
    tenants = _run(config, lambda identity: identity.list_tenants())
    if not tenants:
        typer.echo("no tenants", err=True)
        return
    typer.echo(f"{'ID':<20} {'CREATED':<20} STATUS")
    for t in tenants:
        typer.echo(f"{t.id:<20} {_when(t.created_at):<20} "
                   f"{'disabled' if t.disabled else 'active'}")


@keys_app.command("create")
def keys_create(tenant: str = typer.Option(..., "--tenant", "-t", help="The tenant's id."),
                name: str = typer.Option("default", "--name", "-n", help="A label for the key."),
                config: Path | None = ConfigOption) -> None:
    """Create an API key for a tenant and print it once."""
    key, plaintext = _run(config, lambda identity: identity.create_key(tenant, name))
    typer.echo(f"created key {key.id} ({key.prefix}…) for tenant {key.tenant_id}", err=True)
    typer.echo("Store this key now: it will not be shown again (only its hash is kept).",
               err=True)
    typer.echo(plaintext)


@keys_app.command("list")
def keys_list(tenant: str | None = typer.Option(None, "--tenant", "-t",
                                                help="Only this tenant's keys."),
              config: Path | None = ConfigOption) -> None:
    """List API keys (never their plaintext: it is not stored)."""
    keys = _run(config, lambda identity: identity.list_keys(tenant))
    if not keys:
        typer.echo("no API keys", err=True)
        return
    typer.echo(f"{'ID':<20} {'TENANT':<20} {'NAME':<20} {'PREFIX':<13}  {'CREATED':<20} STATUS")
    for key in keys:
        typer.echo(_key_line(key))


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (key_…)."),
                config: Path | None = ConfigOption) -> None:
    """Revoke a key. A running server stops accepting it within its key-cache TTL (5 s)."""
    key = _run(config, lambda identity: identity.revoke_key(key_id))
    typer.echo(f"revoked key {key.id} ({key.prefix}…) of tenant {key.tenant_id} "
               f"at {_when(key.revoked_at)}")
