"""Pieces both translation directions use: error shapes, stop reasons, usage, content."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from bastion.domain.errors import InvalidRequest

# --------------------------------------------------------------------------- errors

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """The Anthropic error ``type`` for an HTTP status, so the SDK's error body reads as
    Anthropic's own. Statuses Anthropic never sends fall into the nearest family."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_error_body(error_type: str, message: str) -> dict[str, Any]:
    """Anthropic's error envelope: the SDK reads ``error.type`` and ``error.message`` from it."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


# --------------------------------------------------------------------------- shared pieces

FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def stop_reason(finish_reason: str | None) -> str:
    return FINISH_TO_STOP.get(finish_reason or "stop", "end_turn")


def finish_reason(stop_reason: str | None) -> str:
    return STOP_TO_FINISH.get(stop_reason or "end_turn", "stop")


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic requires. Models do emit broken JSON;
    keeping the raw text under ``_raw`` lets the caller see what the model said instead of
    losing the call."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        parsed = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        return {"_raw": str(arguments)}
    return parsed if isinstance(parsed, dict) else {"_raw": str(arguments)}


def text_of(content: Any) -> str:
    """The text of an OpenAI ``content`` (a string, a list of parts, or null)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content
                       if isinstance(p, dict) and p.get("type") == "text")
    return ""


def strip_prefix(value: Any, prefix: str) -> str:
    text = str(value or "")
    return text.removeprefix(prefix)


def usage_to_anthropic(usage: Any) -> dict[str, int]:
    """OpenAI counts cached prompt tokens inside ``prompt_tokens``; Anthropic counts them apart
    from ``input_tokens``, so they are moved, not copied."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt = int(usage.get("prompt_tokens") or 0)
    out = {"input_tokens": prompt - int(cached or 0),
           "output_tokens": int(usage.get("completion_tokens") or 0)}
    if cached is not None:
        out["cache_read_input_tokens"] = int(cached)
    return out


def usage_to_chat(usage: Any) -> dict[str, Any]:
    """The reverse of ``usage_to_anthropic``: every input token, cached or not, is a prompt
    token to OpenAI."""
    usage = usage if isinstance(usage, dict) else {}
    read = int(usage.get("cache_read_input_tokens") or 0)
    prompt = (int(usage.get("input_tokens") or 0) + read
              + int(usage.get("cache_creation_input_tokens") or 0))
    completion = int(usage.get("output_tokens") or 0)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if read:
        out["prompt_tokens_details"] = {"cached_tokens": read}
    return out


def invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param)


def new_tool_use_id() -> str:
    return "toolu_" + secrets.token_hex(12)
