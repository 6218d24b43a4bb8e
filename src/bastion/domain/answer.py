"""What the answer service is asked and what it answers.

The outcome is typed so a caller never has to read prose to know what happened:

- ``answered``: a validated answer whose every citation is a chunk retrieved for this request;
- ``not_enough_context``: retrieval found nothing above the relevance floor, or the model said
  the sources do not contain the answer; no answer text is invented;
- ``needs_review``: an answer exists but its confidence is at or below the review threshold;
- ``refused``: no tier could produce a valid answer (and the extractive fallback is off).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Confidence = Literal["low", "medium", "high"]
CONFIDENCE_ORDER: dict[str, int] = {"low": 0, "medium": 1, "high": 2}


class AnswerOutcome(StrEnum):
    answered = "answered"
    not_enough_context = "not_enough_context"
    needs_review = "needs_review"
    refused = "refused"


@dataclass(frozen=True, slots=True)
class AnswerQuery:
    question: str
    collections: tuple[str, ...] = ()
    #: The end user's principals, as the calling backend vouches for them.
    principals: tuple[str, ...] = ()
    #: At most this many chunks in the prompt (bounded by the service's own maximum).
    max_chunks: int | None = None


_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PRINCIPAL = re.compile(r"^[^\s]{1,200}$")


class AnswerBody(BaseModel):
    """The JSON body of ``POST /v1/answer`` (the question's own bounds are the service's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str
    collections: list[str] = Field(default_factory=list, max_length=64)
    principals: list[str] = Field(default_factory=list, max_length=256)
    max_chunks: int | None = Field(default=None, ge=1, le=50)

    @field_validator("collections")
    @classmethod
    def _collections(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"{name!r} is not a collection name (1-128 of A-Z a-z 0-9 . _ : -)")
        return value

    @field_validator("principals")
    @classmethod
    def _principals(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _PRINCIPAL.match(name):
                raise ValueError(f"{name!r} is not a principal (1-200 characters, no spaces)")
        return value

    def query(self) -> AnswerQuery:
        return AnswerQuery(self.question, tuple(dict.fromkeys(self.collections)),
                           tuple(dict.fromkeys(self.principals)), self.max_chunks)


@dataclass(frozen=True, slots=True)
class Citation:
    chunk_id: str
    doc_id: str
    collection: str
    title: str
    snippet: str
    score: float


@dataclass(slots=True)
class AnswerFlags:
    """Every departure from the normal path, so none is silent."""

    #: Retrieval partly failed (for example the embedder): answered from what remained.
    reduced_context: bool = False
    #: The deterministic extractive answerer wrote the answer.
    extractive: bool = False
    #: ... because every model target failed (rather than because no model is configured).
    model_failed: bool = False
    #: Another target of the alias's fallback chain answered.
    fallback_target: bool = False
    #: Why a fallback was used (an error code), when one was.
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"reduced_context": self.reduced_context, "extractive": self.extractive,
                "model_failed": self.model_failed, "fallback_target": self.fallback_target,
                "reason": self.reason}


@dataclass(slots=True)
class AnswerResult:
    outcome: AnswerOutcome
    answer: str | None
    confidence: Confidence | None
    citations: list[Citation]
    prompt: str | None
    flags: AnswerFlags = field(default_factory=AnswerFlags)
    #: What was retrieved (chunk id, fused score) in rank order, and what went in the prompt:
    #: the metadata an operator needs to explain the answer, never the text.
    retrieved: list[tuple[str, float]] = field(default_factory=list)
    in_prompt: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {
            "object": "answer",
            "outcome": self.outcome.value,
            "answer": self.answer,
            "confidence": self.confidence,
            "citations": [{"chunk_id": c.chunk_id, "doc_id": c.doc_id,
                           "collection": c.collection, "title": c.title,
                           "snippet": c.snippet, "score": round(c.score, 6)}
                          for c in self.citations],
            "prompt": self.prompt,
            "flags": self.flags.as_dict(),
            "retrieval": {"retrieved": [{"chunk_id": cid, "score": round(score, 6)}
                                        for cid, score in self.retrieved],
                          "in_prompt": self.in_prompt},
        }
