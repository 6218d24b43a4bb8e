"""Fixed-rate (open-loop) latency of bastion and its baselines, side by side in one run.

    .venv/bin/python bench/fixed_rate.py                                # 100/500/1000 req/s, 20 s
    .venv/bin/python bench/fixed_rate.py --rates 100,300 --duration 3   # a quick look
    .venv/bin/python bench/fixed_rate.py --peers litellm,portkey        # + bench/peers.py
    .venv/bin/python bench/fixed_rate.py --stream                       # + the SSE scenario

Where ``bench/run.py`` asks how fast each target goes (closed loop: wrk keeps N requests in
flight), this asks how each one answers at a given load: requests leave on a fixed schedule
(``bench/openloop.py``), whatever the target does, and each latency counts from the request's
*intended* send time, so a target that stalls pays for every request it delayed (no coordinated
omission).

Starts, each its own process (group) on a free 127.0.0.1 port: the mock upstream
(``bench/mock_upstream.py``), the pass-through proxy and ``bastion serve`` with the ``full``
profile of ``harness.bastion_config`` (API key, rate limits, budgets, cache lookups that miss,
breaker, retries, fallback; the key from ``harness.provision_keys``), plus any ``--peers`` from
``bench/peers.py`` (imported only then). Each target is checked with ``harness.sanity_check``
first. Then for each rate (rate-major: every target at 100 req/s, then every target at 500,
...) and each target: ``--warmup`` seconds unmeasured, ``--duration`` seconds measured, the
bodies unique and deterministic (each a cache miss, a fresh nonce per run), and the target's
CPU ms per response from ``harness.cpu_seconds`` over the measured window. Before each run the
previous target must have gone idle (its CPU under 5% of a core, at most ``--settle`` s), so
a target still draining a backlog does not load the next one.

A target that cannot keep up does not hang the run: at most ``--max-conns`` requests are in
flight (one per connection); a request later than ``--timeout`` seconds after its due time is
an error (``timeout`` when it was sent, ``not_sent`` when it never got a connection), so each
run ends at the latest ``--timeout`` + 1 s after its last due time, and the table says what
completed, timed out and was never sent.

Writes ``bench/results/fixed-rate-<timestamp>.json`` and, with matplotlib (the ``bench``
extra), ``.png``: p50/p90/p99/p99.9 against offered rate on a log axis, one line per target,
plus achieved rate and errors. Exits 2 when a target failed to start or died.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import openloop
from harness import (
    BASTION_PROFILES,
    BENCH_DIR,
    Server,
    bastion_config,
    cpu_seconds,
    free_port,
    mock_server,
    prepare_main,
    profile_needs_key,
    provision_keys,
    raise_nofile,
    rss_mib,
    sanity_check,
)

BUILTIN = ("mock", "passthrough", "bastion")
COLORS = {"mock": "#999999", "passthrough": "#4c72b0", "bastion": "#dd8452"}
PEER_COLORS = ["#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#64b5cd"]


class Target:
    def __init__(self, name: str, server: Server | None, headers: dict[str, str],
                 failed: str | None = None) -> None:
        self.name, self.server, self.headers, self.failed = name, server, headers, failed


# --------------------------------------------------------------------------- setup


def load_peers(names: list[str]) -> dict:
    """bench/peers.py's PEERS, imported only when --peers is given."""
    try:
        from peers import PEERS  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SystemExit(f"--peers {','.join(names)}: cannot import bench/peers.py (it should "
                         f"define PEERS: dict[str, Peer]): {exc}\nRun without --peers to "
                         f"measure the built-in targets only.") from None
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peer(s) {', '.join(unknown)}; bench/peers.py has: "
                         f"{', '.join(sorted(PEERS)) or '(none)'}")
    return {n: PEERS[n] for n in names}


def build_targets(args: argparse.Namespace, tmp: Path, mock: Server) -> list[Target]:
    targets: list[Target] = []
    json_ct = {"Content-Type": "application/json"}
    for name in args.targets:
        if name == "mock":
            targets.append(Target("mock", mock, dict(json_ct)))
        elif name == "passthrough":
            port = free_port()
            targets.append(Target("passthrough", Server(
                "passthrough", [sys.executable, str(BENCH_DIR / "passthrough_proxy.py"),
                                str(port), f"http://127.0.0.1:{mock.port}"],
                port, "/v1/models", tmp / "passthrough.log"), dict(json_ct)))
        elif name == "bastion":
            port, cfg, db = free_port(), tmp / "bastion.yaml", tmp / "bastion.db"
            cfg.write_text(bastion_config(mock.port, db, args.profile))
            headers = dict(json_ct)
            if profile_needs_key(args.profile):
                headers["Authorization"] = "Bearer " + provision_keys(db)[0]
            targets.append(Target("bastion", Server(
                "bastion", [args.bastion, "serve", "--config", str(cfg), "--host", "127.0.0.1",
                            "--port", str(port), "--workers", str(args.workers)],
                port, "/health", tmp / "bastion.log"), headers))
    for name, peer in (load_peers(args.peers) if args.peers else {}).items():
        reason = peer.ensure_installed()
        if reason is not None:
            print(f"!! peer {name} skipped: {reason}", file=sys.stderr, flush=True)
            targets.append(Target(name, None, {}, failed=f"not installed: {reason}"))
            continue
        workdir = tmp / name
        workdir.mkdir(parents=True, exist_ok=True)
        server = peer.server(mock.port, free_port(), workdir)
        targets.append(Target(name, server, {**json_ct, **peer.headers(mock.port)}))
    return targets


# --------------------------------------------------------------------------- measuring


def settle(pids: list[int], max_s: float, idle_share: float = 0.05) -> float:
    """Wait until the processes (trees) use under ``idle_share`` of a core over 0.25 s, at
    most ``max_s`` seconds; how long that took."""
    t0 = time.monotonic()
    while True:
        c0 = sum(cpu_seconds(p) for p in pids)
        time.sleep(0.25)
        if (sum(cpu_seconds(p) for p in pids) - c0) / 0.25 < idle_share:
            break
        if time.monotonic() - t0 >= max_s:
            break
    return time.monotonic() - t0


def measure(t: Target, mock: Server, scenario: str, rate: float,
            args: argparse.Namespace) -> dict:
    assert t.server is not None and t.server.proc is not None and mock.proc is not None
    pid, mock_pid = t.server.proc.pid, mock.proc.pid
    marks: dict[str, tuple[float, float]] = {}

    def on_window(phase: str) -> None:
        marks[phase] = (cpu_seconds(pid), cpu_seconds(mock_pid))

    nonce = uuid.uuid4().hex[:12] if args.profile == "full" else None
    cfg = openloop.Config(
        url=t.server.url, rate=rate, duration=args.duration, warmup=args.warmup,
        request=openloop.chat_requests(stream=scenario == "stream", nonce=nonce),
        headers=t.headers, timeout=args.timeout, max_conns=args.max_conns,
        on_window=on_window)
    load = openloop.run(cfg)
    # The next run starts when this target has drained what it still holds (a target that
    # fell behind may work through its backlog long after the load stopped).
    settled = settle(sorted({pid, mock_pid}), args.settle)
    n = load["window"]["responses"]
    cpu = up = None
    if "start" in marks and "end" in marks and n:
        cpu = (marks["end"][0] - marks["start"][0]) * 1000 / n
        up = (marks["end"][1] - marks["start"][1]) * 1000 / n
    lat, ttfb, lag = load["latency_ms"] or {}, load["ttfb_ms"] or {}, load["send_lag_ms"] or {}
    res = {
        "target": t.name, "scenario": scenario, "rate": rate, "ok": load["ok"] > 0,
        "error": None if load["ok"] else "no request completed",
        "achieved_rps": load["achieved_rps"],
        "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"),
        "p999_ms": lat.get("p999"), "max_ms": lat.get("max"),
        "ttfb_p50_ms": ttfb.get("p50"), "ttfb_p99_ms": ttfb.get("p99"),
        "completed": load["ok"], "scheduled": load["scheduled"],
        "errors": load["error_total"], "error_detail": load["errors"],
        "timed_out": load["timed_out"], "not_sent": load["not_sent"],
        "cpu_ms_per_req": cpu, "mock_cpu_ms_per_req": up,
        "gen_cpu_us_per_req": load["cpu"]["us_per_req"],
        "send_lag_p99_ms": lag.get("p99"),
        "rss_mib": rss_mib(pid), "settle_s": settled, "load": load,
    }
    if t.server.proc.poll() is not None:
        res["ok"] = False
        res["error"] = f"{t.name} exited with {t.server.proc.returncode} during the run"
    return res


def failed_row(name: str, scenario: str, rate: float, error: str) -> dict:
    return {"target": name, "scenario": scenario, "rate": rate, "ok": False, "error": error,
            "completed": 0}


# --------------------------------------------------------------------------- report


def _ms(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def markdown(runs: list[dict], scenario: str) -> str:
    per = "stream" if scenario == "stream" else "req"
    rows = [(f"| target | offered {per}/s | achieved {per}/s | p50 ms | p90 ms | p99 ms "
             f"| p99.9 ms | errors | CPU ms/{per} | mock CPU ms/{per} | load gen µs/{per} |"),
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in runs:
        if r["scenario"] != scenario:
            continue
        if not r.get("completed"):
            extra = f" ({r['error_detail']})" if r.get("error_detail") else ""
            rows.append(f"| {r['target']} | {r['rate']:g} | FAILED | | | | | "
                        f"{r['error']}{extra} | | | |")
            continue
        err = str(r["errors"])
        if r["errors"]:
            err += " (" + ", ".join(f"{k} {v}" for k, v in r["error_detail"].items()) + ")"
        if not r["ok"]:
            err += f" FAILED: {r['error']}"
        mock = ("(self)" if r["target"] == "mock" else
                "" if r["mock_cpu_ms_per_req"] is None else f"{r['mock_cpu_ms_per_req']:.3f}")
        cpu = "" if r["cpu_ms_per_req"] is None else f"{r['cpu_ms_per_req']:.3f}"
        rows.append(f"| {r['target']} | {r['rate']:g} | {r['achieved_rps']:,.1f} "
                    f"| {_ms(r['p50_ms'])} | {_ms(r['p90_ms'])} | {_ms(r['p99_ms'])} "
                    f"| {_ms(r['p999_ms'])} | {err} | {cpu} | {mock} "
                    f"| {r['gen_cpu_us_per_req']:.0f} |")
    return "\n".join(rows)


def plot(runs: list[dict], scenarios: list[str], names: list[str], path: Path,
         title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return False
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    colors = dict(COLORS)
    for i, n in enumerate(n for n in names if n not in COLORS):
        colors[n] = PEER_COLORS[i % len(PEER_COLORS)]
    panels = [("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"),
              ("achieved_rps", "achieved rate"), ("errors", "errors")]
    fig, axes = plt.subplots(2 * len(scenarios), 3, figsize=(14, 7.5 * len(scenarios)),
                             squeeze=False)
    for s, scenario in enumerate(scenarios):
        per = "streams" if scenario == "stream" else "requests"
        offered = sorted({r["rate"] for r in runs if r["scenario"] == scenario})
        for k, (key, label) in enumerate(panels):
            ax = axes[2 * s + k // 3][k % 3]
            for name in names:
                rs = sorted((r for r in runs if r["scenario"] == scenario
                             and r["target"] == name and r.get("completed")),
                            key=lambda r: r["rate"])
                if not rs:
                    continue
                xs = [r["rate"] for r in rs]
                ys = [r[key] or 0 for r in rs]
                ax.plot(xs, ys, marker="o", color=colors[name], label=name)
                if key != "achieved_rps":
                    for x, y in zip(xs, ys, strict=True):
                        ax.annotate(_ms(y) if key.endswith("_ms") else f"{y:g}", (x, y),
                                    fontsize=7, xytext=(3, 3), textcoords="offset points",
                                    color=colors[name])
            if key.endswith("_ms"):
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(plain)
                ax.yaxis.set_minor_formatter(NullFormatter())
                ax.set_ylabel("ms (from intended send time)")
                ax.set_title(f"{scenario}: {label} latency", fontsize=10)
            elif key == "achieved_rps":
                if offered:
                    ax.plot(offered, offered, ls="--", color="#cccccc", label="offered")
                ax.set_ylabel(f"{per}/s answered 200")
                ax.set_title(f"{scenario}: achieved vs offered rate", fontsize=10)
            else:
                worst = max((r.get("errors") or 0 for r in runs
                             if r["scenario"] == scenario and r.get("completed")), default=0)
                if worst > 10:
                    ax.set_yscale("symlog", linthresh=1)
                    ax.yaxis.set_major_formatter(plain)
                ax.set_ylim(bottom=0, top=max(1.0, worst * (3 if worst > 10 else 1.2)))
                ax.set_ylabel(f"{per} (timeout, not sent, non-200, ...)")
                ax.set_title(f"{scenario}: errors per run", fontsize=10)
            ax.set_xlabel(f"offered {per}/s")
            if offered:
                ax.set_xticks(offered)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Open-loop (fixed-rate) latency of bastion and its baselines.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rates", default="100,500,1000", help="offered requests/s, comma-separated")
    p.add_argument("-d", "--duration", type=float, default=20.0,
                   help="seconds measured per target and rate")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of schedule before each measurement, unmeasured")
    p.add_argument("--targets", default="passthrough,bastion",
                   help="comma-separated subset of: " + ", ".join(BUILTIN) + " (the mock always "
                        "runs as the upstream; as a target it shows the generator's floor)")
    p.add_argument("--peers", default="",
                   help="comma-separated names from bench/peers.py's PEERS (e.g. litellm,portkey)")
    p.add_argument("--stream", action="store_true", help="also run the SSE scenario")
    p.add_argument("--stream-only", action="store_true", help="run only the SSE scenario")
    p.add_argument("--chunk-interval-ms", type=float, default=1.0,
                   help="the mock's pause between SSE events (as bench/run.py)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds after its due time a request may take; then it is an error")
    p.add_argument("--max-conns", type=int, default=2000,
                   help="connections (= requests in flight) per target at most")
    p.add_argument("--settle", type=float, default=15.0,
                   help="seconds at most to wait, after a run, for the target to go idle")
    p.add_argument("--skip-saturated", action="store_true",
                   help="skip a target's higher rates once it answered under half the offered "
                        "rate")
    p.add_argument("--workers", type=int, default=1, help="bastion worker processes")
    p.add_argument("--profile", choices=BASTION_PROFILES, default="full",
                   help="bastion's config (bench/harness.py)")
    p.add_argument("--bastion", default=str(Path(sys.executable).parent / "bastion"),
                   help="the bastion executable")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--no-save", action="store_true", help="do not write results/figure files")
    args = p.parse_args(argv)
    try:
        args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        p.error(f"--rates: not numbers: {args.rates!r}")
    if not args.rates or any(not 0 < r <= 100_000 for r in args.rates):
        p.error("rates must be in (0, 100000]")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(BUILTIN)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))} (peers go in --peers)")
    args.peers = [t.strip() for t in args.peers.split(",") if t.strip()]
    if not args.targets and not args.peers:
        p.error("nothing to measure")
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60:
        p.error("duration must be in (0, 600] s and warm-up in [0, 60] s")
    if not 0 < args.timeout <= 120 or args.max_conns < 1:
        p.error("need 0 < timeout <= 120 and max-conns >= 1")
    args.scenarios = (["stream"] if args.stream_only
                      else ["plain", "stream"] if args.stream else ["plain"])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    prepare_main(needs_wrk=False)
    raise_nofile(args.max_conns * 2 + 256)  # inherited by the servers too

    tmp = Path(tempfile.mkdtemp(prefix="bastion-fixed-rate-"))
    mock_port = free_port()
    mock = mock_server(mock_port, tmp / "mock.log", args.chunk_interval_ms)
    runs: list[dict] = []
    targets: list[Target] = []
    servers: list[Server] = [mock]
    started = datetime.now(UTC)
    try:
        targets = build_targets(args, tmp, mock)
        names = [t.name for t in targets]
        print(f"# bastion fixed-rate benchmark {started:%Y-%m-%d %H:%M:%S} UTC\n")
        print(f"command: `{command}`")
        rates = ", ".join(f"{r:g}" for r in args.rates)
        print(f"load: open loop (bench/openloop.py), rates {rates} /s, {args.duration:g} s "
              f"measured (+{args.warmup:g} s warm-up) per target and rate, rate-major; "
              f"timeout {args.timeout:g} s, at most {args.max_conns} "
              f"connections; {os.cpu_count()} CPUs; python {platform.python_version()}; "
              f"bastion profile {args.profile}, workers {args.workers}")
        servers += [t.server for t in targets if t.server is not None and t.server is not mock]
        for s in servers:
            print(f"  {s.name}: `{shlex.join(s.cmd)}`")
        print(flush=True)
        for s in servers:
            s.start()
        for s in servers:
            try:
                s.wait_ready(args.ready_timeout)
            except RuntimeError as exc:
                if s is mock:
                    raise
                print(f"!! {exc}\n", file=sys.stderr, flush=True)
                s.stop()
                for t in targets:
                    if t.server is s:
                        t.failed = str(exc).splitlines()[0]
        for scenario in args.scenarios:
            for t in targets:
                if t.failed is None:
                    problem = sanity_check(t.server.url, scenario == "stream", t.headers)
                    if problem:
                        t.failed = f"sanity check ({scenario}): {problem}"
                        print(f"!! {t.name}: {t.failed}", file=sys.stderr, flush=True)
            # Whatever start-up or the previous scenario left running, finished first.
            settle([s.proc.pid for s in servers if s.proc is not None], args.settle)
            skipped: dict[str, str] = {}
            for rate in args.rates:
                for t in targets:
                    if t.failed is not None or t.name in skipped:
                        runs.append(failed_row(t.name, scenario, rate,
                                               t.failed or skipped[t.name]))
                        continue
                    print(f"... {scenario} / {rate:g} req/s / {t.name}", file=sys.stderr,
                          flush=True)
                    r = measure(t, mock, scenario, rate, args)
                    runs.append(r)
                    print(f"    achieved {r['achieved_rps']:.1f}/s, p50 {_ms(r['p50_ms'])} "
                          f"p99 {_ms(r['p99_ms'])} ms, errors {r['errors']} "
                          f"{r['error_detail'] or ''}", file=sys.stderr, flush=True)
                    if r["settle_s"] >= args.settle:
                        print(f"    !! {t.name} still busy {args.settle:g} s after the run; the "
                              f"next run may share the machine with its backlog",
                              file=sys.stderr, flush=True)
                    if t.server.proc.poll() is not None:
                        t.failed = r["error"] or "exited"
                        print(f"!! {t.name}: {t.failed}\n{t.server.log_tail()}",
                              file=sys.stderr, flush=True)
                    elif args.skip_saturated and r["achieved_rps"] < rate / 2:
                        skipped[t.name] = f"skipped: saturated at {rate:g}/s"
        logs = {s.name: s.log_tail(60) for s in servers}
    finally:
        for s in reversed(servers):
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    for scenario in args.scenarios:
        what = (f" (SSE: 20 chunks + usage + [DONE] per stream, {args.chunk_interval_ms:g} ms "
                f"apart; latency = last byte)" if scenario == "stream" else "")
        print(f"## {scenario}{what}\n")
        print(markdown(runs, scenario))
        print()
    gen = [r["gen_cpu_us_per_req"] for r in runs if r.get("completed")
           and r["rate"] == max(args.rates)]
    if gen:
        print(f"load generator's own CPU at {max(args.rates):g}/s: "
              f"{min(gen):.0f}-{max(gen):.0f} µs per request "
              f"({min(gen) * max(args.rates) / 1e4:.1f}-{max(gen) * max(args.rates) / 1e4:.1f}"
              f"% of a core)")
    lag = [r["send_lag_p99_ms"] for r in runs if r.get("send_lag_p99_ms") is not None]
    if lag:
        print(f"send lag (actual send - due time) p99 over the runs: {min(lag):.3f}-"
              f"{max(lag):.3f} ms (already inside every latency above)")
    print()

    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "command": command, "started": started.isoformat(),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "platform": platform.platform()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "servers": {s.name: s.cmd for s in servers},
        "bastion_config": bastion_config(mock_port, "bastion.db", args.profile)
        if "bastion" in names else None,
        "runs": runs, "server_logs": logs,
    }
    if not args.no_save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"fixed-rate-{stamp}.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results: {out}")
        png = out.with_suffix(".png")
        if plot(runs, args.scenarios, names, png,
                f"{command}  ({started:%Y-%m-%d %H:%M} UTC)"):
            print(f"figure:  {png}")
        else:
            print("figure:  skipped (matplotlib not installed: .venv/bin/pip install matplotlib)")
    failed = any(t.failed for t in targets) or any(
        not r["ok"] and r.get("completed") for r in runs)
    return 2 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; all servers stopped", file=sys.stderr)
        sys.exit(130)
