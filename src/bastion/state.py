"""Which store backs which state, from the ``state`` section of the config.

Hot state (breakers, rate limits, the response cache) lives in process memory by default, or in
the SQLite file to share it between the workers of one machine. Durable records (tenants and
keys, the usage ledger, idempotency records, budget totals) live in the SQLite file when one is
configured, so a restart loses none of them; without one they are kept in memory, which is
said at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bastion.config import StateConfig
from bastion.stores.base import KeyValueStore
from bastion.stores.identity import IdentityStore, MemoryIdentityStore, SqliteIdentityStore
from bastion.stores.ledger import LedgerStore, MemoryLedgerStore, SqliteLedgerStore
from bastion.stores.memory import MemoryStore
from bastion.stores.sqlite import SqliteStore


@dataclass(slots=True)
class Stores:
    hot: KeyValueStore
    durable: KeyValueStore
    identity: IdentityStore
    ledger: LedgerStore
    #: The SQLite file, or None when everything is in memory.
    path: str | None

    async def aclose(self) -> None:
        closed: set[int] = set()
        for store in (self.hot, self.durable, self.identity, self.ledger):
            if id(store) not in closed:
                closed.add(id(store))
                await store.aclose()

    def describe(self) -> str:
        if self.path is None:
            return "state: in memory only (durable records are lost on restart)"
        hot = "SQLite" if isinstance(self.hot, SqliteStore) else "memory"
        return f"state: durable records in {self.path}; hot state in {hot}"


def build_stores(config: StateConfig, *, hot: KeyValueStore | None = None) -> Stores:
    path = config.sqlite_path
    if path is None:
        durable: KeyValueStore = MemoryStore()
        return Stores(hot or MemoryStore(), durable, MemoryIdentityStore(),
                      MemoryLedgerStore(), None)
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    resolved = str(Path(path).expanduser())
    durable = SqliteStore(resolved)
    if hot is None:
        hot = durable if config.hot == "sqlite" else MemoryStore()
    return Stores(hot, durable, SqliteIdentityStore(resolved), SqliteLedgerStore(resolved),
                  resolved)
