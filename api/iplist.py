"""The IP list, kept in SQLite: durable (WAL, one transaction per request) and safe for many threads.

Each address is stored once, whatever form it was added in: the integer 16909060 and the string
"1.2.3.4" are the same IPv4 address (``validation.Entry.key``). Entries keep insertion order and
come back in the JSON type they were first added as.

A database file that exists but is not a readable syswatch database is refused at start-up
(``DatabaseUnusable``) without being written to: no repair, no re-creation, no WAL file.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Iterable

from api.validation import Entry

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS ips (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order
    addr  TEXT NOT NULL UNIQUE,               -- canonical address: one row per address
    value TEXT NOT NULL                       -- the entry as JSON, in the type it was added as
);
"""
BUSY_TIMEOUT_MS = 10_000


class DatabaseUnusable(Exception):
    """The database file cannot be used; the text says why and what to do."""


class ListFull(Exception):
    """Adding would make the list longer than its configured maximum."""


class AddResult:
    def __init__(self, added: list, ignored: list, total: int):
        self.added, self.ignored, self.total = added, ignored, total


class IPList:
    """The list in the SQLite file ``path``; one connection per thread (sqlite3 objects stay in their thread)."""

    def __init__(self, path: str, max_ips: int):
        self.path = path
        self.max_ips = max_ips
        self._local = threading.local()
        # Writers queue here instead of in SQLite's busy handler, which sleeps in steps of up to
        # 100 ms; busy_timeout still covers another process using the same file.
        self._write_lock = threading.Lock()
        self._check_file()
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            with conn:
                conn.executescript(SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise DatabaseUnusable(f"cannot initialise the IP list database {path!r}: {exc}") from None

    def _check_file(self) -> None:
        """Refuse (without writing) a file that is not a readable, writable syswatch database."""
        path = self.path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise DatabaseUnusable(f"the directory of the database {path!r} does not exist: "
                                   f"create it (mkdir -p {directory}) or pick another --db / SYSWATCH_DB")
        if not os.path.exists(path):
            if not os.access(directory, os.W_OK):
                raise DatabaseUnusable(f"cannot create the database {path!r}: directory {directory} "
                                       f"is not writable by this user (uid {os.getuid()})")
            return
        if os.path.isdir(path):
            raise DatabaseUnusable(f"the database path {path!r} is a directory; give a file path with --db")
        if not os.access(path, os.R_OK | os.W_OK):
            raise DatabaseUnusable(f"the database {path!r} is not readable and writable by this user "
                                   f"(uid {os.getuid()}): fix its permissions or pick another --db")
        if os.path.getsize(path) == 0:
            return  # an empty file is a new SQLite database
        try:
            conn = sqlite3.connect(f"file:{_uri_path(path)}?mode=rw", uri=True)  # rw: a hot WAL left by kill -9 needs recovery
            try:
                check = conn.execute("PRAGMA quick_check").fetchone()[0]
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise DatabaseUnusable(f"the database {path!r} is unreadable or corrupt ({exc}); it was left "
                                   f"untouched: move it aside (or restore a backup) and start again") from None
        if check != "ok":
            raise DatabaseUnusable(f"the database {path!r} failed SQLite's integrity check ({check}); it was "
                                   f"left untouched: move it aside (or restore a backup) and start again")
        foreign = tables - {"ips", "sqlite_sequence"}
        if foreign or ("ips" not in tables and tables) or version not in (0, SCHEMA_VERSION):
            raise DatabaseUnusable(f"the database {path!r} is not a syswatch IP list (tables: "
                                   f"{', '.join(sorted(tables)) or 'none'}, user_version {version}); "
                                   f"it was left untouched: pick another --db")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=True)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # WAL + NORMAL: a committed transaction survives a crash of this process (kill -9);
        # only a power loss may roll back the last commits. FULL would fsync every request.
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def add(self, entries: Iterable[Entry]) -> AddResult:
        """Add every new address in one transaction; all or nothing."""
        with self._write_lock:
            return self._add(self._conn, entries)

    def _add(self, conn: sqlite3.Connection, entries: Iterable[Entry]) -> AddResult:
        added, ignored = [], []
        conn.execute("BEGIN IMMEDIATE")  # take SQLite's write lock now: the count below stays true
        try:
            total = conn.execute("SELECT COUNT(*) FROM ips").fetchone()[0]
            for item in entries:
                cur = conn.execute("INSERT OR IGNORE INTO ips (addr, value) VALUES (?, ?)",
                                   (item.key, json.dumps(item.value)))
                (added if cur.rowcount == 1 else ignored).append(item.value)
            total += len(added)
            if total > self.max_ips:
                raise ListFull(f"the IP list holds {total - len(added)} addresses and this request "
                               f"adds {len(added)} new ones; the maximum is {self.max_ips} "
                               f"(server option --max-ips): nothing was added")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return AddResult(added, ignored, total)

    def all_json(self) -> tuple[str, int]:
        """The entries as a JSON array text (stored JSON, not re-encoded) and their number."""
        rows = self._conn.execute("SELECT value FROM ips ORDER BY seq").fetchall()
        return "[" + ", ".join(r[0] for r in rows) + "]", len(rows)

    def clear(self) -> None:
        conn = self._conn
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM ips")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM ips").fetchone()[0]


def _uri_path(path: str) -> str:
    from urllib.parse import quote
    return quote(os.path.abspath(path))
