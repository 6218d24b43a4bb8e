"""The simulated provider's fault specs: parsed and checked once, from config or a request header."""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

from bastion.domain.errors import (
    InvalidRequest,
)
from bastion.providers.http import parse_retry_after

#: Faults that happen before any answer: they apply to every operation.
TRANSPORT_KINDS = frozenset({"status", "rate_limit", "connect_error", "read_timeout", "hang",
                             "malformed_json", "slow_first_token"})
#: Faults that shape a successful chat answer.
OUTPUT_KINDS = frozenset({"invalid_output", "tool_call"})
#: Faults that happen while a stream is being read.
STREAM_KINDS = frozenset({"stream_error_after", "stream_no_done", "slow_stream"})

APPLIES = {
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
