"""State behind small protocols: memory (embedded) now; Redis and Postgres later."""
