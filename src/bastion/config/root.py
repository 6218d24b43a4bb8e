"""The root of the config file, with the cross-references that must resolve."""

from __future__ import annotations

from pydantic import Field, model_validator

from bastion.config.admission import (
    AdmissionConfig,
    AuthConfig,
    BudgetsConfig,
    CacheConfig,
    IdempotencyConfig,
    LedgerConfig,
    LimitsConfig,
    Price,
    StateConfig,
)
from bastion.config.answer import AnswerConfig
from bastion.config.base import Strict
from bastion.config.models import ModelAlias
from bastion.config.observability import ObservabilityConfig
from bastion.config.providers import ProviderConfig
from bastion.config.retrieval import RetrievalConfig
from bastion.config.tasks import TaskConfig

SUPPORTED_VERSIONS = (1,)


class RouteConfig(Strict):
    #: Default deadline of a request on this route; a client may ask for less or (up to
    #: ``max_deadline_s``) more with the ``X-Bastion-Deadline`` header, in seconds.
    deadline_s: float = Field(default=60.0, gt=0, le=3600)
    max_deadline_s: float = Field(default=300.0, gt=0, le=86_400)


#: What a route without an entry in ``routes`` gets (asked for on every request: built once).
_DEFAULT_ROUTE = RouteConfig()


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: Trust ``X-Request-ID`` from clients (bounded to 128 safe characters).
    accept_request_id: bool = True


class BastionConfig(Strict):
    version: int
    server: ServerConfig = Field(default_factory=ServerConfig)
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelAlias]
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    #: Where prompt templates live (``name@version.yaml``), relative to this file.
    prompts_dir: str | None = None
    tasks: dict[str, TaskConfig] = Field(default_factory=dict)
    state: StateConfig = Field(default_factory=StateConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    #: Prices by target (``provider/model``); a target without a price costs 0.
    pricing: dict[str, Price] = Field(default_factory=dict)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    idempotency: IdempotencyConfig = Field(default_factory=IdempotencyConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)

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
        for name, task in self.tasks.items():
            alias = self.models.get(task.model)
            if alias is None or alias.kind != "chat":
                raise ValueError(f"tasks.{name}.model: {task.model!r} is not a chat model alias "
                                 f"(known: {', '.join(sorted(self.models))})")
        model = self.answer.model
        if model is not None and (model not in self.models or self.models[model].kind != "chat"):
            raise ValueError(f"answer.model: {model!r} is not a chat model alias (known: "
                             f"{', '.join(sorted(self.models))}); leave it out for the "
                             "extractive answerer")
        return self

    def route(self, name: str) -> RouteConfig:
        return self.routes.get(name) or _DEFAULT_ROUTE
