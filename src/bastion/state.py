"""Which store backs which state, from the ``state`` section of the config.

Hot state (breakers, rate limits, budget reservations, the response cache) lives in process
memory by default, or, to share it between the workers of one machine, in an LMDB environment
beside the state file (or the state file itself). Durable records (tenants and
keys, the usage ledger, idempotency records, budget totals) live in the SQLite file when one is
configured, so a restart loses none of them; without one they are kept in memory, which is
said at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bastion.config import JournalConfig, StateConfig
from bastion.stores.base import KeyValueStore
from bastion.stores.identity import IdentityStore, MemoryIdentityStore, SqliteIdentityStore
from bastion.stores.journal import JournalStore, MemoryJournalStore, SqliteJournalStore
from bastion.stores.ledger import LedgerStore, MemoryLedgerStore, SqliteLedgerStore
from bastion.stores.lmdb import LmdbStore
from bastion.stores.memory import MemoryStore
from bastion.stores.sqlite import SqliteStore

#: Set by ``bastion serve`` for its worker processes: how many serve the same port.
WORKERS_ENV = "BASTION_WORKERS"


def served_workers() -> int:
    try:
        return max(1, int(os.environ.get(WORKERS_ENV, "1")))
    except ValueError:
        return 1


def hot_backend(config: StateConfig, workers: int) -> str:
    """Where hot state goes: ``memory``, ``sqlite`` or ``lmdb`` (``auto`` is lmdb when several
    workers serve; without a state file it is always memory)."""
    if config.sqlite_path is None:
        return "memory"
    if config.hot == "auto":
        return "lmdb" if workers > 1 else "memory"
    return config.hot


def hot_shared(config: StateConfig, workers: int) -> bool:
    """Whether the workers share hot state (limits, budgets, cache exact across them)."""
    return hot_backend(config, workers) != "memory"


def lmdb_dir(config: StateConfig) -> Path:
    """The LMDB environment of ``hot: lmdb``: a directory beside the state file."""
    assert config.sqlite_path is not None
    path = Path(config.sqlite_path).expanduser()
    return path.with_name(path.name + ".hot")


@dataclass(slots=True)
class Stores:
    hot: KeyValueStore
    durable: KeyValueStore
    identity: IdentityStore
    ledger: LedgerStore
    journal: JournalStore
    #: The SQLite file, or None when everything is in memory.
    path: str | None

    async def aclose(self) -> None:
        closed: set[int] = set()
        for store in (self.hot, self.durable, self.identity, self.ledger, self.journal):
            if id(store) not in closed:
                closed.add(id(store))
                await store.aclose()

    def describe(self) -> str:
        if self.path is None:
            return "state: in memory only (durable records are lost on restart)"
        hot = ("SQLite" if isinstance(self.hot, SqliteStore) else
               "LMDB" if isinstance(self.hot, LmdbStore) else "memory")
        return f"state: durable records in {self.path}; hot state in {hot}"


def build_stores(config: StateConfig, *, hot: KeyValueStore | None = None,
                 workers: int | None = None, journal: JournalConfig | None = None,
                 cache_entries: int | None = None) -> Stores:
    """The stores for ``config``; ``workers`` (default: from ``BASTION_WORKERS``) decides
    where ``hot: auto`` puts hot state; ``journal`` sizes the request journal;
    ``cache_entries`` bounds the response cache's entries in a shared LMDB hot state."""
    journal = journal or JournalConfig()
    path = config.sqlite_path
    if path is None:
        durable: KeyValueStore = MemoryStore()
        return Stores(hot or MemoryStore(), durable, MemoryIdentityStore(),
                      MemoryLedgerStore(), MemoryJournalStore(journal.recent), None)
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    resolved = str(Path(path).expanduser())
    durable = SqliteStore(resolved)
    if hot is None:
        backend = hot_backend(config, served_workers() if workers is None else workers)
        if backend == "sqlite":
            hot = durable
        elif backend == "lmdb":
            lmdb_dir(config).mkdir(parents=True, exist_ok=True)
            hot = LmdbStore(str(lmdb_dir(config)), big_capacity=cache_entries)
        else:
            hot = MemoryStore()
    return Stores(hot, durable, SqliteIdentityStore(resolved), SqliteLedgerStore(resolved),
                  SqliteJournalStore(resolved, journal.keep), resolved)
