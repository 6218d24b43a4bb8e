"""The answer service: explicit RAG, every stage visible, citations checked, honest when the
sources do not say.

1. The question is normalised and bounded.
2. Retrieval (hybrid, access-scoped inside the search). If it fails, lexical search alone is
   tried and the answer is flagged ``reduced_context``; if that fails too, the answer says it
   cannot (``not_enough_context`` with the reason).
3. The relevance floor: when the best dense (cosine) score is below ``answer.min_relevance``,
   nothing relevant was found and no model is asked.
4. Chunks are selected by rank within ``max_chunks`` and ``max_context_tokens``, the
   lowest-ranked dropped first.
5. The model writes ``answer``, ``confidence``, ``cited_chunk_ids`` and
   ``insufficient_context`` under the output contract: the schema, at least one citation, and
   every cited id one of the chunks in the prompt. One repair, then the fallback chain.
6. When every target fails (or no model is configured), the deterministic extractive answerer
   quotes the best supporting sentences with their citations, flagged as such.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from bastion.config import AnswerConfig
from bastion.domain.answer import (
    CONFIDENCE_ORDER,
    AnswerFlags,
    AnswerOutcome,
    AnswerQuery,
    AnswerResult,
    Citation,
)
from bastion.domain.chat import ChatRequest
from bastion.domain.context import RequestContext
from bastion.domain.errors import DeadlineExceeded, DependencyError, InvalidRequest
from bastion.domain.retrieval import AccessScope, ChunkHit
from bastion.domain.rules import Custom, MaxLength, SubsetOf
from bastion.pipeline.contract import OutputContract, RuleContext
from bastion.pipeline.contract.rules import register_rule
from bastion.retrieval.extractive import ExtractiveAnswer, extractive_answer
from bastion.services.chat import ChatService
from bastion.services.prompts import PromptTemplate

#: What the model must return (sent upstream as a strict json_schema response format).
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["answer", "confidence", "cited_chunk_ids", "insufficient_context"],
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "string", "enum": ["low", "medium", "high"]},
        "cited_chunk_ids": {"type": "array", "items": {"type": "string"}},
        "insufficient_context": {"type": "boolean"},
    },
}
#: What an answer prompt template is rendered with.
ANSWER_PROMPT_VARIABLES = frozenset({"question", "sources"})
MAX_ANSWER_CHARS = 4000
SNIPPET_CHARS = 300
_CITATIONS_RULE = "answer_citations"
ANSWER_RULES = (
    MaxLength(rule="max_length", field="answer", max=MAX_ANSWER_CHARS),
    SubsetOf(rule="subset_of", field="cited_chunk_ids[]", source="chunk_ids"),
    Custom(rule="custom", name=_CITATIONS_RULE),
)


@register_rule(_CITATIONS_RULE)
def _answer_citations(value: Any, ctx: RuleContext) -> Iterable[str]:
    """An answer cites at least one source and has text; "insufficient" cites none."""
    if not isinstance(value, dict):
        return
    if value.get("insufficient_context") is True:
        if value.get("cited_chunk_ids"):
            yield "$.cited_chunk_ids: must be empty when insufficient_context is true"
        return
    if not value.get("cited_chunk_ids"):
        yield "$.cited_chunk_ids: cite at least one source id"
    if not str(value.get("answer") or "").strip():
        yield "$.answer: must not be empty"


class Searcher(Protocol):
    """What the answer service needs of retrieval (``bastion.retrieval.Retriever``)."""

    async def search(self, scope: AccessScope, query: str, k: int) -> list[ChunkHit]: ...

    async def lexical(self, scope: AccessScope, query: str, k: int) -> list[ChunkHit]: ...


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACE = re.compile(r"\s+")


def normalize_question(text: Any, max_chars: int) -> str:
    """NFC, no control characters, collapsed whitespace; bounded; never empty."""
    if not isinstance(text, str):
        raise InvalidRequest("question must be a string", param="question")
    question = _SPACE.sub(" ", _CONTROL.sub(" ", unicodedata.normalize("NFC", text))).strip()
    if not question:
        raise InvalidRequest("question must not be empty", param="question")
    if len(question) > max_chars:
        raise InvalidRequest(f"question is {len(question)} characters; the limit is {max_chars}",
                             param="question")
    return question


def select_context(hits: Sequence[ChunkHit], *, max_chunks: int, max_tokens: int,
                   count_tokens: Callable[[str], int]) -> list[ChunkHit]:
    """The best-ranked chunks that fit: a chunk that would overflow the token budget is
    skipped (a later, smaller one may still fit), so the lowest-ranked are dropped first."""
    chosen: list[ChunkHit] = []
    used = 0
    for hit in sorted(hits, key=lambda h: h.rank):
        if len(chosen) >= max_chunks:
            break
        tokens = count_tokens(hit.text)
        if used + tokens > max_tokens:
            continue
        chosen.append(hit)
        used += tokens
    return chosen


def _source(hit: ChunkHit) -> dict[str, str]:
    # A document must not be able to close its own source block or forge another one.
    text = hit.text.replace("</source", "</ source").replace("<source", "< source")
    title = _SPACE.sub(" ", hit.title).replace('"', "'")[:200]
    return {"id": hit.chunk_id, "title": title, "text": text}


def _snippet(text: str, quote: str | None = None) -> str:
    snippet = quote if quote else text
    snippet = _SPACE.sub(" ", snippet).strip()
    return snippet if len(snippet) <= SNIPPET_CHARS else snippet[:SNIPPET_CHARS - 1] + "…"


class AnswerService:
    def __init__(self, config: AnswerConfig, retriever: Searcher, chat: ChatService,
                 template: PromptTemplate, count_tokens: Callable[[str], int]) -> None:
        self.config = config
        self.retriever = retriever
        self.chat = chat
        self.template = template
        self.count_tokens = count_tokens

    async def answer(self, query: AnswerQuery, scope: AccessScope,
                     ctx: RequestContext) -> AnswerResult:
        question = normalize_question(query.question, self.config.max_question_chars)
        flags = AnswerFlags()
        started = time.monotonic()
        hits = await self._retrieve(scope, question, flags)
        ctx.add_stage("retrieval", started, flags.reason or "ok")
        retrieved = [(h.chunk_id, h.score) for h in hits]
        ctx.retrieved = retrieved
        if not hits or not self._relevant(hits):
            flags.reason = flags.reason or "below_relevance_floor"
            return AnswerResult(AnswerOutcome.not_enough_context, None, None, [], None, flags,
                                retrieved)
        max_chunks = min(query.max_chunks or self.config.max_chunks, self.config.max_chunks)
        context = select_context(hits, max_chunks=max_chunks,
                                 max_tokens=self.config.max_context_tokens,
                                 count_tokens=self.count_tokens)
        if not context:
            flags.reason = "context_budget"
            return AnswerResult(AnswerOutcome.not_enough_context, None, None, [], None, flags,
                                retrieved)
        in_prompt = [h.chunk_id for h in context]
        if self.config.model is None:
            flags.extractive = True
            started = time.monotonic()
            result = self._extractive(question, context, flags)
            ctx.add_stage("extractive", started)
        else:
            result = await self._generate(question, context, ctx, flags)
        result.retrieved, result.in_prompt = retrieved, in_prompt
        return result

    async def _retrieve(self, scope: AccessScope, question: str,
                        flags: AnswerFlags) -> list[ChunkHit]:
        k = self.config.candidates
        try:
            return await self.retriever.search(scope, question, k)
        except Exception:  # noqa: BLE001 - any retrieval failure degrades, visibly
            flags.reduced_context = True
            flags.reason = "hybrid_retrieval_failed"
        try:
            return await self.retriever.lexical(scope, question, k)
        except Exception:  # noqa: BLE001
            flags.reason = "retrieval_unavailable"
            return []

    def _relevant(self, hits: Sequence[ChunkHit]) -> bool:
        dense = [h.dense_score for h in hits if h.dense_score is not None]
        if not dense:  # reduced mode (lexical only): a lexical match is the only evidence
            return any(h.lexical_score for h in hits)
        return max(dense) >= self.config.min_relevance

    async def _generate(self, question: str, context: list[ChunkHit], ctx: RequestContext,
                        flags: AnswerFlags) -> AnswerResult:
        ctx.prompt = self.template.ref
        messages = self.template.render({"question": question,
                                         "sources": [_source(h) for h in context]})
        request = ChatRequest.model_validate({
            "model": self.config.model, "messages": messages,
            "max_tokens": self.config.max_tokens, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "answer", "strict": True, "schema": ANSWER_SCHEMA}},
        })
        contract = OutputContract.for_request(
            request, rules=ANSWER_RULES,
            rule_context=RuleContext(values={"chunk_ids": [h.chunk_id for h in context]}))
        try:
            result = await self.chat.complete(request, ctx, contract=contract)
        except (DependencyError, DeadlineExceeded) as exc:
            flags.model_failed = True
            flags.reason = exc.code
            if self.config.fallback != "extractive":
                return AnswerResult(AnswerOutcome.refused, None, None, [], self.template.ref,
                                    flags)
            flags.extractive = True
            return self._extractive(question, context, flags)
        flags.fallback_target = result.fallback_used
        value: dict[str, Any] = result.value
        if value["insufficient_context"]:
            return AnswerResult(AnswerOutcome.not_enough_context, None, None, [],
                                self.template.ref, flags)
        by_id = {h.chunk_id: h for h in context}
        cited = list(dict.fromkeys(value["cited_chunk_ids"]))
        citations = [Citation(h.chunk_id, h.doc_id, h.collection, h.title, _snippet(h.text),
                              h.score) for h in (by_id[c] for c in cited)]
        return AnswerResult(self._outcome(value["confidence"]), value["answer"].strip(),
                            value["confidence"], citations, self.template.ref, flags)

    def _extractive(self, question: str, context: list[ChunkHit],
                    flags: AnswerFlags) -> AnswerResult:
        found: ExtractiveAnswer | None = extractive_answer(question, context)
        if found is None:
            flags.reason = flags.reason or "no_supporting_sentence"
            return AnswerResult(AnswerOutcome.not_enough_context, None, None, [], None, flags)
        by_id = {h.chunk_id: h for h in context}
        citations = [Citation(q.chunk_id, by_id[q.chunk_id].doc_id, by_id[q.chunk_id].collection,
                              by_id[q.chunk_id].title, _snippet(q.sentence),
                              by_id[q.chunk_id].score) for q in found.quotes]
        return AnswerResult(self._outcome(found.confidence), found.text, found.confidence,
                            citations, None, flags)

    def _outcome(self, confidence: str) -> AnswerOutcome:
        if CONFIDENCE_ORDER[confidence] <= CONFIDENCE_ORDER[self.config.review_at]:
            return AnswerOutcome.needs_review
        return AnswerOutcome.answered
