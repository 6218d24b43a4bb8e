"""CPU cost per upstream call: pooled ``aiohttp.ClientSession``, pooled ``httpx.AsyncClient``,
and bastion's own ``providers.http1.Pool`` (the OpenAI-compatible adapter's client).

    .venv/bin/python bench/http_clients.py [-n 3000] [--concurrency 32] [--rounds 3]

Starts ``bench/mock_upstream.py`` on a free 127.0.0.1 port, then in this process (uvloop) sends
the same chat body with each client: ``n`` sequential requests, ``n`` requests 32 at a time, and
``n/4`` streams of 20 SSE chunks read to the end. The figure is client CPU µs per request
(``time.process_time`` of this process: the event loop, the client library, the parse of the
response head; the mock runs in its own process and is not counted). Each round runs every
client on a fresh loop and client, alternating order; the best round is reported (the least
disturbed by the rest of the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import httpx
import uvloop

BENCH_DIR = Path(__file__).resolve().parent
BODY = json.dumps({
    "model": "mock-model",
    "messages": [{"role": "system", "content": "You are a concise assistant."},
                 {"role": "user", "content": "Say hello to the benchmark in one short sentence."}],
    "max_tokens": 32, "temperature": 0,
}).encode()
STREAM_BODY = BODY[:-1] + b', "stream": true}'
HEADERS = {"content-type": "application/json"}


async def run_aiohttp(url: str, mode: str, n: int, conc: int) -> int:
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     timeout=aiohttp.ClientTimeout(total=10)) as s:
        async def one() -> int:
            if mode == "stream":
                async with s.post(url, data=STREAM_BODY, headers=HEADERS) as r:
                    size = 0
                    async for chunk in r.content.iter_any():
                        size += len(chunk)
                    return size
            async with s.post(url, data=BODY, headers=HEADERS) as r:
                return len(await r.read())
        return await _drive(one, mode, n, conc)


async def run_httpx(url: str, mode: str, n: int, conc: int) -> int:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as c:
        async def one() -> int:
            if mode == "stream":
                async with c.stream("POST", url, content=STREAM_BODY, headers=HEADERS) as r:
                    size = 0
                    async for chunk in r.aiter_raw():
                        size += len(chunk)
                    return size
            r = await c.post(url, content=BODY, headers=HEADERS)
            return len(r.content)
        return await _drive(one, mode, n, conc)


async def run_http1(url: str, mode: str, n: int, conc: int) -> int:
    from bastion.providers.http1 import Pool

    base, _, path = url.partition("/v1")
    pool = Pool(base + "/v1", size=256, headers=HEADERS)
    try:
        async def one() -> int:
            r = await pool.request("POST", path, STREAM_BODY if mode == "stream" else BODY)
            try:
                if mode == "stream":
                    size = 0
                    async for chunk in r.blocks():
                        size += len(chunk)
                    return size
                return len(await r.read())
            finally:
                r.release()
        return await _drive(one, mode, n, conc)
    finally:
        await pool.aclose()


async def _drive(one, mode: str, n: int, conc: int) -> int:
    for _ in range(min(200, n)):  # warm the pool and the code paths
        await one()
    t0 = time.process_time()
    if mode == "sequential":
        for _ in range(n):
            await one()
    else:
        sem = asyncio.Semaphore(conc)

        async def limited() -> None:
            async with sem:
                await one()
        await asyncio.gather(*(limited() for _ in range(n)))
    return time.process_time() - t0


CLIENTS = {"aiohttp": run_aiohttp, "httpx": run_httpx, "bastion http1": run_http1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=3000, help="requests per client per workload")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not (1 <= args.n <= 100_000 and 1 <= args.rounds <= 10 and 1 <= args.concurrency <= 256):
        p.error("bounds: 1 <= n <= 100000, 1 <= rounds <= 10, 1 <= concurrency <= 256")

    port = free_port()
    mock = subprocess.Popen([sys.executable, str(BENCH_DIR / "mock_upstream.py"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        workloads = [("sequential", args.n), ("concurrent", args.n),
                     ("stream", max(1, args.n // 4))]
        best: dict[tuple[str, str], float] = {}
        for rnd in range(args.rounds):
            order = list(CLIENTS) if rnd % 2 == 0 else list(reversed(CLIENTS))
            for mode, n in workloads:
                for name in order:
                    cpu = uvloop.run(asyncio.wait_for(
                        CLIENTS[name](url, mode, n, args.concurrency), timeout=120))
                    us = cpu / n * 1e6
                    key = (mode, name)
                    best[key] = min(best.get(key, us), us)
    finally:
        os.killpg(mock.pid, signal.SIGTERM)
        mock.wait(timeout=10)

    print(f"command: `{' '.join([sys.executable, *sys.argv])}`")
    print(f"aiohttp {aiohttp.__version__}, httpx {httpx.__version__}, uvloop; "
          f"n={args.n} (streams n/4), concurrency={args.concurrency}, best of {args.rounds}\n")
    print("| workload | aiohttp CPU µs/req | httpx CPU µs/req | bastion http1 CPU µs/req "
          "| httpx / aiohttp | http1 / aiohttp |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, _ in workloads:
        a, h, b = (best[(mode, "aiohttp")], best[(mode, "httpx")],
                   best[(mode, "bastion http1")])
        label = "stream (20 SSE chunks)" if mode == "stream" else f"{mode} POST"
        print(f"| {label} | {a:.0f} | {h:.0f} | {b:.0f} | {h / a:.2f}x | {b / a:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
