"""collector/streamio.py: which calls are the stream's own I/O, event by event."""
from __future__ import annotations

import pytest

from syswatch.collector import streamio
from syswatch.collector.streamio import Rules, StreamIO

pytestmark = pytest.mark.unit

APP, IO = b"python3", b"ZMQbg/IO/0"


def test_only_a_verified_subscriber_s_zeromq_eventfds_are_left_out():
    s = StreamIO()
    # before it is verified: learned, not left out
    assert not s.excluded(10, IO, 7, 8, 8)         # the I/O thread reads its mailbox (fd 7)
    assert not s.excluded(10, IO, 9, 8, 8)         # and writes the socket's (fd 9)
    s.rules = Rules(subscribers=frozenset({10}))
    assert s.excluded(10, APP, 9, 8, 8)            # the application reads the socket's mailbox
    assert s.excluded(10, APP, 7, 8, 8)            # and writes the I/O thread's
    assert s.excluded(10, APP, 9, 8, -11)          # EAGAIN: nothing was there
    assert s.excluded(10, IO, 11, 8, 8) and s.learned(10) == [7, 9, 11]
    # everything else of that process stays: other descriptors, other sizes, other results
    assert not s.excluded(10, APP, 3, 8, 8)
    assert not s.excluded(10, APP, 9, 4096, 100)   # fd 9 used for something else than an eventfd
    assert not s.excluded(10, APP, 9, 8, 0)
    assert not s.excluded(11, APP, 9, 8, 8)        # another process's fd 9
    # with the file's type known, nothing but an anonymous inode can be a mailbox
    assert not s.excluded(10, APP, 9, 8, 8, ino=5, file_type="reg")
    assert s.excluded(10, APP, 9, 8, 8, ino=17, file_type="anon")


def test_a_thread_named_like_zeromq_hides_nothing_of_an_unverified_process():
    s = StreamIO()
    s.rules = Rules(subscribers=frozenset({10}))
    assert not s.excluded(20, IO, 4, 8, 8) and not s.excluded(20, APP, 4, 8, 8)
    assert not s.excluded(20, IO, 5, 100, 100)     # a ZMQbg-named thread's file read: not remembered
    assert s.learned(20) == [4]


def test_sockets_of_the_stream_and_peer_collectors():
    s = StreamIO()
    s.rules = Rules(pids=frozenset({30}), sockets=frozenset({555}))
    assert s.excluded(30, b"bpftrace", 1, 4096, 4096)
    assert s.excluded(40, APP, 6, 65536, 300, ino=555, file_type="sock")   # reading the stream
    assert not s.excluded(40, APP, 6, 65536, 300, ino=556, file_type="sock")
    assert not s.excluded(40, APP, 6, 65536, 300)                          # no inode known: kept


def test_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(streamio, "MAX_PROCESSES", 100)
    s = StreamIO()
    for pid in range(1000):
        for fd in range(100):
            s.excluded(pid, IO, fd, 8, 8)
    assert len(s._zmq_fds) == 100 and all(len(v) == streamio.MAX_FDS for v in s._zmq_fds.values())
    s.forget(range(1000))
    assert not s._zmq_fds


def test_watch_is_the_cheap_test():
    s = StreamIO()
    s.rules = Rules(pids=frozenset({1}), subscribers=frozenset({2}))
    assert s.watch(1, APP) and s.watch(2, APP) and s.watch(3, IO) and not s.watch(3, APP)
