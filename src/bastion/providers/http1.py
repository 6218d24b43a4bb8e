"""A small HTTP/1.1 client for one origin: keep-alive connections, a request with a body, and
a response read whole or block by block as it arrives.

Written by hand, on asyncio and ``httptools`` (the parser uvicorn serves bastion with), for the
one call that every chat completion makes. ``bench/http_clients.py`` (client CPU per pooled
request on loopback, its own task per request included): aiohttp 79 µs with 32 in flight, 141
sequentially, 139 per 20-event stream; this client 36, 52 and 55. In ``bench/run.py`` the
switch took bastion from ~0.32 to ~0.27 ms of CPU per chat completion (see BENCHMARKS.md).

What it does: HTTP and HTTPS (``ssl`` with the system's CA store), a pool of at most ``size``
connections (callers wait for a free one), bodies with ``Content-Length``, chunked or
closed-delimited, back-pressure on a reader that falls behind. What it deliberately does not:
redirects (a model API that redirects is misconfigured: the 3xx is the answer), proxies,
cookies, compression (it asks for ``identity``), HTTP/2. Failures are ``TransportError``
subclasses or ``TimeoutError``; ``providers.http.transport_error`` maps them to the taxonomy.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools


class TransportError(Exception):
    """The request could not be made or its answer could not be read."""


class ConnectFailed(TransportError):
    """No connection to the origin (refused, unreachable, TLS handshake failed)."""


class ConnectionLost(TransportError):
    """The connection closed before the response's headers arrived."""


class BadResponse(TransportError):
    """The response was not valid HTTP, or it was cut short."""


#: A reader further behind than this stops the socket until it catches up.
_HIGH_WATER = 1 << 20


class _Connection(asyncio.Protocol):
    """One keep-alive connection, carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop  # set by connection_made, before any wait
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._until_eof = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Kept: asking for the running loop on every wait is a getpid() system call each.
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"invalid HTTP from upstream ({exc})"))
            self.close()
            return
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.headers_done and not self.complete and self._until_eof:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self.headers_done:
            self._fail(ConnectionLost("the upstream closed the connection"))
        elif not self.complete:
            self._fail(BadResponse("the upstream response was cut short"))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        self._until_eof = ("content-length" not in self.headers
                           and "chunked" not in self.headers.get("transfer-encoding", "")
                           and self.status not in (204, 304) and self.status >= 200)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- for Response

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def wait(self) -> None:
        """Until something happens: headers, a body block, the end, or an error."""
        if self._error is not None:
            raise self._error
        self._waiter = self._loop.create_future()
        await self._waiter

    def take(self) -> bytes | None:
        """The body received since the last call, or None when nothing is waiting."""
        if not self._body:
            return None
        block = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return block

    @property
    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and not self.lost and self._error is None
                and self.transport is not None and not self.transport.is_closing())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Response:
    """Status and headers (lower-case names) of an answer whose body is still to be read.
    Read it with ``read`` or ``blocks``, then ``release`` it (always: it gives the connection
    back to the pool, or closes it when the body was not read to the end)."""

    __slots__ = ("_conn", "_pool", "headers", "status")

    def __init__(self, pool: Pool, conn: _Connection) -> None:
        self._pool = pool
        self._conn = conn
        self.status = conn.status
        self.headers: Mapping[str, str] = conn.headers

    async def read(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the response was released")
        parts: list[bytes] = []
        while True:
            block = conn.take()
            if block is not None:
                parts.append(block)
            if conn.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            await conn.wait()

    async def blocks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, one block per read (several events of a stream may share a
        block, and one event may span two)."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("the response was released")
        while True:
            block = conn.take()
            if block is not None:
                yield block
            elif conn.complete:
                return
            else:
                await conn.wait()

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class Pool:
    """Keep-alive connections to the origin of ``base_url`` (whose path prefixes every request
    path), at most ``size`` at once; ``headers`` go with every request."""

    def __init__(self, base_url: str, *, size: int, headers: Mapping[str, str]) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        host_header = url.netloc.rpartition("@")[2]  # never send credentials from the URL
        fixed = {"host": host_header, "accept-encoding": "identity", **headers}
        if any(c in item for pair in fixed.items() for item in pair for c in "\r\n"):
            raise ValueError("a header name or value contains a line break")
        self._head_tail = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Connection] = []
        self.closed = False

    async def request(self, method: str, path: str, body: bytes = b"", *,
                      headers: Mapping[str, str] | None = None,
                      connect_timeout: float | None = None) -> Response:
        """Send the request and wait for the response's status and headers."""
        if self.closed:
            raise ConnectFailed("the connection pool is closed")
        await self._slots.acquire()
        try:
            conn = await self._connection(connect_timeout)
        except BaseException:
            self._slots.release()
            raise
        head = [f"{method} {self.prefix}{path} HTTP/1.1\r\n", self._head_tail]
        if headers:
            head.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        head.append(f"content-length: {len(body)}\r\n\r\n")
        try:
            assert conn.transport is not None
            conn.transport.write("".join(head).encode("latin-1") + body)
            while not conn.headers_done:
                await conn.wait()
        except BaseException:
            self.release(conn)
            raise
        return Response(self, conn)

    async def _connection(self, connect_timeout: float | None) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.lost and conn.transport is not None and not conn.transport.is_closing():
                conn._reset()
                return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None)
        except OSError as exc:  # refused, unreachable, reset, TLS (ssl.SSLError is an OSError)
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        return conn

    def release(self, conn: _Connection) -> None:
        """Back to the idle list if its answer was read whole, else closed."""
        self._slots.release()
        if conn.reusable and not self.closed:
            self._idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
