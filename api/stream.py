"""The live side of the API: one background thread owns the ZeroMQ SUB sockets (one per collector)
and feeds one stats model.

    StreamSubscriber (thread) --decode--> StreamStats (per-host aggregates + recent events, short lock)
                                +-> StreamHub   (one bounded queue per /events/stream client)

HTTP threads only read copies (``StreamStats.snapshot`` / ``recent_events``), so a slow reader
never slows the subscriber, and the subscriber holds the lock only while it applies one message.
Every message goes through shared.protocol.decode, the stream's one validator: unknown fields are
dropped and every number, string and list is bounded, so what a publisher sends cannot make the
API's memory or its answers grow without bound. Every figure this module counts is declared once
in COUNTERS; /stats, /metrics (api/metrics.py, at scrape time) and the OpenAPI document are derived from it.

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
import secrets
import threading
import time

import zmq

from syswatch.api.validation import EventFilter
from syswatch.shared import protocol, zmqsock

CONNECTED_WINDOW_S = 3.0        # the collector sends a status every second
RATE_WINDOW_S = 5.0             # events/s is averaged over this many seconds
MAX_TRACKED_PROCESSES = 20_000  # process rows kept over all hosts (a fork bomb cannot grow it forever)
MAX_TRACKED_CONTAINERS = 5_000
MAX_HOSTS = 64                  # collectors (hosts) kept; messages from more are counted as malformed
TOP_N = 10
DRAIN_MAX = 1_000               # messages handled per wake-up before the rate/tick bookkeeping
# The SUB sockets' bounds: ZeroMQ queues at most SUB_RCVHWM messages of at most SUB_MAXMSGSIZE
# bytes per collector, so a publisher can make it hold at most 32 x 8 MiB = 256 MiB. The
# collector's batches are ~350 KB (one 256 KiB read of bpftrace output) and its counts messages
# at most 10,000 rows (~2.5 MB).
SUB_RCVHWM = 32
SUB_MAXMSGSIZE = 8 * 1024 * 1024
RESUBSCRIBE_S = 5.0             # a collector silent this long (it sends status every second) gets a new socket

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
        self.last_malformed = None                  # reason text of the last malformed message
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
            if total is None and events:
                total = host.totals[syscall] = [0, 0, 0, 0]
            procs, containers = host.procs, host.containers
            for e in events:
                ret = e["ret"]
                moved = ret if ret > 0 else 0
                err = 1 if ret < 0 else 0
                lat = e["lat_ns"]
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
                         r["calls"], r["bytes"], r["errors"], r["lat_ns_sum"])
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


class TooManyStreams(Exception):
    pass


class ShuttingDown(TooManyStreams):
    """The API is stopping: no new event stream is opened (answered 503 like a full hub)."""


class StreamClient:
    """One /events/stream client: a bounded queue of events; what does not fit is dropped and counted.

    The queue holds ``(ids, events)`` chunks: ``ids[i]`` is the hub's sequence number of ``events[i]``
    (a ``range`` when nothing was filtered out), so the SSE body can send ``id:`` lines.
    """

    def __init__(self, flt: EventFilter, max_queued: int):
        self.filter = flt
        self.max_queued = max_queued
        self.cond = threading.Condition()
        self.batches: collections.deque = collections.deque()
        self.queued = 0
        self.dropped = 0
        self.ended = False  # set when the server shuts down: the stream ends at once
        self.notice = None  # what the resume from Last-Event-ID did, sent as an SSE comment

    def end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify()

    def _matching(self, first_id: int, events: list) -> tuple:
        flt = self.filter
        if flt.empty:
            return range(first_id, first_id + len(events)), events
        ids, matching = [], []
        for i, e in enumerate(events):
            if flt.matches(e):
                ids.append(first_id + i)
                matching.append(e)
        return ids, matching

    def offer(self, first_id: int, events: list) -> int:
        """Queue the matching events (numbered from ``first_id``); returns how many were dropped."""
        ids, matching = self._matching(first_id, events)
        if not matching:
            return 0
        with self.cond:
            if self.queued + len(matching) > self.max_queued:
                self.dropped += len(matching)
                return len(matching)
            self.batches.append((ids, matching))
            self.queued += len(matching)
            self.cond.notify()
        return 0

    def take(self, timeout: float) -> tuple[list, int]:
        """([(ids, events), ...], dropped since the last take), waiting up to ``timeout`` s for events."""
        with self.cond:
            if not self.batches and not self.ended:
                self.cond.wait(timeout)
            out = list(self.batches)
            self.batches.clear()
            self.queued = 0
            dropped, self.dropped = self.dropped, 0
        return out, dropped


class StreamHub:
    """The set of live /events/stream clients, capped at ``max_clients``, and a replay ring.

    Every published event gets a sequence number; the SSE ``id:`` of an event is ``<epoch>-<seq>``,
    where ``epoch`` names this API process (a client resuming after a restart is told so instead of
    being sent wrong events). The ring keeps the last ``replay_capacity`` events (at least), so a
    client reconnecting with ``Last-Event-ID`` gets what it missed when that is still buffered.
    Publishing and opening take one short lock, so a resuming client gets each event exactly once:
    either from the ring or live.
    """

    def __init__(self, stats: StreamStats, max_clients: int, max_queued: int, replay_capacity: int = 10_000):
        self.stats = stats
        self.max_clients = max_clients
        self.max_queued = max_queued
        self.replay_capacity = replay_capacity
        self.epoch = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._clients: tuple = ()
        self._ring: collections.deque = collections.deque()  # (first_id, events)
        self._ring_len = 0
        self._next_id = 1
        self._ended = False

    def event_id(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    def open(self, flt: EventFilter, last_event_id: str | None = None) -> StreamClient:
        client = StreamClient(flt, self.max_queued)
        with self._lock:
            if self._ended:
                raise ShuttingDown("the API is shutting down; retry in a moment")
            if len(self._clients) >= self.max_clients:
                raise TooManyStreams(f"{len(self._clients)} event streams are open, the maximum "
                                     f"(server option --max-streams); retry later")
            if last_event_id is not None:
                self._replay(client, last_event_id)
            self._clients = self._clients + (client,)
        return client

    def _replay(self, client: StreamClient, last_event_id: str) -> None:
        """Queue in ``client`` the buffered events after ``last_event_id`` (under the hub's lock)."""
        shown = last_event_id[:40].encode("ascii", "backslashreplace").decode()
        epoch, _, seq_text = last_event_id.partition("-")
        if not (seq_text.isascii() and seq_text.isdigit() and len(seq_text) <= 18):
            client.notice = f"Last-Event-ID {shown!r} is not an id of this stream: live events only"
            return
        if epoch != self.epoch:
            client.notice = (f"cannot resume after {shown}: the API restarted since, its events are gone; "
                             f"live events only")
            return
        after = int(seq_text)
        oldest = self._ring[0][0] if self._ring else self._next_id
        if after >= self._next_id:
            client.notice = f"cannot resume after {shown}: no such event yet; live events only"
            return
        replayed = 0
        for first_id, events in self._ring:
            if first_id + len(events) <= after + 1:
                continue
            skip = max(0, after + 1 - first_id)
            ids, matching = client._matching(first_id + skip, events[skip:])
            if matching:
                client.batches.append((ids, matching))
                replayed += len(matching)
        while replayed > client.max_queued:  # keep the newest that fit the client's queue
            ids, matching = client.batches.popleft()
            client.dropped += len(matching)
            replayed -= len(matching)
        client.queued = replayed
        missed = max(0, oldest - after - 1)
        client.notice = (f"resumed after {shown}: {replayed} buffered events replayed"
                         + (f"; {missed} events before them are no longer buffered (replay buffer: "
                            f"the last {self.replay_capacity} events)" if missed else ""))

    def close(self, client: StreamClient) -> None:
        with self._lock:
            self._clients = tuple(c for c in self._clients if c is not client)

    def count(self) -> int:
        return len(self._clients)

    def end_all(self) -> None:
        """Shutting down: end every open stream so no worker thread waits for events; open no new one."""
        with self._lock:
            self._ended = True
            clients = self._clients
        for client in clients:
            client.end()

    def publish(self, events: list) -> None:
        with self._lock:
            first_id = self._next_id
            self._next_id += len(events)
            ring = self._ring
            ring.append((first_id, events))
            self._ring_len += len(events)
            while self._ring_len - len(ring[0][1]) >= self.replay_capacity:
                self._ring_len -= len(ring.popleft()[1])
            clients = self._clients
        dropped = 0
        for client in clients:
            dropped += client.offer(first_id, events)
        if dropped:
            self.stats.add_sse_dropped(dropped)


class StreamSubscriber(threading.Thread):
    """Owns one SUB socket per collector endpoint (used from this thread only); decodes into ``stats`` and ``hub``."""

    def __init__(self, endpoints: list[str], stats: StreamStats, hub: StreamHub,
                 ctx: zmq.Context | None = None, curve_client=None):
        super().__init__(name="syswatch-subscriber", daemon=True)
        self.endpoints = list(endpoints)
        self.curve_client = curve_client  # shared.curve.ClientKeys, or None: no CurveZMQ
        self.stats = stats
        self.hub = hub
        self.ctx = ctx or zmq.Context.instance()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _open(self, endpoint: str) -> zmq.Socket:
        return zmqsock.make_subscriber(self.ctx, endpoint, curve_client=self.curve_client,
                                       rcvhwm=SUB_RCVHWM, maxmsgsize=SUB_MAXMSGSIZE)

    def run(self) -> None:
        socks: dict[zmq.Socket, str] = {}
        heard: dict[str, float] = {}
        poller = zmq.Poller()
        try:
            for endpoint in self.endpoints:
                sock = self._open(endpoint)
                socks[sock] = endpoint
                heard[endpoint] = time.monotonic()
                poller.register(sock, zmq.POLLIN)
            next_tick = 0.0
            while not self._stop.is_set():
                for sock, _ in poller.poll(200):
                    endpoint = socks[sock]
                    heard[endpoint] = time.monotonic()
                    for _ in range(DRAIN_MAX):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.handle(frames, endpoint)
                now = time.monotonic()
                if now >= next_tick:
                    self.stats.tick(now)
                    next_tick = now + 1.0
                    # A message over SUB_MAXMSGSIZE makes ZeroMQ close that connection for good (a
                    # protocol error is not retried): a collector silent for RESUBSCRIBE_S gets a new socket.
                    for sock, endpoint in list(socks.items()):
                        if now - heard[endpoint] > RESUBSCRIBE_S:
                            poller.unregister(sock)
                            sock.close(0)
                            del socks[sock]
                            fresh = self._open(endpoint)
                            socks[fresh] = endpoint
                            poller.register(fresh, zmq.POLLIN)
                            heard[endpoint] = now
        finally:
            for sock in socks:
                sock.close(0)

    def handle(self, frames: list, endpoint: str | None = None) -> None:
        stats = self.stats
        try:
            topic, payload = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            stats.add_malformed(str(exc))
            return
        if topic.startswith(protocol.EVENT_PREFIX):
            events = payload["events"]
            if events:
                ok = stats.add_events(payload["host"], events, endpoint)
                if ok:
                    self.hub.publish(events)
            else:
                ok = True
        elif topic == protocol.TOPIC_STATUS:
            ok = stats.set_status(payload, endpoint)
        elif topic == protocol.TOPIC_COUNTS:
            ok = stats.add_counts(payload, endpoint)
        else:
            return                                  # a topic of a newer protocol minor: not ours
        if not ok:
            stats.add_malformed(f"{topic} from host {payload['host']!r:.80}: more than {MAX_HOSTS} hosts")
