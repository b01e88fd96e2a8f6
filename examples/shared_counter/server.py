"""A hit counter served by two worker processes: python server.py [PORT] [STORE]

Each worker is a process of its own, with its own copy of this module: a counter kept
in a Python variable would count each worker's hits apart. State the workers share
lives outside them, in a store every worker connects to; here SQLite (in the standard
library), in the file STORE. With Redis or PostgreSQL the pattern is the same: each
worker opens its own connection, on first use (after the fork), never one made before
the fork and inherited.

The callback runs in the worker's loop, so a slow store holds up that worker's other
connections meanwhile: keep store calls short, or hand them to a thread and put() the
reply from there.
"""
import os
import sqlite3
import sys
import tempfile

from simpletcp.tcpserver import ConnectionQueue, TCPServer

DEFAULT_STORE = os.path.join(tempfile.gettempdir(), "simpletcp-shared-counter.sqlite3")
STORE = DEFAULT_STORE
_store: "sqlite3.Connection | None" = None
_store_pid = 0


def store() -> sqlite3.Connection:
    """This worker's connection to the store, opened on its first use in the worker."""
    global _store, _store_pid
    if _store is None or _store_pid != os.getpid():
        _store = sqlite3.connect(STORE, timeout=10, isolation_level=None)
        _store.execute("PRAGMA journal_mode=WAL")
        _store.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, "
                       "value INTEGER NOT NULL)")
        _store_pid = os.getpid()
    return _store


def count_hit(queue: ConnectionQueue, data: bytes) -> None:
    connection = store()
    connection.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
    try:
        connection.execute("INSERT OR IGNORE INTO counters VALUES ('hits', 0)")
        connection.execute("UPDATE counters SET value = value + 1 WHERE name = 'hits'")
        (hits,) = connection.execute(
            "SELECT value FROM counters WHERE name = 'hits'").fetchone()
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    queue.put(b"hit %d, counted by worker %d\n" % (hits, os.getpid()))


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    STORE = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_STORE
    server = TCPServer("localhost", port, count_hit, workers=2)
    print(f"counter listening on {server.ip}:{server.port} with 2 workers, store {STORE}",
          flush=True)
    server.run()
