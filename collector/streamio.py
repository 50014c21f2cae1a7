"""Which calls are the stream's own I/O, decided per event: what the stream leaves out.

Receiving the stream makes a subscriber signal between its threads with eventfds: ZeroMQ's I/O
thread (named ``ZMQbg/IO/0``; the reaper ``ZMQbg/Reaper``) writes the socket's mailbox when a
message arrives and reads its own when the application sends it a command; the application's
thread does the other half. Those calls, published, would feed the stream forever. So for a
*verified* subscriber (collector/exclusions.py), this leaves out exactly:

- calls on a descriptor a ``ZMQbg/`` thread of that process has read or written and that is an
  eventfd call (8 bytes asked; moved 8, or -EAGAIN): ZeroMQ's mailboxes. Learned from the events
  themselves (for any process, bounded, so a subscriber's descriptors are known by the time it is
  verified; left out only once it is);
- calls on a socket whose inode is one end of a connection to the collector (``Rules.sockets``:
  reading the stream is the stream), when the event says which inode it touched.

Everything else the process does stays in the stream, and so do its eventfds until a ZeroMQ
thread has touched them. Peer collectors (``Rules.pids``) are left out whole. Events carry the
file's type and inode (issue 22): only an ``anon`` file (an eventfd) can be a mailbox, so a file
read 8 bytes at a time through a descriptor number a closed mailbox had stays in the stream.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

EVENTFD_COUNT = 8
EAGAIN = 11
# The prefix of ZeroMQ's thread names (libzmq >= 4.3), as bpftrace's JSON output may spell it
ZMQ_THREADS = (b"ZMQbg/", b"ZMQbg\\/")
MAX_PROCESSES = 4096                # processes whose ZeroMQ descriptors are remembered...
MAX_FDS = 32                        # ...and descriptors each (a context has 4, +1 per socket)


class Rules(NamedTuple):
    """What to leave out, replaced whole by the collector's loop (never mutated)."""
    pids: frozenset[int] = frozenset()          # whole processes: other collectors
    subscribers: frozenset[int] = frozenset()   # verified subscribers: their ZeroMQ eventfds
    sockets: frozenset[int] = frozenset()       # inodes of the stream's connections, both ends


class StreamIO:
    """``excluded(...)`` per event; ``rules`` replaced by the loop; ``learned`` read for status."""

    def __init__(self) -> None:
        self.rules = Rules()
        self._zmq_fds: OrderedDict[int, set[int]] = OrderedDict()   # pid -> fds ZMQbg threads used

    def watch(self, pid: int, comm: bytes) -> bool:
        """Whether an event of ``pid`` by a thread named ``comm`` (bpftrace's escaping) needs
        ``excluded``: the cheap test the parser makes for every event."""
        return pid in self.rules.pids or pid in self.rules.subscribers or comm.startswith(ZMQ_THREADS)

    def excluded(self, pid: int, comm: bytes, fd: int, count: int, ret: int,
                 ino: int | None = None, file_type: str | None = None) -> bool:
        """Whether this event is the stream's own I/O. ``ino``/``file_type``: the file the call
        touched, where the event carries it (then an eventfd is known as one, and sockets match)."""
        rules = self.rules
        if pid in rules.pids:
            return True
        if file_type == "sock" and ino is not None and ino in rules.sockets:
            return True
        if file_type not in (None, "anon"):
            return False                       # a file, pipe, socket or device: never ZeroMQ's mailbox
        eventfd_like = count == EVENTFD_COUNT and ret in (EVENTFD_COUNT, -EAGAIN)
        if not eventfd_like:
            return False
        if comm.startswith(ZMQ_THREADS):
            fds = self._zmq_fds.get(pid)
            if fds is None:
                if len(self._zmq_fds) >= MAX_PROCESSES:
                    self._zmq_fds.popitem(last=False)
                fds = self._zmq_fds[pid] = set()
            else:
                self._zmq_fds.move_to_end(pid)
            if len(fds) < MAX_FDS:
                fds.add(fd)
        return pid in rules.subscribers and fd in self._zmq_fds.get(pid, ())

    def learned(self, pid: int) -> list[int]:
        """The descriptors a ZeroMQ thread of ``pid`` used (for status)."""
        return sorted(self._zmq_fds.get(pid, ()))

    def forget(self, pids) -> None:
        """Processes that are gone: their descriptor numbers mean nothing any more."""
        for pid in pids:
            self._zmq_fds.pop(pid, None)
