"""Prometheus metrics. Labels are drawn from small fixed sets (phase, outcome, violation kind,
error class) so their cardinality stays bounded whatever the traffic."""

from __future__ import annotations

import functools

from prometheus_client import Counter

CONTRACT_CHECKS = Counter(
    "bastion_output_contract_checks",
    "Output-contract checks, by phase (first answer or repair) and verdict. Schema failure rate "
    "= invalid/all at phase=first; repair success rate = valid/all at phase=repair.",
    ["phase", "outcome"],
)
CONTRACT_VIOLATIONS = Counter(
    "bastion_output_contract_violations",
    "Violations found in model answers, by kind.",
    ["kind"],
)
CONTRACT_REFUSALS = Counter(
    "bastion_output_contract_refusals",
    "Requests answered with output_contract_failed after every target and repair.",
)
CACHE_RESULTS = Counter(
    "bastion_cache_results",
    "Response-cache outcomes by route: hit, miss, stale (served when every target failed) and "
    "bypass (Cache-Control: no-cache). Non-deterministic requests are not counted.",
    ["route", "result"],
)
ADMISSION_REFUSALS = Counter(
    "bastion_admission_refusals",
    "Requests refused before any model call, by route and reason: overloaded (shed), "
    "rate_limit_exceeded, budget_exceeded.",
    ["route", "reason"],
)


@functools.cache
def cache_result_counter(route: str, result: str) -> Counter:
    """The ``CACHE_RESULTS`` child for one route and result, looked up once: ``labels()`` takes
    a lock and builds a key on every call, and this one is counted on every cacheable request.
    Both labels come from small fixed sets, so the cache stays small."""
    return CACHE_RESULTS.labels(route, result)
