"""Tenants and API keys: creating them, and turning a presented key into a ``Principal``.

Keys are ``bst_`` followed by 32 random bytes from ``secrets`` (url-safe base64). Only the
SHA-256 of the plaintext is stored. A fast, unsalted hash is the right tool here, as for
GitHub's and Stripe's tokens: salts and slow hashes (bcrypt, argon2) exist to make guessing
*low-entropy passwords* expensive, and a 256-bit random key cannot be guessed at any hash
speed. A fast hash also lets the store find a key by an indexed equality lookup on its hash, so
the comparison is never on the secret itself and there is no per-request KDF cost.

``authenticate`` sits on every request, so it keeps an in-process cache of presented key ->
principal (bounded, least recently used first out). Entries do not expire by age: every
``cache_ttl_s`` (5 s by default) the service reads the store's change counter, which moves
with every revocation and every tenant disabled or enabled, and empties the cache when it
moved. A revocation or a disabled tenant takes effect at once in the process that made it;
**another worker process, or the CLI working on the SQLite file, is seen within that
interval**. Unknown keys are not cached, so a key created elsewhere works at once.

Why not a TTL per entry: with one, a key used less often than every TTL was read from the
store on each of its requests (two SQLite queries, ~50 µs), and with more keys in use than the
cache holds every lookup missed: CPU per request went up 31% from 1 to 10,000 keys
(``bench/scaling.py``). With the counter, each process reads the store once per interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from bastion.domain.errors import InvalidRequest, NotFound, Unauthenticated
from bastion.domain.identity import (
    DEFAULT_PRINCIPAL,
    TENANT_NAME,
    ApiKey,
    KeyRecord,
    Principal,
    Tenant,
)
from bastion.stores.identity import IdentityStore

#: Every bastion key starts with this, so a leaked key is recognisable (secret scanners) and a
#: placeholder such as ``unused`` is never mistaken for one.
KEY_PREFIX = "bst_"
#: Characters of the plaintext kept for display: ``bst_`` and 8 random characters.
DISPLAY_PREFIX_CHARS = 12
_MAX_KEY_CHARS = 256
_MAX_KEY_NAME_CHARS = 100


def hash_key(plaintext: str) -> str:
    """The stored form of a key: SHA-256, hex (see the module docstring for why not a KDF)."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


#: Keys the principal cache's entries: a keyed hash, so the cache holds no plaintext and
#: no stored hash, and nothing outside this process can compute one.
_CACHE_SECRET = secrets.token_bytes(32)


def _cache_key(plaintext: str) -> bytes:
    """The principal cache's key for a presented key: BLAKE2b keyed with a per-process
    secret. Every request looks its key up; SHA-256 (the stored form, computed only on a
    miss) goes through OpenSSL's EVP layer and cost about twice as much per call."""
    return hashlib.blake2b(plaintext.encode(), key=_CACHE_SECRET, digest_size=16).digest()


def looks_like_key(token: str) -> bool:
    """Whether ``token`` is shaped like a bastion key; other tokens are placeholders."""
    return token.startswith(KEY_PREFIX)


class PrincipalCache:
    """Presented key (``_cache_key``) -> principal, least recently used first out.

    ``generation`` moves on every ``drop`` and ``clear``: a lookup that started before a
    revocation must not cache what it read, or the revoked key would keep working here."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, Principal] = OrderedDict()
        self.generation = 0

    def get(self, key: bytes) -> Principal | None:
        principal = self._entries.get(key)
        if principal is not None:
            self._entries.move_to_end(key)
        return principal

    def put(self, key: bytes, principal: Principal, generation: int) -> None:
        if generation != self.generation or self.max_entries <= 0:
            return
        self._entries[key] = principal
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop(self, *, key_id: str | None = None, tenant_id: str | None = None) -> None:
        """Forget the entries of a key or a tenant (rare: a revocation, a disabled tenant)."""
        self.generation += 1
        for h in [h for h, p in self._entries.items()
                  if (key_id is not None and p.key_id == key_id)
                  or (tenant_id is not None and p.tenant_id == tenant_id)]:
            del self._entries[h]

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class IdentityService:
    def __init__(self, store: IdentityStore, *, cache_ttl_s: float = 5.0,
                 cache_entries: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``cache_ttl_s``: how often the store's change counter is read (0: never cache)."""
        self.store = store
        self.cache = PrincipalCache(cache_entries if cache_ttl_s > 0 else 0)
        self.cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._checked_at: float | None = None
        self._changes: int | None = None
        self._checking: asyncio.Future[None] | None = None

    # -- tenants

    async def create_tenant(self, name: str) -> Tenant:
        """A new tenant whose id is ``name``; ``InvalidRequest`` for a name that is not a
        slug, ``Conflict`` when it exists."""
        if not isinstance(name, str) or not TENANT_NAME.match(name):
            raise InvalidRequest("a tenant name is 1-63 lower-case letters, digits, '-' or '_', "
                                 "starting with a letter or digit", param="name")
        tenant = Tenant(id=name, name=name, created_at=int(time.time()))
        await self.store.create_tenant(tenant)
        return tenant

    async def list_tenants(self) -> list[Tenant]:
        return await self.store.list_tenants()

    async def get_tenant(self, tenant_id: str) -> Tenant:
        tenant = await self.store.get_tenant(tenant_id)
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id!r}", param="tenant")
        return tenant

    async def set_tenant_disabled(self, tenant_id: str, disabled: bool = True) -> Tenant:
        """Disable (or re-enable) a tenant: its keys stop authenticating, nothing is deleted."""
        tenant = await self.store.set_tenant_disabled(tenant_id, disabled)
        if tenant is None:
            raise NotFound(f"no tenant {tenant_id!r}", param="tenant")
        self.cache.drop(tenant_id=tenant_id)
        return tenant

    # -- keys

    async def create_key(self, tenant_id: str, name: str = "default") -> tuple[ApiKey, str]:
        """A new key for the tenant and its plaintext. The plaintext is returned this once and
        is not recoverable: only its hash is stored."""
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_KEY_NAME_CHARS:
            raise InvalidRequest(f"a key name is 1-{_MAX_KEY_NAME_CHARS} characters",
                                 param="name")
        await self.get_tenant(tenant_id)
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id="key_" + secrets.token_hex(8), tenant_id=tenant_id, name=name,
                     prefix=plaintext[:DISPLAY_PREFIX_CHARS], created_at=int(time.time()))
        await self.store.create_key(KeyRecord(key, hash_key(plaintext)))
        return key, plaintext

    async def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        if tenant_id is not None:
            await self.get_tenant(tenant_id)
        return await self.store.list_keys(tenant_id)

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke at once in this process (and within the cache TTL everywhere else).
        Revoking a revoked key is not an error: it answers with the first revocation."""
        key = await self.store.revoke_key(key_id, int(time.time()))
        if key is None:
            raise NotFound(f"no API key {key_id!r}", param="key_id")
        self.cache.drop(key_id=key_id)
        return key

    # -- authentication

    async def authenticate(self, token: str | None) -> Principal:
        """The principal of a presented key; ``Unauthenticated`` for a missing, unknown or
        revoked key, or one whose tenant is disabled or gone."""
        if not token:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>' or "
                                  "'x-api-key: <key>'")
        if not looks_like_key(token) or len(token) > _MAX_KEY_CHARS:
            raise Unauthenticated("invalid API key")  # not ours: no store lookup
        cache_key = _cache_key(token)
        if self._checked_at is None or self._clock() - self._checked_at >= self.cache_ttl_s:
            await self._revalidate()
        cached = self.cache.get(cache_key)
        if cached is not None:
            return cached
        generation = self.cache.generation
        found = await self.store.find_key_and_tenant(hash_key(token))
        if found is None:
            raise Unauthenticated("invalid API key")
        key, tenant = found
        if key.revoked:
            raise Unauthenticated("this API key has been revoked", code="api_key_revoked")
        if tenant is None or tenant.disabled:
            raise Unauthenticated("the tenant of this API key is disabled",
                                  code="tenant_disabled")
        principal = Principal(tenant.id, key.id)
        self.cache.put(cache_key, principal, generation)
        return principal

    async def _revalidate(self) -> None:
        """Empty the cache if the store's change counter moved since it was last read. One
        request reads it; the others meanwhile use the cache as it is."""
        if self._checking is not None:
            return
        self._checking = asyncio.get_running_loop().create_future()
        try:
            changes = await self.store.changes()
            if self._changes is not None and changes != self._changes:
                self.cache.clear()
            self._changes = changes
            self._checked_at = self._clock()
        finally:
            self._checking.set_result(None)
            self._checking = None

    @staticmethod
    def default_principal() -> Principal:
        """Who a request runs as when authentication is off and no bastion key is presented."""
        return DEFAULT_PRINCIPAL

    async def aclose(self) -> None:
        await self.store.aclose()
