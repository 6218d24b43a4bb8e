"""``bastion eval``: measure quality on judged datasets before trusting a config change.

``bastion eval retrieval --dataset DIR`` ingests a BEIR-format dataset into a temporary
in-memory index with the config's embedder and search settings, runs the split's queries
through lexical, dense and hybrid search, and prints nDCG@10, Recall@100, the ingestion time
and per-query latency. Nothing is downloaded: the dataset is a local directory.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bastion.config import ConfigError, load_config
from bastion.retrieval.embedder import MiniLMEmbedder
from bastion.retrieval.evaluate import METHODS, EvalReport, evaluate_retrieval, load_beir

eval_app = typer.Typer(help="Measure retrieval quality on judged datasets.",
                       no_args_is_help=True)

_LABELS = {"ingest": "embedding + indexing the corpus"}


DatasetOption = typer.Option(..., "--dataset", exists=True, file_okay=False,
                             help="A BEIR-format directory: corpus.jsonl, queries.jsonl, "
                                  "qrels/SPLIT.tsv.")
SplitOption = typer.Option("test", "--split", help="The qrels file to score against.")
JsonOption = typer.Option(False, "--json", help="Print the report as JSON.")
ConfigOption = typer.Option(None, "--config", "-c", envvar="BASTION_CONFIG",
                            help="Config whose retrieval settings to evaluate (default: "
                                 "$BASTION_CONFIG, else the embedded default).")
ThreadsOption = typer.Option(None, "--threads", min=1,
                             help="onnxruntime threads (default: every core).")


@eval_app.command("retrieval")
def retrieval(dataset: Path = DatasetOption, split: str = SplitOption,
              as_json: bool = JsonOption, config: Path | None = ConfigOption,
              threads: int | None = ThreadsOption) -> None:
    """Score lexical, dense and hybrid search on DATASET's SPLIT (nDCG@10, Recall@100)."""
    try:
        cfg = load_config(config).config.retrieval
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if not (dataset / "qrels" / f"{split}.tsv").is_file():
        typer.echo(f"{dataset}: no qrels/{split}.tsv", err=True)
        raise typer.Exit(1)
    data = load_beir(dataset, split)
    embedder_cfg = cfg.embedder.model_copy(update={"threads": threads or os.cpu_count() or 1})
    embedder = MiniLMEmbedder(embedder_cfg)
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=as_json) as bar:
        totals = {"ingest": len(data.corpus)} | dict.fromkeys(METHODS, len(data.queries))
        tasks: dict[str, TaskID] = {}

        def advance(stage: str, n: int) -> None:
            if stage not in tasks:  # created when it starts, so its clock is its own
                tasks[stage] = bar.add_task(_LABELS.get(stage, f"{stage} queries"),
                                            total=totals[stage])
            bar.advance(tasks[stage], n)
        try:
            report = asyncio.run(evaluate_retrieval(data, embedder, cfg.search, split=split,
                                                    progress=advance))
        finally:
            embedder.close()
    if as_json:
        typer.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    out = Console()
    out.print(_table(report, dataset))
    search = report.search
    fusion = search["fusion"]
    detail = (f"lexical {search['lexical_weight']}, dense {search['dense_weight']}, "
              f"{search['normalisation']}" if fusion == "convex" else f"k={search['rrf_k']}")
    out.print(f"ingestion {report.ingest_s:.1f} s ({report.embedder}, max "
              f"{embedder_cfg.max_tokens} tokens, {embedder_cfg.threads} thread(s)); "
              f"hybrid = {fusion} ({detail}) of the top {search['lexical_k']} lexical and "
              f"{search['dense_k']} dense; latency per query, one at a time")


def _table(report: EvalReport, dataset: Path) -> Table:
    table = Table(title=f"retrieval on {dataset.name} ({report.split}): {report.documents} "
                        f"documents, {report.queries} queries")
    for column in ("method", "nDCG@10", "Recall@100", "p50 ms", "p95 ms"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for m in report.methods:
        table.add_row(m.method, f"{m.ndcg_at_10:.4f}", f"{m.recall_at_100:.4f}",
                      f"{m.latency_p50_ms:.1f}", f"{m.latency_p95_ms:.1f}")
    return table
