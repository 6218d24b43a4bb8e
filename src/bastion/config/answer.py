"""The answer service (``POST /v1/answer``): bounds, the model, the relevance floor."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bastion.config.base import Strict


class AnswerConfig(Strict):
    #: The chat alias that writes answers; None means the deterministic extractive answerer.
    model: str | None = None
    #: The prompt template (``name@version``) in ``prompts_dir`` or the packaged defaults.
    prompt: str = "answer@1"
    max_question_chars: int = Field(default=2000, ge=10, le=100_000)
    #: Chunks retrieved as candidates, then at most ``max_chunks`` of them go in the prompt,
    #: within ``max_context_tokens`` (the lowest-ranked dropped first).
    candidates: int = Field(default=20, ge=1, le=200)
    max_chunks: int = Field(default=6, ge=1, le=50)
    max_context_tokens: int = Field(default=1200, ge=50, le=100_000)
    #: Below this best dense (cosine) score and with no lexical match, retrieval found
    #: nothing relevant: the answer is ``not_enough_context`` without a model call.
    min_relevance: float = Field(default=0.25, ge=-1, le=1)
    #: Answers at or below this confidence are ``needs_review``.
    review_at: Literal["low", "medium"] = "low"
    max_tokens: int = Field(default=400, ge=16, le=8192)
    #: When every model target fails: quote the best sentences (``extractive``) or refuse.
    fallback: Literal["extractive", "refuse"] = "extractive"
