"""Retrieval: where the document index lives, how documents are chunked and how search ranks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from bastion.config.base import Strict


class EmbedderConfig(Strict):
    #: onnxruntime intra-op threads for the embedded MiniLM model.
    threads: int = Field(default=1, ge=1, le=64)
    batch_size: int = Field(default=32, ge=1, le=1024)
    #: Tokens per text the model sees (all-MiniLM-L6-v2 was trained on 256).
    max_tokens: int = Field(default=256, ge=8, le=512)


class ChunkingConfig(Strict):
    max_tokens: int = Field(default=200, ge=16, le=512)
    overlap_tokens: int = Field(default=32, ge=0, le=256)


class SearchConfig(Strict):
    """How hybrid search fuses BM25 and dense rankings. The defaults won on the SciFact train
    split (BENCHMARKS.md, "Retrieval on SciFact"): a convex combination of max-normalised
    scores, 0.45 lexical / 0.55 dense, over the top 100 of each."""

    #: Candidates each retriever contributes to fusion.
    lexical_k: int = Field(default=100, ge=1, le=1000)
    dense_k: int = Field(default=100, ge=1, le=1000)
    #: ``rrf``: reciprocal rank fusion; ``weighted_rrf``: RRF with the weights below;
    #: ``convex``: ``lexical_weight * lexical + dense_weight * dense`` (normalised by their sum)
    #: of each list's scores normalised as ``normalisation`` says.
    fusion: Literal["rrf", "weighted_rrf", "convex"] = "convex"
    #: RRF's k (60 is the published default; on the SciFact train split a smaller k did better
    #: with weighted RRF: k=1, lexical 1.25 gave 0.738 nDCG@10, against convex's 0.742).
    rrf_k: int = Field(default=60, ge=1)
    lexical_weight: float = Field(default=0.45, ge=0)
    dense_weight: float = Field(default=0.55, ge=0)
    #: For ``convex``: ``max`` divides each list by its best score, ``minmax`` maps it to
    #: [0, 1], ``zscore`` standardises it.
    normalisation: Literal["max", "minmax", "zscore"] = "max"

    @model_validator(mode="after")
    def _weights(self) -> SearchConfig:
        if self.lexical_weight + self.dense_weight <= 0:
            raise ValueError("lexical_weight and dense_weight must not both be 0")
        return self


class RetrievalConfig(Strict):
    enabled: bool = True
    #: The SQLite file of the document index; None uses ``state.sqlite_path`` (and, without
    #: one, an index in memory that is lost on exit).
    sqlite_path: str | None = None
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    #: The largest document accepted for ingestion, in bytes.
    max_document_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
