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

A client that stays connected but stops reading (issue 29) is not allowed to hold its slot or grow
the server's buffers: while more than MAX_UNSENT bytes wait for it (api/peer.py) nothing more is
written and its queue keeps only the newest TAKE_MOST events (the rest is counted in
``sse_dropped_events``), and when those bytes have not moved for ``stall_s`` seconds the stream is
closed, its connection dropped and its slot freed (``sse_streams_stalled``). Each write is at most
about TAKE_MOST events, so a write never pushes the server past its own buffer bound (where waitress
would block the worker without a timeout).
"""
from __future__ import annotations

import json
import time
from typing import Callable

from syswatch.api.hub import StreamClient, StreamHub
from syswatch.api.peer import Peer, Progress

POLL_S = 0.25          # how often an idle stream checks that its client is still there
MAX_UNSENT = 256 << 10  # bytes waiting for a client beyond which nothing more is written to it
TAKE_MOST = 1_000       # events per write (~250 KB): far below waitress's 1 MiB outbuf_high_watermark
STALL_S = 30.0          # default --sse-stall-timeout


class EventStream:
    """A WSGI body iterable; ``close()`` (called by the server even if iteration never started) unregisters."""

    def __init__(self, hub: StreamHub, client: StreamClient, heartbeat_s: float, banner: str,
                 disconnected: Callable[[], bool] | None = None, peer: Peer | None = None,
                 stall_s: float = STALL_S):
        self.hub, self.client = hub, client
        self.heartbeat_s = heartbeat_s
        self.banner = banner
        self.disconnected = disconnected or (lambda: False)
        self.peer = peer
        self.stall_s = stall_s
        self._closed = False

    def _blocked(self, progress: Progress) -> bool:
        """True while the client is behind (nothing is written); closes the stream once it stalled."""
        peer = self.peer
        unsent = peer.unsent() if peer is not None else None
        if peer is None or unsent is None:
            return False
        now = time.monotonic()
        progress.reading(unsent, now)
        if progress.stalled(now):
            self.hub.stalled(self.client)
            peer.drop()
            self._closed = True
            return True
        return unsent > MAX_UNSENT

    def _wrote(self, progress: Progress) -> None:
        unsent = self.peer.unsent() if self.peer is not None else None
        if unsent is not None:
            progress.wrote(unsent)

    def __iter__(self):
        head = f": {self.banner}\nretry: 2000\n\n"
        if self.client.notice:
            head += f": {self.client.notice}\n\n"
        yield head.encode()
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        event_id = self.hub.event_id
        last_sent = time.monotonic()
        progress = Progress(self.stall_s)
        while not self._closed and not self.client.ended:
            if self._blocked(progress):
                if self._closed or self.disconnected():
                    return
                trimmed = self.client.trim(TAKE_MOST)   # what it cannot take now is dropped (counted), not held
                if trimmed:
                    self.hub.stats.add_sse_dropped(trimmed)
                time.sleep(POLL_S)
                continue
            chunks, dropped = self.client.take(min(POLL_S, self.heartbeat_s), TAKE_MOST)
            parts = [f"id: {event_id(i)}\ndata: {dumps(e)}\n\n"
                     for ids, events in chunks for i, e in zip(ids, events)]
            if dropped:
                parts.append(f": dropped {dropped} events: this client reads too slowly\n\n")
            now = time.monotonic()
            if parts:
                last_sent = now
                yield "".join(parts).encode()
                self._wrote(progress)
            elif self.disconnected():
                return
            elif now - last_sent >= self.heartbeat_s:
                # Nothing to send for a while: a heartbeat comment keeps proxies open and finds
                # clients that left without closing their connection.
                last_sent = now
                yield b": heartbeat\n\n"
                self._wrote(progress)

    def close(self) -> None:
        self._closed = True
        self.hub.close(self.client)
