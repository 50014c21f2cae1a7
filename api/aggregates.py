"""The API's model of the stream: per-host aggregates (api/hoststats.py) and a bounded buffer of recent events.

    StreamSubscriber (api/ingest.py) --decoded messages--> StreamStats (this module, short lock)

Only the ingest thread writes; HTTP threads read copies (``StreamStats.snapshot`` /
``recent_events`` / ``metrics_view``), so a slow reader never slows the ingest, and the lock is
held only while one message is applied. Every table is bounded (MAX_HOSTS, MAX_TRACKED_*). Every
figure counted here is declared once in COUNTERS; /stats, /metrics (api/metrics.py, at scrape
time) and the OpenAPI document are derived from it.

What can be counted, honestly:
- ``malformed_messages``: messages that are not wire protocol v2 (garbage, wrong ``v``, one frame,
  out-of-range numbers, oversized strings or lists). Messages over ZMQ_MAXMSGSIZE are discarded by
  ZeroMQ itself, which also drops that connection (it reconnects); the API never sees them.
- ``sse_dropped_events``: events a slow /events/stream client did not take (its queue was full).
- ``events_not_received``: what ZeroMQ drops when this subscriber falls behind (the collector's
  PUB high-water mark) is invisible to a SUB socket, so it is estimated per host from the
  collector's ``status``: events it published since the API first heard from it minus events
  the API received. It includes events still in flight (up to one batch): an estimate, never < 0.
- ``messages_refused`` and ``implausible_messages`` (issue 29, api/trust.py): a message naming a host
  that another collector endpoint holds, or one host too many for its endpoint or for the API; and
  a message whose numbers cannot be true. Neither changes anything shown; ``last_refused_reason``
  says why the last one was refused.

Everything a collector sends reaches /stats bounded: long status lists are cut to their first
STATUS_LIST_SHOWN items with a ``<name>_count`` beside them, and hosts not heard from for the
host expiry are dropped (``hosts_expired``), so a later collector always finds a slot.
"""
from __future__ import annotations

import collections
import heapq
import threading
import time

from syswatch.api import trust
from syswatch.api.hoststats import BYTES, CALLS, ERRNOS, FILE_TYPE, HIST, LAT, LAT_N, NAME, PATH, HostStats
from syswatch.shared import protocol
from syswatch.shared.latency import Histogram
from syswatch.shared.selection import Selection

CONNECTED_WINDOW_S = 3.0        # the collector sends a status every second
RATE_WINDOW_S = 5.0             # events/s is averaged over this many seconds
MAX_TRACKED_PROCESSES = 20_000  # process rows kept over all hosts (a fork bomb cannot grow it forever)
MAX_TRACKED_CONTAINERS = 5_000
# file rows kept over all hosts (a process opening a million files). Every connection a traced
# server accepts is a new file (a socket inode), so a busy host keeps this table full: at ~350 B a
# row (tracemalloc, socket rows) 10,000 are ~3.5 MB, 20,000 were ~7 MB, which the hour's soak saw
# as each API's RSS floor rising 6-10 MiB over its 15 minutes (~40 new sockets a second)
MAX_TRACKED_FILES = 10_000
MAX_HOSTS = 64                  # hosts the API holds at most (and --hosts-per-collector per endpoint)
HOSTS_PER_ENDPOINT = 1          # a collector sends one host name (--hosts-per-collector)
HOST_EXPIRY_S = 600.0           # a host silent this long is forgotten, its name free (--host-expiry)
TOP_N = 10
STATUS_LIST_SHOWN = 16          # items of a status list (excluded_pids, stale_cpus, ...) /stats shows


# Every counter of the stream, once: name -> (Prometheus type, help). /stats "api" and /metrics
# (syswatch_api_<name>, "_total" for counters) are both derived from this table.
COUNTERS = {
    "messages_received": ("counter", "Well-formed messages received from the collectors."),
    "malformed_messages": ("counter", "Messages received that are not wire protocol v2 (skipped)."),
    "messages_refused": ("counter", "Messages refused: their host belongs to another collector endpoint, or "
                                    "the endpoint or the API already holds its most hosts."),
    "implausible_messages": ("counter", "Messages refused because their numbers cannot be true (counters "
                                        "running backwards or past what a host can make)."),
    "sse_dropped_events": ("counter", "Events not delivered to /events/stream clients that read too slowly."),
    "sse_streams_stalled": ("counter", "Event streams closed because their client took no data for the "
                                       "stall timeout (--sse-stall-timeout)."),
    "sse_streams_refused": ("counter", "Event streams refused: every slot taken (--max-streams) or the "
                                       "client's address holding its share (--max-streams-per-address)."),
    "events_not_received": ("gauge", "Estimate: events the collectors published since the API first heard "
                                     "from them, minus events received."),
    "recent_events_buffered": ("gauge", "Events held for GET /events."),
    "hosts_tracked": ("gauge", "Hosts (collectors) whose aggregates the API holds."),
    "hosts_expired": ("counter", "Hosts forgotten after the host expiry without a message (--host-expiry)."),
    "processes_tracked": ("gauge", "Process rows held for the top-processes tables."),
    "processes_evicted": ("counter", "Process rows dropped from the tables to stay within the bound."),
    "containers_tracked": ("gauge", "Container rows held for the top-containers tables."),
    "files_tracked": ("gauge", "File rows held for the top-files tables."),
    "files_evicted": ("counter", "File rows dropped from the tables to stay within the bound."),
    "nats_messages_received": ("counter", "Messages the NATS consumer delivered to this API (valid or refused)."),
    "nats_redelivered": ("counter", "Of those, messages JetStream delivered again (an API had not acknowledged "
                                    "them: it stopped, or lost its connection)."),
    "nats_pending": ("gauge", "Messages the NATS consumer still held for its readers at the last delivery "
                              "(the backlog while catching up)."),
}


def shown_status(status: dict) -> dict:
    """A status as /stats shows it: lists longer than STATUS_LIST_SHOWN cut, each list's length beside it."""
    out: dict = {}
    for key, value in status.items():
        if key == "v":
            continue
        if isinstance(value, list):
            out[key] = value[:STATUS_LIST_SHOWN]
            out[f"{key}_count"] = len(value)
        else:
            out[key] = value
    return out


def _avg(row: list) -> int | None:
    return row[LAT] // row[LAT_N] if row[LAT_N] else None


def _sums(row: list) -> dict:
    return {"calls": row[CALLS], "bytes": row[BYTES], "errors": row[2], "lat_ns_sum": row[LAT], "avg_ns": _avg(row)}


def _add_row(into: list, row: list) -> None:
    for i in range(5):
        into[i] += row[i]


def _add_errnos(into: dict, more: dict | None) -> None:
    for name, n in (more or {}).items():
        into[name] = into.get(name, 0) + n


class StreamStats:
    """Running aggregates of the stream per host and a bounded buffer of the most recent events."""

    def __init__(self, endpoints: list[str], recent_capacity: int, hosts_per_endpoint: int = HOSTS_PER_ENDPOINT,
                 host_expiry_s: float = HOST_EXPIRY_S):
        self.endpoints = list(endpoints)
        self.lock = threading.Lock()
        self.recent: collections.deque = collections.deque(maxlen=recent_capacity)
        self.hosts: dict[str, HostStats] = {}
        self.claims = trust.HostClaims(hosts_per_endpoint, MAX_HOSTS, host_expiry_s)
        self.endpoint_seen: dict[str, float] = {}  # endpoint -> time.monotonic() of its last good message
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.last_malformed: str | None = None      # reason text of the last malformed message
        self.last_refused: str | None = None        # reason text of the last refused message
        self._rate_samples: collections.deque = collections.deque()
        self.events_received = 0

    # --- writer side: the ingest thread only ---------------------------------------------------
    def _host(self, name: str, endpoint: str | None, now: float) -> HostStats | None:
        """The host's tables if ``endpoint`` may speak for it (lock held); else the refusal is counted."""
        reason = self.claims.admit(name, endpoint, now)
        if reason is not None:
            self._refuse("messages_refused", reason)
            return None
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = HostStats()
        return host

    def _heard(self, host: HostStats, endpoint: str | None, now: float) -> None:
        """A message of ``host`` was applied."""
        host.last_message_at = now
        if endpoint is not None:
            host.endpoint = endpoint
            self.endpoint_seen[endpoint] = now
        self.counters["messages_received"] += 1

    def _refuse(self, counter: str, reason: str) -> None:
        self.counters[counter] += 1
        self.last_refused = reason[:300]

    def add_events(self, host_name: str, events: list, endpoint: str | None = None) -> bool:
        """A batch of cleaned events of one syscall; False when refused (api/trust.py)."""
        if not events:
            return True
        now = time.monotonic()
        with self.lock:  # one batch (~1,000 events): about a millisecond
            host = self._host(host_name, endpoint, now)
            if host is None:
                return False
            problem = trust.events_problem(host_name, events)
            if problem:
                self._refuse("implausible_messages", problem)
                return False
            self._heard(host, endpoint, now)
            host.add_events(host_name, events[0]["syscall"], events)
            self.events_received += len(events)
            self.recent.extend(events)
            self._bound(host)
        return True

    def add_counts(self, payload: dict, endpoint: str | None = None) -> bool:
        """A counts-mode interval (rows of shared.protocol's ROW); False when refused."""
        now = time.monotonic()
        with self.lock:
            host = self._host(payload["host"], endpoint, now)
            if host is None:
                return False
            problem = trust.counts_problem(payload)
            if problem:
                self._refuse("implausible_messages", problem)
                return False
            self._heard(host, endpoint, now)
            self.events_received += host.add_rows(payload["rows"])
            self._bound(host)
        return True

    def set_status(self, status: dict, endpoint: str | None = None) -> bool:
        now = time.monotonic()
        with self.lock:
            host = self._host(status["host"], endpoint, now)
            if host is None:
                return False
            silence = None if host.status_at is None else now - host.status_at
            problem = trust.status_problem(status, host.status, silence)
            if problem:
                self._refuse("implausible_messages", problem)
                return False
            self._heard(host, endpoint, now)
            host.set_status(status, now, shown_status(status))
            self.counters["events_not_received"] = sum(h.events_not_received for h in self.hosts.values())
        return True

    def set_bridge(self, status: dict, source: str | None = None) -> bool:
        """A NATS bridge's counters (what it published and what it could not) for its host's view."""
        now = time.monotonic()
        with self.lock:
            host = self._host(status["host"], source, now)
            if host is None:
                return False
            host.bridge = {k: v for k, v in status.items() if k != "v"}
        return True

    def nats_delivery(self, redelivered: bool, pending: int) -> None:
        with self.lock:
            self.counters["nats_messages_received"] += 1
            self.counters["nats_redelivered"] += redelivered
            self.counters["nats_pending"] = pending

    def add_malformed(self, reason: str) -> None:
        with self.lock:
            self.counters["malformed_messages"] += 1
            self.last_malformed = reason[:200]

    def add_sse_dropped(self, n: int) -> None:
        self.count("sse_dropped_events", n)

    def count(self, counter: str, n: int = 1) -> None:
        """Add to one of the COUNTERS from another part of the API (the event-stream hub)."""
        with self.lock:
            self.counters[counter] += n

    def tick(self, now: float) -> None:
        """Once a second or so: sample the event counter for events/s; forget hosts silent too long."""
        samples = self._rate_samples
        samples.append((now, self.events_received))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW_S:
            samples.popleft()
        with self.lock:
            for name in self.claims.expired(now):
                self.hosts.pop(name, None)
                self.counters["hosts_expired"] += 1
            self.counters["events_not_received"] = sum(h.events_not_received for h in self.hosts.values())

    def _bound(self, host: HostStats) -> None:
        """Each host's tables within its share of the bounds; what is dropped is counted."""
        n = len(self.hosts)
        procs, files = host.bound(max(500, MAX_TRACKED_PROCESSES // n), max(100, MAX_TRACKED_CONTAINERS // n),
                                  max(500, MAX_TRACKED_FILES // n))
        self.counters["processes_evicted"] += procs
        self.counters["files_evicted"] += files

    # --- reader side: HTTP threads -------------------------------------------------------------
    def connected(self) -> bool:
        """Whether any collector sent a good message within CONNECTED_WINDOW_S."""
        now = time.monotonic()
        return any(now - at <= CONNECTED_WINDOW_S for at in list(self.endpoint_seen.values()))

    def events_per_s(self) -> float:
        samples = list(self._rate_samples)
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return 0.0
        return (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])

    def _syscall_copies(self, h: HostStats) -> dict:
        """{syscall: (row, histogram, errnos)} copies of one host, every traced syscall included (lock held)."""
        out: dict[str, tuple[list, Histogram, dict]] = {
            sc: ([0, 0, 0, 0, 0], Histogram(), {}) for sc in h.traced(protocol.DEFAULT_SYSCALLS)}
        for sc, row in h.totals.items():
            out[sc] = (list(row), h.latency[sc].copy(), dict(h.errnos[sc]))
        return out

    def snapshot(self, host: str | None = None) -> dict:
        """A consistent copy of the aggregates of ``host`` (None: every host); the lock is held for the copies."""
        now = time.monotonic()
        with self.lock:
            chosen = {h: s for h, s in self.hosts.items() if host is None or h == host}
            totals: dict[str, tuple] = {sc: ([0, 0, 0, 0, 0], Histogram(), {}) for sc in protocol.DEFAULT_SYSCALLS}
            procs: list = []
            containers: list = []
            files: list = []
            for name, h in chosen.items():
                for sc, (row, hist, errs) in self._syscall_copies(h).items():
                    into = totals.setdefault(sc, ([0, 0, 0, 0, 0], Histogram(), {}))
                    _add_row(into[0], row)
                    into[1].merge(hist)
                    _add_errnos(into[2], errs)
                procs.extend((name, key, row) for key, row in h.procs.items())
                containers.extend((name, cid, row) for cid, row in h.containers.items())
                files.extend((name, key, row) for key, row in h.files.items())
            top_procs = {k: _top(procs, k) for k in (CALLS, BYTES)}
            top_conts = {k: _top(containers, k) for k in (CALLS, BYTES)}
            top_files = {k: _top(files, k) for k in (CALLS, BYTES)}
            # the rows shown, copied while the lock is held (the ingest thread changes them in place)
            procs_out = {k: [self._proc_row(i) for i in rows] for k, rows in top_procs.items()}
            conts_out = {k: [self._cont_row(i) for i in rows] for k, rows in top_conts.items()}
            files_out = {k: [self._file_row(i) for i in rows] for k, rows in top_files.items()}
            collectors = self._collectors(now)
            counters = self._counters()
            events_received = sum(h.events_received for h in chosen.values())
            last_malformed, last_refused = self.last_malformed, self.last_refused
            hosts = sorted(self.hosts)

        def total_row(row: list, hist: Histogram, errs: dict) -> dict:
            return {**_sums(row), **hist.summary(), "lat_hist": hist.buckets(), "errnos": _sorted_errnos(errs)}

        return {
            "connected": any(c["connected"] for c in collectors),
            "events_per_s": round(self.events_per_s(), 1),
            "events_received": events_received,
            "totals": {sc: total_row(*totals[sc]) for sc in protocol.SYSCALLS if sc in totals},
            "top_processes_by_calls": procs_out[CALLS],
            "top_processes_by_bytes": procs_out[BYTES],
            "top_containers_by_calls": conts_out[CALLS],
            "top_containers_by_bytes": conts_out[BYTES],
            "top_files_by_calls": files_out[CALLS],
            "top_files_by_bytes": files_out[BYTES],
            "collectors": [c for c in collectors if host is None or c["host"] == host],
            "hosts": hosts,
            "api": {**counters, "last_malformed_reason": last_malformed, "last_refused_reason": last_refused,
                    "recent_events_capacity": self.recent.maxlen},
        }

    @staticmethod
    def _proc_row(item) -> dict:
        name, (pid, comm, cid), row = item
        return {"host": name, "pid": pid, "comm": comm, "container_id": cid, "container_name": row[NAME],
                **_sums(row), "errnos": _sorted_errnos(row[ERRNOS])}

    @staticmethod
    def _cont_row(item) -> dict:
        name, cid, row = item
        return {"host": name, "container_id": cid, "container_name": row[NAME], **_sums(row),
                "errnos": _sorted_errnos(row[ERRNOS]), **row[HIST].summary()}

    @staticmethod
    def _file_row(item) -> dict:
        name, key, row = item
        dev, ino = key if isinstance(key, tuple) else (None, None)
        return {"host": name, "path": row[PATH], "file_type": row[FILE_TYPE], "dev": dev, "ino": ino, **_sums(row)}

    def metrics_view(self) -> dict:
        """What /metrics reads, one consistent copy without the top-N tables (cheap at every scrape):
        ``by_host`` {host: {syscall: (row dict, Histogram, errnos)}} (every syscall a host traces, zero
        before its first call), ``collectors`` (as in snapshot) and ``api`` (the COUNTERS)."""
        now = time.monotonic()
        with self.lock:
            by_host = {}
            for name, h in self.hosts.items():
                copies = self._syscall_copies(h)
                by_host[name] = {sc: (_sums(copies[sc][0]), copies[sc][1], copies[sc][2])
                                 for sc in protocol.SYSCALLS if sc in copies}
            return {"by_host": by_host, "collectors": self._collectors(now), "api": self._counters()}

    def _counters(self) -> dict:
        """The COUNTERS, gauges filled in; called with the lock held."""
        counters = dict(self.counters)
        counters["recent_events_buffered"] = len(self.recent)
        counters["hosts_tracked"] = len(self.hosts)
        counters["processes_tracked"] = sum(len(h.procs) for h in self.hosts.values())
        counters["containers_tracked"] = sum(len(h.containers) for h in self.hosts.values())
        counters["files_tracked"] = sum(len(h.files) for h in self.hosts.values())
        return counters

    def _collectors(self, now: float) -> list[dict]:
        """One entry per (endpoint, host) heard from, and per endpoint not heard from yet."""
        out = []
        heard = set()
        for name, h in sorted(self.hosts.items()):
            age = None if h.last_message_at is None else now - h.last_message_at
            heard.add(h.endpoint)
            out.append({"endpoint": h.endpoint, "host": name,
                        "connected": age is not None and age <= CONNECTED_WINDOW_S,
                        "last_message_age_s": None if age is None else round(age, 3),
                        "events_received": h.events_received, "events_not_received": h.events_not_received,
                        "status": dict(h.status_shown) if h.status_shown else None,
                        "bridge": dict(h.bridge) if h.bridge else None})
        for endpoint in self.endpoints:
            if endpoint not in heard:
                out.append({"endpoint": endpoint, "host": None, "connected": False, "last_message_age_s": None,
                            "events_received": 0, "events_not_received": 0, "status": None, "bridge": None})
        return out

    def recent_events(self, flt: Selection, limit: int) -> list:
        """The newest ``limit`` events matching ``flt``, oldest first."""
        with self.lock:
            events = list(self.recent)
        if flt.empty:
            return events[-limit:]
        out = []
        for e in reversed(events):
            if flt.matches(e):
                out.append(e)
                if len(out) >= limit:
                    break
        out.reverse()
        return out


def _top(items: list, column: int) -> list:
    """The TOP_N (host, key, row) items with the largest row[column]."""
    return heapq.nlargest(TOP_N, items, key=lambda item: item[2][column])


def _sorted_errnos(errs: dict | None) -> dict:
    """Most frequent first (JSON keeps the order)."""
    return dict(sorted((errs or {}).items(), key=lambda kv: (-kv[1], kv[0])))
