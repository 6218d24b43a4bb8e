"""State behind small protocols: memory and SQLite (embedded) now; Redis and Postgres later.

Every backend of ``KeyValueStore`` passes the same contract suite (``tests/store_contract.py``).
"""

from bastion.stores.base import KeyValueStore, WindowHit
from bastion.stores.memory import MemoryStore
from bastion.stores.sqlite import SqliteStore

__all__ = ["KeyValueStore", "MemoryStore", "SqliteStore", "WindowHit"]
