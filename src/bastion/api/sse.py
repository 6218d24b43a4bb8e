"""Server-sent events: the encodings of the OpenAI and Anthropic streaming formats, and the
response that sends them."""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from bastion.api.disconnect import until_disconnect
from bastion.domain.errors import ClientClosedRequest

DONE = b"data: [DONE]\n\n"


def data_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def named_event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response whose events are sent from the request's own task.

    Starlette's ``StreamingResponse``, under the ASGI 2.3 spec uvicorn speaks, sends the body
    from a second task in an anyio task group while the first listens for the disconnect:
    105 µs of CPU for a 22-event stream against 20 µs here (measured in-process, both
    listening for the disconnect), about 8% of bastion's CPU per stream. Here the body is sent
    by the task that runs the request, under the same disconnect watcher as the rest of the
    request (``until_disconnect``): a client that goes away cancels the body iterator, so its
    ``finally`` blocks release the upstream stream and settle the request.
    It is still a ``StreamingResponse`` for whatever wraps one (idempotency recording)."""

    def __init__(self, content: AsyncIterable[bytes], *, headers: Mapping[str, str],
                 status_code: int = 200) -> None:
        super().__init__(content, status_code=status_code, headers=headers,
                         media_type="text/event-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, self.stream_response(send))
        except ClientClosedRequest:
            pass  # nobody is left to tell
        finally:
            # Cancelled while sending, the iterator is suspended between two events: close it
            # now rather than whenever the collector finds it.
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
