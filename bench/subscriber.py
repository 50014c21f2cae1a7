"""A measuring subscriber: a thread that counts the events of one workload process.

It receives everything the collector publishes (like any subscriber would) but only
decodes a batch when the raw payload mentions the watched pid, so its own cost stays
small next to the collector's. For each matching event it records the arrival time
(``time.time_ns()`` when its message was received), which the latency benchmark pairs
with the writer's send times.

The collector's ``status`` (its events/lost/dropped counters, sent every second) arrives on a
second SUB socket of its own, so a backlog of events in front of it (or a PUB high-water-mark
drop for a subscriber that falls behind) cannot delay or lose it. A run's counters come from
two statuses: one received before the run (``wait_ready`` makes sure there is one: a SUB that
joins late misses the status sent when the collector started, ZeroMQ's slow joiner) and one
sent after it (``settled_status``). When either is missing, NoStatus says so.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

import zmq

from harness.workloads import BASE_COUNT
from syswatch.shared import protocol
from syswatch.shared.zmqsock import make_subscriber

Matcher = Callable[[dict], bool]

# The collector sends a status every second; this much margin covers a loaded 2-vCPU machine.
STATUS_TIMEOUT_S = 10.0


class NoStatus(RuntimeError):
    """No status message from the collector in time: the run's lost/dropped counts are unknown."""


class BenchSubscriber(threading.Thread):
    def __init__(self, endpoint: str):
        super().__init__(daemon=True, name="bench-subscriber")
        self.endpoint = endpoint
        self._stop_flag = threading.Event()
        self._pid = -1
        self._needle = (b"",)
        self._match: Matcher | None = None
        self._row_match: Matcher = lambda row: True
        self.matched = 0              # events of the watched pid accepted by the matcher
        self.counted_calls = 0        # counts mode: calls of the watched pid, summed over intervals
        self.arrivals: dict[int, int] = {}  # writer seq -> arrival time_ns (when record_arrivals)
        self.record_arrivals = False
        self.last_arrival = 0.0
        self.events_received = 0
        self.malformed = 0
        self.status: dict | None = None
        self.status_seen = threading.Event()
        self.error: BaseException | None = None

    # -- control (main thread) ---------------------------------------------------------------
    def watch(self, pid: int, match: Matcher, row_match: Matcher | None = None) -> None:
        """Count events of ``pid`` accepted by ``match`` (and, in counts mode, the calls of
        its rows accepted by ``row_match``) from now on; resets the counters."""
        self._row_match = row_match or (lambda row: True)
        self.matched = 0
        self.counted_calls = 0
        self.arrivals = {}
        self._match = match
        self._needle = (b'"pid":%d' % pid, b'"pid": %d' % pid)
        self._pid = pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until events (or counts) of this process arrive and a status has been received:
        the tracer is attached, the pipeline delivers, and a run started now has a status to
        count from. The main thread makes writes meanwhile, so there is something to see."""
        self.watch(os.getpid(), lambda ev: True)
        deadline = time.monotonic() + timeout
        fd = os.open("/dev/null", os.O_WRONLY)
        try:
            while not ((self.matched or self.counted_calls) and self.status_seen.is_set()):
                if time.monotonic() > deadline:
                    missing = "status message" if self.matched or self.counted_calls else \
                        "events of the benchmark's own pid"
                    raise TimeoutError(f"no {missing} reached a subscriber of {self.endpoint} within {timeout:.0f}s")
                if self.error:
                    raise RuntimeError(f"subscriber failed: {self.error!r}")
                os.write(fd, b"ready?")
                time.sleep(0.05)
        finally:
            os.close(fd)
        self._pid = -1

    def wait_drained(self, expect: int, quiet: float = 2.0, timeout: float = 120.0) -> None:
        """Wait until ``expect`` matching events arrived, or none arrived for ``quiet`` seconds
        (what is missing then is lost, or the pipeline is hopelessly behind)."""
        deadline = time.monotonic() + timeout
        start = time.monotonic()
        while time.monotonic() < deadline:
            if (self.matched or self.counted_calls) >= expect:
                return
            if time.monotonic() - max(self.last_arrival, start) >= quiet:
                return
            time.sleep(0.02)

    def fresh_status(self, after_ns: int, timeout: float | None = None) -> dict | None:
        """The first status message with ts_ns after ``after_ns`` (None if none came within
        ``timeout``, default STATUS_TIMEOUT_S)."""
        deadline = time.monotonic() + (STATUS_TIMEOUT_S if timeout is None else timeout)
        while time.monotonic() < deadline:
            st = self.status
            if st is not None and st.get("ts_ns", 0) > after_ns:
                return st
            if self.error:
                raise RuntimeError(f"subscriber failed: {self.error!r}")
            time.sleep(0.05)
        return None

    def settled_status(self, st0: dict | None, made: int, timeout: float = 10.0) -> dict:
        """The status after a run, once the counters account for it; NoStatus when ``st0`` (the
        status before the run) is missing or no status sent after the run arrived.

        bpftrace reports its losses when it reads the lost records out of its perf ring, which
        can be seconds after the events were dropped. So: the first status at which matched +
        lost + dropped (since ``st0``) reaches ``made``, or at which lost_total stopped moving
        for 1.5 seconds, or the last one after ``timeout``."""
        if st0 is None:
            raise NoStatus(f"no status message from the collector at {self.endpoint} before the run: "
                           "its lost/dropped counts are unknown")
        st = self.fresh_status(time.time_ns())
        if st is None:
            raise NoStatus(f"no status message from the collector at {self.endpoint} within "
                           f"{STATUS_TIMEOUT_S:.0f} s after the run: its lost/dropped counts are unknown")
        deadline = time.monotonic() + timeout
        steady_since = None
        while time.monotonic() < deadline:
            counted = (self.matched or self.counted_calls) + (st["lost_total"] - st0["lost_total"]) \
                + (st["dropped_total"] - st0["dropped_total"])
            if counted >= made:
                return st
            nxt = self.fresh_status(st["ts_ns"])
            if nxt is None:
                return st
            if nxt["lost_total"] == st["lost_total"]:
                steady_since = steady_since or time.monotonic()
                if time.monotonic() - steady_since >= 1.5:
                    return nxt
            else:
                steady_since = None
            st = nxt
        return st

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(5)

    # -- the thread ------------------------------------------------------------------------------
    def run(self) -> None:
        ctx = zmq.Context.instance()
        # announce=False: the bench checks that the stream is live with events of its own PID, so its
        # own I/O must stay in the stream (as it was before subscribers were left out)
        events = make_subscriber(ctx, self.endpoint, (protocol.EVENT_PREFIX, protocol.TOPIC_COUNTS), announce=False)
        status = make_subscriber(ctx, self.endpoint, (protocol.TOPIC_STATUS,), announce=False)
        poller = zmq.Poller()
        poller.register(events, zmq.POLLIN)
        poller.register(status, zmq.POLLIN)
        try:
            while not self._stop_flag.is_set():
                for sock, _ in poller.poll(100):
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(frames)
        except BaseException as exc:  # reported to the main thread, which fails the benchmark
            self.error = exc
        finally:
            events.close(0)
            status.close(0)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) == 2 and frames[0].startswith(b"syscall."):
            # every event received, cheaply (no parsing): compared with the collector's
            # events_total it shows what ZeroMQ dropped for this subscriber (PUB HWM)
            self.events_received += frames[1].count(b'"ts_ns"')
        if len(frames) == 2 and frames[0].startswith(b"syscall.") and self._pid >= 0:
            if not any(n in frames[1] for n in self._needle):
                return
        elif len(frames) == 2 and frames[0].startswith(b"syscall."):
            return
        arrival = time.time_ns()
        try:
            msg = protocol.decode(frames)
        except protocol.ProtocolError:
            self.malformed += 1
            return
        if msg.topic == protocol.TOPIC_STATUS:
            self.status = msg.payload
            self.status_seen.set()
            return
        pid, match = self._pid, self._match
        if msg.topic == protocol.TOPIC_COUNTS:
            row_match = self._row_match
            calls = sum(r["calls"] for r in msg.payload["rows"] if r.get("pid") == pid and row_match(r))
            if calls:
                self.counted_calls += calls
                self.last_arrival = time.monotonic()
            return
        hits = 0
        for ev in msg.events:
            if ev.get("pid") == pid and match(ev):
                hits += 1
                if self.record_arrivals:
                    self.arrivals[ev["count"] - BASE_COUNT] = arrival
        if hits:
            self.matched += hits
            self.last_arrival = time.monotonic()
