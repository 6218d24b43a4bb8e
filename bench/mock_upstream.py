"""A fast mock OpenAI upstream for the benchmarks.

    python bench/mock_upstream.py PORT [--chunk-interval-ms MS]

It must never be the bottleneck, so it is a raw ``asyncio.Protocol`` HTTP/1.1 server under uvloop
with httptools (the C parser uvicorn uses) and every response body pre-rendered at start-up.
Measured on the 2-core bench box with ``wrk -t1 -c32`` and ``bench/post.lua``: ~115k req/s at
~9 µs CPU per request, where the same handler on ``aiohttp.web`` (uvloop, no access log) does
~25k req/s at ~40 µs; a Python proxy in front of it costs 100+ µs per request, so the mock's
share stays small (``bench/run.py`` reports it as "mock CPU ms/req" for every target).

- ``POST /v1/chat/completions``: a fixed ``chat.completion`` with usage; when the request body
  holds ``"stream": true`` an SSE stream of 20 ``chat.completion.chunk`` events, a usage chunk and
  ``data: [DONE]``, sent with chunked transfer-encoding, one write per event. With
  ``--chunk-interval-ms 0`` (the default) the events go back to back, so a proxy may read many in
  one go; with a positive interval they are spaced like tokens from a real model, so every proxy
  pays its per-event cost (one read, one write) as it would in production.
- ``GET /v1/models``: a model list.  ``GET /`` and ``GET /health``: ``ok``.

Keep-alive, pipelining, Content-Length and chunked request bodies are handled by httptools.
The stream flag is found with a byte search plus a JSON parse only when the search hits, so the
plain path does no JSON work at all.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

import httptools

MODEL = "mock-model"
CREATED = int(time.time())
STREAM_CHUNKS = 20
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


COMPLETION = _dumps({
    "id": "chatcmpl-mock0001",
    "object": "chat.completion",
    "created": CREATED,
    "model": MODEL,
    "system_fingerprint": "fp_mock",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "Hello! This is a fixed reply from the mock "
                                                    "upstream used by the bastion benchmarks."},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 19, "completion_tokens": 16, "total_tokens": 35},
})

MODELS = _dumps({"object": "list", "data": [
    {"id": MODEL, "object": "model", "created": CREATED, "owned_by": "mock"},
]})


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None,
           choices: bool = True) -> bytes:
    body: dict = {"id": "chatcmpl-mock0001", "object": "chat.completion.chunk",
                  "created": CREATED, "model": MODEL, "system_fingerprint": "fp_mock",
                  "choices": [{"index": 0, "delta": delta, "logprobs": None,
                               "finish_reason": finish}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    event = b"data: " + _dumps(body) + b"\n\n"
    # One HTTP/1.1 chunk per SSE event.
    return b"%x\r\n%s\r\n" % (len(event), event)


def _stream_events() -> list[bytes]:
    events = [_chunk({"role": "assistant", "content": ""})]
    for i in range(1, STREAM_CHUNKS - 1):
        events.append(_chunk({"content": f"tok{i} "}))
    events.append(_chunk({}, finish="stop"))
    assert len(events) == STREAM_CHUNKS
    events.append(_chunk({}, usage={"prompt_tokens": 19, "completion_tokens": STREAM_CHUNKS,
                                    "total_tokens": 19 + STREAM_CHUNKS}, choices=False))
    done = b"data: [DONE]\n\n"
    events.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return events


STREAM_EVENTS = _stream_events()


def _head(status: str, ctype: str, length: int | None, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"content-type: {ctype}", "server: bastion-bench-mock"]
    lines.append(f"content-length: {length}" if length is not None
                 else "transfer-encoding: chunked")
    if ctype.startswith("text/event-stream"):
        lines.append("cache-control: no-cache")
    lines.append("connection: keep-alive" if keep_alive else "connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _full(status: str, ctype: str, body: bytes) -> dict[bool, bytes]:
    return {ka: _head(status, ctype, len(body), ka) + body for ka in (True, False)}


R_COMPLETION = _full("200 OK", "application/json", COMPLETION)
R_MODELS = _full("200 OK", "application/json", MODELS)
R_OK = _full("200 OK", "text/plain", b"ok")
R_404 = _full("404 Not Found", "application/json",
              b'{"error":{"message":"not found","type":"invalid_request_error",'
              b'"param":null,"code":"not_found"}}')
R_400 = _full("400 Bad Request", "application/json",
              b'{"error":{"message":"bad request","type":"invalid_request_error",'
              b'"param":null,"code":null}}')
R_STREAM_HEAD = {ka: _head("200 OK", "text/event-stream; charset=utf-8", None, ka)
                 for ka in (True, False)}


CHUNK_INTERVAL_S = 0.0


class MockProtocol(asyncio.Protocol):
    __slots__ = ("body", "parser", "transport", "url")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reply(R_400, False)
        except httptools.HttpParserError:
            self._reply(R_400, False)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        ka = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"POST" and path == b"/v1/chat/completions":
            body = b"".join(self.body)
            if _STREAM_RE.search(body) and _wants_stream(body):
                self._stream(ka)
            else:
                self._reply(R_COMPLETION, ka)
        elif method == b"GET" and path == b"/v1/models":
            self._reply(R_MODELS, ka)
        elif method == b"GET" and path in (b"/", b"/health"):
            self._reply(R_OK, ka)
        else:
            self._reply(R_404, ka)

    def _reply(self, response: dict[bool, bytes], keep_alive: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(response[keep_alive])
        if not keep_alive:
            t.close()

    def _stream(self, keep_alive: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if CHUNK_INTERVAL_S > 0:
            t.write(R_STREAM_HEAD[keep_alive])
            self._paced(t, 0, keep_alive)
            return
        write = t.write
        write(R_STREAM_HEAD[keep_alive])
        for event in STREAM_EVENTS:
            write(event)
        if not keep_alive:
            t.close()

    def _paced(self, t: asyncio.Transport, i: int, keep_alive: bool) -> None:
        if t.is_closing():
            return
        t.write(STREAM_EVENTS[i])
        if i + 1 < len(STREAM_EVENTS):
            asyncio.get_running_loop().call_later(CHUNK_INTERVAL_S, self._paced, t, i + 1,
                                                  keep_alive)
        elif not keep_alive:
            t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _wants_stream(body: bytes) -> bool:
    try:
        return json.loads(body).get("stream") is True
    except (ValueError, AttributeError):
        return False


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MockProtocol, host, port, backlog=4096, reuse_address=True)
    print(f"mock upstream on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    global CHUNK_INTERVAL_S
    import argparse

    p = argparse.ArgumentParser(description="Fast mock OpenAI upstream for benchmarks.")
    p.add_argument("port", type=int, nargs="?", default=9001)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--chunk-interval-ms", type=float, default=0.0,
                   help="pause between SSE events of a stream (0: back to back)")
    args = p.parse_args(argv[1:])
    CHUNK_INTERVAL_S = max(0.0, args.chunk_interval_ms) / 1000
    host, port = args.host, args.port
    try:
        import uvloop
        uvloop.run(serve(host, port))
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(serve(host, port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(sys.argv)
