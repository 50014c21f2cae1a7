"""subscribers/tail.py and subscribers/top.py against a real collector (a PID-filtered one,
so the child's calls are all that flows and the assertions are exact)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from harness import ROOT
from harness.collector import Child, CollectorProcess, StreamReader
from tests.conftest import have, is_root, require


@pytest.fixture(scope="module")
def child_and_collector(tmp_path_factory):
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace")
    child = Child([b"sw-tail"], base=550_001, writes=30, reads=20)
    coll = CollectorProcess(tmp_path_factory.mktemp("subs"), "--pid", str(child.pid), "--echo-rate", "0")
    yield child, coll
    coll.kill()


def _terminal_sigint() -> None:
    """preexec_fn: SIGINT as a terminal's Ctrl-C finds it. A run started in the background by a
    non-interactive shell (`.ci/run &`) ignores SIGINT, every child inherits that, and Python then
    installs no KeyboardInterrupt handler: the scripts would rightly go on running."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def script(name: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "subscribers" / name), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_terminal_sigint, **kw)


def tcp_connected(pid: int, port: int) -> bool:
    """Whether process ``pid`` has an established TCP connection to ``port``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    return True
    return False


def wait_connected(coll: CollectorProcess, *scripts: subprocess.Popen, timeout: float = 30) -> None:
    """ZeroMQ's slow joiner: until every script has a TCP connection to the collector, then until
    a status the collector sent after that has come through, so the subscription each script
    sent on its connection right after the handshake had time to reach the PUB."""
    port = int(coll.endpoint.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    while not all(tcp_connected(s.pid, port) for s in scripts):
        for s in scripts:
            assert s.poll() is None, f"{s.args} exited: {s.communicate()[1]}"
        assert time.monotonic() < deadline, f"not every script connected to {coll.endpoint} within {timeout} s"
        time.sleep(0.05)
    connected_ns = time.time_ns()
    sub = StreamReader(coll.endpoint, ("status",))
    try:
        while sub.wait_status(timeout)["ts_ns"] <= connected_ns:
            pass
    finally:
        sub.close()


def test_tail_json_count_and_top_once(child_and_collector):
    child, coll = child_and_collector
    tail = script("tail.py", "--endpoint", coll.endpoint, "--json", "--count", "51", "--timeout", "30")
    top = script("top.py", "--endpoint", coll.endpoint, "--iterations", "3", "--delay", "1.5", "--json")
    text = script("tail.py", "--endpoint", coll.endpoint, "--count", "5", "--timeout", "30",
                  "--topic", "syscall.write")
    wait_connected(coll, tail, top, text)
    child.run()
    out, err = tail.communicate(timeout=40)
    assert tail.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    # the 50 calls, and the child's read of "go" (fd 0): it returns after the probes attached, and
    # the collector's one probe per call is at the return (issue 24)
    go = [e for e in events if e["count"] not in child.counts()]
    assert len(events) == 51 and [(e["syscall"], e["fd"]) for e in go] == [("read", 0)], go
    assert sorted(e["count"] for e in events if e not in go) == sorted(child.counts())
    assert {(e["pid"], e["comm"]) for e in events if e not in go} == {(child.pid, "sw-tail")}

    out, err = text.communicate(timeout=40)
    assert text.returncode == 0, err
    lines = out.splitlines()
    # strace's shape: "12:01:02.123456 sw-tail[26619/26620] write(3</dev/null>, 550001) = 550001 host=vm"
    # (the child writes from a thread of its own: [pid/tid]; no <latency> unless the collector has --latency)
    shape = re.compile(rf"\d\d:\d\d:\d\d\.\d{{6}} sw-tail\[{child.pid}/\d+\] write\({child.info['wfd']}</dev/null>, "
                       rf"(\d+)\) = \1 host=\S+")
    assert len(lines) == 5 and all(shape.fullmatch(line) for line in lines), lines

    out, err = top.communicate(timeout=40)
    assert top.returncode == 0, err
    samples = [json.loads(line) for line in out.splitlines()]
    assert len(samples) == 3
    procs = [p for s in samples for p in s["processes"] if p["pid"] == child.pid]
    assert procs and procs[0]["comm"] == "sw-tail"
    rate_total = sum(p["write_calls_s"] for p in procs)
    assert rate_total > 0
    assert any(st["excluded_pids"] for s in samples for st in s["status"].values())
    # latency is not measured without the collector's --latency: no invented mean
    assert all(p["write_bytes_s"] > 0 and p["errors_s"] == 0 and p["avg_lat_us"] == 0 for p in procs[:1])


def test_top_table_once(child_and_collector):
    _, coll = child_and_collector
    res = subprocess.run([sys.executable, str(ROOT / "subscribers" / "top.py"), "--endpoint", coll.endpoint,
                          "--once", "--delay", "1.5"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "syswatch top" in res.stdout and "READ/s" in res.stdout and "WBYTES/s" in res.stdout
    assert "\x1b[" not in res.stdout          # not a terminal: plain text


def test_tail_timeout_and_ctrl_c(child_and_collector):
    _, coll = child_and_collector
    res = subprocess.run([sys.executable, str(ROOT / "subscribers" / "tail.py"), "--endpoint", coll.endpoint,
                          "--count", "1", "--timeout", "0.5", "--pid", "1"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "timeout after 0.5 s with 0 of 1 items" in res.stderr
    port = int(coll.endpoint.rsplit(":", 1)[1])
    for name in ("tail.py", "top.py"):
        # --pid 1: nothing to print, so what is measured is Ctrl-C, not how long a loaded machine takes
        # to print the whole host's stream into the pipe (a CI run once needed more than 10 s)
        proc = script(name, "--endpoint", coll.endpoint, "--pid", "1")
        # running its loop (connected), not still importing: a cold start on a fresh machine
        # compiles every module first, and Ctrl-C then would be a KeyboardInterrupt traceback
        deadline = time.monotonic() + 30
        while not tcp_connected(proc.pid, port):
            assert proc.poll() is None and time.monotonic() < deadline, f"{name} did not connect"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Traceback" not in err, err


def test_help_of_both_scripts():
    for name in ("tail.py", "top.py"):
        res = subprocess.run([sys.executable, str(ROOT / "subscribers" / name), "--help"],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and "examples:" in res.stdout and "--endpoint" in res.stdout
