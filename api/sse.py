"""/events/stream body: Server-Sent Events from one StreamClient's bounded queue.

Wire format: one event per ``data:`` line (compact JSON of an EVENT) after its ``id:`` line, a blank
line after each; heartbeats, drop and resume notices are SSE comments (lines starting with ``:``),
which clients ignore:

    : syswatch event stream (filters: syscall=write)
    retry: 2000

    id: 5f0c2a91-1042
    data: {"ts_ns":1764013800123456789,"pid":4242,"tid":4242,"uid":0,"comm":"dd","syscall":"write","fd":1,"count":512}

    : dropped 1200 events: this client reads too slowly

An id is ``<epoch>-<seq>``: ``epoch`` names the API process, ``seq`` counts the events it published.
A client that reconnects with ``Last-Event-ID`` (browsers' EventSource does it by itself) first gets
the events it missed that are still in the hub's replay buffer, then live ones; a comment says what
was replayed, or why nothing could be.

A client that goes away is noticed within ``POLL_S`` (plus the server's poll), without waiting for
a heartbeat to fail: waitress keeps reading the connection while the stream runs
(``channel_request_lookahead``) and reports the close through ``waitress.client_disconnected``.
"""
from __future__ import annotations

import json
import time
from typing import Callable

from syswatch.api.hub import StreamClient, StreamHub

POLL_S = 0.25  # how often an idle stream checks that its client is still there


class EventStream:
    """A WSGI body iterable; ``close()`` (called by the server even if iteration never started) unregisters."""

    def __init__(self, hub: StreamHub, client: StreamClient, heartbeat_s: float, banner: str,
                 disconnected: Callable[[], bool] | None = None):
        self.hub, self.client = hub, client
        self.heartbeat_s = heartbeat_s
        self.banner = banner
        self.disconnected = disconnected or (lambda: False)
        self._closed = False

    def __iter__(self):
        head = f": {self.banner}\nretry: 2000\n\n"
        if self.client.notice:
            head += f": {self.client.notice}\n\n"
        yield head.encode()
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        event_id = self.hub.event_id
        last_sent = time.monotonic()
        while not self._closed and not self.client.ended:
            chunks, dropped = self.client.take(min(POLL_S, self.heartbeat_s))
            parts = [f"id: {event_id(i)}\ndata: {dumps(e)}\n\n"
                     for ids, events in chunks for i, e in zip(ids, events)]
            if dropped:
                parts.append(f": dropped {dropped} events: this client reads too slowly\n\n")
            now = time.monotonic()
            if parts:
                last_sent = now
                yield "".join(parts).encode()
            elif self.disconnected():
                return
            elif now - last_sent >= self.heartbeat_s:
                # Nothing to send for a while: a heartbeat comment keeps proxies open and finds
                # clients that left without closing their connection.
                last_sent = now
                yield b": heartbeat\n\n"

    def close(self) -> None:
        self._closed = True
        self.hub.close(self.client)
