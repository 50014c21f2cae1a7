"""The live side of the API: one background thread owns the ZeroMQ SUB socket and feeds one stats model.

    Subscriber (thread) --decode--> StreamStats (aggregates + recent events, under a short lock)
                                \-> StreamHub   (one bounded queue per /events/stream client)

HTTP threads only read copies (``StreamStats.snapshot`` / ``recent``), so a slow reader never
slows the subscriber, and the subscriber holds the lock only while it applies one message.

What can be counted, honestly:
- ``malformed_messages``: messages that are not wire protocol v1 (garbage, wrong ``v``, one frame,
  bad event fields). Messages over ZMQ_MAXMSGSIZE (64 MiB) are discarded by ZeroMQ itself, which
  also drops that connection (it reconnects); the API never sees them, so it cannot count them.
- ``sse_dropped_events``: events a slow /events/stream client did not take (its queue was full).
- ``events_not_received``: what ZeroMQ drops when this subscriber falls behind (the collector's
  PUB high-water mark) is invisible to a SUB socket, so it is estimated from the collector's
  ``status``: events it published since the API first heard from it minus events the API received.
  It includes events still in flight (up to one batch), so it is an estimate, never below 0.
"""
from __future__ import annotations

import collections
import heapq
import secrets
import threading
import time
import zmq

from api.validation import EventFilter
from shared import protocol, zmqsock

CONNECTED_WINDOW_S = 3.0        # the collector sends a status every second
RATE_WINDOW_S = 5.0             # events/s is averaged over this many seconds
MAX_TRACKED_PROCESSES = 20_000  # bound on the per-process table (a fork bomb cannot grow it forever)
TOP_N = 10
DRAIN_MAX = 1_000               # messages handled per wake-up before the rate/tick bookkeeping
INT_FIELDS = tuple(name for name, typ in protocol.EVENT_FIELDS.items() if typ is int)


def _valid_events(events: object, syscall: str) -> bool:
    """Every event of a batch is an EVENT of ``syscall`` (cheap checks: this runs 100,000 times a second)."""
    if type(events) is not list or not events:
        return False
    for e in events:
        if type(e) is not dict or e.get("syscall") != syscall or type(e.get("comm")) is not str:
            return False
        for name in INT_FIELDS:
            if type(e.get(name)) is not int:
                return False
    return True


class StreamStats:
    """Running aggregates of the stream and a bounded buffer of the most recent events."""

    def __init__(self, endpoint: str, recent_capacity: int):
        self.endpoint = endpoint
        self.lock = threading.Lock()
        self.recent: collections.deque = collections.deque(maxlen=recent_capacity)
        self.calls = {s: 0 for s in protocol.SYSCALLS}
        self.bytes = {s: 0 for s in protocol.SYSCALLS}
        self.procs: dict = {}           # (pid, comm) -> [calls, bytes]
        self.procs_evicted = 0
        self.messages = 0
        self.events_received = 0
        self.malformed = 0
        self.last_malformed = None      # reason text of the last malformed message
        self.last_message_at = None     # time.monotonic() of the last good message
        self.status = None              # the collector's last status payload
        self.sse_dropped = 0
        self._rate_samples: collections.deque = collections.deque()
        self._gap_base = None           # (collector published, api received) at the first status
        self.events_not_received = 0
        self._gap_carried = 0

    # --- writer side: the subscriber thread only ---------------------------------------------
    def add_events(self, syscall: str, events: list) -> None:
        with self.lock:  # one batch (a few hundred events): well under a millisecond
            procs = self.procs
            nbytes = 0
            for e in events:
                key = (e["pid"], e["comm"])
                count = e["count"]
                nbytes += count
                row = procs.get(key)
                if row is None:
                    procs[key] = [1, count]
                else:
                    row[0] += 1
                    row[1] += count
            self.calls[syscall] += len(events)
            self.bytes[syscall] += nbytes
            self.events_received += len(events)
            self.recent.extend(events)
            self._seen()
        if len(procs) > MAX_TRACKED_PROCESSES:
            self._evict()

    def add_counts(self, rows: list) -> None:
        """A counts-mode interval: rows of {pid, comm, syscall, calls, bytes}."""
        with self.lock:
            for r in rows:
                key = (r["pid"], r["comm"])
                row = self.procs.setdefault(key, [0, 0])
                row[0] += r["calls"]
                row[1] += r["bytes"]
                self.calls[r["syscall"]] += r["calls"]
                self.bytes[r["syscall"]] += r["bytes"]
                self.events_received += r["calls"]
            self._seen()
        if len(self.procs) > MAX_TRACKED_PROCESSES:
            self._evict()

    def set_status(self, status: dict) -> None:
        with self.lock:
            previous = self.status
            self.status = {k: v for k, v in status.items() if k != "v"}
            published = status["events_total"] - status["dropped_total"]
            restarted = previous is not None and (status["events_total"] < previous["events_total"]
                                                  or status["uptime_s"] < previous["uptime_s"])
            if self._gap_base is None or restarted:
                # a new baseline; what was missing before a collector restart stays counted
                self._gap_carried = self.events_not_received
                self._gap_base = (published, self.events_received)
            elif status.get("mode") == "events":
                sent = published - self._gap_base[0]
                got = self.events_received - self._gap_base[1]
                self.events_not_received = self._gap_carried + max(0, sent - got)
            self._seen()

    def add_malformed(self, reason: str) -> None:
        with self.lock:
            self.malformed += 1
            self.last_malformed = reason[:200]

    def add_sse_dropped(self, n: int) -> None:
        with self.lock:
            self.sse_dropped += n

    def tick(self, now: float) -> None:
        """Once a second or so: sample the event counter for events/s."""
        samples = self._rate_samples
        samples.append((now, self.events_received))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW_S:
            samples.popleft()

    def _seen(self) -> None:
        self.messages += 1
        self.last_message_at = time.monotonic()

    def _evict(self) -> None:
        """Keep the busier half of the process table; the rest is counted as evicted."""
        with self.lock:
            keep = heapq.nlargest(MAX_TRACKED_PROCESSES // 2, self.procs.items(), key=lambda kv: kv[1][0])
            self.procs_evicted += len(self.procs) - len(keep)
            self.procs = dict(keep)

    # --- reader side: HTTP threads -------------------------------------------------------------
    def connected(self) -> bool:
        at = self.last_message_at
        return at is not None and time.monotonic() - at <= CONNECTED_WINDOW_S

    def events_per_s(self) -> float:
        samples = list(self._rate_samples)
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return 0.0
        return (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])

    def snapshot(self) -> dict:
        """A consistent copy of every aggregate (the lock is held only for the copies)."""
        with self.lock:
            procs = dict(self.procs)
            snap = {
                "calls": dict(self.calls), "bytes": dict(self.bytes),
                "events_received": self.events_received, "messages": self.messages,
                "malformed": self.malformed, "last_malformed": self.last_malformed,
                "status": dict(self.status) if self.status else None,
                "sse_dropped": self.sse_dropped, "events_not_received": self.events_not_received,
                "procs_evicted": self.procs_evicted, "recent_len": len(self.recent),
                "last_message_at": self.last_message_at,
            }
        def top(index: int) -> list:
            best = heapq.nlargest(TOP_N, procs.items(), key=lambda kv: kv[1][index])
            return [{"pid": pid, "comm": comm, "calls": c, "bytes": b} for (pid, comm), (c, b) in best]
        snap["top_by_calls"] = top(0)
        snap["top_by_bytes"] = top(1)
        snap["procs_tracked"] = len(procs)
        snap["recent_capacity"] = self.recent.maxlen
        snap["connected"] = self.connected()
        snap["events_per_s"] = round(self.events_per_s(), 1)
        at = snap.pop("last_message_at")
        snap["last_message_age_s"] = None if at is None else round(time.monotonic() - at, 3)
        return snap

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


class Subscriber(threading.Thread):
    """Owns the SUB socket (used from this thread only); decodes messages into ``stats`` and ``hub``."""

    def __init__(self, endpoint: str, stats: StreamStats, hub: StreamHub,
                 ctx: zmq.Context | None = None, curve_client=None):
        super().__init__(name="syswatch-subscriber", daemon=True)
        self.endpoint = endpoint
        self.curve_client = curve_client  # shared.curve.ClientKeys, or None: no CurveZMQ
        self.stats = stats
        self.hub = hub
        self.ctx = ctx or zmq.Context.instance()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        sock = zmqsock.make_subscriber(self.ctx, self.endpoint, curve_client=self.curve_client)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        next_tick = 0.0
        try:
            while not self._stop.is_set():
                if poller.poll(200):
                    for _ in range(DRAIN_MAX):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.handle(frames)
                now = time.monotonic()
                if now >= next_tick:
                    self.stats.tick(now)
                    next_tick = now + 1.0
        finally:
            sock.close(0)

    def handle(self, frames: list) -> None:
        stats = self.stats
        try:
            # counts rows (a few per second) are checked by decode; event batches below, cheaply
            msg = protocol.decode(frames, strict=frames[0] == protocol.TOPIC_COUNTS.encode())
        except protocol.ProtocolError as exc:
            stats.add_malformed(str(exc))
            return
        topic, payload = msg
        try:
            if topic.startswith(protocol.EVENT_PREFIX):
                syscall = topic[len(protocol.EVENT_PREFIX):]
                events = payload["events"]
                if syscall not in stats.calls or not _valid_events(events, syscall):
                    stats.add_malformed(f"{topic} batch with an event that is not a v1 EVENT of that syscall")
                    return
                stats.add_events(syscall, events)
                self.hub.publish(events)
            elif topic == protocol.TOPIC_STATUS:
                stats.set_status(payload)
            elif topic == protocol.TOPIC_COUNTS:
                rows = payload["rows"]
                for r in rows:
                    if r["syscall"] not in stats.calls:
                        raise protocol.ProtocolError(f"counts row with unknown syscall {r['syscall']!r:.40}")
                stats.add_counts(rows)
        except (protocol.ProtocolError, KeyError, TypeError, ValueError) as exc:
            stats.add_malformed(f"{topic}: {exc}")
