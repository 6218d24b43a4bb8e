"""The ``bastion`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from bastion.cli_admin import keys_app, tenants_app
from bastion.cli_eval import eval_app
from bastion.cli_ingest import ingest as ingest_command
from bastion.cli_trace import trace as trace_command
from bastion.cli_usage import usage as usage_command
from bastion.config import BastionConfig, ConfigError, LocalProviderConfig, load_config
from bastion.state import WORKERS_ENV, hot_backend, hot_shared, lmdb_dir

app = typer.Typer(help="bastion: the production boundary for LLM calls.",
                  no_args_is_help=True, add_completion=False)
config_app = typer.Typer(help="Inspect and validate config files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
app.add_typer(eval_app, name="eval")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def port_held(host: str, port: int) -> Iterator[None]:
    """Listen on ``host:port`` (and accept nothing) for the duration, so that a process started
    meanwhile and asking the system for any free port (the shared model process binds port 0)
    cannot be given the gateway's port before uvicorn binds it: it was, now and then, when the
    gateway's port was itself a free one picked a moment before (``Address already in use``
    from uvicorn). Does nothing when the port cannot be held (taken already, or port 0): then
    uvicorn reports it, as before."""
    held: socket.socket | None = None
    if port:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            held = socket.socket(family, kind, proto)
            held.bind(address)
            held.listen(1)
        except OSError:
            if held is not None:
                held.close()
            held = None
    try:
        yield
    finally:
        if held is not None:
            held.close()


def _load_or_exit(path: Path | None):
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@config_app.command("check")
def config_check(file: Path = typer.Argument(..., help="The YAML config file to validate.")) -> None:
    """Validate FILE; exit 1 naming the file, field and reason of every problem."""
    loaded = _load_or_exit(file)
    cfg = loaded.config
    typer.echo(f"{loaded.source}: ok (version {cfg.version}, hash {loaded.hash}, "
               f"{len(cfg.providers)} provider(s), {len(cfg.models)} model alias(es))")


@app.command()
def serve(
    config: Path | None = typer.Option(None, "--config", "-c",
                                          help="Config file (default: the embedded model)."),
    host: str | None = typer.Option(None, help="Bind address (default from config)."),
    port: int | None = typer.Option(None, help="Port (default from config, 8000)."),
    workers: int = typer.Option(1, min=1, max=64, help="Worker processes."),
    log_level: str = typer.Option("warning", help="uvicorn's log level."),
) -> None:
    """Run the gateway: OpenAI- and Anthropic-compatible HTTP on HOST:PORT."""
    import uvicorn

    from bastion.api.http_protocol import HTTP_PROTOCOL

    loaded = _load_or_exit(config)
    cfg = loaded.config
    bind_host = host or cfg.server.host
    bind_port = port if port is not None else cfg.server.port
    if config is not None:
        os.environ["BASTION_CONFIG"] = str(config.resolve())
    else:
        os.environ.pop("BASTION_CONFIG", None)

    shared_model = None
    local = [n for n, p in cfg.providers.items() if isinstance(p, LocalProviderConfig)]
    if workers > 1 and len(local) == 1:
        # One model process for all workers, so each does not load its own copy.
        from bastion.providers.local import URL_ENV, LocalModelProcess

        shared_model = LocalModelProcess(cfg.providers[local[0]])  # type: ignore[arg-type]
        with port_held(bind_host, bind_port):
            os.environ[URL_ENV] = asyncio.run(shared_model.start())

    os.environ[WORKERS_ENV] = str(workers)
    if hot_backend(cfg.state, workers) == "lmdb":
        # Hot state starts from nothing, before any worker opens it (breakers, windows and
        # cache entries of a previous run are not carried over; budgets come back from the
        # state file).
        from bastion.stores.lmdb import reset_lmdb_dir

        try:
            reset_lmdb_dir(lmdb_dir(cfg.state))
        except RuntimeError:
            typer.echo(f"{lmdb_dir(cfg.state)} is in use: another bastion serves on this "
                       "state file (stop it, or give this one its own state.sqlite_path)",
                       err=True)
            raise typer.Exit(1) from None
        except (ValueError, OSError) as exc:
            typer.echo(f"cannot prepare the shared hot state: {exc}", err=True)
            raise typer.Exit(1) from None
    security = _security_notice(cfg, bind_host, workers)
    aliases = ", ".join(cfg.models) or "(none)"
    typer.echo(f"bastion {_version()} on http://{bind_host}:{bind_port}/v1  "
               f"config {loaded.source} (hash {loaded.hash})  models: {aliases}  "
               f"workers: {workers}", err=True)
    typer.echo(security, err=True)
    try:
        # uvicorn runs the sockets, workers, signals and lifespan; each connection speaks
        # bastion's own HTTP/1.1 protocol (``api.http_protocol``: ~10% less CPU per request).
        # bastion reads no client address, so no proxy-headers middleware on every request.
        uvicorn.run("bastion.api.app:app_from_env", factory=True, host=bind_host,
                    port=bind_port, workers=workers, loop="uvloop", http=HTTP_PROTOCOL,
                    proxy_headers=False, access_log=False, log_level=log_level, lifespan="on",
                    # No ``server: uvicorn`` on every answer: it tells a scanner what runs
                    # here and tells a client nothing (Date stays: HTTP/1.1 asks for it).
                    server_header=False, timeout_graceful_shutdown=10)
    finally:
        if shared_model is not None:
            asyncio.run(shared_model.stop())


def _security_notice(cfg: BastionConfig, host: str, workers: int = 1) -> str:
    """How this server is secured, said at start-up; refuse an open server off loopback."""
    if cfg.auth.mode == "off":
        if host not in _LOOPBACK:
            typer.echo(f"refusing to serve without authentication on {host}: set "
                       "auth.mode: required (keys: `bastion keys create`) or bind to "
                       "127.0.0.1", err=True)
            raise typer.Exit(1)
        auth = ("auth: OFF - requests without a key run as tenant 'default'; reachable from "
                "this machine only (loopback)")
    else:
        auth = "auth: API key required (Authorization: Bearer or x-api-key)"
    admin = os.environ.get(cfg.auth.admin_key_env or "") if cfg.auth.admin_key_env else None
    admin_note = (f"admin API: enabled ({cfg.auth.admin_key_env})" if admin else
                  "admin API: disabled (set " + (cfg.auth.admin_key_env or "admin_key_env")
                  + ")")
    path = cfg.state.sqlite_path
    if path is None:
        state = "state: in memory only (keys, ledger and idempotency records are lost on exit)"
        if workers > 1:
            state += ("; WARNING: each worker keeps its own rate limits, budgets and cache - "
                      "set state.sqlite_path to share them")
    else:
        backend = hot_backend(cfg.state, workers)
        hot = {"sqlite": "shared in it", "lmdb": f"shared in {lmdb_dir(cfg.state)}",
               "memory": "in each worker's memory"}[backend]
        state = f"state: durable records in {path}, hot state {hot}"
        if workers > 1 and not hot_shared(cfg.state, workers):
            state += " (WARNING: rate limits apply per worker with state.hot: memory)"
    return f"{auth}; {admin_note}; {state}"


app.command("usage")(usage_command)
app.command("trace")(trace_command)
app.command("ingest")(ingest_command)


def _version() -> str:
    from bastion import __version__

    return __version__


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()

