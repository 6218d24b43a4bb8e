"""`bastion serve` as a user runs it: the embedded default, the official SDKs, a clean stop."""

from __future__ import annotations

import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.local_model


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(x) for x in out.split()]


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found.append(child)
        found.extend(_descendants(child))
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def serve(*args: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "BASTION_LOCAL_MODEL_URL"}
    # The embedded default keeps its state in ./bastion.db: a directory of the test's own,
    # not the checkout.
    cwd = tempfile.mkdtemp(prefix="bastion-serve-")
    proc = subprocess.Popen([sys.executable, "-m", "bastion.cli", "serve", "--port", str(port),
                             *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(base + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "bastion serve did not become ready"
            time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(cwd, ignore_errors=True)


def test_serve_on_the_embedded_default_with_both_sdks() -> None:
    for base, proc in serve():
        model_procs = _children(proc.pid)
        assert model_procs, "the local model runs as a child process of bastion"
        oa = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        reply = oa.chat.completions.create(
            model="smollm2", max_tokens=10, temperature=0,
            messages=[{"role": "user", "content": "What is 2 + 2?"}])
        assert reply.choices[0].message.content
        assert 0 < reply.usage.completion_tokens <= 10

        text = "".join(c.choices[0].delta.content or "" for c in oa.chat.completions.create(
            model="smollm2", max_tokens=8, stream=True,
            messages=[{"role": "user", "content": "Say hello"}]) if c.choices)
        assert text.strip()

        an = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0)
        message = an.messages.create(model="smollm2", max_tokens=10,
                                     messages=[{"role": "user", "content": "Hi!"}])
        assert message.content[0].text and message.usage.output_tokens <= 10
    assert proc.returncode is not None
    time.sleep(0.5)
    assert not any(_alive(pid) for pid in model_procs), "the model process outlived bastion"


def test_two_workers_share_one_model_process() -> None:
    for base, proc in serve("--workers", "2"):
        oa = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        for _ in range(4):
            reply = oa.chat.completions.create(
                model="smollm2", max_tokens=4,
                messages=[{"role": "user", "content": "Hello"}])
            assert reply.choices[0].message.content is not None
        commands = [_cmdline(pid) for pid in _descendants(proc.pid)]
        assert sum("bastion.providers.local_server" in c for c in commands) == 1
        assert sum("multiprocessing" in c for c in commands) >= 2  # the two workers


def test_the_gateway_port_is_held_while_the_shared_model_starts() -> None:
    import errno
    import socket

    from bastion.cli import port_held

    port = free_port()

    def bind(p: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and most servers
        s.bind(("127.0.0.1", p))
        return s

    with port_held("127.0.0.1", port):
        with pytest.raises(OSError) as refused:
            bind(port)
        assert refused.value.errno == errno.EADDRINUSE
        for _ in range(200):  # what a process asking for any free port is given
            with bind(0) as other:
                assert other.getsockname()[1] != port
    with bind(port):  # released, for uvicorn to bind
        pass
    with port_held("127.0.0.1", 0):  # nothing to hold
        pass
