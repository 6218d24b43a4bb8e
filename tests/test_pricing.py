"""Cost comes from the upstream's reported usage at the target's price; cached prompt tokens
are billed at the cached price when there is one; the worst case never assumes a discount;
money sums exactly in micro-dollars; the prompt estimate is cheap, deterministic and errs high."""

from __future__ import annotations

import pytest

from bastion.config import Price
from bastion.services.pricing import (
    cost_usd,
    estimate_prompt_tokens,
    from_micros,
    to_micros,
    worst_case_cost_usd,
)

PRICE = Price(input_per_mtok=2.0, output_per_mtok=8.0, cached_input_per_mtok=0.5)
NO_CACHE_DISCOUNT = Price(input_per_mtok=2.0, output_per_mtok=8.0)


def test_cost_is_tokens_times_price_per_million() -> None:
    usage = {"prompt_tokens": 1_000, "completion_tokens": 500, "total_tokens": 1_500}
    assert cost_usd(usage, PRICE) == pytest.approx(1_000 * 2e-6 + 500 * 8e-6)


def test_cached_prompt_tokens_are_billed_at_the_cached_price() -> None:
    usage = {"prompt_tokens": 1_000, "completion_tokens": 0,
             "prompt_tokens_details": {"cached_tokens": 600}}
    assert cost_usd(usage, PRICE) == pytest.approx(400 * 2e-6 + 600 * 0.5e-6)


def test_without_a_cached_price_cached_tokens_cost_the_input_price() -> None:
    usage = {"prompt_tokens": 1_000, "completion_tokens": 0,
             "prompt_tokens_details": {"cached_tokens": 600}}
    assert cost_usd(usage, NO_CACHE_DISCOUNT) == pytest.approx(1_000 * 2e-6)


@pytest.mark.parametrize("usage", [None, {}])
def test_no_usage_costs_nothing(usage: dict | None) -> None:
    assert cost_usd(usage, PRICE) == 0.0


def test_an_unpriced_target_costs_nothing() -> None:
    assert cost_usd({"prompt_tokens": 10, "completion_tokens": 10}, None) == 0.0


def test_junk_usage_fields_count_as_zero_and_cached_never_exceeds_prompt() -> None:
    usage = {"prompt_tokens": "lots", "completion_tokens": None,
             "prompt_tokens_details": {"cached_tokens": 10}}
    assert cost_usd(usage, PRICE) == 0.0
    over = {"prompt_tokens": 100, "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 1_000}}
    assert cost_usd(over, PRICE) == pytest.approx(100 * 0.5e-6)


def test_worst_case_is_every_prompt_and_output_token_at_full_price() -> None:
    assert worst_case_cost_usd(1_000, 4_096, PRICE) == pytest.approx(1_000 * 2e-6 + 4_096 * 8e-6)
    assert worst_case_cost_usd(1_000, 4_096, None) == 0.0


def test_micro_dollars_make_sums_exact() -> None:
    assert to_micros(0.1) == 100_000 and from_micros(100_000) == 0.1
    assert sum(0.1 for _ in range(10)) != 1.0  # why floats are not summed
    assert from_micros(sum(to_micros(0.1) for _ in range(10))) == 1.0


def test_prompt_estimate_is_four_chars_a_token_plus_framing_per_message() -> None:
    messages = [{"role": "system", "content": "x" * 40}, {"role": "user", "content": "hi"}]
    assert estimate_prompt_tokens(messages) == (4 + 10) + (4 + 1)
    assert estimate_prompt_tokens([]) == 0


def test_prompt_estimate_counts_structured_content_and_tool_calls() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    assert estimate_prompt_tokens(parts) > 4
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "lookup", "arguments": "{}"}}]}
    assert estimate_prompt_tokens([call]) > 4


def test_prompt_estimate_accepts_message_objects_and_is_deterministic() -> None:
    class Message:
        def __init__(self, content: str) -> None:
            self.content = content
            self.tool_calls = None
            self.name = None

    objects = [Message("a" * 17)]
    assert estimate_prompt_tokens(objects) == estimate_prompt_tokens([{"content": "a" * 17}])
    assert estimate_prompt_tokens(objects) == 4 + 5
