"""Event model v2 against the real kernel: what each call returned (ret), how long it took (lat_ns),
the read/write family, cgroups and containers, and a stream that never watches itself.

Each test runs a child that makes known calls and a collector filtered on that child's PID (or its
cgroup), so the kernel passes only the child's calls and every assertion is exact."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from harness import ROOT
from harness.api import ApiProcess
from harness.collector import CollectorProcess, StreamReader
from harness.workloads import Script
from syswatch.collector.bpfversion import parse
from syswatch.collector.containers import find_cgroup2_root
from syswatch.shared import protocol
from tests.conftest import have, is_root, require


@pytest.fixture
def prereqs():
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-test.sh does it)")


def events_of(sub: StreamReader, pid: int, want, timeout: float = 20) -> list[dict]:
    """The events of ``pid`` until ``want(events)`` holds (then 0.3 s more, to catch duplicates)."""
    got: list[dict] = []
    end = None
    for msg in sub.messages(timeout):
        got += [e for e in msg.events if e["pid"] == pid]
        if end is None and want(got):
            end = time.monotonic() + 0.3
        if end is not None and time.monotonic() >= end:
            break
    return got


def traced(tmp_path, script: Script, *args: str, topics=("syscall.", "status")):
    coll = CollectorProcess(tmp_path, "--pid", str(script.pid), "--echo-rate", "0", *args)
    sub = StreamReader(coll.endpoint, topics)
    sub.wait_status()
    return coll, sub


def test_short_read_bad_fd_and_write_carry_ret(tmp_path, bpftrace_bin):
    (tmp_path / "three").write_bytes(b"abc")
    # "three" is opened once the collector runs (its open probe names it): a file opened before the
    # collector started and closed before its event is read has path "" (unknown, never a wrong name)
    child = Script("""
        wfd = os.open("/dev/null", os.O_WRONLY)
        fd = os.open("three", os.O_RDONLY)
        os.close(fd)                        # the number the body's open gets again
        info.update(fd=fd, wfd=wfd)
        """, """
        assert os.open("three", os.O_RDONLY) == fd
        os.read(fd, 1 << 20)                # a short read: 3 of 1 MiB
        os.read(fd, 1 << 20)                # end of file: 0
        os.close(fd)
        try:
            os.read(fd, 777)                # a closed fd: -EBADF
        except OSError:
            pass
        os.write(wfd, b"x" * 4242)
        """, tmp_path)
    coll, sub = traced(tmp_path, child, "--bpftrace", bpftrace_bin)
    try:
        child.run()
        got = events_of(sub, child.pid, lambda ev: len([e for e in ev if e["count"] in (1 << 20, 777, 4242)]) >= 4)
        mine = [(e["syscall"], e["fd"], e["count"], e["ret"]) for e in got if e["count"] in (1 << 20, 777, 4242)]
        fd, wfd = child.info["fd"], child.info["wfd"]
        assert mine == [("read", fd, 1 << 20, 3), ("read", fd, 1 << 20, 0), ("read", fd, 777, -9),
                        ("write", wfd, 4242, 4242)]
        assert all("lat_ns" not in e and e["container_id"] == "" and e["cgroup_id"] > 0 for e in got)
        assert [e["path"] for e in got if e["count"] in (1 << 20, 777, 4242)] == [
            str(tmp_path / "three")] * 2 + ["", "/dev/null"]         # a closed fd: no file
    finally:
        child.kill()
        sub.close()
        coll.kill()


def test_blocking_pipe_read_reports_its_latency(tmp_path, prereqs):
    child = Script("""
        r, w = os.pipe()
        def later():
            time.sleep(0.05)
            os.write(w, b"z" * 11)
        """, """
        t = threading.Thread(target=later)
        t.start()
        t0 = time.monotonic_ns()
        os.read(r, 9999)
        info["took_ns"] = time.monotonic_ns() - t0
        t.join()
        """, tmp_path)
    coll, sub = traced(tmp_path, child, "--latency")
    try:
        child.run()
        got = events_of(sub, child.pid, lambda ev: any(e["count"] == 9999 for e in ev))
        (ev,) = [e for e in got if e["count"] == 9999]
        assert ev["ret"] == 11 and ev["lat_ns"] >= 50_000_000, ev
        # ts_ns is the entry time: the call started before the write that ended it
        (wr,) = [e for e in got if e["syscall"] == "write" and e["count"] == 11]
        assert ev["ts_ns"] + 50_000_000 <= wr["ts_ns"] + wr["lat_ns"] + 5_000_000
    finally:
        child.kill()
        sub.close()
        coll.kill()


def test_read_write_family_is_opt_in_and_each_call_arrives_once(tmp_path, prereqs):
    (tmp_path / "data").write_bytes(b"0123456789" * 100)
    child = Script("""
        fd = os.open("data", os.O_RDWR)
        info["fd"] = fd
        """, """
        os.pwrite(fd, b"P" * 31, 5)                     # pwrite64: 31 bytes
        os.pread(fd, 4096, 990)                         # pread64: 10 bytes left after offset 990
        os.lseek(fd, 0, 0)
        os.readv(fd, [bytearray(7), bytearray(8), bytearray(9)])   # readv: 3 iovecs, 24 bytes
        os.writev(fd, [b"a" * 3, b"b" * 4])             # writev: 2 iovecs, 7 bytes
        os.read(fd, 33)
        os.write(fd, b"w" * 13)
        """, tmp_path)
    family = ",".join(protocol.SYSCALLS)
    coll, sub = traced(tmp_path, child, "--syscalls", family)
    try:
        child.run()
        want = {("pwrite64", 31, 31), ("pread64", 4096, 10), ("readv", 3, 24), ("writev", 2, 7),
                ("read", 33, 33), ("write", 13, 13)}
        got = events_of(sub, child.pid, lambda ev: want <= {(e["syscall"], e["count"], e["ret"]) for e in ev})
        mine = Counter((e["syscall"], e["count"], e["ret"]) for e in got if e["fd"] == child.info["fd"])
        assert mine == Counter(want), "each call exactly once, with its ret"
        st = sub.statuses[-1]
        assert st["syscalls"] == list(protocol.SYSCALLS)
    finally:
        child.kill()
        sub.close()
        coll.kill()
    # by default only read and write are traced
    res = subprocess.run([sys.executable, "-m", "collector.collector", "--syscalls", "read,open"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "unknown 'open'" in res.stderr and "pread64" in res.stderr


def _cgroup_root() -> Path:
    root = find_cgroup2_root()
    require(root is not None, "a cgroup v2 hierarchy (/sys/fs/cgroup or /sys/fs/cgroup/unified)")
    return root


class Cgroup:
    """A real cgroup v2 group the test creates, moves a process into, and removes."""

    def __init__(self, name: str):
        self.path = _cgroup_root() / name
        self.path.mkdir()
        self.id = self.path.stat().st_ino

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)     # a process that just exited may still be counted in it


def test_cgroup_id_and_container_of_a_v2_group(tmp_path, prereqs):
    """A plain group: its id, no container. A group named as Docker's systemd driver names a
    container's: that container id (12 hex), and no name (Docker has no such container)."""
    full = uuid.uuid4().hex + uuid.uuid4().hex
    plain, fake = Cgroup(f"syswatch-test-{os.getpid()}"), Cgroup(f"docker-{full}.scope")
    children = []
    try:
        for group in (plain, fake):
            child = Script("wfd = os.open('/dev/null', os.O_WRONLY)", "os.write(wfd, b'c' * 5151)", tmp_path)
            group.add(child.pid)
            children.append(child)
        host = Script("wfd = os.open('/dev/null', os.O_WRONLY)", "os.write(wfd, b'h' * 5151)", tmp_path)
        children.append(host)
        coll = CollectorProcess(tmp_path, "--echo-rate", "0", *[a for c in children for a in ("--pid", str(c.pid))])
        sub = StreamReader(coll.endpoint)
        try:
            sub.wait_status()
            for child in children:
                child.run()
            got = {}
            for msg in sub.messages(20):
                for e in msg.events:
                    if e["count"] == 5151:
                        got[e["pid"]] = e
                if len(got) == 3:
                    break
            p, f, h = (got[c.pid] for c in children)
            assert (p["cgroup_id"], p["container_id"], p["container_name"]) == (plain.id, "", "")
            assert (f["cgroup_id"], f["container_id"], f["container_name"]) == (fake.id, full[:12], "")
            assert h["container_id"] == "" and h["cgroup_id"] not in (plain.id, fake.id)
        finally:
            sub.close()
            coll.kill()
    finally:
        for child in children:
            child.kill()
        plain.remove()
        fake.remove()


def test_container_filter_keeps_only_that_container(tmp_path, prereqs):
    full = uuid.uuid4().hex + uuid.uuid4().hex
    group = Cgroup(f"docker-{full}.scope")
    inside = Script("wfd = os.open('/dev/null', os.O_WRONLY)", "os.write(wfd, b'i' * 6161)", tmp_path)
    outside = Script("wfd = os.open('/dev/null', os.O_WRONLY)", "os.write(wfd, b'o' * 6161)", tmp_path)
    try:
        group.add(inside.pid)
        coll = CollectorProcess(tmp_path, "--echo-rate", "0", "--container", full[:12])
        sub = StreamReader(coll.endpoint)
        try:
            sub.wait_status()
            outside.run()
            inside.run()
            seen = []
            for msg in sub.messages(6):
                seen += msg.events
                if any(e["count"] == 6161 for e in seen) and time.monotonic():
                    pass
            assert {(e["pid"], e["ret"]) for e in seen if e["count"] == 6161} == {(inside.pid, 6161)}
            assert {e["container_id"] for e in seen} == {full[:12]}, "the kernel passed only that cgroup"
            assert "filtered in the kernel by cgroup id" in coll.stderr()
        finally:
            sub.close()
            coll.kill()
        res = subprocess.run([sys.executable, "-m", "collector.collector", "--container", "no-such-container"],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert res.returncode == 2 and "no running container has this id or name" in res.stderr
    finally:
        inside.kill()
        outside.kill()
        group.remove()


def test_counts_rows_add_up_with_bytes_moved_errors_and_latency(tmp_path, bpftrace_bin):
    (tmp_path / "five").write_bytes(b"12345")
    child = Script("""
        fd = os.open("five", os.O_RDONLY)
        wfd = os.open("/dev/null", os.O_WRONLY)
        """, """
        for _ in range(40):
            os.write(wfd, b"y" * 100)        # 40 writes, 4000 bytes
        os.read(fd, 1 << 16)                 # 5 bytes
        os.read(fd, 1 << 16)                 # 0 bytes
        for _ in range(3):
            try:
                os.read(999, 10)             # 3 errors (EBADF)
            except OSError:
                pass
        """, tmp_path)
    # latency measured (an entry probe) with bpftrace 0.17, not (exit only) with 0.18+: both programs run
    version = subprocess.run([bpftrace_bin, "--version"], capture_output=True, text=True).stdout
    latency = not parse(version).at_least(0, 18)
    coll = CollectorProcess(tmp_path, "--mode", "counts", "--interval", "0.25", "--pid", str(child.pid),
                            "--bpftrace", bpftrace_bin, *(["--latency"] if latency else []))
    sub = StreamReader(coll.endpoint, ("counts", "status"))
    try:
        sub.wait_status()
        child.run()
        totals: dict = {}
        quiet = 0
        for msg in sub.messages(15):
            if msg.topic != "counts":
                continue
            rows = [r for r in msg.payload["rows"] if r["pid"] == child.pid]
            quiet = 0 if rows else quiet + 1
            for r in rows:
                t = totals.setdefault(r["syscall"], Counter())
                t.update({k: r[k] for k in ("calls", "bytes", "errors", "lat_ns_sum") if k in r})
                assert ("lat_ns_sum" in r) == latency, r
            if totals and quiet >= 3:
                break
        # the interpreter's own start-up reads came before "go"; from then on only these calls
        assert totals["write"]["calls"] == 40 and totals["write"]["bytes"] == 4000 and totals["write"]["errors"] == 0
        assert totals["read"]["errors"] == 3 and totals["read"]["bytes"] >= 5
        assert all(t["lat_ns_sum"] > 0 for t in totals.values()) if latency else True
    finally:
        child.kill()
        sub.close()
        coll.kill()


def _rate(sub: StreamReader, seconds: float) -> tuple[float, list[dict]]:
    """Events per second published by the collector (from its status), and the events seen meanwhile.

    Starts at the first status sent after this call: what queued up before it is skipped."""
    since = time.time_ns()
    first = sub.wait_status()
    while first["ts_ns"] < since:
        first = sub.wait_status()
    seen: list[dict] = []
    last = first
    for msg in sub.messages(seconds + 1.5):
        seen += msg.events
        if msg.topic == "status":
            last = msg.payload
            if last["uptime_s"] - first["uptime_s"] >= seconds:
                break
    return (last["events_total"] - first["events_total"]) / max(last["uptime_s"] - first["uptime_s"], 0.1), seen


def test_consumers_share_of_an_idle_stream_is_small(tmp_path, prereqs):
    """A host-wide collector with the API, a tail.py and this test's reader attached: their ZeroMQ
    signalling is left out (none of it is published), and what of them stays in the stream (tail's
    output, about one write a second) is at most 5% of it, or on a nearly silent host at most 1.5
    events a second."""
    coll = CollectorProcess(tmp_path, "--echo-rate", "0")
    with ApiProcess(tmp_path / "ips.sqlite3", collector=coll.endpoint) as api:
        tail = subprocess.Popen([sys.executable, str(ROOT / "subscribers" / "tail.py"), "-e", coll.endpoint],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        sub = StreamReader(coll.endpoint)
        consumers = {api.proc.pid, tail.pid, os.getpid()}
        try:
            deadline = time.monotonic() + 20
            while True:                        # the announces are verified (and their eventfds learned)
                st = sub.wait_status()
                verified = {e["pid"]: e for e in st["excluded"] if e["kind"] == "subscriber"}
                if consumers <= set(verified) and all(verified[p]["what"] for p in consumers):
                    break
                assert time.monotonic() < deadline, (consumers, st["excluded"])
            time.sleep(2)
            rate, seen = _rate(sub, 10)
            theirs = [e for e in seen if e["pid"] in consumers]
            zmq_fds = {(p, int(w.split(":")[1])) for p, e in verified.items() for w in e["what"]
                       if w.startswith("eventfd:")}
            signalling = [e for e in theirs if (e["pid"], e["fd"]) in zmq_fds]
            assert seen and not signalling, f"consumers' ZeroMQ signalling was published: {signalling[:3]}"
            # tail writes a line per message it gets, about one a second here: on a stream so idle
            # (CI saw 16 events/s) that this is over 5%, it must stay under 1.5 a second; a feedback
            # loop would break both bounds by far
            share = len(theirs) / len(seen)
            assert share <= 0.05 or len(theirs) <= 1.5 * 10, (
                f"consumers made {len(theirs)} of {len(seen)} events ({share:.1%}) in 10 s",
                Counter((e["pid"], e["comm"], e["syscall"], e["fd"]) for e in theirs))
            assert "verified: its ZeroMQ eventfd signalling" in coll.stderr()
        finally:
            sub.close()
            tail.terminate()
            tail.wait(10)
    coll.kill()


def test_two_collectors_do_not_feed_each_other(tmp_path, prereqs):
    a = CollectorProcess(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path, "--echo-rate", "0")
    sub = StreamReader(a.endpoint)
    try:
        alone, _ = _rate(sub, 4)
        (tmp_path / "b").mkdir()
        b = CollectorProcess(tmp_path / "b", "--echo-rate", "0")
        try:
            b_pids = set(b.excluded_pids())
            # A's /proc scan finds B (every 2 s): wait for a status that lists B (loaded machine: 20 s)
            deadline = time.monotonic() + 20
            kinds = {e["pid"]: e for e in sub.wait_status()["excluded"]}
            while not b_pids <= set(kinds) and time.monotonic() < deadline:
                kinds = {e["pid"]: e for e in sub.wait_status()["excluded"]}
            assert b_pids <= set(kinds), (b_pids, kinds)
            assert {kinds[p]["kind"] for p in b_pids} == {"peer"} and all(kinds[p]["what"] == ["all"] for p in b_pids)
            together, seen = _rate(sub, 4)
            leaked = Counter((e["pid"], e["comm"]) for e in seen if e["pid"] in b_pids)
            assert not leaked, ("A published B's own I/O", leaked, b_pids, a.stderr()[-2000:])
            assert b_pids <= set(sub.statuses[-1]["excluded_pids"])
            # the bound, with 300 events/s of slack for a machine that is not idle
            assert together <= 1.5 * alone + 300, (alone, together)
        finally:
            b.kill()
    finally:
        sub.close()
        a.kill()
