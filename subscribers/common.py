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
from syswatch.shared.protocol import DEFAULT_ENDPOINT, Message, ProtocolError, decode
from syswatch.shared.zmqsock import EndpointError, check_endpoint, make_subscriber


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """--endpoint (repeatable: one view over several collectors), -p/-n/-c filters, -d, -V."""
    add_option(p, "-e", "--endpoint", env="SYSWATCH_COLLECTOR", default=[DEFAULT_ENDPOINT], repeatable=True,
               type=check_endpoint, metavar="ENDPOINT", dest="endpoint",
               help="a collector's ZeroMQ endpoint; repeat for several collectors (CurveZMQ keys from "
                    "SYSWATCH_CURVE_SERVER_KEY/SYSWATCH_CURVE_CLIENT_KEY)")
    add_option(p, "-p", "--pid", env="SYSWATCH_PID", default=[], type=int, repeatable=True, dest="pid",
               metavar="PID", help="only this PID; repeatable")
    add_option(p, "-n", "--comm", env="SYSWATCH_COMM", default=[], repeatable=True, dest="comm", metavar="NAME",
               help="only this process name; repeatable")
    add_option(p, "-c", "--container", env="SYSWATCH_CONTAINER", default=[], repeatable=True, dest="container",
               metavar="ID|NAME", help="only this container (id prefix or name as the collector reports it); "
                                       "repeatable")
    add_option(p, "--path", env="SYSWATCH_PATH", default=[], repeatable=True, dest="path", metavar="PREFIX",
               help="only events (and counts file rows) whose file path starts with PREFIX; repeatable")
    add_option(p, "-d", "--duration", env="SYSWATCH_DURATION", default=0.0, type=float, metavar="SECONDS",
               dest="duration", help="stop after this many seconds; 0 = never")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")


def wanted(item: dict, args: argparse.Namespace) -> bool:
    """Whether an event or counts row passes the -p/-n/-c/--path filters (--path: an event without a
    path fails, a counts row of a process, which has none, passes)."""
    if args.path and ("path" in item or "ts_ns" in item) \
            and not any(item.get("path", "").startswith(p) for p in args.path):
        return False
    if args.pid and item.get("pid") not in args.pid:
        return False
    if args.comm and item.get("comm") not in args.comm:
        return False
    if args.container:
        cid, name = item.get("container_id", ""), item.get("container_name", "")
        return any(cid and (cid.startswith(c) or c.startswith(cid)) or (name and name == c)
                   for c in args.container)
    return True


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
                    yield decode(frames)
                except ProtocolError as exc:
                    self.malformed += 1
                    print(f"warning: skipped a malformed message: {exc}", file=sys.stderr)

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
        self.socks = []
        if not self.ctx.closed:
            self.ctx.term()
