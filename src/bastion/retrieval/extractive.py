"""The deterministic extractive answerer: quote the sentences that best support the question.

It needs no model and cannot hallucinate: every word of its answer is a quoted sentence of a
retrieved chunk, cited by that chunk's id. It is the answer service's model when none is
configured and its last tier when every model target fails.

A sentence is scored by how much of the question's content it covers, each question term
weighted by its rarity among the candidate sentences (IDF), so "the" never counts and a rare
term the sentence shares counts most. Ties go to the better-ranked chunk, then the earlier
sentence, so the same input always gives the same answer. Its confidence is never "high": a
quote supports an answer, it does not state one; "medium" needs most of the question covered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import snowballstemmer

from bastion.domain.answer import Confidence
from bastion.domain.retrieval import ChunkHit
from bastion.retrieval.chunking import sentence_spans

MAX_QUOTES = 3
#: A sentence must cover at least this share of the question's (weighted) terms.
MIN_COVERAGE = 0.2
#: Further quotes must score at least this share of the best one.
RELATIVE_FLOOR = 0.5
MEDIUM_COVERAGE = 0.6

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS = frozenset(["a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves"])


_STEMMER = snowballstemmer.stemmer("english")


def terms(text: str) -> set[str]:
    """Content words, lower-cased and Snowball-stemmed ("reduces" and "reduce" match)."""
    words = [w for w in _WORD.findall(text.lower())
             if w not in _STOPWORDS and (len(w) > 1 or w.isdigit())]
    return set(_STEMMER.stemWords(words))


@dataclass(frozen=True, slots=True)
class Quote:
    chunk_id: str
    sentence: str
    coverage: float


@dataclass(frozen=True, slots=True)
class ExtractiveAnswer:
    text: str
    confidence: Confidence
    quotes: tuple[Quote, ...]


def extractive_answer(question: str, chunks: Sequence[ChunkHit]) -> ExtractiveAnswer | None:
    """Quotes of ``chunks`` that support ``question``, or None when no sentence does."""
    wanted = terms(question)
    if not wanted:
        return None
    candidates: list[tuple[int, int, str, str, set[str]]] = []
    for hit in sorted(chunks, key=lambda h: h.rank):
        for i, (start, end) in enumerate(sentence_spans(hit.text)):
            sentence = hit.text[start:end]
            candidates.append((hit.rank, i, hit.chunk_id, sentence, terms(sentence)))
    if not candidates:
        return None
    n = len(candidates)
    weight = {t: math.log(1 + n / (1 + sum(t in c[4] for c in candidates))) for t in wanted}
    total = sum(weight.values())
    scored = sorted(
        ((sum(weight[t] for t in wanted & found) / total, rank, i, chunk_id, sentence)
         for rank, i, chunk_id, sentence, found in candidates),
        key=lambda s: (-s[0], s[1], s[2]))
    best = scored[0][0]
    if best < MIN_COVERAGE:
        return None
    quotes = tuple(Quote(chunk_id, sentence, round(coverage, 4))
                   for coverage, _, _, chunk_id, sentence in scored[:MAX_QUOTES]
                   if coverage >= max(MIN_COVERAGE, best * RELATIVE_FLOOR))
    text = " ".join(f'"{q.sentence}" [{q.chunk_id}]' for q in quotes)
    confidence: Confidence = "medium" if best >= MEDIUM_COVERAGE else "low"
    return ExtractiveAnswer(text, confidence, quotes)
