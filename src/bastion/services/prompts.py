"""Named, versioned prompt templates, loaded from disk and checked before the first request.

Prompts are product code: a typo in a variable name or a broken ``{% if %}`` must stop the
process at start-up, not surface on the first request that reaches that branch. So every
``<name>@<version>.yaml`` file is parsed, compiled and inspected once at load, and all problems
in all files are reported together as one ``ConfigError``. Templates render in jinja2's
immutable sandbox with no loader and strict undefined variables: a template can read the values
it is given but cannot reach Python internals, mutate its inputs or pull in other files, and a
missing variable is the caller's error (``InvalidRequest``), never blank text inside a prompt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bastion.config import ConfigError
from bastion.domain.errors import InvalidRequest

ROLES = ("system", "user", "assistant")

_FILE_NAME = re.compile(r"([a-z][a-z0-9_]*)@([0-9]+)\.yaml")
_REF = re.compile(r"([a-z][a-z0-9_]*)(?:@([0-9]+))?")
_FILE_RULE = "file name must be <name>@<version>.yaml (name [a-z][a-z0-9_]*, version >= 1)"
_TOP_KEYS = ("description", "messages")
_MESSAGE_KEYS = ("role", "content")
_FORBIDDEN: dict[type[nodes.Node], str] = {
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from-import",
}

# One engine for every prompt. No loader: include/extends/import have nothing to load from,
# and are rejected at load anyway so the failure names the file instead of a request.
_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
)

Problems = list[tuple[str, str]]


class UnknownPrompt(LookupError):
    """No template under that ref; the message lists the refs that do exist."""

    def __init__(self, ref: str, known: Iterable[str]) -> None:
        self.ref = ref
        self.known = list(known)
        super().__init__(f"unknown prompt {ref!r}; known: {', '.join(self.known) or '(none)'}")


@dataclass(frozen=True, slots=True)
class PromptMessage:
    """One chat message of a template: its role, its source and the compiled template."""

    role: str
    source: str
    template: jinja2.Template = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """A compiled, validated prompt. ``variables`` are the names a caller may have to supply."""

    name: str
    version: int
    messages: tuple[PromptMessage, ...] = field(repr=False)
    variables: frozenset[str]
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def render(self, variables: Mapping[str, Any]) -> list[dict[str, str]]:
        """Render to OpenAI chat messages; a missing variable or unsafe access is the caller's."""
        values = dict(variables)
        out: list[dict[str, str]] = []
        for i, message in enumerate(self.messages):
            try:
                content = message.template.render(values)
            except UndefinedError as e:  # jinja's message names the variable or attribute
                raise InvalidRequest(f"prompt {self.ref}, messages.{i}: {e}", param="input") from e
            except SecurityError as e:
                raise InvalidRequest(
                    f"prompt {self.ref}, messages.{i}: unsafe template operation: {e}",
                    param="input",
                ) from e
            out.append({"role": message.role, "content": content})
        return out


def check_variables(template: PromptTemplate, allowed: Iterable[str]) -> list[str]:
    """The variables ``template`` uses that ``allowed`` does not declare, sorted."""
    return sorted(template.variables - set(allowed))


class PromptLibrary:
    """All prompt templates, by ``name@version``; a bare ``name`` means its latest version."""

    def __init__(self, templates: Iterable[PromptTemplate] = ()) -> None:
        self._by_ref: dict[str, PromptTemplate] = {}
        self._latest: dict[str, PromptTemplate] = {}
        for template in sorted(templates, key=lambda t: (t.name, t.version)):
            if template.ref in self._by_ref:
                raise ValueError(f"duplicate prompt {template.ref}")
            self._by_ref[template.ref] = template
            self._latest[template.name] = template  # ascending order: the last one wins

    @classmethod
    def empty(cls) -> PromptLibrary:
        return cls()

    @classmethod
    def load(cls, directory: str | Path) -> PromptLibrary:
        """Load every ``*.yaml`` in ``directory`` (not recursive); raise all problems at once."""
        root = Path(directory)
        if not root.is_dir():
            raise ConfigError(str(root), [("(directory)", "not a directory")])
        problems: Problems = []
        templates: list[PromptTemplate] = []
        seen: dict[tuple[str, int], str] = {}
        for path in sorted(root.iterdir()):
            if not path.is_file() or path.suffix not in (".yaml", ".yml"):
                continue
            match = _FILE_NAME.fullmatch(path.name)
            if match is None or int(match[2]) < 1:
                problems.append((path.name, _FILE_RULE))
                continue
            key = (match[1], int(match[2]))
            if key in seen:
                reason = f"duplicate prompt {key[0]}@{key[1]} (also defined by {seen[key]})"
                problems.append((path.name, reason))
                continue
            seen[key] = path.name
            template = _load_file(path, key[0], key[1], problems)
            if template is not None:
                templates.append(template)
        if problems:
            raise ConfigError(str(root), problems)
        return cls(templates)

    def get(self, ref: str) -> PromptTemplate:
        match = _REF.fullmatch(ref) if isinstance(ref, str) else None
        if match is not None:
            name, version = match[1], match[2]
            found = (self._latest.get(name) if version is None
                     else self._by_ref.get(f"{name}@{int(version)}"))
            if found is not None:
                return found
        raise UnknownPrompt(ref, self.refs())

    def refs(self) -> list[str]:
        return list(self._by_ref)

    def __contains__(self, ref: object) -> bool:
        try:
            self.get(ref)  # type: ignore[arg-type]
        except UnknownPrompt:
            return False
        return True

    def __len__(self) -> int:
        return len(self._by_ref)


def _load_file(path: Path, name: str, version: int, problems: Problems) -> PromptTemplate | None:
    fname = path.name
    before = len(problems)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        problems.append((fname, f"cannot read: {e}"))
        return None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problems.append((fname, f"invalid YAML: {where}{getattr(e, 'problem', None) or e}"))
        return None
    if not isinstance(data, dict):
        problems.append((fname, "must be a mapping with 'messages' and optional 'description'"))
        return None
    for key in sorted(str(k) for k in data if k not in _TOP_KEYS):
        problems.append((f"{fname}: {key}", "unknown key (allowed: description, messages)"))
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.append((f"{fname}: description", "must be a string"))
    raw = data.get("messages")
    if not isinstance(raw, list) or not raw:
        problems.append((f"{fname}: messages", "required: a non-empty list of {role, content}"))
        raw = []
    messages: list[PromptMessage] = []
    variables: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{fname}: messages.{i}"
        if not isinstance(item, dict):
            problems.append((where, "must be a mapping with 'role' and 'content'"))
            continue
        for key in sorted(str(k) for k in item if k not in _MESSAGE_KEYS):
            problems.append((f"{where}.{key}", "unknown key (allowed: role, content)"))
        role = item.get("role")
        if role not in ROLES:
            problems.append((f"{where}.role", f"must be one of {', '.join(ROLES)}, not {role!r}"))
        content = item.get("content")
        if not isinstance(content, str):
            problems.append((f"{where}.content", "required: a template string"))
            continue
        compiled = _compile(content, f"{where}.content", problems)
        if compiled is not None:
            messages.append(PromptMessage(str(role), content, compiled[0]))
            variables |= compiled[1]
    if len(problems) > before:
        return None
    return PromptTemplate(name, version, tuple(messages), frozenset(variables), description)


def _compile(
    source: str, where: str, problems: Problems
) -> tuple[jinja2.Template, frozenset[str]] | None:
    """Parse once, refuse cross-template tags, find the free variables, compile the same AST."""
    try:
        ast = _ENV.parse(source)
        banned = sorted({_FORBIDDEN[type(n)] for n in ast.find_all(tuple(_FORBIDDEN))})
        if banned:
            tags = " / ".join(banned)
            reason = f"{{% {tags} %}} is not allowed: prompt templates cannot load other templates"
            problems.append((where, reason))
            return None
        # Loop, set and macro names are declared; engine globals such as range() are skipped.
        used = frozenset(meta.find_undeclared_variables(ast))
        return _ENV.from_string(ast), used
    except TemplateSyntaxError as e:
        problems.append((where, f"template syntax error at line {e.lineno}: {e.message}"))
        return None
