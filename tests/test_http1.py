"""The HTTP/1.1 client under the OpenAI-compatible adapter, against a raw socket server that
answers with exactly the bytes a test gives it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Self

import pytest

from bastion.providers.http1 import BadResponse, ConnectFailed, ConnectionLost, Pool
from tests.conftest import free_port

Answer = Callable[[bytes], list[bytes] | None]  # request bytes -> chunks to send (None: close)


class RawServer:
    """Answers each request with ``answer(request)``'s chunks, ~10 ms apart; ``close`` closes
    the connection after each answer."""

    def __init__(self, answer: Answer, *, close: bool = False) -> None:
        self.answer = answer
        self.close = close
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                chunks = self.answer(request)
                if chunks is None:
                    break
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                    await asyncio.sleep(0.01)
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def ok(body: bytes, *extra: bytes) -> list[bytes]:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + b"".join(extra)
    return [head + b"content-length: %d\r\n\r\n" % len(body) + body]


@pytest.fixture
async def pool_for() -> AsyncIterator[Callable[[str], Pool]]:
    pools: list[Pool] = []

    def make(url: str, size: int = 8) -> Pool:
        pools.append(Pool(url, size=size, headers={"authorization": "Bearer k"}))
        return pools[-1]

    yield make
    for pool in pools:
        await pool.aclose()


async def test_a_request_carries_the_path_prefix_headers_and_body(pool_for) -> None:
    async with RawServer(lambda req: ok(b'{"ok": true}', b"retry-after: 3\r\n")) as server:
        resp = await pool_for(server.url).request("POST", "/chat/completions", b'{"a": 1}',
                                                  headers={"x-request-id": "req_1"})
        assert resp.status == 200 and resp.headers["retry-after"] == "3"
        assert await resp.read() == b'{"ok": true}'
        resp.release()
    sent = server.requests[0]
    assert sent.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    for header in (b"authorization: Bearer k", b"x-request-id: req_1", b"content-length: 8"):
        assert header in sent
    assert sent.endswith(b'\r\n\r\n{"a": 1}')


async def test_keep_alive_connections_are_reused_one_request_at_a_time(pool_for) -> None:
    async with RawServer(lambda req: ok(b"{}")) as server:
        pool = pool_for(server.url)
        for _ in range(3):
            resp = await pool.request("GET", "/models")
            await resp.read()
            resp.release()
        assert server.connections == 1

        async def one() -> None:
            resp = await pool.request("GET", "/models")
            await resp.read()
            resp.release()
        await asyncio.gather(*(one() for _ in range(4)))
        assert server.connections == 4  # concurrent requests never share a connection


async def test_the_pool_never_opens_more_than_its_size(pool_for) -> None:
    async with RawServer(lambda req: ok(b"{}")) as server:
        pool = pool_for(server.url, size=2)
        held = [await pool.request("GET", "/models") for _ in range(2)]
        third = asyncio.create_task(pool.request("GET", "/models"))
        await asyncio.sleep(0.05)
        assert not third.done()  # waits for a free connection
        await held[0].read()
        held[0].release()
        resp = await asyncio.wait_for(third, 1)
        await resp.read()
        resp.release()
        held[1].release()
        assert server.connections == 2


async def test_chunked_bodies_arrive_block_by_block(pool_for) -> None:
    def chunked(req: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]

    async with RawServer(chunked) as server:
        pool = pool_for(server.url)
        resp = await pool.request("POST", "/chat/completions", b"{}")
        blocks = [b async for b in resp.blocks()]
        resp.release()
        assert b"".join(blocks) == b"hello world" and len(blocks) >= 2
        resp = await pool.request("POST", "/chat/completions", b"{}")
        assert await resp.read() == b"hello world"
        resp.release()
        assert server.connections == 1


async def test_a_body_delimited_by_the_end_of_the_connection(pool_for) -> None:
    def until_close(req: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n", b"all of ", b"it"]

    async with RawServer(until_close, close=True) as server:
        resp = await pool_for(server.url).request("GET", "/models")
        assert await resp.read() == b"all of it"
        resp.release()


@pytest.mark.parametrize(("chunks", "error"), [
    (None, ConnectionLost),                                          # closed, no answer
    ([b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"], BadResponse),  # cut short
    ([b"SMTP ready\r\n\r\n"], BadResponse),                          # not HTTP
])
async def test_broken_answers_raise_transport_errors(pool_for, chunks, error) -> None:
    async with RawServer(lambda req: chunks, close=True) as server:
        pool = pool_for(server.url)
        with pytest.raises(error):
            resp = await pool.request("POST", "/chat/completions", b"{}")
            try:
                await resp.read()
            finally:
                resp.release()


async def test_a_refused_connection_is_connect_failed(pool_for) -> None:
    pool = pool_for(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ConnectFailed):
        await pool.request("GET", "/models")


def test_a_header_that_would_split_the_request_is_refused() -> None:
    with pytest.raises(ValueError):
        Pool("http://127.0.0.1:1/v1", size=1, headers={"x-key": "a\r\nx-evil: 1"})
