"""What both subscriber scripts share: endpoint flags, a Curve-aware SUB socket, a message loop."""
from __future__ import annotations

import argparse
import atexit
import sys
import time
from pathlib import Path
from typing import Iterator

if __package__ in (None, ""):                       # run as a script: python subscribers/tail.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq

from syswatch import __version__
from syswatch.shared import curve
from syswatch.shared.config import add_option
from syswatch.shared.escaping import visible
from syswatch.shared.protocol import DEFAULT_ENDPOINT, Message, ProtocolError, decode
from syswatch.shared.selection import Selection, add_filter_flags
from syswatch.shared.zmqsock import EndpointError, check_endpoint, make_subscriber


def add_common_flags(p: argparse.ArgumentParser, duration_letter: bool = True) -> None:
    """--endpoint (repeatable: one view over several collectors), the event filters, -d/--duration, -V.

    The filters are shared/selection.py's flags, spelled as on the collector; -d DURATION is BCC's.
    syswatch-top takes ``duration_letter=False``: its -d is top's delay."""
    add_option(p, "-e", "--endpoint", env="SYSWATCH_COLLECTOR", default=[DEFAULT_ENDPOINT], repeatable=True,
               type=check_endpoint, metavar="ENDPOINT", dest="endpoint",
               help="a collector's ZeroMQ endpoint; repeat for several collectors (CurveZMQ keys from "
                    "SYSWATCH_CURVE_SERVER_KEY/SYSWATCH_CURVE_CLIENT_KEY)")
    add_filter_flags(p, where={"path": "; needs a collector that sends paths"})
    if duration_letter:
        add_option(p, "-d", "--duration", env="SYSWATCH_DURATION", default=0.0, type=float, metavar="SECONDS",
                   dest="duration", help="stop after this many seconds; 0 = never")
    else:
        add_option(p, "--duration", env="SYSWATCH_DURATION", default=0.0, type=float, metavar="SECONDS",
                   dest="duration", help="stop after this many seconds; 0 = never")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")


def selection(args: argparse.Namespace) -> Selection:
    """The filters given on the command line (shared/selection.py: the API's /events filter too)."""
    return Selection(pids=tuple(args.pid), tids=tuple(args.tid), uids=tuple(args.uid), comms=tuple(args.comm),
                     containers=tuple(args.container), paths=tuple(args.path), failed=args.failed,
                     min_latency_ns=args.min_latency)


class Subscription:
    """A SUB socket on every endpoint for ``topics``; ``messages()`` yields decoded messages."""

    def __init__(self, endpoints: list[str], topics: list[str]):
        try:
            keys = curve.client_from_env()
        except curve.CurveError as exc:
            print(f"error: {exc}", file=sys.stderr)   # set up wrong: a usage error, as for a bad flag
            raise SystemExit(2) from None
        self.ctx = zmq.Context()
        self.socks = []
        self.malformed = 0
        atexit.register(self.close)              # whatever path the program leaves by
        # Closed on any way out, Ctrl-C included: a context left with open sockets makes the
        # interpreter's exit wait for them forever (zmq_ctx_term), and a Ctrl-C can land here as
        # soon as the first socket connects (a CI run once hung exactly so).
        try:
            for endpoint in endpoints:
                try:
                    self.socks.append(make_subscriber(self.ctx, endpoint, topics, curve_client=keys))
                except (zmq.ZMQError, EndpointError) as exc:
                    print(f"error: cannot connect to {endpoint!r}: {exc}", file=sys.stderr)
                    raise SystemExit(2) from None
            self.poller = zmq.Poller()
            for sock in self.socks:
                self.poller.register(sock, zmq.POLLIN)
        except BaseException:
            self.close()
            raise

    def messages(self, deadline: float | None = None, tick: float | None = None) -> Iterator[Message | None]:
        """Decoded messages until ``deadline`` (time.monotonic()); yields None every ``tick`` s idle."""
        for item in self.received(deadline, tick):
            yield None if item is None else item[1]

    def received(self, deadline: float | None = None,
                 tick: float | None = None) -> Iterator[tuple[list[bytes], Message] | None]:
        """Like ``messages``, each with the frames as received (the NATS bridge forwards them unchanged)."""
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            wait = min(x for x in (deadline - now if deadline else None, tick, 1.0) if x is not None)
            ready = dict(self.poller.poll(int(max(wait, 0) * 1000)))
            if not ready:
                if tick is not None:
                    yield None
                continue
            for sock in ready:
                frames = sock.recv_multipart()
                try:
                    yield frames, decode(frames)
                except ProtocolError as exc:
                    self.malformed += 1
                    print(f"warning: skipped a malformed message: {visible(str(exc), 300)}", file=sys.stderr)

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
        self.socks = []
        if not self.ctx.closed:
            self.ctx.term()
