"""The ZeroMQ side of the API: one thread owns one SUB socket per collector endpoint, decodes every
message through shared.protocol.decode (the stream's one validator: unknown fields dropped, every
number, string and list bounded) and applies it to the aggregates (api/aggregates.py), the
event-stream hub (api/hub.py) and hands it to the history recorder (api/history_recorder.py: one
append to its bounded queue; it aggregates and writes in a thread of its own).
"""
from __future__ import annotations

import threading
import time

import zmq

from syswatch.api.aggregates import StreamStats
from syswatch.api.history_recorder import Recorder
from syswatch.api.hub import StreamHub
from syswatch.shared import protocol, zmqsock

DRAIN_MAX = 1_000               # messages handled per wake-up before the rate/tick bookkeeping
# The SUB sockets' bounds: ZeroMQ queues at most SUB_RCVHWM messages of at most SUB_MAXMSGSIZE
# bytes per collector, so a publisher can make it hold at most 32 x 8 MiB = 256 MiB. The
# collector's batches are ~350 KB (one 256 KiB read of bpftrace output) and its counts messages
# at most 10,000 rows (~2.5 MB).
SUB_RCVHWM = 32
SUB_MAXMSGSIZE = 8 * 1024 * 1024
RESUBSCRIBE_S = 5.0             # a collector silent this long (it sends status every second) gets a new socket


class StreamSubscriber(threading.Thread):
    """Owns one SUB socket per collector endpoint (used from this thread only); decodes into ``stats`` and ``hub``."""

    def __init__(self, endpoints: list[str], stats: StreamStats, hub: StreamHub,
                 ctx: zmq.Context | None = None, curve_client=None, history: Recorder | None = None):
        super().__init__(name="syswatch-subscriber", daemon=True)
        self.endpoints = list(endpoints)
        self.curve_client = curve_client  # shared.curve.ClientKeys, or None: no CurveZMQ
        self.stats = stats
        self.hub = hub
        self.history = history
        self.ctx = ctx or zmq.Context.instance()
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

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
            while not self._stopping.is_set():
                if socks:
                    ready = poller.poll(200)
                else:   # --nats without --collector: this thread only samples events/s (a poll of no
                    self._stopping.wait(0.2)    # socket returns at once: it would spin)
                    ready = []
                for sock, _ in ready:
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
        try:
            message = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            self.stats.add_malformed(str(exc))
            return
        apply(self.stats, self.hub, message, endpoint, self.history)


def apply(stats: StreamStats, hub: StreamHub, message: protocol.Message, source: str | None,
          history: Recorder | None = None) -> None:
    """One decoded message into the aggregates, the hub and the history recorder: the ZeroMQ and the NATS
    ingest (api/nats_ingest.py) both end here. ``source``: the collector's endpoint, or the NATS subject it
    came through: the unit of trust (a host name belongs to the source that sent it first, api/trust.py).
    A refused message (a host another source holds, one host too many, numbers that cannot be true) is
    counted by the aggregates and goes nowhere else."""
    topic, payload = message
    if topic.startswith(protocol.EVENT_PREFIX):
        events = payload["events"]
        if events and stats.add_events(payload["host"], events, source):
            hub.publish(events)
            if history is not None:
                history.offer_events(payload["host"], events)
    elif topic == protocol.TOPIC_STATUS:
        stats.set_status(payload, source)
    elif topic == protocol.TOPIC_COUNTS:
        if stats.add_counts(payload, source) and history is not None:
            history.offer_counts(payload)
    elif topic == protocol.TOPIC_BRIDGE:
        stats.set_bridge(payload, source)
    # else: a topic of a newer protocol minor, not ours
