"""A scriptable provider for unit tests of the stages: each call pops the next outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from bastion.providers.base import CallTimeout, PrefetchedStream


def completion(text: str = "ok", model: str = "m") -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class ScriptedProvider:
    """Outcomes are consumed in order: an exception instance is raised, ``"hang"`` sleeps until
    cancelled, a float sleeps that long then succeeds, anything else is returned. When the
    script runs out, calls succeed."""

    def __init__(self, name: str = "p", script: list[Any] | None = None) -> None:
        self.name = name
        self.script = list(script or [])
        self.calls = 0
        self.timeouts: list[CallTimeout] = []
        self.cancelled = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def healthy(self) -> bool:
        return True

    async def _outcome(self, model: str, timeout: CallTimeout) -> Any:
        self.calls += 1
        self.timeouts.append(timeout)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            step = self.script.pop(0) if self.script else None
            if isinstance(step, BaseException):
                raise step
            if step == "hang":
                await asyncio.sleep(3600)
            if isinstance(step, float):
                await asyncio.sleep(step)
            if isinstance(step, dict):
                return step
            return completion(model=model)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def chat(self, request, model, timeout, ctx):
        return await self._outcome(model, timeout)

    async def open_stream(self, request, model, timeout, ctx):
        await self._outcome(model, timeout)

        async def rest() -> AsyncIterator[dict[str, Any]]:
            for i in range(1, 3):
                yield {"choices": [{"index": 0, "delta": {"content": f"c{i}"}}]}

        return PrefetchedStream({"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
                                rest())

    async def embeddings(self, request, model, timeout, ctx):
        return await self._outcome(model, timeout)
