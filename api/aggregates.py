"""The API's model of the stream: per-host aggregates and a bounded buffer of recent events.

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
"""
from __future__ import annotations

import collections
import heapq
import threading
import time

from syswatch.api.validation import EventFilter
from syswatch.shared import protocol

CONNECTED_WINDOW_S = 3.0        # the collector sends a status every second
RATE_WINDOW_S = 5.0             # events/s is averaged over this many seconds
MAX_TRACKED_PROCESSES = 20_000  # process rows kept over all hosts (a fork bomb cannot grow it forever)
MAX_TRACKED_CONTAINERS = 5_000
MAX_HOSTS = 64                  # collectors (hosts) kept; messages from more are counted as malformed
TOP_N = 10


# Every counter of the stream, once: name -> (Prometheus type, help). /stats "api" and /metrics
# (syswatch_api_<name>, "_total" for counters) are both derived from this table.
COUNTERS = {
    "messages_received": ("counter", "Well-formed messages received from the collectors."),
    "malformed_messages": ("counter", "Messages received that are not wire protocol v2 (skipped)."),
    "sse_dropped_events": ("counter", "Events not delivered to /events/stream clients that read too slowly."),
    "events_not_received": ("gauge", "Estimate: events the collectors published since the API first heard "
                                     "from them, minus events received."),
    "recent_events_buffered": ("gauge", "Events held for GET /events."),
    "processes_tracked": ("gauge", "Process rows held for the top-processes tables."),
    "processes_evicted": ("counter", "Process rows dropped from the tables to stay within the bound."),
    "containers_tracked": ("gauge", "Container rows held for the top-containers tables."),
}
CALLS, BYTES, ERRORS, LAT = range(4)    # the columns of every aggregate row


def _add(row: list, calls: int, nbytes: int, errors: int, lat: int) -> None:
    row[CALLS] += calls
    row[BYTES] += nbytes
    row[ERRORS] += errors
    row[LAT] += lat


def _as_dict(row: list) -> dict:
    return {"calls": row[CALLS], "bytes": row[BYTES], "errors": row[ERRORS], "lat_ns_sum": row[LAT]}


class HostStats:
    """One collector's (host's) aggregates; only the subscriber thread writes, under StreamStats.lock."""

    def __init__(self):
        self.totals: dict[str, list] = {}          # syscall -> [calls, bytes, errors, lat]
        self.procs: dict[tuple, list] = {}         # (pid, comm, container_id) -> [c, b, e, lat, name]
        self.containers: dict[str, list] = {}      # container_id -> [c, b, e, lat, name]
        self.events_received = 0
        self.status: dict | None = None            # the collector's last status payload
        self.last_message_at: float | None = None
        self.endpoint: str | None = None
        self.events_not_received = 0
        self._gap_base: tuple | None = None        # (collector published, api received) at the first status
        self._gap_carried = 0

    def add(self, syscall: str, pid: int, comm: str, cid: str, cname: str,
            calls: int, nbytes: int, errors: int, lat: int) -> None:
        total = self.totals.get(syscall)
        if total is None:
            total = self.totals[syscall] = [0, 0, 0, 0]
        _add(total, calls, nbytes, errors, lat)
        key = (pid, comm, cid)
        row = self.procs.get(key)
        if row is None:
            row = self.procs[key] = [0, 0, 0, 0, cname]
        _add(row, calls, nbytes, errors, lat)
        if cid:
            crow = self.containers.get(cid)
            if crow is None:
                crow = self.containers[cid] = [0, 0, 0, 0, cname]
            _add(crow, calls, nbytes, errors, lat)

    def set_status(self, status: dict) -> None:
        previous = self.status
        self.status = {k: v for k, v in status.items() if k != "v"}
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


class StreamStats:
    """Running aggregates of the stream per host and a bounded buffer of the most recent events."""

    def __init__(self, endpoints: list[str], recent_capacity: int):
        self.endpoints = list(endpoints)
        self.lock = threading.Lock()
        self.recent: collections.deque = collections.deque(maxlen=recent_capacity)
        self.hosts: dict[str, HostStats] = {}
        self.endpoint_seen: dict[str, float] = {}  # endpoint -> time.monotonic() of its last good message
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.last_malformed: str | None = None      # reason text of the last malformed message
        self._rate_samples: collections.deque = collections.deque()
        self.events_received = 0

    # --- writer side: the subscriber thread only ---------------------------------------------
    def _host(self, name: str, endpoint: str | None) -> HostStats | None:
        host = self.hosts.get(name)
        if host is None:
            if len(self.hosts) >= MAX_HOSTS:
                return None
            host = self.hosts[name] = HostStats()
        now = time.monotonic()
        host.last_message_at = now
        if endpoint is not None:
            host.endpoint = endpoint
            self.endpoint_seen[endpoint] = now
        self.counters["messages_received"] += 1
        return host

    def add_events(self, host_name: str, events: list, endpoint: str | None = None) -> bool:
        """A batch of cleaned events of one syscall; False when the host is one too many."""
        with self.lock:  # one batch (~1,000 events): about a millisecond
            host = self._host(host_name, endpoint)
            if host is None:
                return False
            syscall = events[0]["syscall"] if events else ""
            total = host.totals.get(syscall)
            if total is None:
                total = [0, 0, 0, 0]
                if events:                  # an empty batch adds no row
                    host.totals[syscall] = total
            procs, containers = host.procs, host.containers
            for e in events:
                ret = e["ret"]
                moved = ret if ret > 0 else 0
                err = 1 if ret < 0 else 0
                lat = e.get("lat_ns", 0)     # absent unless the collector measures latency (--latency)
                cid = e["container_id"]
                key = (e["pid"], e["comm"], cid)
                row = procs.get(key)
                if row is None:
                    procs[key] = [1, moved, err, lat, e["container_name"]]
                else:
                    row[0] += 1
                    row[1] += moved
                    row[2] += err
                    row[3] += lat
                if cid:
                    crow = containers.get(cid)
                    if crow is None:
                        containers[cid] = [1, moved, err, lat, e["container_name"]]
                    else:
                        crow[0] += 1
                        crow[1] += moved
                        crow[2] += err
                        crow[3] += lat
                total[0] += 1
                total[1] += moved
                total[2] += err
                total[3] += lat
                e["host"] = host_name
            host.events_received += len(events)
            self.events_received += len(events)
            self.recent.extend(events)
            self._bound(host)
        return True

    def add_counts(self, payload: dict, endpoint: str | None = None) -> bool:
        """A counts-mode interval: rows of {pid, comm, container_id, syscall, calls, bytes, errors, lat_ns_sum}."""
        with self.lock:
            host = self._host(payload["host"], endpoint)
            if host is None:
                return False
            for r in payload["rows"]:
                host.add(r["syscall"], r["pid"], r["comm"], r["container_id"], r["container_name"],
                         r["calls"], r["bytes"], r["errors"], r.get("lat_ns_sum", 0))
                host.events_received += r["calls"]
                self.events_received += r["calls"]
            self._bound(host)
        return True

    def set_status(self, status: dict, endpoint: str | None = None) -> bool:
        with self.lock:
            host = self._host(status["host"], endpoint)
            if host is None:
                return False
            host.set_status(status)
            self.counters["events_not_received"] = sum(h.events_not_received for h in self.hosts.values())
        return True

    def add_malformed(self, reason: str) -> None:
        with self.lock:
            self.counters["malformed_messages"] += 1
            self.last_malformed = reason[:200]

    def add_sse_dropped(self, n: int) -> None:
        with self.lock:
            self.counters["sse_dropped_events"] += n

    def tick(self, now: float) -> None:
        """Once a second or so: sample the event counter for events/s."""
        samples = self._rate_samples
        samples.append((now, self.events_received))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW_S:
            samples.popleft()

    def _bound(self, host: HostStats) -> None:
        """Keep the busier half of a table that outgrew its share; the rest is counted as evicted."""
        share = max(500, MAX_TRACKED_PROCESSES // len(self.hosts))
        if len(host.procs) > share:
            keep = heapq.nlargest(share // 2, host.procs.items(), key=lambda kv: kv[1][CALLS])
            self.counters["processes_evicted"] += len(host.procs) - len(keep)
            host.procs = dict(keep)
        cshare = max(100, MAX_TRACKED_CONTAINERS // len(self.hosts))
        if len(host.containers) > cshare:
            host.containers = dict(heapq.nlargest(cshare // 2, host.containers.items(), key=lambda kv: kv[1][CALLS]))

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

    def snapshot(self, host: str | None = None) -> dict:
        """A consistent copy of the aggregates of ``host`` (None: every host); the lock is held for the copies."""
        now = time.monotonic()
        with self.lock:
            chosen = {h: s for h, s in self.hosts.items() if host is None or h == host}
            totals: dict[str, list] = {sc: [0, 0, 0, 0] for sc in protocol.DEFAULT_SYSCALLS}
            procs: list = []
            containers: dict[tuple, list] = {}
            for name, h in chosen.items():
                # every syscall a collector traces has a row, also before its first call
                for sc in (h.status or {}).get("syscalls", protocol.DEFAULT_SYSCALLS):
                    totals.setdefault(sc, [0, 0, 0, 0])
                for sc, row in h.totals.items():
                    _add(totals.setdefault(sc, [0, 0, 0, 0]), *row)
                procs.extend((name, key, list(row)) for key, row in h.procs.items())
                for cid, row in h.containers.items():
                    containers[(name, cid)] = list(row)
            collectors = self._collectors(now)
            counters = self._counters()
            events_received = sum(h.events_received for h in chosen.values())
            last_malformed = self.last_malformed
            hosts = sorted(self.hosts)

        def proc_row(item) -> dict:
            name, (pid, comm, cid), row = item
            return {"host": name, "pid": pid, "comm": comm, "container_id": cid, "container_name": row[4],
                    **_as_dict(row)}

        def cont_row(item) -> dict:
            (name, cid), row = item
            return {"host": name, "container_id": cid, "container_name": row[4], **_as_dict(row)}

        return {
            "connected": any(c["connected"] for c in collectors),
            "events_per_s": round(self.events_per_s(), 1),
            "events_received": events_received,
            "totals": {sc: _as_dict(totals[sc]) for sc in protocol.SYSCALLS if sc in totals},
            "top_processes_by_calls": [proc_row(i) for i in heapq.nlargest(TOP_N, procs, key=lambda i: i[2][CALLS])],
            "top_processes_by_bytes": [proc_row(i) for i in heapq.nlargest(TOP_N, procs, key=lambda i: i[2][BYTES])],
            "top_containers_by_calls": [cont_row(i) for i in heapq.nlargest(TOP_N, containers.items(),
                                                                            key=lambda i: i[1][CALLS])],
            "top_containers_by_bytes": [cont_row(i) for i in heapq.nlargest(TOP_N, containers.items(),
                                                                            key=lambda i: i[1][BYTES])],
            "collectors": [c for c in collectors if host is None or c["host"] == host],
            "hosts": hosts,
            "api": {**counters, "last_malformed_reason": last_malformed,
                    "recent_events_capacity": self.recent.maxlen},
        }

    def metrics_view(self) -> dict:
        """What /metrics reads, one consistent copy without the top-N tables (cheap at every scrape):
        ``totals_by_host`` {host: {syscall: row}} (every syscall a host traces, zero before its first
        call), ``collectors`` (as in snapshot) and ``api`` (the COUNTERS)."""
        now = time.monotonic()
        with self.lock:
            by_host = {}
            for name, h in self.hosts.items():
                rows = {sc: [0, 0, 0, 0] for sc in (h.status or {}).get("syscalls", protocol.DEFAULT_SYSCALLS)}
                rows.update((sc, list(row)) for sc, row in h.totals.items())
                by_host[name] = {sc: _as_dict(rows[sc]) for sc in protocol.SYSCALLS if sc in rows}
            return {"totals_by_host": by_host, "collectors": self._collectors(now), "api": self._counters()}

    def _counters(self) -> dict:
        """The COUNTERS, gauges filled in; called with the lock held."""
        counters = dict(self.counters)
        counters["recent_events_buffered"] = len(self.recent)
        counters["processes_tracked"] = sum(len(h.procs) for h in self.hosts.values())
        counters["containers_tracked"] = sum(len(h.containers) for h in self.hosts.values())
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
                        "status": dict(h.status) if h.status else None})
        for endpoint in self.endpoints:
            if endpoint not in heard:
                out.append({"endpoint": endpoint, "host": None, "connected": False, "last_message_age_s": None,
                            "events_received": 0, "events_not_received": 0, "status": None})
        return out

    def recent_events(self, flt: EventFilter, limit: int) -> list:
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
