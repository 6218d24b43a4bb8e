"""bastion's HTTP/1.1 protocol under uvicorn's server (``api.http_protocol``), spoken to over
real sockets on loopback: framing, keep-alive, pipelining, bodies in both directions with flow
control, the disconnect event, failures, limits and shutdown."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
import uvloop

from bastion.api.http_protocol import HTTP_PROTOCOL, MAX_HEAD_BYTES

App = Callable[..., Any]


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread cannot own signals
        pass


@contextmanager
def serving(app: App, **config: Any) -> Iterator[tuple[int, _Server]]:
    """``app`` under uvicorn with bastion's protocol, on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="none",
                                    http=HTTP_PROTOCOL, proxy_headers=False, lifespan="off",
                                    log_level="critical", access_log=False, server_header=False,
                                    **config))
    thread = threading.Thread(target=lambda: uvloop.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        yield port, server
    finally:
        server.should_exit = True
        thread.join(10)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


_readers: weakref.WeakKeyDictionary[socket.socket, Any] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, *, head_only: bool = False,
                  method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body (de-chunked). Reads through a
    buffered file per socket, so pipelined answers that arrive together stay apart."""
    reader = _readers.get(sock)
    if reader is None:
        reader = _readers[sock] = sock.makefile("rb")
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("closed before a response head")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline().decode("latin-1")) not in ("\r\n", ""):
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"{name} twice"
        headers[name.lower()] = value.strip()
    if head_only or method == "HEAD" or status in (204, 304) or status < 200:
        return status, headers, b""
    if "content-length" in headers:
        body = reader.read(int(headers["content-length"]))
        assert len(body) == int(headers["content-length"]), "closed mid-body"
        return status, headers, body
    assert headers.get("transfer-encoding") == "chunked", headers
    body = b""
    while size := int(reader.readline().strip(), 16):
        body += reader.read(size)
        assert reader.read(2) == b"\r\n"
    assert reader.read(2) == b"\r\n"
    return status, headers, body


def closed_by_server(sock: socket.socket, within: float = 3.0) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the method, path, query and the whole request body it read."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    payload = b"%s %s %s|" % (scope["method"].encode(), scope["path"].encode(),
                              scope["query_string"]) + body
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n"
            f"{headers}\r\n").encode() + body


# --------------------------------------------------------------------------- framing


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with serving(echo) as (port, _), connect(port) as sock:
        for i in range(3):
            sock.sendall(request("POST", f"/v1/x%20y?n={i}", b"body%d" % i))
            status, headers, body = read_response(sock)
            assert status == 200 and body == b"POST /v1/x y n=%d|body%d" % (i, i)
            assert "date" in headers and "server" not in headers


def test_pipelined_requests_are_answered_in_order() -> None:
    with serving(echo) as (port, _), connect(port) as sock:
        sock.sendall(b"".join(request("POST", f"/{i}", b"x" * i) for i in range(5)))
        for i in range(5):
            assert read_response(sock)[2] == b"POST /%d |" % i + b"x" * i


def test_a_chunked_request_body_reaches_the_app_whole() -> None:
    with serving(echo) as (port, _), connect(port) as sock:
        sock.sendall(b"POST /c HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
        time.sleep(0.05)
        sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
        assert read_response(sock)[2] == b"POST /c |hello world"


def test_a_large_body_in_both_directions_survives_flow_control() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, past every buffer's high-water mark

    async def slow_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message["body"]
            await asyncio.sleep(0.001)  # a slow reader: the connection must pause reading
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    with serving(slow_echo) as (port, _), connect(port) as sock:
        sock.sendall(request("POST", "/big", payload))
        time.sleep(0.2)  # a slow client: the server's writes must wait for it
        status, _, body = read_response(sock)
        assert status == 200 and body == payload


def test_expect_100_continue_is_answered_when_the_app_reads_the_body() -> None:
    with serving(echo) as (port, _), connect(port) as sock:
        sock.sendall(b"POST /e HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\n"
                     b"expect: 100-continue\r\n\r\n")
        status, _, _ = read_response(sock, head_only=True)
        assert status == 100
        sock.sendall(b"data")
        assert read_response(sock)[2] == b"POST /e |data"


def test_head_and_204_carry_no_body() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        status = 204 if scope["path"] == "/empty" else 200
        headers = [] if status == 204 else [(b"content-length", b"5")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if status == 204 else b"hello"})

    with serving(app) as (port, _), connect(port) as sock:
        sock.sendall(request("HEAD", "/x"))
        status, headers, _ = read_response(sock, method="HEAD")
        assert status == 200 and headers["content-length"] == "5"
        sock.sendall(request("GET", "/empty"))
        status, headers, _ = read_response(sock)
        assert status == 204 and "transfer-encoding" not in headers
        sock.sendall(request("GET", "/x"))  # the connection is still in step
        assert read_response(sock)[2] == b"hello"


def test_a_streamed_response_is_chunked_and_its_head_leaves_before_the_body() -> None:
    release = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        while not release.is_set():
            await asyncio.sleep(0.01)
        for i in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % i,
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    with serving(app) as (port, _), connect(port) as sock:
        sock.sendall(request("GET", "/s"))
        sock.settimeout(5)
        head = sock.recv(65536)  # arrives while the app still holds its first event
        assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head
        release.set()
        rest = b""
        while not rest.endswith(b"0\r\n\r\n"):
            rest += sock.recv(65536)
        assert rest.count(b"data: ") == 3


# --------------------------------------------------------------------------- connections


def test_http_1_0_and_connection_close_end_the_connection() -> None:
    with serving(echo) as (port, _):
        with connect(port) as sock:
            sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
            status, headers, _ = read_response(sock)
            assert status == 200 and headers["connection"] == "close"
            assert closed_by_server(sock)
        with connect(port) as sock:
            sock.sendall(request("GET", "/bye", headers="connection: close\r\n"))
            assert read_response(sock)[0] == 200 and closed_by_server(sock)


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout() -> None:
    with serving(echo, timeout_keep_alive=0.3) as (port, _):
        with connect(port) as sock:
            sock.sendall(request("GET", "/"))
            read_response(sock)
            assert closed_by_server(sock, within=3)
        with connect(port) as silent:  # one that never sends a request at all
            assert closed_by_server(silent, within=3)


def test_a_client_that_goes_away_is_seen_by_the_app() -> None:
    seen: list[str] = []
    done = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # the body
        seen.append((await receive())["type"])  # waits until the client leaves
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})  # ignored, no error
        done.set()

    with serving(app) as (port, _):
        sock = connect(port)
        sock.sendall(request("POST", "/wait", b"x"))
        time.sleep(0.1)
        sock.close()
        assert done.wait(5)
    assert seen == ["http.disconnect"]


def test_graceful_shutdown_lets_the_request_in_flight_finish() -> None:
    started = threading.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.set()
        await asyncio.sleep(0.5)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"done"})

    with serving(slow) as (port, server), connect(port) as sock:
        sock.sendall(request("GET", "/slow"))
        assert started.wait(5)
        server.should_exit = True
        status, headers, body = read_response(sock)
        assert (status, body) == (200, b"done") and headers["connection"] == "close"


def test_concurrency_past_the_limit_is_refused_with_503() -> None:
    gate = threading.Event()

    async def held(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while not gate.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with serving(held, limit_concurrency=2) as (port, _), connect(port) as first:
        first.sendall(request("GET", "/1"))
        time.sleep(0.1)
        with connect(port) as second:
            second.sendall(request("GET", "/2"))
            assert read_response(second)[0] == 503
        gate.set()
        assert read_response(first)[0] == 200


# --------------------------------------------------------------------------- failures


def test_a_malformed_request_gets_400_and_the_connection_closes() -> None:
    with serving(echo) as (port, _), connect(port) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert read_response(sock)[0] == 400 and closed_by_server(sock)


def test_a_request_head_past_the_bound_gets_431() -> None:
    with serving(echo) as (port, _), connect(port) as sock:
        huge = "".join(f"x-filler-{i}: {'v' * 1000}\r\n" for i in range(MAX_HEAD_BYTES // 1000))
        try:
            sock.sendall(request("GET", "/", headers=huge))
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: what we want, answer or not
        try:
            assert read_response(sock)[0] == 431
        except (ConnectionError, ConnectionResetError):
            pass
        assert closed_by_server(sock)


@pytest.mark.parametrize("where", ["before the response", "after its head"])
def test_an_app_that_raises_gets_500_or_a_closed_connection(where: str) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if where == "after its head":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("boom")

    with serving(app) as (port, _), connect(port) as sock:
        sock.sendall(request("GET", "/"))
        if where == "before the response":
            status, headers, body = read_response(sock)
            assert (status, body) == (500, b"Internal Server Error")
            assert headers["connection"] == "close"
        else:
            sock.settimeout(5)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 ") and not data.endswith(b"0\r\n\r\n")
        assert closed_by_server(sock)


def test_an_app_that_returns_without_answering_gets_500() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    with serving(app) as (port, _), connect(port) as sock:
        sock.sendall(request("GET", "/"))
        assert read_response(sock)[0] == 500


@pytest.mark.parametrize("header", [(b"x-evil", b"a\r\nset-cookie: stolen=1"),
                                    (b"x-evil\r\nset-cookie", b"stolen=1"),
                                    (b"x-nul", b"a\x00b")])
def test_a_header_that_would_break_framing_is_never_sent(header: tuple[bytes, bytes]) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [header, (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with serving(app) as (port, _), connect(port) as sock:
        sock.sendall(request("GET", "/"))
        status, headers, _ = read_response(sock)
        assert status == 500 and "set-cookie" not in headers


def test_an_upgrade_request_is_answered_as_plain_http_then_closed() -> None:
    with serving(echo) as (port, _), connect(port) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\n"
                     b"upgrade: websocket\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 200 and body == b"GET /ws |" and headers["connection"] == "close"
        assert closed_by_server(sock)
