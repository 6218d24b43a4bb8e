"""``Idempotency-Key`` on POST endpoints: claim the key, run once, store and replay the answer.

The HTTP half of ``services.idempotency``: it hands the guard the raw body (hashed to detect a
key reused with another body) and turns the stored response back into an HTTP response. A
streamed answer is recorded as it goes out and stored when the stream completes; a stream the
client abandoned, or that failed part way, releases the key, since its answer was never whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from bastion.api.headers import headers_of
from bastion.api.request import raw_body_of
from bastion.domain.context import RequestContext
from bastion.gateway import Gateway
from bastion.services.idempotency import Claim, StoredResponse

#: Headers that describe one transfer, not the answer: never stored or replayed.
_TRANSFER_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "date"})


def _stored_headers(response: Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in _TRANSFER_HEADERS}


def stream_ended_cleanly(body: bytes) -> bool:
    """Whether a recorded SSE body ended as a complete answer (OpenAI ``[DONE]`` or Anthropic
    ``message_stop``), rather than with an error event."""
    tail = body[-256:]
    return tail.rstrip().endswith(b"data: [DONE]") or b"event: message_stop" in tail


async def idempotent(request: Request, gateway: Gateway, ctx: RequestContext, endpoint: str,
                     handle: Callable[[], Awaitable[Response]]) -> Response:
    """``handle()`` once per idempotency key; it must return a response (errors included).

    Call it after ``read_json``, which keeps the raw body this hashes."""
    key = headers_of(request).get("idempotency-key")
    if key is None:
        return await handle()
    claimed = await gateway.idempotency.claim(tenant=ctx.tenant, endpoint=endpoint, key=key,
                                              body=raw_body_of(request),
                                              remaining_s=ctx.remaining())
    if isinstance(claimed, StoredResponse):
        return Response(claimed.body, status_code=claimed.status, headers=claimed.headers,
                        media_type=claimed.media_type)
    try:
        response = await handle()
    except BaseException:
        await claimed.abandon()
        raise
    if isinstance(response, StreamingResponse):
        response.body_iterator = _recorded(response, response.body_iterator, claimed)
        return response
    await claimed.finish(StoredResponse(response.status_code, _stored_headers(response),
                                        bytes(response.body), response.media_type or ""))
    return response


async def _recorded(response: StreamingResponse, body: AsyncIterable[str | bytes],
                    claim: Claim) -> AsyncIterator[bytes]:
    parts: list[bytes] = []
    complete = False
    try:
        async for part in body:
            data = part.encode() if isinstance(part, str) else bytes(part)
            parts.append(data)
            yield data
        complete = stream_ended_cleanly(b"".join(parts[-2:]))
    finally:
        if complete:
            await claim.finish(StoredResponse(response.status_code, _stored_headers(response),
                                              b"".join(parts), response.media_type or ""))
        else:
            await claim.abandon()
