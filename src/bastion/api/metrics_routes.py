"""``GET /metrics``: every bastion metric in the Prometheus text format.

Metrics carry only bounded labels (routes, outcomes, reasons), never prompts, tenants' data or
keys, so the endpoint is served without a key like ``/health``; keep it off public networks as
you would any scrape target.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from bastion.observability.completion import flush_completions


async def metrics(request: Request) -> Response:
    flush_completions()  # the requests that finished but are not counted yet
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
