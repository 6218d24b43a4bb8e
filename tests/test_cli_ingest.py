"""``bastion ingest``: walks directories for documents, writes them to the config's index file,
skips what did not change, reports failures with their reasons and exits 1 when any failed."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion import cli_ingest
from bastion.cli import app
from bastion.cli_ingest import doc_id_for
from bastion.domain.retrieval import AccessScope, DocumentInfo
from bastion.retrieval.index import DocumentIndex
from tests.test_extract import make_pdf
from tests.test_ingest import FakeEmbedder

SIM = """
version: 1
providers:
  sim: {type: simulated}
models:
  fast:
    targets: [{provider: sim, model: sim-1}]
"""


@pytest.fixture(autouse=True)
def fake_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_ingest, "make_embedder", lambda config: FakeEmbedder())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bastion.yaml"
    path.write_text(SIM + f"state: {{sqlite_path: {tmp_path / 'state.db'}}}\n"
                    "retrieval: {max_document_bytes: 4096}\n")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "guide").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "guide" / "intro.md").write_text("# Intro\n\nWelcome to the guide.\n")
    (root / "guide" / "page.html").write_text("<title>Page</title><p>An HTML page.</p>")
    (root / "notes.txt").write_text("Plain notes.\n")
    (root / "report.pdf").write_bytes(make_pdf([["A PDF report."]], title="Report"))
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # not a document extension
    (root / ".git" / "config.txt").write_text("hidden")  # hidden: skipped
    return root


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["ingest", *args])
    return result.exit_code, result.stdout, result.stderr


def documents(config: Path, tenant: str = "default") -> dict[str, DocumentInfo]:
    async def go() -> dict[str, DocumentInfo]:
        index = DocumentIndex(str(config.parent / "state.db"), embedding_model="fake-embedder",
                              dim=FakeEmbedder.dim)
        try:
            return {d.doc_id: d for d in await index.list_documents(tenant)}
        finally:
            await index.aclose()

    return asyncio.run(go())


def test_a_directory_is_ingested_then_only_changes_are(config: Path, tree: Path) -> None:
    code, out, _ = run(str(tree), "--collection", "kb", "--config", str(config),
                       "--access", "group:eng", "--access", "user:ann")
    assert code == 0
    assert "4 file(s) into default/kb: 4 indexed, 0 unchanged, 0 failed" in out
    docs = documents(config)
    assert sorted(docs) == ["guide:intro.md", "guide:page.html", "notes.txt", "report.pdf"]
    assert {d.status for d in docs.values()} == {"indexed"}
    assert (docs["report.pdf"].title, docs["report.pdf"].media_type) == ("Report",
                                                                       "application/pdf")
    assert docs["notes.txt"].title == "notes"
    assert docs["guide:intro.md"].access == ("group:eng", "user:ann")

    code, out, _ = run(str(tree), "--collection", "kb", "--config", str(config),
                       "-a", "group:eng", "-a", "user:ann")
    assert code == 0 and "0 indexed, 4 unchanged, 0 failed" in out

    (tree / "notes.txt").write_text("Plain notes, edited.\n")
    code, out, _ = run(str(tree), "--collection", "kb", "--config", str(config),
                       "-a", "group:eng", "-a", "user:ann")
    assert code == 0 and "1 indexed, 3 unchanged, 0 failed" in out


def test_a_file_given_directly_is_ingested_whatever_its_name(config: Path, tmp_path: Path
                                                             ) -> None:
    readme = tmp_path / "README"
    readme.write_text("A readme without an extension.")
    code, out, _ = run(str(readme), "-C", "kb", "--tenant", "acme", "--config", str(config))
    assert code == 0 and "into acme/kb: 1 indexed" in out
    assert list(documents(config, "acme")) == ["README"]
    assert documents(config) == {}  # another tenant


def test_failures_are_reported_with_reasons_and_exit_1(config: Path, tree: Path) -> None:
    (tree / "broken.md").write_bytes(b"\x00\x01\x02 binary")
    (tree / "empty.txt").write_text("   \n")
    (tree / "big.txt").write_text("word " * 2000)  # over max_document_bytes: 4096
    code, out, err = run(str(tree), "-C", "kb", "--config", str(config))
    assert code == 1
    assert "4 indexed, 0 unchanged, 3 failed" in out
    assert "failed    broken.md: the content is binary" in err
    assert "failed    empty.txt: the document is empty" in err
    assert "failed    big.txt: 10000 bytes is over the limit of 4096" in err
    docs = documents(config)
    assert docs["broken.md"].status == "failed" and docs["guide:intro.md"].status == "indexed"


def test_the_documents_are_searchable_by_a_server_sharing_the_file(config: Path,
                                                                   tree: Path) -> None:
    assert run(str(tree), "-C", "kb", "--config", str(config))[0] == 0

    async def search() -> list[str]:
        index = DocumentIndex(str(config.parent / "state.db"), embedding_model="fake-embedder",
                              dim=FakeEmbedder.dim)
        try:
            hits = await index.lexical_search(AccessScope("default", ("kb",)), "welcome", 5)
            return [h.chunk_id for h in hits]
        finally:
            await index.aclose()

    assert asyncio.run(search()) == ["kb/guide%3Aintro.md#0"]


def test_bad_arguments_and_configs_exit_with_a_reason(config: Path, tree: Path,
                                                      tmp_path: Path) -> None:
    code, _, err = run(str(tree), "-C", "bad name", "--config", str(config))
    assert code == 2 and "collection must be" in err
    code, _, err = run(str(tree), "-C", "kb", "-a", "alice", "--config", str(config))
    assert code == 2 and "kind:name" in err
    memory = tmp_path / "memory.yaml"
    memory.write_text(SIM)
    code, _, err = run(str(tree), "-C", "kb", "--config", str(memory))
    assert code == 1 and "durable index" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(str(empty), "-C", "kb", "--config", str(config))
    assert code == 1 and "no files to ingest" in err
    assert run(str(tmp_path / "missing"), "-C", "kb", "--config", str(config))[0] == 2


def test_document_ids_are_valid_stable_and_distinct() -> None:
    assert doc_id_for(Path("guide/intro.md")) == "guide:intro.md"
    spaced, underscored = doc_id_for(Path("my notes.md")), doc_id_for(Path("my_notes.md"))
    assert spaced.startswith("my_notes.md-") and underscored == "my_notes.md"
    assert doc_id_for(Path("café/résumé.txt")) == doc_id_for(Path("café/résumé.txt"))
    deep = doc_id_for(Path("/".join(["directory"] * 30) + "/file.txt"))
    assert len(deep) == 128
    for name in (spaced, deep, doc_id_for(Path("café/résumé.txt"))):
        assert re.fullmatch(r"[A-Za-z0-9._:\-]{1,128}", name)
