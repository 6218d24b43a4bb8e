"""OpenTelemetry traces: whether to trace, the sampling decision, and OTLP export.

Tracing is off unless an OTLP endpoint is configured (``observability.tracing.otlp_endpoint``,
else ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT`` plus
``/v1/traces``). Off, ``build_tracer`` returns None and nothing of OpenTelemetry is imported:
the request path then only reads a caller's ``traceparent`` to pass it upstream.

On, a ``RequestTracer`` decides per request whether it is sampled (``sampled``), and once the
request has finished turns its ``RequestContext`` into spans (``observability.spans``) handed
to a ``BatchSpanProcessor``, whose thread sends them over OTLP/HTTP off the event loop. No
``TracerProvider`` or global OpenTelemetry state is involved, so an application that embeds
bastion keeps its own OpenTelemetry setup untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bastion.config import TracingConfig
from bastion.domain.context import RequestContext

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("bastion.tracing")

_TRACES_PATH = "/v1/traces"


def otlp_endpoint(config: TracingConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """Where spans go, or None when tracing is off. ``OTEL_SDK_DISABLED=true`` and
    ``OTEL_TRACES_EXPORTER=none`` turn it off whatever else says, as with any OpenTelemetry
    SDK, so an operator has one switch that needs no config change."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if config.otlp_endpoint:
        return config.otlp_endpoint
    traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return base.rstrip("/") + _TRACES_PATH if base else None


def build_tracer(config: TracingConfig,
                 environ: Mapping[str, str] = os.environ) -> RequestTracer | None:
    """A tracer exporting to the configured endpoint, or None when tracing is off."""
    endpoint = otlp_endpoint(config, environ)
    return None if endpoint is None else RequestTracer(config, endpoint=endpoint)


class RequestTracer:
    """Samples requests and exports their spans. ``exporter`` replaces the OTLP exporter
    (tests use an in-memory one); it is then fed synchronously, span by span."""

    def __init__(self, config: TracingConfig, *, endpoint: str | None = None,
                 exporter: SpanExporter | None = None) -> None:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from bastion.observability import spans

        if exporter is not None:
            processor: Any = SimpleSpanProcessor(exporter)
        elif endpoint is not None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # No headers given: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)HEADERS itself.
            processor = BatchSpanProcessor(OTLPSpanExporter(
                endpoint=endpoint, headers=dict(config.otlp_headers) or None))
        else:
            raise ValueError("a RequestTracer needs an OTLP endpoint or an exporter")
        self.endpoint = endpoint
        self._processor = processor
        self._spans = spans
        self._resource = Resource.create({SERVICE_NAME: config.service_name})
        self._scope = InstrumentationScope("bastion", _version())
        # As OpenTelemetry's TraceIdRatioBased sampler: a trace is in when the low 64 bits of
        # its id fall under ratio * 2^64, so every service using the same ratio agrees.
        self._bound = round(config.sample_ratio * (1 << 64))
        self._closed = False

    def sampled(self, trace_id: str) -> bool:
        """Whether to trace a request of ``trace_id`` that its caller left undecided."""
        return int(trace_id[16:], 16) < self._bound

    def export(self, ctx: RequestContext, *, method: str, path: str, route: str | None,
               status: int, error: str | None) -> None:
        """Queue the spans of the finished request ``ctx`` (no-op unless it was sampled).
        Never raises: a tracing fault must not fail or slow down a request."""
        if ctx.span_id is None or self._closed:
            return
        try:
            http = self._spans.HttpExchange(method, path, route, status, error)
            for span in self._spans.request_spans(ctx, http, self._resource, self._scope):
                self._processor.on_end(span)
        except Exception:
            log.exception("could not export the spans of a request",
                          extra={"request_id": ctx.request_id})

    def shutdown(self) -> None:
        """Send what is queued, then stop (blocks up to the exporter's timeout)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._processor.shutdown()
        except Exception:
            log.exception("could not flush the trace exporter")

    async def aclose(self) -> None:
        """``shutdown`` off the event loop: flushing waits on the network."""
        await asyncio.to_thread(self.shutdown)


def _version() -> str:
    from bastion import __version__

    return __version__
