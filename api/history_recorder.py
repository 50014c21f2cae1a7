"""The history recorder: a thread of its own that turns the stream into 1 s intervals in the history store.

    subscriber thread --offer_events / offer_counts (append to a bounded queue, O(1))--> Recorder thread
        aggregates per (host, second) by record_key(), closes a second GRACE_S after it ended, bounds it
        (top N + remainders per dimension), writes every closed second of a round in ONE transaction, then
        rolls up, trims and keeps the size limit (HistoryStore.maintain)

The ingest path pays one deque append per batch; HTTP threads never write. An event goes to the second
of its own ``ts_ns`` (the traced host's clock), a counts row to the middle of its interval. An event for a
second already written (more than GRACE_S late: a collector that stalled, a NATS consumer catching up after
the API was down) is counted (``late_events``) and added to its own second in every tier that still holds
it (``HistoryStore.write_late``): at most MAX_LATE_SECONDS such seconds per round, later ones go to the
oldest open second (``late_events_misplaced``), and those older than anything the store keeps are dropped
(``late_events_dropped``). One stamped more than FUTURE_S ahead of this machine's clock goes to the current
second (``clock_skewed_events``), so a host with a wrong clock cannot hold intervals open or push them ahead.

A write that fails (disk full, I/O error) keeps the closed seconds in memory (at most MAX_PENDING of them;
older ones are then dropped and counted) and is retried every RETRY_S: recording resumes by itself when
space returns, and ``status()`` says what is wrong meanwhile. What a kill -9 loses: the seconds not yet
written (at most GRACE_S + one round), never a written one.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

from syswatch.api.history_query import rfc3339
from syswatch.api.history_store import (
    CONTAINER,
    FILE,
    OTHER,
    PROCESS,
    SYSCALL,
    HistoryStore,
    WriteFailed,
    bound_interval,
)

log = logging.getLogger("syswatch.api.history")

GRACE_S = 2                     # a second is written this long after it ended (events arrive within ~10 ms)
FUTURE_S = 5                    # events stamped further ahead than this are a skewed clock
TICK_S = 0.25                   # the thread's round
RETRY_S = 2.0                   # after a failed write
MAINTAIN_S = 1.0                # rollups, retention and the size limit, this often
GC_NAMES_S = 3600.0
# events handed over and not yet aggregated (~0.7 KB each, kept alive while queued: 25,000 hold ~20 MB);
# more are dropped, counted. CI saw 100,000 of them grow the API by 60 MiB under a flood while the
# recorder lagged, beside the bounds of the stream's own buffers.
MAX_QUEUED_EVENTS = 25_000
WAKE_EVENTS = 10_000            # this many queued wake the recorder before its round is due
MAX_KEYS_PER_SECOND = 50_000    # distinct record keys in one (host, second); more go to remainders
MAX_PENDING = 900               # closed (host, second) intervals kept while the store cannot write
MAX_CONTAINER_NAMES = 10_000
MAX_LATE_SECONDS = 3600         # (host, second) buckets of late events held per round


# What the recorder counts, once: /stats "history" and /metrics (syswatch_history_<name>_total) come from it.
COUNTERS = {
    "events_recorded": "Events (or counts-row calls) the history recorder aggregated.",
    "events_dropped": "Events not recorded: the recorder's queue was full.",
    "late_events": "Events that arrived after their second was written; added to it where the store still holds it.",
    "late_events_misplaced": "Late events recorded in the oldest open second instead (too many late seconds at once).",
    "late_events_dropped": "Late events older than anything the history store keeps (not recorded).",
    "clock_skewed_events": "Events stamped more than 5 s ahead of the API's clock; added to the current second.",
    "rows_written": "Rows written to the history store's 1 s tier.",
    "intervals_written": "Host-seconds written to the history store.",
    "intervals_dropped": "Host-seconds dropped while the store could not be written (more than it keeps in memory).",
    "write_failures": "Writes of the history store that failed (disk full, I/O error); retried.",
}


def record_key(e: dict) -> tuple:
    """What the history keeps of an event or a counts row: (pid, comm, container_id, syscall, path, file_type).

    The one place that reads the event record: a new field that history should group by goes here
    (and into ``dimensions``). ``path``/``file_type`` are optional (events of a collector that does not
    report files, counts rows): "" then."""
    return (e["pid"], e["comm"], e["container_id"], e["syscall"], e.get("path", ""), e.get("file_type", ""))


def dimensions(fine: dict, names: dict) -> dict:
    """One second's {record_key: [calls, bytes, errors, lat]} as {dim: {(cid, k1, k2): values}}."""
    dims: dict[int, dict] = {CONTAINER: {}, PROCESS: {}, SYSCALL: {}, FILE: {}}
    cont, proc, sysc, files = dims[CONTAINER], dims[PROCESS], dims[SYSCALL], dims[FILE]
    for (pid, comm, cid, sc, path, ftype), v in fine.items():
        for entries, key in ((cont, (cid, names.get(cid, ""), 0)), (proc, (cid, pid, comm if pid != OTHER else 0)),
                             (sysc, (cid, sc, 0)), (files, (cid, path, ftype if path != OTHER else 0))):
            acc = entries.get(key)
            if acc is None:
                entries[key] = list(v)
            else:
                acc[0] += v[0]
                acc[1] += v[1]
                acc[2] += v[2]
                acc[3] += v[3]
    return dims


class Recorder(threading.Thread):
    """Records the stream into ``store``. ``clock`` is wall-clock seconds (a bench or test may drive its own)."""

    def __init__(self, store: HistoryStore, clock=time.time, max_queued_events: int = MAX_QUEUED_EVENTS):
        super().__init__(name="syswatch-history", daemon=True)
        self.store = store
        self.clock = clock
        self.max_queued = max_queued_events
        self._queue: collections.deque = collections.deque()
        self._queued = 0
        self._qlock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._rounds = 0
        self._round_done = threading.Condition()
        self.open: dict[tuple, dict] = {}            # (host, second) -> {record_key: [c, b, e, lat]}
        self.late: dict[tuple, dict] = {}            # the same, for seconds already written
        self.cnames: dict[str, dict] = {}           # host -> {container_id: name}
        self.closed = store.hi(store.tiers[0])      # every second before this one is closed
        self.pending: list = []                     # closed, bounded, not yet written
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.state = "recording"
        self.error: str | None = None
        self.error_since: float | None = None
        self.cpu_s = 0.0
        self._retry_at = 0.0
        self._maintain_at = 0.0
        self._idle_at = 0.0
        self._gc_at = time.monotonic() + GC_NAMES_S
        self._status: dict = {}
        self._slock = threading.Lock()
        self._refresh_status()

    # --- any thread ---------------------------------------------------------------------------------
    def offer_events(self, host: str, events: list) -> None:
        """A decoded batch of events (read only here, never changed)."""
        self._offer(("e", host, events), len(events))

    def offer_counts(self, payload: dict) -> None:
        """A decoded counts message."""
        self._offer(("c", payload["host"], payload), len(payload["rows"]))

    def _offer(self, item: tuple, n: int) -> None:
        with self._qlock:
            if self._queued + n > self.max_queued:
                self.counters["events_dropped"] += n
                return
            self._queue.append(item)
            self._queued += n
            wake = self._queued >= WAKE_EVENTS
        if wake:
            self._wake.set()

    def wait_room(self, timeout: float = 5.0) -> bool:
        """For a source that can wait instead of losing events (a NATS consumer catching up): block while the
        queue is more than half full, at most ``timeout`` s; False if it still is."""
        deadline = time.monotonic() + timeout
        while self._queued > self.max_queued // 2:
            if time.monotonic() > deadline or not self.is_alive():
                return False
            self._wake.set()
            time.sleep(0.01)
        return True

    def status(self) -> dict:
        with self._slock:
            return dict(self._status)

    def sync(self, timeout: float = 30.0) -> None:
        """Wait until everything offered before this call is aggregated and every second the clock has
        closed is written (or failed to be): for tests and the bench."""
        deadline = time.monotonic() + timeout
        with self._round_done:
            for _ in range(2):                      # the round running now may have missed the last offer
                target = self._rounds + 1
                self._wake.set()
                if not self._round_done.wait_for(lambda: self._rounds >= target or not self.is_alive(),
                                                 max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"the history recorder did not finish a round within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is open (also the current second) and stop."""
        self._stopping.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout)

    # --- the recorder's thread --------------------------------------------------------------------------
    def run(self) -> None:
        cpu0 = time.thread_time()
        try:
            while not self._stopping.is_set():
                self._wake.wait(TICK_S)
                self._wake.clear()
                self._round()
                self.cpu_s = time.thread_time() - cpu0
                self._refresh_status()
                with self._round_done:
                    self._rounds += 1
                    self._round_done.notify_all()
            self._round(final=True)
        except Exception:                            # never silently: the status says the recorder died
            log.exception("history recorder failed")
            self.state, self.error = "stopped", "the recorder thread failed; the API log has the details"
        finally:
            self.cpu_s = time.thread_time() - cpu0
            self._refresh_status(final=True)
            with self._round_done:
                self._rounds += 1
                self._round_done.notify_all()

    def _round(self, final: bool = False) -> None:
        with self._qlock:
            items, self._queue = self._queue, collections.deque()
            self._queued = 0
        now = self.clock()
        for kind, host, data in items:
            if kind == "e":
                self._add_events(host, data, now)
            else:
                self._add_counts(host, data, now)
        closable = int(now) - GRACE_S
        if final:
            closable = max([closable, *(sec + 1 for _, sec in self.open)])
        if closable > self.closed:
            self._close(closable)
        mono = time.monotonic()
        if self.pending and (mono >= self._retry_at or final):
            self._write()
        if self.late and not self.pending and (mono >= self._retry_at or final):
            self._write_late()
        elif not self.pending and self.closed > self.store.hi(self.store.tiers[0]) and mono >= self._idle_at:
            # nothing happened: the store still learns (once a second) that those seconds are over,
            # so complete_until moves on and the coarser tiers roll up
            self._idle_at = mono + MAINTAIN_S
            self._guard(lambda: self.store.write([], self.closed))
        if not self.pending and mono >= self._maintain_at and self.state == "recording":
            self._maintain_at = mono + MAINTAIN_S
            self._guard(lambda: self.store.maintain(now))
            if mono >= self._gc_at:
                self._gc_at = mono + GC_NAMES_S
                self._guard(self.store.gc_names_if_grown)

    def _bucket(self, host: str, sec: int) -> dict:
        """The accumulator of (host, second): an open one, or for a second already closed its late one (the
        oldest open second's when MAX_LATE_SECONDS are held: ``misplaced`` says so)."""
        self.misplaced = False
        if sec < self.closed:
            acc = self.late.get((host, sec))
            if acc is not None:
                return acc
            if len(self.late) < MAX_LATE_SECONDS:
                acc = self.late[(host, sec)] = {}
                return acc
            self.misplaced = True
            sec = self.closed
        acc = self.open.get((host, sec))
        if acc is None:
            acc = self.open[(host, sec)] = {}
        return acc

    def _add_events(self, host: str, events: list, now: float) -> None:
        now_s = int(now)
        closed, future = self.closed, now_s + FUTURE_S
        names = self.cnames.get(host)
        if names is None:
            names = self.cnames[host] = {}
        last_sec: int | None = None
        acc: dict = {}
        late = skewed = misplaced = 0
        moved = False
        for e in events:
            sec = e["ts_ns"] // 1_000_000_000
            if sec < closed:
                late += 1
            elif sec > future:
                skewed += 1
                sec = max(closed, now_s)
            if sec != last_sec:
                last_sec, acc = sec, self._bucket(host, sec)
                moved = self.misplaced
            misplaced += moved
            key = record_key(e)
            row = acc.get(key)
            ret = e["ret"]
            if row is None:
                if len(acc) >= MAX_KEYS_PER_SECOND:
                    key = (OTHER, "", key[2], key[3], OTHER, "")
                    row = acc.get(key)
                if row is None:
                    row = acc[key] = [0, 0, 0, 0]
                cid, cname = key[2], e["container_name"]
                if cid and cname and names.get(cid) != cname:
                    if len(names) >= MAX_CONTAINER_NAMES:
                        names.clear()
                    names[cid] = cname
            row[0] += 1
            if ret > 0:
                row[1] += ret
            elif ret < 0:
                row[2] += 1
            row[3] += e.get("lat_ns", 0)        # measured only with the collector's --latency
        c = self.counters
        c["events_recorded"] += len(events)
        c["late_events"] += late
        c["late_events_misplaced"] += misplaced
        c["clock_skewed_events"] += skewed

    def _add_counts(self, host: str, payload: dict, now: float) -> None:
        mid_ns = payload["ts_ns"] - payload["interval_ns"] // 2
        sec = mid_ns // 1_000_000_000
        now_s = int(now)
        if sec < self.closed:
            self.counters["late_events"] += sum(r["calls"] for r in payload["rows"])
        elif sec > now_s + FUTURE_S:
            self.counters["clock_skewed_events"] += sum(r["calls"] for r in payload["rows"])
            sec = max(self.closed, now_s)
        acc = self._bucket(host, sec)
        if self.misplaced:
            self.counters["late_events_misplaced"] += sum(r["calls"] for r in payload["rows"])
        names = self.cnames.setdefault(host, {})
        for r in payload["rows"]:
            key = record_key(r)
            row = acc.get(key)
            if row is None:
                if len(acc) >= MAX_KEYS_PER_SECOND:
                    key = (OTHER, "", key[2], key[3], OTHER, "")
                    row = acc.get(key)
                if row is None:
                    row = acc[key] = [0, 0, 0, 0]
            if key[2] and r.get("container_name"):
                if len(names) >= MAX_CONTAINER_NAMES:
                    names.clear()
                names[key[2]] = r["container_name"]
            row[0] += r["calls"]
            row[1] += r["bytes"]
            row[2] += r["errors"]
            row[3] += r.get("lat_ns_sum", 0)
            self.counters["events_recorded"] += r["calls"]

    def _close(self, closable: int) -> None:
        """Seconds before ``closable`` become bounded intervals, in time order, pending a write."""
        done = sorted(k for k in self.open if k[1] < closable)
        top_n = self.store.top_n
        for host, sec in done:
            fine = self.open.pop((host, sec))
            self.pending.append((sec, host, bound_interval(dimensions(fine, self.cnames.get(host, {})), top_n)))
        self.closed = closable
        if len(self.pending) > MAX_PENDING:
            drop = len(self.pending) - MAX_PENDING
            self.counters["intervals_dropped"] += drop
            del self.pending[:drop]

    def _write(self) -> None:
        """Write the pending seconds, in time order, in transactions of at most ``store.max_tx_rows`` rows
        (cut between seconds: the store's watermark then says exactly how far it got)."""
        pending = self.pending
        while pending:
            n, rows, t_end = 0, 0, None
            while n < len(pending):
                size = sum(len(e) for e in pending[n][2].values())
                if rows and rows + size > self.store.max_tx_rows and pending[n][0] != pending[n - 1][0]:
                    t_end = pending[n][0]
                    break
                rows += size
                n += 1
            try:
                written = self.store.write(pending[:n], self.closed if t_end is None else t_end)
            except WriteFailed as exc:
                self._failed(exc)
                return
            del pending[:n]
            self.counters["rows_written"] += written
            self.counters["intervals_written"] += n
        self._ok()

    def _write_late(self) -> None:
        """The late seconds, into every tier that holds them (one transaction; kept for a retry if it fails)."""
        top_n = self.store.top_n
        intervals = [(sec, host, bound_interval(dimensions(fine, self.cnames.get(host, {})), top_n))
                     for (host, sec), fine in sorted(self.late.items(), key=lambda kv: kv[0][1])]
        try:
            rows, lost = self.store.write_late(intervals)
        except WriteFailed as exc:
            self._failed(exc)
            return
        self.counters["late_events_dropped"] += sum(v[0] for sec, host in lost for v in self.late[(host, sec)].values())
        self.late = {}
        self.counters["rows_written"] += rows
        self._ok()

    def _guard(self, work) -> None:
        try:
            work()
        except WriteFailed as exc:
            self._failed(exc)
        else:
            self._ok()

    def _failed(self, exc: WriteFailed) -> None:
        self.counters["write_failures"] += 1
        if self.state == "recording":
            log.error("history: %s; keeping up to %d s in memory and retrying every %.0f s", exc, MAX_PENDING,
                      RETRY_S)
            self.error_since = time.time()
        self.state = "disk full" if exc.disk_full else "write failing"
        self.error = (f"{exc}. Recording resumes by itself when the disk has space again; meanwhile up to "
                      f"{MAX_PENDING} seconds of intervals are kept in memory"
                      if exc.disk_full else str(exc))
        self._retry_at = time.monotonic() + RETRY_S

    def _ok(self) -> None:
        if self.state != "recording":
            log.warning("history: recording again (%s since %s)", self.state, rfc3339(int(self.error_since or 0)))
        self.state, self.error, self.error_since = "recording", None, None

    def _refresh_status(self, final: bool = False) -> None:
        store = self.store
        status = {
            "path": store.path, "state": "stopped" if final and self.state == "recording" else self.state,
            "error": self.error, "error_since": rfc3339(int(self.error_since)) if self.error_since else None,
            "disk_bytes": store.disk_bytes(), "max_bytes": store.max_bytes,
            "complete_until": store.hi(store.tiers[0]), "intervals_pending": len(self.pending),
            "trims_for_size": store.trims, "cpu_seconds": round(self.cpu_s, 3),
            "tiers": [{"step_s": t.step, "keep_s": t.keep, "rows": store.rows(t), "kept_from": store.lo(t),
                       "written_until": store.hi(t)} for t in store.tiers],
            **self.counters,
        }
        with self._slock:
            self._status = status
