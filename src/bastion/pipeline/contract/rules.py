"""Product rules: what a schema cannot say, checked after the output parsed and validated.

A schema says "``reason`` is a string"; the product says "between 10 and 500 characters", "every
cited id is one the request supplied", "the summary is not blank". Built-in rules are declared
in config as data; custom rules are Python callables registered by name::

    from bastion import register_rule

    @register_rule("no_refund_promises")
    def no_refund_promises(value, ctx):
        if "refund" in value.get("suggested_reply", "").lower():
            yield "$.suggested_reply: must not promise a refund"

A rule returns (or yields) violation messages; nothing means the output passes. A rule failure
is handled exactly like a schema failure: repair, next target, safe refusal.

Field paths are dotted names; ``[]`` walks every element of a list: ``citations[].id``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion.domain.rules import (
    Custom,
    MaxLength,
    MinLength,
    NonEmpty,
    OneOf,
    RuleSpec,
    SubsetOf,
)
from bastion.pipeline.contract.schema import Violation


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What a rule may compare the output with: values supplied with the request (a task's
    input, the ids retrieved for an answer), by name."""

    values: Mapping[str, Any] = field(default_factory=dict)


CustomRule = Callable[[Any, RuleContext], Iterable[str] | None]
_REGISTRY: dict[str, CustomRule] = {}


def register_rule(name: str) -> Callable[[CustomRule], CustomRule]:
    """Register ``fn(value, ctx) -> iterable of violation messages`` under ``name``."""

    def decorate(fn: CustomRule) -> CustomRule:
        _REGISTRY[name] = fn
        return fn

    return decorate


def registered_rules() -> list[str]:
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------- evaluation

_MISSING = object()


def resolve(value: Any, path: str) -> list[tuple[str, Any]]:
    """The (json path, value) pairs ``path`` names in ``value``; absent fields yield _MISSING."""
    found: list[tuple[str, Any]] = [("$", value)]
    for part in path.split("."):
        each = part.endswith("[]")
        name = part[:-2] if each else part
        step: list[tuple[str, Any]] = []
        for where, node in found:
            child = node.get(name, _MISSING) if isinstance(node, dict) else _MISSING
            here = f"{where}.{name}"
            if each and isinstance(child, list):
                step.extend((f"{here}[{i}]", item) for i, item in enumerate(child))
            else:
                step.append((here, child))
        found = step
    return found


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, dict)) else None


def _blank(value: Any) -> bool:
    if value is _MISSING or value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, (list, dict)) and not value


def check_rule(spec: RuleSpec, value: Any, ctx: RuleContext) -> list[Violation]:
    if isinstance(spec, Custom):
        fn = _REGISTRY.get(spec.name)
        if fn is None:
            return [Violation("rule", "$", f"custom rule {spec.name!r} is not registered")]
        return [Violation("rule", "$", str(msg)) for msg in (fn(value, ctx) or ())]
    out: list[Violation] = []
    for where, node in resolve(value, spec.field):
        if isinstance(spec, NonEmpty):
            if _blank(node):
                out.append(Violation("rule", where, "must not be empty"))
            continue
        if node is _MISSING:
            continue  # presence is the schema's job (or non_empty's)
        size = _size(node)
        if isinstance(spec, MaxLength) and size is not None and size > spec.max:
            out.append(Violation("rule", where, f"length {size} exceeds the maximum {spec.max}"))
        elif isinstance(spec, MinLength) and size is not None and size < spec.min:
            out.append(Violation("rule", where, f"length {size} is below the minimum {spec.min}"))
        elif isinstance(spec, OneOf) and node not in spec.values:
            out.append(Violation("rule", where, f"{node!r} is not one of {spec.values!r}"))
        elif isinstance(spec, SubsetOf):
            allowed = ctx.values.get(spec.source)
            items = node if isinstance(node, list) else [node]
            for item in items:
                if not isinstance(allowed, (list, tuple, set, frozenset)) or item not in allowed:
                    out.append(Violation("rule", where,
                                         f"{item!r} is not one of the supplied {spec.source}"))
    return out


def check_rules(specs: Iterable[RuleSpec], value: Any, ctx: RuleContext) -> list[Violation]:
    out: list[Violation] = []
    for spec in specs:
        out.extend(check_rule(spec, value, ctx))
    return out


def unknown_custom_rules(specs: Iterable[RuleSpec]) -> list[str]:
    """Custom rule names not registered (checked at start-up so a typo fails fast)."""
    return [s.name for s in specs if isinstance(s, Custom) and s.name not in _REGISTRY]
