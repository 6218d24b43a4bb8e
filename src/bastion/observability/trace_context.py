"""W3C Trace Context: reading a caller's ``traceparent`` header.

Pure string work, no OpenTelemetry: it runs on every request that carries the header, traced
or not, because a caller's trace is passed upstream even when bastion exports nothing.

The rules are the spec's (https://www.w3.org/TR/trace-context/#traceparent-header): lowercase
hex only; an all-zero trace id or parent id is invalid; version ``ff`` is invalid; a header of
version ``00`` is exactly 55 characters; a later version is read by its first four fields (it
may append more after a ``-``), so a newer caller still joins the trace. Anything invalid is
ignored as if absent: the request then starts a trace of its own.
"""

from __future__ import annotations

from typing import NamedTuple

_HEX = frozenset("0123456789abcdef")
_VERSION_00_LENGTH = 55  # "00-" + 32 + "-" + 16 + "-" + 2


class TraceParent(NamedTuple):
    """A valid ``traceparent``: the caller's trace, its span (our parent) and its flags."""

    trace_id: str  # 32 lowercase hex digits
    parent_span_id: str  # 16 lowercase hex digits
    flags: str  # 2 lowercase hex digits, as sent (bits other than "sampled" are kept)

    @property
    def sampled(self) -> bool:
        """The caller's sampling decision (bit 0 of the flags)."""
        return bool(int(self.flags, 16) & 0x01)


def _hex(value: str, length: int) -> bool:
    return len(value) == length and _HEX.issuperset(value)


def parse_traceparent(header: str | None) -> TraceParent | None:
    """``header`` as a ``TraceParent``, or None when it is absent or invalid."""
    if not header:
        return None
    value = header.strip(" \t")
    if len(value) < _VERSION_00_LENGTH:
        return None
    version = value[:2]
    if not _hex(version, 2) or version == "ff":
        return None
    if version == "00":
        if len(value) != _VERSION_00_LENGTH:
            return None
    elif len(value) > _VERSION_00_LENGTH and value[_VERSION_00_LENGTH] != "-":
        return None
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    trace_id, span_id, flags = value[3:35], value[36:52], value[53:55]
    if not (_hex(trace_id, 32) and _hex(span_id, 16) and _hex(flags, 2)):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceParent(trace_id, span_id, flags)

