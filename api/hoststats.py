"""One collector's (host's) aggregates: the tables /stats, /metrics and the dashboard read.

    totals      syscall -> [calls, bytes, errors, lat_ns_sum, lat_n]  + a latency Histogram + errnos
    procs       (pid, comm, container_id) -> [calls, bytes, errors, lat_ns_sum, lat_n, container_name, errnos]
    containers  container_id -> [calls, bytes, errors, lat_ns_sum, lat_n, container_name, errnos, Histogram]
    files       (dev, ino) or path -> [calls, bytes, errors, lat_ns_sum, lat_n, path, file_type]

``bytes`` is the sum of positive ``ret``, ``errors`` the calls with ``ret < 0``, ``lat_ns_sum`` and
``lat_n`` the latency summed over the calls that have one and how many those are (an event without
``lat_ns`` was not measured: it adds to neither, and to the histogram's ``unmeasured``). ``errnos`` is
``{errno name: calls}`` (shared/errnos.py) with at most MAX_ERRNOS names per row, the rest under
``"other"``; a counts-mode row that says how many calls failed but not how is counted as
``"unknown"``. A file is keyed by its device and inode when the event has them (two names of one
file are one file, shown by its latest name), else by its path; an event with neither has no file.

Two feeds, one set of tables: events (``add_events``) and counts-mode rows (``add_rows``); a row's
latency buckets (``lat_hist``, shared/latency.py) go into the same histograms as the events' ``lat_ns``.
Only the ingest thread writes, under StreamStats.lock; readers take copies (``view_*``).
"""
from __future__ import annotations

import heapq

from syswatch.shared import errnos
from syswatch.shared.latency import Histogram

CALLS, BYTES, ERRORS, LAT, LAT_N = range(5)     # the columns every row starts with
NAME, ERRNOS = 5, 6                             # procs and containers: the container name, the errnos
HIST = 7                                        # containers: the latency histogram
PATH, FILE_TYPE = 5, 6                          # files
MAX_ERRNOS = 8                                  # errno names kept per row; more are counted as "other"
UNKNOWN = "unknown"                             # a counts row's errors without their errno
# -errno -> name, for the hot loop (shared/errnos.py is the table)
_ERRNO_OF_RET = {-n: name for n, (name, _) in errnos.TABLE.items()}
MAX_PATH_SHOWN = 4096


def count_errno(table: dict, name: str, n: int = 1) -> None:
    """``table[name] += n`` within MAX_ERRNOS names (then under "other")."""
    if name in table:
        table[name] += n
    elif len(table) < MAX_ERRNOS:
        table[name] = n
    else:
        table[errnos.OTHER] = table.get(errnos.OTHER, 0) + n


def row_dict(row: list) -> dict:
    """The sums every table shares, as /stats shows them."""
    return {"calls": row[CALLS], "bytes": row[BYTES], "errors": row[ERRORS], "lat_ns_sum": row[LAT],
            "lat_measured": row[LAT_N]}


def file_key(e: dict):
    """(dev, ino) when known, else the path; None when the event names no file."""
    ino = e.get("ino")
    if ino:
        return (e.get("dev", 0), ino)
    return e.get("path") or None


class HostStats:
    def __init__(self):
        self.totals: dict[str, list] = {}
        self.latency: dict[str, Histogram] = {}
        self.errnos: dict[str, dict] = {}
        self.procs: dict[tuple, list] = {}
        self.containers: dict[str, list] = {}
        self.files: dict = {}
        self.events_received = 0
        self.status: dict | None = None            # the collector's last accepted status (in full)
        self.status_shown: dict | None = None      # the same, long lists cut (what /stats shows)
        self.status_at: float | None = None        # time.monotonic() it arrived
        self.bridge: dict | None = None            # its NATS bridge's last status (topic "bridge"), NATS only
        self.last_message_at: float | None = None
        self.endpoint: str | None = None
        self.events_not_received = 0
        self._gap_base: tuple | None = None        # (collector published, api received) at the first status
        self._gap_carried = 0

    def _syscall(self, syscall: str) -> tuple[list, Histogram, dict]:
        total = self.totals.get(syscall)
        if total is None:
            total = self.totals[syscall] = [0, 0, 0, 0, 0]
            self.latency[syscall] = Histogram()
            self.errnos[syscall] = {}
        return total, self.latency[syscall], self.errnos[syscall]

    # --- the two feeds ------------------------------------------------------------------------------
    def add_events(self, host_name: str, syscall: str, events: list) -> None:
        """A batch of one syscall's events (cleaned by shared.protocol.decode); each gets ``host``."""
        total, hist, total_errnos = self._syscall(syscall)
        counts = hist.counts
        procs, containers, files = self.procs, self.containers, self.files
        errno_of = _ERRNO_OF_RET
        calls = moved_sum = errors = lat_sum = lat_n = unmeasured = 0
        lat_max = hist.max_ns
        for e in events:
            ret = e["ret"]
            lat = e.get("lat_ns")
            name = None
            if ret >= 0:
                moved, err = ret, 0
            else:
                moved, err = 0, 1
                name = errno_of.get(ret, errnos.OTHER)
                count_errno(total_errnos, name)
            if lat is None:
                lat, measured = 0, 0
                unmeasured += 1
            else:
                measured = 1
                counts[lat.bit_length()] += 1
                if lat > lat_max:
                    lat_max = lat
            calls += 1
            moved_sum += moved
            errors += err
            lat_sum += lat
            lat_n += measured
            cid = e["container_id"]
            key = (e["pid"], e["comm"], cid)
            row = procs.get(key)
            if row is None:
                row = procs[key] = [1, moved, err, lat, measured, e["container_name"], None]
            else:
                row[0] += 1
                row[1] += moved
                row[2] += err
                row[3] += lat
                row[4] += measured
                if cid and not row[NAME]:     # named once the collector's engine lookup answered
                    row[NAME] = e["container_name"]
            if name is not None:
                if row[6] is None:
                    row[6] = {}
                count_errno(row[6], name)
            if cid:
                crow = containers.get(cid)
                if crow is None:
                    crow = containers[cid] = [0, 0, 0, 0, 0, e["container_name"], None, Histogram()]
                elif not crow[NAME]:
                    crow[NAME] = e["container_name"]
                crow[0] += 1
                crow[1] += moved
                crow[2] += err
                crow[3] += lat
                crow[4] += measured
                chist = crow[7]
                if measured:
                    chist.counts[lat.bit_length()] += 1
                    chist.sum_ns += lat
                    if lat > chist.max_ns:
                        chist.max_ns = lat
                else:
                    chist.unmeasured += 1
                if name is not None:
                    if crow[6] is None:
                        crow[6] = {}
                    count_errno(crow[6], name)
            ino = e.get("ino")                          # the file: (dev, ino), else its path (file_key)
            fkey = (e.get("dev", 0), ino) if ino else e.get("path")
            if fkey:
                frow = files.get(fkey)
                if frow is None:
                    files[fkey] = [1, moved, err, lat, measured, e.get("path", ""), e.get("file_type", "")]
                else:
                    frow[0] += 1
                    frow[1] += moved
                    frow[2] += err
                    frow[3] += lat
                    frow[4] += measured
                    path = e.get("path")
                    if path:
                        frow[5] = path
            e["host"] = host_name
        total[CALLS] += calls
        total[BYTES] += moved_sum
        total[ERRORS] += errors
        total[LAT] += lat_sum
        total[LAT_N] += lat_n
        hist.sum_ns += lat_sum
        hist.max_ns = lat_max
        hist.unmeasured += unmeasured
        self.events_received += calls

    def add_rows(self, rows: list) -> int:
        """Counts-mode rows (shared.protocol's ROW); returns the calls they hold.

        A row's ``lat_ns_sum`` is over the calls its ``lat_hist`` holds, or over all its calls when
        it has no buckets (a collector without counts-mode histograms measures every call but sends
        only the sum): the mean stays right, and the calls go to the histogram's ``unmeasured``."""
        calls = 0
        for r in rows:
            n, moved, err, lat = r["calls"], r["bytes"], r["errors"], r.get("lat_ns_sum")
            buckets = r.get("lat_hist")
            placed = sum(buckets) if buckets else 0
            # no lat_ns_sum: the collector does not measure latency (--latency off), none is measured
            lat_n = placed if buckets else (n if lat is not None else 0)
            lat = lat or 0
            by_errno = (r.get("errnos") or {UNKNOWN: err}) if err else {}
            total, hist, total_errnos = self._syscall(r["syscall"])
            self._add(total, n, moved, err, lat, lat_n, None)
            for name, k in by_errno.items():
                count_errno(total_errnos, name, k)
            hists = [hist]
            cid = r["container_id"]
            key = (r["pid"], r["comm"], cid)
            prow = self.procs.get(key)
            if prow is None:
                prow = self.procs[key] = [0, 0, 0, 0, 0, r.get("container_name", ""), None]
            elif cid and not prow[NAME]:
                prow[NAME] = r.get("container_name", "")
            self._add(prow, n, moved, err, lat, lat_n, by_errno)
            if cid:
                crow = self.containers.get(cid)
                if crow is None:
                    crow = self.containers[cid] = [0, 0, 0, 0, 0, r.get("container_name", ""), None, Histogram()]
                elif not crow[NAME]:
                    crow[NAME] = r.get("container_name", "")
                self._add(crow, n, moved, err, lat, lat_n, by_errno)
                hists.append(crow[HIST])
            for h in hists:
                if buckets:
                    h.add_buckets(buckets, lat, r.get("lat_ns_max"))
                h.unmeasured += n - placed
            fkey = file_key(r)
            if fkey is not None:
                frow = self.files.get(fkey)
                if frow is None:
                    frow = self.files[fkey] = [0, 0, 0, 0, 0, r.get("path", ""), r.get("file_type", "")]
                self._add(frow, n, moved, err, lat, lat_n, None)
            calls += n
        self.events_received += calls
        return calls

    @staticmethod
    def _add(row: list, n: int, moved: int, err: int, lat: int, measured: int, by_errno: dict | None) -> None:
        row[CALLS] += n
        row[BYTES] += moved
        row[ERRORS] += err
        row[LAT] += lat
        row[LAT_N] += measured
        if by_errno:
            if row[ERRNOS] is None:
                row[ERRNOS] = {}
            for name, k in by_errno.items():
                count_errno(row[ERRNOS], name, k)

    # --- status --------------------------------------------------------------------------------------
    def set_status(self, status: dict, now: float, shown: dict) -> None:
        """An accepted status (api/trust.py checked it); ``shown`` is its bounded copy for /stats."""
        previous = self.status
        self.status = {k: v for k, v in status.items() if k != "v"}
        self.status_shown = shown
        self.status_at = now
        published = status["events_total"] - status["dropped_total"]
        restarted = previous is not None and (status["events_total"] < previous["events_total"]
                                              or status["uptime_s"] < previous["uptime_s"])
        if self._gap_base is None or restarted:
            # a new baseline; what was missing before a collector restart stays counted
            self._gap_carried = self.events_not_received
            self._gap_base = (published, self.events_received)
        elif status["mode"] == "events":
            sent = published - self._gap_base[0]
            got = self.events_received - self._gap_base[1]
            self.events_not_received = self._gap_carried + max(0, sent - got)

    def traced(self, default: tuple) -> list:
        """The syscalls this host's collector traces (from its status), else ``default``."""
        return list((self.status or {}).get("syscalls", default))

    # --- bounds ---------------------------------------------------------------------------------------
    def bound(self, procs: int, containers: int, files: int) -> tuple[int, int]:
        """Keep the busier half of a table that outgrew its share; returns (processes, files) evicted."""
        evicted_procs = evicted_files = 0
        if len(self.procs) > procs:
            keep = heapq.nlargest(procs // 2, self.procs.items(), key=lambda kv: kv[1][CALLS])
            evicted_procs = len(self.procs) - len(keep)
            self.procs = dict(keep)
        if len(self.containers) > containers:
            self.containers = dict(heapq.nlargest(containers // 2, self.containers.items(),
                                                  key=lambda kv: kv[1][CALLS]))
        if len(self.files) > files:
            keep = heapq.nlargest(files // 2, self.files.items(), key=lambda kv: kv[1][CALLS])
            evicted_files = len(self.files) - len(keep)
            self.files = dict(keep)
        return evicted_procs, evicted_files
