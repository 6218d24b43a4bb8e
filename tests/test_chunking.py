"""Chunking: sections, then whole paragraphs, then sentences, then tokens - never over the
token budget, never across a heading, every word of the document in some chunk, and a few
trailing sentences carried over as overlap inside a section."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.domain.retrieval import Block, ChunkDraft, ExtractedDocument
from bastion.retrieval.chunking import chunk_document, sentence_spans
from bastion.retrieval.extract import extract


def words(text: str) -> int:
    """A tokenizer stand-in: a word or a punctuation mark is one token."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def chars(text: str) -> int:
    """Another: four characters a token, so long words need cutting."""
    return math.ceil(len(text) / 4)


def with_specials(text: str) -> int:
    """Another: a constant per text ([CLS]/[SEP]), so counts are not additive over joins."""
    return words(text) + 2


def doc(*blocks: Block, title: str | None = None) -> ExtractedDocument:
    return ExtractedDocument(title, blocks)


def p(text: str) -> Block:
    return Block("paragraph", text)


def h(text: str, level: int) -> Block:
    return Block("heading", text, level)


Count = Callable[[str], int]


def chunks(document: ExtractedDocument, max_tokens: int = 20, overlap: int = 0,
           count: Count = words) -> list[ChunkDraft]:
    return chunk_document(document, max_tokens=max_tokens, overlap_tokens=overlap,
                          count_tokens=count)


def sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]


# --------------------------------------------------------------------------- sentences


def test_sentences_know_abbreviations_initials_and_decimals() -> None:
    text = ("Dr. Smith arrived at 3.15 p.m. on Jan. 5. He said e.g. that pi is 3.14. Is it? "
            "Yes! The U.S. Army was there... Then J. R. R. Tolkien wrote (see No. 5). "
            "\"Quoted.\" Next one")
    assert sentences(text) == [
        "Dr. Smith arrived at 3.15 p.m. on Jan. 5.", "He said e.g. that pi is 3.14.",
        "Is it?", "Yes!", "The U.S. Army was there...",
        "Then J. R. R. Tolkien wrote (see No. 5).", "\"Quoted.\"", "Next one"]


def test_a_word_that_merely_looks_abbreviated_still_ends_a_sentence() -> None:
    assert sentences("I said no. Then I left. Version 2. Next.") == [
        "I said no.", "Then I left.", "Version 2.", "Next."]


def test_a_line_break_always_ends_a_sentence_and_spans_point_into_the_text() -> None:
    text = "  - first item\n- second item with e.g. more\n\nlast"
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == ["- first item", "- second item with e.g. more",
                                             "last"]
    assert sentence_spans("") == [] and sentence_spans(" \n ") == []


# --------------------------------------------------------------------------- structure


def test_whole_paragraphs_are_packed_until_the_budget() -> None:
    out = chunks(doc(p("one two three four"), p("five six seven"), p("eight nine ten eleven")),
                 max_tokens=8)
    assert [c.text for c in out] == ["one two three four\n\nfive six seven",
                                     "eight nine ten eleven"]
    assert [c.position for c in out] == [0, 1]
    assert [c.token_count for c in out] == [7, 4]


def test_a_heading_change_starts_a_new_chunk_and_each_chunk_keeps_its_heading_path() -> None:
    out = chunks(doc(h("Guide", 1), p("intro"), h("Install", 2), p("pip install"),
                     h("Linux", 3), p("apt too"), h("Usage", 2), p("run it"),
                     h("Appendix", 1), p("the end")), max_tokens=100)
    assert [(c.text, c.headings) for c in out] == [
        ("intro", ("Guide",)), ("pip install", ("Guide", "Install")),
        ("apt too", ("Guide", "Install", "Linux")), ("run it", ("Guide", "Usage")),
        ("the end", ("Appendix",))]


def test_a_heading_without_text_is_a_path_not_a_chunk_unless_that_is_all_there_is() -> None:
    assert [c.headings for c in chunks(doc(h("A", 1), h("B", 2), p("body")))] == [("A", "B")]
    only = chunks(doc(h("Just a title", 1), h("And a subtitle", 2)))
    assert [c.text for c in only] == ["Just a title\n\nAnd a subtitle"]


def test_an_oversized_paragraph_is_split_at_sentences() -> None:
    para = "The cat sat. The dog ran far away. Dr. Who came by at 3.30 today. It rained."
    out = chunks(doc(p(para)), max_tokens=12)
    assert [c.text for c in out] == ["The cat sat. The dog ran far away.",
                                     "Dr. Who came by at 3.30 today.", "It rained."]


def test_an_oversized_sentence_is_split_by_tokens_and_a_huge_word_by_characters() -> None:
    sentence = " ".join(f"w{i}" for i in range(25)) + "."
    out = chunks(doc(p(sentence)), max_tokens=10)
    assert all(c.token_count <= 10 for c in out)
    assert " ".join(c.text for c in out) == sentence
    blob = "x" * 100
    cut = chunks(doc(p(blob)), max_tokens=16, count=chars)
    assert "".join(c.text for c in cut) == blob
    assert all(chars(c.text) <= 16 for c in cut)


def test_overlap_carries_trailing_sentences_within_a_section_only() -> None:
    body = "Alpha one. Beta two. Gamma three. Delta four. Epsilon five."
    out = chunks(doc(h("S", 1), p(body), h("T", 1), p("Zeta six. Eta seven.")),
                 max_tokens=9, overlap=3)
    assert [(c.text, c.headings) for c in out] == [
        ("Alpha one. Beta two. Gamma three.", ("S",)),
        ("Gamma three. Delta four. Epsilon five.", ("S",)),
        ("Zeta six. Eta seven.", ("T",)),  # no overlap from section S
    ]


def test_overlap_never_pushes_a_chunk_over_the_budget() -> None:
    long = "Long" + " long" * 7 + " sentence."
    out = chunks(doc(p(f"Short one. {long}")), max_tokens=10, overlap=5)
    assert [c.text for c in out] == ["Short one.", long]


def test_the_real_tokenizer_bounds_real_documents() -> None:
    from bastion.retrieval.embedder import MiniLMEmbedder

    count = MiniLMEmbedder().count_tokens
    readme = Path(__file__).resolve().parent.parent / "README.md"
    document = extract(readme.read_bytes(), None, "README.md")
    out = chunk_document(document, max_tokens=64, overlap_tokens=16, count_tokens=count)
    assert len(out) > 20
    assert max(c.token_count for c in out) <= 64
    assert all(count(c.text) == c.token_count for c in out)
    assert [c.position for c in out] == list(range(len(out)))


def test_a_long_unbroken_paragraph_is_chunked_in_linear_time() -> None:
    para = " ".join(f"Sentence number {i} is here, e.g. with 3.5 units." for i in range(4000))
    out = chunks(doc(p(para)), max_tokens=64, overlap=8)
    assert len(out) > 100  # 260 kB: pySBD alone takes over a minute on this


# --------------------------------------------------------------------------- properties

_WORDS = st.sampled_from(["alpha", "beta", "Gamma", "delta.", "Dr.", "e.g.", "3.14", "Why?",
                          "yes!", "x" * 30, "(paren)", "end.", "U.S.", "-", "naïve", "café."])
_PARAGRAPH = st.lists(st.lists(_WORDS, min_size=1, max_size=40).map(" ".join),
                      min_size=1, max_size=3).map("\n".join)
_SECTION = st.tuples(st.integers(1, 3), st.lists(_PARAGRAPH, min_size=0, max_size=5))
_COUNTERS = st.sampled_from([words, chars, with_specials])


def _document(sections: list[tuple[int, list[str]]]) -> ExtractedDocument:
    blocks: list[Block] = []
    for i, (level, paras) in enumerate(sections):
        blocks.append(h(f"H{i}", level))
        blocks.extend(p(text) for text in paras)
    return doc(*blocks)


def _dense(text: str) -> str:
    return "".join(text.split())


@cache
def _is_subsequence(needle: str, haystack: str) -> bool:
    it = iter(haystack)
    return all(ch in it for ch in needle)


@settings(max_examples=250, deadline=None)
@given(sections=st.lists(_SECTION, min_size=1, max_size=5), max_tokens=st.integers(16, 60),
       overlap=st.integers(0, 40), count=_COUNTERS)
def test_chunking_properties(sections: list[tuple[int, list[str]]], max_tokens: int,
                             overlap: int, count: Count) -> None:
    document = _document(sections)
    out = chunk_document(document, max_tokens=max_tokens, overlap_tokens=overlap,
                         count_tokens=count)
    if not any(t.strip() for _, paras in sections for t in paras):
        # headings alone: they are the text, so the document is still searchable
        assert out and all(c.headings == () for c in out)
        return
    # bound: no chunk exceeds the budget, as the tokenizer counts its exact text
    assert all(count(c.text) <= max_tokens and c.token_count == count(c.text) for c in out)
    # positions: 0..n-1 in reading order
    assert [c.position for c in out] == list(range(len(out)))
    # every chunk has text and its section's heading path ends with its own heading
    by_section: dict[str, list[ChunkDraft]] = {}
    for c in out:
        assert c.text.strip()
        by_section.setdefault(c.headings[-1], []).append(c)
    for i, (_, paras) in enumerate(sections):
        mine = by_section.get(f"H{i}", [])
        if not any(t.strip() for t in paras):
            assert not mine
            continue
        # coverage: the section's text, in order, within its chunks (overlap only repeats)
        assert _is_subsequence(_dense("".join(paras)), _dense("".join(c.text for c in mine)))
        # overlap stays within the section: each piece of a chunk is a slice of one of its
        # own section's paragraphs
        for c in mine:
            for part in c.text.split("\n\n"):
                assert any(part in para for para in paras), (part, paras)
