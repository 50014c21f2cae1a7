"""The API's NATS JetStream ingest (``--nats URL``): one thread reads the durable pull consumer and hands
every message, validated, to the same aggregates as the ZeroMQ ingest.

Why a durable pull consumer: JetStream remembers what was acknowledged, so an API that was restarted
or down for minutes gets everything stored since (within the stream's limits, docs/DEPLOY.md); API
replicas that use the same consumer name share its messages (each goes to one of them); a new node's
subjects match ``syswatch.>`` the moment its bridge publishes, so nothing is restarted.

Every message passes shared.protocol.decode, the stream's one validator, plus one NATS check: the host
in the payload must be the one its subject names (a client allowed to publish on one host's subjects
cannot speak for another). A refused message is counted (``malformed_messages``, reason kept), acked so
it is not delivered again, and changes nothing else. Acks follow processing: a message whose API died
before acking it is delivered again (at least once); one redelivered to the process that applied it
(its ack was lost with a connection) is skipped.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

from syswatch.api.aggregates import StreamStats
from syswatch.api.history_recorder import Recorder
from syswatch.api.hub import StreamHub
from syswatch.api.ingest import apply
from syswatch.shared import jetstream, natsclient, protocol

log = logging.getLogger("syswatch.api.nats")

BATCH = 256                 # messages per pull request (one collector batch is ~1,000 events)
EXPIRES_S = 1.0             # a pull request waits at most this long for messages
MAX_MESSAGE_BYTES = 8 * 1024 * 1024   # as the ZeroMQ ingest's SUB_MAXMSGSIZE: more is refused
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
REMEMBERED = 65_536          # stream sequences kept to skip a redelivery of what this process applied


class NatsIngest(threading.Thread):
    """Reads the consumer into ``stats`` and ``hub`` (api/ingest.apply), like the ZeroMQ ingest."""

    def __init__(self, options: natsclient.Options, stream: str, durable: str, stats: StreamStats, hub: StreamHub,
                 history: Recorder | None = None):
        super().__init__(name="syswatch-nats-ingest", daemon=True)
        self.options, self.stream, self.durable = options, stream, durable
        self.stats, self.hub, self.history = stats, hub, history
        self.source = f"{options.display()} ({stream}/{durable})"
        self._stopping = threading.Event()
        self.connected = False
        self.messages = 0            # delivered to this API (valid or not)
        self.redelivered = 0         # of which JetStream had delivered before (an earlier API did not ack)
        self.pending = 0             # messages the consumer still holds for its readers, at the last delivery
        self.reconnects = 0
        self.last_error = ""
        self._applied: set[int] = set()        # stream sequences applied lately (bounded)
        self._applied_order: collections.deque = collections.deque()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            conn = None
            try:
                conn = natsclient.Connection(self.options).connect()
                jetstream.ensure_consumer(conn, self.stream, self.durable)
                puller = jetstream.PullConsumer(conn, self.stream, self.durable)
                if failures or self.reconnects:
                    self.reconnects += 1
                log.info("consuming NATS %s", self.source)
                self.connected, failures, self.last_error = True, 0, ""
                while not self._stopping.is_set():
                    if self.history is not None:     # a backlog waits in JetStream, not in the recorder's queue
                        self.history.wait_room()
                    for msg in puller.fetch(BATCH, EXPIRES_S):
                        self.handle(msg)
                        puller.ack(msg)
            except natsclient.NatsError as exc:
                if str(exc) != self.last_error:
                    log.warning("NATS %s: %s; retrying", self.source, exc)
                self.last_error = str(exc)
                failures += 1
            finally:
                self.connected = False
                if conn is not None:
                    conn.close()
            self._stopping.wait(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)] if failures else 0.2)

    def refuse(self, reason: str) -> None:
        self.stats.add_malformed(reason)

    def handle(self, msg: natsclient.Msg) -> None:
        self.messages += 1
        info = jetstream.ack_info(msg.reply)
        if info is not None:
            self.pending = info.pending
            self.stats.nats_delivery(info.delivered > 1, info.pending)
            if info.delivered > 1:
                self.redelivered += 1
                if info.stream_seq in self._applied:
                    return            # applied here already; the ack was lost with a connection
            self._applied.add(info.stream_seq)
            self._applied_order.append(info.stream_seq)
            if len(self._applied_order) > REMEMBERED:
                self._applied.discard(self._applied_order.popleft())
        where = jetstream.split_subject(msg.subject)
        if where is None:
            self.refuse(f"NATS subject {msg.subject[:80]!r} is not syswatch.<host>.<topic>")
            return
        token, topic = where
        if len(msg.data) > MAX_MESSAGE_BYTES:
            self.refuse(f"NATS message of {len(msg.data)} bytes on {msg.subject[:80]!r}: over {MAX_MESSAGE_BYTES}")
            return
        try:
            message = protocol.decode([topic.encode("ascii", "replace"), msg.data])
        except protocol.ProtocolError as exc:
            self.refuse(str(exc))
            return
        host = message.payload.get("host")
        if not isinstance(host, str) or jetstream.host_token(host) != token:
            self.refuse(f"{topic} payload of host {str(host)[:80]!r} on the subject of host {token[:80]!r}")
            return
        # the unit of trust is the host's subject (NATS permissions say who may publish on it): a host
        # name belongs to the subject that first carried it (api/trust.py), one host per subject
        apply(self.stats, self.hub, message, f"{self.source} syswatch.{token}", self.history)

    def status(self) -> dict:
        return {"source": self.source, "connected": self.connected, "messages": self.messages,
                "redelivered": self.redelivered, "pending": self.pending, "reconnects": self.reconnects,
                "last_error": self.last_error or None, "checked_at": time.time()}
