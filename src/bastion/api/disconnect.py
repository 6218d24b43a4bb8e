"""Cancel the work of a request whose client went away.

Starlette keeps running a handler after its client disconnects; for a model call that can be
tens of seconds of upstream work nobody will read. ``until_disconnect`` runs the work as a task
and watches the connection; a disconnect cancels the task, and with it the upstream call and
every child task, promptly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from bastion.domain.errors import ClientClosedRequest

T = TypeVar("T")


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
        raise ClientClosedRequest("the client closed the connection")
    return task.result()
