"""HTTP/1.1 for ``bastion serve``: uvicorn's server around a leaner per-connection protocol.

uvicorn still does everything around the connections: the listening sockets, worker
processes, signals, the ASGI lifespan, the date header, graceful shutdown. What this replaces
is its per-request path (``uvicorn.protocols.http.httptools_impl``), which a gateway pays on
every call. Counted with callgrind on the server under the benchmark's load (chat
completions, full profile), bastion executed 1.200M instructions per request under uvicorn's
httptools protocol and 1.135M under this one (-5.4%); a trivial ASGI app 125K against 94K,
and 77-85 µs of CPU per request against 58-66 µs (wrk on loopback, alternating runs). The
same parser (``httptools``, llhttp), the same ASGI contract; the differences:

- the request body is handed over without an ``asyncio.Event`` per request: an app that asks
  for a body which has already arrived (almost always: a chat request fits in one read) gets
  it at once, and only one that must wait creates a future;
- keep-alive is one timer per connection that looks at when it went idle, not a timer armed
  and cancelled per request;
- response headers are checked for what breaks HTTP framing (CR, LF and NUL, by counting
  them in the encoded head: two scans in C) instead of two regular expressions per header,
  and are not lower-cased again (ASGI asks apps for lower-case names; Starlette sends them);
- a response with a ``content-length`` goes out in one ``write``, head and body together,
  instead of two (one system call less per answer); a streamed response's head goes out at
  once, so a client sees the status before the first event;
- no proxy-headers middleware (bastion reads no client address) and no access log (bastion
  writes its own ``request.completed`` event per request).

Like uvicorn's protocol it supports keep-alive with an idle timeout, pipelining (one request
at a time, in order), chunked and ``Content-Length`` request bodies with flow control in
both directions, ``Expect: 100-continue``, HEAD, 204/304 without a body, and the disconnect
event. It also bounds the request head (``MAX_HEAD_BYTES``: 431 past it), which uvicorn's
httptools protocol does not. WebSocket upgrades are not served (bastion has none): such a
request is answered as plain HTTP and its connection closed after it.

Use it with ``uvicorn.Config(..., http=HTTP_PROTOCOL, proxy_headers=False)``.
"""

from __future__ import annotations

import asyncio
import http
import logging
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

#: uvicorn's import string for this protocol (what ``uvicorn.Config(http=...)`` takes, also in
#: worker processes).
HTTP_PROTOCOL = "bastion.api.http_protocol:HttpProtocol"

#: Buffered request body beyond which the connection stops reading until the app catches up.
HIGH_WATER = 65_536
#: The largest request line plus headers accepted (431 beyond): without a bound a client can
#: stream headers until the process runs out of memory.
MAX_HEAD_BYTES = 65_536

log = logging.getLogger("uvicorn.error")

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}
#: Response header names that change how the body is framed or the connection ends.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_DISCONNECT = {"type": "http.disconnect"}


def _plain(status: int, text: str) -> bytes:
    body = text.encode()
    return (STATUS_LINES[status] + b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


class HttpProtocol(asyncio.Protocol):
    """One client connection. Constructed by uvicorn's server with its config and state."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app: ASGIApp = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.app_state = app_state
        self.root_path: str = config.root_path
        self.keep_alive_s: float = config.timeout_keep_alive
        self.limit_concurrency: int | None = config.limit_concurrency
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        # The request being parsed, and the exchanges: the one being answered and any
        # pipelined behind it.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.exchange: Exchange | None = None
        self.queued: deque[Exchange] = deque()
        #: The exchange whose request the parser is reading (the last one started or queued).
        self.parsing: Exchange | None = None
        self.reading = True
        self.writable: asyncio.Future[None] | None = None
        # Keep-alive: when the connection last became idle (None while a request is being
        # read or answered), and one timer that looks at it: no timer armed and cancelled
        # per request.
        self.idle_since: float | None = None
        self.idle_timer: asyncio.TimerHandle | None = None

    # -- the transport's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not ``asyncio.Transport`` subclasses, but behave as one.
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        # A connection that sends nothing is closed like an idle keep-alive one.
        self.idle_since = self.loop.time()
        self.idle_timer = self.loop.call_later(self.keep_alive_s, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        for exchange in (self.exchange, *self.queued):
            if exchange is not None:
                exchange.lost()
        self.queued.clear()
        self.resume_writing()
        self.transport = None

    def eof_received(self) -> bool | None:
        return None  # close our side too, once what is being written has gone

    def data_received(self, data: bytes) -> None:
        self.idle_since = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An upgrade (WebSocket, h2c) is not served: answer the request as plain HTTP,
            # then close, since what follows on the connection is not HTTP/1.1.
            exchange = self.parsing
            if exchange is not None:
                exchange.keep_alive = False
                exchange.body_done()
        except httptools.HttpParserError as exc:
            self._refuse(431 if self.head_bytes > MAX_HEAD_BYTES else 400,
                         "Request headers too large" if self.head_bytes > MAX_HEAD_BYTES
                         else "Invalid HTTP request received.", exc)

    def _refuse(self, status: int, text: str, exc: BaseException) -> None:
        """A request that cannot be parsed: say so and close (nothing after it can be
        trusted to be framed right)."""
        log.debug("refusing a request: %s", exc)
        if self.transport is not None and not self.transport.is_closing():
            if self.exchange is None or self.exchange.complete:
                self.transport.write(_plain(status, text))
            self.transport.close()

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        writable, self.writable = self.writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- parser callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request head too large")
        # llhttp keeps trailing whitespace, which is not part of the value (RFC 9110 5.5).
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root = self.root_path
        scope = {
            "type": "http", "asgi": _ASGI, "http_version": version,
            "server": self.server, "client": self.client, "scheme": self.scheme,
            "method": parser.get_method().decode("ascii"), "root_path": root,
            "path": root + path, "raw_path": root.encode("ascii") + raw_path if root else raw_path,
            "query_string": url.query or b"", "headers": self.headers,
            "state": self.app_state.copy(),
        }
        expect_continue = False
        if version == "1.1":
            for name, value in self.headers:
                if name == b"expect" and value.lower() == b"100-continue":
                    expect_continue = True
        exchange = self.parsing = Exchange(
            self, scope, version != "1.0" and parser.should_keep_alive(), expect_continue)
        if self.exchange is None or self.exchange.complete:
            self._start(exchange)
        else:
            self.queued.append(exchange)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.complete:
            return  # answered already (without reading it all): the rest is dropped
        exchange.body.append(body)
        exchange.buffered += len(body)
        if exchange.waiter is not None:
            exchange.wake()
        if exchange.buffered > HIGH_WATER:
            self._pause_reading()

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is not None and not exchange.complete:
            exchange.body_done()

    # -- running exchanges

    def _start(self, exchange: Exchange) -> None:
        self.exchange = exchange
        app = self.app
        if self.limit_concurrency is not None and (
                len(self.server_state.connections) >= self.limit_concurrency
                or len(self.server_state.tasks) >= self.limit_concurrency):
            app = _service_unavailable
        task = self.loop.create_task(exchange.run(app))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def response_done(self, exchange: Exchange) -> None:
        """``exchange`` has sent its whole response: start the next one, or wait idle."""
        self.server_state.total_requests += 1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not exchange.keep_alive:
            transport.close()
            return
        self._resume_reading()
        if self.queued:
            self._start(self.queued.popleft())
        else:
            self.idle_since = self.loop.time()

    def _idle_check(self) -> None:
        """Close the connection once it has been idle for the keep-alive timeout; else look
        again when it could first have been."""
        transport = self.transport
        if transport is None or transport.is_closing():
            self.idle_timer = None
            return
        wait = self.keep_alive_s
        if self.idle_since is not None:
            wait -= self.loop.time() - self.idle_since
            if wait <= 0:
                self.idle_timer = None
                transport.close()
                return
        self.idle_timer = self.loop.call_later(wait, self._idle_check)

    def _pause_reading(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self.reading and self.transport is not None:
            self.reading = True
            self.transport.resume_reading()

    def shutdown(self) -> None:
        """The server is shutting down: close when the answer in progress is done."""
        if self.exchange is None or self.exchange.complete:
            if self.transport is not None:
                self.transport.close()
        else:
            self.exchange.keep_alive = False
            self.queued.clear()


class Exchange:
    """One request and its response: the ASGI ``receive`` and ``send`` of one call."""

    __slots__ = ("body", "body_complete", "body_sent", "buffered", "chunked", "complete", "continue_due",
                 "disconnected", "head", "keep_alive", "left", "protocol", "scope", "started",
                 "waiter")

    def __init__(self, protocol: HttpProtocol, scope: dict[str, Any], keep_alive: bool,
                 expect_continue: bool) -> None:
        self.protocol = protocol
        self.scope = scope
        self.keep_alive = keep_alive
        self.continue_due = expect_continue
        # Request body: what arrived and was not handed over yet.
        self.body: list[bytes] = []
        self.buffered = 0
        self.body_complete = False
        self.body_sent = False  # the last body message was handed to the app
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        # Response state.
        self.started = False
        self.complete = False
        self.head: bytes | None = None  # a Content-Length response's head, sent with its body
        self.chunked = False
        self.left = 0  # Content-Length bytes still to send

    # -- from the protocol

    def body_done(self) -> None:
        self.body_complete = True
        if self.waiter is not None:
            self.wake()

    def lost(self) -> None:
        self.disconnected = True
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the ASGI callables

    async def receive(self) -> dict[str, Any]:
        if self.continue_due:
            self.continue_due = False
            transport = self.protocol.transport
            if not self.body and not self.body_complete and transport is not None \
                    and not transport.is_closing():
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # Once the whole body was handed over, what is left to hear of is the disconnect.
        while not ((self.body or self.body_complete) and not self.body_sent) \
                and not (self.disconnected or self.complete):
            self.protocol._resume_reading()
            self.waiter = self.protocol.loop.create_future()
            await self.waiter
        if self.disconnected or self.complete:
            return _DISCONNECT
        chunks, self.body, self.buffered = self.body, [], 0
        self.body_sent = self.body_complete
        self.protocol._resume_reading()
        return {"type": "http.request",
                "body": chunks[0] if len(chunks) == 1 else b"".join(chunks),
                "more_body": not self.body_complete}

    async def send(self, message: dict[str, Any]) -> None:
        protocol = self.protocol
        if protocol.writable is not None and not self.disconnected:
            await protocol.writable
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got "
                                   f"'{kind}'.")
            self._start_response(message)
        elif not self.complete:
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got "
                                   f"'{kind}'.")
            self._send_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after the response "
                               "was complete.")

    def _start_response(self, message: dict[str, Any]) -> None:
        self.started = True
        self.continue_due = False
        status = message["status"]
        head = [STATUS_LINES[status]]
        lines = 1
        for name, value in self.protocol.server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
            lines += 1
        length: int | None = None
        close_sent = False
        for name, value in message.get("headers", ()):
            if name in _FRAMING or (not name.islower() and name.lower() in _FRAMING):
                low = name.lower()
                if low == b"content-length":
                    if length is None:
                        length = int(value)
                elif low == b"transfer-encoding":
                    self.chunked = value.lower() == b"chunked"
                elif b"close" in [t.strip() for t in value.lower().split(b",")]:
                    self.keep_alive = False
                    close_sent = True
            head += (name, b": ", value, b"\r\n")
            lines += 1
        no_body = self.scope["method"] == "HEAD" or status in (204, 304) or status < 200
        if not self.chunked and length is None and not no_body:
            self.chunked = True
            head.append(b"transfer-encoding: chunked\r\n")
            lines += 1
        if not self.keep_alive and not close_sent:
            head.append(b"connection: close\r\n")
            lines += 1
        head.append(b"\r\n")
        encoded = b"".join(head)
        # Framing: every CR and LF of the head is a line end written here, and there is no
        # NUL: a name or value carrying one could split the response in two.
        if encoded.count(b"\n") != lines + 1 or encoded.count(b"\r") != lines + 1 \
                or b"\x00" in encoded:
            self.started = False
            raise RuntimeError("Invalid HTTP header: CR, LF or NUL in a header name or value.")
        if no_body:
            self.chunked = False
            self.left = 0
        elif not self.chunked:
            self.left = length or 0
        if self.chunked or no_body:
            self._write(encoded)
        else:
            self.head = encoded  # goes out with the body

    def _send_body(self, body: bytes, more: bool) -> None:
        if self.scope["method"] == "HEAD":
            data = b""
        elif self.chunked:
            data = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            if len(body) > self.left:
                raise RuntimeError("Response content longer than Content-Length")
            self.left -= len(body)
            data = body
        if self.head is not None:
            data, self.head = self.head + data, None
        if data and (transport := self.protocol.transport) is not None:
            transport.write(data)
        if not more:
            if self.left:
                raise RuntimeError("Response content shorter than Content-Length")
            self.complete = True
            if self.waiter is not None:
                self.wake()
            self.protocol.response_done(self)

    def _write(self, data: bytes) -> None:
        transport = self.protocol.transport
        if transport is not None:
            transport.write(data)

    # -- running the app

    async def run(self, app: ASGIApp) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            log.error("Exception in ASGI application", exc_info=exc)
            if not self.started and not self.disconnected:
                self._fail()
            else:
                self._close()
            if not isinstance(exc, Exception):
                raise
        else:
            if result is not None:
                log.error("ASGI callable should return None, but returned %r.", result)
                self._close()
            elif not self.started and not self.disconnected:
                log.error("ASGI callable returned without starting response.")
                self._fail()
            elif not self.complete and not self.disconnected:
                log.error("ASGI callable returned without completing response.")
                self._close()

    def _fail(self) -> None:
        """A 500 for an app that failed before it answered; the connection then closes."""
        self.head = None
        self.keep_alive = False
        self._write(_plain(500, "Internal Server Error"))
        self.complete = True
        self.protocol.response_done(self)

    def _close(self) -> None:
        self.keep_alive = False
        transport = self.protocol.transport
        if transport is not None:
            transport.close()


async def _service_unavailable(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", b"19"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b"Service Unavailable"})


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return None
