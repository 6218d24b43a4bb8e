"""An in-process model that fails on purpose, the same way every time.

Retries, breakers, fallbacks, deadlines and output contracts are only trustworthy if every
upstream failure can be reproduced on demand. ``SimulatedProvider`` speaks the same interface
and raises the same taxonomy errors as the HTTP adapters, with no network and no model, so tests,
benchmarks and demos can script any failure and replay it under a seed. Its success path does
almost no work (the reply is split into chunks once, no sleep when latency is 0), so benchmarks
through it measure the gateway's own overhead.

Latency
    Every call first waits a latency drawn from ``config.latency`` (fixed, uniform or lognormal)
    with a ``random.Random(config.seed)``; fault draws come from the same generator, so a given
    seed replays the same sequence of outcomes. As with a real upstream, a wait longer than the
    attempt's timeout (``CallTimeout.total_s``) ends in ``UpstreamTimeout`` at that timeout.

Faults
    ``config.faults`` is a list of ``{"kind": K, "rate": 0..1 (default 1), ...params}``. On each
    call the list is walked in order and the first fault that applies and whose draw is below
    its ``rate`` is injected. Every fault also takes:

    - ``fail_times: N`` -- inject it only on the first N calls carrying the same request id
      (``ctx.request_id``), then let them succeed: a retry recovers.
    - ``only_model: "name"`` -- inject it only when the target model is ``name``: the primary of a
      fallback chain fails while a fallback on the same provider answers.

    ============================  ==============================================================
    kind (params)                 effect
    ============================  ==============================================================
    ``status`` (``status``,       ``error_for_upstream_status(status)``: 5xx unavailable, 504
    default 500)                  timeout, 4xx rejected (retry-after params are accepted too)
    ``rate_limit``                429 ``UpstreamRateLimited``; ``retry_after_s`` (seconds),
                                  ``retry_after_ms``, or ``retry_after_date: true`` (the
                                  seconds sent as an HTTP date), all read back through
                                  ``providers.http.parse_retry_after``
    ``connect_error``             ``UpstreamConnectError`` at once (connection refused)
    ``read_timeout``              waits the attempt timeout (or what is left of the deadline,
                                  if less), then ``UpstreamTimeout``
    ``hang``                      accepts and never answers; only cancellation ends the call
    ``malformed_json``            ``UpstreamMalformed``, as when a body does not parse
    ``invalid_output``            succeeds, with ``content`` (default ``"{not json"``) as the
                                  message: for output-contract tests
    ``tool_call``                 answers with a call to the tool named by ``tool_choice`` or
                                  else the first declared tool, with ``arguments`` (a JSON
                                  string or an object; default ``"{}"``); applies only when the
                                  request declares tools and ``tool_choice`` is not ``"none"``
    ``slow_first_token``          waits ``delay_s`` more before the answer or first chunk
    ``slow_stream``               streams with ``interval_s`` between chunks
    ``stream_error_after``        streams ``chunks`` chunks, then ``UpstreamUnavailable``
                                  (``chunks: 0`` fails before the first chunk, while
                                  ``open_stream`` can still be retried)
    ``stream_no_done``            streams the content, then ends without a finish chunk, usage
                                  or ``[DONE]``: ``UpstreamMalformed``
    ============================  ==============================================================

    Stream-only kinds (the last three) do not apply to ``chat``; embeddings take only the
    transport kinds (``status`` to ``malformed_json``, and ``slow_first_token``).

Per-request override
    A client may send the header ``X-Bastion-Simulate`` with a JSON object; the gateway puts it
    in ``ctx.simulate``. It is either one fault, ``{"kind": "status", "status": 503}``, or a
    list, ``{"faults": [...]}`` (``{"faults": []}`` means "no fault"), and replaces the
    configured faults for that request. It is honoured only when the provider's
    ``allow_request_override`` is true (the default, since this provider exists for testing);
    otherwise it is ignored. A malformed override is the caller's mistake: ``InvalidRequest``.
"""

from __future__ import annotations

import array
import asyncio
import base64
import email.utils
import hashlib
import math
import random
import re
import secrets
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from bastion.config import SimulatedProviderConfig
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import (
    InvalidRequest,
    UpstreamConnectError,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_upstream_status,
)
from bastion.providers.base import CallTimeout, ChatStream, PrefetchedStream
from bastion.providers.http import parse_retry_after

#: Faults that happen before any answer: they apply to every operation.
TRANSPORT_KINDS = frozenset({"status", "rate_limit", "connect_error", "read_timeout", "hang",
                             "malformed_json", "slow_first_token"})
#: Faults that shape a successful chat answer.
OUTPUT_KINDS = frozenset({"invalid_output", "tool_call"})
#: Faults that happen while a stream is being read.
STREAM_KINDS = frozenset({"stream_error_after", "stream_no_done", "slow_stream"})

_APPLIES = {
    "chat": TRANSPORT_KINDS | OUTPUT_KINDS,
    "stream": TRANSPORT_KINDS | OUTPUT_KINDS | STREAM_KINDS,
    "embeddings": TRANSPORT_KINDS,
}
_COMMON_PARAMS = frozenset({"kind", "rate", "fail_times", "only_model"})
_RETRY_AFTER_PARAMS = frozenset({"retry_after_s", "retry_after_ms", "retry_after_date"})
_PARAMS: dict[str, frozenset[str]] = {
    "status": frozenset({"status"}) | _RETRY_AFTER_PARAMS,
    "rate_limit": _RETRY_AFTER_PARAMS,
    "connect_error": frozenset(),
    "read_timeout": frozenset(),
    "hang": frozenset(),
    "malformed_json": frozenset(),
    "invalid_output": frozenset({"content"}),
    "tool_call": frozenset({"arguments"}),
    "stream_error_after": frozenset({"chunks"}),
    "stream_no_done": frozenset(),
    "slow_first_token": frozenset({"delay_s"}),
    "slow_stream": frozenset({"interval_s"}),
}
#: How many request ids ``fail_times`` remembers (oldest forgotten first).
FAIL_TIMES_MEMORY = 10_000


@dataclass(frozen=True, slots=True)
class Fault:
    """One parsed fault spec (see the module docstring)."""

    kind: str
    rate: float = 1.0
    fail_times: int | None = None
    only_model: str | None = None
    status: int = 500
    retry_after_s: float | None = None
    retry_after_ms: float | None = None
    retry_after_date: bool = False
    delay_s: float = 1.0
    interval_s: float = 0.1
    chunks: int = 1
    content: str = "{not json"
    arguments: str = "{}"

    def retry_after(self) -> float | None:
        """Seconds to wait, sent as a real upstream would and read back by the HTTP adapters'
        own parser, so ``Retry-After`` handling is exercised end to end."""
        headers: dict[str, str] = {}
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = str(self.retry_after_ms)
        elif self.retry_after_date:
            seconds = self.retry_after_s if self.retry_after_s is not None else 1.0
            # HTTP dates have whole seconds: round up so the wait is never shorter than asked.
            headers["retry-after"] = email.utils.formatdate(math.ceil(time.time() + seconds),
                                                            usegmt=True)
        elif self.retry_after_s is not None:
            headers["retry-after"] = str(self.retry_after_s)
        return parse_retry_after(headers) if headers else None


def _number(spec: dict[str, Any], key: str, *, low: float = 0.0,
            high: float | None = None) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{key} must be between {low} and {high}" if high is not None
                         else f"{key} must be at least {low}")
    return value


def _integer(spec: dict[str, Any], key: str, *, low: int, high: int) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer between {low} and {high}")
    return value


def parse_fault(spec: Any) -> Fault:
    """Validate one fault spec; ``ValueError`` names what is wrong."""
    if not isinstance(spec, dict):
        raise ValueError("a fault must be an object with a 'kind'")  # noqa: TRY004
    kind = spec.get("kind")
    if kind not in _PARAMS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(_PARAMS)}")
    unknown = set(spec) - _COMMON_PARAMS - _PARAMS[kind]
    if unknown:
        raise ValueError(f"fault {kind!r} does not take {sorted(unknown)}")
    only_model = spec.get("only_model")
    if only_model is not None and not isinstance(only_model, str):
        raise ValueError("only_model must be a string")
    fields: dict[str, Any] = {
        "kind": kind,
        "rate": _number(spec, "rate", high=1.0),
        "fail_times": _integer(spec, "fail_times", low=0, high=1_000_000),
        "only_model": only_model,
        "status": _integer(spec, "status", low=400, high=599),
        "retry_after_s": _number(spec, "retry_after_s"),
        "retry_after_ms": _number(spec, "retry_after_ms"),
        "delay_s": _number(spec, "delay_s"),
        "interval_s": _number(spec, "interval_s"),
        "chunks": _integer(spec, "chunks", low=0, high=1_000_000),
    }
    if "retry_after_date" in spec:
        if not isinstance(spec["retry_after_date"], bool):
            raise ValueError("retry_after_date must be true or false")
        fields["retry_after_date"] = spec["retry_after_date"]
    if "content" in spec:
        if not isinstance(spec["content"], str):
            raise ValueError("content must be a string")
        fields["content"] = spec["content"]
    if "arguments" in spec:
        arguments = spec["arguments"]
        if isinstance(arguments, dict):
            arguments = orjson.dumps(arguments).decode()
        if not isinstance(arguments, str):
            raise ValueError("arguments must be a JSON string or an object")
        fields["arguments"] = arguments
    return Fault(**{k: v for k, v in fields.items() if v is not None})


def parse_faults(specs: Any) -> tuple[Fault, ...]:
    """A list of fault specs; errors say which item is wrong (``faults[2]: ...``)."""
    if not isinstance(specs, list):
        raise ValueError("faults must be a list")  # noqa: TRY004
    faults = []
    for i, spec in enumerate(specs):
        try:
            faults.append(parse_fault(spec))
        except ValueError as exc:
            raise ValueError(f"faults[{i}]: {exc}") from None
    return tuple(faults)


def parse_override(simulate: Any) -> tuple[Fault, ...]:
    """The per-request override: one fault ``{"kind": ...}`` or ``{"faults": [...]}``."""
    try:
        if isinstance(simulate, dict) and "kind" not in simulate and "faults" in simulate:
            if set(simulate) != {"faults"}:
                raise ValueError("an override with 'faults' takes nothing else")
            return parse_faults(simulate["faults"])
        return (parse_fault(simulate),)
    except ValueError as exc:
        raise InvalidRequest(f"invalid simulated fault: {exc}",
                             param="x-bastion-simulate") from None


# --------------------------------------------------------------------------- answers


def count_tokens(text: str) -> int:
    """The simulated tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def _prompt_tokens(request: ChatRequest) -> int:
    total = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            total += count_tokens(content)
        elif content:
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    total += count_tokens(text)
    return total


_WORD = re.compile(r"\S+\s*")


def split_text(text: str, parts: int) -> tuple[str, ...]:
    """``text`` cut into exactly ``parts`` pieces that join back to it: whole words when there
    are enough, else characters (empty pieces only when the text is shorter than ``parts``)."""
    words = _WORD.findall(text)
    if words:
        words[0] = text[: len(text) - len(text.lstrip())] + words[0]
    units: list[str] = words if len(words) >= parts else list(text)
    size, extra = divmod(len(units), parts)
    pieces, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        pieces.append("".join(units[start:end]))
        start = end
    return tuple(pieces)


_MAX_SCHEMA_DEPTH = 32
_STRING_FORMATS = {"date-time": "1970-01-01T00:00:00Z", "date": "1970-01-01",
                   "time": "00:00:00Z", "email": "simulated@example.com",
                   "uri": "https://example.com/", "uuid": "00000000-0000-0000-0000-000000000000"}


def sample_for_schema(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A minimal value valid for a simple JSON schema: required properties only, the first
    enum value or ``const``, ``"simulated"`` / 0 / false / [] for the scalar types, bounds and
    local ``$ref`` (``#/$defs/...``, as pydantic writes them) respected."""
    if root is None:
        root = schema
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key) if isinstance(target, dict) else None
        return sample_for_schema(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return sample_for_schema((non_null or options)[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        return {name: sample_for_schema(properties.get(name, {}), root, depth + 1)
                for name in required}
    if kind == "array":
        count = schema.get("minItems") or 0
        return [sample_for_schema(schema.get("items", {}), root, depth + 1)
                for _ in range(count)]
    if kind == "string":
        text = _STRING_FORMATS.get(schema.get("format"), "simulated")
        min_length, max_length = schema.get("minLength"), schema.get("maxLength")
        if isinstance(min_length, int) and len(text) < min_length:
            text = text + "x" * (min_length - len(text))
        if isinstance(max_length, int):
            text = text[:max_length]
        return text
    if kind in ("integer", "number"):
        value: float = 0
        low, high = schema.get("minimum"), schema.get("maximum")
        ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if isinstance(low, (int, float)) and value < low:
            value = low
        if isinstance(ex_low, (int, float)) and value <= ex_low:
            value = ex_low + 1
        if isinstance(high, (int, float)) and value > high:
            value = high
        if isinstance(ex_high, (int, float)) and value >= ex_high:
            value = ex_high - 1
        return math.ceil(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    return None


def _json_reply(request: ChatRequest, reply: str) -> str | None:
    """The JSON the request's ``response_format`` asks for, or None for plain text."""
    rf = request.response_format
    kind = rf.get("type") if rf else None
    if kind == "json_schema":
        spec = rf.get("json_schema") if rf else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return orjson.dumps(sample_for_schema(schema) if schema else {}).decode()
    if kind == "json_object":
        return orjson.dumps({"reply": reply}).decode()
    return None


def _tool_to_call(request: ChatRequest) -> str | None:
    """The tool a ``tool_call`` fault calls: the one ``tool_choice`` names, else the first."""
    if not request.tools or request.tool_choice == "none":
        return None
    choice = request.tool_choice
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        if any(t["function"]["name"] == named for t in request.tools):
            return str(named)
    return str(request.tools[0]["function"]["name"])


# --------------------------------------------------------------------------- the provider


class SimulatedProvider:
    def __init__(self, name: str, config: SimulatedProviderConfig) -> None:
        self.name = name
        self.config = config
        try:
            self._faults = parse_faults(config.faults)
        except ValueError as exc:
            raise ValueError(f"providers.{name}.{exc}") from None
        self._rng = random.Random(config.seed)
        self._latency = config.latency
        self._fixed_latency = config.latency.value_s if config.latency.distribution == "fixed" \
            else None
        self._log_median = math.log(config.latency.median_s)
        self._reply_pieces = split_text(config.reply, config.stream_chunks)
        self._reply_tokens = count_tokens(config.reply)
        #: (request id, source, fault index) -> calls seen, for ``fail_times``.
        self._seen: OrderedDict[tuple[str, str, int], int] = OrderedDict()
        self._started = False
        self.calls = 0
        self.calls_by_model: Counter[str] = Counter()
        #: Injected faults by kind, for tests and benchmark reports.
        self.faults_injected: Counter[str] = Counter()

    # -- lifecycle

    async def start(self) -> None:
        self._started = True

    async def aclose(self) -> None:
        self._started = False

    def healthy(self) -> bool:
        return self._started

    # -- choosing what happens

    def _draw_latency(self) -> float:
        if self._fixed_latency is not None:
            return self._fixed_latency
        spec = self._latency
        if spec.distribution == "uniform":
            return self._rng.uniform(spec.low_s, spec.high_s)
        return self._rng.lognormvariate(self._log_median, spec.sigma)

    def _pick(self, operation: str, model: str, ctx: RequestContext,
              request: ChatRequest | None = None) -> Fault | None:
        faults, source = self._faults, "config"
        if ctx.simulate is not None and self.config.allow_request_override:
            faults, source = parse_override(ctx.simulate), "request"
        applies = _APPLIES[operation]
        for index, fault in enumerate(faults):
            if fault.kind not in applies:
                continue
            if fault.only_model is not None and fault.only_model != model:
                continue
            if fault.kind == "tool_call" and (request is None or _tool_to_call(request) is None):
                continue
            if fault.fail_times is not None:
                key = (ctx.request_id, source, index)
                seen = self._seen.get(key, 0) + 1
                self._seen[key] = seen
                if len(self._seen) > FAIL_TIMES_MEMORY:
                    self._seen.popitem(last=False)
                if seen > fault.fail_times:
                    continue
            if fault.rate >= 1.0 or (fault.rate > 0.0 and self._rng.random() < fault.rate):
                self.faults_injected[fault.kind] += 1
                return fault
        return None

    def _begin(self, operation: str, model: str, ctx: RequestContext,
               request: ChatRequest | None = None) -> tuple[float, Fault | None]:
        self.calls += 1
        self.calls_by_model[model] += 1
        latency = self._draw_latency()
        return latency, self._pick(operation, model, ctx, request)

    @staticmethod
    async def _wait(seconds: float, limit: float, what: str) -> None:
        """Wait as an upstream that takes ``seconds`` would; past ``limit`` the client's read
        timeout fires first, as aiohttp's would in the HTTP adapters."""
        if seconds <= 0.0:
            return
        if seconds >= limit:
            await asyncio.sleep(limit)
            raise UpstreamTimeout(f"{what}: upstream did not answer in time")
        await asyncio.sleep(seconds)

    async def _before_answer(self, fault: Fault | None, latency: float, timeout: CallTimeout,
                             ctx: RequestContext, what: str) -> None:
        """Everything that happens before the answer (or first chunk): latency and the
        transport faults, which end here by raising."""
        if fault is None:
            await self._wait(latency, timeout.total_s, what)
            return
        kind = fault.kind
        if kind == "connect_error":
            raise UpstreamConnectError(f"{what}: cannot connect to upstream (simulated)")
        if kind == "hang":
            # Accepted, never answered: only cancellation (the deadline) ends this.
            await asyncio.get_running_loop().create_future()
        if kind == "read_timeout":
            await asyncio.sleep(min(timeout.total_s, ctx.remaining()))
            raise UpstreamTimeout(f"{what}: upstream did not answer in time")
        delay = latency + fault.delay_s if kind == "slow_first_token" else latency
        await self._wait(delay, timeout.total_s, what)
        if kind == "status":
            raise error_for_upstream_status(
                fault.status, f"upstream {fault.status}: simulated error",
                retry_after=fault.retry_after())
        if kind == "rate_limit":
            raise error_for_upstream_status(429, "upstream 429: simulated rate limit",
                                            retry_after=fault.retry_after())
        if kind == "malformed_json":
            raise UpstreamMalformed(f"{what}: upstream returned invalid JSON")

    def _content(self, request: ChatRequest, fault: Fault | None) -> str:
        if fault is not None and fault.kind == "invalid_output":
            return fault.content
        if request.response_format is not None:
            json_reply = _json_reply(request, self.config.reply)
            if json_reply is not None:
                return json_reply
        return self.config.reply

    # -- calls

    async def chat(self, request: ChatRequest, model: str, timeout: CallTimeout,
                   ctx: RequestContext) -> dict[str, Any]:
        latency, fault = self._begin("chat", model, ctx, request)
        await self._before_answer(fault, latency, timeout, ctx, "chat")
        message: dict[str, Any]
        if fault is not None and fault.kind == "tool_call":
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_sim_" + secrets.token_hex(6), "type": "function",
                "function": {"name": _tool_to_call(request), "arguments": fault.arguments}}]}
            finish_reason, completion_tokens = "tool_calls", count_tokens(fault.arguments)
        else:
            content = self._content(request, fault)
            message = {"role": "assistant", "content": content}
            finish_reason = "stop"
            completion_tokens = self._reply_tokens if content is self.config.reply \
                else count_tokens(content)
        prompt_tokens = _prompt_tokens(request)
        return {
            "id": "chatcmpl-sim-" + secrets.token_hex(8),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    async def open_stream(self, request: ChatRequest, model: str, timeout: CallTimeout,
                          ctx: RequestContext) -> ChatStream:
        latency, fault = self._begin("stream", model, ctx, request)
        await self._before_answer(fault, latency, timeout, ctx, "stream")
        chunks = self._stream(request, model, timeout, fault)
        try:
            first = await anext(chunks)
        except BaseException:
            await chunks.aclose()
            raise
        return PrefetchedStream(first, chunks)

    def _deltas(self, request: ChatRequest, fault: Fault | None
                ) -> tuple[Iterator[dict[str, Any]], str, int]:
        """The content deltas of a stream, its finish reason and its completion tokens."""
        parts = self.config.stream_chunks
        if fault is not None and fault.kind == "tool_call":
            pieces = split_text(fault.arguments, parts)
            head = {"index": 0, "id": "call_sim_" + secrets.token_hex(6), "type": "function",
                    "function": {"name": _tool_to_call(request), "arguments": pieces[0]}}
            deltas = [{"role": "assistant", "content": None, "tool_calls": [head]}]
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                       for piece in pieces[1:]]
            return iter(deltas), "tool_calls", count_tokens(fault.arguments)
        content = self._content(request, fault)
        if content is self.config.reply:
            pieces, tokens = self._reply_pieces, self._reply_tokens
        else:
            pieces, tokens = split_text(content, parts), count_tokens(content)

        def content_deltas() -> Iterator[dict[str, Any]]:
            yield {"role": "assistant", "content": pieces[0]}
            for piece in pieces[1:]:
                yield {"content": piece}

        return content_deltas(), "stop", tokens

    async def _stream(self, request: ChatRequest, model: str, timeout: CallTimeout,
                      fault: Fault | None) -> AsyncIterator[dict[str, Any]]:
        """All chunks: content, then a finish chunk, then a usage chunk (``choices: []``),
        with ``chunk_interval_s`` before every chunk but the first and the usage chunk."""
        kind = fault.kind if fault is not None else None
        interval = fault.interval_s if fault is not None and kind == "slow_stream" \
            else self.config.chunk_interval_s
        fail_after = fault.chunks if fault is not None and kind == "stream_error_after" else -1
        deltas, finish_reason, completion_tokens = self._deltas(request, fault)
        ident, created = "chatcmpl-sim-" + secrets.token_hex(8), int(time.time())
        limit = timeout.total_s

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish}]}

        sent = 0
        for delta in deltas:
            if sent == fail_after:
                raise UpstreamUnavailable("simulated mid-stream error")
            if sent and interval > 0.0:
                await self._wait(interval, limit, "stream")
            yield chunk(delta, None)
            sent += 1
        if kind == "stream_no_done":
            # openai_compat's missing ``[DONE]``; the message avoids that literal, which SSE
            # clients and tests look for to tell a clean end from a broken one.
            raise UpstreamMalformed("stream: upstream ended the stream without its DONE event")
        if sent == fail_after:
            raise UpstreamUnavailable("simulated mid-stream error")
        if interval > 0.0:
            await self._wait(interval, limit, "stream")
        yield chunk({}, finish_reason)
        sent += 1
        if sent == fail_after:
            raise UpstreamUnavailable("simulated mid-stream error")
        prompt_tokens = _prompt_tokens(request)
        yield {"id": ident, "object": "chat.completion.chunk", "created": created,
               "model": model, "choices": [],
               "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}}
        sent += 1
        if sent == fail_after:  # every chunk went out, but the stream never finished cleanly
            raise UpstreamUnavailable("simulated mid-stream error")

    async def embeddings(self, request: EmbeddingsRequest, model: str, timeout: CallTimeout,
                         ctx: RequestContext) -> dict[str, Any]:
        latency, fault = self._begin("embeddings", model, ctx)
        await self._before_answer(fault, latency, timeout, ctx, "embeddings")
        texts = request.texts()
        dimensions = min(request.dimensions or self.config.embedding_dimensions, 8192)
        as_base64 = request.encoding_format == "base64"
        data = []
        tokens = 0
        for index, text in enumerate(texts):
            tokens += count_tokens(text)
            vector = embed_text(text, dimensions)
            embedding: Any = vector
            if as_base64:
                packed = array.array("f", vector)
                if sys.byteorder != "little":
                    packed.byteswap()
                embedding = base64.b64encode(packed.tobytes()).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def list_models(self, timeout: CallTimeout) -> list[dict[str, Any]]:
        return []


def embed_text(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on ``text``: the same text, the same vector."""
    raw = array.array("h", hashlib.shake_256(text.encode()).digest(2 * dimensions))
    norm = math.sqrt(sum(v * v for v in raw))
    if norm == 0.0:  # all-zero hash output: astronomically unlikely, but stay a unit vector
        return [1.0] + [0.0] * (dimensions - 1)
    return [v / norm for v in raw]
