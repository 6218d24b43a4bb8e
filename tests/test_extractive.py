"""The extractive answerer: every word it returns is a quoted sentence of a chunk it was given,
cited by that chunk's id; the same input always gives the same answer."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.domain.retrieval import ChunkHit
from bastion.retrieval.extractive import MAX_QUOTES, extractive_answer, terms

TRIAL = ChunkHit("h/vitd#0", "vitd", "h", "Vitamin D",
                 "Vitamin D deficiency is common in winter. Supplementation with vitamin D "
                 "reduces fracture risk in elderly women. The trial enrolled 2000 people.",
                 0, 0.03, 1)
REVIEW = ChunkHit("h/review#2", "review", "h", "Review",
                  "A later review found that vitamin D supplementation did not reduce "
                  "fractures in younger adults. Calcium intake was a confounder.", 2, 0.02, 2)


def test_the_best_supporting_sentences_are_quoted_with_their_chunk() -> None:
    found = extractive_answer("Does vitamin D supplementation reduce fractures?",
                              [TRIAL, REVIEW])
    assert found is not None
    assert [q.chunk_id for q in found.quotes] == ["h/vitd#0", "h/review#2"]
    assert found.text.startswith('"Supplementation with vitamin D reduces fracture risk')
    assert "[h/vitd#0]" in found.text and "[h/review#2]" in found.text
    assert found.confidence == "medium"


def test_an_unrelated_question_finds_nothing() -> None:
    assert extractive_answer("What is the capital of France?", [TRIAL, REVIEW]) is None
    assert extractive_answer("the of and", [TRIAL]) is None  # no content words
    assert extractive_answer("vitamin", []) is None


def test_weak_support_is_low_confidence() -> None:
    found = extractive_answer("Is winter deficiency linked to kidney stones and gout?", [TRIAL])
    assert found is not None and found.confidence == "low"


def test_ties_go_to_the_better_ranked_chunk() -> None:
    a = replace(TRIAL, chunk_id="a#0", text="Zinc shortens colds.", rank=2)
    b = replace(TRIAL, chunk_id="b#0", text="Zinc shortens colds.", rank=1)
    found = extractive_answer("Does zinc shorten colds?", [a, b])
    assert found is not None and found.quotes[0].chunk_id == "b#0"


def test_stemming_matches_word_forms() -> None:
    assert terms("reduces fractures") == terms("reduce fracture")


WORDS = st.sampled_from("vitamin zinc cells mice reduce fracture risk trial dose the of a "
                        "winter colds protein gene".split())
SENTENCE = st.lists(WORDS, min_size=1, max_size=12).map(lambda w: " ".join(w).capitalize() + ".")


@settings(max_examples=200, deadline=None)
@given(question=st.lists(WORDS, min_size=1, max_size=8).map(" ".join),
       texts=st.lists(st.lists(SENTENCE, min_size=1, max_size=4).map(" ".join),
                      min_size=1, max_size=5))
def test_quotes_are_verbatim_sentences_of_the_given_chunks(question: str,
                                                           texts: list[str]) -> None:
    chunks = [replace(TRIAL, chunk_id=f"c{i}", text=text, rank=i + 1)
              for i, text in enumerate(texts)]
    found = extractive_answer(question, chunks)
    assert found == extractive_answer(question, list(reversed(chunks)))  # deterministic
    if found is None:
        return
    by_id = {c.chunk_id: c.text for c in chunks}
    assert 1 <= len(found.quotes) <= MAX_QUOTES and found.confidence != "high"
    for quote in found.quotes:
        assert quote.sentence in by_id[quote.chunk_id]
        assert f'"{quote.sentence}" [{quote.chunk_id}]' in found.text
