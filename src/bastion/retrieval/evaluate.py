"""Retrieval quality on a BEIR-format dataset: nDCG@10 and Recall@100 of lexical, dense, hybrid.

Why: every change to tokenisation, embedding or fusion is a guess until it is measured on
judged queries. Tune on a dataset's train split, report on its test split.

The corpus is ingested into a temporary (in-memory) ``DocumentIndex`` through the same
``replace_document`` path the product uses, one chunk per corpus entry: title as the document
title, text as the chunk. BEIR corpora such as SciFact are abstracts (~300 WordPiece tokens), so
chunking would only split them; the embedding model still sees at most ``max_tokens`` of each.
A document's rank is that of its best chunk (max pooling), which is the identity here.

Metrics follow trec_eval (as BEIR's ``pytrec_eval`` does): nDCG@k with linear gains from
graded judgements and the ideal DCG from the query's judgements; Recall@k over the judged
documents with a grade above zero. Queries with no such document are not scored.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bastion.config.retrieval import SearchConfig
from bastion.domain.retrieval import AccessScope, ChunkDraft, ChunkHit, DocumentInfo
from bastion.retrieval.embedder import MiniLMEmbedder, passage_text
from bastion.retrieval.index import DocumentIndex
from bastion.retrieval.search import Retriever

METHODS = ("lexical", "dense", "hybrid")
_TENANT = "eval"
_COLLECTION = "corpus"
_EMBED_SLICE = 128

#: Called as work advances: ``("ingest", documents done)``, then ``(method, queries done)``.
Progress = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class BeirData:
    """A BEIR dataset, restricted to one split's judged queries."""

    #: doc id -> (title, text)
    corpus: dict[str, tuple[str, str]]
    #: query id -> text, only the queries judged in the split
    queries: dict[str, str]
    #: query id -> doc id -> grade
    qrels: dict[str, dict[str, int]]


def load_beir(path: str | Path, split: str = "test") -> BeirData:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv`` from ``path``."""
    root = Path(path)
    corpus: dict[str, tuple[str, str]] = {}
    with open(root / "corpus.jsonl", "rb") as lines:
        for line in lines:
            if line.strip():
                doc = orjson.loads(line)
                corpus[str(doc["_id"])] = (doc.get("title") or "", doc.get("text") or "")
    qrels: dict[str, dict[str, int]] = {}
    with open(root / "qrels" / f"{split}.tsv", newline="") as tsv:
        for row in csv.DictReader(tsv, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    queries: dict[str, str] = {}
    with open(root / "queries.jsonl", "rb") as lines:
        for line in lines:
            if line.strip():
                query = orjson.loads(line)
                if str(query["_id"]) in qrels:
                    queries[str(query["_id"])] = query["text"]
    return BeirData(corpus=corpus, queries=queries, qrels=qrels)


# -- metrics


def ndcg_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one ranking (doc ids, best first) against graded judgements."""
    dcg = sum(judged.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int = 100) -> float:
    """The share of the relevant (grade > 0) documents found in the first ``k``."""
    relevant = {doc for doc, grade in judged.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def doc_ranking(hits: Sequence[ChunkHit]) -> list[str]:
    """Documents in the order of their best chunk (max pooling over chunks)."""
    return list(dict.fromkeys(hit.doc_id for hit in hits))


# -- the run


@dataclass(frozen=True, slots=True)
class MethodResult:
    method: str
    ndcg_at_10: float
    recall_at_100: float
    latency_p50_ms: float
    latency_p95_ms: float


@dataclass(frozen=True, slots=True)
class EvalReport:
    split: str
    documents: int
    queries: int
    ingest_s: float
    embedder: str
    search: dict[str, Any]
    methods: list[MethodResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def ingest_corpus(index: DocumentIndex, embedder: MiniLMEmbedder,
                        corpus: Mapping[str, tuple[str, str]],
                        progress: Progress | None = None) -> None:
    """Embed and index every corpus entry as one document of one chunk."""
    ids = list(corpus)
    for start in range(0, len(ids), _EMBED_SLICE):
        batch = ids[start:start + _EMBED_SLICE]
        drafts = [ChunkDraft(text=corpus[d][1], position=0) for d in batch]
        vectors = await embedder.embed(
            [passage_text(corpus[d][0], c) for d, c in zip(batch, drafts, strict=True)])
        for i, doc_id in enumerate(batch):
            info = DocumentInfo(tenant=_TENANT, collection=_COLLECTION, doc_id=doc_id,
                                title=corpus[doc_id][0], content_hash="", status="indexed",
                                chunk_count=1)
            await index.replace_document(info, [drafts[i]], vectors[i:i + 1])
        if progress is not None:
            progress("ingest", len(batch))


async def evaluate_retrieval(data: BeirData, embedder: MiniLMEmbedder,
                             config: SearchConfig | None = None, *, split: str = "test",
                             progress: Progress | None = None,
                             methods: Sequence[str] = METHODS) -> EvalReport:
    """Ingest ``data.corpus`` into a fresh in-memory index and score each method on the split.

    Latency is per query, end to end through the ``Retriever`` (query embedding included for
    dense and hybrid), one query at a time. ``progress`` hears of each slice of documents
    ingested and of each query run."""
    config = config or SearchConfig()
    index = DocumentIndex(None, embedding_model=embedder.name, dim=embedder.dim)
    await index.start()
    try:
        started = time.perf_counter()
        await ingest_corpus(index, embedder, data.corpus, progress)
        ingest_s = time.perf_counter() - started
        retriever = Retriever(index, embedder, config)
        scope = AccessScope(tenant=_TENANT)
        results = []
        for method in methods:
            run = getattr(retriever, "search" if method == "hybrid" else method)
            ndcgs, recalls, latencies = [], [], []
            for qid, text in data.queries.items():
                t0 = time.perf_counter()
                hits = await run(scope, text, 100)
                latencies.append((time.perf_counter() - t0) * 1000)
                ranked = doc_ranking(hits)
                ndcgs.append(ndcg_at_k(ranked, data.qrels[qid], 10))
                recalls.append(recall_at_k(ranked, data.qrels[qid], 100))
                if progress is not None:
                    progress(method, 1)
            results.append(MethodResult(
                method=method, ndcg_at_10=_mean(ndcgs), recall_at_100=_mean(recalls),
                latency_p50_ms=_percentile(latencies, 50),
                latency_p95_ms=_percentile(latencies, 95)))
    finally:
        await index.aclose()
    return EvalReport(split=split, documents=len(data.corpus), queries=len(data.queries),
                      ingest_s=ingest_s, embedder=embedder.name, search=config.model_dump(),
                      methods=results)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0
