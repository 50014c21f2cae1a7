"""ZeroMQ sockets set up the same way by every peer (high-water marks chosen on purpose).

PUB side (collector): an XPUB socket in manual mode. A peer's subscriptions are messages the
collector reads and applies itself (collector/subscriptions.py), so a peer cannot make it store
more than the bounded set of valid topic prefixes, and an inbound message (a subscription) over
XPUB_MAXMSGSIZE closes that peer's connection. A bounded send queue per subscriber: when a
subscriber cannot keep up ZeroMQ drops for that subscriber only, and the collector counts what
its own non-blocking send could not queue.
SUB side (API, scripts): a bounded receive queue and a maximum message size, so a hostile or
runaway publisher cannot exhaust memory; every subscriber announces its PID (see
shared.protocol.ANNOUNCE_PREFIX) so the collector leaves the subscriber's own I/O out.
"""
from __future__ import annotations

import os
from typing import Iterable

import zmq

from syswatch.shared.protocol import MAX_PAYLOAD_BYTES, announce_topic

# Messages (not events): one message holds one read of bpftrace output (a few thousand events).
SUB_RCVHWM = 10_000
SUB_MAXMSGSIZE = MAX_PAYLOAD_BYTES
XPUB_MAXMSGSIZE = 4096  # a subscription is a few dozen bytes; CurveZMQ handshake messages take ~300


def pid_namespace() -> int:
    """The inode of this process's PID namespace (0 if it cannot be read)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


class EndpointError(ValueError):
    """An endpoint that is not a usable ZeroMQ address; the text says what is wrong."""


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is a tcp:// (host:port, port 0-65535 or *) or ipc:// address, else EndpointError.

    libzmq itself accepts a port above 65535 and wraps it (99999 would listen on 34463), and
    a malformed address can leave a socket half made: check first.
    """
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    if endpoint.startswith("inproc://") and len(endpoint) > len("inproc://"):
        return endpoint
    if not endpoint.startswith("tcp://"):
        raise EndpointError(f"{endpoint!r} is not a ZeroMQ endpoint: use tcp://HOST:PORT "
                            "(e.g. tcp://127.0.0.1:5556) or ipc:///path")
    host, sep, port = endpoint[len("tcp://"):].rpartition(":")
    if not sep or not host:
        raise EndpointError(f"{endpoint!r} lacks a host or a port: use tcp://HOST:PORT, e.g. tcp://127.0.0.1:5556")
    if port != "*" and not (port.isdigit() and 0 <= int(port) <= 65535):
        raise EndpointError(f"{endpoint!r}: the port must be 0..65535 (or * for any)")
    return endpoint


def make_publisher(ctx: zmq.Context, endpoint: str, *, sndhwm: int, manual: bool = False,
                   curve_server=None) -> zmq.Socket:
    """A bound publisher; ``curve_server`` (shared.curve.ServerKeys) turns on CurveZMQ.

    ``manual=True`` (the collector): an XPUB socket in manual mode, whose owner must read it and
    apply subscriptions (collector/subscriptions.py); a subscriber receives nothing until then.
    Otherwise a plain PUB socket (test and bench publishers). With Curve, a ZAP authenticator
    must already run on ``ctx`` (shared.curve.start_authenticator).
    """
    check_endpoint(endpoint)
    sock = ctx.socket(zmq.XPUB if manual else zmq.PUB)
    if manual:
        sock.setsockopt(zmq.XPUB_MANUAL, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, XPUB_MAXMSGSIZE)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_server is not None:
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve_server.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve_server.public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close(0)                  # an unclosed socket would make ctx.term() wait forever
        raise
    return sock


def make_subscriber(ctx: zmq.Context, endpoint: str, topics: Iterable[str] = ("",), *,
                    rcvhwm: int = SUB_RCVHWM, maxmsgsize: int = SUB_MAXMSGSIZE,
                    curve_client=None, announce: bool = True) -> zmq.Socket:
    """A SUB socket connected to ``endpoint`` (ZeroMQ reconnects by itself if the publisher goes away).

    ``announce`` (default on) asks the collector to leave this process's own I/O out of the
    stream, so a subscriber never receives the events its own receiving caused.

    ``curve_client`` (shared.curve.ClientKeys, e.g. ``shared.curve.client_from_env()``) turns on
    CurveZMQ; a collector that does not know this key lets nothing through.
    """
    check_endpoint(endpoint)
    sock = ctx.socket(zmq.SUB)
    if curve_client is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve_client.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve_client.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve_client.secret)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    for topic in topics:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
    if announce:
        sock.setsockopt(zmq.SUBSCRIBE, announce_topic(os.getpid(), pid_namespace()).encode("ascii"))
    try:
        sock.connect(endpoint)
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock
