"""Content logging: the explicit, sampled opt-in to see what was said.

Off by default (``observability.content_logging.sample_rate: 0``). When on, that fraction of
requests also writes one ``request.content`` event with the request id, the input (messages,
a task's input, a question) and the output (the answer), each rendered as JSON and cut at
``max_chars``. It goes to the same log destination as every other event and through the same
credential masking (bastion and provider keys, bearer tokens), but not through the field
redaction that keeps content out of every other event: content is its whole point. Streams
are not captured: their text never exists in one piece inside bastion.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from bastion.config import ContentLoggingConfig
from bastion.domain.context import RequestContext
from bastion.observability import logging as logs


def _clip(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more]"


class ContentLog:
    def __init__(self, config: ContentLoggingConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.on = config.sample_rate > 0
        self._rng = rng or random.Random()

    def record(self, ctx: RequestContext, input: Any, output: Any) -> None:
        """Write the ``request.content`` event for ``ctx`` if this request is sampled."""
        if not self.on or self._rng.random() >= self.config.sample_rate:
            return
        limit = self.config.max_chars
        logs.write_event({
            "event": "request.content", "level": "info", "timestamp": logs.iso_now(),
            "request_id": ctx.request_id, "tenant": ctx.tenant, "route": ctx.route,
            "input": _clip(input, limit), "output": _clip(output, limit)})
