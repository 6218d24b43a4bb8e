"""Child process that serves the embedded GGUF model over HTTP with xllamacpp.

Run by ``LocalProvider`` (never by hand): ``python -m bastion.providers.local_server --model
PATH --port 0 --threads 1 --parallel 1 --ctx 2048``. It prints ``LISTENING <url>`` on stdout
once the model is loaded, then serves until its stdin closes, so it cannot outlive bastion
even when bastion is killed. A separate process keeps llama.cpp's threads and logging away
from the gateway's event loop, and lets several gateway workers share one model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bastion-local-model")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--ctx", type=int, default=2048)
    args = parser.parse_args(argv)

    import xllamacpp  # imported late: the `local` extra is optional

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    # Answers name the model by its file's stem, not its path on this machine.
    params.model_alias = {Path(args.model).stem}
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx * args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.port = args.port if args.port else _free_port()
    params.endpoint_metrics = False
    params.warmup = False
    server = xllamacpp.Server(params)
    print(f"LISTENING {server.listening_address}", flush=True)
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except KeyboardInterrupt:
        pass
    del server
    os._exit(0)  # llama.cpp's threads need not be joined one by one


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    raise SystemExit(main())
