"""Per-request CPU cost as the deployment grows: one dimension at a time, everything else fixed.

    .venv/bin/python bench/scaling.py --quick               # a short check (~2 minutes)
    .venv/bin/python bench/scaling.py                       # 10 s per point
    .venv/bin/python bench/scaling.py --rounds 3 --dimensions keys,aliases

Dimensions (each point runs on a fresh ``bastion serve`` with a fresh state file, so no point
inherits another's cache entries, windows or journal):

- ``keys``: API keys and tenants, one key per tenant (1, 100, 1,000, 10,000), provisioned with
  ``harness.provision_keys`` into the state file before start; ``BENCH_KEYS_FILE`` makes wrk
  take them in turn, request by request. The warm-up is one wrk run long enough for every key
  to be presented at least once (``keys x threads`` requests: each wrk thread walks the list
  from its own offset); its CPU per request is reported apart ("first pass"), and the measured
  figure is the steady state after it. The table shows both, and the two combined.
- ``aliases``: model aliases under ``models:`` (1, 10, 200), each with the same two targets
  as the ``full`` profile's ``bench-model``; ``bench/post.lua`` spreads the requests over
  them in turn (``BENCH_MODELS_FILE``).
- ``connections``: wrk connections (10, 100, 1,000), plain requests.
- ``slow-streams``: 1,000 concurrent SSE streams from a mock that spaces its 22 events 50 ms
  apart (``--chunk-interval-ms 50``: ~1.1 s per stream). They must all be served without an
  error; reported with p50/p99 latency and, from a few probe connections of this script's own,
  the time to the response headers and to the first SSE event, on *new* connections. The
  point runs with the harness config (connections follow the bulkhead: 2,048);
  ``--slow-variants`` adds others: ``pool=N`` (a smaller pool), ``workers=N``, ``defaults``.

The fixed values: 1 key, 1 alias, ``-c 32`` connections, plain requests, profile ``full`` with
deterministic unique bodies (every request a cache lookup that misses, and a store), one worker.
For every point: requests/s, p50/p99, bastion CPU ms/request (``harness.cpu_seconds`` over the
process tree, children included), the mock's, errors (wrk's socket, status and body checks, and
the server's own statuses from its request log), worker RSS. Per dimension it states the ratio of
the largest point's CPU/request to the smallest's: flat = close to 1.0.

``ulimit -n`` is raised (to the hard limit, at most 65,536) before anything is spawned, so wrk
and the servers inherit it. Writes ``bench/results/scaling-<timestamp>.json``. Exit 2 when a
point failed (a server did not start or died, a sanity check failed, no request completed);
exit 1 when a slow-streams point had an error, or with ``--max-ratio`` when any dimension's
ratio exceeds it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml
from harness import (
    BASTION_PROFILES,
    BENCH_DIR,
    CHAT_PATH,
    SANITY_BODY,
    Server,
    bastion_config,
    cpu_seconds,
    free_port,
    mock_server,
    prepare_main,
    profile_needs_key,
    provision_keys,
    raise_nofile,
    sanity_check,
)
from run import run_wrk
from soak import (
    error_count,
    host_busy_seconds,
    log_warnings,
    own_cpu_seconds,
    source_state,
    worker_rss,
    wrk_cmd,
)

DIMENSIONS = ("keys", "aliases", "connections", "slow-streams")
ALIAS = "bench-model"


# --------------------------------------------------------------------------- points


@dataclass
class Point:
    dimension: str
    value: int  # the swept quantity: keys, aliases, connections or streams
    label: str
    keys: int = 1
    aliases: int = 1
    connections: int = 32
    stream: bool = False
    slow: bool = False
    pool_size: int | None = None  # None: the harness config's
    #: Providers' pool and bulkhead and the admission section at the schema's defaults.
    defaults: bool = False
    workers: int | None = None  # None: --workers


@dataclass
class Result:
    dimension: str
    label: str
    value: int
    ok: bool
    error: str | None = None
    round: int = 1
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms_per_req: float = 0.0
    mock_cpu_ms_per_req: float = 0.0
    errors: int = 0
    error_detail: dict = field(default_factory=dict)
    server_statuses: dict = field(default_factory=dict)
    #: The outcome (error code) of every server answer >= 500, counted.
    server_failures: dict = field(default_factory=dict)
    #: Warning and error events in the server log during the point (soak.log_warnings).
    server_warnings: dict = field(default_factory=dict)
    fallbacks: int = 0
    retried: int = 0
    rss_mib: float = 0.0  # the largest worker's
    rss: dict = field(default_factory=dict)
    #: bastion's CPU seconds per second of the measured run (1.0 = one core busy).
    cpu_util: float = 0.0
    #: CPUs' worth of other work on the machine during the measured run (soak.host_busy_seconds)
    other_load: float = 0.0
    #: The warm-up (for ``keys``: every key presented at least once, the "first pass").
    warmup_requests: int = 0
    warmup_seconds: float = 0.0
    warmup_cpu_ms_per_req: float = 0.0
    warmup_errors: int = 0
    #: Warm-up and measured run together: the figure "with the first pass".
    combined_cpu_ms_per_req: float = 0.0
    #: Probe connections of this script (slow streams): time to headers / first event.
    probe: dict = field(default_factory=dict)
    wrk: list[str] = field(default_factory=list)


def points_for(args: argparse.Namespace) -> list[Point]:
    pts: list[Point] = []
    c = args.connections
    if "keys" in args.dimensions:
        pts += [Point("keys", n, f"{n:,} keys", keys=n, connections=c) for n in args.keys]
    if "aliases" in args.dimensions:
        pts += [Point("aliases", n, f"{n:,} aliases", aliases=n, connections=c)
                for n in args.aliases]
    if "connections" in args.dimensions:
        pts += [Point("connections", n, f"-c {n:,}", connections=n) for n in args.conns]
    if "slow-streams" in args.dimensions:
        for variant in args.slow_variants:
            label = f"{args.slow_streams:,} slow streams"
            size, defaults, workers = None, False, None
            for part in variant.split("+"):
                if part.startswith("pool="):
                    size = int(part.removeprefix("pool="))
                    label += f", pool_size {size}"
                elif part.startswith("workers="):
                    workers = int(part.removeprefix("workers="))
                    label += f", {workers} workers"
            if variant == "defaults":
                defaults = True
                label += ", shipped defaults (pool 100, bulkhead 64, max_in_flight 512)"
            pts.append(Point("slow-streams", args.slow_streams, label,
                             connections=args.slow_streams, stream=True, slow=True,
                             pool_size=size, defaults=defaults, workers=workers))
    return pts


# --------------------------------------------------------------------------- config, state


def config_for(point: Point, mock_port: int, db: Path, profile: str) -> tuple[str, list[str]]:
    """The YAML for ``point`` (the harness config, its aliases multiplied, its pool resized)
    and the alias names the load spreads over."""
    doc = yaml.safe_load(bastion_config(mock_port, db, profile))
    spec = doc["models"][ALIAS]
    names = [ALIAS] + [f"{ALIAS}-{i}" for i in range(1, point.aliases)]
    doc["models"] = {name: spec for name in names}
    if point.pool_size is not None:
        for provider in doc["providers"].values():
            provider["pool_size"] = point.pool_size
    if point.defaults:
        for provider in doc["providers"].values():
            provider.pop("pool_size", None)
            provider.pop("bulkhead", None)
        doc.pop("admission", None)
    # Dumped without anchors, so every alias's targets are written out in full.

    class NoAlias(yaml.SafeDumper):
        def ignore_aliases(self, data: object) -> bool:
            return True

    return yaml.dump(doc, Dumper=NoAlias, sort_keys=False, width=100), names


class KeyTemplates:
    """State files with N tenants of one key each, provisioned once per N and copied for every
    point that needs them (a fresh copy per run: no point sees another's usage or windows)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._made: dict[int, tuple[Path, list[str]]] = {}

    def state_file(self, n: int, dest: Path) -> list[str]:
        if n not in self._made:
            path = self.tmp / f"keys-{n}.template.db"
            started = time.monotonic()
            keys = provision_keys(path, tenants=n)
            # One file, no WAL beside it, so a plain copy is the whole state.
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            print(f"... provisioned {n:,} tenants/keys in {time.monotonic() - started:.1f} s",
                  file=sys.stderr, flush=True)
            self._made[n] = (path, keys)
        path, keys = self._made[n]
        shutil.copyfile(path, dest)
        return keys


# --------------------------------------------------------------------------- probes


class StreamProbe:
    """``n`` connections of this process that each send streaming requests one after another
    while the load runs, timing the response headers, the first SSE event and the end. (wrk
    sees only whole responses.) Runs its own event loop in a thread."""

    def __init__(self, port: int, n: int, key: str | None, alias: str) -> None:
        self.port, self.n, self.key, self.alias = port, n, key, alias
        self.headers_s: list[float] = []
        self.first_event_s: list[float] = []
        self.total_s: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _request(self, i: int) -> bytes:
        body = dict(SANITY_BODY, model=self.alias, temperature=0, stream=True,
                    stream_options={"include_usage": True})
        body["messages"] = [dict(m) for m in SANITY_BODY["messages"]]
        tag = f"probe-{uuid.uuid4().hex[:12]}-{i}"
        body["messages"][-1]["content"] += f" [{tag}]"
        data = json.dumps(body).encode()
        auth = f"authorization: Bearer {self.key}\r\n" if self.key else ""
        # The request id names the probe in the server's request log.
        return (f"POST {CHAT_PATH} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(data)}\r\n{auth}"
                f"x-request-id: {tag}\r\nconnection: close\r\n\r\n").encode() + data

    async def _one(self, i: int) -> None:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(self._request(i))
            await writer.drain()
            buf = b""
            head_at = first_at = None
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), 60)
                if not chunk:
                    break
                now = time.perf_counter()
                if head_at is None:
                    head_at = now
                buf += chunk
                if first_at is None and b"data:" in buf.partition(b"\r\n\r\n")[2]:
                    first_at = now
            end = time.perf_counter()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        status = buf.split(b" ", 2)[1] if buf.startswith(b"HTTP/") else b"?"
        if status != b"200" or b"data: [DONE]" not in buf or b'"error"' in buf:
            self.failures.append(f"HTTP {status.decode(errors='replace')}: "
                                 f"{buf[-200:].decode(errors='replace')!r}")
            return
        assert head_at is not None and first_at is not None
        self.headers_s.append(head_at - started)
        self.first_event_s.append(first_at - started)
        self.total_s.append(end - started)

    async def _loop(self, slot: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                await self._one(slot * 1_000_000 + i)
            except (OSError, TimeoutError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)

    def _run(self) -> None:
        async def main() -> None:
            await asyncio.gather(*(self._loop(s) for s in range(self.n)))
        asyncio.run(main())

    def start(self) -> None:
        if self.n > 0:
            self._thread = threading.Thread(target=self._run, name="stream-probe", daemon=True)
            self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=90)

        def pct(xs: list[float], q: float) -> float | None:
            if not xs:
                return None
            xs = sorted(xs)
            return round(xs[min(len(xs) - 1, math.ceil(q / 100 * len(xs)) - 1)] * 1000, 1)

        return {"connections": self.n, "streams": len(self.total_s),
                "failures": len(self.failures), "failure_examples": self.failures[:3],
                "headers_ms": {"p50": pct(self.headers_s, 50), "p99": pct(self.headers_s, 99)},
                "first_event_ms": {"p50": pct(self.first_event_s, 50),
                                   "p99": pct(self.first_event_s, 99)},
                "total_ms": {"p50": pct(self.total_s, 50), "p99": pct(self.total_s, 99)}}


# --------------------------------------------------------------------------- measuring


def server_outcomes(log_path: Path, offset: int
                    ) -> tuple[dict[str, int], dict[str, int], int, int]:
    """Statuses, the outcomes of the answers >= 500, fallbacks and retried requests in the
    server's request log since ``offset`` (its ``request.completed`` events). 499 is a client
    that went away: wrk closes its open connections when its time is up."""
    statuses: dict[str, int] = {}
    failures: dict[str, int] = {}
    fallbacks = retried = 0
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return statuses, failures, 0, 0
    for line in data.splitlines():
        if b'"request.completed"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        key = str(event.get("status"))
        statuses[key] = statuses.get(key, 0) + 1
        if isinstance(event.get("status"), int) and event["status"] >= 500:
            why = str(event.get("outcome"))
            failures[why] = failures.get(why, 0) + 1
        fallbacks += bool(event.get("fallback"))
        retried += (event.get("calls") or 0) > 1
    return dict(sorted(statuses.items())), failures, fallbacks, retried


def _log_size(server: Server) -> int:
    try:
        return server.log_path.stat().st_size
    except OSError:
        return 0


def measure(point: Point, args: argparse.Namespace, mock: Server, tmp: Path,
            templates: KeyTemplates, rnd: int) -> Result:
    res = Result(point.dimension, point.label, point.value, ok=False, round=rnd)
    variant = "d" if point.defaults else point.pool_size or "h"
    workers = point.workers or args.workers
    name = f"{point.dimension}-{point.value}-{variant}-w{workers}-r{rnd}"
    db, cfg = tmp / f"{name}.db", tmp / f"{name}.yaml"
    text, aliases = config_for(point, mock.port, db, args.profile)
    cfg.write_text(text)
    env: dict[str, str] = {}
    keys: list[str] = []
    if profile_needs_key(args.profile):
        keys = templates.state_file(point.keys, db)
        keys_file = tmp / f"{name}.keys"
        keys_file.write_text("\n".join(keys) + "\n")
        env["BENCH_KEYS_FILE"] = str(keys_file)
    if point.aliases > 1:
        models_file = tmp / f"{name}.models"
        models_file.write_text("\n".join(aliases) + "\n")
        env["BENCH_MODELS_FILE"] = str(models_file)
    port = free_port()
    server = Server(name, [args.bastion, "serve", "--config", str(cfg), "--host", "127.0.0.1",
                           "--port", str(port), "--workers", str(workers)],
                    port, "/health", tmp / f"{name}.log")
    unique = args.profile == "full"
    timeout_s = args.timeout

    def cmd(duration: float) -> list[str]:
        return wrk_cmd(server.url, threads=args.threads, connections=point.connections,
                       duration=duration, stream=point.stream, unique=unique,
                       timeout_s=timeout_s)

    try:
        server.start()
        server.wait_ready(args.ready_timeout)
        assert server.proc is not None and mock.proc is not None
        problem = sanity_check(server.url, point.stream,
                               {"Authorization": "Bearer " + keys[0]} if keys else None)
        if problem:
            res.error = f"sanity check: {problem}"
            return res
        # Warm-up: at least --warmup seconds, and one run long enough to present every key
        # (and alias) at least once: wrk restarts its rotation at each run, so the coverage is
        # that of the longest single run, not the sum.
        need = max(point.keys, point.aliases) * args.threads if point.keys > 1 or \
            point.aliases > 1 else 0
        warm_s = args.warmup if not point.slow else max(args.warmup, 3.0)
        cpu0 = cpu_seconds(server.proc.pid)
        wn = werr = 0
        wsec = 0.0
        longest = 0
        duration = max(1.0, warm_s)
        while True:
            summary = run_wrk(cmd(duration), duration, env)
            wn += summary["requests"]
            werr += error_count(summary)
            run_s = summary["duration_us"] / 1e6
            wsec += run_s
            longest = max(longest, summary["requests"])
            if longest >= need or wsec > args.max_warmup:
                break
            rate = summary["requests"] / run_s if run_s else 100.0
            duration = min(args.max_warmup, math.ceil(need * 1.2 / max(rate, 1.0)) + 1)
            print(f"    warm-up: {longest:,} of {need:,} requests in one run; again for "
                  f"{duration:g} s", file=sys.stderr, flush=True)
        wcpu = cpu_seconds(server.proc.pid) - cpu0
        if longest < need:
            res.error = (f"warm-up presented only {longest:,} of {need:,} keys/aliases in "
                         f"{args.max_warmup:g} s (--max-warmup)")
        res.warmup_requests, res.warmup_seconds, res.warmup_errors = wn, wsec, werr
        res.warmup_cpu_ms_per_req = wcpu * 1000 / wn if wn else 0.0
        if point.connections >= 200:
            # The warm-up's last requests, cut off when wrk stopped, are still being cancelled
            # (and logged as 499): let them settle before the measured run's log window opens.
            time.sleep(1.0)
        # The measured run.
        duration = args.duration if not point.slow else max(args.duration, args.slow_duration)
        probe = StreamProbe(port, args.probes if point.slow else 0,
                            keys[0] if keys else None, ALIAS)
        offset = _log_size(server)
        c = cmd(duration)
        host1, own1 = host_busy_seconds(), own_cpu_seconds()
        cpu1, up1 = cpu_seconds(server.proc.pid), cpu_seconds(mock.proc.pid)
        wall1 = time.monotonic()
        probe.start()
        summary = run_wrk(c, duration, env)
        cpu2, up2 = cpu_seconds(server.proc.pid), cpu_seconds(mock.proc.pid)
        wall = time.monotonic() - wall1
        other = ((host_busy_seconds() - host1) - (own_cpu_seconds() - own1)
                 - (cpu2 - cpu1) - (up2 - up1))
        res.other_load = max(0.0, other / wall) if wall else 0.0
        res.cpu_util = (cpu2 - cpu1) / wall if wall else 0.0
        res.probe = probe.stop() if point.slow else {}
        n = summary["requests"]
        res.wrk = c
        res.requests, res.seconds = n, summary["duration_us"] / 1e6
        res.rps = n / res.seconds if res.seconds else 0.0
        res.p50_ms = summary["latency_us"]["p50"] / 1000
        res.p99_ms = summary["latency_us"]["p99"] / 1000
        # The probes' streams are served by the same process: charge them too.
        served = n + res.probe.get("streams", 0)
        res.cpu_ms_per_req = (cpu2 - cpu1) * 1000 / served if served else 0.0
        res.mock_cpu_ms_per_req = (up2 - up1) * 1000 / served if served else 0.0
        res.combined_cpu_ms_per_req = ((wcpu + cpu2 - cpu1) * 1000 / (wn + served)
                                       if wn + served else 0.0)
        res.errors = error_count(summary) + res.probe.get("failures", 0)
        res.error_detail = {k: v for k, v in summary["errors"].items() if v}
        if res.probe.get("failures"):
            res.error_detail["probe"] = res.probe["failures"]
        time.sleep(0.3)  # the last events of the run reach the log
        (res.server_statuses, res.server_failures, res.fallbacks,
         res.retried) = server_outcomes(server.log_path, offset)
        res.server_warnings = log_warnings(server.log_path)
        res.rss = worker_rss(server.proc.pid)
        res.rss_mib = max(res.rss["workers"].values(), default=0.0)
        if server.proc.poll() is not None:
            res.error = f"bastion exited with {server.proc.returncode} during the run"
        elif n == 0:
            res.error = f"no request completed (wrk errors: {summary['errors']})"
        if res.error is None:
            res.ok = True
        return res
    except RuntimeError as exc:
        res.error = str(exc).splitlines()[0][:500]
        return res
    finally:
        if not res.ok:
            print(f"!! {point.label}: {res.error}\n{_short(server.log_tail(20))}",
                  file=sys.stderr, flush=True)
        server.stop()
        if not args.keep:
            for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                with contextlib.suppress(OSError):
                    p.unlink()


def _short(log: str, width: int = 300) -> str:
    return "\n".join(line if len(line) <= width else line[:width] + " ..."
                     for line in log.splitlines())


def best_rounds(results: list[Result]) -> list[Result]:
    """Per point: a failed round if any, else the round with the least CPU per request."""
    best: dict[tuple[str, str], Result] = {}
    for r in results:
        key = (r.dimension, r.label)
        cur = best.get(key)
        if cur is None or (cur.ok and (not r.ok or r.cpu_ms_per_req < cur.cpu_ms_per_req)):
            best[key] = r
    return list(best.values())


# --------------------------------------------------------------------------- report


def ratio(rows: list[Result], attr: str = "cpu_ms_per_req") -> float | None:
    """The largest point's CPU per request over the smallest's (by the swept value)."""
    ok = [r for r in rows if r.ok]
    if len(ok) < 2 or len(ok) != len(rows):
        return None
    lo, hi = min(ok, key=lambda r: r.value), max(ok, key=lambda r: r.value)
    a, b = getattr(lo, attr), getattr(hi, attr)
    return b / a if a > 0 else None


def _errors(r: Result) -> str:
    if not r.errors:
        return "0"
    return f"{r.errors} {r.error_detail}"


def _statuses(r: Result) -> str:
    s = ", ".join(f"{k}: {v:,}" for k, v in r.server_statuses.items())
    extra = [f"{k} {v:,}" for k, v in r.server_failures.items()]
    extra += [f"log {k} x{v:,}" for k, v in r.server_warnings.items()
              if "internal error" not in k]  # those are the 500s already counted
    if r.fallbacks:
        extra.append(f"{r.fallbacks:,} fallbacks")
    if r.retried:
        extra.append(f"{r.retried:,} retried")
    return s + (f" ({', '.join(extra)})" if extra else "")


def markdown(dimension: str, rows: list[Result]) -> str:
    rows = sorted(rows, key=lambda r: (r.value, r.label))
    slow = dimension == "slow-streams"
    per = "stream" if slow else "req"
    cols = ["point", "streams/s" if slow else "req/s", "p50 ms", "p99 ms"]
    if dimension == "keys":
        cols += ["CPU ms/req (steady)", "first pass: CPU ms/req (requests)",
                 "CPU ms/req incl. first pass"]
    elif slow:
        cols += ["headers p50 / p99 ms", "first event p50 / p99 ms", "CPU ms/stream"]
    else:
        cols += ["CPU ms/req", "warm-up CPU ms/req"]
    cols += [f"mock CPU ms/{per}", "bastion CPU util", "other load", "RSS MiB", "errors",
             "server statuses"]
    out = ["| " + " | ".join(cols) + " |",
           "|---|" + "---:|" * (len(cols) - 3) + "---|---|"]
    for r in rows:
        if not r.requests:
            out.append(f"| {r.label} | FAILED: {r.error} |")
            continue
        cells = [r.label, f"{r.rps:,.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}"]
        if dimension == "keys":
            cells += [f"{r.cpu_ms_per_req:.3f}",
                      f"{r.warmup_cpu_ms_per_req:.3f} ({r.warmup_requests:,})",
                      f"{r.combined_cpu_ms_per_req:.3f}"]
        elif slow:
            h = (r.probe or {}).get("headers_ms", {})
            f = (r.probe or {}).get("first_event_ms", {})
            cells += [f"{h.get('p50')} / {h.get('p99')}", f"{f.get('p50')} / {f.get('p99')}",
                      f"{r.cpu_ms_per_req:.3f}"]
        else:
            cells += [f"{r.cpu_ms_per_req:.3f}", f"{r.warmup_cpu_ms_per_req:.3f}"]
        cells += [f"{r.mock_cpu_ms_per_req:.3f}", f"{r.cpu_util:.2f}", f"{r.other_load:.2f}",
                  f"{r.rss_mib:.1f}",
                  _errors(r) + ("" if r.ok else f" (FAILED: {r.error})"), _statuses(r)]
        out.append("| " + " | ".join(cells) + " |")
    lines = ["\n".join(out), ""]
    if not slow:
        x = ratio(rows)
        lo, hi = min(rows, key=lambda r: r.value), max(rows, key=lambda r: r.value)
        lines.append(f"CPU/{per} ratio {hi.label} / {lo.label} = "
                     + (f"**{x:.2f}**" if x is not None else "n/a"))
        if dimension == "keys":
            y = ratio(rows, "combined_cpu_ms_per_req")
            z = ratio(rows, "warmup_cpu_ms_per_req")
            lines.append("with the first pass (warm-up + measured run): "
                         + (f"**{y:.2f}**" if y is not None else "n/a")
                         + "; the first pass alone: "
                         + (f"**{z:.2f}**" if z is not None else "n/a"))
    else:
        for r in rows:
            lines.append(f"- {r.label}: " + (
                "**zero errors**" if not r.errors and not r.server_failures else
                f"**{r.errors:,} errors** seen by the clients, server answers >= 500: "
                f"{r.server_failures or 'none'}"))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="bastion's CPU per request as keys, aliases and connections grow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dimensions", default=",".join(DIMENSIONS),
                   help="comma-separated subset of: " + ", ".join(DIMENSIONS))
    p.add_argument("--keys", default="1,100,1000,10000", help="points of 'keys'")
    p.add_argument("--aliases", default="1,10,200", help="points of 'aliases'")
    p.add_argument("--conns", default="10,100,1000", help="points of 'connections'")
    p.add_argument("--slow-streams", type=int, default=1000,
                   help="concurrent streams of the 'slow-streams' point")
    p.add_argument("--slow-chunk-interval-ms", type=float, default=50.0,
                   help="the slow mock's pause between SSE events (22 events)")
    p.add_argument("--slow-variants", default="harness",
                   help="the 'slow-streams' points, comma-separated: 'harness' (the harness "
                        "config: pool follows the bulkhead, 2048), 'pool=N' (the providers' "
                        "pool_size set to N), 'workers=N' (N bastion workers), combined with "
                        "'+' (pool=1100+workers=2), 'defaults' (pool, bulkhead and admission at "
                        "the schema's defaults, as a config that does not set them)")
    p.add_argument("--slow-duration", type=float, default=10.0,
                   help="seconds of the slow-streams measured run at least (a stream waits "
                        "for an upstream connection first)")
    p.add_argument("--probes", type=int, default=8,
                   help="probe connections timing headers and first event of slow streams")
    p.add_argument("-c", "--connections", type=int, default=32,
                   help="wrk connections where connections are not the dimension")
    p.add_argument("-t", "--threads", type=int, default=1, help="wrk threads")
    p.add_argument("-d", "--duration", type=float, default=10.0,
                   help="seconds of the measured run per point")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of warm-up per point at least (longer where every key or "
                        "alias must be presented once)")
    p.add_argument("--max-warmup", type=float, default=120.0,
                   help="give up covering every key after this many seconds of warm-up")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="wrk's request timeout (a slower response counts as an error)")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds over all points; each point reports its "
                        "lowest-CPU round")
    p.add_argument("--quick", action="store_true",
                   help="a short check: 3 s per point, 1 s warm-up, slow streams 8 s")
    p.add_argument("--workers", type=int, default=1, help="bastion worker processes")
    p.add_argument("--profile", choices=BASTION_PROFILES, default="full",
                   help="bastion's config (bench/harness.py); 'minimal' has no keys, so the "
                        "keys dimension is skipped")
    p.add_argument("--bastion", default=str(Path(sys.executable).parent / "bastion"))
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--max-ratio", type=float, default=None,
                   help="exit 1 when a dimension's CPU ratio exceeds this")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--no-save", action="store_true", help="write no results file")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (configs, server logs) and say where")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.slow_duration = 3.0, 1.0, 8.0
    args.dimensions = [d.strip() for d in args.dimensions.split(",") if d.strip()]
    unknown = set(args.dimensions) - set(DIMENSIONS)
    if unknown:
        p.error(f"unknown dimension(s): {', '.join(sorted(unknown))}")
    if "keys" in args.dimensions and not profile_needs_key(args.profile):
        print(f"note: profile {args.profile} has no API keys: the keys dimension is skipped",
              file=sys.stderr)
        args.dimensions.remove("keys")
    try:
        args.keys, args.aliases, args.conns = (_ints(args.keys), _ints(args.aliases),
                                               _ints(args.conns))
        args.slow_variants = [v.strip() for v in args.slow_variants.split(",") if v.strip()]
        for v in args.slow_variants:
            if v in ("harness", "defaults"):
                continue
            for part in v.split("+"):
                key, _, n = part.partition("=")
                if key not in ("pool", "workers") or int(n) < 1:
                    raise ValueError(v)
    except ValueError as exc:
        p.error(f"a list of points or a slow-streams variant is not valid: {exc}")
    if any(n < 1 for n in [*args.keys, *args.aliases, *args.conns, args.slow_streams]):
        p.error("every point must be at least 1")
    if any(n < args.threads for n in [*args.conns, args.connections, args.slow_streams]):
        p.error("every connection count must be >= threads")
    if not 1 <= args.rounds <= 10:
        p.error("rounds must be in [1, 10]")
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        p.error("duration must be in [1, 600] s and warm-up in [0, 60] s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    if not prepare_main():
        return 2
    nofile = raise_nofile()
    points = points_for(args)
    need_fds = 2 * max(p.connections for p in points) + 256 if points else 0
    if nofile[0] != -1 and nofile[0] < need_fds:
        print(f"warning: open files limit {nofile[0]} < ~{need_fds} that the largest point "
              "needs (raise the hard limit: ulimit -Hn / prlimit)", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="bastion-scaling-"))
    mocks: dict[bool, Server] = {}
    for slow in sorted({p.slow for p in points}):
        port = free_port()
        interval = args.slow_chunk_interval_ms if slow else 1.0
        mocks[slow] = mock_server(port, tmp / f"mock-{int(slow)}.log", interval,
                                  "mock-slow" if slow else "mock")
    started = datetime.now(UTC)
    source = source_state()
    print(f"# bastion scaling {started:%Y-%m-%d %H:%M:%S} UTC\n")
    print(f"command: `{command}`")
    print(f"source: {source['commit']}" + (f" + uncommitted changes in {len(source['dirty_src'])}"
                                          f" file(s) under src/" if source["dirty_src"] else ""))
    print(f"fixed: 1 key, 1 alias, wrk -t{args.threads} -c{args.connections}, plain requests, "
          f"profile {args.profile}"
          f"{' (unique deterministic bodies)' if args.profile == 'full' else ''}, "
          f"{args.workers} worker(s); {args.duration:g} s per point after a warm-up of "
          f">= {args.warmup:g} s; {args.rounds} round(s), each point its lowest-CPU round; "
          f"fresh bastion and state file per point; {os.cpu_count()} CPUs; "
          f"python {platform.python_version()}; open files limit {nofile[0]}")
    for m in mocks.values():
        print(f"  {m.name}: `{shlex.join(m.cmd)}`")
    print(flush=True)

    all_rounds: list[Result] = []
    templates = KeyTemplates(tmp)
    try:
        for m in mocks.values():
            m.start()
        for m in mocks.values():
            m.wait_ready(args.ready_timeout)
        for rnd in range(1, args.rounds + 1):
            for point in points:
                print(f"... {point.dimension}: {point.label} (round {rnd}/{args.rounds})",
                      file=sys.stderr, flush=True)
                res = measure(point, args, mocks[point.slow], tmp, templates, rnd)
                all_rounds.append(res)
                if res.requests:
                    print(f"    {res.rps:,.0f}/s, {res.cpu_ms_per_req:.3f} CPU ms/req "
                          f"(warm-up {res.warmup_cpu_ms_per_req:.3f} over "
                          f"{res.warmup_requests:,}), p99 {res.p99_ms:.1f} ms, "
                          f"{res.errors} errors, RSS {res.rss_mib:.1f} MiB",
                          file=sys.stderr, flush=True)
    finally:
        for m in mocks.values():
            m.stop()
        if args.keep:
            print(f"kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    results = best_rounds(all_rounds)
    ratios: dict[str, dict[str, float | None]] = {}
    for dim in args.dimensions:
        rows = [r for r in results if r.dimension == dim]
        if not rows:
            continue
        what = {"keys": "API keys (one per tenant)", "aliases": "model aliases",
                "connections": "concurrent connections",
                "slow-streams": f"concurrent slow SSE streams ({args.slow_chunk_interval_ms:g} "
                                "ms between 22 events)"}[dim]
        print(f"## {dim}: {what}\n")
        print(markdown(dim, rows))
        print()
        if dim != "slow-streams":
            ratios[dim] = {"steady": ratio(rows)}
            if dim == "keys":
                ratios[dim]["with_first_pass"] = ratio(rows, "combined_cpu_ms_per_req")
                ratios[dim]["first_pass_alone"] = ratio(rows, "warmup_cpu_ms_per_req")
    spread = _round_spread(all_rounds)
    if spread:
        print(f"(rounds: CPU/request of the same point differed by up to {spread:.0%} "
              "between rounds)\n")

    doc = {
        "command": command, "started": started.isoformat(), "source": source,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "platform": platform.platform(), "open_files_limit": nofile[0],
                 "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True,
                                       check=False).stdout.splitlines()[0:1]},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "mocks": {m.name: m.cmd for m in mocks.values()},
        "points": [asdict(p) for p in points],
        "results": [asdict(r) for r in results],
        "all_rounds": [asdict(r) for r in all_rounds],
        "ratios": ratios,
    }
    if not args.no_save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"scaling-{started:%Y%m%dT%H%M%SZ}.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results: {out}")

    code = 2 if any(not r.ok for r in results) else 0
    slow_bad = [r.label for r in results if r.dimension == "slow-streams"
                and (r.errors or r.server_failures)]
    if slow_bad:
        print(f"FAIL: slow streams with errors: {'; '.join(slow_bad)}", file=sys.stderr)
        code = code or 1
    elif any(r.dimension == "slow-streams" for r in results):
        print("ok: every slow-streams point served without an error")
    if args.max_ratio is not None:
        for dim, rs in ratios.items():
            x = rs.get("steady")
            if x is None or x > args.max_ratio:
                print(f"FAIL: {dim} CPU ratio {x if x is None else f'{x:.2f}'} > "
                      f"{args.max_ratio:g}", file=sys.stderr)
                code = code or 1
    return code


def _round_spread(rounds: list[Result]) -> float | None:
    by: dict[tuple[str, str], list[float]] = {}
    for r in rounds:
        if r.ok and r.cpu_ms_per_req > 0:
            by.setdefault((r.dimension, r.label), []).append(r.cpu_ms_per_req)
    spreads = [max(v) / min(v) - 1 for v in by.values() if len(v) > 1]
    return max(spreads) if spreads else None


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; all servers stopped", file=sys.stderr)
        sys.exit(130)
