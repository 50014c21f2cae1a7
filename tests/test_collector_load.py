"""Under load: a subscriber that never reads keeps the collector's memory bounded (ZeroMQ
high-water marks) and does not slow down a subscriber that reads; every event made is
delivered or counted (lost/dropped)."""
from __future__ import annotations

import subprocess
import sys
import time

import zmq

from harness.collector import CollectorProcess, StreamReader
from harness.procs import rss_kib
from syswatch.collector.collector import PUB_SNDHWM
from tests.conftest import have, is_root, require

# Bursts of 100 one-byte writes to /dev/null with a short pause between them, under a
# distinctive name, until stdin closes; prints how many it made. The pauses make many
# messages (the collector publishes what one read of bpftrace's output holds), so the
# stalled subscriber's queue (PUB_SNDHWM messages) fills whatever the machine's speed.
LOAD = r"""
import ctypes, os, select, sys
ctypes.CDLL(None).prctl(15, b"sw-load", 0, 0, 0)
fd = os.open("/dev/null", os.O_WRONLY)
n = 0
while not select.select([sys.stdin], [], [], 0.003)[0]:
    for _ in range(100):
        os.write(fd, b"x")
    n += 100
print(n)
"""
QUEUES_OF_MESSAGES = 4        # the stream is this many times what the stalled subscriber's queue holds


def test_stalled_subscriber_bounded_memory(tmp_path):
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace")
    coll = CollectorProcess(tmp_path, "--echo-rate", "0", "--comm", "sw-load")
    reader = StreamReader(coll.endpoint, ("syscall.", "status"))
    # connects, then never reads; a tiny receive queue so the collector's send queue fills
    stalled = StreamReader(coll.endpoint, ("",), rcvhwm=10)
    stalled.sock.setsockopt(zmq.RCVBUF, 4096)
    load = None
    try:
        reader.wait_status()
        stalled.wait_status()               # connected (a status came through); from now on it never reads
        rss_start = rss_kib(coll.proc.pid)
        load = subprocess.Popen([sys.executable, "-c", LOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        received, messages, rss_max, last = 0, 0, rss_start, None
        bytes0 = reader.bytes_received
        deadline = time.monotonic() + 120
        for msg in reader.messages(180):
            received += len(msg.events)
            messages += msg.topic != "status"
            rss_max = max(rss_max, rss_kib(coll.proc.pid))
            if load.stdin and (messages >= QUEUES_OF_MESSAGES * PUB_SNDHWM or time.monotonic() > deadline):
                load.stdin.close()          # enough: the load stops
                load.stdin = None
            if msg.topic == "status" and load.poll() is not None:
                if last is not None and msg.payload["events_total"] == last["events_total"]:
                    last = msg.payload
                    break
                last = msg.payload
        made = int(load.communicate(timeout=30)[0])
        st = last
        published = reader.bytes_received - bytes0      # bytes the collector sent each subscriber meanwhile
        assert messages >= QUEUES_OF_MESSAGES * PUB_SNDHWM, \
            f"only {messages} messages in 120 s: too few to fill the stalled subscriber's queue of {PUB_SNDHWM}"
        # bounded: the stalled subscriber's queue holds at most a quarter of the stream it did not read
        assert (rss_max - rss_start) * 1024 < published / 2, (rss_start, rss_max, published, messages)
        # honest accounting: every write made is delivered to the reader or counted as lost
        assert st["dropped_total"] == 0                  # PUB drops for the stalled peer only
        assert received == st["events_total"], "the reading subscriber got every published event"
        assert st["events_total"] + st["lost_total"] >= made * 0.99, (made, st)
        print(f"made {made} in {messages} messages ({published} bytes), delivered {received}, "
              f"lost {st['lost_total']}, rss {rss_start} -> {rss_max} KiB")
    finally:
        if load and load.poll() is None:
            load.kill()
            load.wait()
        reader.close()
        stalled.close()
        coll.kill()
