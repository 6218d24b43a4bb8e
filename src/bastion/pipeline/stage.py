"""The one shape every stage has, and how stages compose into a route.

A stage is ``async (call, next) -> result``: it may look at the call, refuse it by raising a
taxonomy error, wrap ``next`` (a deadline, a semaphore), or call it several times (retry).
A route is a list of stages in front of a terminal handler; ``compose`` folds them once at
start-up so a request pays one function call per stage and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

C = TypeVar("C")
R = TypeVar("R")
C_contra = TypeVar("C_contra", contravariant=True)

Handler = Callable[[C], Awaitable[R]]


class Stage(Protocol, Generic[C, R]):
    async def __call__(self, call: C, next: Handler[C, R]) -> R: ...


def compose(stages: Sequence[Stage[C, R]], terminal: Handler[C, R]) -> Handler[C, R]:
    """``compose([a, b], t)(call)`` runs ``a(call, b')`` where ``b'(call)`` runs ``b(call, t)``."""
    handler = terminal
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(stage: Stage[C, R], next_handler: Handler[C, R]) -> Handler[C, R]:
    # A plain function handing back the stage's coroutine, not a coroutine awaiting it: each
    # coroutine frame in a request's chain is paid on every call and every resumption.
    def run(call: C) -> Awaitable[R]:
        return stage(call, next_handler)

    run.__qualname__ = f"{type(stage).__name__}.run"
    return run
