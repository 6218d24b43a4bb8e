"""The one versioned config file: parsed, validated and hashed at start-up.

Errors name the file, the field path and the reason, so ``bastion config check`` and a failed
start say exactly what to fix. Secrets are never in the file: a provider names the environment
variable that holds its key (``api_key_env``) and the value is read only when a request is sent.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bastion.config.root import BastionConfig


class ConfigError(Exception):
    """A config file that cannot be used; ``str()`` names the file, the field and the reason."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: invalid config"] + [f"  {field}: {reason}" for field, reason in problems]
        super().__init__("\n".join(lines))


class LoadedConfig:
    """A validated config with where it came from and the hash of its content."""

    def __init__(self, config: BastionConfig, source: str, content_hash: str) -> None:
        self.config = config
        self.source = source
        self.hash = content_hash


def _field_path(loc: tuple[Any, ...]) -> str:
    # Drop pydantic's discriminator tags (e.g. "simulated") so the path matches the YAML.
    parts = [str(p) for p in loc if p not in ("openai", "anthropic", "local", "simulated")
             or loc.index(p) < 2]
    return ".".join(parts) or "(root)"


def parse_config(text: str, source: str = "<string>") -> LoadedConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(source, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")])
    if not isinstance(raw, dict):
        raise ConfigError(source, [("(root)", "the file must hold a mapping")])
    if "version" not in raw:
        raise ConfigError(source, [("version", "required (this bastion reads version 1)")])
    try:
        config = BastionConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            field = _field_path(err["loc"])
            if field == "(root)" and ": " in msg and msg.split(": ", 1)[0].count(".") >= 1:
                field, msg = msg.split(": ", 1)
            problems.append((field, msg))
        raise ConfigError(source, problems) from None
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return LoadedConfig(config, source, digest)


def load_config(path: str | os.PathLike[str] | None) -> LoadedConfig:
    """Load ``path``, or the embedded default (the local model, no keys) when it is None."""
    if path is None:
        default = Path(__file__).parent.parent / "defaults" / "bastion.yaml"
        return parse_config(default.read_text(), source=str(default))
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(str(p), [("(file)", exc.strerror or str(exc))]) from None
    return parse_config(text, source=str(p))


def read_secret(env_name: str | None) -> str | None:
    """The value of a secret named in config. Never log the result."""
    if not env_name:
        return None
    return os.environ.get(env_name)

