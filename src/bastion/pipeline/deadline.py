"""The deadline stage: no step starts once the budget is spent, and none outlives it.

The request's absolute deadline is enforced around everything after this stage (with a
``TimeLimit``: ``asyncio.timeout_at``'s semantics, cheaper, see ``providers.watchdog``), so an
upstream that never answers is cancelled at the deadline together with all child work, and the
caller gets a classified ``DeadlineExceeded``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bastion.domain.errors import DeadlineExceeded
from bastion.pipeline.call import ChatCall
from bastion.pipeline.stage import Handler
from bastion.providers.watchdog import TimeLimit


class DeadlineStage:
    async def __call__(self, call: ChatCall, next: Handler[ChatCall, Any]) -> Any:
        ctx = call.ctx
        if ctx.expired():
            raise DeadlineExceeded("the request deadline was spent before the call started")
        limit = TimeLimit(asyncio.get_running_loop(), ctx.deadline)
        try:
            return await next(call)
        except asyncio.CancelledError:
            try:
                limit.raise_if_expired()
            except TimeoutError:
                raise DeadlineExceeded(
                    f"the request deadline ({ctx.deadline - ctx.started:.3g}s) was exceeded"
                ) from None
            raise
        finally:
            limit.close()

