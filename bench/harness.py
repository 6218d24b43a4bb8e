"""What every benchmark in ``bench/`` shares: the processes under test and how they are measured.

- ``Server``: one process (group) on a free 127.0.0.1 port, started, probed until ready and
  stopped with everything it forked;
- ``cpu_seconds`` / ``rss_mib``: utime+stime and resident memory of a process tree, read from
  ``/proc`` (so a target is charged for its workers and helpers, and nothing else);
- the bodies the load sends, and ``sanity_check``, which proves a target answers them the way an
  OpenAI client expects before any load is measured;
- the bastion configs the benchmarks run (``bastion_config``) and the API keys they need
  (``provision_keys``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LUA = BENCH_DIR / "post.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHAT_PATH = "/v1/chat/completions"

# The same bodies as bench/post.lua, for the correctness check before each load run.
SANITY_BODY = {
    "model": "bench-model",
    "messages": [{"role": "system", "content": "You are a concise assistant."},
                 {"role": "user", "content": "Say hello to the benchmark in one short sentence."}],
    "max_tokens": 32, "temperature": 0.7,
}

# What bench/mock_upstream.py streams: 20 chunks (role, 18 tokens, finish), usage, [DONE].
STREAM_TEXT = "".join(f"tok{i} " for i in range(1, 19))


# --------------------------------------------------------------------------- /proc


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (uvicorn workers, multiprocessing helpers)."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime+stime of the tree, plus cutime+cstime (children already exited and reaped), so a
    worker that dies mid-run keeps counting: its time moves from its own fields to its parent's."""
    ticks = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
        ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLK_TCK


def rss_mib(pid: int) -> float:
    kib = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kib += int(line.split()[1])
                        break
        except OSError:
            continue
    return kib / 1024


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    cmd: list[str]
    port: int
    ready_path: str
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict[str, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # Own session and process group: Ctrl-C in the terminal does not hit it, and stop()
        # can end it together with any workers it forked.
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=REPO, env={**os.environ, **(self.env or {})})

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it "
                                   f"was ready\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s ({last})\n"
                           f"{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return "(no log)"
        return "\n".join(f"  | {line}" for line in lines) or "  | (empty log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 12.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader may be gone while a worker it forked lingers in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def mock_server(port: int, log_path: Path, chunk_interval_ms: float = 0.0,
                name: str = "mock") -> Server:
    """``bench/mock_upstream.py`` on ``port`` (not started), SSE events ``chunk_interval_ms``
    apart."""
    return Server(name, [sys.executable, str(BENCH_DIR / "mock_upstream.py"), str(port),
                         "--chunk-interval-ms", f"{chunk_interval_ms:g}"],
                  port, "/health", log_path)


def raise_nofile(want: int = 65536) -> tuple[int, int]:
    """Raise this process's soft limit of open files (to the hard limit at most), before any
    server or load generator is spawned: they inherit it. A thousand connections need ~2,000
    descriptors in bastion (client + upstream side) and a thousand in the generator; the usual
    default is 1,024. The (soft, hard) limits after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, hard
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def prepare_main(*, needs_wrk: bool = True) -> bool:
    """What every benchmark's ``main`` does first: Ctrl-C, SIGTERM and SIGHUP end it through
    its ``finally`` blocks (so every server it started is stopped), and wrk must be there.
    False (after saying why) when it is not."""
    if needs_wrk and shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return False
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    return True


# --------------------------------------------------------------------------- checks


def sanity_check(url: str, stream: bool,
                 headers: dict[str, str] | None = None) -> str | None:
    """One request before the load: None when the answer is what a client expects, else why."""
    body = dict(SANITY_BODY)
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(url + CHAT_PATH, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            status, ctype, data = r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read()[:500]!r}"
    except OSError as exc:
        return f"request failed: {exc}"
    if status != 200:
        return f"HTTP {status}: {data[:500]!r}"
    if not stream:
        try:
            doc = json.loads(data)
        except ValueError:
            return f"not JSON: {data[:300]!r}"
        if doc.get("object") != "chat.completion" or not doc.get("choices"):
            return f"not a chat.completion: {data[:300]!r}"
        if not doc.get("usage"):
            return f"chat.completion without usage: {data[:300]!r}"
        return None
    if not ctype.startswith("text/event-stream"):
        return f"stream answered with content-type {ctype!r}: {data[:300]!r}"
    events = [line[5:].strip() for line in data.decode(errors="replace").splitlines()
              if line.startswith("data:")]
    if not events or events[-1] != "[DONE]":
        return f"stream does not end with data: [DONE] ({len(events)} events): {data[-300:]!r}"
    try:
        chunks = [json.loads(e) for e in events[:-1]]
    except ValueError as exc:
        return f"an SSE event is not JSON ({exc}): {data[:300]!r}"
    text = "".join((ch.get("delta") or {}).get("content") or ""
                   for c in chunks for ch in c.get("choices") or [])
    if text != STREAM_TEXT:
        return f"streamed content {text[:120]!r} is not the mock's {STREAM_TEXT[:60]!r}..."
    if not any(c.get("usage") for c in chunks):
        return "stream has no usage chunk (stream_options.include_usage was sent)"
    return None




# --------------------------------------------------------------------------- bastion


#: ``full``: the whole default pipeline with every admission stage doing its work: API keys,
#: per-tenant rate limits (requests, tokens, concurrency), budgets with a per-request ceiling,
#: the response cache (the load sends deterministic requests, each unique, so every request
#: pays a lookup and a store), a breaker and retries on the primary, a fallback target, the
#: request log, metrics, the journal and the usage ledger. The limits are far above the load:
#: they are checked, never hit. ``minimal``: one target, auth off, nothing configured (what
#: every request costs at least).
BASTION_PROFILES = ("full", "minimal")

_PROVIDERS = """\
version: 1
providers:
  # Connections follow the bulkhead (pool_size unset): 2,048 calls in flight at most.
  mock:
    type: openai
    base_url: http://127.0.0.1:{mock_port}/v1
    bulkhead: {{max_concurrency: 2048, max_wait_s: 1}}
  mock-backup:
    type: openai
    base_url: http://127.0.0.1:{mock_port}/v1
    bulkhead: {{max_concurrency: 2048, max_wait_s: 1}}
# As the embedded default: durable records (keys, usage ledger, idempotency) in a SQLite file.
state: {{sqlite_path: "{db}"{hot}}}
"""

_MINIMAL = """\
models:
  bench-model:
    targets:
      - {{provider: mock, model: mock-model, timeout_s: 10, retries: 2}}
"""

_FULL = """\
models:
  bench-model:
    targets:
      - provider: mock
        model: mock-model
        timeout_s: 10
        retries: 2
        breaker: {{failure_threshold: 20, window_s: 30, cooldown_s: 5}}
      - {{provider: mock-backup, model: mock-model, timeout_s: 10, retries: 1}}
auth: {{mode: required}}
limits:
  default: {{requests_per_minute: 100000000, tokens_per_minute: 100000000000,
            concurrent_requests: 100000}}
budgets:
  default: {{per_day_usd: 1000000000, per_month_usd: 10000000000, per_request_usd: 100}}
pricing:
  mock/mock-model: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}
  mock-backup/mock-model: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}
admission: {{max_in_flight: 100000}}
"""


def bastion_config(mock_port: int, db: Path | str, profile: str = "full",
                   extra: str = "", hot: str | None = None) -> str:
    """The YAML of a bastion whose providers are the mock upstream on ``mock_port``; ``hot``
    sets ``state.hot`` (default: ``auto``, memory for one worker, LMDB for several)."""
    if profile not in BASTION_PROFILES:
        raise ValueError(f"unknown bastion profile {profile!r}")
    models = _FULL if profile == "full" else _MINIMAL
    return (_PROVIDERS + models).format(mock_port=mock_port, db=db,
                                        hot=f", hot: {hot}" if hot else "") + extra


def profile_needs_key(profile: str) -> bool:
    return profile == "full"


def provision_keys(db: Path | str, tenants: int = 1, keys_per_tenant: int = 1) -> list[str]:
    """Create ``tenants`` tenants (``bench-0``, ...) with ``keys_per_tenant`` API keys each in
    the state file ``db``, before the server starts; the plaintext keys, tenant by tenant."""
    from bastion.services.identity import IdentityService
    from bastion.stores.identity import SqliteIdentityStore

    async def main() -> list[str]:
        identity = IdentityService(SqliteIdentityStore(str(db)))
        keys: list[str] = []
        try:
            for t in range(tenants):
                tenant = await identity.create_tenant(f"bench-{t}")
                for k in range(keys_per_tenant):
                    keys.append((await identity.create_key(tenant.id, f"key-{k}"))[1])
        finally:
            await identity.aclose()
        return keys

    return asyncio.run(main())
