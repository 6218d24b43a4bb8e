"""``bastion ingest PATH... --collection C``: index files and directories into the document index.

It works on the index file of the config (``retrieval.sqlite_path``, else
``state.sqlite_path``) directly, like ``bastion tenants``: no server needed, no body limit,
and a running server sees the documents at once (they share the SQLite file in WAL mode).

Directories are walked for ``.txt .md .markdown .html .htm .pdf`` files (hidden ones
skipped); a file named on the command line is ingested whatever its extension. A document's id
is its path relative to the directory given (or its name, for a file given directly), with
``/`` as ``:`` - so running the same command again re-indexes only what changed, and a file
moved to another directory is another document. Exit status 1 when any file failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bastion.config import ConfigError, RetrievalConfig, load_config
from bastion.domain.errors import BastionError
from bastion.retrieval.embedder import MiniLMEmbedder
from bastion.retrieval.index import DocumentIndex
from bastion.services.ingest import IngestService, validate_access, validate_id

EXTENSIONS = frozenset({".txt", ".md", ".markdown", ".html", ".htm", ".pdf"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(slots=True)
class Summary:
    indexed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def make_embedder(config: RetrievalConfig) -> MiniLMEmbedder:
    """The embedder the index is built with (a seam for tests)."""
    return MiniLMEmbedder(config.embedder)


def doc_id_for(relative: Path) -> str:
    """A stable, valid document id for a relative path: ``guide/intro.md`` is
    ``guide:intro.md``; other characters become ``_`` and a short hash keeps ids distinct."""
    raw = relative.as_posix()
    safe = ":".join(_UNSAFE.sub("_", part) for part in relative.parts)
    if safe != raw.replace("/", ":") or len(safe) > 128:
        digest = hashlib.sha256(raw.encode("utf-8", errors="surrogateescape")).hexdigest()
        safe = f"{safe[:119]}-{digest[:8]}"
    return safe


def discover(paths: list[Path]) -> Iterator[tuple[Path, str]]:
    """``(file, doc id)`` for every file to ingest, in a stable order, each once."""
    seen: set[str] = set()
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in EXTENSIONS
                           and not any(part.startswith(".") for part in
                                       p.relative_to(path).parts))
            pairs = [(p, doc_id_for(p.relative_to(path))) for p in files]
        else:
            pairs = [(path, doc_id_for(Path(path.name)))]
        for file, doc_id in pairs:
            if doc_id not in seen:
                seen.add(doc_id)
                yield file, doc_id


_PATHS = typer.Argument(..., exists=True, metavar="PATH...", help="Files and directories.")
_COLLECTION = typer.Option(..., "--collection", "-C", help="The collection to fill.")
_TENANT = typer.Option("default", "--tenant", "-t", help="The tenant owning the documents.")
_ACCESS = typer.Option([], "--access", "-a",
                       help="A principal allowed to see the documents (user:alice, group:eng);"
                            " repeat for several. None: everyone of the tenant.")
_CONFIG = typer.Option(None, "--config", "-c", envvar="BASTION_CONFIG",
                       help="Config whose index file to write (default: $BASTION_CONFIG, "
                            "else the embedded default).")


def ingest(paths: list[Path] = _PATHS, collection: str = _COLLECTION, tenant: str = _TENANT,
           access: list[str] = _ACCESS, config: Path | None = _CONFIG) -> None:
    """Index files (.txt .md .html .pdf) and directories into COLLECTION; unchanged files
    are skipped, changed ones replaced."""
    try:
        validate_id(collection, "collection")
        validate_id(tenant, "tenant")
        principals = validate_access(access)
    except BastionError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    retrieval, index_path = _index_config(config)
    files = list(discover(paths))
    if not files:
        typer.echo(f"no files to ingest (looked for {' '.join(sorted(EXTENSIONS))})",
                   err=True)
        raise typer.Exit(1)
    summary = asyncio.run(_ingest_all(files, retrieval, index_path, tenant=tenant,
                                      collection=collection, access=principals))
    for name, reason in summary.failed:
        typer.echo(f"failed    {name}: {reason}", err=True)
    typer.echo(f"{len(files)} file(s) into {tenant}/{collection}: {len(summary.indexed)} "
               f"indexed, {len(summary.unchanged)} unchanged, {len(summary.failed)} failed "
               f"(index {index_path})")
    if summary.failed:
        raise typer.Exit(1)


def _index_config(config: Path | None) -> tuple[RetrievalConfig, str]:
    try:
        cfg = load_config(config).config
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    path = cfg.retrieval.sqlite_path or cfg.state.sqlite_path
    if path is None:
        typer.echo("ingesting needs a durable index: set retrieval.sqlite_path or "
                   "state.sqlite_path in the config (and pass it with --config)", err=True)
        raise typer.Exit(1)
    return cfg.retrieval, str(Path(path).expanduser())


async def _ingest_all(files: list[tuple[Path, str]], config: RetrievalConfig, index_path: str,
                      *, tenant: str, collection: str, access: tuple[str, ...]) -> Summary:
    embedder = make_embedder(config)
    index = DocumentIndex(index_path, embedding_model=embedder.name, dim=embedder.dim)
    summary = Summary()
    try:
        try:
            await index.start()
        except Exception as exc:  # noqa: BLE001 - a bad path, another model: nothing to do
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        service = IngestService(index, embedder, config)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True)) as bar:
            task = bar.add_task("ingesting", total=len(files))
            for path, doc_id in files:
                bar.update(task, description=f"ingesting {_short(doc_id)}")
                await _one(service, path, doc_id, summary, tenant=tenant,
                           collection=collection, access=access)
                bar.advance(task)
            bar.update(task, description="ingested")
    finally:
        await index.aclose()
        embedder.close()
    return summary


async def _one(service: IngestService, path: Path, doc_id: str, summary: Summary, *,
               tenant: str, collection: str, access: tuple[str, ...]) -> None:
    """Ingest one file; its failure is recorded in the summary and never stops the run."""
    limit = service.config.max_document_bytes
    try:
        size = path.stat().st_size
        if size > limit:
            reason = f"{size} bytes is over the limit of {limit} (retrieval.max_document_bytes)"
            summary.failed.append((doc_id, reason))
            return
        data = path.read_bytes()
        result = await service.ingest(tenant=tenant, collection=collection, doc_id=doc_id,
                                      data=data, media_type=None, filename=path.name,
                                      access=access)
    except BastionError as exc:
        summary.failed.append((doc_id, exc.message))
        return
    except OSError as exc:
        summary.failed.append((doc_id, f"cannot read {path}: {exc.strerror or exc}"))
        return
    except Exception as exc:  # noqa: BLE001 - one file's surprise must not stop the run
        summary.failed.append((doc_id, f"{type(exc).__name__}: {exc}"))
        return
    (summary.indexed if result.changed else summary.unchanged).append(doc_id)


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]
