"""Structured JSON logs that explain every request without carrying its content.

One ``request.completed`` event per HTTP request, built only from metadata (ids, tenant,
route, targets tried, attempts, fallback, cache, prompt version, retrieved chunk ids and
scores, token usage, cost, latency, outcome or error class): never a message, a document, a
completion, a credential or an API key. Every event, bastion's own and the standard
library's (``logging``), then passes the redaction step, which blanks fields whose name says
they hold content or secrets and masks anything shaped like a key or a bearer token, in case a
message or a traceback carries one.

structlog renders the events (orjson, one line each) to stderr by default.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import IO, Any

import orjson
import structlog

from bastion.domain.context import Priority, RequestContext

#: Field names whose values are content or secrets: dropped whatever they hold.
REDACTED_FIELDS = frozenset({
    "messages", "message_content", "content", "prompt_text", "completion", "input", "text",
    "document", "documents", "question", "answer", "body", "api_key", "authorization",
    "x-api-key", "password", "secret", "token", "admin_key",
})
REDACTED = "[redacted]"
#: Values shaped like credentials, masked wherever they appear in the rendered line.
_SECRET = re.compile(
    rb"(?:bst_[A-Za-z0-9_\-]{6,}|sk-[A-Za-z0-9_\-]{6,}"
    rb"|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{6,})")


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _holds_mapping(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    return isinstance(value, (list, tuple)) and any(map(_holds_mapping, value))


def _drop_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if str(k).lower() in REDACTED_FIELDS else _drop_fields(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_drop_fields(v) for v in value]
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The redaction processor, for every event: fields whose name says they hold content or
    secrets are blanked, at any depth. (Credential-shaped values are masked after rendering,
    in ``mask_secrets``: one pass over the line instead of one per field.)"""
    for key in list(event):
        if key.lower() in REDACTED_FIELDS:
            event[key] = REDACTED
        else:
            value = event[key]
            if type(value) not in _PLAIN and _holds_mapping(value):
                event[key] = _drop_fields(value)
    return event


def mask_secrets(line: bytes) -> bytes:
    # Substring tests (C speed) first: the regex runs only on the rare line that needs it.
    if b"bst_" in line or b"sk-" in line or b"earer" in line or b"EARER" in line:
        return _SECRET.sub(REDACTED.encode(), line)
    return line


def _render(_: Any, __: str, event: MutableMapping[str, Any]) -> bytes:
    return mask_secrets(orjson.dumps(event, default=str))


_output: BufferedLines | None = None
_completion_on = False


#: Called by ``flush_logs`` before it writes: producers that batch lines of their own
#: (``observability.completion``) hand them over first.
_before_flush: list[Callable[[], None]] = []


def before_flush(hook: Callable[[], None]) -> None:
    if hook not in _before_flush:
        _before_flush.append(hook)


def flush_logs() -> None:
    """Write every gathered line now (tests, shutdown)."""
    for hook in _before_flush:
        hook()
    if _output is not None:
        _output.flush()


_PROCESSORS: list[Any] = [
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
    redact,
]


def configure_logging(level: str = "info", stream: IO[bytes] | None = None) -> None:
    """Route structlog and the standard library's ``bastion`` loggers to JSON lines on
    ``stream`` (stderr by default), through the same redaction step."""
    global _completion_on
    numeric = logging.getLevelName(level.upper())
    _completion_on = numeric <= logging.INFO
    global _output
    if _output is not None:
        _output.flush()
    _output = BufferedLines(stream or sys.stderr.buffer)
    structlog.configure(
        processors=[*_PROCESSORS, _render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: _output,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(_TextOver(stream or sys.stderr.buffer))
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_PROCESSORS,
                    structlog.processors.JSONRenderer(serializer=_masked_dumps)]))
    root = logging.getLogger("bastion")
    root.handlers = [handler]
    root.setLevel(numeric)
    root.propagate = False


def _masked_dumps(value: Any, **_: Any) -> str:
    return mask_secrets(orjson.dumps(value, default=str)).decode()


class BufferedLines:
    """structlog's output: lines gathered and written together.

    Writing and flushing stderr for every request cost ~25 µs of a ~250 µs request (bench/run.py,
    plain chat completions: bastion's CPU ratio to a bare proxy went 1.67 -> 2.01 with one
    write per event). Lines are written when 64 KiB have gathered, or 0.2 s after the first
    of them (a timer on the running event loop), so under load one write carries hundreds of
    events and an idle server still shows each line within 0.2 s. Outside an event loop, and
    at exit, lines are written at once."""

    FLUSH_BYTES = 64 * 1024
    FLUSH_DELAY_S = 0.2

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self._lines: list[bytes] = []
        self._size = 0
        self._scheduled = False
        atexit.register(self.flush)

    def msg(self, line: bytes) -> None:
        self._lines.append(line + b"\n")
        self._size += len(line) + 1
        if self._size >= self.FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_later(self.FLUSH_DELAY_S, self.flush)

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg
    err = log = msg

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data, self._lines, self._size = b"".join(self._lines), [], 0
        try:
            self.raw.write(data)
            self.raw.flush()
        except (OSError, ValueError):  # a closed stream at exit: nothing more to do
            pass


class _TextOver:
    """A text stream over a binary one, so both loggers share one destination."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(text.encode())
        return len(text)

    def flush(self) -> None:
        self.raw.flush()


#: For bastion's own structlog events (the per-request event uses ``emit_completion``).
logger = structlog.get_logger("bastion")

#: The error class a response was rendered for, set where the error response is built and
#: read when the request's completion event is written (same task, same context).
_error: ContextVar[str | None] = ContextVar("bastion_error", default=None)


def note_error(code: str) -> None:
    _error.set(code)


def take_error() -> str | None:
    code = _error.get()
    if code is not None:
        _error.set(None)
    return code


_second = -1
_second_text = ""


def iso_now(now: float | None = None) -> str:
    """The time (``time.time()``, or ``now``) as structlog's ISO stamp writes it,
    re-formatting only the fraction within a second."""
    global _second, _second_text
    if now is None:
        now = time.time()
    second = int(now)
    if second != _second:
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second_text}.{int((now - second) * 1_000_000):06d}Z"


def completion_logging() -> bool:
    """Whether ``request.completed`` events are written (info level, logging configured)."""
    return _completion_on and _output is not None


def render_completion(fields: dict[str, Any], at: float | None = None) -> bytes:
    """One ``request.completed`` event as its JSON line, through the same redaction and
    masking as every other event, without structlog's bound-logger chain: that chain cost
    ~10 µs of the event's ~23 µs (``timeit``, 20,000 events), and this event is written for
    every request (BENCHMARKS.md, "Cost of the request log"). The request journal keeps the
    same bytes. Every other event goes through structlog. ``at``: when the request ended
    (wall clock), when it is rendered later."""
    fields["event"] = "request.completed"
    fields["level"] = "info"
    fields["timestamp"] = iso_now(at)
    # No field-name redaction pass: ``completion_fields`` builds this event from a fixed set
    # of metadata keys, none of them a content or credential name at any depth (a test
    # holds it to that), and walking its nested attempts and stages cost ~4 µs per request.
    # Credential-shaped values are still masked in the rendered line.
    return _render(None, "info", fields)


def write_completion(line: bytes) -> None:
    """Write a rendered ``request.completed`` line (no-op when logging is not configured)."""
    if _output is not None:
        _output.msg(line)


def write_event(event: dict[str, Any]) -> None:
    """Write ``event`` as it is, credentials masked but no field redacted: only for the
    content-logging opt-in (``observability.content_log``)."""
    if _output is not None:
        _output.msg(mask_secrets(orjson.dumps(event, default=str)))


def emit_completion(fields: dict[str, Any]) -> None:
    """Render and write one ``request.completed`` event."""
    if _output is not None:
        _output.msg(render_completion(fields))


def _ms(seconds: float) -> float:
    """Milliseconds to two decimals (half up; the timings are never negative). Not
    ``round(x, 2)``: it goes through a decimal conversion, 0.50 µs against 0.16, and a
    request's fields hold a dozen timings. Both give the same float (checked on 200,000
    random timings): k / 100 is the double nearest the two-decimal figure k/100."""
    return int(seconds * 100_000 + 0.5) / 100


#: ``Priority.value`` is an enum property lookup (~2,000 instructions); the names by member.
_PRIORITY = {p: p.value for p in Priority}


def _rounded(x: float, scale: int) -> float:
    """``round(x, log10(scale))``, the same float, mostly without its decimal conversion
    (~0.5 µs each): below 2**51 the product ``x * scale`` is off by at most 1/8, so unless
    it lies within 1/8 of a tie, rounding it half up lands on the integer ``round`` would,
    and k / scale is then the double nearest that decimal, as ``round`` returns."""
    scaled = x * scale
    if 0.0 <= scaled < 2.0 ** 51:
        k = int(scaled + 0.5)
        if abs(scaled - k + 0.5) > 0.125 and abs(scaled - k - 0.5) > 0.125:
            return k / scale
    return round(x, len(str(scale)) - 1)


def completion_fields(ctx: RequestContext | None, *, method: str, path: str, status: int,
                      error: str | None, elapsed_s: float | None = None) -> dict[str, Any]:
    """The metadata of one finished request: what an operator needs, nothing it said. It is
    also what the request journal keeps and ``bastion trace`` prints: the stages in order,
    each upstream attempt, the contract checks, all timed from the request's start.
    ``elapsed_s``: its total time, when the fields are built after it ended.

    Built for every request, so written for the interpreter: one dict display rather than
    ``update`` with keywords (a second dict), the millisecond arithmetic of ``_ms`` inline in
    the loops rather than a call per timing, and no ``round(x, n)`` (a decimal conversion,
    ~0.5 µs each): 58,500 -> 24,000 instructions per request (callgrind, a chat
    completion's fields), the same fields to the bit (``tests/test_log_redaction.py``)."""
    outcome = error or ("ok" if status < 400 else f"http_{status}")
    if ctx is None:
        return {"method": method, "path": path, "status": status, "outcome": outcome}
    usage = ctx.usage or {}
    attempts = []
    calls = 0
    upstream_s = 0.0
    for a in ctx.attempts:
        attempts.append({"target": a.target, "n": a.number, "outcome": a.outcome,
                         "start_ms": int(a.start_s * 100_000 + 0.5) / 100,
                         "ms": int(a.duration_s * 100_000 + 0.5) / 100, "called": a.called})
        calls += a.called
        upstream_s += a.duration_s
    if elapsed_s is None:
        elapsed_s = ctx.elapsed()
    fields: dict[str, Any] = {
        "method": method, "path": path, "status": status, "outcome": outcome,
        "request_id": ctx.request_id, "ts": _rounded(ctx.wall_started, 1_000_000), "tenant": ctx.tenant,
        "key_id": ctx.key_id, "route": ctx.route, "priority": _PRIORITY[ctx.priority],
        "target": ctx.target, "fallback": ctx.fallback_used, "attempts": attempts,
        "calls": calls, "cache": ctx.cache, "prompt": ctx.prompt,
        "contract": ctx.contract_outcome() if ctx.contract_steps else None,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cost_usd": _rounded(ctx.cost_usd, 100_000_000),
        "latency_ms": int(elapsed_s * 100_000 + 0.5) / 100,
        "upstream_ms": int(upstream_s * 100_000 + 0.5) / 100,
        "stages": [[s.name, int(s.start_s * 100_000 + 0.5) / 100,
                    int(s.duration_s * 100_000 + 0.5) / 100, s.outcome] for s in ctx.stages],
    }
    if ctx.contract_steps:
        # Verdicts and counts only: a violation's text may quote the model's output.
        fields["contract_steps"] = [
            {"target": c.target, "phase": c.phase, "valid": c.valid,
             "violations": len(c.violations), "start_ms": _ms(c.start_s),
             "ms": _ms(c.duration_s)} for c in ctx.contract_steps]
    if ctx.first_token_s is not None:
        fields["ttft_ms"] = _ms(ctx.first_token_s)
    if ctx.trace_id is not None:
        fields["trace_id"] = ctx.trace_id
    if ctx.retrieved is not None:
        fields["retrieved"] = [[chunk_id, round(score, 4)] for chunk_id, score in ctx.retrieved]
    return fields
    usage = ctx.usage or {}
    fields.update(
        request_id=ctx.request_id, ts=round(ctx.wall_started, 6), tenant=ctx.tenant,
        key_id=ctx.key_id, route=ctx.route, priority=ctx.priority.value, target=ctx.target,
        fallback=ctx.fallback_used,
        attempts=[{"target": a.target, "n": a.number, "outcome": a.outcome,
                   "start_ms": _ms(a.start_s), "ms": _ms(a.duration_s), "called": a.called}
                  for a in ctx.attempts],
        calls=ctx.calls(), cache=ctx.cache, prompt=ctx.prompt,
        contract=ctx.contract_outcome(),
        prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
        cost_usd=round(ctx.cost_usd, 8),
        latency_ms=_ms(ctx.elapsed() if elapsed_s is None else elapsed_s),
        upstream_ms=_ms(sum(a.duration_s for a in ctx.attempts)),
        stages=[[s.name, _ms(s.start_s), _ms(s.duration_s), s.outcome] for s in ctx.stages],
    )
    if ctx.contract_steps:
        # Verdicts and counts only: a violation's text may quote the model's output.
        fields["contract_steps"] = [
            {"target": c.target, "phase": c.phase, "valid": c.valid,
             "violations": len(c.violations), "start_ms": _ms(c.start_s),
             "ms": _ms(c.duration_s)} for c in ctx.contract_steps]
    if ctx.first_token_s is not None:
        fields["ttft_ms"] = _ms(ctx.first_token_s)
    if ctx.trace_id is not None:
        fields["trace_id"] = ctx.trace_id
    if ctx.retrieved is not None:
        fields["retrieved"] = [[chunk_id, round(score, 4)] for chunk_id, score in ctx.retrieved]
    return fields
