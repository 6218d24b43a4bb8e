"""A fake OpenAI-compatible upstream on loopback that misbehaves on request.

Each request pops the next behaviour from ``FakeUpstream.script`` (default ``"ok"``), so a test
states exactly which faults the upstream shows, in order, over real HTTP:

``ok`` · ``("status", code, headers)`` · ``reset`` (drop the connection) · ``hang`` (accept,
never answer) · ``malformed`` (200 with invalid JSON) · ``stream`` (stream of 3 chunks, usage,
[DONE]) · ``("stream_error_after", n)`` · ``("stream_stall_after", n)`` (silent after n
chunks) · ``stream_no_done`` · ``("slow", seconds)``
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import completion


class FakeUpstream:
    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        #: The client address of each chat request (one per connection used).
        self.peers: list[Any] = []
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.open_handlers = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "up-model"}]})

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({"object": "list", "model": body["model"], "data": [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2]}
            for i, _ in enumerate(inputs)], "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.open_handlers += 1
        try:
            return await self._chat(request)
        finally:
            self.open_handlers -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        self.peers.append(request.transport.get_extra_info("peername")
                          if request.transport is not None else None)
        step = self.script.pop(0) if self.script else ("stream" if body.get("stream") else "ok")
        kind = step[0] if isinstance(step, tuple) else step
        if kind == "ok":
            return web.json_response(completion("hello", body["model"]))
        if kind == "status":
            _, code, headers = step
            return web.json_response({"error": {"message": f"fake {code}", "type": "x"}},
                                     status=code, headers=headers)
        if kind == "reset":
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(0.1)
            return web.Response()
        if kind == "hang":
            await asyncio.sleep(3600)
        if kind == "malformed":
            return web.Response(body=b'{"choices": [', content_type="application/json")
        if kind == "slow":
            await asyncio.sleep(step[1])
            return web.json_response(completion("slow hello", body["model"]))
        return await self._stream(request, body, step)

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      step: Any) -> web.StreamResponse:
        kind = step[0] if isinstance(step, tuple) else step
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        words = ["one", " two", " three"]
        for i, word in enumerate(words):
            if kind == "stream_error_after" and i == step[1]:
                await resp.write(b'data: {"error": {"message": "boom mid-stream"}}\n\n')
                return resp
            if kind == "stream_stall_after" and i == step[1]:
                await asyncio.sleep(3600)
            delta: dict[str, Any] = {"content": word}
            if i == 0:
                delta["role"] = "assistant"
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": body["model"],
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if kind == "stream_no_done":
            return resp
        await resp.write(b"data: " + orjson.dumps({
            "id": "c", "object": "chat.completion.chunk", "model": body["model"],
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"\n\n")
        await resp.write(b"data: " + orjson.dumps({
            "id": "c", "object": "chat.completion.chunk", "model": body["model"], "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp
