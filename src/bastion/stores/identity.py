"""Tenants and API keys: in memory, or in the SQLite file shared by every worker.

Stores persist what they are given and enforce uniqueness atomically (tenant ids and names,
key hashes); validation, hashing and caching live in ``services/identity.py``. A store never
sees a plaintext key, only its hash.

The SQLite store runs every call in one dedicated worker thread that owns the connection:
sqlite3 calls block, and one thread keeps them off the event loop without a connection pool or
cross-thread sharing. Several processes may open the same file: WAL lets readers proceed during
a write, ``busy_timeout`` makes a writer wait for another process's lock instead of failing, and
every write is one ``BEGIN IMMEDIATE`` transaction, so no two writers deadlock on a lock upgrade.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any, Protocol, TypeVar

from bastion.domain.errors import Conflict, NotFound
from bastion.domain.identity import ApiKey, KeyRecord, Tenant
from bastion.stores.sqlite_setup import prepare_wal

T = TypeVar("T")


class IdentityStore(Protocol):
    async def create_tenant(self, tenant: Tenant) -> None:
        """Store ``tenant``; ``Conflict`` if its id or name is taken."""

    async def get_tenant(self, tenant_id: str) -> Tenant | None: ...

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant, by name."""

    async def set_tenant_disabled(self, tenant_id: str, disabled: bool) -> Tenant | None:
        """The updated tenant, or None if there is no such tenant."""

    async def create_key(self, record: KeyRecord) -> None:
        """Store a key by its hash; ``NotFound`` for an unknown tenant, ``Conflict`` for a
        hash or id already stored."""

    async def find_key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    async def find_key_and_tenant(self, key_hash: str) -> tuple[ApiKey, Tenant | None] | None:
        """The key with this hash and its tenant (None if the tenant is gone), in one read:
        what authenticating a key the cache does not hold needs."""

    async def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        """Keys, revoked ones included, oldest first; of one tenant when ``tenant_id`` is set."""

    async def revoke_key(self, key_id: str, at: int) -> ApiKey | None:
        """Mark the key revoked at ``at`` unless it already is (the first revocation time is
        kept): idempotent. The key, or None if there is no such key."""

    async def changes(self) -> int:
        """A number that moves whenever a key may stop authenticating (a revocation, a tenant
        disabled or enabled), whichever process made the change: caches of principals
        compare it instead of re-reading every key."""

    async def aclose(self) -> None: ...


class MemoryIdentityStore:
    """For tests and the in-memory state mode: lost on restart, one process only. Every method
    completes without awaiting, so each is atomic on the event loop."""

    def __init__(self) -> None:
        self._tenants: dict[str, Tenant] = {}
        self._keys: dict[str, KeyRecord] = {}  # key id -> record, in creation order
        self._by_hash: dict[str, str] = {}  # key hash -> key id
        self._changes = 0

    async def create_tenant(self, tenant: Tenant) -> None:
        if tenant.id in self._tenants or tenant.name in {t.name for t in self._tenants.values()}:
            raise Conflict(f"a tenant named {tenant.name!r} already exists", param="name")
        self._tenants[tenant.id] = tenant

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return self._tenants.get(tenant_id)

    async def list_tenants(self) -> list[Tenant]:
        return sorted(self._tenants.values(), key=lambda t: t.name)

    async def set_tenant_disabled(self, tenant_id: str, disabled: bool) -> Tenant | None:
        if tenant_id not in self._tenants:
            return None
        self._tenants[tenant_id] = replace(self._tenants[tenant_id], disabled=disabled)
        self._changes += 1
        return self._tenants[tenant_id]

    async def create_key(self, record: KeyRecord) -> None:
        if record.key.tenant_id not in self._tenants:
            raise NotFound(f"no tenant {record.key.tenant_id!r}", param="tenant")
        if record.key_hash in self._by_hash or record.key.id in self._keys:
            raise Conflict("an API key with this id or hash already exists")
        self._keys[record.key.id] = record
        self._by_hash[record.key_hash] = record.key.id

    async def find_key_by_hash(self, key_hash: str) -> ApiKey | None:
        key_id = self._by_hash.get(key_hash)
        return None if key_id is None else self._keys[key_id].key

    async def find_key_and_tenant(self, key_hash: str) -> tuple[ApiKey, Tenant | None] | None:
        key = await self.find_key_by_hash(key_hash)
        return None if key is None else (key, self._tenants.get(key.tenant_id))

    async def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        return [r.key for r in self._keys.values()
                if tenant_id is None or r.key.tenant_id == tenant_id]

    async def revoke_key(self, key_id: str, at: int) -> ApiKey | None:
        record = self._keys.get(key_id)
        if record is None:
            return None
        if record.key.revoked_at is None:
            record = self._keys[key_id] = replace(record, key=replace(record.key, revoked_at=at))
            self._changes += 1
        return record.key

    async def changes(self) -> int:
        return self._changes

    async def aclose(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL, disabled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id), name TEXT NOT NULL, prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL, created_at INTEGER NOT NULL, revoked_at INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_key_hash ON api_keys(key_hash);
CREATE INDEX IF NOT EXISTS api_keys_tenant_id ON api_keys(tenant_id);
CREATE TABLE IF NOT EXISTS identity_changes (id INTEGER PRIMARY KEY CHECK (id = 1),
    n INTEGER NOT NULL);
INSERT OR IGNORE INTO identity_changes VALUES (1, 0);
"""
_CHANGED = "UPDATE identity_changes SET n = n + 1 WHERE id = 1"
_TENANTS = "SELECT id, name, created_at, disabled FROM tenants"
_KEYS = "SELECT id, tenant_id, name, prefix, created_at, revoked_at FROM api_keys"
_KEY_AND_TENANT = (
    "SELECT k.id, k.tenant_id, k.name, k.prefix, k.created_at, k.revoked_at, t.id, t.name, "
    "t.created_at, t.disabled FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id "
    "WHERE k.key_hash = ?")
#: How long a write waits for another process's lock before giving up (milliseconds).
_BUSY_TIMEOUT_MS = 10_000


def _tenant(row: tuple[Any, ...]) -> Tenant:
    return Tenant(row[0], row[1], row[2], bool(row[3]))


class SqliteIdentityStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-identity")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    # -- in the worker thread, the only one that touches the connection

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            # ``timeout`` is SQLite's busy timeout: wait for another process's lock.
            db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000,
                                 isolation_level=None)
            try:
                prepare_wal(db, _SCHEMA, foreign_keys=True)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _write(self, sql: str, args: tuple[Any, ...], then: str | None = None,
               then_args: tuple[Any, ...] = (), *, change: bool = False
               ) -> list[tuple[Any, ...]]:
        """One write in its own transaction, and optionally a read of its result inside it;
        ``change``: the write may stop a key from authenticating (moves ``changes``)."""
        db = self._conn()
        with db:
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute(sql, args)
            if change and cursor.rowcount:
                db.execute(_CHANGED)
            return db.execute(then, then_args).fetchall() if then else []

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._conn().execute(sql, args).fetchall()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- the protocol

    async def create_tenant(self, tenant: Tenant) -> None:
        try:
            await self._call(self._write, "INSERT INTO tenants VALUES (?, ?, ?, ?)",
                             (tenant.id, tenant.name, tenant.created_at, int(tenant.disabled)))
        except sqlite3.IntegrityError:
            raise Conflict(f"a tenant named {tenant.name!r} already exists",
                           param="name") from None

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        rows = await self._call(self._read, f"{_TENANTS} WHERE id = ?", (tenant_id,))
        return _tenant(rows[0]) if rows else None

    async def list_tenants(self) -> list[Tenant]:
        return [_tenant(r) for r in await self._call(self._read, f"{_TENANTS} ORDER BY name")]

    async def set_tenant_disabled(self, tenant_id: str, disabled: bool) -> Tenant | None:
        rows = await self._call(partial(self._write, change=True),
                                "UPDATE tenants SET disabled = ? WHERE id = ?",
                                (int(disabled), tenant_id), f"{_TENANTS} WHERE id = ?",
                                (tenant_id,))
        return _tenant(rows[0]) if rows else None

    async def create_key(self, record: KeyRecord) -> None:
        k = record.key
        try:
            await self._call(self._write, "INSERT INTO api_keys (id, tenant_id, name, prefix, "
                             "created_at, revoked_at, key_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (k.id, k.tenant_id, k.name, k.prefix, k.created_at, k.revoked_at,
                              record.key_hash))
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise NotFound(f"no tenant {k.tenant_id!r}", param="tenant") from None
            raise Conflict("an API key with this id or hash already exists") from None

    async def find_key_by_hash(self, key_hash: str) -> ApiKey | None:
        rows = await self._call(self._read, f"{_KEYS} WHERE key_hash = ?", (key_hash,))
        return ApiKey(*rows[0]) if rows else None

    async def find_key_and_tenant(self, key_hash: str) -> tuple[ApiKey, Tenant | None] | None:
        # One trip through the store's thread instead of two: a key's first request paid
        # ~0.1 ms of CPU for each (the executor hand-off and the GIL coming back to it).
        rows = await self._call(self._read, _KEY_AND_TENANT, (key_hash,))
        if not rows:
            return None
        row = rows[0]
        return ApiKey(*row[:6]), (None if row[6] is None else _tenant(row[6:]))

    async def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        rows = await self._call(self._read, f"{_KEYS} WHERE ?1 IS NULL OR tenant_id = ?1 "
                                "ORDER BY created_at, rowid", (tenant_id,))
        return [ApiKey(*r) for r in rows]

    async def revoke_key(self, key_id: str, at: int) -> ApiKey | None:
        rows = await self._call(partial(self._write, change=True),
                                "UPDATE api_keys SET revoked_at = ? "
                                "WHERE id = ? AND revoked_at IS NULL", (at, key_id),
                                f"{_KEYS} WHERE id = ?", (key_id,))
        return ApiKey(*rows[0]) if rows else None

    async def changes(self) -> int:
        rows = await self._call(self._read, "SELECT n FROM identity_changes WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._call(self._close)
            finally:
                self._executor.shutdown(wait=True)
