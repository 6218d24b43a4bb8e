"""Cancel the work of a request whose client went away.

Starlette keeps running a handler after its client disconnects; for a model call that can be
tens of seconds of upstream work nobody will read. ``until_disconnect`` runs the work in the
handler's own task while one small watcher task waits on the connection; a disconnect cancels
the handler's task, and with it the upstream call and every child task, promptly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Receive

from bastion.domain.errors import ClientClosedRequest

T = TypeVar("T")


async def _watch(receive: Receive, task: asyncio.Task[object], gone: list[bool]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.append(True)
            task.cancel()
            return


async def until_disconnect(request: Request | Receive, work: Awaitable[T]) -> T:
    """``await work``, or ``ClientClosedRequest`` as soon as the client disconnects.
    ``request`` is the request, or its ASGI ``receive`` callable."""
    receive = request.receive if isinstance(request, Request) else request
    task = asyncio.current_task()
    assert task is not None
    gone: list[bool] = []
    watcher = asyncio.get_running_loop().create_task(_watch(receive, task, gone))
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            task.uncancel()
            raise ClientClosedRequest("the client closed the connection") from None
        raise
    finally:
        watcher.cancel()
