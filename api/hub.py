"""The /events/stream fan-out: one bounded queue per client, and a replay ring for Last-Event-ID.

The ingest thread publishes each decoded batch once (``StreamHub.publish``); every open client
gets the events its filter matches, or a count of the ones that did not fit its queue
(``sse_dropped_events``). HTTP worker threads take from their own client's queue (api/sse.py).

Slots are bounded twice (issue 29): ``max_clients`` in all (503 when taken) and ``per_address`` for
one client address (429), so one host cannot take every slot; api/sse.py closes a stream whose
client stops taking data (``stalled``). Refusals and closures are counted in the stats' COUNTERS.
"""
from __future__ import annotations

import collections
import secrets
import threading

from syswatch.api.aggregates import StreamStats
from syswatch.shared.selection import Selection


class TooManyStreams(Exception):
    """Every stream slot is taken (503)."""
    status = 503


class TooManyFromAddress(TooManyStreams):
    """The client's address holds its share of the slots (429)."""
    status = 429


class ShuttingDown(TooManyStreams):
    """The API is stopping: no new event stream is opened (answered 503 like a full hub)."""


class StreamClient:
    """One /events/stream client: a bounded queue of events; what does not fit is dropped and counted.

    The queue holds ``(ids, events)`` chunks: ``ids[i]`` is the hub's sequence number of ``events[i]``
    (a ``range`` when nothing was filtered out), so the SSE body can send ``id:`` lines.
    """

    def __init__(self, flt: Selection, max_queued: int, address: str = ""):
        self.filter = flt
        self.address = address
        self.max_queued = max_queued
        self.cond = threading.Condition()
        self.batches: collections.deque = collections.deque()
        self.queued = 0
        self.dropped = 0
        self.ended = False  # set when the server shuts down: the stream ends at once
        self.notice: str | None = None  # what the resume from Last-Event-ID did, sent as an SSE comment

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

    def trim(self, keep: int) -> int:
        """Keep at most about ``keep`` of the newest queued events (whole chunks); returns how many were
        dropped: a client that is not reading needs no more than it can be sent when it reads again."""
        dropped = 0
        with self.cond:
            while self.queued > keep and len(self.batches) > 1:
                ids, events = self.batches.popleft()
                self.queued -= len(events)
                dropped += len(events)
            self.dropped += dropped
        return dropped

    def take(self, timeout: float, most: int | None = None) -> tuple[list, int]:
        """([(ids, events), ...], dropped since the last take), waiting up to ``timeout`` s for events;
        at most about ``most`` events (whole chunks, and at least one), the rest stays queued."""
        with self.cond:
            if not self.batches and not self.ended:
                self.cond.wait(timeout)
            out: list = []
            taken = 0
            batches = self.batches
            while batches and (most is None or taken < most or not out):
                chunk = batches.popleft()
                out.append(chunk)
                taken += len(chunk[1])
            self.queued -= taken
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

    def __init__(self, stats: StreamStats, max_clients: int, max_queued: int, replay_capacity: int = 10_000,
                 per_address: int | None = None):
        self.stats = stats
        self.max_clients = max_clients
        self.per_address = per_address or max_clients
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

    def open(self, flt: Selection, last_event_id: str | None = None, address: str = "") -> StreamClient:
        client = StreamClient(flt, self.max_queued, address)
        with self._lock:
            if self._ended:
                raise ShuttingDown("the API is shutting down; retry in a moment")
            if len(self._clients) >= self.max_clients:
                self.stats.count("sse_streams_refused")
                raise TooManyStreams(f"{len(self._clients)} event streams are open, the maximum "
                                     f"(server option --max-streams); retry later")
            mine = sum(1 for c in self._clients if c.address == address)
            if mine >= self.per_address:
                self.stats.count("sse_streams_refused")
                raise TooManyFromAddress(f"{mine} event streams are open from your address, the most one "
                                         f"address may hold (server option --max-streams-per-address); "
                                         f"close one or retry later")
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

    def stalled(self, client: StreamClient) -> None:
        """``client`` took no data for the stall timeout: its stream is being closed (api/sse.py)."""
        self.stats.count("sse_streams_stalled")
        self.close(client)

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
