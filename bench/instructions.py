"""Instructions per request: a repeatable measure of bastion's own CPU cost, for A/B changes.

    .venv/bin/python bench/instructions.py                       # full profile, this checkout
    .venv/bin/python bench/instructions.py --variant log-off='observability: {journal: {enabled: false}}|BASTION_LOG_LEVEL=warning'
    .venv/bin/python bench/instructions.py --src before=/tmp/before/src --src after=src
    .venv/bin/python bench/instructions.py --server               # through `bastion serve`

CPU time per request on a shared two-core machine moves by 10-30% from one run to the next
(``bench/run.py`` keeps the lowest of several rounds for that reason), so a change worth 3% is
invisible to it. Instructions are not: ``valgrind --tool=callgrind`` counts what the process
executes, the same count for the same work whatever else the machine is doing (two runs of
the same 1,280 requests differ by ~0.4%). User-space instructions leave out the kernel (system
calls, the TCP stack) and cache misses, so they say how much *bastion's code* costs, not the
whole CPU bill: use this to decide between two versions of the code, ``bench/run.py`` for the
figures of record.

How: the mock upstream runs as its own process (not counted). Each variant runs twice under
callgrind, with ``N`` and ``2N`` requests after the same warm-up, and the difference divided by
``N`` is the cost of one request, start-up and warm-up cancelling out. By default the app is
driven in-process (this file, ``--drive``: the ASGI app called directly with 32 requests in
flight, no HTTP server or client socket); ``--server`` runs ``bastion serve`` under callgrind
instead and sends the requests over loopback HTTP (its server included), zeroing the counters
after the warm-up. Each request is a deterministic, unique chat completion (a cache lookup
that misses, then a store) with the profile's API key, as ``bench/run.py`` sends.

Variants (``--variant NAME=YAML|ENV=VALUE,...``) append YAML to the profile's config and set
environment variables; ``--src NAME=DIR`` runs another source tree of bastion (a ``git
worktree`` of the commit before a change, say) against this one. Valgrind runs ~35x slower
than native; a variant takes ~3 minutes in-process at the default ``-n 1280``, two run at
once on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import (  # noqa: E402
    BASTION_PROFILES,
    bastion_config,
    free_port,
    mock_server,
    prepare_main,
    profile_needs_key,
    provision_keys,
)

#: Requests sent before counting starts, and requests in flight.
WARMUP = 320
CONCURRENCY = 32
_COLLECTED = re.compile(r"Collected : (\d+)")
_TOTALS = re.compile(r"^([\d,]+) +\(100\.0%\) +PROGRAM TOTALS", re.M)

BODY = ('{"model":"bench-model","messages":[{"role":"system","content":"You are a concise '
        'assistant."},{"role":"user","content":"Say hello to the benchmark in one short '
        'sentence. %s"}],"max_tokens":32,"temperature":0%s}')
STREAM = ',"stream":true,"stream_options":{"include_usage":true}'


# --------------------------------------------------------------------------- the driver


def drive(config: str, key: str, n: int, stream: bool) -> None:
    """In this process: the ASGI app, ``WARMUP`` requests, then ``n`` more, 32 in flight."""
    import uvloop

    os.environ["BASTION_CONFIG"] = config
    from bastion.api.app import create_app

    app = create_app(tune=True)
    headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"bench"),
               (b"content-type", b"application/json")]
    if key:
        headers.append((b"authorization", b"Bearer " + key.encode()))
    tag = f"{os.getpid()}-{time.time_ns()}"
    counter = 0

    async def one() -> None:
        nonlocal counter
        counter += 1
        body = (BODY % (f"{tag}-{counter}", STREAM if stream else "")).encode()
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                 "http_version": "1.1", "server": ("127.0.0.1", 8000),
                 "client": ("127.0.0.1", 40000), "scheme": "http", "root_path": "",
                 "headers": [*headers, (b"content-length", str(len(body)).encode())],
                 "state": {}, "method": "POST", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "query_string": b""}
        sent = False
        never = asyncio.get_running_loop().create_future()
        status: list[int] = []
        data: list[bytes] = []

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await never
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            else:
                data.append(message.get("body", b""))

        await app(scope, receive, send)
        if status != [200] or (stream and not b"".join(data).rstrip().endswith(b"[DONE]")):
            raise SystemExit(f"request failed: {status} {b''.join(data)[:300]!r}")

    async def run(count: int) -> None:
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    async def main() -> None:
        async with app.router.lifespan_context(app):
            await run(WARMUP)
            await run(n)

    uvloop.run(main())


# --------------------------------------------------------------------------- measuring


@dataclass
class Variant:
    name: str
    yaml: str = ""
    env: dict[str, str] = field(default_factory=dict)
    src: str | None = None


def parse_variant(spec: str) -> Variant:
    name, _, rest = spec.partition("=")
    yaml, _, env = rest.partition("|")
    pairs = dict(kv.split("=", 1) for kv in env.split(",") if kv)
    return Variant(name, yaml.replace("\\n", "\n"), pairs)


def _env(variant: Variant) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": "0", "BASTION_LOG_LEVEL": "info", **variant.env}
    if variant.src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [variant.src,
                                                          env.get("PYTHONPATH", "")]))
    return env


def count_in_process(variant: Variant, config: Path, key: str, n: int, stream: bool) -> int:
    """Instructions of one in-process run of ``WARMUP + n`` requests (start-up included)."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
           str(Path(__file__).resolve()), "--drive", str(config), key or "-", str(n)]
    if stream:
        cmd.append("--stream")
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(variant))
    found = _COLLECTED.search(out.stderr)
    if out.returncode != 0 or not found:
        raise RuntimeError(f"{variant.name}: the driver failed\n{out.stderr[-3000:]}")
    return int(found.group(1))


async def _send(port: int, n: int, key: str, stream: bool) -> int:
    """``n`` chat completions over ``CONCURRENCY`` keep-alive connections; the failures."""
    left, failed, tag = n, 0, time.time_ns()

    async def connection() -> None:
        nonlocal left, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left > 0:
            left -= 1
            body = (BODY % (f"{tag}-{left}", STREAM if stream else "")).encode()
            auth = f"authorization: Bearer {key}\r\n" if key else ""
            writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n"
                          f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                          f"{auth}\r\n").encode() + body)
            failed += b" 200 " not in await reader.readline()
            length, chunked = None, False
            while (line := (await reader.readline()).lower()) != b"\r\n":
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                chunked |= line.startswith(b"transfer-encoding:") and b"chunked" in line
            if length is not None:
                await reader.readexactly(length)
            elif chunked:
                while size := int((await reader.readline()).strip(), 16):
                    await reader.readexactly(size + 2)
                await reader.readexactly(2)
        writer.close()

    await asyncio.gather(*(connection() for _ in range(CONCURRENCY)))
    return failed


def count_server(variant: Variant, config: Path, key: str, n: int, stream: bool,
                 workdir: Path) -> int:
    """Instructions of ``bastion serve`` (under callgrind) for ``n`` requests over HTTP,
    counted between a zeroing after the warm-up and a dump after the last answer."""
    port = free_port()
    out = workdir / f"callgrind.{variant.name}.{n}"
    bastion = shutil.which("bastion", path=str(Path(sys.executable).parent)) or "bastion"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", sys.executable,
           bastion, "serve", "--config", str(config), "--host", "127.0.0.1",
           "--port", str(port)]
    log = open(workdir / f"serve.{variant.name}.{n}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(variant),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                asyncio.run(_send(port, 1, key, stream))
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{variant.name}: bastion serve did not start") from None
                time.sleep(1)
        if asyncio.run(_send(port, WARMUP, key, stream)):
            raise RuntimeError(f"{variant.name}: warm-up requests failed")
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                       capture_output=True)
        failed = asyncio.run(_send(port, n, key, stream))
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                       capture_output=True)
        if failed:
            raise RuntimeError(f"{variant.name}: {failed} of {n} requests failed")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        log.close()
    dumps = sorted(workdir.glob(f"callgrind.{variant.name}.{n}.*.1"))
    if not dumps:
        raise RuntimeError(f"{variant.name}: no callgrind dump")
    annotated = subprocess.run(["callgrind_annotate", str(dumps[-1])], capture_output=True,
                               text=True).stdout
    found = _TOTALS.search(annotated)
    if not found:
        raise RuntimeError(f"{variant.name}: no totals in {dumps[-1]}")
    return int(found.group(1).replace(",", ""))


def per_request(variant: Variant, config: Path, key: str, n: int, stream: bool,
                server: bool, workdir: Path) -> float:
    if server:
        # Counted from zero after the warm-up: one run is enough.
        return count_server(variant, config, key, n, stream, workdir) / n
    small = count_in_process(variant, config, key, n, stream)
    large = count_in_process(variant, config, key, 2 * n, stream)
    return (large - small) / n


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-n", "--requests", type=int, default=1280,
                   help="requests counted per run (in-process: runs of N and 2N)")
    p.add_argument("--profile", choices=BASTION_PROFILES, default="full")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=YAML|ENV=V,...",
                   help="a config and environment variant (repeatable)")
    p.add_argument("--src", action="append", default=[], metavar="NAME=DIR",
                   help="another bastion source tree to run (repeatable)")
    p.add_argument("--stream", action="store_true", help="SSE requests instead of plain")
    p.add_argument("--server", action="store_true",
                   help="count `bastion serve` over HTTP instead of the app in-process")
    p.add_argument("--jobs", type=int, default=2, help="variants measured at once")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        drive(sys.argv[2], "" if sys.argv[3] == "-" else sys.argv[3], int(sys.argv[4]),
              "--stream" in sys.argv[5:])
        return 0
    args = parse_args(argv)
    if not prepare_main(needs_wrk=False):
        return 2
    if shutil.which("valgrind") is None:
        print("valgrind not found: apt-get install -y valgrind", file=sys.stderr)
        return 2
    variants = [parse_variant(v) for v in args.variant]
    for spec in args.src:
        name, _, src = spec.partition("=")
        variants.append(Variant(name, src=str(Path(src).resolve())))
    if not variants:
        variants = [Variant("bastion")]
    workdir = Path(tempfile.mkdtemp(prefix="bastion-instructions-"))
    mock = mock_server(free_port(), workdir / "mock.log", chunk_interval_ms=0)
    results: dict[str, float] = {}
    try:
        mock.start()
        mock.wait_ready(30)
        db = workdir / "state.db"
        base = bastion_config(mock.port, db, args.profile)
        key = provision_keys(db)[0] if profile_needs_key(args.profile) else ""
        configs = {}
        for v in variants:
            path = workdir / f"{v.name}.yaml"
            path.write_text(base + ("\n" + v.yaml + "\n" if v.yaml else ""))
            configs[v.name] = path
        print(f"{'server' if args.server else 'in-process'}, profile {args.profile}, "
              f"{'SSE' if args.stream else 'plain'}, {args.requests} requests per run; "
              f"{len(variants)} variant(s), {args.jobs} at a time", file=sys.stderr)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {v.name: pool.submit(per_request, v, configs[v.name], key,
                                           args.requests, args.stream, args.server, workdir)
                       for v in variants}
            for name, future in futures.items():
                results[name] = future.result()
    finally:
        mock.stop()
    first = next(iter(results.values()))
    print("| variant | instructions per request | vs first |\n|---|---:|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:,.0f} | {value / first:.3f} |")
    print("BENCH_JSON " + json.dumps({"requests": args.requests, "server": args.server,
                                      "stream": args.stream, "profile": args.profile,
                                      "instructions_per_request": results}))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
