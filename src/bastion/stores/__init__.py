"""State behind small protocols: memory, SQLite and LMDB (embedded) now; Redis and Postgres later.

Every backend of ``KeyValueStore`` passes the same contract suite (``tests/store_contract.py``).
"""

from bastion.stores.base import KeyValueStore, WindowHit
from bastion.stores.lmdb import LmdbStore, reset_lmdb_dir
from bastion.stores.memory import MemoryStore
from bastion.stores.sqlite import SqliteStore

__all__ = ["KeyValueStore", "LmdbStore", "MemoryStore", "SqliteStore", "WindowHit",
           "reset_lmdb_dir"]
