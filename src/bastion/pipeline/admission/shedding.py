"""Load shedding by priority: when the process is near capacity, shed batch work first.

A counter of requests in flight in this process, with a threshold per priority: ``batch`` is
admitted only below ``batch_share`` of capacity, ``default`` below ``default_share``, and
``critical`` until the process is full. A shed request gets 503 with ``Retry-After`` at once,
before it costs anything, so the work that matters keeps flowing.

In-process on purpose: capacity is this process's CPU and memory, which another replica's
load does not consume.
"""

from __future__ import annotations

from bastion.config import AdmissionConfig
from bastion.domain.context import Priority
from bastion.domain.errors import Overloaded


class LoadShedder:
    def __init__(self, config: AdmissionConfig) -> None:
        self.capacity = config.max_in_flight
        self.retry_after_s = config.retry_after_s
        self._ceiling = {
            Priority.batch: max(1, int(config.max_in_flight * config.batch_share)),
            Priority.default: max(1, int(config.max_in_flight * config.default_share)),
            Priority.critical: config.max_in_flight,
        }
        self.in_flight = 0
        self.shed = {p: 0 for p in Priority}

    def enter(self, priority: Priority) -> None:
        """Take a slot or raise ``Overloaded``; pair every successful call with ``leave``."""
        if self.in_flight >= self._ceiling[priority]:
            self.shed[priority] += 1
            raise Overloaded(f"bastion is at capacity for {priority.value} requests "
                             f"({self.in_flight} in flight); retry shortly",
                             retry_after=self.retry_after_s)
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
