"""A finished request's spans, built from what its ``RequestContext`` recorded.

Spans are made after the fact instead of being opened and closed as the request runs: the
context already times every stage, attempt and contract check (for the logs and the journal),
so the request path does no tracing work beyond picking span ids, and the ids sent upstream in
``traceparent`` (see ``pipeline.retry``) are the ids of the spans exported here.

The tree:

- one SERVER span for the HTTP request, the child of the caller's span when it sent one;
- under it one INTERNAL span per stage (admission, cache, route, stream, retrieval, ...);
- under the ``route`` stage, one CLIENT span per upstream attempt, named and described with the
  OpenTelemetry GenAI semantic conventions, and one INTERNAL span per output-contract check.

Only metadata goes into attributes: ids, names, outcomes, counts, token usage. Never a prompt,
a completion, a document or a credential; a contract violation is reported as a count, since
its text may quote the model's output.

Imports the OpenTelemetry SDK: import this module only when tracing is configured.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from bastion.domain.context import Attempt, RequestContext, StageTiming, new_span_id
from bastion.domain.errors import BastionError

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)
#: Failures that are the client's doing: recorded as ``error.type``, not as a server error.
_CLIENT_GONE = frozenset({"client_closed_request", "cancelled"})


@cache
def error_codes() -> frozenset[str]:
    """Every error code of the taxonomy. A stage's outcome is either ``ok``, one of these, or a
    verdict that is no failure (a cache ``hit`` or ``miss``, a retrieval degradation)."""
    codes = {"cancelled", "upstream_auth_failed"}  # set per instance, not per class
    pending: list[type[BastionError]] = [BastionError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return frozenset(codes)


@dataclass(frozen=True, slots=True)
class HttpExchange:
    """How the HTTP request went, as the server saw it."""

    method: str
    path: str
    #: The route template (``/v1/tasks/{name}``) when known: low-cardinality span names.
    route: str | None
    status: int
    #: The error code the response reported, if any.
    error: str | None


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes with the unset ones left out (OpenTelemetry rejects None values)."""
    return {key: value for key, value in values.items() if value is not None}


class _Tree:
    """Span factory for one trace: shared trace id, clock origin, resource and scope."""

    def __init__(self, ctx: RequestContext, resource: Resource,
                 scope: InstrumentationScope) -> None:
        assert ctx.trace_id is not None and ctx.span_id is not None
        self.trace_id = int(ctx.trace_id, 16)
        # Whole nanoseconds first: an epoch in float seconds keeps only ~0.2 µs of precision,
        # enough to misorder a short child against its parent's edge.
        self.origin_ns = int(ctx.wall_started * 1e9)
        self.resource = resource
        self.scope = scope

    def context(self, span_id: str, *, remote: bool = False) -> SpanContext:
        return SpanContext(self.trace_id, int(span_id, 16), is_remote=remote,
                           trace_flags=_SAMPLED)

    def ns(self, offset_s: float) -> int:
        """Epoch nanoseconds ``offset_s`` seconds after the request started."""
        return self.origin_ns + round(offset_s * 1e9)

    def span(self, name: str, span_id: str, parent: SpanContext | None, kind: SpanKind,
             start_s: float, end_s: float, attributes: Mapping[str, Any],
             status: Status = _OK, events: Iterable[Event] = ()) -> ReadableSpan:
        return ReadableSpan(
            name, context=self.context(span_id), parent=parent, resource=self.resource,
            attributes=attributes, events=tuple(events), kind=kind, status=status,
            start_time=self.ns(start_s), end_time=self.ns(max(end_s, start_s)),
            instrumentation_scope=self.scope)


def _failure(ctx: RequestContext, http: HttpExchange) -> str | None:
    """The request's ``error.type``: the error it answered with, else the HTTP status of a
    4xx/5xx, else the outcome of a stream that failed after its 200 went out."""
    if http.error:
        return http.error
    if http.status >= 400:
        return str(http.status)
    for stage in ctx.stages:
        if stage.name == "stream" and stage.outcome in error_codes():
            return stage.outcome
    return None


def _server_status(http: HttpExchange, failure: str | None) -> Status:
    """ERROR for a 5xx, or for a request that failed after a success status was sent (a
    broken stream); a 4xx is the client's fault, so not an error of this server span (the
    HTTP semantic conventions)."""
    if http.status >= 500:
        return Status(StatusCode.ERROR, failure)
    if http.status < 400 and failure is not None and failure not in _CLIENT_GONE:
        return Status(StatusCode.ERROR, failure)
    return _OK


def _enclosing(stages: list[tuple[StageTiming, str]], start_s: float) -> str | None:
    """The span id of the ``route`` stage running at ``start_s``: the latest to begin by then
    (attempts and contract checks always run inside one)."""
    began = [(stage.start_s, span_id) for stage, span_id in stages
             if stage.start_s <= start_s + 1e-6]
    return max(began)[1] if began else None


def _attempt_span(tree: _Tree, ctx: RequestContext, attempt: Attempt, parent: SpanContext,
                  operation: str, usage_on: Attempt | None) -> ReadableSpan:
    provider, _, model = attempt.target.partition("/")
    ok = attempt.outcome == "ok"
    usage = (ctx.usage or {}) if attempt is usage_on else {}
    attributes = _attributes({
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": model,
        "gen_ai.response.model": model if ok else None,
        "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
        "error.type": None if ok else attempt.outcome,
        "bastion.target": attempt.target,
        "bastion.attempt.number": attempt.number,
        "bastion.attempt.called": attempt.called,
    })
    status = _OK if ok else Status(StatusCode.ERROR, attempt.outcome)
    return tree.span(f"{operation} {model}", attempt.span_id or new_span_id(), parent,
                     SpanKind.CLIENT, attempt.start_s, attempt.start_s + attempt.duration_s,
                     attributes, status)


def _usage_attempt(ctx: RequestContext) -> Attempt | None:
    """The attempt whose answer was returned: the last success at the chosen target. The
    request's token usage (repairs included) is reported there."""
    for attempt in reversed(ctx.attempts):
        if attempt.outcome == "ok" and attempt.target == ctx.target:
            return attempt
    return None


def request_spans(ctx: RequestContext, http: HttpExchange, resource: Resource,
                  scope: InstrumentationScope) -> Iterator[ReadableSpan]:
    """Every span of one finished, sampled request (``ctx.span_id`` set): children first and
    the server span last, the order in which a live tracer would have ended them."""
    tree = _Tree(ctx, resource, scope)
    assert ctx.span_id is not None
    server = tree.context(ctx.span_id)
    stage_ids = [(stage, new_span_id()) for stage in ctx.stages]
    routes = [(stage, span_id) for stage, span_id in stage_ids if stage.name == "route"]
    codes = error_codes()

    for stage, span_id in stage_ids:
        failed = stage.outcome in codes
        yield tree.span(
            stage.name, span_id, server, SpanKind.INTERNAL, stage.start_s,
            stage.start_s + stage.duration_s,
            _attributes({"bastion.stage": stage.name, "bastion.outcome": stage.outcome,
                         "error.type": stage.outcome if failed else None}),
            Status(StatusCode.ERROR, stage.outcome) if failed else _OK)

    operation = "embeddings" if ctx.route == "embeddings" else "chat"
    usage_on = _usage_attempt(ctx)
    for attempt in ctx.attempts:
        parent_id = _enclosing(routes, attempt.start_s) or ctx.span_id
        yield _attempt_span(tree, ctx, attempt, tree.context(parent_id), operation, usage_on)

    for step in ctx.contract_steps:
        parent_id = _enclosing(routes, step.start_s) or ctx.span_id
        yield tree.span(
            "contract.check", new_span_id(), tree.context(parent_id), SpanKind.INTERNAL,
            step.start_s, step.start_s + step.duration_s,
            _attributes({"bastion.target": step.target, "bastion.contract.phase": step.phase,
                         "bastion.contract.valid": step.valid,
                         "bastion.contract.violations": len(step.violations)}))

    failure = _failure(ctx, http)
    end_s = max([ctx.elapsed(), *(s.start_s + s.duration_s for s in ctx.stages)])
    events = ([Event("first_token", timestamp=tree.ns(ctx.first_token_s))]
              if ctx.first_token_s is not None else [])
    parent = (tree.context(ctx.parent_span_id, remote=True)
              if ctx.parent_span_id is not None else None)
    # The HTTP conventions' name: method and route template, or the method alone (never the
    # raw path, which would make a span name per URL).
    name = f"{http.method} {http.route}" if http.route else http.method
    yield tree.span(
        name, ctx.span_id, parent, SpanKind.SERVER, 0.0, end_s,
        _attributes({
            "http.request.method": http.method,
            "url.path": http.path,
            "http.route": http.route,
            "http.response.status_code": http.status,
            "error.type": failure,
            "bastion.request_id": ctx.request_id,
            "bastion.tenant": ctx.tenant,
            "bastion.route": ctx.route,
            "bastion.priority": ctx.priority.value,
            "bastion.cache": ctx.cache,
            "bastion.target": ctx.target,
            "bastion.fallback": ctx.fallback_used,
            "bastion.calls": ctx.calls(),
            "bastion.prompt": ctx.prompt,
            "bastion.contract": ctx.contract_outcome(),
            "bastion.cost_usd": ctx.cost_usd or None,
        }),
        _server_status(http, failure), events)
