"""The IP list, kept in SQLite: durable (WAL, one transaction per request) and safe for many threads.

Each address is stored once, whatever form it was added in: the integer 16909060 and the string
"1.2.3.4" are the same IPv4 address (``validation.Entry.key``). Entries keep insertion order and
come back in the JSON type they were first added as.

A database file that exists but is not a readable syswatch database is refused at start-up
(``DatabaseUnusable``) without being written to: no repair, no re-creation, no WAL file. That covers
a path that is no regular file (FIFO, directory, device) and an ``ips`` table of another schema.

At start-up every stored address is respelled the way this version spells it (``validation.canonical_key``)
and a duplicate that older spellings let in (a list written by Python 3.11, then 3.13) is dropped,
keeping the first one added. A write that fails because the disk is full raises ``DiskFull`` after
rolling back: nothing is changed.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Iterable

from syswatch.api import dbfile
from syswatch.api.validation import Entry, canonical_key

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS ips (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order
    addr  TEXT NOT NULL UNIQUE,               -- canonical address: one row per address
    value TEXT NOT NULL                       -- the entry as JSON, in the type it was added as
);
"""
# The ips table as SCHEMA makes it: PRAGMA table_info's (name, type, notnull, pk) of each column.
COLUMNS = [("seq", "INTEGER", 0, 1), ("addr", "TEXT", 1, 0), ("value", "TEXT", 1, 0)]
BUSY_TIMEOUT_MS = 10_000
SQLITE_FULL = 13  # SQLite's primary result code for "database or disk is full"


class DatabaseUnusable(Exception):
    """The database file cannot be used; the text says why and what to do."""


class ListFull(Exception):
    """Adding would make the list longer than its configured maximum."""


class DiskFull(Exception):
    """The disk holding the database is full: the write was rolled back, nothing changed."""


def _is_disk_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF == SQLITE_FULL
    return "database or disk is full" in str(exc)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open: after SQLITE_FULL SQLite may have done it already."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _disk_full(exc: sqlite3.Error) -> DiskFull:
    return DiskFull(f"disk full: the server cannot write the IP list ({exc}); nothing was changed. "
                    f"Free space on the disk that holds the database, then try again")


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
            self.respelled, self.merged = self._respell(conn)
        except sqlite3.Error as exc:
            raise DatabaseUnusable(f"cannot initialise the IP list database {path!r}: {exc}") from None

    def _check_file(self) -> None:
        """Refuse (without writing) a file that is not a readable, writable syswatch database."""
        path = self.path
        if not dbfile.check_path(path, "database", "--db", "SYSWATCH_DB", DatabaseUnusable):
            return
        try:
            # rw: a hot WAL left by kill -9 needs recovery
            conn = sqlite3.connect(f"file:{_uri_path(path)}?mode=rw", uri=True)
            try:
                check = conn.execute("PRAGMA quick_check").fetchone()[0]
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                columns = [(r[1], r[2].upper(), r[3], r[5]) for r in conn.execute("PRAGMA table_info(ips)")]
                unique_addr = any(
                    index[2] and not index[4]
                    and [c[2] for c in conn.execute(f"PRAGMA index_info({_quote(index[1])})")] == ["addr"]
                    for index in conn.execute("PRAGMA index_list(ips)"))
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
        if "ips" in tables and (columns != COLUMNS or not unique_addr):
            shown = ", ".join(f"{name} {kind}{' NOT NULL' if notnull else ''}{' PRIMARY KEY' if pk else ''}"
                              for name, kind, notnull, pk in columns)
            raise DatabaseUnusable(f"the database {path!r} has an 'ips' table of another schema ({shown}"
                                   f"{'' if unique_addr else '; addr is not UNIQUE'}), not syswatch's "
                                   f"(seq INTEGER PRIMARY KEY, addr TEXT NOT NULL UNIQUE, value TEXT NOT NULL); "
                                   f"it was left untouched: pick another --db")

    @staticmethod
    def _respell(conn: sqlite3.Connection) -> tuple[int, int]:
        """Respell stored IPv6 addresses canonically; drop later duplicates. (respelled, dropped) counts.

        Only IPv6 spellings differ between Python versions (IPv4-mapped ones), so only rows whose
        address holds a colon are read. One transaction; nothing is written when nothing differs.
        """
        respelled = dropped = 0
        rows = conn.execute("SELECT seq, addr, value FROM ips WHERE addr LIKE '%:%' ORDER BY seq").fetchall()
        changes = [(seq, addr, value, key) for seq, addr, value in rows
                   if (key := canonical_key(addr)) is not None and key != addr]
        if not changes:
            return 0, 0
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for seq, addr, value, key in changes:
                first = conn.execute("SELECT seq FROM ips WHERE addr = ?", (key,)).fetchone()
                if first is not None and first[0] < seq:  # already there, added earlier: keep that one
                    conn.execute("DELETE FROM ips WHERE seq = ?", (seq,))
                    dropped += 1
                    continue
                if first is not None:  # the same address, added later in the new spelling
                    conn.execute("DELETE FROM ips WHERE seq = ?", (first[0],))
                    dropped += 1
                shown = json.loads(value)
                if isinstance(shown, str):
                    value = json.dumps(canonical_key(shown) or shown)
                conn.execute("UPDATE ips SET addr = ?, value = ? WHERE seq = ?", (key, value, seq))
                respelled += 1
        return respelled, dropped

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
        """Add every new address in one transaction; all or nothing (ListFull, DiskFull: nothing added)."""
        with self._write_lock:
            try:
                return self._add(self._conn, entries)
            except sqlite3.Error as exc:
                if _is_disk_full(exc):
                    raise _disk_full(exc) from None
                raise

    def _add(self, conn: sqlite3.Connection, entries: Iterable[Entry]) -> AddResult:
        added: list = []
        ignored: list = []
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
            _rollback(conn)
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
            except sqlite3.Error as exc:
                _rollback(conn)
                if _is_disk_full(exc):
                    raise _disk_full(exc) from None
                raise
            except BaseException:
                _rollback(conn)
                raise

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM ips").fetchone()[0]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _uri_path(path: str) -> str:
    from urllib.parse import quote
    return quote(os.path.abspath(path))
