"""Config is validated at start-up, errors name file, field and reason, and it is hashed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from bastion.config import ConfigError, load_config, parse_config
from tests.conftest import SIM_CONFIG


def test_embedded_default_loads_and_names_the_local_model() -> None:
    loaded = load_config(None)
    assert loaded.config.version == 1
    target = loaded.config.models["smollm2"].targets[0]
    assert loaded.config.providers[target.provider].type == "local"
    assert len(loaded.hash) == 16


def test_hash_follows_content() -> None:
    a = parse_config(SIM_CONFIG)
    b = parse_config(SIM_CONFIG)
    c = parse_config(SIM_CONFIG.replace("seed: 7", "seed: 9"))
    assert a.hash == b.hash
    assert a.hash != c.hash


@pytest.mark.parametrize(
    ("mutation", "field", "reason"),
    [
        (lambda t: t.replace("version: 1", "version: 7"), "(root)", "version 7"),
        (lambda t: t.replace("version: 1\n", ""), "version", "required"),
        (lambda t: t.replace("timeout_s: 2, retries: 2", "timeout_s: -1, retries: 2"),
         "models.fast.targets.0.timeout_s", "greater than 0"),
        (lambda t: t.replace("provider: backup", "provider: nowhere"),
         "models.fast.targets.1.provider", "unknown provider 'nowhere'"),
        (lambda t: t.replace("type: simulated\n    seed: 7", "type: martian\n    seed: 7"),
         "providers.sim", "martian"),
        (lambda t: t.replace("seed: 7", "seed: 7\n    colour: blue"),
         "providers.sim.colour", "Extra inputs are not permitted"),
        (lambda t: t.replace("provider: backup, model: sim-backup",
                             "provider: sim, model: sim-primary"),
         "models.fast.targets", "appears twice"),
        # The settings this change added: each bad value is named with its field.
        (lambda t: t + "state: {sqlite_path: x.db, hot: redis}\n", "state.hot",
         "'auto', 'memory', 'sqlite' or 'lmdb'"),
        (lambda t: t + "cache: {max_entries: 0}\n", "cache.max_entries",
         "greater than or equal to 1"),
        (lambda t: t + "auth: {key_recheck_s: 0}\n", "auth.key_recheck_s", "greater than 0"),
        (lambda t: t + "auth: {key_cache_entries: -1}\n", "auth.key_cache_entries",
         "greater than or equal to 0"),
    ],
)
def test_invalid_config_names_field_and_reason(mutation, field, reason) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(mutation(SIM_CONFIG), source="bad.yaml")
    text = str(info.value)
    assert text.startswith("bad.yaml: invalid config")
    assert any(f == field or f.startswith(field) for f, _ in info.value.problems), text
    assert reason in text


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("version: 1\nproviders: [\n", source="broken.yaml")
    assert "line" in info.value.problems[0][0]


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/bastion.yaml")
    assert "/nonexistent/bastion.yaml" in str(info.value)


def test_secrets_are_named_not_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    text = textwrap.dedent("""
        version: 1
        providers:
          up: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: MY_KEY}
        models:
          m: {targets: [{provider: up, model: x}]}
    """)
    monkeypatch.setenv("MY_KEY", "sk-very-secret")
    loaded = parse_config(text)
    dumped = loaded.config.model_dump_json()
    assert "sk-very-secret" not in dumped
    assert "MY_KEY" in dumped


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_config_check_ok(tmp_path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(SIM_CONFIG)
    result = _cli("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert parse_config(SIM_CONFIG).hash in result.stdout


def test_cli_config_check_fails_with_file_field_reason(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SIM_CONFIG.replace("retries: 2", "retries: 99"))
    result = _cli("config", "check", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert "models.fast.targets.0.retries" in result.stderr
    assert "less than or equal to 10" in result.stderr
