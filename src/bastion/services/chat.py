"""The chat service: run a request through the pipeline and shape what comes back.

It owns what happens around the pipeline for chat: streams are bounded by the request
deadline chunk by chunk, the usage chunk bastion always asks upstreams for is passed on only
when the client asked for it, and the outcome (target, attempts, fallback) is summarised for
the response headers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bastion.domain.chat import ChatRequest, EmbeddingsRequest, completion_to_chunks
from bastion.domain.context import RequestContext
from bastion.domain.errors import ClientClosedRequest, DeadlineExceeded, outcome_of
from bastion.pipeline.builder import ChatPipeline
from bastion.pipeline.call import ChatCall
from bastion.pipeline.contract import OutputContract
from bastion.pipeline.stream import TargetStream
from bastion.providers.base import PrefetchedStream
from bastion.providers.watchdog import Watchdog


@dataclass(slots=True)
class ChatResult:
    """A finished completion and how it was obtained."""

    response: dict[str, Any]
    ctx: RequestContext
    #: The validated value when an output contract applied (parsed JSON, a pydantic object,
    #: or the checked tool calls); None otherwise.
    value: Any = None

    @property
    def target(self) -> str | None:
        return self.ctx.target

    @property
    def attempts(self) -> int:
        return self.ctx.calls()

    @property
    def fallback_used(self) -> bool:
        return self.ctx.fallback_used


Finish = Callable[[BaseException | None], Awaitable[None]]


@dataclass(slots=True)
class ChatStreamResult:
    """An opened stream. Iterate it for ``chat.completion.chunk`` dicts; a failure after the
    first chunk raises the classified error (the HTTP layer turns it into an error event).
    ``usage`` holds the upstream's usage once the stream has ended. ``on_finish`` callbacks
    run exactly once when the stream ends, fails or is closed, with the error or None."""

    stream: TargetStream
    ctx: RequestContext
    include_usage: bool
    usage: dict[str, Any] | None = field(default=None)
    #: False for a replayed answer whose usage was already counted when it was produced.
    counts_usage: bool = True
    on_finish: list[Finish] = field(default_factory=list)
    _finished: bool = False
    #: When the stream was handed out (``time.monotonic()``): the ``stream`` stage's start.
    _opened: float = field(default_factory=time.monotonic)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        watchdog = Watchdog(deadline=self.ctx.deadline)
        iterator = self.stream.__aiter__()
        outcome: BaseException | None = None
        try:
            while True:
                try:
                    chunk = await watchdog.next(iterator)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if not watchdog.expired:
                        raise
                    raise DeadlineExceeded("the request deadline was exceeded mid-stream") \
                        from None
                if self.ctx.first_token_s is None and chunk.get("choices"):
                    self.ctx.first_token()
                usage = chunk.get("usage")
                if usage:
                    self.usage = usage
                    if self.counts_usage:
                        self.ctx.add_usage(usage)
                    if not self.include_usage:
                        if not chunk.get("choices"):
                            continue
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                yield chunk
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            watchdog.close()
            try:
                await iterator.aclose()
                await self.stream.aclose()
            finally:
                await self._finish(outcome)

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            await self._finish(ClientClosedRequest("the stream was closed before it ended"))

    async def _finish(self, outcome: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        self.ctx.add_stage("stream", self._opened, outcome_of(outcome))
        for fn in self.on_finish:
            await fn(outcome)


class ChatService:
    def __init__(self, pipeline: ChatPipeline) -> None:
        self.pipeline = pipeline

    async def complete(self, request: ChatRequest, ctx: RequestContext, *,
                       contract: OutputContract | None = None) -> ChatResult:
        """A completion; if the request (or ``contract``) declares an output contract, only an
        answer that satisfies it comes back, else ``OutputContractFailed``."""
        if contract is None:
            contract = OutputContract.for_request(request)
        call = ChatCall(ctx, request, request.model, "chat", contract)
        response = await self._route(call)
        return ChatResult(response, ctx, call.validated)

    async def _route(self, call: ChatCall) -> Any:
        """The pipeline, recorded as the request's ``route`` stage (its attempts, retries,
        fallbacks and contract checks happen inside it)."""
        return await call.ctx.staged("route", self.pipeline.handle(call))

    async def stream(self, request: ChatRequest, ctx: RequestContext) -> ChatStreamResult:
        include = bool(request.stream_options and request.stream_options.include_usage)
        contract = OutputContract.for_request(request)
        if contract is not None:
            # Structured output cannot be checked a chunk at a time, and a chunk that reached
            # the client cannot be taken back: validate the whole answer, then replay it.
            result = await self.complete(request, ctx, contract=contract)
            return ChatStreamResult(_replay(result.response, ctx), ctx, include,
                                    counts_usage=False)
        stream = await self._route(ChatCall(ctx, request, request.model, "stream"))
        return ChatStreamResult(stream, ctx, include)

    async def embeddings(self, request: EmbeddingsRequest, ctx: RequestContext) -> dict[str, Any]:
        return await self._route(ChatCall(ctx, request, request.model, "embeddings"))  # type: ignore[no-any-return]


def _replay(response: dict[str, Any], ctx: RequestContext) -> TargetStream:
    async def chunks() -> AsyncIterator[dict[str, Any]]:
        for chunk in completion_to_chunks(response):
            yield chunk

    return TargetStream(PrefetchedStream(None, chunks()), ctx.target or "")
