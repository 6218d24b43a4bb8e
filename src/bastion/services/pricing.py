"""What a model call costs, from the ``usage`` object an OpenAI-compatible upstream returns.

Prices are US dollars per million tokens (``config.Price``). The public functions speak float
dollars because that is what callers and reports want; anything that *sums* money (the ledger,
budgets) converts each amount once with ``to_micros`` and adds integers, so a month of sums is
exact and independent of the order rows were added in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bastion.config import Price
from bastion.domain.tokens import CHARS_PER_TOKEN, PER_MESSAGE_TOKENS, estimate_text_tokens

MICROS_PER_USD = 1_000_000
_TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per million tokens

__all__ = ["CHARS_PER_TOKEN", "PER_MESSAGE_TOKENS", "cost_usd", "estimate_prompt_tokens",
           "from_micros", "to_micros", "worst_case_cost_usd"]


def to_micros(usd: float) -> int:
    """Dollars as integer micro-dollars, rounded half to even (Python's ``round``)."""
    return round(usd * MICROS_PER_USD)


def from_micros(micros: int) -> float:
    return micros / MICROS_PER_USD


def _count(value: Any) -> int:
    """A token count from an untrusted usage object: missing, null or junk counts as 0."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def cost_usd(usage: dict[str, Any] | None, price: Price | None) -> float:
    """The cost of one answer. No usage or no price (an unpriced or local target) costs 0.

    OpenAI counts cached prompt tokens *inside* ``prompt_tokens`` and reports them in
    ``prompt_tokens_details.cached_tokens``; they are billed at ``cached_input_per_mtok`` when
    the price sets one, else at the input price (a provider without a discount)."""
    if not usage or price is None:
        return 0.0
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    cached = min(cached, prompt)
    cached_rate = (price.cached_input_per_mtok if price.cached_input_per_mtok is not None
                   else price.input_per_mtok)
    total = ((prompt - cached) * price.input_per_mtok + cached * cached_rate
             + completion * price.output_per_mtok)
    return total / _TOKENS_PER_PRICE_UNIT


def worst_case_cost_usd(prompt_tokens_estimate: int, max_output_tokens: int,
                        price: Price | None) -> float:
    """The most a call may cost, reserved against budgets before it is made: the whole prompt
    at the full input price (a cache discount is never assumed) plus every allowed output
    token."""
    if price is None:
        return 0.0
    total = (max(0, prompt_tokens_estimate) * price.input_per_mtok
             + max(0, max_output_tokens) * price.output_per_mtok)
    return total / _TOKENS_PER_PRICE_UNIT


def _field(message: Any, name: str) -> Any:
    if isinstance(message, dict):
        return message.get(name)
    return getattr(message, name, None)


def estimate_prompt_tokens(messages: Iterable[Any]) -> int:
    """Prompt tokens of a list of chat messages (dicts or message models), without a tokenizer.

    About one token per ``CHARS_PER_TOKEN`` (4) characters of content, rounded up, plus
    ``PER_MESSAGE_TOKENS`` (4) per message for the role and framing; structured content (parts,
    tool calls) is measured as its JSON. English text averages a little over 4 characters per
    token in the GPT and Llama tokenizers, so this errs slightly high, which is the safe side for
    a reservation: the real usage settles it after the call. Deterministic and allocation-light
    because it runs on every request, and it agrees with ``domain.tokens``, which estimates a
    whole ``ChatRequest`` the same way."""
    total = 0
    for message in messages:
        total += PER_MESSAGE_TOKENS + estimate_text_tokens(_field(message, "content"))
        tool_calls = _field(message, "tool_calls")
        if tool_calls:
            total += estimate_text_tokens(tool_calls)
        name = _field(message, "name")
        if isinstance(name, str):
            total += estimate_text_tokens(name)
    return total
