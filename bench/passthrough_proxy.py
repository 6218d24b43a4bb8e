"""The baseline: the ~50-line uvicorn pass-through proxy, the floor for a Python LLM proxy.

``python bench/passthrough_proxy.py PORT UPSTREAM_BASE`` (e.g. ``http://127.0.0.1:9001``).
A bare ASGI app (no framework) under uvicorn with uvloop + httptools and no access log; it
forwards method, path and body to the upstream over one pooled ``aiohttp.ClientSession`` and
returns the upstream status and body. No validation, no logic. An SSE answer
(``text/event-stream``) is streamed through chunk by chunk; anything else is read whole and sent
with a Content-Length.
"""

import sys

import aiohttp
import uvicorn

UPSTREAM = sys.argv[2].rstrip("/") if len(sys.argv) > 2 else "http://127.0.0.1:9001"
session: aiohttp.ClientSession | None = None


async def app(scope, receive, send):
    global session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
                    timeout=aiohttp.ClientTimeout(total=30), auto_decompress=False)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    url = UPSTREAM + scope["path"]
    async with session.request(scope["method"], url, data=body,
                               headers={"content-type": "application/json"}) as up:
        ctype = up.headers.get("content-type", "application/json").encode()
        if ctype.startswith(b"text/event-stream"):
            await send({"type": "http.response.start", "status": up.status,
                        "headers": [(b"content-type", ctype), (b"cache-control", b"no-cache")]})
            async for chunk in up.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        data = await up.read()
    await send({"type": "http.response.start", "status": up.status,
                "headers": [(b"content-type", ctype),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="on")
