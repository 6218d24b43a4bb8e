"""Shared fixtures: configs for the simulated provider, and a live gateway on loopback.

``live_gateway`` runs the real ASGI app under uvicorn with bastion's HTTP protocol, as
``bastion serve`` does (``api.http_protocol``), in a background thread on a free 127.0.0.1
port, so tests talk real HTTP with the official SDKs while still being able to look at the
gateway's providers (call counters, in-flight tasks).
"""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
import uvloop

from bastion.config import parse_config
from bastion.gateway import Gateway

SIM_CONFIG = """
version: 1
providers:
  sim:
    type: simulated
    seed: 7
    reply: "Hello from the simulated model."
    stream_chunks: 4
  backup:
    type: simulated
    seed: 8
    reply: "Hello from the backup model."
    stream_chunks: 3
models:
  fast:
    targets:
      - {provider: sim, model: sim-primary, timeout_s: 2, retries: 2, backoff_base_s: 0.01,
         backoff_max_s: 0.05, breaker: {failure_threshold: 100, window_s: 60, cooldown_s: 1}}
      - {provider: backup, model: sim-backup, timeout_s: 2, retries: 0}
  solo:
    targets:
      - {provider: sim, model: sim-solo, timeout_s: 1, retries: 1, backoff_base_s: 0.01,
         backoff_max_s: 0.02}
  vectors:
    kind: embeddings
    targets:
      - {provider: sim, model: sim-embed}
routes:
  chat: {deadline_s: 5, max_deadline_s: 30}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_gateway(config_text: str = SIM_CONFIG, **kw: Any) -> Gateway:
    return Gateway(parse_config(textwrap.dedent(config_text)), **kw)


@dataclass
class LiveGateway:
    gateway: Gateway
    base_url: str  # e.g. http://127.0.0.1:PORT
    loop: asyncio.AbstractEventLoop

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def provider(self, name: str) -> Any:
        return self.gateway.providers[name]

    def tasks(self) -> set[asyncio.Task[Any]]:
        """Tasks alive on the server's loop (for "no upstream task outlives its request")."""
        return asyncio.run_coroutine_threadsafe(_tasks(), self.loop).result(5)


async def _tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current}


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread cannot own signals
        pass


def run_live(gateway: Gateway) -> Iterator[LiveGateway]:
    from bastion.api.app import create_app
    from bastion.api.http_protocol import HTTP_PROTOCOL

    port = free_port()
    config = uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port, loop="none",
                            http=HTTP_PROTOCOL, proxy_headers=False, log_level="warning",
                            access_log=False, lifespan="on")
    server = _Server(config)
    holder: dict[str, Any] = {}

    def target() -> None:
        loop = uvloop.new_event_loop()
        holder["loop"] = loop
        loop.run_until_complete(server.serve())
        loop.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test gateway did not start")
        time.sleep(0.01)
    try:
        yield LiveGateway(gateway, f"http://127.0.0.1:{port}", holder["loop"])
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def live() -> Iterator[LiveGateway]:
    """The gateway on the simulated providers of ``SIM_CONFIG``, on loopback."""
    yield from run_live(make_gateway())


@pytest.fixture
def http(live: LiveGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        yield client
