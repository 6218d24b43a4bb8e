"""The library entry point: the whole pipeline, in-process, no network hop.

    gateway = Gateway.from_config("bastion.yaml")
    async with gateway:
        result = await gateway.chat({"model": "smollm2", "messages": [...]})
        print(result.response["choices"][0]["message"]["content"], result.target)

The HTTP server is a thin layer over exactly this object.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ValidationError

from bastion.config import LoadedConfig, load_config
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import Priority, RequestContext
from bastion.domain.errors import InvalidRequest
from bastion.domain.rules import RuleSpec
from bastion.pipeline.builder import ChatPipeline
from bastion.pipeline.contract import OutputContract, RuleContext
from bastion.providers.base import Provider
from bastion.providers.registry import build_provider
from bastion.services.chat import ChatResult, ChatService, ChatStreamResult
from bastion.services.prompts import PromptLibrary
from bastion.services.tasks import TaskResult, TaskService, compile_tasks
from bastion.stores.base import KeyValueStore
from bastion.stores.memory import MemoryStore


def invalid_from_validation(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """The first pydantic error as an ``InvalidRequest`` whose ``param`` names the field."""
    err = exc.errors(include_url=False)[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    if prefix and param:
        param = f"{prefix}.{param}"
    msg = err["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"{param}: {msg}" if param else msg, param=param)


M = TypeVar("M", bound=BaseModel)


def _load_prompts(loaded: LoadedConfig) -> PromptLibrary:
    directory = loaded.config.prompts_dir
    if directory is None:
        return PromptLibrary.empty()
    path = Path(directory)
    if not path.is_absolute():
        path = Path(loaded.source).parent / path
    return PromptLibrary.load(path)


class Gateway:
    def __init__(self, loaded: LoadedConfig, *, store: KeyValueStore | None = None,
                 providers: dict[str, Provider] | None = None, seed: int | None = None) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.store: KeyValueStore = store if store is not None else MemoryStore()
        self.providers: dict[str, Provider] = providers if providers is not None else {
            name: build_provider(name, cfg) for name, cfg in self.config.providers.items()
        }
        self.pipeline = ChatPipeline(self.config, self.providers, self.store, seed=seed)
        self.chat_service = ChatService(self.pipeline)
        self.prompts = _load_prompts(loaded)
        self.task_service = TaskService(
            compile_tasks(self.config, self.prompts, loaded.source), self.chat_service)
        self._started = False

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None, **kw: Any) -> Gateway:
        """Load and validate ``path`` (the embedded default when None)."""
        return cls(load_config(path), **kw)

    # -- lifecycle

    async def start(self) -> None:
        if self._started:
            return
        started: list[Provider] = []
        try:
            for provider in self.providers.values():
                await provider.start()
                started.append(provider)
        except BaseException:
            for provider in started:
                await provider.aclose()
            raise
        self._started = True

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        await self.store.aclose()
        self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests

    def context(self, *, route: str = "chat", request_id: str | None = None,
                deadline_s: float | None = None, priority: Priority = Priority.default,
                **kw: Any) -> RequestContext:
        """A request context with the route's deadline (or ``deadline_s``, capped by the
        route's ``max_deadline_s``)."""
        policy = self.config.route(route)
        budget = policy.deadline_s if deadline_s is None else min(deadline_s,
                                                                  policy.max_deadline_s)
        return RequestContext.create(budget_s=budget, request_id=request_id, route=route,
                                     priority=priority, **kw)

    @staticmethod
    def parse_chat(request: ChatRequest | dict[str, Any]) -> ChatRequest:
        if isinstance(request, ChatRequest):
            return request
        try:
            return ChatRequest.model_validate(request)
        except ValidationError as exc:
            raise invalid_from_validation(exc) from None

    async def chat(self, request: ChatRequest | dict[str, Any],
                   ctx: RequestContext | None = None) -> ChatResult:
        """A complete chat completion through the pipeline, or a classified error."""
        return await self.chat_service.complete(self.parse_chat(request),
                                                ctx or self.context())

    async def chat_stream(self, request: ChatRequest | dict[str, Any],
                          ctx: RequestContext | None = None) -> ChatStreamResult:
        """An opened stream (retries and fallbacks happen before this returns)."""
        return await self.chat_service.stream(self.parse_chat(request), ctx or self.context())

    async def structured(self, model: type[M], messages: list[dict[str, Any]], *,
                         alias: str, rules: list[RuleSpec] | tuple[RuleSpec, ...] = (),
                         values: dict[str, Any] | None = None,
                         ctx: RequestContext | None = None, **params: Any) -> M:
        """A validated ``model`` instance from the answer of ``alias``, or a classified error.

        The model's JSON Schema goes to the upstream as a strict ``json_schema`` response
        format; the answer is checked against that schema, then by ``model`` itself, then by
        ``rules`` (which may compare it with ``values``); one repair per target, then the
        fallback chain, then ``OutputContractFailed``."""
        request = self.parse_chat({
            **params, "model": alias, "messages": messages,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": model.__name__, "strict": True, "schema": model.model_json_schema()}},
        })
        contract = OutputContract.for_request(request, rules=rules, model=model,
                                              rule_context=RuleContext(values=values or {}))
        result = await self.chat_service.complete(request, ctx or self.context(),
                                                  contract=contract)
        return result.value  # type: ignore[no-any-return]

    async def task(self, name: str, task_input: dict[str, Any],
                   ctx: RequestContext | None = None) -> TaskResult:
        """Run the named task: a validated output, or its deterministic fallback (flagged)."""
        return await self.task_service.run(name, task_input, ctx or self.context(route="tasks"))

    async def embeddings(self, request: EmbeddingsRequest | dict[str, Any],
                         ctx: RequestContext | None = None) -> dict[str, Any]:
        if not isinstance(request, EmbeddingsRequest):
            try:
                request = EmbeddingsRequest.model_validate(request)
            except ValidationError as exc:
                raise invalid_from_validation(exc) from None
        return await self.chat_service.embeddings(
            request, ctx or self.context(route="embeddings"))

    # -- introspection

    def models(self) -> list[dict[str, Any]]:
        """The aliases clients may name, in the OpenAI ``model`` object shape."""
        return [{"id": alias, "object": "model", "created": 0, "owned_by": "bastion",
                 "kind": spec.kind, "targets": [t.key for t in spec.targets]}
                for alias, spec in self.config.models.items()]

    async def ready(self) -> dict[str, Any]:
        """Readiness without calling any model: config, store, providers, breakers."""
        store_ok = await self.store.ping()
        providers = {name: p.healthy() for name, p in self.providers.items()}
        breakers = await self.pipeline.breaker_states()
        return {
            "ready": store_ok and all(providers.values()) and self._started,
            "config": {"hash": self.loaded.hash, "source": self.loaded.source,
                       "version": self.config.version},
            "store": store_ok,
            "providers": providers,
            "breakers": breakers,
        }


__all__ = ["Gateway"]
