"""Retrieval evaluation: metric definitions on hand-computed cases, the BEIR loader, and a
smoke run of ``bastion eval retrieval`` on a 50-document slice of SciFact.

The smoke run checks the shape of the output (three methods, numbers in [0, 1]), never a
score: quality is measured by the full run recorded in BENCHMARKS.md, not by the test suite.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from bastion.cli import app
from bastion.domain.retrieval import ChunkHit
from bastion.retrieval.evaluate import doc_ranking, load_beir, ndcg_at_k, recall_at_k


def _scifact() -> Path:
    """$BASTION_SCIFACT, else ../shared beside this checkout, else the workspace's copy (a CI
    checkout may live elsewhere)."""
    if "BASTION_SCIFACT" in os.environ:
        return Path(os.environ["BASTION_SCIFACT"])
    for candidate in (Path(__file__).resolve().parents[2] / "shared/data/scifact",
                      Path("/work/shared/data/scifact")):
        if (candidate / "corpus.jsonl").is_file():
            return candidate
    return Path("/work/shared/data/scifact")


SCIFACT = _scifact()


def test_ndcg_with_binary_judgements() -> None:
    # Relevant at ranks 1 and 3: DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3).
    assert ndcg_at_k(["d1", "d2", "d3"], {"d1": 1, "d3": 1}) == pytest.approx(
        1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["d1", "d3", "d2"], {"d1": 1, "d3": 1}) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], {"d1": 1}) == 0.0


def test_ndcg_with_graded_judgements_uses_linear_gains() -> None:
    # DCG = 1 + 2/log2(3); ideal puts the grade 2 first: 2 + 1/log2(3).
    assert ndcg_at_k(["a", "b"], {"a": 1, "b": 2}) == pytest.approx(
        (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_ndcg_cuts_at_k_and_ignores_grade_zero() -> None:
    ranked = [f"n{i}" for i in range(10)] + ["rel"]
    assert ndcg_at_k(ranked, {"rel": 1}, 10) == 0.0
    assert ndcg_at_k(ranked, {"rel": 1}, 11) == pytest.approx(1 / math.log2(12))
    assert ndcg_at_k(["a"], {"a": 1, "zero": 0}) == pytest.approx(1.0)
    assert ndcg_at_k(["a"], {"zero": 0}) == 0.0


def test_recall_counts_relevant_documents_found_in_the_first_k() -> None:
    assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 2, "c": 1}, 100) == pytest.approx(2 / 3)
    assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 2, "c": 1}, 2) == pytest.approx(1 / 3)
    assert recall_at_k(["a"], {"a": 0, "b": 1}) == 0.0
    assert recall_at_k(["a"], {"a": 0}) == 0.0


def test_a_document_ranks_where_its_best_chunk_does() -> None:
    def hit(doc: str, position: int) -> ChunkHit:
        return ChunkHit(chunk_id=f"c/{doc}#{position}", doc_id=doc, collection="c", title="",
                        text="", position=position, score=0.0, rank=0)
    assert doc_ranking([hit("a", 1), hit("b", 0), hit("a", 0)]) == ["a", "b"]


def write_beir(root: Path, corpus: list[dict], queries: list[dict],
               qrels: dict[str, list[tuple[str, str, int]]]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_bytes(b"\n".join(orjson.dumps(d) for d in corpus) + b"\n")
    (root / "queries.jsonl").write_bytes(b"\n".join(orjson.dumps(q) for q in queries) + b"\n")
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + ["\t".join(map(str, r)) for r in rows]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_load_beir_keeps_only_the_splits_judged_queries(tmp_path: Path) -> None:
    root = write_beir(
        tmp_path / "tiny",
        [{"_id": "d1", "title": "T", "text": "x"}, {"_id": "d2", "text": "y"}],
        [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}],
        {"test": [("q1", "d1", 1), ("q1", "d2", 2)], "train": [("q2", "d2", 1)]})
    data = load_beir(root, "test")
    assert data.corpus == {"d1": ("T", "x"), "d2": ("", "y")}
    assert data.queries == {"q1": "first"}
    assert data.qrels == {"q1": {"d1": 1, "d2": 2}}


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 SciFact abstracts: the relevant ones of the first test queries, then others."""
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT} (set BASTION_SCIFACT)")
    full = load_beir(SCIFACT, "test")
    keep: dict[str, None] = {}
    queries = []
    for qid in sorted(full.qrels, key=int):
        if len(keep) + len(full.qrels[qid]) > 25:
            break
        queries.append(qid)
        keep.update(dict.fromkeys(full.qrels[qid]))
    for doc_id in full.corpus:
        if len(keep) == 50:
            break
        keep.setdefault(doc_id, None)
    return write_beir(
        tmp_path_factory.mktemp("scifact") / "slice",
        [{"_id": d, "title": full.corpus[d][0], "text": full.corpus[d][1]} for d in keep],
        [{"_id": q, "text": full.queries[q]} for q in queries],
        {"test": [(q, d, g) for q in queries for d, g in full.qrels[q].items()]})


def test_eval_retrieval_cli_prints_every_method(scifact_slice: Path, tmp_path: Path) -> None:
    config = tmp_path / "bastion.yaml"
    # Short inputs keep the smoke run fast; quality is not under test here.
    config.write_text("version: 1\nproviders: {sim: {type: simulated}}\n"
                      "models: {m: {targets: [{provider: sim, model: m}]}}\n"
                      "retrieval:\n  embedder: {max_tokens: 96, batch_size: 16}\n")
    runner = CliRunner()
    table = runner.invoke(app, ["eval", "retrieval", "--dataset", str(scifact_slice),
                                "--config", str(config), "--threads", "2"])
    assert table.exit_code == 0, table.output
    for method in ("lexical", "dense", "hybrid"):
        row = re.search(rf"{method}\s*│\s*([\d.]+)\s*│\s*([\d.]+)", table.output)
        assert row is not None, table.output
        assert all(0.0 <= float(v) <= 1.0 for v in row.groups())
    assert "50 documents" in table.output

    as_json = runner.invoke(app, ["eval", "retrieval", "--dataset", str(scifact_slice),
                                  "--config", str(config), "--threads", "2", "--json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert [m["method"] for m in report["methods"]] == ["lexical", "dense", "hybrid"]
    for m in report["methods"]:
        assert 0.0 <= m["ndcg_at_10"] <= 1.0 and 0.0 <= m["recall_at_100"] <= 1.0
        assert m["latency_p95_ms"] >= m["latency_p50_ms"] >= 0.0
    assert report["documents"] == 50 and report["ingest_s"] > 0


def test_eval_retrieval_cli_refuses_a_missing_split(tmp_path: Path) -> None:
    root = write_beir(tmp_path / "tiny", [{"_id": "d1", "text": "x"}],
                      [{"_id": "q1", "text": "x"}], {"train": [("q1", "d1", 1)]})
    result = CliRunner().invoke(app, ["eval", "retrieval", "--dataset", str(root)])
    assert result.exit_code == 1
    assert "qrels/test.tsv" in result.output
