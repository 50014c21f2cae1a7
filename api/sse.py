"""/events/stream body: Server-Sent Events from one StreamClient's bounded queue.

Wire format: one event per ``data:`` line (compact JSON of an EVENT), a blank line after each;
heartbeats and drop notices are SSE comments (lines starting with ``:``), which clients ignore:

    : syswatch event stream (filters: syscall=write)
    data: {"ts_ns":1764013800123456789,"pid":4242,"tid":4242,"uid":0,"comm":"dd","syscall":"write","fd":1,"count":512}

    : dropped 1200 events: this client reads too slowly
"""
from __future__ import annotations

import json

from api.stream import StreamClient, StreamHub


class EventStream:
    """A WSGI body iterable; ``close()`` (called by the server even if iteration never started) unregisters."""

    def __init__(self, hub: StreamHub, client: StreamClient, heartbeat_s: float, banner: str):
        self.hub, self.client = hub, client
        self.heartbeat_s = heartbeat_s
        self.banner = banner
        self._closed = False

    def __iter__(self):
        yield f": {self.banner}\nretry: 2000\n\n".encode()
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        while not self._closed and not self.client.ended:
            events, dropped = self.client.take(self.heartbeat_s)
            parts = [f"data: {dumps(e)}\n\n" for e in events]
            if dropped:
                parts.append(f": dropped {dropped} events: this client reads too slowly\n\n")
            # Nothing to send: a heartbeat comment keeps proxies open and finds clients that left.
            yield ("".join(parts) if parts else ": heartbeat\n\n").encode()

    def close(self) -> None:
        self._closed = True
        self.hub.close(self.client)
