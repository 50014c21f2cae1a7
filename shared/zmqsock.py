"""ZeroMQ sockets set up the same way by every peer (high-water marks chosen on purpose).

PUB side (collector): a bounded send queue per subscriber; when a subscriber cannot keep
up ZeroMQ drops for that subscriber only, and the collector counts what its own
non-blocking send could not queue. SUB side (API, scripts): a bounded receive queue and a
maximum message size, so a hostile or runaway publisher cannot exhaust memory.
"""
from __future__ import annotations

from typing import Iterable

import zmq

# Messages (not events): a batch holds up to a few hundred events.
PUB_SNDHWM = 10_000
SUB_RCVHWM = 10_000
SUB_MAXMSGSIZE = 64 * 1024 * 1024


def make_publisher(ctx: zmq.Context, endpoint: str, *, sndhwm: int = PUB_SNDHWM,
                   curve_server=None) -> zmq.Socket:
    """A bound PUB socket; ``curve_server`` (shared.curve.ServerKeys) turns on CurveZMQ.

    With Curve, a ZAP authenticator must already run on ``ctx`` (shared.curve.start_authenticator).
    """
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_server is not None:
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve_server.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve_server.public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.bind(endpoint)
    return sock


def make_subscriber(ctx: zmq.Context, endpoint: str, topics: Iterable[str] = ("",), *,
                    rcvhwm: int = SUB_RCVHWM, maxmsgsize: int = SUB_MAXMSGSIZE,
                    curve_client=None) -> zmq.Socket:
    """A SUB socket connected to ``endpoint`` (ZeroMQ reconnects by itself if the publisher goes away).

    ``curve_client`` (shared.curve.ClientKeys, e.g. ``shared.curve.client_from_env()``) turns on
    CurveZMQ; a collector that does not know this key lets nothing through.
    """
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
    sock.connect(endpoint)
    return sock
