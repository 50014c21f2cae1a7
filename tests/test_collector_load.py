"""Under load: a subscriber that never reads keeps the collector's memory bounded (ZeroMQ
high-water marks) and does not slow down a subscriber that reads; every event made is
delivered or counted (lost/dropped)."""
from __future__ import annotations

import subprocess
import sys
import time

import zmq

from tests.collector_helpers import Collector, Subscriber
from tests.conftest import have, is_root, require

# ~10 s of 1-byte writes to /dev/null as fast as Python can, under a distinctive name
LOAD = r"""
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, b"sw-load", 0, 0, 0)
fd = os.open("/dev/null", os.O_WRONLY)
end = time.monotonic() + float(sys.argv[1]); n = 0
while time.monotonic() < end:
    for _ in range(1000):
        os.write(fd, b"x")
    n += 1000
print(n)
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_stalled_subscriber_bounded_memory(tmp_path):
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace")
    coll = Collector(tmp_path, "--echo-rate", "0", "--comm", "sw-load")
    reader = Subscriber(coll.endpoint, ("syscall.", "status"))
    # connects, then never reads; a tiny receive queue so the collector's send queue fills
    stalled = Subscriber(coll.endpoint, ("",), rcvhwm=10)
    stalled.sock.setsockopt(zmq.RCVBUF, 4096)
    try:
        reader.wait_status()
        for msg in stalled.messages(0.2):   # connected; from now on it never reads
            break
        rss_start = rss_kib(coll.proc.pid)
        load = subprocess.Popen([sys.executable, "-c", LOAD, "8"], stdout=subprocess.PIPE, text=True)
        received, rss_max, last = 0, rss_start, None
        for msg in reader.messages(40):
            received += len(msg.events)
            rss_max = max(rss_max, rss_kib(coll.proc.pid))
            if msg.topic == "status" and load.poll() is not None:
                if last is not None and msg.payload["events_total"] == last["events_total"]:
                    last = msg.payload
                    break
                last = msg.payload
        made = int(load.communicate(timeout=30)[0])
        st = last
        published = st["events_total"] * 170            # bytes of JSON that went through the collector
        # bounded: far less than the stream the stalled subscriber did not read
        assert made > 30_000
        assert (rss_max - rss_start) * 1024 < published / 2, (rss_start, rss_max, published)
        # honest accounting: every write made is delivered to the reader or counted as lost
        assert st["dropped_total"] == 0                  # PUB drops for the stalled peer only
        assert received == st["events_total"], "the reading subscriber got every published event"
        assert st["events_total"] + st["lost_total"] >= made * 0.99, (made, st)
        print(f"made {made}, delivered {received}, lost {st['lost_total']}, "
              f"rss {rss_start} -> {rss_max} KiB")
    finally:
        reader.close()
        stalled.close()
        coll.kill()
