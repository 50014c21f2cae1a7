"""What the HTTP server can tell an event stream about its client's connection (issue 29).

An SSE body is a generator; the server writes what it yields. A client that stops reading fills the
kernel's socket buffers, then the server's output buffer; waitress then blocks the worker thread in
its write until the client reads or goes away, with no timeout, and the stream's slot stays taken.
So the stream asks, before each write, how many bytes are still waiting for this client
(``unsent``): it writes nothing more while that is over a bound, and closes the stream (``drop``)
when those bytes have not moved for the stall timeout.

waitress exposes its connection object only through ``environ["waitress.client_disconnected"]``
(a bound method of the channel); its ``total_outbufs_len`` is the bytes queued and not yet handed to
the kernel. Under another server (or the in-process test client) ``Peer.unsent`` is None and
streams rely on the bounded per-client queue alone.
"""
from __future__ import annotations


class Peer:
    def __init__(self, environ: dict):
        check = environ.get("waitress.client_disconnected")
        channel = getattr(check, "__self__", None)
        self._channel = channel if hasattr(channel, "total_outbufs_len") else None
        self.address = environ.get("REMOTE_ADDR") or ""

    @property
    def known(self) -> bool:
        """Whether the server tells how much output is waiting."""
        return self._channel is not None

    def unsent(self) -> int | None:
        """Bytes written for this client that it has not taken yet (None: the server does not say)."""
        return None if self._channel is None else self._channel.total_outbufs_len

    def drop(self) -> None:
        """Close the connection without sending what is queued (the main loop does it at its next turn)."""
        channel = self._channel
        if channel is None:
            return
        channel.will_close = True                      # read by waitress's main loop in handle_write
        server = getattr(channel, "server", None)
        if server is not None:
            server.pull_trigger()                      # wake the loop now instead of at its next poll


class Progress:
    """Whether queued output moves: ``stalled(now)`` once ``unsent`` stayed above 0 without shrinking
    for ``stall_s`` seconds. Fed one reading per check."""

    def __init__(self, stall_s: float):
        self.stall_s = stall_s
        self._last = 0
        self._moved_at: float | None = None

    def reading(self, unsent: int, now: float) -> None:
        if self._moved_at is None or unsent == 0 or unsent < self._last:
            self._moved_at = now
        self._last = unsent

    def wrote(self, unsent: int) -> None:
        """We added output: a larger queue after our own write is not a stall."""
        self._last = unsent

    def stalled(self, now: float) -> bool:
        return self._last > 0 and self._moved_at is not None and now - self._moved_at >= self.stall_s
