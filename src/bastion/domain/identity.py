"""Who is calling: tenants, their API keys, and the principal a request runs as.

A tenant's id *is* its name, a short slug the operator chooses (``acme``): it is what the
config's ``limits.tenants`` and ``budgets.tenants`` are keyed by and what the usage ledger
records, so an operator can write limits for a tenant before or after creating it and read
the ledger without a lookup table. The two fields stay separate so a display name can diverge
later without changing any stored reference.

An API key is known here only by its metadata. The plaintext exists once, in the answer to
whoever created it; the store keeps a hash (``KeyRecord``), and neither ever appears in a repr,
so no log line or traceback can leak a usable credential.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: The tenant a request runs as when authentication is off and no bastion key is presented.
DEFAULT_TENANT = "default"

#: Lower-case letters, digits, ``-`` and ``_``; starts with a letter or digit; 1-63 chars.
#: Strict so the id is safe in config keys, metric labels, log fields and URLs.
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    #: Unix seconds.
    created_at: int
    #: A disabled tenant's keys stop authenticating; its records and keys are kept.
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's public metadata: safe to list, log and return from the admin API."""

    id: str
    tenant_id: str
    name: str
    #: The first characters of the plaintext (``bst_`` + 8), enough to recognise a key in a
    #: list or a leaked-secret report, far too few to use it.
    prefix: str
    created_at: int
    revoked_at: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What a store persists for a new key: its metadata and the hash of its plaintext."""

    key: ApiKey
    key_hash: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity a request runs as; ``key_id`` is None when no key was presented."""

    tenant_id: str
    key_id: str | None = None


#: The principal of every request when authentication is off and no bastion key is presented.
DEFAULT_PRINCIPAL = Principal(DEFAULT_TENANT, None)
