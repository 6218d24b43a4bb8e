"""Token estimates before a call, for rate limits and budget reservations.

A cheap, deterministic over-estimate (about four characters per token, plus a few tokens of
framing per message) rather than a tokenizer: it runs on every request, must not download
anything, and only has to be close enough to reserve; the real usage settles it afterwards.
"""

from __future__ import annotations

from typing import Any

import orjson

CHARS_PER_TOKEN = 4
PER_MESSAGE_TOKENS = 4


def estimate_text_tokens(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return -(-len(value) // CHARS_PER_TOKEN)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sum(-(-len(v) // CHARS_PER_TOKEN) for v in value)
    return -(-len(orjson.dumps(value)) // CHARS_PER_TOKEN)


def estimate_prompt_tokens(request: Any) -> int:
    """Prompt tokens of a chat request: its messages' content, tools and response schema."""
    total = 0
    for message in request.messages:
        total += PER_MESSAGE_TOKENS + estimate_text_tokens(message.content)
        if message.tool_calls:
            total += estimate_text_tokens(message.tool_calls)
    if request.tools:
        total += estimate_text_tokens(request.tools)
    if request.response_format:
        total += estimate_text_tokens(request.response_format)
    return total
