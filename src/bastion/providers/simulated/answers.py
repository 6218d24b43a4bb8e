"""What the simulated provider answers: deterministic text, schema-shaped JSON, tool calls, vectors."""

from __future__ import annotations

import array
import hashlib
import math
import re
from typing import Any

import orjson

from bastion.domain.chat import ChatRequest

# --------------------------------------------------------------------------- answers


def count_tokens(text: str) -> int:
    """The simulated tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def count_prompt_tokens(request: ChatRequest) -> int:
    total = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            total += count_tokens(content)
        elif content:
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    total += count_tokens(text)
    return total


_WORD = re.compile(r"\S+\s*")


def split_text(text: str, parts: int) -> tuple[str, ...]:
    """``text`` cut into exactly ``parts`` pieces that join back to it: whole words when there
    are enough, else characters (empty pieces only when the text is shorter than ``parts``)."""
    words = _WORD.findall(text)
    if words:
        words[0] = text[: len(text) - len(text.lstrip())] + words[0]
    units: list[str] = words if len(words) >= parts else list(text)
    size, extra = divmod(len(units), parts)
    pieces, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        pieces.append("".join(units[start:end]))
        start = end
    return tuple(pieces)


_MAX_SCHEMA_DEPTH = 32
_STRING_FORMATS = {"date-time": "1970-01-01T00:00:00Z", "date": "1970-01-01",
                   "time": "00:00:00Z", "email": "simulated@example.com",
                   "uri": "https://example.com/", "uuid": "00000000-0000-0000-0000-000000000000"}


def sample_for_schema(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A minimal value valid for a simple JSON schema: required properties only, the first
    enum value or ``const``, ``"simulated"`` / 0 / false / [] for the scalar types, bounds and
    local ``$ref`` (``#/$defs/...``, as pydantic writes them) respected."""
    if root is None:
        root = schema
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key) if isinstance(target, dict) else None
        return sample_for_schema(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return sample_for_schema((non_null or options)[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        return {name: sample_for_schema(properties.get(name, {}), root, depth + 1)
                for name in required}
    if kind == "array":
        count = schema.get("minItems") or 0
        return [sample_for_schema(schema.get("items", {}), root, depth + 1)
                for _ in range(count)]
    if kind == "string":
        text = _STRING_FORMATS.get(schema.get("format"), "simulated")
        min_length, max_length = schema.get("minLength"), schema.get("maxLength")
        if isinstance(min_length, int) and len(text) < min_length:
            text = text + "x" * (min_length - len(text))
        if isinstance(max_length, int):
            text = text[:max_length]
        return text
    if kind in ("integer", "number"):
        value: float = 0
        low, high = schema.get("minimum"), schema.get("maximum")
        ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if isinstance(low, (int, float)) and value < low:
            value = low
        if isinstance(ex_low, (int, float)) and value <= ex_low:
            value = ex_low + 1
        if isinstance(high, (int, float)) and value > high:
            value = high
        if isinstance(ex_high, (int, float)) and value >= ex_high:
            value = ex_high - 1
        return math.ceil(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    return None


def json_reply(request: ChatRequest, reply: str) -> str | None:
    """The JSON the request's ``response_format`` asks for, or None for plain text."""
    rf = request.response_format
    kind = rf.get("type") if rf else None
    if kind == "json_schema":
        spec = rf.get("json_schema") if rf else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return orjson.dumps(sample_for_schema(schema) if schema else {}).decode()
    if kind == "json_object":
        return orjson.dumps({"reply": reply}).decode()
    return None


def tool_to_call(request: ChatRequest) -> str | None:
    """The tool a ``tool_call`` fault calls: the one ``tool_choice`` names, else the first."""
    if not request.tools or request.tool_choice == "none":
        return None
    choice = request.tool_choice
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        if any(t["function"]["name"] == named for t in request.tools):
            return str(named)
    return str(request.tools[0]["function"]["name"])


def embed_text(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on ``text``: the same text, the same vector."""
    raw = array.array("h", hashlib.shake_256(text.encode()).digest(2 * dimensions))
    norm = math.sqrt(sum(v * v for v in raw))
    if norm == 0.0:  # all-zero hash output: astronomically unlikely, but stay a unit vector
        return [1.0] + [0.0] * (dimensions - 1)
    return [v / norm for v in raw]
