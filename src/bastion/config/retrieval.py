"""Retrieval: where the document index lives, how documents are chunked and how search ranks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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
    #: Candidates each retriever contributes to fusion.
    lexical_k: int = Field(default=100, ge=1, le=1000)
    dense_k: int = Field(default=100, ge=1, le=1000)
    fusion: Literal["rrf", "weighted_rrf"] = "rrf"
    rrf_k: int = Field(default=60, ge=1)
    lexical_weight: float = Field(default=1.0, ge=0)
    dense_weight: float = Field(default=1.0, ge=0)


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
