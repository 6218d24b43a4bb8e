"""Memory soak: does a bastion worker's resident memory stay put over many requests?

    .venv/bin/python bench/soak.py                          # 100,000 requests, profile full
    .venv/bin/python bench/soak.py --requests 20000         # a short check
    .venv/bin/python bench/soak.py --stream --workers 2     # SSE, two workers

Starts the mock upstream (``bench/mock_upstream.py``) and ``bastion serve`` (the ``full``
profile of ``bench/harness.py`` by default: API keys, rate limits, budgets, cache lookups,
breaker, retries, fallback), then sends ``--requests`` requests in all with ``wrk`` and
``bench/post.lua``, in segments of about ``--segment`` requests. ``wrk`` runs for a
duration, not a count, so each segment's duration is estimated from the rate of the one before
and the requests are counted afterwards; each segment has a fresh nonce (``-- unique NONCE``),
so no request is ever a cache hit (in the ``full`` profile every one is a cache lookup that
misses, and a store). After each segment it records the requests so far, the resident memory
(VmRSS from ``/proc``) of every worker process on its own and of the uvicorn supervisor apart
(with ``--workers 1`` the one process is both), the CPU ms per request of the segment (the
whole bastion process tree), latency and errors.

It prints a Markdown table, the per-worker RSS at ~half and at the end of the requests and the
growth between them, and checks:

- the largest RSS of any worker at any point <= ``--max-rss-mib`` (default 120);
- growth from ~``N/2`` to ``N`` requests < ``--max-growth`` % (default 5), for every worker.

Exit 1 when a check fails, 2 when a run failed (a server died, no requests, errors over 1%).
Writes ``bench/results/soak-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness import (
    BASTION_PROFILES,
    BENCH_DIR,
    CHAT_PATH,
    CLK_TCK,
    LUA,
    Server,
    bastion_config,
    cpu_seconds,
    free_port,
    mock_server,
    prepare_main,
    process_tree,
    profile_needs_key,
    provision_keys,
    raise_nofile,
    sanity_check,
)
from run import run_wrk

# --------------------------------------------------------------------------- /proc, limits


def host_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine have been busy (``/proc/stat``: everything but
    idle and iowait). With the CPU of the processes under test, wrk and this script taken off,
    what is left is other load on the machine, which inflates CPU per request (a busy
    sibling, shared caches): the tables show it so a disturbed figure can be recognised."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle) / CLK_TCK


def own_cpu_seconds() -> float:
    """This process and its reaped children (wrk, once ``subprocess.run`` has waited for it)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _status_kib(pid: int, field_name: str = "VmRSS:") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name):
                    return int(line.split()[1])
    except OSError:
        return None
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def server_processes(pid: int) -> dict[str, list[int]]:
    """The processes of a ``bastion serve`` tree by role: ``workers`` (the processes that serve
    requests), ``supervisor`` (uvicorn's parent process when there are several workers) and
    ``helpers`` (anything else, e.g. a multiprocessing resource tracker). With one worker
    uvicorn serves in the process it started in: that one process is the worker."""
    tree = process_tree(pid)
    children = [p for p in tree if p != pid]
    workers = [p for p in children if "spawn_main" in _cmdline(p)
               or "multiprocessing.spawn" in _cmdline(p)]
    workers = [p for p in workers if "resource_tracker" not in _cmdline(p)]
    if not workers:
        return {"workers": [pid], "supervisor": [], "helpers": children}
    return {"workers": sorted(workers), "supervisor": [pid],
            "helpers": [p for p in children if p not in workers]}


def worker_rss(pid: int) -> dict[str, object]:
    """Each worker's own VmRSS in MiB (in pid order), the supervisor's and the helpers'."""
    procs = server_processes(pid)

    def mib(p: int) -> float:
        return (_status_kib(p) or 0) / 1024

    return {"workers": {str(p): round(mib(p), 1) for p in procs["workers"]},
            "supervisor_mib": round(sum(mib(p) for p in procs["supervisor"]), 1),
            "helpers_mib": round(sum(mib(p) for p in procs["helpers"]), 1)}


def log_warnings(path: Path, offset: int = 0) -> dict[str, int]:
    """Warnings and errors in a bastion server log since ``offset``, counted by event (e.g.
    ``usage rows dropped``: the usage ledger's queue was full, with the largest running total
    it logged; ``internal error``). The per-request ``request.completed`` events are not
    counted here."""
    counts: dict[str, int] = {}
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return counts
    for line in data.splitlines():
        if not line.startswith(b"{") or b'"request.completed"' in line:
            continue
        if b'"level":"warning"' not in line and b'"level":"error"' not in line \
                and b'"level":"critical"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        name = f"{event.get('level')}: {event.get('event')}"
        if event.get("reason"):
            name += f" ({event['reason']})"
        counts[name] = counts.get(name, 0) + 1
        if isinstance(event.get("dropped_total"), int):
            # Logged at most every few seconds: the running total says how many were lost.
            key = name + ", rows dropped in all"
            counts[key] = max(counts.get(key, 0), event["dropped_total"])
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def source_state() -> dict[str, object]:
    """The commit the servers ran and the files under src/ that differed from it (others may
    be editing the checkout while a benchmark runs: a figure belongs to this state)."""
    def git(*a: str) -> str:
        out = subprocess.run(["git", *a], capture_output=True, text=True, cwd=BENCH_DIR.parent,
                             check=False)
        return out.stdout.rstrip("\n")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty_src": [line[3:] for line in git("status", "--porcelain", "src").splitlines()]}


# --------------------------------------------------------------------------- load


def wrk_cmd(url: str, *, threads: int, connections: int, duration: float, stream: bool,
            unique: bool, check: bool = True, timeout_s: float = 10.0,
            lua: Path = LUA) -> list[str]:
    # wrk takes whole seconds only.
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
           "--timeout", f"{timeout_s:g}s", "-s", str(lua), url + CHAT_PATH]
    words = (["stream"] if stream else []) + (["unique", uuid.uuid4().hex[:12]] if unique
                                              else []) + (["check"] if check else [])
    return cmd + (["--", *words] if words else [])


def error_count(summary: dict) -> int:
    return sum(int(v) for v in summary["errors"].values())


@dataclass
class Segment:
    index: int
    kind: str  # "baseline" (no load yet), "warm-up", "segment"
    requests: int = 0  # in this segment
    total_requests: int = 0  # served so far, warm-up included
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms_per_req: float = 0.0
    mock_cpu_ms_per_req: float = 0.0
    errors: int = 0
    error_detail: dict = field(default_factory=dict)
    rss: dict = field(default_factory=dict)
    #: CPUs' worth of other work on the machine during the segment (see host_busy_seconds).
    other_load: float = 0.0

    @property
    def max_worker_mib(self) -> float:
        return max(self.rss.get("workers", {}).values(), default=0.0)


def run_segment(index: int, kind: str, bastion: Server, mock: Server, args: argparse.Namespace,
                duration: float, env: dict[str, str] | None, total: int) -> Segment:
    assert bastion.proc is not None and mock.proc is not None
    cmd = wrk_cmd(bastion.url, threads=args.threads, connections=args.connections,
                  duration=duration, stream=args.stream, unique=args.unique,
                  check=not args.no_check)
    host0, own0 = host_busy_seconds(), own_cpu_seconds()
    cpu0, up0 = cpu_seconds(bastion.proc.pid), cpu_seconds(mock.proc.pid)
    wall0 = time.monotonic()
    summary = run_wrk(cmd, duration, env)
    cpu1, up1 = cpu_seconds(bastion.proc.pid), cpu_seconds(mock.proc.pid)
    wall = time.monotonic() - wall0
    other = (host_busy_seconds() - host0) - (own_cpu_seconds() - own0) - (cpu1 - cpu0) - (up1 - up0)
    n = summary["requests"]
    seconds = summary["duration_us"] / 1e6
    return Segment(
        index=index, kind=kind, requests=n, total_requests=total + n, seconds=seconds,
        rps=n / seconds if seconds else 0.0,
        p50_ms=summary["latency_us"]["p50"] / 1000, p99_ms=summary["latency_us"]["p99"] / 1000,
        cpu_ms_per_req=(cpu1 - cpu0) * 1000 / n if n else 0.0,
        mock_cpu_ms_per_req=(up1 - up0) * 1000 / n if n else 0.0,
        errors=error_count(summary), error_detail=summary["errors"],
        rss=worker_rss(bastion.proc.pid), other_load=max(0.0, other / wall) if wall else 0.0)


# --------------------------------------------------------------------------- report


def nearest(rows: list[Segment], target: int) -> Segment | None:
    loaded = [r for r in rows if r.kind != "baseline"]
    if not loaded:
        return None
    return min(loaded, key=lambda r: abs(r.total_requests - target))


def growth(rows: list[Segment], half: int) -> dict:
    """RSS per worker at ~``half`` requests and at the end, and the growth between them."""
    mid, end = nearest(rows, half), (rows[-1] if rows else None)
    if mid is None or end is None or mid is end:
        return {}
    per_worker = {}
    for pid, at_end in end.rss["workers"].items():
        at_mid = mid.rss["workers"].get(pid)
        if at_mid:
            per_worker[pid] = {"mid_mib": at_mid, "end_mib": at_end,
                               "growth_pct": (at_end - at_mid) / at_mid * 100}
    worst = max(per_worker.values(), key=lambda w: w["growth_pct"], default=None)
    return {"mid_requests": mid.total_requests, "end_requests": end.total_requests,
            "per_worker": per_worker, "max_growth_pct": worst["growth_pct"] if worst else None}


def markdown(rows: list[Segment], workers: int) -> str:
    multi = workers > 1
    head = ("| # | requests so far | in segment | req/s | p50 ms | p99 ms | CPU ms/req "
            "| mock CPU ms/req | RSS MiB per worker |" + (" supervisor MiB |" if multi else "")
            + " other load | errors |")
    out = [head, "|---:|---:|---:|---:|---:|---:|---:|---:|---|" + ("---:|" if multi else "")
           + "---:|---:|"]
    for r in rows:
        rss = " / ".join(f"{v:.1f}" for v in r.rss.get("workers", {}).values())
        sup = f" {r.rss.get('supervisor_mib', 0):.1f} |" if multi else ""
        if r.kind == "baseline":
            out.append(f"| start | 0 | | | | | | | {rss} |{sup} | |")
            continue
        label = "warm-up" if r.kind == "warm-up" else str(r.index)
        err = f"{r.errors}" + (f" {_nonzero(r.error_detail)}" if r.errors else "")
        out.append(f"| {label} | {r.total_requests:,} | {r.requests:,} | {r.rps:,.0f} "
                   f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.cpu_ms_per_req:.3f} "
                   f"| {r.mock_cpu_ms_per_req:.3f} | {rss} |{sup} {r.other_load:.2f} | {err} |")
    return "\n".join(out)


def _short(log: str, width: int = 400) -> str:
    """A log tail with every line cut at ``width`` characters (request events are long)."""
    return "\n".join(line if len(line) <= width else line[:width] + " ..."
                     for line in log.splitlines())


def _nonzero(detail: dict) -> dict:
    return {k: v for k, v in detail.items() if v}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Memory soak: RSS per bastion worker over many requests.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-n", "--requests", type=int, default=100_000,
                   help="requests in all (warm-up included)")
    p.add_argument("--segment", type=int, default=None,
                   help="requests per segment, about (default: requests / 10)")
    p.add_argument("-c", "--connections", type=int, default=32, help="wrk connections")
    p.add_argument("-t", "--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of load before the first segment (counted in the total)")
    p.add_argument("--stream", action="store_true", help="SSE requests (20 chunks + usage)")
    p.add_argument("--chunk-interval-ms", type=float, default=1.0,
                   help="the mock's pause between SSE events")
    p.add_argument("--workers", type=int, default=1, help="bastion worker processes")
    p.add_argument("--profile", choices=BASTION_PROFILES, default="full",
                   help="bastion's config (bench/harness.py)")
    p.add_argument("--extra-config", default="",
                   help="YAML appended to the generated config, e.g. 'cache: {enabled: false}' "
                        "to tell the response cache's entries from other growth")
    p.add_argument("--no-unique", dest="unique", action="store_false",
                   help="send the sampled body (temperature 0.7) instead of unique "
                        "deterministic ones: the response cache passes every request by")
    p.add_argument("--no-check", action="store_true",
                   help="do not check response bodies in wrk (a broken 200 stream then "
                        "counts as a success)")
    p.add_argument("--max-rss-mib", type=float, default=120.0,
                   help="fail when any worker's RSS exceeds this")
    p.add_argument("--max-growth", type=float, default=5.0,
                   help="fail when a worker's RSS grows this many %% or more from ~N/2 to N")
    p.add_argument("--bastion", default=str(Path(sys.executable).parent / "bastion"))
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--no-save", action="store_true", help="write no results file")
    args = p.parse_args(argv)
    if args.requests < 100:
        p.error("--requests must be at least 100")
    if args.segment is None:
        args.segment = max(100, args.requests // 10)
    if not 100 <= args.segment <= args.requests:
        p.error("--segment must be in [100, requests]")
    if not 1 <= args.threads <= args.connections:
        p.error("need 1 <= threads <= connections")
    if not 0 <= args.warmup <= 60:
        p.error("warm-up must be in [0, 60] s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    if not prepare_main():
        return 2
    nofile = raise_nofile()

    tmp = Path(tempfile.mkdtemp(prefix="bastion-soak-"))
    mock_port, port = free_port(), free_port()
    mock = mock_server(mock_port, tmp / "mock.log", args.chunk_interval_ms)
    cfg, db = tmp / "bastion.yaml", tmp / "bastion.db"
    config_text = bastion_config(mock_port, db, args.profile,
                                 args.extra_config + ("\n" if args.extra_config else ""))
    cfg.write_text(config_text)
    env: dict[str, str] | None = None
    headers = None
    if profile_needs_key(args.profile):
        keys_file = tmp / "bastion.keys"
        keys_file.write_text("\n".join(provision_keys(db)) + "\n")
        env = {"BENCH_KEYS_FILE": str(keys_file)}
        headers = {"Authorization": "Bearer " + keys_file.read_text().split()[0]}
    bastion = Server("bastion", [args.bastion, "serve", "--config", str(cfg), "--host",
                                 "127.0.0.1", "--port", str(port), "--workers",
                                 str(args.workers)], port, "/health", tmp / "bastion.log")

    started = datetime.now(UTC)
    source = source_state()
    print(f"# bastion memory soak {started:%Y-%m-%d %H:%M:%S} UTC\n")
    print(f"command: `{command}`")
    print(f"source: {source['commit']}" + (f" + uncommitted changes in {len(source['dirty_src'])}"
                                          f" file(s) under src/" if source["dirty_src"] else ""))
    print(f"load: {args.requests:,} {'SSE streams' if args.stream else 'requests'} with wrk "
          f"-t{args.threads} -c{args.connections} in segments of ~{args.segment:,} "
          f"(+{args.warmup:g} s warm-up); {'unique deterministic' if args.unique else 'sampled'}"
          f" bodies; profile {args.profile}; workers {args.workers}; {os.cpu_count()} CPUs; "
          f"python {platform.python_version()}; open files limit {nofile[0]}")
    print(f"  mock: `{shlex.join(mock.cmd)}`\n  bastion: `{shlex.join(bastion.cmd)}`\n",
          flush=True)

    rows: list[Segment] = []
    failure: str | None = None
    logs = ""
    try:
        mock.start()
        bastion.start()
        mock.wait_ready(args.ready_timeout)
        bastion.wait_ready(args.ready_timeout)
        problem = sanity_check(bastion.url, args.stream, headers)
        if problem:
            raise RuntimeError(f"sanity check failed: {problem}")
        assert bastion.proc is not None
        rows.append(Segment(0, "baseline", rss=worker_rss(bastion.proc.pid)))
        total = 1  # the sanity check
        rate = None
        if args.warmup > 0:
            seg = run_segment(0, "warm-up", bastion, mock, args, args.warmup, env, total)
            rows.append(seg)
            total = seg.total_requests
            rate = seg.rps or None
            print(f"... warm-up: {seg.requests:,} at {seg.rps:,.0f}/s", file=sys.stderr,
                  flush=True)
        index = 0
        while total < args.requests:
            index += 1
            want = min(args.segment, args.requests - total)
            # No rate yet: a 2 s probe. Then the duration that should give ``want`` requests,
            # in whole seconds (wrk's resolution), at least 1 and at most 10 minutes.
            duration = 2.0 if rate is None else min(600.0, max(1.0, round(want / rate)))
            seg = run_segment(index, "segment", bastion, mock, args, duration, env, total)
            rows.append(seg)
            total = seg.total_requests
            if seg.rps:
                rate = seg.rps
            print(f"... segment {index}: {total:,}/{args.requests:,} requests, "
                  f"{seg.cpu_ms_per_req:.3f} CPU ms/req, worker RSS "
                  f"{', '.join(f'{v:.1f}' for v in seg.rss['workers'].values())} MiB, "
                  f"{seg.errors} errors", file=sys.stderr, flush=True)
            if bastion.proc is None or bastion.proc.poll() is not None:
                failure = "bastion exited during the soak"
                break
            if seg.requests == 0:
                failure = f"segment {index} completed no request"
                break
        logs = _short(bastion.log_tail(60))
    except RuntimeError as exc:
        failure = str(exc)
        logs = _short(bastion.log_tail(60))
    finally:
        warnings = log_warnings(bastion.log_path)
        bastion.stop()
        mock.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(markdown(rows, args.workers))
    print()
    g = growth(rows, args.requests // 2)
    loaded = [r for r in rows if r.kind != "baseline"]
    peak = max((r.max_worker_mib for r in rows), default=0.0)
    served = loaded[-1].total_requests if loaded else 0
    errors = sum(r.errors for r in loaded)
    seg_rows = [r for r in loaded if r.kind == "segment"]
    if g:
        for pid, w in g["per_worker"].items():
            print(f"worker {pid}: RSS {w['mid_mib']:.1f} MiB at {g['mid_requests']:,} requests, "
                  f"{w['end_mib']:.1f} MiB at {g['end_requests']:,}: "
                  f"**{w['growth_pct']:+.1f}%**")
    if len(seg_rows) >= 2:
        first, last = seg_rows[0], seg_rows[-1]
        print(f"CPU ms/request: {first.cpu_ms_per_req:.3f} in the first segment, "
              f"{last.cpu_ms_per_req:.3f} in the last "
              f"({(last.cpu_ms_per_req / first.cpu_ms_per_req - 1) * 100:+.0f}%)"
              if first.cpu_ms_per_req else "")
    print(f"peak RSS of any worker: {peak:.1f} MiB; errors: {errors} in {served:,} requests")
    print("server warnings/errors logged: " + (", ".join(f"{k} x{v:,}" for k, v in
                                                        warnings.items()) or "none"))

    code = 0
    checks = []
    if failure:
        print(f"FAILED: {failure}\n{logs}", file=sys.stderr)
        code = 2
    elif served == 0 or errors > served * 0.01:
        print(f"FAILED: {errors} errors in {served:,} requests", file=sys.stderr)
        code = 2
    ok_rss = peak <= args.max_rss_mib
    checks.append(f"{'ok' if ok_rss else 'FAIL'}: peak RSS per worker {peak:.1f} MiB "
                  f"{'<=' if ok_rss else '>'} {args.max_rss_mib:g} MiB")
    worst = g.get("max_growth_pct")
    ok_growth = worst is not None and worst < args.max_growth
    checks.append(f"{'ok' if ok_growth else 'FAIL'}: RSS growth {g.get('mid_requests', 0):,} -> "
                  f"{g.get('end_requests', 0):,} requests "
                  + (f"{worst:+.1f}%" if worst is not None else "n/a (too few segments)")
                  + f" {'<' if ok_growth else '>='} {args.max_growth:g}%")
    for line in checks:
        print(line)
    if code == 0 and not (ok_rss and ok_growth):
        code = 1

    doc = {
        "command": command, "started": started.isoformat(), "source": source,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "platform": platform.platform(), "open_files_limit": nofile[0]},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "servers": {"mock": mock.cmd, "bastion": bastion.cmd},
        "bastion_config": config_text.replace(str(db), "bastion.db"),
        "segments": [asdict(r) for r in rows],
        "growth": g, "peak_worker_rss_mib": peak, "errors": errors, "requests": served,
        "checks": checks, "failure": failure, "server_warnings": warnings, "server_log": logs,
        "exit_code": code,
    }
    if not args.no_save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"soak-{started:%Y%m%dT%H%M%SZ}.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results: {out}")
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; all servers stopped", file=sys.stderr)
        sys.exit(130)
