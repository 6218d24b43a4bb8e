"""Prometheus metrics of the usage ledger. Kept apart from ``metrics.py`` so the ledger owns
what it reports; the labels are a fixed set of reasons, so cardinality stays bounded."""

from __future__ import annotations

from prometheus_client import Counter

LEDGER_DROPPED = Counter(
    "bastion_usage_ledger_dropped",
    "Usage rows never written, by reason: queue_full (the writer fell behind), write_failed "
    "(the store refused every retry), closed (recorded after the ledger closed). Anything but "
    "zero means the ledger under-reports usage and cost.",
    ["reason"],
)
LEDGER_WRITTEN = Counter(
    "bastion_usage_ledger_written",
    "Usage rows written to the ledger store.",
)
