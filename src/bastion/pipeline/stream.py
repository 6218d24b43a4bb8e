"""An opened upstream stream as the pipeline hands it out.

Stages that hold something for the life of a stream (a bulkhead slot, the breaker's verdict)
register a done-callback; it runs exactly once, with the exception that ended the stream or
None, when the stream is exhausted, fails, or is closed early because the client went away.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from bastion.domain.errors import BastionError, ClientClosedRequest
from bastion.providers.base import ChatStream

DoneCallback = Callable[[BaseException | None], Awaitable[None] | None]


class TargetStream:
    __slots__ = ("_callbacks", "_done", "_inner", "chunks", "target")

    def __init__(self, inner: ChatStream, target: str) -> None:
        self._inner = inner
        self._callbacks: list[DoneCallback] = []
        self._done = False
        self.target = target
        self.chunks = 0

    def add_done_callback(self, fn: DoneCallback) -> None:
        self._callbacks.append(fn)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        outcome: BaseException | None = None
        try:
            async for chunk in self._inner:
                self.chunks += 1
                yield chunk
        except BastionError as exc:
            outcome = exc
            raise
        except BaseException as exc:  # cancellation, a bug: still settle the callbacks
            outcome = exc
            raise
        finally:
            await self._finish(outcome)

    async def aclose(self) -> None:
        await self._finish(ClientClosedRequest("the stream was closed before it ended"))

    async def _finish(self, outcome: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        try:
            await self._inner.aclose()
        finally:
            for fn in self._callbacks:
                result = fn(outcome)
                if inspect.isawaitable(result):
                    await result
