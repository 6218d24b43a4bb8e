"""The deadline stage: nothing starts after the deadline, nothing outlives it."""

from __future__ import annotations

import asyncio
import time

import pytest

from bastion.domain.chat import ChatRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import DeadlineExceeded
from bastion.pipeline.call import ChatCall
from bastion.pipeline.deadline import DeadlineStage

REQUEST = ChatRequest.model_validate({"model": "a", "messages": [{"role": "user",
                                                                  "content": "hi"}]})


def call(budget: float) -> ChatCall:
    return ChatCall(RequestContext.create(budget_s=budget), REQUEST, "a", "chat")


async def test_work_that_overruns_is_cancelled_at_the_deadline() -> None:
    cancelled = asyncio.Event()

    async def slow(_call: ChatCall) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await DeadlineStage()(call(0.1), slow)
    assert 0.09 <= time.monotonic() - started < 0.5
    assert cancelled.is_set()


async def test_nothing_starts_once_the_budget_is_spent() -> None:
    ran = False

    async def work(_call: ChatCall) -> None:
        nonlocal ran
        ran = True

    c = call(0.001)
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineExceeded):
        await DeadlineStage()(c, work)
    assert not ran


async def test_a_timeout_raised_inside_is_not_mistaken_for_the_deadline() -> None:
    async def work(_call: ChatCall) -> None:
        raise TimeoutError("someone else's timeout")

    with pytest.raises(TimeoutError):
        await DeadlineStage()(call(5), work)
