"""The HTTP side of tracing: joining a caller's trace, and exporting a finished request's spans.

Both run on every request, so both cost a couple of attribute checks when tracing is off
(``Gateway.tracer`` is None): nothing of OpenTelemetry is imported here.
"""

from __future__ import annotations

import logging

from starlette.routing import Match
from starlette.types import Scope

from bastion.domain.context import RequestContext, new_span_id, new_trace_id
from bastion.observability.trace_context import parse_traceparent
from bastion.observability.tracing import RequestTracer

log = logging.getLogger("bastion.tracing")


def join_trace(ctx: RequestContext, traceparent: str | None,
               tracer: RequestTracer | None) -> None:
    """Put the request in its caller's trace, and decide whether bastion traces it.

    The caller's sampled flag decides when it sent a valid ``traceparent``; otherwise the
    tracer's ratio does, for a new trace. A traced request gets its own span id (its server
    span, the parent of its stage and attempt spans); an untraced one keeps only the caller's
    context, which its attempts forward upstream unchanged."""
    parent = parse_traceparent(traceparent)
    if parent is not None:
        ctx.trace_id, ctx.parent_span_id, ctx.trace_flags = parent
    if tracer is None:
        return
    if parent is None:
        trace_id = new_trace_id()
        if not tracer.sampled(trace_id):
            return
        ctx.trace_id, ctx.trace_flags = trace_id, "01"
    elif not parent.sampled:
        return
    ctx.span_id = new_span_id()


def http_route(scope: Scope) -> str | None:
    """The template of the route that served the request (``/v1/tasks/{name}``), so span names
    stay few whatever the paths; None when no route matched."""
    for route in getattr(scope.get("app"), "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", None)
    return None


def export_trace(scope: Scope, ctx: RequestContext, status: int, error: str | None) -> None:
    """Export the spans of the finished request ``ctx`` if bastion traced it."""
    if ctx.span_id is None:
        return
    gateway = getattr(getattr(scope.get("app"), "state", None), "gateway", None)
    tracer: RequestTracer | None = getattr(gateway, "tracer", None)
    if tracer is None:
        log.warning("a traced request finished where no tracer is reachable",
                    extra={"request_id": ctx.request_id})
        return
    tracer.export(ctx, method=scope["method"], path=scope["path"], route=http_route(scope),
                  status=status, error=error)
