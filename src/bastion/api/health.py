"""``/health`` (the process is alive; touches nothing) and ``/ready`` (it can serve)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

_ALIVE = orjson.dumps({"status": "ok"})


async def health(request: Request) -> Response:
    return Response(_ALIVE, media_type="application/json")


async def ready(request: Request) -> Response:
    gateway = request.app.state.gateway
    try:
        report = await gateway.ready()
    except Exception as exc:  # noqa: BLE001 - readiness must answer, not crash
        report = {"ready": False, "error": type(exc).__name__,
                  "config": {"hash": gateway.loaded.hash}}
    return Response(orjson.dumps(report), status_code=200 if report["ready"] else 503,
                    media_type="application/json",
                    headers={"x-bastion-config": gateway.loaded.hash})
