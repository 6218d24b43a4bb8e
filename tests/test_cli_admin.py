"""``bastion tenants`` and ``bastion keys`` work on the config's SQLite file: the plaintext key is
printed once, alone on stdout; keys need a durable store; errors exit 1 with a reason."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bastion.cli_admin import keys_app, tenants_app
from bastion.domain.errors import Unauthenticated
from bastion.services.identity import IdentityService, hash_key
from bastion.stores.identity import SqliteIdentityStore

SIM = """
version: 1
providers:
  sim: {type: simulated}
models:
  fast:
    targets: [{provider: sim, model: sim-1}]
"""

app = typer.Typer()
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bastion.yaml"
    path.write_text(SIM + f"state: {{sqlite_path: {tmp_path / 'data' / 'state.db'}}}\n")
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def authenticate(db: Path, token: str) -> str:
    async def go() -> str:
        identity = IdentityService(SqliteIdentityStore(str(db)))
        try:
            return (await identity.authenticate(token)).tenant_id
        finally:
            await identity.aclose()

    return asyncio.run(go())


def test_create_a_tenant_and_a_key_that_authenticates(config: Path) -> None:
    assert run("tenants", "create", "acme", "--config", str(config))[0] == 0
    code, out, err = run("keys", "create", "--tenant", "acme", "--name", "ci",
                         "--config", str(config))
    assert code == 0
    plaintext = out.strip()
    assert plaintext.startswith("bst_") and "\n" not in plaintext  # alone on stdout
    assert "will not be shown again" in err and plaintext[:12] in err
    db = config.parent / "data" / "state.db"  # the parent directory was created
    assert authenticate(db, plaintext) == "acme"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT key_hash FROM api_keys").fetchall() == [(hash_key(plaintext),)]


def test_list_shows_prefixes_never_keys(config: Path) -> None:
    run("tenants", "create", "acme", "--config", str(config))
    run("tenants", "create", "globex", "--config", str(config))
    _, key_a, _ = run("keys", "create", "-t", "acme", "--config", str(config))
    run("keys", "create", "-t", "globex", "--config", str(config))
    code, out, _ = run("tenants", "list", "--config", str(config))
    assert code == 0 and "acme" in out and "globex" in out
    code, out, _ = run("keys", "list", "--tenant", "acme", "--config", str(config))
    assert code == 0 and key_a.strip()[:12] in out and key_a.strip() not in out
    assert "globex" not in out
    _, everyone, _ = run("keys", "list", "--config", str(config))
    assert "acme" in everyone and "globex" in everyone


def test_revoke_stops_the_key(config: Path) -> None:
    run("tenants", "create", "acme", "--config", str(config))
    plaintext = run("keys", "create", "-t", "acme", "--config", str(config))[1].strip()
    db = config.parent / "data" / "state.db"
    with sqlite3.connect(db) as conn:
        (key_id,) = conn.execute("SELECT id FROM api_keys").fetchone()
    code, out, _ = run("keys", "revoke", key_id, "--config", str(config))
    assert code == 0 and f"revoked key {key_id}" in out
    with pytest.raises(Unauthenticated):
        authenticate(db, plaintext)
    assert "revoked" in run("keys", "list", "--config", str(config))[1]
    code, _, err = run("keys", "revoke", "key_missing", "--config", str(config))
    assert code == 1 and "no API key" in err


def test_errors_exit_1_with_a_reason(config: Path) -> None:
    run("tenants", "create", "acme", "--config", str(config))
    code, _, err = run("tenants", "create", "acme", "--config", str(config))
    assert code == 1 and "already exists" in err
    code, _, err = run("tenants", "create", "Bad Name", "--config", str(config))
    assert code == 1 and "tenant name" in err
    code, _, err = run("keys", "create", "--tenant", "nobody", "--config", str(config))
    assert code == 1 and "no tenant 'nobody'" in err


def test_keys_need_a_durable_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory_only = tmp_path / "memory.yaml"
    memory_only.write_text(SIM)
    for args in (("tenants", "list"), ("keys", "create", "--tenant", "acme")):
        code, out, err = run(*args, "--config", str(memory_only))
        assert code == 1 and "durable store" in err and "sqlite_path" in err and not out


def test_the_embedded_default_keeps_tenants_in_bastion_db(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert run("tenants", "create", "acme") == (0, "created tenant acme\n", "")
    assert (tmp_path / "bastion.db").exists()
    code, out, _ = run("tenants", "list")
    assert code == 0 and "acme" in out


def test_the_config_may_come_from_bastion_config(config: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_CONFIG", str(config))
    assert run("tenants", "create", "acme") == (0, "created tenant acme\n", "")


def test_a_broken_config_exits_1_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nproviders: [\n")
    code, _, err = run("tenants", "list", "--config", str(broken))
    assert code == 1 and str(broken) in err
