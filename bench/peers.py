"""Peer gateways as optional benchmark targets, each pointed at the same mock upstream.

- ``litellm``: the LiteLLM proxy 1.106.12 (``litellm[proxy]``, PyPI) in its own venv,
  ``bench/.peers/litellm/``, never in the project's ``.venv``;
- ``portkey``: the Portkey AI gateway 1.15.2 (``@portkey-ai/gateway``, npm) run by the machine's
  ``node``, installed into ``bench/.peers/portkey/``.

Each ``Peer`` installs itself on first use (``ensure_installed``: None when ready, else a one-line
reason), builds a ``harness.Server`` that is not started yet (``server``), and names the headers
every request to it must carry (``headers``). Both start and serve fully offline: nothing is
fetched at start-up or per request; what each needed for that is set, with the reason, below.

    from peers import PEERS
    peer = PEERS["litellm"]
    if (why := peer.ensure_installed()) is None:
        srv = peer.server(mock_port, free_port(), workdir)
        srv.start(); srv.wait_ready(60)
        ... requests with peer.headers(mock_port) ...
        srv.stop()

``bench/run.py --peers litellm,portkey`` adds them to a run. Delete ``bench/.peers/<name>`` to
force a reinstall.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import BENCH_DIR, Server

PEERS_DIR = BENCH_DIR / ".peers"
INSTALL_TIMEOUT_S = 1200


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # pip and npm put the reason last; skip pip's noise about this machine's extra indexes.
    lines = [ln for ln in lines if "is ignored: it is neither a file nor a directory" not in ln]
    return (lines[-1] if lines else "no output")[:limit]


def _run(cmd: list[str], what: str, timeout: float = INSTALL_TIMEOUT_S) -> str | None:
    """Run an install step; None when it worked, else a one-line reason."""
    print(f"... {what}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return f"{what} did not finish in {timeout:.0f} s"
    except OSError as exc:
        return f"{what} could not run: {exc}"
    if out.returncode != 0:
        return f"{what} failed (exit {out.returncode}): {_one_line(out.stderr or out.stdout)}"
    print(f"... {what}: done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return None


@dataclass
class Peer:
    """One peer gateway. ``version`` is the pinned release that ``ensure_installed`` installs."""

    name: str
    version: str = ""

    def ensure_installed(self) -> str | None:
        """Install if missing (idempotent, quick when present). None when ready, else a one-line
        reason the peer cannot be used here."""
        raise NotImplementedError

    def server(self, mock_port: int, port: int, workdir: Path) -> Server:
        """A ``harness.Server`` (not started) on 127.0.0.1:``port`` whose upstream is the mock on
        ``mock_port``; any config it needs is written into ``workdir``."""
        raise NotImplementedError

    def headers(self, mock_port: int) -> dict[str, str]:
        """Extra headers every request to this peer must carry."""
        return {}


# --------------------------------------------------------------------------- LiteLLM


LITELLM_VERSION = "1.106.12"  # PINNED: 1.107.0 was a compromised release.
LITELLM_SPEC = f"litellm[proxy]=={LITELLM_VERSION}"

_LITELLM_CONFIG = """\
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/mock-model
      api_base: http://127.0.0.1:{mock_port}/v1
      api_key: dummy-key-the-mock-ignores
      timeout: 10
litellm_settings:
  # No debug output and no callbacks (no logging integrations, no Prometheus): the defaults,
  # written out. Per-request cost tracking stays on: it is part of the product, as bastion's is.
  set_verbose: false
  json_logs: false
  callbacks: []
  success_callback: []
  failure_callback: []
general_settings:
  # No database (no DATABASE_URL): keys are checked against the master key alone. With no
  # database nothing is written; these say so explicitly, as a production config would.
  disable_spend_logs: true
  disable_error_logs: true
"""


@dataclass
class LiteLLMPeer(Peer):
    #: The proxy refuses to start without a master key (1.106 checks it at boot), so it gets a
    #: strong random one, per process, from the environment (never written to a file), and
    #: every request carries it (``headers``): the auth a production proxy does on each call.
    master_key: str = field(default_factory=lambda: "sk-" + secrets.token_hex(24), repr=False)

    @property
    def root(self) -> Path:
        return PEERS_DIR / "litellm"

    def _installed(self) -> tuple[bool, str | None]:
        """(ready, problem): ready when the pinned release and its proxy extras are there;
        problem when a litellm other than the pinned one is in the side environment."""
        site = sorted(self.root.glob("lib/python3*/site-packages"))
        if not site or not (self.root / "bin" / "litellm").exists():
            return False, None
        dists = sorted(p.name for p in site[0].glob("litellm-[0-9]*.dist-info"))
        want = f"litellm-{self.version}.dist-info"
        others = [d for d in dists if d != want]
        if others:
            return False, (f"{self.root} holds {', '.join(others)}, not the pinned {self.version}; "
                           f"delete the folder and run again")
        extras_ok = all(any(site[0].glob(f"{m}-*.dist-info")) for m in ("fastapi", "uvicorn",
                                                                          "backoff", "orjson"))
        return bool(dists) and extras_ok and (self.root / ".installed").exists(), None

    def ensure_installed(self) -> str | None:
        ready, problem = self._installed()
        if problem:
            return problem
        if ready:
            return None
        python = shutil.which("python3") or sys.executable
        PEERS_DIR.mkdir(parents=True, exist_ok=True)
        if not (self.root / "bin" / "pip").exists():
            why = _run([python, "-m", "venv", str(self.root)], "litellm: python3 -m venv")
            if why:
                return why
        why = _run([str(self.root / "bin" / "pip"), "install", "--disable-pip-version-check",
                    "-q", LITELLM_SPEC], "litellm: pip install")
        if why:
            return why
        (self.root / ".installed").write_text(LITELLM_SPEC + "\n")
        ready, problem = self._installed()
        return problem or (None if ready else f"{LITELLM_SPEC} installed but not found in "
                                              f"{self.root}")

    def server(self, mock_port: int, port: int, workdir: Path) -> Server:
        cfg = workdir / "litellm.yaml"
        cfg.write_text(_LITELLM_CONFIG.format(mock_port=mock_port))
        # `env -u` execs the proxy (same pid, so CPU is charged to it alone) with no database
        # URL even if the caller's environment has one: the peer runs without a database.
        cmd = ["env", "-u", "DATABASE_URL", "-u", "DIRECT_URL",
               str(self.root / "bin" / "litellm"), "--config", str(cfg),
               "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        env = {
            "LITELLM_MASTER_KEY": self.master_key,
            # Offline start: the model cost map, the Anthropic beta-header table, blog posts,
            # policy templates and auto-router presets are fetched from GitHub/docs by default
            # (the cost map at import); use the copies bundled in the package instead.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
            "LITELLM_LOCAL_BLOG_POSTS": "True",
            "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
            "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
            # Errors only: no INFO line per request from litellm's loggers, and the proxy hands
            # the level to uvicorn, which drops its access log (the pass-through proxy has none
            # either). What LiteLLM's production guide recommends.
            "LITELLM_LOG": "ERROR",
            # Production mode: no .env loading from the working directory (the repo).
            "LITELLM_MODE": "PRODUCTION",
            # (Telemetry: --telemetry is a no-op in 1.106, nothing is sent; nothing to set.)
        }
        return Server(self.name, cmd, port, "/health/liveliness", workdir / "litellm.log",
                      env=env)

    def headers(self, mock_port: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_key}"}


# --------------------------------------------------------------------------- Portkey


PORTKEY_VERSION = "1.15.2"
#: The side environment's package.json. The published package ships no lockfile and asks for
#: ``@hono/node-server ^1.3.3``, so a plain install resolves 1.19.x, whose lightweight Response
#: reuses the immutable headers of a fetch() response: every streamed answer then fails with
#: ``TypeError: immutable`` in ``ResponseService.updateHeaders`` (Portkey-AI/gateway issues
#: #1389, #1550). Pin what the gateway's own lockfile resolves: node-server 1.13.5, and
#: node-ws 1.2.0 (1.3.x requires node-server ^1.19.11).
PORTKEY_PACKAGE = {
    "private": True,
    "description": "bench/peers.py side environment for the Portkey AI gateway",
    "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
    "overrides": {"@hono/node-server": "1.13.5", "@hono/node-ws": "1.2.0"},
}
#: @hono/node-server's serve() listens on every interface ("::") and the gateway's CLI has no
#: host option; this preload binds a listen() without a host to 127.0.0.1, like every other
#: bench server.
_LOOPBACK_PRELOAD = """\
import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  // serve() calls listen(port, options.hostname, callback) with hostname undefined.
  if (typeof args[0] === "number") {
    if (args[1] === undefined) args[1] = "127.0.0.1";
    else if (typeof args[1] === "function") args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
"""


def _pkg_version(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("version")
    except (OSError, ValueError):
        return None


@dataclass
class PortkeyPeer(Peer):
    @property
    def root(self) -> Path:
        return PEERS_DIR / "portkey"

    @property
    def entry(self) -> Path:
        return self.root / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"

    def _installed(self) -> bool:
        nm = self.root / "node_modules"
        pins = PORTKEY_PACKAGE["overrides"]
        return (self.entry.exists()
                and _pkg_version(nm / "@portkey-ai/gateway/package.json") == self.version
                and _pkg_version(nm / "@hono/node-server/package.json") == pins["@hono/node-server"]
                and not (nm / "@portkey-ai/gateway/node_modules/@hono/node-server").exists())

    def ensure_installed(self) -> str | None:
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            return "node/npm not found (apt-get install -y nodejs npm)"
        try:
            v = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10,
                               check=False).stdout.strip()
            major = int(v.lstrip("v").split(".")[0])
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return "cannot tell the node version (node --version)"
        if major < 18:
            return f"node {v} is too old: the gateway needs node >= 18 (global fetch)"
        pkg = self.root / "package.json"
        want = json.dumps(PORTKEY_PACKAGE, indent=2) + "\n"
        if self._installed() and pkg.exists() and pkg.read_text() == want:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        pkg.write_text(want)
        # --ignore-scripts: the package's one script is `postinstall: patch-package`, and it
        # ships no patches/ folder, so there is nothing for it to do (npm 11 skips it anyway).
        why = _run([npm, "install", "--prefix", str(self.root), "--no-audit", "--no-fund",
                    "--ignore-scripts", "--loglevel=error"], "portkey: npm install")
        if why:
            return why
        return None if self._installed() else (
            f"@portkey-ai/gateway@{self.version} with the pinned @hono/node-server not found in "
            f"{self.root} after npm install")

    def server(self, mock_port: int, port: int, workdir: Path) -> Server:
        preload = workdir / "portkey-loopback.mjs"
        preload.write_text(_LOOPBACK_PRELOAD)
        node = shutil.which("node") or "node"
        # --port=N is the only form start-server.js parses; --headless: no UI banner/route.
        cmd = [node, "--import", preload.as_uri(), str(self.entry), f"--port={port}",
               "--headless"]
        env = {
            # Production: without it the gateway also mounts the /public UI and a /log/stream
            # SSE route that every request's log entry is offered to. (The per-request log
            # object itself is built on Node whatever is set; it cannot be turned off.)
            "NODE_ENV": "production",
        }
        # GET / answers "AI Gateway says hey!" once the server is listening.
        return Server(self.name, cmd, port, "/", workdir / "portkey.log", env=env)

    def headers(self, mock_port: int) -> dict[str, str]:
        # The gateway's OpenAI provider with a custom host: it forwards to
        # <custom-host>/chat/completions with the Authorization header as the provider key.
        # 127.0.0.1 is in its default TRUSTED_CUSTOM_HOSTS, so the SSRF guard lets it through.
        return {"x-portkey-provider": "openai",
                "x-portkey-custom-host": f"http://127.0.0.1:{mock_port}/v1",
                "Authorization": "Bearer dummy"}


PEERS: dict[str, Peer] = {
    "litellm": LiteLLMPeer("litellm", LITELLM_VERSION),
    "portkey": PortkeyPeer("portkey", PORTKEY_VERSION),
}
