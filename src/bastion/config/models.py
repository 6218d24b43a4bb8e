"""Model aliases: an ordered list of targets, each with its own execution policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bastion.config.base import Strict


class BreakerPolicy(Strict):
    """Open after ``failure_threshold`` failures within ``window_s``; after ``cooldown_s`` let
    exactly one probe through (half-open); close on its success, re-open on its failure."""

    failure_threshold: int = Field(default=5, ge=1)
    window_s: float = Field(default=30.0, gt=0)
    cooldown_s: float = Field(default=15.0, gt=0)


class TargetConfig(Strict):
    provider: str
    model: str
    #: The most one attempt may take (it also gets no more than what is left of the deadline).
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    #: Extra attempts after the first, for transient failures only.
    retries: int = Field(default=2, ge=0, le=10)
    backoff_base_s: float = Field(default=0.2, ge=0, le=60)
    backoff_max_s: float = Field(default=5.0, ge=0, le=300)
    #: The longest Retry-After bastion will wait for; longer ones move on to the next target.
    retry_after_cap_s: float = Field(default=10.0, ge=0, le=600)
    breaker: BreakerPolicy = Field(default_factory=BreakerPolicy)
    #: An optional concurrency limit for this target alone (the provider's bulkhead still holds).
    max_concurrency: int | None = Field(default=None, ge=1)

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"


class ModelAlias(Strict):
    kind: Literal["chat", "embeddings"] = "chat"
    #: The first target is the primary; the rest are the fallback chain, in order.
    targets: list[TargetConfig] = Field(min_length=1, max_length=16)
