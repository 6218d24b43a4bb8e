"""JSON Schema validation for model output: each schema compiled once, errors as violations.

A model's JSON is input from an untrusted service. ``jsonschema`` (Draft 2020-12, the dialect
OpenAI's structured outputs use) does the checking; this module only adds what bastion needs
around it: a bounded cache so a schema sent on every request is compiled once, the ``strict``
reading of a schema (no properties beyond those declared), and violations with JSON paths that
fit in a header, a log line and a repair prompt.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

#: At most this many violations are reported per check: enough to repair, short enough to log.
MAX_VIOLATIONS = 8


@dataclass(frozen=True, slots=True)
class Violation:
    """One way an output broke its contract.

    ``kind`` is one of: ``malformed_json``, ``truncated_json``, ``schema``, ``rule``,
    ``unknown_tool``, ``tool_arguments``, ``empty_output``.
    """

    kind: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidSchema(ValueError):
    """The schema itself is not a valid JSON Schema (the caller's mistake, not the model's)."""


#: Keywords whose value is data, never a schema.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
#: Keywords whose value maps names to schemas: the names are the caller's (a field may well be
#: called ``default`` or ``properties``), only the schemas under them are walked.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions",
                          "dependentSchemas"})


def strictify(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that does not say
    otherwise: what ``strict: true`` promises a client, enforced rather than assumed."""
    if isinstance(schema, list):
        return [strictify(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DATA_KEYWORDS:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: strictify(sub) for name, sub in value.items()}
        else:
            out[key] = strictify(value)
    if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=512)
def _compile(key: bytes, strict: bool) -> Draft202012Validator:
    schema = orjson.loads(key)
    if strict:
        schema = strictify(schema)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidSchema(f"{'/'.join(map(str, exc.path)) or 'schema'}: {exc.message}") from None
    return Draft202012Validator(schema)


def compile_schema(schema: dict[str, Any], *, strict: bool = False) -> Draft202012Validator:
    """A validator for ``schema``, compiled once per distinct (schema, strict) and reused."""
    return _compile(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS), strict)


def json_path(parts: Iterable[Any]) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _describe(error: ValidationError) -> str:
    message = error.message
    return message if len(message) <= 200 else message[:197] + "..."


def schema_violations(validator: Draft202012Validator, value: Any) -> list[Violation]:
    """Every way ``value`` breaks the schema (at most ``MAX_VIOLATIONS``), in path order."""
    errors = sorted(validator.iter_errors(value), key=lambda e: (list(map(str, e.path)),
                                                                  e.message))
    return [Violation("schema", json_path(e.absolute_path), _describe(e))
            for e in errors[:MAX_VIOLATIONS]]
