"""Issue 29 for real: a hostile ZeroMQ publisher beside two real collectors (root, bpftrace), one API
process reading all three, slow HTTP clients on real sockets, and syswatch-tail on a hostile stream.

- junk host names and a stolen host name change nothing for the real hosts, and a third real
  collector started afterwards is shown;
- oversized-but-valid statuses keep /stats under its documented size;
- eight SSE clients that never read do not stop a ninth, real one from streaming: one address gets
  its share of the slots, and the ones that take nothing are closed once the hostile flood fills
  their buffers;
- syswatch-tail shows the escapes a hostile collector sends as visible text.
The same boundaries in process, with exact counts: tests/test_api_trust_units.py."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

from harness import ROOT
from harness.api import ApiProcess, Publisher, event, metric
from harness.collector import CollectorProcess
from harness.procs import die_with_parent, free_port, wait_for
from harness.workloads import Writer
from syswatch.shared import protocol
from tests.conftest import have, is_root, require

STATS_LIMIT = 200_000          # docs/SECURITY.md
JUNK = [f"{i:03d}" + "j" * 252 for i in range(63)]
HUGE = {"excluded_pids": list(range(protocol.MAX_EXCLUDED_PIDS)), "stale_cpus": list(range(protocol.MAX_CPUS)),
        "syscalls": list(protocol.SYSCALLS)}


def writes_of(api: ApiProcess, host: str, pid: int) -> int:
    events = api.get("/events", params={"host": host, "pid": pid, "syscall": "write", "limit": 10000}).json()["events"]
    return sum(1 for e in events if e["count"] in (11, 13))


def collectors(api: ApiProcess) -> dict:
    return {c["host"]: c for c in api.get("/stats").json()["collectors"] if c["host"]}


def hostile_round(pub: Publisher, flood: int = 0) -> None:
    """What the hostile endpoint sends each round: the real host's name with numbers no host makes, junk
    host names with the largest lists the protocol allows, and (``flood``) events of its one admitted host."""
    pub.host = "node-a"
    pub.status(events_total=18 * 10**18, uptime_s=3.0)
    pub.events([event(syscall="write", pid=1, count=11) for _ in range(50)])
    for name in JUNK:
        pub.host = name
        pub.status(**HUGE)
    if flood:
        pub.host = JUNK[0]
        pub.events([event(syscall="read", pid=7, comm="flood", count=4096) for _ in range(flood)])


class RawStream:
    """An HTTP client of /events/stream on a raw socket from ``source``; ``read`` decides if it ever reads."""

    def __init__(self, port: int, source: str, query: str = "", read: bool = False):
        self.sock = socket.socket()
        if not read:     # a client that stops reading: its receive window closes quickly
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET /events/stream{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        self.data = bytearray()
        self.closed = False
        if read:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return
            self.data += chunk

    def close(self) -> None:
        self.sock.close()


def test_a_hostile_collector_and_slow_clients_change_nothing_for_the_real_ones(tmp_path):
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace")
    alpha, beta, gamma = Writer("sw-alpha", 100, 11), Writer("sw-beta", 70, 13), Writer("sw-gamma", 10, 11)
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
    evil = f"tcp://127.0.0.1:{free_port()}"
    late = f"tcp://127.0.0.1:{free_port()}"
    ca = CollectorProcess(tmp_path / "a", "--hostname", "node-a", "--pid", str(alpha.pid), "--echo-rate", "0")
    cb = CollectorProcess(tmp_path / "b", "--hostname", "node-b", "--pid", str(beta.pid), "--echo-rate", "0")
    cc = None
    api = ApiProcess(tmp_path / "ips.sqlite3", "--collector", cb.endpoint, "--collector", evil, "--collector", late,
                     "--sse-stall-timeout", "5", collector=ca.endpoint)
    pub = Publisher(evil)
    streams: list[RawStream] = []
    try:
        api.start()
        wait_for(lambda: {"node-a", "node-b"} <= set(api.get("/stats").json()["hosts"]), 30, 0.2, "both real hosts")
        wait_for(lambda: (hostile_round(pub), api.get("/stats").json()["api"]["messages_refused"] > 0)[1], 30, 0.3,
                 "the hostile endpoint's messages to reach the API")
        for _ in range(3):
            hostile_round(pub)
            alpha.round()
            beta.round()
        wait_for(lambda: writes_of(api, "node-a", alpha.pid) == 300, 20, 0.2, "node-a's writes")
        wait_for(lambda: writes_of(api, "node-b", beta.pid) == 210, 20, 0.2, "node-b's writes")
        s = api.get("/stats").json()
        seen = collectors(api)
        assert seen["node-a"]["endpoint"] == ca.endpoint and seen["node-b"]["endpoint"] == cb.endpoint
        assert seen["node-a"]["status"]["events_total"] < 10**9 and seen["node-a"]["events_not_received"] < 10**6
        # the stolen name's events went nowhere: node-a shows only its own process
        assert {p["pid"] for p in api.get("/stats", params={"host": "node-a"}).json()["top_processes_by_calls"]} \
            == {alpha.pid}
        assert sorted(s["hosts"]) == sorted(["node-a", "node-b", JUNK[0]])   # the hostile endpoint's one slot
        assert s["api"]["messages_refused"] >= 3 * 64 and s["api"]["malformed_messages"] == 0
        assert s["api"]["events_not_received"] < 10**6
        body = api.get("/stats").content
        assert len(body) < STATS_LIMIT, len(body)
        junk = seen[JUNK[0]]["status"]
        assert junk["excluded_pids_count"] == protocol.MAX_EXCLUDED_PIDS and len(junk["stale_cpus"]) == 16
        text = api.get("/metrics").text
        assert metric(text, "syswatch_collector_events_total", host="node-a") < 10**9

        # a collector added afterwards finds its slot
        cc = CollectorProcess(tmp_path / "c", "--hostname", "node-c", "--pid", str(gamma.pid), "--echo-rate", "0",
                              bind=late)
        wait_for(lambda: "node-c" in api.get("/stats").json()["hosts"], 30, 0.3, "the third collector")
        gamma.round()
        wait_for(lambda: writes_of(api, "node-c", gamma.pid) == 10, 20, 0.2, "node-c's writes")

        # eight clients that never read, from one address: it gets its share (4), the rest 429
        streams = [RawStream(api.port, "127.0.0.1") for _ in range(8)]
        wait_for(lambda: api.get("/stats").json()["api"]["sse_streams_refused"] == 4, 20, 0.2, "4 refused")
        assert api.get("/stats").json()["api"]["event_streams"] == 4
        # the ninth, real one from another address streams node-a's events
        ninth = RawStream(api.port, "127.0.0.2", "?host=node-a", read=True)
        streams.append(ninth)
        wait_for(lambda: api.get("/stats").json()["api"]["event_streams"] == 5, 20, 0.2, "the ninth stream")
        # the hostile flood fills the non-readers' buffers: they are closed, their slots freed
        deadline = time.monotonic() + 60
        while api.get("/stats").json()["api"]["sse_streams_stalled"] < 4:
            assert time.monotonic() < deadline, api.get("/stats").json()["api"]
            hostile_round(pub, flood=2000)
            alpha.round()
            time.sleep(0.2)
        wait_for(lambda: api.get("/stats").json()["api"]["event_streams"] == 1, 20, 0.2, "only the ninth left")
        before = ninth.data.count(b"\ndata: ")
        alpha.round()
        wait_for(lambda: ninth.data.count(b"\ndata: ") >= before + 100, 20, 0.2, "the ninth stream's events")
        assert b'"comm":"sw-alpha"' in ninth.data and b"flood" not in ninth.data and not ninth.closed
        text = api.get("/metrics").text
        assert metric(text, "syswatch_api_sse_streams_stalled_total") >= 4
        assert metric(text, "syswatch_api_event_streams") == 1 and metric(text, "syswatch_api_event_streams_max") == 8
    finally:
        for st in streams:
            st.close()
        pub.close()
        api.stop()
        for c in (ca, cb, cc):
            if c is not None:
                c.kill()
        for w in (alpha, beta, gamma):
            w.kill()


def test_tail_shows_what_a_hostile_collector_sends_as_text(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(endpoint, host="vm")      # (the protocol refuses a host name that is not printable)
    tail = subprocess.Popen([sys.executable, str(ROOT / "subscribers" / "tail.py"), "-e", endpoint,
                             "--topic", "", "--count", "6", "-d", "30"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    hostile = event(syscall="read", comm="\x1b]0;owned\x07", container_id="0123456789ab",
                    container_name="\x1b[2J\x1b[H\u202e", ret=-11)
    try:
        deadline = time.monotonic() + 30
        while tail.poll() is None:               # until tail has its 6 lines (ZeroMQ's slow joiner)
            if time.monotonic() > deadline:
                tail.kill()
                out, err = tail.communicate()
                raise AssertionError(f"tail did not print 6 lines in 30 s: {out[-2000:]!r} {err[-2000:]!r}")
            pub.status(bpftrace="\x1b[31mv0.17\x9b2J", excluded_pids=list(range(40)))
            pub.events([hostile])
            time.sleep(0.1)
        out, err = tail.communicate(timeout=10)
    finally:
        if tail.poll() is None:
            tail.kill()
        pub.close()
    assert tail.returncode == 0, err
    text = out.decode("utf-8")
    assert text.count("\n") == 6
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in text
    assert "\\x1b]0;owned\\x07[4242] read(1, 100) = -1 EAGAIN (Resource temporarily unavailable)" in text
    assert "container=\\x1b[2J\\x1b[H\\u202e host=vm" in text
    assert "bpftrace=\\x1b[31mv0.17\\x9b2J" in text and "... 40 in all]" in text
