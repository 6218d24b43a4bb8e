"""The one interface every provider adapter implements.

Adapters speak the OpenAI shapes (plain dicts, so the hot path never re-validates a response
twice) and raise only errors from the taxonomy: ``UpstreamTimeout``, ``UpstreamConnectError``,
``UpstreamUnavailable``, ``UpstreamRateLimited`` (with ``retry_after``), ``UpstreamMalformed``
and ``UpstreamRejected``. Classifying retries, breakers and fallbacks is the pipeline's job, not
theirs.

Streaming is split in two so the pipeline can decide when a call has *started*: ``open_stream``
returns once the upstream accepted the request and produced its first chunk (failures up to that
point are retryable); iterating the returned ``ChatStream`` yields the rest. Once a chunk has
been sent to the client, a failure is reported in-band and never retried.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import RequestContext


@dataclass(frozen=True, slots=True)
class CallTimeout:
    """The time one attempt may take, already clipped to what is left of the deadline.

    An adapter ends its call after ``total_s`` itself, unless ``caller_bounds`` says the
    caller already cancels it then (the pipeline's attempt stage does): a second timer for the
    same instant would only cost CPU (4-5 µs each with uvloop)."""

    total_s: float
    connect_s: float
    caller_bounds: bool = False


@runtime_checkable
class ChatStream(Protocol):
    """An opened stream: the first chunk is already known; iterate for all chunks (first
    included) as OpenAI ``chat.completion.chunk`` dicts. ``aclose`` releases the connection."""

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    name: str

    async def chat(self, request: ChatRequest, model: str, timeout: CallTimeout,
                   ctx: RequestContext) -> dict[str, Any]:
        """A complete ``chat.completion`` dict."""
        ...

    async def open_stream(self, request: ChatRequest, model: str, timeout: CallTimeout,
                          ctx: RequestContext) -> ChatStream:
        ...

    async def embeddings(self, request: EmbeddingsRequest, model: str, timeout: CallTimeout,
                         ctx: RequestContext) -> dict[str, Any]:
        """An OpenAI ``list`` of ``embedding`` objects with ``usage``."""
        ...

    async def start(self) -> None:
        """Acquire resources (connection pools, child servers). Called once before use."""
        ...

    async def aclose(self) -> None:
        ...

    def healthy(self) -> bool:
        """Cheap, local readiness: resources started. Never makes a network call."""
        ...


class PrefetchedStream:
    """A ``ChatStream`` over an async iterator whose first chunk was already read.

    Adapters read the first chunk inside ``open_stream`` (so connection errors and an upstream
    that accepts but never answers surface while retrying is still allowed) and hand the rest
    over through this wrapper.
    """

    __slots__ = ("_closer", "_first", "_rest")

    def __init__(self, first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]],
                 closer: Any = None) -> None:
        self._first = first
        self._rest = rest
        self._closer = closer

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        aclose = getattr(self._rest, "aclose", None)
        if aclose is not None:
            await aclose()
        if self._closer is not None:
            result = self._closer()
            if hasattr(result, "__await__"):
                await result
