"""Rendering errors as HTTP responses, in the OpenAI or the Anthropic shape.

Anything that is not a ``BastionError`` is our bug: it is logged with its traceback and an
incident id, and the caller gets a safe 500 that names only the incident id and request id.
"""

from __future__ import annotations

import logging
import math

import orjson
from starlette.responses import Response

from bastion.domain.anthropic import anthropic_error_body, anthropic_error_type
from bastion.domain.errors import BastionError, InternalError
from bastion.observability.logging import note_error

log = logging.getLogger("bastion.errors")


def classify(exc: BaseException, request_id: str) -> BastionError:
    if isinstance(exc, BastionError):
        return exc
    internal = InternalError()
    log.error("internal error", exc_info=exc,
              extra={"request_id": request_id, "incident_id": internal.incident_id})
    return internal


def error_headers(err: BastionError, base: dict[str, str]) -> dict[str, str]:
    headers = {**base, **err.headers}
    if err.retry_after is not None and err.status in (429, 503):
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    return headers


def error_response(exc: BaseException, request_id: str, headers: dict[str, str],
                   *, shape: str = "openai") -> Response:
    err = classify(exc, request_id)
    note_error(err.code)
    if shape == "anthropic":
        body = anthropic_error_body(anthropic_error_type(err.status), err.message)
        body["request_id"] = request_id
    else:
        body = err.body(request_id)
    return Response(orjson.dumps(body), status_code=err.status,
                    media_type="application/json", headers=error_headers(err, headers))
