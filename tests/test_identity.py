"""Tenants and API keys: keys are shown once and stored only as hashes; revocation and disabled
tenants take effect at once in-process and within the cache TTL elsewhere; both stores agree."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bastion.domain.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from bastion.domain.identity import ApiKey, KeyRecord, Principal, Tenant
from bastion.services.identity import IdentityService, PrincipalCache, hash_key
from bastion.stores.identity import IdentityStore, MemoryIdentityStore, SqliteIdentityStore


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IdentityStore]:
    s: IdentityStore = (MemoryIdentityStore() if request.param == "memory"
                        else SqliteIdentityStore(str(tmp_path / "state.db")))
    yield s
    await s.aclose()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """Wraps a store and counts key lookups, to see what the cache saves."""

    def __init__(self, inner: IdentityStore) -> None:
        self.inner = inner
        self.lookups = 0
        self.gate: asyncio.Event | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def find_key_and_tenant(self, key_hash: str) -> tuple[ApiKey, Tenant | None] | None:
        self.lookups += 1
        found = await self.inner.find_key_and_tenant(key_hash)
        if self.gate is not None:
            await self.gate.wait()
        return found


# --------------------------------------------------------------------------- keys


async def test_a_key_is_shown_once_and_only_its_hash_is_kept(store: IdentityStore) -> None:
    identity = IdentityService(store)
    tenant = await identity.create_tenant("acme")
    key, plaintext = await identity.create_key(tenant.id, "ci")
    assert plaintext.startswith("bst_") and len(plaintext) == 4 + 43  # 32 bytes, url-safe
    assert key.prefix == plaintext[:12] and key.tenant_id == "acme" and not key.revoked
    assert plaintext not in repr(key) and hash_key(plaintext) not in repr(key)
    assert hash_key(plaintext) not in repr(KeyRecord(key, hash_key(plaintext)))
    assert await store.find_key_by_hash(hash_key(plaintext)) == key
    assert await identity.authenticate(plaintext) == Principal("acme", key.id)
    _, other = await identity.create_key(tenant.id, "ci")
    assert other != plaintext


async def test_a_key_and_its_tenant_come_back_in_one_read(store: IdentityStore) -> None:
    identity = IdentityService(store)
    await identity.create_tenant("acme")
    key, plaintext = await identity.create_key("acme", "ci")
    found = await store.find_key_and_tenant(hash_key(plaintext))
    assert found is not None
    assert found[0] == key and found[1] == await store.get_tenant("acme")
    assert found[1] is not None and not found[1].disabled
    await store.set_tenant_disabled("acme", True)
    found = await store.find_key_and_tenant(hash_key(plaintext))
    assert found is not None and found[1] is not None and found[1].disabled
    assert await store.find_key_and_tenant(hash_key("bst_not-a-key")) is None


async def test_the_sqlite_file_never_holds_a_plaintext_key(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    identity = IdentityService(SqliteIdentityStore(str(path)))
    await identity.create_tenant("acme")
    plaintexts = [(await identity.create_key("acme", f"k{i}"))[1] for i in range(5)]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the db, and any WAL
    for plaintext in plaintexts:
        assert hash_key(plaintext).encode() in raw  # stored, as its hash ...
        assert plaintext.encode() not in raw  # ... and never as itself
        assert plaintext[12:].encode() not in raw  # not even the undisplayed part
    await identity.aclose()
    reopened = IdentityService(SqliteIdentityStore(str(path)))
    assert (await reopened.authenticate(plaintexts[0])).tenant_id == "acme"  # durable
    await reopened.aclose()


async def test_unknown_missing_and_foreign_tokens_are_refused(store: IdentityStore) -> None:
    identity = IdentityService(store)
    await identity.create_tenant("acme")
    for token in (None, "", "bst_" + "x" * 43, "sk-not-ours", "bst_" + "y" * 400):
        with pytest.raises(Unauthenticated) as info:
            await identity.authenticate(token)
        assert info.value.status == 401


async def test_keys_are_listed_per_tenant_without_secrets(store: IdentityStore) -> None:
    identity = IdentityService(store)
    for name in ("acme", "globex"):
        await identity.create_tenant(name)
    a1, _ = await identity.create_key("acme", "one")
    g1, _ = await identity.create_key("globex", "one")
    a2, _ = await identity.create_key("acme", "two")
    assert await identity.list_keys("acme") == [a1, a2]
    assert await identity.list_keys() == [a1, g1, a2]
    with pytest.raises(NotFound) as info:
        await identity.list_keys("initech")
    assert info.value.param == "tenant"


async def test_a_key_needs_an_existing_tenant_and_a_name(store: IdentityStore) -> None:
    identity = IdentityService(store)
    with pytest.raises(NotFound) as info:
        await identity.create_key("nobody", "ci")
    assert info.value.param == "tenant"
    await identity.create_tenant("acme")
    with pytest.raises(InvalidRequest) as bad:
        await identity.create_key("acme", "")
    assert bad.value.param == "name"


# --------------------------------------------------------------------------- revocation


async def test_a_revoked_key_stops_working_at_once(store: IdentityStore) -> None:
    identity = IdentityService(store)
    await identity.create_tenant("acme")
    key, plaintext = await identity.create_key("acme", "ci")
    await identity.authenticate(plaintext)  # now cached
    revoked = await identity.revoke_key(key.id)
    assert revoked.revoked and revoked.revoked_at is not None
    with pytest.raises(Unauthenticated) as info:
        await identity.authenticate(plaintext)
    assert info.value.code == "api_key_revoked"
    again = await identity.revoke_key(key.id)  # idempotent: the first revocation stands
    assert again.revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        await identity.revoke_key("key_missing")


async def test_a_disabled_tenant_authenticates_no_key(store: IdentityStore) -> None:
    identity = IdentityService(store)
    await identity.create_tenant("acme")
    _, plaintext = await identity.create_key("acme", "ci")
    await identity.authenticate(plaintext)
    assert (await identity.set_tenant_disabled("acme")).disabled
    with pytest.raises(Unauthenticated) as info:
        await identity.authenticate(plaintext)
    assert info.value.code == "tenant_disabled"
    await identity.set_tenant_disabled("acme", False)
    assert (await identity.authenticate(plaintext)).tenant_id == "acme"
    with pytest.raises(NotFound):
        await identity.set_tenant_disabled("nobody")


# --------------------------------------------------------------------------- the cache


async def test_the_cache_saves_lookups_until_a_change_anywhere() -> None:
    clock = FakeClock()
    store = CountingStore(MemoryIdentityStore())
    identity = IdentityService(store, cache_ttl_s=5, clock=clock)
    await identity.create_tenant("acme")
    _, plaintext = await identity.create_key("acme", "ci")
    other, other_plaintext = await identity.create_key("acme", "other")
    for _ in range(10):
        await identity.authenticate(plaintext)
    assert store.lookups == 1
    clock.now += 60  # no change anywhere: an idle key stays cached however long it idles
    await identity.authenticate(plaintext)
    assert store.lookups == 1
    await store.revoke_key(other.id, 1)  # behind this service's back, as another process
    await identity.authenticate(plaintext)
    assert store.lookups == 1  # not looked at again before the interval is over
    clock.now += 5.1
    await identity.authenticate(plaintext)
    assert store.lookups == 2  # the counter moved: the cache was emptied
    with pytest.raises(Unauthenticated):
        await identity.authenticate(other_plaintext)


async def test_ten_thousand_keys_are_each_read_once() -> None:
    store = CountingStore(MemoryIdentityStore())
    identity = IdentityService(store)
    await identity.create_tenant("acme")
    keys = [(await identity.create_key("acme", f"k{i}"))[1] for i in range(10_000)]
    for _ in range(2):
        for plaintext in keys:
            await identity.authenticate(plaintext)
    assert store.lookups == 10_000


async def test_another_workers_revocation_is_seen_within_the_ttl(tmp_path: Path) -> None:
    clock = FakeClock()
    path = str(tmp_path / "state.db")
    worker = IdentityService(SqliteIdentityStore(path), cache_ttl_s=5, clock=clock)
    admin = IdentityService(SqliteIdentityStore(path))
    await admin.create_tenant("acme")
    key, plaintext = await admin.create_key("acme", "ci")
    assert (await worker.authenticate(plaintext)).key_id == key.id  # created elsewhere: works
    await admin.revoke_key(key.id)
    assert (await worker.authenticate(plaintext)).key_id == key.id  # cached: the documented lag
    clock.now += 5.1
    with pytest.raises(Unauthenticated):
        await worker.authenticate(plaintext)
    await worker.aclose()
    await admin.aclose()


async def test_a_lookup_racing_a_revocation_does_not_cache_the_old_answer() -> None:
    store = CountingStore(MemoryIdentityStore())
    identity = IdentityService(store)
    await identity.create_tenant("acme")
    key, plaintext = await identity.create_key("acme", "ci")
    store.gate = asyncio.Event()
    racing = asyncio.ensure_future(identity.authenticate(plaintext))
    await asyncio.sleep(0)  # the lookup has read the key and waits
    await identity.revoke_key(key.id)
    store.gate.set()
    await racing
    with pytest.raises(Unauthenticated):
        await identity.authenticate(plaintext)


def test_the_cache_is_bounded() -> None:
    cache = PrincipalCache(max_entries=2)
    for i in range(5):
        cache.put(f"h{i}", Principal("acme", f"key_{i}"), cache.generation)
    assert len(cache) == 2 and cache.get("h4") is not None and cache.get("h0") is None


# --------------------------------------------------------------------------- tenants


async def test_tenant_names_are_unique_slugs(store: IdentityStore) -> None:
    identity = IdentityService(store)
    tenant = await identity.create_tenant("acme")
    assert (tenant.id, tenant.name, tenant.disabled) == ("acme", "acme", False)
    with pytest.raises(Conflict) as dup:
        await identity.create_tenant("acme")
    assert dup.value.status == 409
    for bad in ("", "Acme", "acme corp", "-acme", "a" * 64, "acme/../x"):
        with pytest.raises(InvalidRequest) as info:
            await identity.create_tenant(bad)
        assert info.value.param == "name"
    await identity.create_tenant("globex")
    assert [t.id for t in await identity.list_tenants()] == ["acme", "globex"]


async def test_tenant_names_are_unique_across_connections(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    first, second = SqliteIdentityStore(path), SqliteIdentityStore(path)
    await IdentityService(first).create_tenant("acme")
    with pytest.raises(Conflict):
        await IdentityService(second).create_tenant("acme")
    await first.aclose()
    await second.aclose()


_WORKER = textwrap.dedent("""
    import asyncio, sys
    from bastion.domain.errors import Conflict
    from bastion.services.identity import IdentityService
    from bastion.stores.identity import SqliteIdentityStore

    async def main():
        identity = IdentityService(SqliteIdentityStore(sys.argv[1]))
        try:
            await identity.create_tenant("acme")
        except Conflict:
            pass
        for i in range(15):
            await identity.create_key("acme", f"k{i}")
        await identity.aclose()

    asyncio.run(main())
""")


def test_several_processes_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, path], stderr=subprocess.PIPE)
             for _ in range(4)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors

    async def count() -> int:
        store = SqliteIdentityStore(path)
        try:
            return len(await store.list_keys("acme"))
        finally:
            await store.aclose()

    assert asyncio.run(count()) == 60


async def test_sqlite_calls_run_in_one_worker_thread_off_the_loop(tmp_path: Path) -> None:
    threads: set[tuple[int, str]] = set()

    class Recording(SqliteIdentityStore):
        def _conn(self) -> Any:
            current = threading.current_thread()
            threads.add((current.ident or 0, current.name))
            return super()._conn()

    identity = IdentityService(Recording(str(tmp_path / "state.db")))
    await identity.create_tenant("acme")
    await asyncio.gather(*(identity.create_key("acme", f"k{i}") for i in range(10)))
    await identity.list_keys()
    await identity.aclose()
    assert len(threads) == 1
    ((ident, name),) = threads
    assert ident != threading.get_ident() and name.startswith("bastion-identity")
