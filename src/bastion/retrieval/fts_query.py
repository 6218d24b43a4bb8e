"""Turn a user's question into a safe SQLite FTS5 query.

Why not pass the text through: FTS5 has a query language (``"``, ``*``, ``^``, ``:``, ``AND``,
``OR``, ``NOT``, ``NEAR(...)``, parentheses), so raw user text is either a syntax error or, worse,
a different query than the one meant. Here the text is split into words, stopwords and
duplicates are dropped, and every word becomes a quoted string (a literal, never an operator),
joined with ``OR``: the bag-of-words query that BM25 ranks. Text with no word left gives
``None``, which the index answers with no results.
"""

from __future__ import annotations

import re
import unicodedata

#: Lucene's English stop set (the 33 words of ``EnglishAnalyzer``), which the BM25 reference
#: figure for SciFact used. Dropped from queries only: the index keeps every word, so a phrase
#: of stopwords still counts in document lengths. SciFact train, BM25 nDCG@10: 0.7015 with
#: this list, 0.7009 with none, 0.7013 with a ~130-word list; the short, known one is kept.
STOPWORDS: frozenset[str] = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is",
    "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there",
    "these", "they", "this", "to", "was", "will", "with"})

#: A bound on the terms of one query, so a pasted document cannot make an unbounded OR query.
MAX_TERMS = 64

# Word characters as FTS5's unicode61 tokenizer sees them: letters, digits (``\w`` without the
# underscore, which unicode61 treats as a separator).
_WORD = re.compile(r"[^\W_]+")


def query_terms(text: str) -> list[str]:
    """The distinct non-stopword words of ``text``, lower-cased, in order of first use."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).lower()):
        if word not in STOPWORDS and word not in seen:
            seen[word] = None
            if len(seen) == MAX_TERMS:
                break
    return list(seen)


def fts_match(text: str) -> str | None:
    """An FTS5 ``MATCH`` expression for ``text``: its terms as quoted literals joined by OR.

    The terms hold only letters and digits, so none can close its quotes."""
    terms = query_terms(text)
    if not terms:
        return None
    return " OR ".join(f'"{term}"' for term in terms)
