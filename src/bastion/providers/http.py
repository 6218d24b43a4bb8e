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
from bastion.providers.base import CallTimeout


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


async def raise_for_status(resp: aiohttp.ClientResponse) -> None:
    if resp.status < 400:
        return
    body = await resp.read()
    raise error_for_upstream_status(resp.status, _upstream_message(body, resp.status),
                                    retry_after=parse_retry_after(resp.headers))


def client_timeout(timeout: CallTimeout, *, streaming: bool) -> aiohttp.ClientTimeout:
    if streaming:
        # The whole stream is bounded by the request deadline in the pipeline; here each read
        # may idle at most the attempt's timeout.
        return aiohttp.ClientTimeout(total=None, connect=timeout.connect_s,
                                     sock_connect=timeout.connect_s, sock_read=timeout.total_s)
    return aiohttp.ClientTimeout(total=timeout.total_s, connect=timeout.connect_s,
                                 sock_connect=timeout.connect_s)


@asynccontextmanager
async def classified(what: str) -> AsyncIterator[None]:
    """Translate transport failures into the taxonomy (the only place that knows aiohttp's)."""
    try:
        yield
    except DependencyError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"{what}: upstream did not answer in time") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamConnectError(f"{what}: cannot connect to upstream ({exc.os_error})") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise UpstreamConnectError(f"{what}: upstream connection lost") from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamMalformed(f"{what}: upstream response was cut short") from exc
    except aiohttp.ClientResponseError as exc:
        raise error_for_upstream_status(exc.status, f"{what}: upstream {exc.status}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamConnectError(f"{what}: upstream transport error "
                                   f"({type(exc).__name__})") from exc


async def read_json(resp: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    body = await resp.read()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamMalformed(f"{what}: upstream returned invalid JSON") from None
    if not isinstance(data, dict):
        raise UpstreamMalformed(f"{what}: upstream returned JSON that is not an object")
    return data


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str | None, bytes]]:
    """Yield ``(event, data)`` pairs of a server-sent event stream, one per blank-line-ended
    event. Multi-line ``data:`` fields are joined with newlines as the SSE spec says."""
    event: str | None = None
    data: list[bytes] = []
    async for raw in resp.content:
        line = raw.rstrip(b"\r\n")
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
    if data:
        yield event, b"\n".join(data)
