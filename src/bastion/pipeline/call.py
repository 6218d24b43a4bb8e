"""What flows through the stages: one request call, and one attempt at one target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bastion.config import TargetConfig
from bastion.domain.context import RequestContext
from bastion.pipeline.contract.output import OutputContract
from bastion.providers.base import CallTimeout, Provider


@dataclass(slots=True)
class ChatCall:
    """One chat request on its way through the request stages."""

    ctx: RequestContext
    request: Any  # ChatRequest or EmbeddingsRequest
    alias: str
    operation: str  # "chat", "stream" or "embeddings"
    #: What the answer must satisfy before it is a success (None: nothing declared).
    contract: OutputContract | None = None
    #: The validated value (parsed JSON, a pydantic object, checked tool calls) once it passed.
    validated: Any = None


@dataclass(slots=True)
class AttemptCall:
    """One attempt at one target: what the attempt stages (bulkhead, breaker, timeout) see."""

    chat: ChatCall
    target: TargetConfig
    provider: Provider
    number: int
    timeout: CallTimeout | None = None
    #: Set by the breaker when this attempt is the single half-open probe.
    probe: bool = False
