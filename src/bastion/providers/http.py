"""What the HTTP adapters share: a pooled session, error classification, Retry-After, SSE.

aiohttp was chosen over httpx for upstream calls by measurement: on this machine kind a pooled
aiohttp session costs about a third of httpx's CPU per small JSON request (see BENCHMARKS.md,
"HTTP client"), and the upstream call is the largest single cost of the pipeline.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from bastion.domain.errors import (
    DependencyError,
    UpstreamConnectError,
    UpstreamMalformed,
    UpstreamTimeout,
    error_for_upstream_status,
)
from bastion.providers import http1
from bastion.providers.base import CallTimeout
from bastion.providers.watchdog import Watchdog


def new_session(pool_size: int, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """One pooled session per provider, reused across requests (keep-alive connections)."""
    connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size,
                                     keepalive_timeout=30, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers or {},
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        # Redirects from a model API are a misconfiguration, not something to follow silently.
        auto_decompress=True,
        trust_env=False,
    )


def parse_retry_after(headers: Any, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``Retry-After`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000.0
            if value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    delta = when.timestamp() - (now if now is not None else time.time())
    return max(0.0, delta)


def _upstream_message(body: bytes, status: int) -> str:
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return f"upstream {status}: {str(err['message'])[:300]}"
        if isinstance(err, str):
            return f"upstream {status}: {err[:300]}"
    except orjson.JSONDecodeError:
        pass
    return f"upstream answered HTTP {status}"


async def raise_for_status(resp: aiohttp.ClientResponse | http1.Response) -> None:
    if resp.status < 400:
        return
    body = await resp.read()
    raise error_for_upstream_status(resp.status, _upstream_message(body, resp.status),
                                    retry_after=parse_retry_after(resp.headers))


def client_timeout(timeout: CallTimeout, *, streaming: bool) -> aiohttp.ClientTimeout:
    if streaming:
        # The whole stream is bounded by the request deadline in the pipeline, and opening it
        # by the attempt's timeout; each later read may idle at most the attempt's timeout,
        # which ``sse_events(idle_s=...)`` enforces: aiohttp's ``sock_read`` would re-arm a
        # timer on every read (see ``providers.watchdog``).
        return aiohttp.ClientTimeout(total=None, connect=timeout.connect_s,
                                     sock_connect=timeout.connect_s)
    return aiohttp.ClientTimeout(total=timeout.total_s, connect=timeout.connect_s,
                                 sock_connect=timeout.connect_s)


#: What a transport failure can be: catch these and hand them to ``transport_error``.
TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientError, http1.TransportError)


def transport_error(what: str, exc: BaseException) -> DependencyError:
    """The taxonomy error for a transport failure (the only place that knows the HTTP
    clients' errors: aiohttp's and ``http1``'s)."""
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(f"{what}: upstream did not answer in time")
    if isinstance(exc, http1.ConnectFailed):
        return UpstreamConnectError(f"{what}: cannot connect to upstream ({exc})")
    if isinstance(exc, http1.ConnectionLost):
        return UpstreamConnectError(f"{what}: upstream connection lost")
    if isinstance(exc, http1.BadResponse):
        return UpstreamMalformed(f"{what}: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(f"{what}: cannot connect to upstream ({exc.os_error})")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        return UpstreamConnectError(f"{what}: upstream connection lost")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamMalformed(f"{what}: upstream response was cut short")
    if isinstance(exc, aiohttp.ClientResponseError):
        return error_for_upstream_status(exc.status, f"{what}: upstream {exc.status}")
    return UpstreamConnectError(f"{what}: upstream transport error ({type(exc).__name__})")


@asynccontextmanager
async def classified(what: str) -> AsyncIterator[None]:
    """Translate transport failures into the taxonomy. (The plain chat call, on every request,
    catches ``TRANSPORT_ERRORS`` itself instead: this context manager costs 2-3 µs.)"""
    try:
        yield
    except TRANSPORT_ERRORS as exc:
        raise transport_error(what, exc) from exc


async def read_json(resp: aiohttp.ClientResponse | http1.Response,
                    what: str) -> dict[str, Any]:
    body = await resp.read()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamMalformed(f"{what}: upstream returned invalid JSON") from None
    if not isinstance(data, dict):
        raise UpstreamMalformed(f"{what}: upstream returned JSON that is not an object")
    return data


#: The longest SSE line accepted from an upstream (a tool call's arguments can be long).
MAX_SSE_LINE_BYTES = 8 * 1024 * 1024


async def sse_events(blocks: AsyncIterator[bytes], *, idle_s: float | None = None,
                     ) -> AsyncIterator[tuple[str | None, bytes]]:
    """Yield ``(event, data)`` pairs of a server-sent event stream read as ``blocks`` of bytes
    (as they arrive: ``http1.Response.blocks()``, aiohttp's ``resp.content.iter_any()``), one
    per blank-line-ended event. Multi-line ``data:`` fields are joined with newlines as the
    SSE spec says. Lines may end with LF or CRLF. Waiting longer than ``idle_s`` for the next
    block raises ``TimeoutError``.

    Splitting whatever has arrived into lines here, rather than awaiting a ``readline`` for
    each line, costs one await per network read instead of two per event (its data line and
    its blank line)."""
    watchdog = Watchdog(idle_s=idle_s)
    reads = blocks
    event: str | None = None
    data: list[bytes] = []
    tail = b""
    done = False
    try:
        while not done:
            try:
                block = await watchdog.next(reads)
            except StopAsyncIteration:
                # The end: a last line without its newline, then a blank line that ends a last
                # event the upstream did not end itself.
                lines, tail, done = [tail, b""], b"", True
            else:
                lines = (tail + block if tail else block).split(b"\n")
                tail = lines.pop()  # after the last newline: not a whole line yet
                if len(tail) > MAX_SSE_LINE_BYTES:
                    raise UpstreamMalformed(
                        f"stream: upstream sent a line over {MAX_SSE_LINE_BYTES} bytes")
            for raw in lines:
                line = raw.rstrip(b"\r")
                if not line:
                    if data:
                        yield event, b"\n".join(data)
                    event, data = None, []
                    continue
                if line.startswith(b":"):
                    continue
                field, _, value = line.partition(b":")
                if value.startswith(b" "):
                    value = value[1:]
                if field == b"data":
                    data.append(value)
                elif field == b"event":
                    event = value.decode(errors="replace")
    finally:
        watchdog.close()
