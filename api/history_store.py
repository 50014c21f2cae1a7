"""The history store: per-interval aggregates of the stream in one SQLite file, bounded in rows and bytes.

What one interval of one host holds, per dimension (DIMS), is the top ``top_n`` keys by calls plus
remainder rows (``k1 = OTHER``) holding everything else, so every dimension adds up to the same exact
totals whatever the number of processes or files. A remainder is kept per container for the containers
that made the container top N (so a container's totals stay exact under ``container=`` filters), and
one remainder under ``cid = OTHER`` holds the rest.

Tiers (TIERS): the recorder writes 1 s intervals; once a 10 s (60 s) interval is complete in the finer
tier it is rolled up in SQL into the coarser one (top N again, remainders merged), so a coarse row is
derived from durable fine rows and a kill -9 never leaves a coarse tier short. Each tier is kept for its
``keep`` seconds (rolled-up data only), and when the file nears ``max_bytes`` the tier furthest over its
share of the budget (TIER_SHARES) loses its oldest rows first: fine detail goes before coarse history,
totals stay exact in whichever tier still covers a time.

Layout:
    names(id, text)                every string once: hosts, container ids and names, comms, syscalls, paths
    meta(key, value)               schema version, per-tier watermarks (``hi``: written up to, ``lo``: kept
                                   from) and row counts, all updated in the transaction that changes them
    agg_1s, agg_10s, agg_1m        one table per tier, primary key (dim, t, host, cid, k1, k2), WITHOUT ROWID
        container dim  cid = container id ("" = the host's own processes), k1 = its name, k2 = 0
        process dim    cid, k1 = pid (an integer, not a name), k2 = comm
        syscall dim    cid, k1 = syscall, k2 = 0
        file dim       cid, k1 = path ("" when the event carried none), k2 = file type
        values         calls, bytes (sum of positive ret), errors (ret < 0), lat_ns_sum, lat_hist (NULL until
                       the events carry latency buckets; summed like the others once they do)

Threads: one writer (the recorder's thread) owns the write connection; HTTP threads read through a
connection of their own each (WAL: readers never wait for the writer). A second process recording into the
same file is refused (an exclusive flock on the file, held while the store is open).
"""
from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterable

from syswatch.api import dbfile

SCHEMA_VERSION = 1
APPLICATION_ID = 0x53574849            # "SWHI": PRAGMA application_id of a syswatch history file


@dataclass(frozen=True)
class Tier:
    name: str      # table agg_<name>
    step: int      # seconds per interval
    keep: int      # seconds of history kept (when the size limit allows)


TIERS = (Tier("1s", 1, 3600), Tier("10s", 10, 86_400), Tier("1m", 60, 30 * 86_400))
TIER_SHARES = (0.25, 0.25, 0.5)        # each tier's share of the size budget when space runs short
ALIGN = 60                             # trims cut at multiples of the coarsest step: tiers never overlap mid-interval
DIMS = ("container", "process", "syscall", "file")
CONTAINER, PROCESS, SYSCALL, FILE = range(4)
OTHER = -1                             # k1 (and cid) of a remainder row
TOP_N = 50                             # keys kept per interval, host and dimension (plus the remainders)
VALUES = ("calls", "bytes", "errors", "lat_ns_sum")
I64_MAX = 2**63 - 1
BUSY_TIMEOUT_MS = 10_000
SQLITE_FULL = 13
SQLITE_IOERR = 10
ROLLUP_CHUNK_STEPS = 60                # coarse intervals rolled up per transaction
TRIM_CHUNK_S = 600                     # seconds of a tier deleted per transaction (keeps the WAL small)
NAME_CACHE_MAX = 200_000


def default_path(db: str) -> str:
    """The history store's file beside the IP list's: ``./syswatch.sqlite3`` -> ``./syswatch-history.sqlite3``."""
    root, ext = os.path.splitext(db)
    return f"{root}-history{ext or '.sqlite3'}"


class StoreUnusable(Exception):
    """The history file cannot be used; the text says why and what to do (exit 2 at start-up)."""


class WriteFailed(Exception):
    """A write could not be done (disk full, I/O error); nothing of it was kept. ``disk_full`` says which."""

    def __init__(self, message: str, disk_full: bool):
        super().__init__(message)
        self.disk_full = disk_full


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        text = str(exc)
        if "database or disk is full" in text:
            return SQLITE_FULL
        if "disk I/O error" in text:
            return SQLITE_IOERR
        return None
    return code & 0xFF


def _sat(v: int) -> int:
    """A value as SQLite stores it: sums past 2**63-1 (only a hostile publisher's) saturate."""
    return v if v <= I64_MAX else I64_MAX


def bound(entries: dict, top_n: int, keep_cids) -> dict:
    """The ``top_n`` keys of ``entries`` {(cid, k1, k2): [calls, bytes, errors, lat]} by calls (then bytes,
    then key, so the choice is stable), the rest folded into remainder keys (cid, OTHER, 0), where cid
    stays when it is in ``keep_cids`` and becomes OTHER otherwise. Remainder keys already in ``entries``
    (k1 == OTHER) are never ranked: they only grow. Sums are unchanged: every value lands somewhere."""
    real = [(k, v) for k, v in entries.items() if k[1] != OTHER]
    if len(real) <= top_n and len(real) == len(entries):
        return entries
    real.sort(key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    out = {k: v for k, v in real[:top_n]}
    for k, v in [*real[top_n:], *((k, v) for k, v in entries.items() if k[1] == OTHER)]:
        rk = (k[0] if k[0] in keep_cids else OTHER, OTHER, 0)
        acc = out.get(rk)
        if acc is None:
            out[rk] = list(v)
        else:
            for i, x in enumerate(v):
                acc[i] += x
    return out


def bound_interval(dims: dict, top_n: int) -> dict:
    """``bound`` applied to one interval's dimensions {dim: entries}; the container dimension first, whose
    kept containers keep their own remainders in the others."""
    out = {}
    conts = dims.get(CONTAINER)
    keep: set = set()
    if conts is not None:
        out[CONTAINER] = bound(conts, top_n, ())
        keep = {k[0] for k in out[CONTAINER] if k[1] != OTHER}
    for dim, entries in dims.items():
        if dim != CONTAINER:
            out[dim] = bound(entries, top_n, keep)
    return out


class HistoryStore:
    """One history file. ``write``/``maintain`` from one thread; ``reader()`` connections anywhere."""

    def __init__(self, path: str, max_bytes: int, tiers: tuple = TIERS, top_n: int = TOP_N):
        self.path = path
        self.tiers = tiers
        self.top_n = top_n
        self.max_bytes = max_bytes
        # The WAL and its index live beside the file and count against the limit: the WAL is kept to a
        # slice of the budget (checkpointed and truncated), the rest is the database's page cap.
        self.wal_budget = min(max(max_bytes // 8, 256 * 1024), 32 * 1024 * 1024)
        self.db_budget = max_bytes - self.wal_budget - 64 * 1024
        if self.db_budget < 256 * 1024:
            raise StoreUnusable(f"a history size limit of {max_bytes / 1e6:.2f} MB is too small: give at least 1 MB "
                                f"(--history-max-mb / SYSWATCH_HISTORY_MAX_MB)")
        self._local = threading.local()
        self._names: dict[str, int] = {}
        self._lock_file: BinaryIO | None = None
        self._check_file()
        self._lock()
        try:
            self.conn: sqlite3.Connection = self._connect()
            self._init_schema()
        except sqlite3.Error as exc:
            self.close()
            raise StoreUnusable(f"cannot open the history database {path!r}: {exc}") from None
        self.page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        self.max_pages = self.db_budget // self.page_size
        self.conn.execute(f"PRAGMA max_page_count={max(self.max_pages, self._pages()[0])}")
        self.conn.execute(f"PRAGMA journal_size_limit={self.wal_budget // 2}")
        self.conn.execute(f"PRAGMA wal_autocheckpoint={max(16, self.wal_budget // 4 // self.page_size)}")
        self.meta = dict(self.conn.execute("SELECT key, value FROM meta"))
        # Rows one transaction may write or delete: every page it touches is copied into the WAL, which
        # must stay within its slice of the budget (about 64 bytes a row, pages half full at worst).
        self.max_tx_rows = max(500, self.wal_budget // 4 // 64)
        self.trims = 0                  # deletions made to stay under the size limit
        self.trimmed_to_fit = 0.0       # when (time.time()) the last of them was made
        self.last_gc_names = self._count_names()

    # --- opening ---------------------------------------------------------------------------------------
    def _check_file(self) -> None:
        path = self.path
        if not dbfile.check_path(path, "history database", "--history-db", "SYSWATCH_HISTORY_DB", StoreUnusable):
            return
        try:
            conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
            try:
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreUnusable(f"the history database {path!r} is unreadable or corrupt ({exc}); it was left "
                                f"untouched: move it aside and start again (history starts empty)") from None
        if app_id != APPLICATION_ID or not tables <= self._tables():
            raise StoreUnusable(f"{path!r} is not a syswatch history database (tables: "
                                f"{', '.join(sorted(tables)) or 'none'}); it was left untouched: pick another "
                                f"--history-db / SYSWATCH_HISTORY_DB")

    def _tables(self) -> set:
        return {"names", "meta", *(f"agg_{t.name}" for t in self.tiers)}

    def _lock(self) -> None:
        """One recording process per file: two APIs recording the same stream would count it twice.
        flock (not SQLite's fcntl locks, which it does not disturb); the descriptor stays open until close()."""
        lock = open(self.path, "ab")          # a file object: released with the store even if close() is never called
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreUnusable(f"another process records into the history database {self.path!r} (it holds "
                                    f"the file's lock): give each API its own --history-db") from None
            raise
        self._lock_file = lock

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=NORMAL")   # WAL: a commit survives kill -9 of this process
        return conn

    def _init_schema(self) -> None:
        conn = self.conn
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
            for tier in self.tiers:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS agg_{tier.name} (dim INTEGER NOT NULL, t INTEGER NOT NULL, "
                    f"host INTEGER NOT NULL, cid INTEGER NOT NULL, k1 INTEGER NOT NULL, k2 INTEGER NOT NULL, "
                    f"calls INTEGER NOT NULL, bytes INTEGER NOT NULL, errors INTEGER NOT NULL, "
                    f"lat_ns_sum INTEGER NOT NULL, lat_hist BLOB, "
                    f"PRIMARY KEY (dim, t, host, cid, k1, k2)) WITHOUT ROWID")
            version = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if version is None:
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            elif version[0] != SCHEMA_VERSION:
                raise StoreUnusable(f"the history database {self.path!r} has schema version {version[0]}; this "
                                    f"syswatch reads version {SCHEMA_VERSION}: move it aside or use the matching "
                                    f"version")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        conn = self.__dict__.pop("conn", None)      # closed once; ``conn`` is gone afterwards
        if conn is not None:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            conn.close()
        if self._lock_file is not None:
            self._lock_file.close()     # after the SQLite connection: closing it drops nothing of SQLite's
            self._lock_file = None

    # --- meta ------------------------------------------------------------------------------------------
    def hi(self, tier: Tier) -> int:
        """Every interval of ``tier`` before this time (unix s) is written; nothing at or after it."""
        return int(self.meta.get(f"hi:{tier.name}", 0))

    def lo(self, tier: Tier) -> int:
        """Rows of ``tier`` before this time were deleted (retention or size); 0: none ever were."""
        return int(self.meta.get(f"lo:{tier.name}", 0))

    def rows(self, tier: Tier) -> int:
        return int(self.meta.get(f"rows:{tier.name}", 0))

    def _set(self, key: str, value) -> None:
        self.conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                          (key, value))
        self.meta[key] = value

    # --- names -----------------------------------------------------------------------------------------
    def _id(self, text: str) -> int:
        nid = self._names.get(text)
        if nid is None:
            conn = self.conn
            row = conn.execute("SELECT id FROM names WHERE text=?", (text,)).fetchone()
            nid = row[0] if row else int(conn.execute("INSERT INTO names (text) VALUES (?)", (text,)).lastrowid or 0)
            if len(self._names) >= NAME_CACHE_MAX:
                self._names.clear()
            self._names[text] = nid
        return nid

    def _count_names(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM names").fetchone()[0]

    # --- writing ---------------------------------------------------------------------------------------
    def _tx(self, work):
        """Run ``work()`` in one write transaction; a failure rolls it all back (meta cache included)."""
        conn = self.conn
        saved = dict(self.meta)
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = work()
            conn.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            self.meta = saved
            self._names.clear()         # ids given out in the rolled-back transaction are gone
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            code = _code(exc)
            if code == SQLITE_FULL and self._pages()[0] < self.max_pages - 8:
                raise WriteFailed(f"disk full: the history database {self.path} cannot grow ({exc})", True) from None
            if code == SQLITE_FULL:
                raise WriteFailed(f"the history database reached its size limit ({exc})", False) from None
            if code == SQLITE_IOERR:
                raise WriteFailed(f"cannot write the history database {self.path}: {exc}", True) from None
            raise
        except BaseException:
            self.meta = saved
            self._names.clear()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def write(self, intervals: Iterable, flushed_until: int) -> int:
        """Write finest-tier intervals and move its watermark to ``flushed_until``; returns rows written.

        ``intervals``: (t, host, {dim: {(cid, k1, k2): [calls, bytes, errors, lat]}}) already bounded
        (``bound_interval``); cid, k1, k2 are strings (stored as names), ints (a pid, 0) or OTHER.
        One transaction: all of it or nothing (WriteFailed)."""
        fine = self.tiers[0]

        def work():
            rows = [row for t, host, dims in intervals for row in self._rows(t, host, dims)]
            self._insert(fine, rows)
            if flushed_until > self.hi(fine):
                self._set(f"hi:{fine.name}", flushed_until)
            return len(rows)
        return self._write_tx(work)

    def write_late(self, intervals: Iterable) -> tuple[int, list]:
        """Add intervals whose seconds were written already (events that came late: a collector or a NATS
        consumer catching up) to every tier that holds their time, so each tier adds up as if they had
        come in time; a coarse tier that has not rolled that time up yet gets them from the finer one.
        Returns (rows written, [(t, host) of the intervals no tier holds: older than every tier keeps])."""
        def work():
            rows, lost = 0, []
            for t, host, dims in intervals:
                tiers = [tier for tier in self.tiers if self.lo(tier) <= t < self.hi(tier)]
                if not tiers:
                    lost.append((t, host))
                    continue
                base = list(self._rows(t, host, dims))
                for tier in tiers:
                    start = t // tier.step * tier.step
                    self._insert(tier, [(r[0], start, *r[2:]) for r in base])
                    rows += len(base)
            return rows, lost
        return self._write_tx(work)

    def _rows(self, t: int, host: str, dims: dict):
        nid = self._id
        h = nid(host)
        for dim, entries in dims.items():
            for (cid, k1, k2), v in entries.items():
                yield (dim, t, h, cid if type(cid) is int else nid(cid), k1 if type(k1) is int else nid(k1),
                       k2 if type(k2) is int else nid(k2), _sat(v[0]), _sat(v[1]), _sat(v[2]), _sat(v[3]))

    def _write_tx(self, work):
        try:
            return self._tx(work)
        except WriteFailed as exc:
            if exc.disk_full:
                raise
        self._fit(time.monotonic(), force=True)     # at the size limit between two rounds of maintain()
        return self._tx(work)

    def _insert(self, tier: Tier, rows: list) -> None:
        if not rows:
            return
        # Upsert: a key written twice for one interval (a restart with late events) adds up instead of failing.
        self.conn.executemany(
            f"INSERT INTO agg_{tier.name} (dim, t, host, cid, k1, k2, calls, bytes, errors, lat_ns_sum) "
            f"VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET calls=min(calls+excluded.calls, {I64_MAX}), "
            f"bytes=min(bytes+excluded.bytes, {I64_MAX}), errors=errors+excluded.errors, "
            f"lat_ns_sum=min(lat_ns_sum+excluded.lat_ns_sum, {I64_MAX})", rows)
        self._set(f"rows:{tier.name}", self.rows(tier) + len(rows))
        if f"first:{tier.name}" not in self.meta:
            self._set(f"first:{tier.name}", min(r[1] for r in rows))

    # --- rollups, retention, size ----------------------------------------------------------------------
    def maintain(self, now: float, budget_s: float = 0.5) -> None:
        """Roll finished intervals up into the coarser tiers, drop what is past its tier's ``keep``, and trim
        to the size limit: small transactions, for at most about ``budget_s`` seconds (the rest next time)."""
        deadline = time.monotonic() + budget_s
        for fine, coarse in zip(self.tiers, self.tiers[1:]):
            while time.monotonic() < deadline and self._rollup(fine, coarse):
                pass
        for i, tier in enumerate(self.tiers):
            cut = (int(now) - tier.keep) // ALIGN * ALIGN
            while time.monotonic() < deadline and self._trim(i, cut):
                pass
        self._fit(deadline)

    def _rollup(self, fine: Tier, coarse: Tier) -> bool:
        """Roll up the next chunk of complete coarse intervals; False when there is none."""
        done_to = self.hi(fine) // coarse.step * coarse.step      # coarse intervals complete in the fine tier
        start = self.hi(coarse)
        if start >= done_to:
            return False
        if start < self.lo(fine):
            start = self.lo(fine) // coarse.step * coarse.step
        first = self.conn.execute(f"SELECT MIN(t) FROM agg_{fine.name} WHERE dim=? AND t>=? AND t<?",
                                  (CONTAINER, start, done_to)).fetchone()[0]
        if first is None:                                          # nothing in between: move the watermark
            self._tx(lambda: self._set(f"hi:{coarse.name}", done_to))
            return True
        start = max(start, first // coarse.step * coarse.step)
        per_interval = self._rows_per_s(fine) * coarse.step or 1
        steps = max(1, min(ROLLUP_CHUNK_STEPS, int(self.max_tx_rows / 2 / per_interval)))
        end = min(done_to, start + steps * coarse.step)
        step = coarse.step
        grouped = self.conn.execute(
            f"SELECT t/{step}*{step}, host, dim, cid, k1, k2, sum(calls), sum(bytes), sum(errors), sum(lat_ns_sum) "
            f"FROM agg_{fine.name} WHERE dim IN ({','.join(str(d) for d in range(len(DIMS)))}) AND t>=? AND t<? "
            f"GROUP BY 1, 2, 3, 4, 5, 6", (start, end)).fetchall()
        intervals: dict = {}
        for t, host, dim, cid, k1, k2, *v in grouped:
            intervals.setdefault((t, host), {}).setdefault(dim, {})[(cid, k1, k2)] = v
        rows = []
        for (t, host), dims in intervals.items():
            for dim, entries in bound_interval(dims, self.top_n).items():
                for (cid, k1, k2), v in entries.items():
                    rows.append((dim, t, host, cid, k1, k2, _sat(v[0]), _sat(v[1]), _sat(v[2]), _sat(v[3])))

        def work():
            self._insert(coarse, rows)
            self._set(f"hi:{coarse.name}", end)
        self._tx(work)
        return True

    def _trimmable_to(self, i: int) -> int:
        """How far tier ``i`` may be cut: what the next coarser tier holds already (all of it for the last)."""
        if i + 1 < len(self.tiers):
            return self.hi(self.tiers[i + 1]) // ALIGN * ALIGN
        return self.hi(self.tiers[i]) // ALIGN * ALIGN

    def _trim(self, i: int, cut: int) -> bool:
        """Delete tier ``i``'s rows before ``cut`` (at most TRIM_CHUNK_S of them per call); False when done."""
        tier = self.tiers[i]
        cut = min(cut, self._trimmable_to(i))
        lo = self.lo(tier)
        if cut <= lo:
            return False
        start = self._start(tier)
        if start is None or start >= cut:                          # nothing there to delete
            self._tx(lambda: self._set(f"lo:{tier.name}", cut))
            return False
        lo = max(lo, start)
        chunk = min(TRIM_CHUNK_S * tier.step, int(self.max_tx_rows / (self._rows_per_s(tier) or 1e-9)))
        new_lo = min(cut, lo + max(ALIGN, chunk // ALIGN * ALIGN))
        dims = ",".join(str(d) for d in range(len(DIMS)))

        def work():
            cur = self.conn.execute(f"DELETE FROM agg_{tier.name} WHERE dim IN ({dims}) AND t<?", (new_lo,))
            self._set(f"rows:{tier.name}", max(0, self.rows(tier) - cur.rowcount))
            self._set(f"lo:{tier.name}", new_lo)
        self._tx(work)
        return True

    def _start(self, tier: Tier) -> int | None:
        """Where the tier's rows begin (aligned down), None when it never had any."""
        first = self.meta.get(f"first:{tier.name}")
        if first is None:
            return None
        return max(self.lo(tier), int(first) // ALIGN * ALIGN)

    def _rows_per_s(self, tier: Tier) -> float:
        """Rows the tier holds per second of time, on average (0 when empty)."""
        start = self._start(tier)
        span = self.hi(tier) - start if start is not None else 0
        return self.rows(tier) / span if span > 0 else 0.0

    def _pages(self) -> tuple[int, int]:
        conn = self.conn
        return (conn.execute("PRAGMA page_count").fetchone()[0], conn.execute("PRAGMA freelist_count").fetchone()[0])

    def used_bytes(self) -> int:
        """Bytes of the database file in use (its free pages are reused before the file grows)."""
        pages, free = self._pages()
        return (pages - free) * self.page_size

    def _fit(self, deadline: float, force: bool = False) -> None:
        """Over 90% of the database's budget (or ``force``): trim the tier furthest over its share until
        under 75%."""
        high, low = 0.9 * self.db_budget, 0.75 * self.db_budget
        used = self.used_bytes()
        if used <= high and not force:
            self._checkpoint()
            return
        while used > low and time.monotonic() < deadline + 2.0:
            total_rows = sum(self.rows(t) for t in self.tiers) or 1
            order = sorted(range(len(self.tiers)), reverse=True,
                           key=lambda i: self.rows(self.tiers[i]) / total_rows / TIER_SHARES[i])
            for i in order:
                tier = self.tiers[i]
                lo = self._start(tier)
                if lo is None or not self.rows(tier):
                    continue
                span = self.hi(tier) - lo
                cut = lo + max(ALIGN, span // 10 // ALIGN * ALIGN)
                if self._trim(i, cut):
                    self.trims += 1
                    self.trimmed_to_fit = time.time()
                    break
            else:
                if self._gc_names():
                    continue
                break                                              # nothing left to trim: stop trying
            used = self.used_bytes()
        self._checkpoint()

    def _gc_names(self) -> bool:
        """Delete names no row refers to; True when that freed something."""
        count = self._count_names()
        if count <= self.last_gc_names:
            return False
        refs = " UNION ".join(f"SELECT {col} FROM agg_{t.name}" for t in self.tiers for col in ("host", "cid", "k2"))
        refs += " UNION " + " UNION ".join(f"SELECT k1 FROM agg_{t.name} WHERE dim != {PROCESS}" for t in self.tiers)

        def work():
            return self.conn.execute(f"DELETE FROM names WHERE id NOT IN ({refs})").rowcount
        deleted = self._tx(work)
        self._names.clear()
        self.last_gc_names = self._count_names()
        return deleted > 0

    def gc_names_if_grown(self) -> None:
        """Hourly: names that no row refers to any more (old paths, pids' comms) are deleted once they have
        doubled since the last sweep."""
        if self._count_names() > max(2 * self.last_gc_names, 10_000):
            self._gc_names()

    def _checkpoint(self) -> None:
        """Keep the WAL within its slice of the budget."""
        try:
            if os.path.getsize(self.path + "-wal") > self.wal_budget // 2:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (OSError, sqlite3.Error):
            pass

    def disk_bytes(self) -> int:
        """What the store takes on disk: the database, its WAL and the WAL index."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(self.path + suffix).st_size
            except OSError:
                pass
        return total

    # --- reading ---------------------------------------------------------------------------------------
    def reader(self) -> sqlite3.Connection:
        """This thread's read-only connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
        return conn

    def coverage(self, conn: sqlite3.Connection) -> list[dict]:
        """Per tier: step, keep, lo, hi (watermarks as committed) and the oldest interval held."""
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        out = []
        for tier in self.tiers:
            oldest = conn.execute(f"SELECT MIN(t) FROM agg_{tier.name} WHERE dim=?", (CONTAINER,)).fetchone()[0]
            out.append({"tier": tier, "lo": int(meta.get(f"lo:{tier.name}", 0)),
                        "hi": int(meta.get(f"hi:{tier.name}", 0)), "oldest": oldest,
                        "rows": int(meta.get(f"rows:{tier.name}", 0))})
        return out

    def names_of(self, conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, str]:
        ids = [i for i in set(ids) if i >= 0]
        out: dict[int, str] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            out.update(conn.execute(f"SELECT id, text FROM names WHERE id IN ({','.join('?' * len(chunk))})",
                                    chunk).fetchall())
        return out

    def ids_of(self, conn: sqlite3.Connection, texts: Iterable[str]) -> dict[str, int]:
        texts = list(set(texts))
        out: dict[str, int] = {}
        for i in range(0, len(texts), 500):
            chunk = texts[i:i + 500]
            out.update(conn.execute(f"SELECT text, id FROM names WHERE text IN ({','.join('?' * len(chunk))})",
                                    chunk).fetchall())
        return out
