#!/usr/bin/env python3
"""syswatch-nats-bridge: one collector's stream, published unchanged to NATS JetStream.

    syswatch-nats-bridge --nats nats://nats.example:4222 -e tcp://127.0.0.1:5556

Unprivileged. Subscribes to one collector (ZeroMQ, like syswatch-tail), checks every message with the
wire protocol's validator and publishes its payload, byte for byte, to ``syswatch.<host>.<topic>``
(shared/jetstream.py) with a message id, so a retry after a lost acknowledgement is stored once.
Creates the stream, or updates its limits, at every connection. Two threads: the main one receives from
the collector into a bounded queue; the publisher keeps a window of publishes waiting for JetStream's
acknowledgement, reconnects with back-off while NATS is down, and resends what was not acknowledged.
Everything it could not publish is counted by reason, in events and messages: ``queue_full`` (NATS
down or slow for longer than the queue holds), ``stream_full`` and ``rejected`` (JetStream refused it),
``ack_timeout`` (no acknowledgement after every retry), ``too_large`` (over the server's max_payload even
after splitting). The counts go to NATS every second (``syswatch.<host>.bridge``, the API shows them per
host), to the log, and to ``--metrics``.
"""
from __future__ import annotations

import argparse
import collections
import logging
import queue
import re
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syswatch.shared.deps import require  # noqa: E402  (stdlib only)

require("syswatch-nats-bridge", "zmq")       # a missing package: one line, exit 2

from syswatch import __version__  # noqa: E402
from syswatch.shared import jetstream, natsclient, protocol  # noqa: E402
from syswatch.shared.config import add_option  # noqa: E402
from syswatch.shared.metricsserver import listen_text  # noqa: E402
from syswatch.shared.zmqsock import check_endpoint  # noqa: E402

log = logging.getLogger("syswatch.nats-bridge")

WINDOW = 256               # publishes awaiting acknowledgement
ACK_TIMEOUT_S = 5.0
ACK_ATTEMPTS = 3           # sends of one message before it counts as ack_timeout
STATUS_EVERY_S = 1.0
LOG_EVERY_S = 10.0
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
REASONS = protocol.BRIDGE_LOSS_REASONS

EPILOG = """\
examples:
  syswatch-nats-bridge --nats nats://127.0.0.1:4222
        the local collector (tcp://127.0.0.1:5556) into JetStream on this host
  SYSWATCH_NATS_PASSWORD=... syswatch-nats-bridge --nats tls://nats.example:4222 --nats-user node \\
        --nats-ca /etc/syswatch/nats-ca.pem --stream-max-bytes 8GiB --stream-max-age 6h
        TLS, user and password, a bigger stream
  syswatch-nats-bridge --nats nats://nats:4222 --nats-nkey /keys/bridge.nk --metrics 0.0.0.0:9102
        nkey authentication; Prometheus metrics on port 9102

Subjects: syswatch.<host>.<topic> (syswatch.node1.syscall.read, .status, .counts, .bridge);
the host's dots are written "_". Every bridge sets the stream's limits when it connects: give all
bridges the same --stream-* settings. Exit status: 0 on SIGINT/SIGTERM or at the end of -d; 2 for a
usage or set-up error. docs/DEPLOY.md ("NATS JetStream") explains the limits and the counters.
"""

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", re.I)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*", re.I)


def size(text: str) -> int:
    m = _SIZE.fullmatch(text)
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise ValueError(f"{text!r}: a size such as 512MiB, 8GiB or 1000000000")
    value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
    if value < 1 << 20:
        raise ValueError(f"{text!r}: at least 1MiB")
    return value


def age(text: str) -> float:
    m = _AGE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r}: a duration such as 90s, 30m, 6h or 7d")
    value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[(m.group(2) or "").lower()]
    if not 60 <= value <= 365 * 86400:
        raise ValueError(f"{text!r}: between 1 minute and 365 days")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r}: at least 1")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="syswatch-nats-bridge", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Publish one syswatch collector's stream to NATS JetStream "
                                            "(subjects syswatch.<host>.<topic>). Unprivileged.")
    add_option(p, "-e", "--endpoint", env="SYSWATCH_COLLECTOR", default=protocol.DEFAULT_ENDPOINT,
               type=check_endpoint, metavar="ENDPOINT",
               help="the collector's ZeroMQ endpoint (CurveZMQ keys from SYSWATCH_CURVE_SERVER_KEY/"
                    "SYSWATCH_CURVE_CLIENT_KEY)")
    jetstream.add_flags(p, required=True)
    add_option(p, "--stream-max-bytes", env="SYSWATCH_NATS_MAX_BYTES", default=1 << 30, type=size,
               metavar="SIZE", help="the stream's size limit (all hosts together)")
    add_option(p, "--stream-max-age", env="SYSWATCH_NATS_MAX_AGE", default=3600.0, type=age, metavar="AGE",
               help="how long the stream keeps a message: an API may be down this long and still catch up")
    add_option(p, "--stream-discard", env="SYSWATCH_NATS_DISCARD", default="new", metavar="{new,old}",
               type=lambda t: t if t in ("new", "old") else (_ for _ in ()).throw(ValueError(f"{t!r}: new or old")),
               help="when the stream is full: new = refuse new messages (counted here as stream_full); "
                    "old = delete the oldest, read or not")
    add_option(p, "--stream-replicas", env="SYSWATCH_NATS_REPLICAS", default=1, type=positive_int, metavar="N",
               help="copies of the stream in a NATS cluster (3 for a 3-node cluster)")
    add_option(p, "--queue-mb", env="SYSWATCH_BRIDGE_QUEUE_MB", default=64, type=positive_int, metavar="MB",
               help="messages held while NATS is down or slow, in MiB; past it new ones are counted as queue_full")
    add_option(p, "--metrics", env="SYSWATCH_BRIDGE_METRICS", default=None, type=listen_text, metavar="HOST:PORT",
               help="serve the bridge's Prometheus metrics on http://HOST:PORT/metrics (e.g. 127.0.0.1:9102)")
    add_option(p, "-d", "--duration", env="SYSWATCH_DURATION", default=0.0, type=float, metavar="SECONDS",
               help="stop after this many seconds; 0 = never")
    add_option(p, "--log-level", env="SYSWATCH_LOG_LEVEL", default="info",
               type=lambda t: t if t in ("debug", "info", "warning", "error") else
               (_ for _ in ()).throw(ValueError(f"{t!r}: debug, info, warning or error")),
               help="log level of stderr messages")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    return p.parse_args(argv)


class Item:
    """One message to publish: its subject, the payload as received, and how many events it carries."""
    __slots__ = ("subject", "data", "events", "msg_id", "attempts", "sent_at")

    def __init__(self, subject: str, data: bytes, events: int, msg_id: str):
        self.subject, self.data, self.events, self.msg_id = subject, data, events, msg_id
        self.attempts = 0
        self.sent_at = 0.0


def carried_events(msg: protocol.Message) -> int:
    """Events a message stands for, as the collector counts them: a batch's events, a counts message's calls."""
    if msg.topic.startswith(protocol.EVENT_PREFIX):
        return len(msg.events)
    if msg.topic == protocol.TOPIC_COUNTS:
        return sum(r["calls"] for r in msg.payload["rows"])
    return 0


def split(item: Item, limit: int) -> list[Item] | None:
    """A message over the server's max_payload as several valid messages of the same topic (its events
    or rows in halves until each fits), or None when it cannot be split (one event or row too big)."""
    topic = item.subject.split(".", 2)[2]
    msg = protocol.decode([topic.encode(), item.data])
    key = "events" if topic.startswith(protocol.EVENT_PREFIX) else "rows" if topic == protocol.TOPIC_COUNTS else None
    if key is None:
        return None
    out: list[Item] = []
    pending = [msg.payload[key]]
    while pending:
        chunk = pending.pop()
        payload = {k: v for k, v in msg.payload.items() if k != "v"}
        payload[key] = chunk
        data = protocol.encode(topic, payload)[1]
        if len(data) <= limit:
            n = len(chunk) if key == "events" else sum(r["calls"] for r in chunk)
            out.append(Item(item.subject, data, n, f"{item.msg_id}.{len(out)}"))
        elif len(chunk) > 1:
            pending += [chunk[len(chunk) // 2:], chunk[:len(chunk) // 2]]
        else:
            return None
    return out


class Counters:
    """Everything the bridge counts; one lock, read as a copy by the status, the log and /metrics."""

    def __init__(self):
        self.lock = threading.Lock()
        self.published_messages = self.published_events = 0
        self.unpublished_messages = dict.fromkeys(REASONS, 0)
        self.unpublished_events = dict.fromkeys(REASONS, 0)
        self.malformed = 0
        self.received_events = 0             # in the collector's messages that reached the bridge
        self.not_received = 0                # what ZeroMQ dropped before the bridge (from the collector's status)
        self._base: tuple[int, int] | None = None
        self._carried = 0
        self._last_published: int | None = None
        self.reconnects = 0
        self.split_messages = 0
        self.connected = False
        self.host = ""
        self.started = time.monotonic()

    def collector_status(self, st: dict) -> None:
        """The collector's ``status``: what it published since the first one, minus what arrived here, is
        what the ZeroMQ hop dropped (a subscriber that falls behind loses messages at the collector's
        high-water mark, unseen). Exact at each status: it follows, on the same connection, the
        batches it counts. Events mode only (a counts message stands for many calls)."""
        published = st["events_total"] - st["dropped_total"]
        with self.lock:
            restarted = self._last_published is not None and published < self._last_published
            if self._base is None or restarted:
                self._carried = self.not_received
                self._base = (published, self.received_events)
            elif st["mode"] == "events":
                gap = (published - self._base[0]) - (self.received_events - self._base[1])
                self.not_received = self._carried + max(0, gap)
            self._last_published = published

    def lost(self, reason: str, events: int, messages: int = 1) -> None:
        with self.lock:
            self.unpublished_events[reason] += events
            self.unpublished_messages[reason] += messages

    def status(self, queued: tuple[int, int]) -> dict:
        with self.lock:
            return {"host": self.host, "ts_ns": time.time_ns(), "uptime_s": round(time.monotonic() - self.started, 3),
                    "nats_connected": self.connected,
                    "published_messages": self.published_messages, "published_events": self.published_events,
                    "unpublished_messages": sum(self.unpublished_messages.values()),
                    "unpublished_events": sum(self.unpublished_events.values()),
                    "unpublished_by_reason": dict(self.unpublished_events),
                    "queued_messages": queued[0], "queued_bytes": queued[1],
                    "reconnects": self.reconnects, "malformed_total": self.malformed,
                    "received_events": self.received_events, "events_not_received": self.not_received}


class Queue:
    """The bounded FIFO between the receiving and the publishing thread (bound: bytes of payload)."""

    def __init__(self, max_bytes: int, counters: Counters):
        self.max_bytes = max_bytes
        self.counters = counters
        self.items: collections.deque[Item] = collections.deque()
        self.bytes = 0
        self.cond = threading.Condition()

    def put(self, item: Item) -> None:
        with self.cond:
            if self.bytes + len(item.data) > self.max_bytes:
                self.counters.lost("queue_full", item.events)
                return
            self.items.append(item)
            self.bytes += len(item.data)
            self.cond.notify()

    def put_back(self, items: list[Item]) -> None:
        """Messages sent but not acknowledged go back to the front, in order (retries may exceed the bound)."""
        with self.cond:
            for item in reversed(items):
                self.items.appendleft(item)
                self.bytes += len(item.data)

    def take(self, n: int, timeout: float) -> list[Item]:
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            out: list[Item] = []
            while self.items and len(out) < n:
                item = self.items.popleft()
                self.bytes -= len(item.data)
                out.append(item)
            return out

    def size(self) -> tuple[int, int]:
        with self.cond:
            return len(self.items), self.bytes


class Publisher(threading.Thread):
    """Owns the NATS connection: connect (with back-off), ensure the stream, publish with acks."""

    def __init__(self, options: natsclient.Options, stream: str, limits: jetstream.StreamLimits,
                 q: Queue, counters: Counters):
        super().__init__(name="nats-publisher", daemon=True)
        self.options, self.stream, self.limits = options, stream, limits
        self.queue, self.counters = q, counters
        self.stop_requested = threading.Event()
        self.conn: natsclient.Connection | None = None
        self.inflight: dict[str, Item] = {}
        self.acks: queue.SimpleQueue = queue.SimpleQueue()
        self.prefix = secrets.token_hex(6)      # message ids: <prefix>-<n>, unique per bridge process
        self.next_status = 0.0
        self.failures = 0
        self.last_error = ""

    def run(self) -> None:
        while not self.stop_requested.is_set() or (self.conn and not self.conn.closed
                                                     and (self.inflight or self.queue.size()[0])):
            if self.conn is None or self.conn.closed:
                if not self._connect():
                    continue
            try:
                self._step()
            except natsclient.NatsError as exc:
                self._lost(str(exc))
        if self.conn:
            self.conn.close()

    def drain_deadline(self, seconds: float) -> None:
        """Stop: keep publishing what is queued for at most ``seconds``, then give up."""
        self.stop_requested.set()
        self.join(seconds)
        if self.is_alive() and self.conn:
            self.conn.close()

    def _connect(self) -> bool:
        try:
            conn = natsclient.Connection(self.options).connect()
        except natsclient.ConnectError as exc:
            return self._backoff(str(exc))
        try:
            action = jetstream.ensure_stream(conn, self.stream, self.limits)
        except natsclient.NatsError as exc:
            conn.close()
            return self._backoff(f"stream {self.stream}: {exc}")
        was = self.conn
        self.conn = conn
        with self.counters.lock:
            self.counters.connected = True
            if was is not None:
                self.counters.reconnects += 1
        log.info("connected to NATS %s (server %s, max_payload %d); stream %s %s (max_bytes %d, max_age %gs, "
                 "discard %s, replicas %d)", conn.server, conn.info.get("version", "?"), conn.max_payload, self.stream,
                 action, self.limits.max_bytes, self.limits.max_age_s, self.limits.discard, self.limits.replicas)
        self.failures = 0
        return True

    def _backoff(self, why: str) -> bool:
        if why != self.last_error or self.failures == 0:
            log.warning("NATS unavailable: %s; retrying (messages wait in the queue, up to --queue-mb)", why)
            self.last_error = why
        self.stop_requested.wait(BACKOFF_S[min(self.failures, len(BACKOFF_S) - 1)])
        self.failures += 1
        if self.stop_requested.is_set():
            # stopping while NATS is down: what is still queued is lost, and counted
            items = self.queue.take(1 << 30, 0)
            items += list(self.inflight.values())
            self.inflight.clear()
            for item in items:
                self.counters.lost("queue_full", item.events)
        return False

    def _lost(self, why: str) -> None:
        """The connection broke: unacknowledged messages go back to the queue, to be sent again (same ids)."""
        with self.counters.lock:
            self.counters.connected = False
        log.warning("lost the NATS connection: %s; %d unacknowledged message(s) will be sent again", why,
                    len(self.inflight))
        if self.conn:
            self.conn.close()
        self.queue.put_back(sorted(self.inflight.values(), key=lambda i: i.sent_at))
        self.inflight.clear()

    def _step(self) -> None:
        conn = self.conn
        assert conn is not None                     # run() connects first
        now = time.monotonic()
        if now >= self.next_status and self.counters.host:
            st = self.counters.status(self.queue.size())
            conn.publish(jetstream.subject(st["host"], protocol.TOPIC_BRIDGE),
                         protocol.encode(protocol.TOPIC_BRIDGE, st)[1])
            self.next_status = now + STATUS_EVERY_S
        room = WINDOW - len(self.inflight)
        items = self.queue.take(room, 0.05) if room > 0 else []
        for item in items:
            self._send(item)
        if not items and room <= 0:
            time.sleep(0.005)
        while True:
            try:
                inbox, msg = self.acks.get_nowait()
            except queue.Empty:
                break
            self._acked(inbox, msg)
        for inbox, item in list(self.inflight.items()):
            if now - item.sent_at > ACK_TIMEOUT_S:
                del self.inflight[inbox]
                conn.forget(inbox)
                if item.attempts >= ACK_ATTEMPTS:
                    self.counters.lost("ack_timeout", item.events)
                else:
                    self.queue.put_back([item])
        if conn.closed:
            self._lost(conn.error or "closed")

    def _send(self, item: Item) -> None:
        conn = self.conn
        assert conn is not None
        if len(item.data) > conn.max_payload:
            parts = split(item, conn.max_payload - 1024)
            if parts is None:
                self.counters.lost("too_large", item.events)
                return
            with self.counters.lock:
                self.counters.split_messages += 1
            for part in parts:
                self._send(part)
            return
        inbox = conn.new_inbox()
        def acked(msg: natsclient.Msg, inbox: str = inbox) -> None:
            self.acks.put((inbox, msg))
        conn.expect(inbox, acked)
        item.attempts += 1
        item.sent_at = time.monotonic()
        self.inflight[inbox] = item
        try:
            conn.publish(item.subject, item.data, inbox, {jetstream.MSG_ID_HEADER: item.msg_id})
        except natsclient.Backpressure:
            del self.inflight[inbox]
            self.queue.put_back([item])

    def _acked(self, inbox: str, msg: natsclient.Msg) -> None:
        item = self.inflight.pop(inbox, None)
        if item is None:
            return                        # acknowledged after we gave up on it: already resent or counted
        seq, _duplicate, error = jetstream.pub_ack(msg)
        if seq is not None:
            with self.counters.lock:
                self.counters.published_messages += 1
                self.counters.published_events += item.events
            return
        low = error.lower()
        if "maximum" in low and ("bytes" in low or "messages" in low):
            self.counters.lost("stream_full", item.events)
        elif "no stream" in low:
            # the stream was deleted under us: make it again on a new connection, and resend
            self.queue.put_back([item])
            self._lost(f"JetStream: {error}")
        else:
            self.counters.lost("rejected", item.events)
            log.warning("JetStream refused a message on %s: %s", item.subject, error)


def metrics_registry(counters: Counters, q: Queue):
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class BridgeCollector:
        def collect(self):
            st = counters.status(q.size())
            with counters.lock:
                msgs, events = dict(counters.unpublished_messages), dict(counters.unpublished_events)
                split_messages = counters.split_messages
            labels = ["host"]
            host = [st["host"]]
            for name, value, text in (
                    ("published_messages", st["published_messages"], "Messages JetStream acknowledged."),
                    ("published_events", st["published_events"], "Events in the messages JetStream acknowledged."),
                    ("malformed_messages", st["malformed_total"],
                     "Collector messages that failed the v2 validator (not published)."),
                    ("reconnects", st["reconnects"], "Connections to NATS made again after one was lost."),
                    ("received_events", st["received_events"],
                     "Events in the collector's messages that reached the bridge."),
                    ("split_messages", split_messages, "Messages over the server's max_payload sent as several.")):
                m = CounterMetricFamily(f"syswatch_bridge_{name}", text, labels=labels)
                m.add_metric(host, value)
                yield m
            for name, table, text in (("unpublished_events", events, "Events not published, by reason."),
                                      ("unpublished_messages", msgs, "Messages not published, by reason.")):
                m = CounterMetricFamily(f"syswatch_bridge_{name}", text, labels=["host", "reason"])
                for reason in REASONS:
                    m.add_metric([st["host"], reason], table[reason])
                yield m
            for name, value, text in (("events_not_received", st["events_not_received"],
                                       "Events the collector published that never reached the bridge (ZeroMQ dropped "
                                       "them: the bridge fell behind), from the collector's status."),
                                      ("queued_messages", st["queued_messages"], "Messages waiting to be published."),
                                      ("queued_bytes", st["queued_bytes"], "Bytes waiting to be published."),
                                      ("nats_connected", int(st["nats_connected"]), "1 while connected to NATS.")):
                g = GaugeMetricFamily(f"syswatch_bridge_{name}", text, labels=labels)
                g.add_metric(host, value)
                yield g

    registry = CollectorRegistry()
    registry.register(BridgeCollector())
    ProcessCollector(registry=registry)
    return registry


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s syswatch-nats-bridge %(levelname)s %(message)s")
    if args.nats is None:
        print("error: no NATS server: give --nats nats://HOST:4222 (or SYSWATCH_NATS)", file=sys.stderr)
        return 2
    try:
        opts = jetstream.options(args, name="syswatch-nats-bridge")
    except jetstream.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    limits = jetstream.StreamLimits(max_bytes=args.stream_max_bytes, max_age_s=args.stream_max_age,
                                    discard=args.stream_discard, replicas=args.stream_replicas)
    counters = Counters()
    q = Queue(args.queue_mb << 20, counters)
    metrics = None
    if args.metrics:
        require("syswatch-nats-bridge --metrics", "prometheus_client")
        try:
            from syswatch.shared.metricsserver import MetricsServer
            metrics = MetricsServer(args.metrics, metrics_registry(counters, q))
        except OSError as exc:
            print(f"error: cannot serve --metrics on {args.metrics}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    from syswatch.subscribers.common import Subscription
    sub = Subscription([args.endpoint], [""])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    publisher = Publisher(opts, args.nats_stream, limits, q, counters)
    publisher.start()
    log.info("bridging collector %s to NATS %s, stream %s%s", args.endpoint, opts.display(), args.nats_stream,
             f"; metrics on http://{metrics.address}/metrics" if metrics else "")
    end = time.monotonic() + args.duration if args.duration > 0 else None
    msg_seq = 0
    next_log = time.monotonic() + LOG_EVERY_S
    last_logged = None
    try:
        for item in sub.received(end, tick=0.2):
            if stop.is_set():
                break
            now = time.monotonic()
            if now >= next_log:
                st = counters.status(q.size())
                key = (st["unpublished_events"], st["malformed_total"], st["events_not_received"])
                log.log(logging.WARNING if key != last_logged else logging.INFO,
                        "published %d events in %d messages; not published: %d events (%s); queued %d; malformed %d; "
                        "not received from the collector: %d events", st["published_events"], st["published_messages"],
                        st["unpublished_events"],
                        ", ".join(f"{r} {n}" for r, n in st["unpublished_by_reason"].items() if n) or "none",
                        st["queued_messages"], st["malformed_total"], st["events_not_received"])
                last_logged, next_log = key, now + LOG_EVERY_S
            if item is None:
                continue
            frames, msg = item
            host = msg.payload.get("host")
            if not isinstance(host, str):
                continue                  # a topic of a newer protocol without a host: nothing to route by
            counters.host = host
            msg_seq += 1
            events = carried_events(msg)
            if events:
                with counters.lock:
                    counters.received_events += events
            elif msg.topic == protocol.TOPIC_STATUS:
                counters.collector_status(msg.payload)
            q.put(Item(jetstream.subject(host, msg.topic), bytes(frames[1]), events, f"{publisher.prefix}-{msg_seq}"))
            counters.malformed = sub.malformed
    except KeyboardInterrupt:
        pass
    finally:
        counters.malformed = sub.malformed
        sub.close()
        publisher.drain_deadline(3.0)
        st = counters.status(q.size())
        log.info("stopped: published %d events in %d messages; not published: %d events", st["published_events"],
                 st["published_messages"], st["unpublished_events"])
        if metrics:
            metrics.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
