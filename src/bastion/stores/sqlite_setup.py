"""Opening the shared SQLite state file the same way from every store and every process."""

from __future__ import annotations

import sqlite3
import time


def prepare_wal(db: sqlite3.Connection, schema: str, *, foreign_keys: bool = False) -> None:
    """Put ``db`` in WAL mode and create ``schema`` (idempotent ``IF NOT EXISTS`` statements)
    in one immediate transaction: safe while other processes open the same file."""
    # Persistent, a no-op once the file is in WAL; but while another process sets the file up,
    # the switch can fail with "locked" without waiting on the busy timeout: retry it.
    for attempt in range(200):
        try:
            db.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError:
            if attempt == 199:
                raise
            time.sleep(0.05)
    db.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes under WAL
    if foreign_keys:
        db.execute("PRAGMA foreign_keys = ON")
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in filter(str.strip, schema.split(";")):
            db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
