"""The library entry point: the whole pipeline, in-process, no network hop.

    gateway = Gateway.from_config("bastion.yaml")
    async with gateway:
        result = await gateway.chat({"model": "smollm2", "messages": [...]})
        print(result.response["choices"][0]["message"]["content"], result.target)

The HTTP server is a thin layer over exactly this object.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ValidationError

from bastion.config import ConfigError, LoadedConfig, load_config
from bastion.domain.answer import AnswerBody, AnswerQuery, AnswerResult
from bastion.domain.chat import ChatRequest, EmbeddingsRequest
from bastion.domain.context import Priority, RequestContext
from bastion.domain.errors import InvalidRequest, NotFound
from bastion.domain.retrieval import AccessScope
from bastion.domain.rules import RuleSpec
from bastion.domain.tokens import estimate_prompt_tokens, estimate_text_tokens
from bastion.observability.content_log import ContentLog
from bastion.observability.journal import RequestJournal
from bastion.observability.tracing import build_tracer
from bastion.pipeline.builder import ChatPipeline
from bastion.pipeline.contract import OutputContract, RuleContext
from bastion.providers.base import Provider
from bastion.providers.registry import build_provider
from bastion.retrieval.embedder import MiniLMEmbedder
from bastion.retrieval.index import DocumentIndex
from bastion.retrieval.search import Retriever
from bastion.services.admission import AdmissionService, Ticket
from bastion.services.answer import ANSWER_PROMPT_VARIABLES, AnswerService
from bastion.services.cache import ResponseCache
from bastion.services.chat import ChatResult, ChatService, ChatStreamResult
from bastion.services.idempotency import IdempotencyGuard
from bastion.services.identity import IdentityService
from bastion.services.ingest import IngestResult, IngestService
from bastion.services.ledger import UsageLedger
from bastion.services.prompts import PromptLibrary, PromptTemplate, check_variables
from bastion.services.tasks import TaskResult, TaskService, compile_tasks
from bastion.state import build_stores
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


_DEFAULT_PROMPTS = Path(__file__).parent / "defaults" / "prompts"


def _index_path(retrieval_path: str | None, state_path: str | None) -> str | None:
    """The document index's SQLite file: its own, else the state file, else memory."""
    path = retrieval_path or state_path
    return None if path is None else str(Path(path).expanduser())


def _answer_template(prompts: PromptLibrary, ref: str, source: str) -> PromptTemplate:
    """The answer prompt from the config's prompts, else from the packaged defaults; its
    variables are checked at start-up like a task's."""
    for library in (prompts, PromptLibrary.load(_DEFAULT_PROMPTS)):
        if ref in library:
            template = library.get(ref)
            unknown = check_variables(template, ANSWER_PROMPT_VARIABLES)
            if unknown:
                allowed = ", ".join(sorted(ANSWER_PROMPT_VARIABLES))
                reason = (f"{template.ref} uses {', '.join(unknown)}; an answer prompt may use "
                          f"only {allowed}")
                raise ConfigError(source, [("answer.prompt", reason)])
            return template
    reason = f"no prompt template {ref!r} in prompts_dir or the packaged defaults"
    raise ConfigError(source, [("answer.prompt", reason)])


M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")


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
        """``store`` replaces the hot-state store (tests share one between gateways)."""
        self.loaded = loaded
        self.config = loaded.config
        self.stores = build_stores(self.config.state, hot=store,
                                   journal=self.config.observability.journal,
                                   cache_entries=self.config.cache.max_entries)
        self.store: KeyValueStore = self.stores.hot
        self.providers: dict[str, Provider] = providers if providers is not None else {
            name: build_provider(name, cfg) for name, cfg in self.config.providers.items()
        }
        self.pipeline = ChatPipeline(self.config, self.providers, self.store, seed=seed)
        self.chat_service = ChatService(self.pipeline)
        self.prompts = _load_prompts(loaded)
        self.task_service = TaskService(
            compile_tasks(self.config, self.prompts, loaded.source), self.chat_service)
        self.identity = IdentityService(self.stores.identity,
                                        cache_ttl_s=self.config.auth.key_recheck_s,
                                        cache_entries=self.config.auth.key_cache_entries)
        self.ledger = UsageLedger(self.stores.ledger, self.config.ledger)
        self.journal = RequestJournal(self.stores.journal, self.config.observability.journal)
        self.content_log = ContentLog(self.config.observability.content_logging)
        self.admission = AdmissionService(self.config, self.store, self.stores.durable,
                                          self.ledger)
        # In this process's memory the cache gets a store of its own, bounded by count; a
        # shared store keeps entries for their lifetime.
        cache_store = (self.store if self.store.shared
                       else MemoryStore(capacity=self.config.cache.max_entries))
        self.cache = ResponseCache(cache_store, self.config.cache)
        self.idempotency = IdempotencyGuard(self.stores.durable, self.config.idempotency)
        # -- retrieval: documents (ingest) and the index search reads. The index opens at
        # start(); the embedding model loads on first use, so a gateway that never ingests
        # or searches pays nothing for it.
        self.embedder = MiniLMEmbedder(self.config.retrieval.embedder)
        self.index = DocumentIndex(_index_path(self.config.retrieval.sqlite_path,
                                               self.stores.path),
                                   embedding_model=self.embedder.name, dim=self.embedder.dim)
        self.ingest = IngestService(self.index, self.embedder, self.config.retrieval)
        self.retriever = Retriever(self.index, self.embedder, self.config.retrieval.search)
        self.answer_service = AnswerService(
            self.config.answer, self.retriever, self.chat_service,
            _answer_template(self.prompts, self.config.answer.prompt, loaded.source),
            self.embedder.count_tokens)
        # -- end retrieval
        #: None unless an OTLP endpoint is configured (then OpenTelemetry is imported).
        self.tracer = build_tracer(self.config.observability.tracing)
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
        await self.ledger.start()
        await self.admission.start()
        await self.journal.start()
        if self.config.retrieval.enabled:
            await self.index.start()
        self._started = True

    async def aclose(self) -> None:
        """Stop the providers, write every pending ledger row, close the stores."""
        try:
            for provider in self.providers.values():
                await provider.aclose()
            await self.admission.aclose()
            await self.ledger.aclose()
            await self.journal.aclose()
            await self.index.aclose()
            self.embedder.close()
        finally:
            if self.tracer is not None:
                await self.tracer.aclose()  # flushes the spans still queued
            await self.stores.aclose()
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

    async def _enter(self, ctx: RequestContext, alias: str, prompt_tokens: int,
                     max_output: int | None) -> Ticket:
        return await ctx.staged("admission", self.admission.enter(ctx, alias, prompt_tokens,
                                                                  max_output))

    async def _admitted(self, ctx: RequestContext, alias: str, prompt_tokens: int,
                        max_output: int | None, run: Callable[[], Awaitable[R]]) -> R:
        """Run ``run`` between admission and the bookkeeping that settles it."""
        ticket = await self._enter(ctx, alias, prompt_tokens, max_output)
        try:
            result = await run()
        except BaseException as exc:
            await self.admission.leave(ticket, ctx, exc)
            raise
        await self.admission.leave(ticket, ctx)
        return result

    async def answer(self, query: AnswerQuery | dict[str, Any],
                     ctx: RequestContext | None = None) -> AnswerResult:
        """A question answered from the tenant's documents (``POST /v1/answer``): a typed
        outcome with checked citations; see ``services.answer``. The tenant comes from
        ``ctx``; ``query`` names the collections and the end user's principals."""
        if isinstance(query, dict):
            try:
                query = AnswerBody.model_validate(query).query()
            except ValidationError as exc:
                raise invalid_from_validation(exc) from None
        if not self.config.retrieval.enabled:
            raise NotFound("retrieval is disabled in this gateway's config (retrieval.enabled)")
        ctx = ctx or self.context(route="answer")
        scope = AccessScope(ctx.tenant, query.collections, query.principals)
        settings = self.config.answer
        prompt_tokens = estimate_text_tokens(query.question) + settings.max_context_tokens
        answered = query

        async def run() -> AnswerResult:
            return await self.answer_service.answer(answered, scope, ctx)

        result = await self._admitted(ctx, settings.model or "extractive", prompt_tokens,
                                      settings.max_tokens if settings.model else 0, run)
        if self.content_log.on:
            self.content_log.record(ctx, query.question, result.answer)
        return result

    async def ingest_document(self, ctx: RequestContext, **document: Any) -> IngestResult:
        """``IngestService.ingest`` for ``ctx``'s tenant, through admission, since embedding a
        large document is real work: requests-per-minute and concurrency limits, load shedding
        (``batch`` priority is shed first) and a ledger row on route ``documents``. While it
        runs, about a token per 4 bytes is held against the tokens-per-minute limit; no model
        tokens are spent, so none stay charged."""
        size = len(document.get("data") or b"")

        async def run() -> IngestResult:
            return await ctx.staged("ingest", self.ingest.ingest(tenant=ctx.tenant, **document))

        return await self._admitted(ctx, "ingest", size // 4, 0, run)

    async def reindex_document(self, ctx: RequestContext, collection: str,
                               doc_id: str) -> IngestResult:
        async def run() -> IngestResult:
            return await ctx.staged("ingest", self.ingest.reindex(ctx.tenant, collection, doc_id))

        return await self._admitted(ctx, "ingest", 0, 0, run)

    async def chat(self, request: ChatRequest | dict[str, Any],
                   ctx: RequestContext | None = None, *, cache_control: str = "") -> ChatResult:
        """A complete chat completion through admission, the cache and the pipeline, or a
        classified error. ``cache_control`` takes the HTTP header's directives."""
        chat = self.parse_chat(request)
        ctx = ctx or self.context()
        value: list[Any] = [None]

        async def produce() -> dict[str, Any]:
            result = await self.chat_service.complete(chat, ctx)
            value[0] = result.value
            return result.response

        async def run() -> dict[str, Any]:
            return await self.cache.complete(chat, ctx, produce, cache_control)

        response = await self._admitted(ctx, chat.model, estimate_prompt_tokens(chat),
                                        chat.output_token_limit, run)
        if self.content_log.on:
            self.content_log.record(ctx, chat.model_dump(include={"messages"})["messages"],
                                    [c.get("message") for c in response.get("choices", [])])
        return ChatResult(response, ctx, value[0])

    async def chat_stream(self, request: ChatRequest | dict[str, Any],
                          ctx: RequestContext | None = None) -> ChatStreamResult:
        """An opened stream (retries and fallbacks happen before this returns). Admission is
        settled when the stream ends, fails or is closed."""
        chat = self.parse_chat(request)
        ctx = ctx or self.context()
        ticket = await self._enter(ctx, chat.model, estimate_prompt_tokens(chat),
                                   chat.output_token_limit)
        try:
            opened = await self.chat_service.stream(chat, ctx)
        except BaseException as exc:
            await self.admission.leave(ticket, ctx, exc)
            raise

        async def settle(outcome: BaseException | None) -> None:
            await self.admission.leave(ticket, ctx, outcome)

        opened.on_finish.append(settle)
        return opened

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
        ctx = ctx or self.context()

        async def run() -> ChatResult:
            return await self.chat_service.complete(request, ctx, contract=contract)

        result = await self._admitted(ctx, alias, estimate_prompt_tokens(request),
                                      request.output_token_limit, run)
        return result.value  # type: ignore[no-any-return]

    async def task(self, name: str, task_input: dict[str, Any],
                   ctx: RequestContext | None = None) -> TaskResult:
        """Run the named task: a validated output, or its deterministic fallback (flagged)."""
        ctx = ctx or self.context(route="tasks")
        task = self.task_service.get(name)

        async def run() -> TaskResult:
            return await self.task_service.run(name, task_input, ctx)

        tokens = estimate_text_tokens(task_input) + estimate_text_tokens(
            [m.source for m in task.template.messages])
        result = await self._admitted(ctx, task.config.model, tokens, task.config.max_tokens,
                                      run)
        if self.content_log.on:
            self.content_log.record(ctx, task_input, result.output)
        return result

    async def embeddings(self, request: EmbeddingsRequest | dict[str, Any],
                         ctx: RequestContext | None = None) -> dict[str, Any]:
        if not isinstance(request, EmbeddingsRequest):
            try:
                request = EmbeddingsRequest.model_validate(request)
            except ValidationError as exc:
                raise invalid_from_validation(exc) from None
        embed = request
        ctx = ctx or self.context(route="embeddings")

        async def run() -> dict[str, Any]:
            return await self.chat_service.embeddings(embed, ctx)

        return await self._admitted(ctx, embed.model, estimate_text_tokens(embed.input), 0, run)

    # -- introspection

    def models(self) -> list[dict[str, Any]]:
        """The aliases clients may name, in the OpenAI ``model`` object shape."""
        return [{"id": alias, "object": "model", "created": 0, "owned_by": "bastion",
                 "kind": spec.kind, "targets": [t.key for t in spec.targets]}
                for alias, spec in self.config.models.items()]

    async def ready(self) -> dict[str, Any]:
        """Readiness without calling any model: config, store, providers, breakers."""
        store_ok = await self.store.ping() and await self.stores.durable.ping()
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
