"""Measure bastion side by side with its baselines in one run.

    .venv/bin/python bench/run.py                      # plain chat completions, 10 s per target
    .venv/bin/python bench/run.py --stream             # plus the SSE scenario (20 chunks/stream)
    .venv/bin/python bench/run.py --quick --max-ratio 3   # the CI smoke check (~15 s)

Starts three servers, each its own process (group) on a free 127.0.0.1 port:

- ``mock``: ``bench/mock_upstream.py``, the fixed OpenAI upstream (the ceiling);
- ``passthrough``: ``bench/passthrough_proxy.py``, a ~50-line uvicorn proxy (the floor for a
  Python proxy: no validation, no logic);
- ``bastion``: ``bastion serve`` with a generated config whose only provider is the mock;
- with ``--peers litellm,portkey`` (or naming them in ``--targets``), peer gateways from
  ``bench/peers.py``, installed on first use into ``bench/.peers/`` and pointed at the same mock:
  the LiteLLM proxy and the Portkey AI gateway. Not run by default.

Then for each target it drives ``wrk`` (fixed threads/connections/duration, a warm-up run first)
with ``bench/post.lua`` and reports requests/s, p50/p99 latency, the CPU ms per request of the
server process tree under test (utime+stime from /proc, children and reaped children included),
the same for the mock upstream, and RSS after the run. The headline is the **bastion overhead
ratio** = bastion CPU ms/request / passthrough CPU ms/request: CPU per request is stable on a
shared 2-core box where requests/s is not (wrk, proxy and mock compete for the same cores).

``--stream`` adds the SSE scenario: the same body with ``"stream": true``; the mock sends 20
chunks, a usage chunk and ``[DONE]``, 1 ms apart by default (``--chunk-interval-ms``), so the
streams/s of every target is capped near connections / ~30 ms and CPU ms per stream is the figure
to compare. ``--rounds N`` interleaves N measurements per target and keeps each target's
lowest-CPU round (``--quick`` does 2), which keeps the ratio steady when other work shares the
machine.

Writes ``bench/results/<timestamp>.json`` (and a ``.png`` when matplotlib is installed); exits 1
when ``--max-ratio`` is exceeded or cannot be checked, 2 when a target failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness import (
    BASTION_PROFILES,
    BENCH_DIR,
    CHAT_PATH,
    LUA,
    Server,
    bastion_config,
    cpu_seconds,
    free_port,
    mock_server,
    prepare_main,
    profile_needs_key,
    provision_keys,
    rss_mib,
    sanity_check,
)
from peers import PEERS

TARGETS = ("mock", "passthrough", "bastion", "bastion-unobserved")
#: Peer gateways (bench/peers.py): only when asked for, with --peers or --targets.
PEER_TARGETS = tuple(PEERS)
ALL_TARGETS = TARGETS + PEER_TARGETS
#: What ``bastion-unobserved`` turns off: the per-request log event (log level warning) and
#: the request journal. Prometheus metrics stay (they cannot be turned off); issue 6 bounds
#: what observability at its defaults costs, and this target measures exactly that.
UNOBSERVED_CONFIG = "observability: {journal: {enabled: false}}\n"


# --------------------------------------------------------------------------- load




def wrk_cmd(url: str, args: argparse.Namespace, duration: float, stream: bool) -> list[str]:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration:g}s",
           "--latency", "--timeout", "10s", "-s", str(LUA), url + CHAT_PATH]
    words = (["stream"] if stream else []) + (
        # A fresh nonce per run: a later round's requests must not hit an earlier one's entries.
        ["unique", uuid.uuid4().hex[:12]] if args.profile == "full" else [])
    return cmd + (["--", *words] if words else [])


def run_wrk(cmd: list[str], duration: float, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False,
                         stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise RuntimeError(f"wrk gave no result (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")


@dataclass
class Result:
    target: str
    scenario: str
    ok: bool
    error: str | None = None
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    error_detail: dict = field(default_factory=dict)
    cpu_ms_per_req: float = 0.0
    upstream_cpu_ms_per_req: float = 0.0
    rss_mib: float = 0.0
    round: int = 1
    wrk: list[str] = field(default_factory=list)


def best_rounds(rounds: list[Result]) -> list[Result]:
    """Per scenario and target: a failed round if any, else the round with the least CPU per
    request (the one least disturbed by other load on the machine)."""
    best: dict[tuple[str, str], Result] = {}
    for r in rounds:
        key = (r.scenario, r.target)
        cur = best.get(key)
        if cur is None or (cur.ok and (not r.ok or r.cpu_ms_per_req < cur.cpu_ms_per_req)):
            best[key] = r
    return list(best.values())


def bench_headers(headers: dict[str, str]) -> str:
    """``headers`` as bench/post.lua's BENCH_HEADERS: "name: value; name: value"."""
    for k, v in headers.items():
        if any(c in k for c in ":;\r\n") or any(c in v for c in ";\r\n"):
            raise ValueError(f"header {k!r}: {v!r} cannot be passed in BENCH_HEADERS")
    return "; ".join(f"{k}: {v}" for k, v in headers.items())


def measure(server: Server, mock: Server, scenario: str, args: argparse.Namespace,
            keys_file: Path | None = None, headers: dict[str, str] | None = None) -> Result:
    """``keys_file``: API keys that post.lua sends in turn (bastion); ``headers``: extra headers
    on every request (a peer's routing headers), for the sanity check and wrk alike."""
    stream = scenario == "stream"
    assert server.proc is not None and mock.proc is not None
    env: dict[str, str] = {}
    check_headers: dict[str, str] = dict(headers or {})
    if headers:
        env["BENCH_HEADERS"] = bench_headers(headers)
    if keys_file is not None:
        env["BENCH_KEYS_FILE"] = str(keys_file)
        check_headers["Authorization"] = "Bearer " + keys_file.read_text().split()[0]
    problem = sanity_check(server.url, stream, check_headers or None)
    if problem:
        return Result(server.name, scenario, ok=False, error=problem)
    if args.warmup > 0:
        run_wrk(wrk_cmd(server.url, args, args.warmup, stream), args.warmup, env)
    cmd = wrk_cmd(server.url, args, args.duration, stream)
    cpu0, up0 = cpu_seconds(server.proc.pid), cpu_seconds(mock.proc.pid)
    summary = run_wrk(cmd, args.duration, env)
    cpu1, up1 = cpu_seconds(server.proc.pid), cpu_seconds(mock.proc.pid)
    n = summary["requests"]
    errors = sum(summary["errors"].values())
    res = Result(
        target=server.name, scenario=scenario, ok=n > 0, requests=n,
        rps=n / (summary["duration_us"] / 1e6),
        p50_ms=summary["latency_us"]["p50"] / 1000, p99_ms=summary["latency_us"]["p99"] / 1000,
        errors=errors, error_detail=summary["errors"],
        cpu_ms_per_req=(cpu1 - cpu0) * 1000 / n if n else 0.0,
        upstream_cpu_ms_per_req=(up1 - up0) * 1000 / n if n else 0.0,
        rss_mib=rss_mib(server.proc.pid), wrk=cmd,
    )
    if n == 0:
        res.error = "no request completed"
    elif errors > n * 0.01:
        res.ok = False
        res.error = f"{errors} errors in {n} requests: {summary['errors']}"
    if server.proc.poll() is not None:
        res.ok = False
        res.error = f"{server.name} exited with {server.proc.returncode} during the run"
    return res


# --------------------------------------------------------------------------- report


def ratio(results: list[Result], scenario: str) -> float | None:
    by = {r.target: r for r in results if r.scenario == scenario}
    b, p = by.get("bastion"), by.get("passthrough")
    if b is None or p is None or not (b.ok and p.ok) or p.cpu_ms_per_req <= 0:
        return None
    return b.cpu_ms_per_req / p.cpu_ms_per_req


def markdown(results: list[Result], scenario: str) -> str:
    unit = "streams/s" if scenario == "stream" else "req/s"
    per = "stream" if scenario == "stream" else "req"
    rows = [(f"| target | {unit} | p50 ms | p99 ms | CPU ms/{per} | mock CPU ms/{per} "
             f"| RSS MiB | errors |"),
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.scenario != scenario:
            continue
        if r.requests == 0:
            rows.append(f"| {r.target} | FAILED | | | | | | {r.error} |")
            continue
        err = str(r.errors) if r.ok else f"{r.errors} (FAILED: {r.error})"
        upstream = "(self)" if r.target == "mock" else f"{r.upstream_cpu_ms_per_req:.3f}"
        rows.append(f"| {r.target} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
                    f"| {r.cpu_ms_per_req:.3f} | {upstream} "
                    f"| {r.rss_mib:.0f} | {err} |")
    x = ratio(results, scenario)
    rows.append("")
    rows.append(f"bastion overhead ratio ({scenario}) = bastion CPU ms/{per} / passthrough "
                f"CPU ms/{per} = " + (f"**{x:.2f}**" if x is not None else "n/a"))
    for name, x in peer_ratios(results, scenario).items():
        rows.append(f"{name} CPU ms/{per} / passthrough CPU ms/{per} = **{x:.2f}**")
    seen = observability_share(results, scenario)
    if seen is not None:
        rows.append(f"cost of observability ({scenario}) = (bastion - bastion-unobserved) / "
                    f"bastion CPU ms/{per} = **{seen:.1%}**")
    return "\n".join(rows)


def peer_ratios(results: list[Result], scenario: str) -> dict[str, float]:
    """Each peer gateway's CPU per request over the pass-through proxy's (bastion's own ratio
    is ``ratio``), for the peers that were measured."""
    by = {r.target: r for r in results if r.scenario == scenario}
    p = by.get("passthrough")
    if p is None or not p.ok or p.cpu_ms_per_req <= 0:
        return {}
    return {name: by[name].cpu_ms_per_req / p.cpu_ms_per_req
            for name in PEER_TARGETS if name in by and by[name].ok}


def observability_share(results: list[Result], scenario: str) -> float | None:
    """The share of bastion's CPU per request that its default observability (request log
    event, journal) costs, from the two bastion targets of the same run."""
    by = {r.target: r for r in results if r.scenario == scenario}
    b, u = by.get("bastion"), by.get("bastion-unobserved")
    if b is None or u is None or not (b.ok and u.ok) or b.cpu_ms_per_req <= 0:
        return None
    return (b.cpu_ms_per_req - u.cpu_ms_per_req) / b.cpu_ms_per_req


def plot(results: list[Result], scenarios: list[str], path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(10, 3.2 * len(scenarios)),
                             squeeze=False)
    for row, scenario in enumerate(scenarios):
        rs = [r for r in results if r.scenario == scenario and r.requests]
        names = [r.target for r in rs]
        colors = ["#999999" if n == "mock" else "#4c72b0" if n == "passthrough"
                  else "#55a868" if n in PEER_TARGETS else "#dd8452" for n in names]
        for col, (attr, label) in enumerate((("rps", "per second"),
                                             ("cpu_ms_per_req", "server CPU ms each"))):
            ax = axes[row][col]
            vals = [getattr(r, attr) for r in rs]
            ax.bar(names, vals, color=colors)
            for i, v in enumerate(vals):
                ax.annotate(f"{v:,.0f}" if attr == "rps" else f"{v:.3f}", (i, v),
                            ha="center", va="bottom", fontsize=8)
            what = "streams" if scenario == "stream" else "requests"
            ax.set_title(f"{scenario}: {what} {label}", fontsize=10)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark bastion against a mock upstream and a bare pass-through proxy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-d", "--duration", type=float, default=10.0, help="seconds of load per target")
    p.add_argument("-c", "--connections", type=int, default=32, help="wrk connections")
    p.add_argument("-t", "--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds per target; each target reports its round with the "
                        "lowest CPU ms/request (default 1, with --quick 2)")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke (~15 s): 2 s per target, 1 s warm-up, only the targets the "
                        "ratio needs (passthrough, bastion) unless --targets says otherwise "
                        "(overrides -d/--warmup)")
    p.add_argument("--stream", action="store_true",
                   help="also run the SSE scenario (20 chunks + usage + [DONE] per stream)")
    p.add_argument("--stream-only", action="store_true", help="run only the SSE scenario")
    p.add_argument("--chunk-interval-ms", type=float, default=1.0,
                   help="the mock's pause between SSE events: spaced like a model's tokens, every "
                        "proxy pays its per-event read+write; 0 sends them back to back, so a "
                        "bare proxy reads many per syscall and the ratio looks worse than life")
    p.add_argument("--targets", default=None,
                   help="comma-separated subset of: " + ", ".join(ALL_TARGETS) + " (default: "
                        + ",".join(TARGETS) + "; with --quick: passthrough,bastion; the mock "
                        "always runs as upstream)")
    p.add_argument("--peers", default="",
                   help="comma-separated peer gateways to append to the targets: "
                        + ", ".join(PEER_TARGETS) + " (bench/peers.py; installed on first use "
                        "into bench/.peers/)")
    p.add_argument("--workers", type=int, default=1, help="bastion worker processes")
    p.add_argument("--profile", choices=BASTION_PROFILES, default="full",
                   help="bastion's config (bench/harness.py): full = API keys, rate limits, "
                        "budgets, cache lookups (deterministic, unique requests), breaker, "
                        "retries and a fallback target; minimal = auth off, nothing configured")
    p.add_argument("--unobserved-config", default=UNOBSERVED_CONFIG,
                   help="config appended for the bastion-unobserved target (to isolate one "
                        "part of observability)")
    p.add_argument("--hot", choices=("auto", "memory", "sqlite", "lmdb"), default=None,
                   help="bastion's state.hot (default: the config's auto: memory for one "
                        "worker, LMDB for several)")
    p.add_argument("--extra-config", default="",
                   help="YAML appended to both bastion targets' config (e.g. "
                        "'state: {sqlite_path: X, hot: sqlite}' to compare hot-state backends)")
    p.add_argument("--unobserved-log-level", default="warning",
                   help="BASTION_LOG_LEVEL of the bastion-unobserved target")
    p.add_argument("--bastion", default=str(Path(sys.executable).parent / "bastion"),
                   help="the bastion executable")
    p.add_argument("--max-ratio", type=float, default=None,
                   help="exit 1 if the bastion overhead ratio of any scenario exceeds this")
    p.add_argument("--ready-timeout", type=float, default=60.0,
                   help="seconds to wait for each server to answer")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--no-save", action="store_true", help="do not write results/figure files")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2.0, 1.0
    if args.targets is None:
        args.targets = "passthrough,bastion" if args.quick else ",".join(TARGETS)
    args.targets += "," + args.peers
    if args.rounds is None:
        args.rounds = 2 if args.quick else 1
    if not 1 <= args.rounds <= 10:
        p.error("rounds must be in [1, 10]")
    args.targets = list(dict.fromkeys(t.strip() for t in args.targets.split(",") if t.strip()))
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    if not 1 <= args.threads <= args.connections:
        p.error("need 1 <= threads <= connections")
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60:
        p.error("duration must be in (0, 600] s and warm-up in [0, 60] s")
    if not 0 <= args.chunk_interval_ms <= 1000:
        p.error("chunk interval must be in [0, 1000] ms")
    args.scenarios = (["stream"] if args.stream_only
                      else ["plain", "stream"] if args.stream else ["plain"])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    if not prepare_main():
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="bastion-bench-"))
    mock_port = free_port()
    servers: dict[str, Server] = {
        "mock": mock_server(mock_port, tmp / "mock.log", args.chunk_interval_ms)}
    if "passthrough" in args.targets:
        port = free_port()
        servers["passthrough"] = Server(
            "passthrough", [sys.executable, str(BENCH_DIR / "passthrough_proxy.py"), str(port),
                            f"http://127.0.0.1:{mock_port}"],
            port, "/v1/models", tmp / "passthrough.log")
    keys_files: dict[str, Path] = {}
    for name in ("bastion", "bastion-unobserved"):
        if name not in args.targets:
            continue
        port = free_port()
        cfg = tmp / f"{name}.yaml"
        db = tmp / f"{name}.db"
        unobserved = name == "bastion-unobserved"
        cfg.write_text(bastion_config(mock_port, db, args.profile, args.extra_config + (
            args.unobserved_config if unobserved else ""), hot=args.hot))
        if profile_needs_key(args.profile):
            keys_files[name] = tmp / f"{name}.keys"
            keys_files[name].write_text("\n".join(provision_keys(db)) + "\n")
        servers[name] = Server(
            name, [args.bastion, "serve", "--config", str(cfg), "--host", "127.0.0.1",
                   "--port", str(port), "--workers", str(args.workers)],
            port, "/health", tmp / f"{name}.log",
            env={"BASTION_LOG_LEVEL": args.unobserved_log_level} if unobserved else None)
    # Peer gateways: installed on first use; one that cannot be had is reported as failed,
    # with its reason, and the others are measured all the same.
    failed_start: dict[str, str] = {}
    peer_headers: dict[str, dict[str, str]] = {}
    for name in args.targets:
        if name not in PEERS:
            continue
        peer = PEERS[name]
        print(f"... {name}: checking the side environment (bench/.peers/{name})",
              file=sys.stderr, flush=True)
        try:
            why = peer.ensure_installed()
        except Exception as exc:  # noqa: BLE001 - a broken install must not end the run
            why = f"ensure_installed raised {type(exc).__name__}: {exc}"
        if why is not None:
            failed_start[name] = f"{name} unavailable: {why}"
            print(f"!! {failed_start[name]}\n", file=sys.stderr, flush=True)
            continue
        servers[name] = peer.server(mock_port, free_port(), tmp)
        peer_headers[name] = peer.headers(mock_port)

    started = datetime.now(UTC)
    print(f"# bastion benchmark {started:%Y-%m-%d %H:%M:%S} UTC\n")
    print(f"command: `{command}`")
    print(f"load: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s "
          f"(+{args.warmup:g} s warm-up) per target and round; {args.rounds} interleaved "
          f"round(s), each target shows its lowest-CPU round; {os.cpu_count()} CPUs; "
          f"python {platform.python_version()}; bastion workers: {args.workers}; "
          f"bastion profile: {args.profile}")
    for s in servers.values():
        print(f"  {s.name}: `{shlex.join(s.cmd)}`")
        if s.name in peer_headers:
            # Header names only: a value may be a key.
            print(f"    {PEERS[s.name].name} {PEERS[s.name].version}, extra headers: "
                  f"{', '.join(peer_headers[s.name]) or 'none'}")
    for name, why in failed_start.items():
        print(f"  {name}: not run ({why})")
    print(flush=True)

    all_rounds: list[Result] = []
    try:
        for s in servers.values():
            s.start()
        for s in servers.values():
            try:
                s.wait_ready(args.ready_timeout)
            except RuntimeError as exc:
                if s.name == "mock":
                    raise
                failed_start[s.name] = str(exc)
                print(f"!! {exc}\n", file=sys.stderr, flush=True)
                s.stop()
        for scenario in args.scenarios:
            failed: set[str] = set()
            # Rounds interleave the targets, so a burst of load from elsewhere on the machine
            # hits every target alike instead of all the rounds of one.
            for rnd in range(args.rounds):
                for name in args.targets:
                    if name in failed_start:
                        if rnd == 0:
                            all_rounds.append(Result(name, scenario, ok=False,
                                                     error=failed_start[name].splitlines()[0]))
                        continue
                    if name in failed:
                        continue
                    print(f"... {scenario} / {name} (round {rnd + 1}/{args.rounds})",
                          file=sys.stderr, flush=True)
                    res = measure(servers[name], servers["mock"], scenario, args,
                                  keys_files.get(name), peer_headers.get(name))
                    res.round = rnd + 1
                    if not res.ok:
                        failed.add(name)
                        print(f"!! {name} ({scenario}): {res.error}\n"
                              f"{servers[name].log_tail()}", file=sys.stderr, flush=True)
                    all_rounds.append(res)
        results = best_rounds(all_rounds)
        # Server logs are the first place to look when a number is odd.
        logs = {name: s.log_tail(60) for name, s in servers.items()}
    finally:
        for s in reversed(list(servers.values())):
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    for scenario in args.scenarios:
        what = (f" (SSE: 20 chunks + usage + [DONE] per stream, "
                f"{args.chunk_interval_ms:g} ms between events)" if scenario == "stream" else "")
        print(f"## {scenario}{what}\n")
        print(markdown(results, scenario))
        print()

    ratios = {sc: ratio(results, sc) for sc in args.scenarios}
    shares = {sc: observability_share(results, sc) for sc in args.scenarios}
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "command": command, "started": started.isoformat(), "host": {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(),
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True,
                                  check=False).stdout
            .splitlines()[0:1]},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "servers": {name: s.cmd for name, s in servers.items()},
        "peers": {name: {"version": PEERS[name].version,
                         "headers": sorted(peer_headers.get(name, {})),
                         "unavailable": failed_start.get(name) if name not in servers else None}
                  for name in args.targets if name in PEERS},
        "bastion_config": bastion_config(mock_port, "bastion.db", args.profile)
        if "bastion" in servers else None,
        "results": [asdict(r) for r in results],
        "all_rounds": [asdict(r) for r in all_rounds],
        "overhead_ratio": ratios, "observability_share": shares,
        "peer_ratios": {sc: peer_ratios(results, sc) for sc in args.scenarios},
        "server_logs": logs,
    }
    if not args.no_save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"{stamp}.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results: {out}")
        png = out.with_suffix(".png")
        if plot(results, args.scenarios, png, f"{command}  ({started:%Y-%m-%d %H:%M} UTC)"):
            print(f"figure:  {png}")

    code = 0
    if any(not r.ok for r in results):
        code = 2
    if args.max_ratio is not None:
        for sc, x in ratios.items():
            if x is None:
                print(f"FAIL: no bastion overhead ratio for {sc} (a target failed or was not "
                      f"run); --max-ratio {args.max_ratio:g} cannot pass", file=sys.stderr)
                code = 1
            elif x > args.max_ratio:
                print(f"FAIL: bastion overhead ratio ({sc}) {x:.2f} > {args.max_ratio:g}",
                      file=sys.stderr)
                code = 1
            else:
                print(f"ok: bastion overhead ratio ({sc}) {x:.2f} <= {args.max_ratio:g}")
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; all servers stopped", file=sys.stderr)
        sys.exit(130)
