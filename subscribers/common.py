"""What both subscriber scripts share: endpoint flags, a Curve-aware SUB socket, a message loop."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator

if __package__ in (None, ""):                       # run as a script: python subscribers/tail.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq

from shared import curve
from shared.config import env_default
from shared.protocol import DEFAULT_ENDPOINT, Message, ProtocolError, decode
from shared.zmqsock import make_subscriber


def add_endpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", default=env_default("SYSWATCH_COLLECTOR", DEFAULT_ENDPOINT),
                   help="the collector's ZeroMQ endpoint [env SYSWATCH_COLLECTOR] (default: %(default)s); "
                        "CurveZMQ keys from SYSWATCH_CURVE_SERVER_KEY/SYSWATCH_CURVE_CLIENT_KEY")


class Subscription:
    """A SUB socket on ``endpoint`` for ``topics``; ``messages()`` yields decoded messages."""

    def __init__(self, endpoint: str, topics: list[str]):
        try:
            keys = curve.client_from_env()
        except curve.CurveError as exc:
            raise SystemExit(f"error: {exc}") from None
        self.ctx = zmq.Context()
        try:
            self.sock = make_subscriber(self.ctx, endpoint, topics, curve_client=keys)
        except zmq.ZMQError as exc:
            self.ctx.term()
            raise SystemExit(f"error: cannot connect to {endpoint!r}: {exc}") from None
        self.malformed = 0

    def messages(self, deadline: float | None = None, tick: float | None = None) -> Iterator[Message | None]:
        """Decoded messages until ``deadline`` (time.monotonic()); yields None every ``tick`` s idle."""
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            wait = min(x for x in (deadline - now if deadline else None, tick, 1.0) if x is not None)
            if not self.sock.poll(max(wait, 0) * 1000):
                if tick is not None:
                    yield None
                continue
            frames = self.sock.recv_multipart()
            try:
                yield decode(frames)
            except ProtocolError as exc:
                self.malformed += 1
                print(f"warning: skipped a malformed message: {exc}", file=sys.stderr)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()
