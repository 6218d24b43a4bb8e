"""``bastion trace REQUEST_ID``: the path one request took, from the request journal.

By default it reads the journal in the config's ``state.sqlite_path`` (every worker writes
there; a request shows up within ``observability.journal.flush_interval_s`` of finishing).
With ``--url`` it asks a running server instead (``GET /ui/api/requests/{id}``), which is the
way to reach a journal that lives only in a server's memory; the admin key is sent when the
server has auth on. ``--json`` prints the event as stored.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import orjson
import typer

from bastion.config import ConfigError, load_config
from bastion.observability.journal import event_of
from bastion.observability.trace_view import render_trace
from bastion.stores.journal import SqliteJournalStore

ConfigOption = typer.Option(None, "--config", "-c", envvar="BASTION_CONFIG",
                            help="Config whose state.sqlite_path holds the journal (default: "
                                 "$BASTION_CONFIG, else the embedded default).")
UrlOption = typer.Option(None, "--url", help="Ask this running server instead of reading the "
                                             "state file, e.g. http://127.0.0.1:8000.")
AdminKeyEnvOption = typer.Option("BASTION_ADMIN_KEY", "--admin-key-env",
                                 help="Environment variable holding the admin key (--url).")
JsonOption = typer.Option(False, "--json", help="Print the stored event as JSON.")


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(1)


async def _from_file(path: Path, request_id: str) -> dict[str, Any] | None:
    store = SqliteJournalStore(str(path), keep=1)
    try:
        entry = await store.get(request_id)
    finally:
        await store.aclose()
    return None if entry is None else event_of(entry)


def _from_server(url: str, request_id: str, key_env: str) -> dict[str, Any] | None:
    key = os.environ.get(key_env)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        resp = httpx.get(f"{url.rstrip('/')}/ui/api/requests/{request_id}", headers=headers,
                         timeout=10)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {url}: {exc}") from None
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        raise _fail(f"{url} answered {resp.status_code}: {message}")
    return resp.json()  # type: ignore[no-any-return]


def trace(request_id: str = typer.Argument(..., help="The x-request-id of the request."),
          config: Path | None = ConfigOption, url: str | None = UrlOption,
          admin_key_env: str = AdminKeyEnvOption, as_json: bool = JsonOption) -> None:
    """Print the path one request took: stages, attempts, retries, fallback, contract checks,
    cache, tokens and cost, each timed from the request's start."""
    if url:
        event = _from_server(url, request_id, admin_key_env)
    else:
        try:
            cfg = load_config(config).config
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        if cfg.state.sqlite_path is None:
            raise _fail("this config keeps the journal in the server's memory only (no "
                        "state.sqlite_path): ask the running server with --url")
        path = Path(cfg.state.sqlite_path).expanduser()
        if not path.exists():
            raise _fail(f"no state file at {path}: has a server with this config run here?")
        event = asyncio.run(_from_file(path, request_id))
    if event is None:
        raise _fail(f"no request {request_id!r} in the journal (it keeps the most recent "
                    "requests: observability.journal.keep)")
    if as_json:
        typer.echo(orjson.dumps(event, option=orjson.OPT_INDENT_2).decode())
        return
    for line in render_trace(event):
        typer.echo(line)
