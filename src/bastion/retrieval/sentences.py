"""Sentence boundaries, for chunking and for quoting.

pySBD (rule-based, handles abbreviations such as "e.g." and "Dr.", decimals and ellipses) rather
than a hand-written regex: sentence splitting is a solved problem with many edge cases.
"""

from __future__ import annotations

import threading

import pysbd

_local = threading.local()


def _segmenter() -> pysbd.Segmenter:
    # pySBD segmenters keep per-call state: one per thread.
    segmenter = getattr(_local, "segmenter", None)
    if segmenter is None:
        segmenter = _local.segmenter = pysbd.Segmenter(language="en", clean=False)
    return segmenter


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped, without empty ones."""
    if not text.strip():
        return []
    return [s.strip() for s in _segmenter().segment(text) if s.strip()]
