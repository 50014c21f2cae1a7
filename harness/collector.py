"""The collector as a process: `python -m collector.collector` on a free port, a strict subscriber
on its stream, and the check that a workload's calls (harness.workloads.Child) all arrived."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import zmq

from harness import ROOT, procs
from harness.procs import die_with_parent, free_port
from harness.workloads import Child
from syswatch.shared.protocol import decode
from syswatch.shared.zmqsock import make_subscriber


class CollectorProcess:
    """``python -m collector.collector`` on a free port, output in files under ``tmp``."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None, wait: bool = True,
                 bind: str | None = None, wrap: list[str] | None = None, root: Path | None = None):
        """``wrap``: a command prefix, e.g. harness.unit.setpriv(caps) for the unit's capability set.
        ``root``: the source tree whose collector runs (default: this checkout; the bench's v2)."""
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        bind = bind or self.endpoint
        self.out_path, self.err_path = tmp / "collector.out", tmp / "collector.err"
        self.proc = subprocess.Popen(
            [*(wrap or []), sys.executable, "-m", "collector.collector", "--bind", bind, *args],
            cwd=root or ROOT, stdout=open(self.out_path, "w"), stderr=open(self.err_path, "w"),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, preexec_fn=die_with_parent)
        if wait:
            self.wait_monitoring()

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_monitoring(self, timeout: float = 60) -> None:
        # SYSWATCH_TEST_SLOWDOWN: set in the emulated kprobe VM (scripts/kernel-vm-guest.sh), where
        # bpftrace's compile of the program takes 10-60 s instead of ~1 s
        deadline = time.monotonic() + timeout * float(os.environ.get("SYSWATCH_TEST_SLOWDOWN", "1"))
        while "Monitoring sys_read and sys_write calls..." not in self.stdout():
            assert self.proc.poll() is None, f"collector exited {self.proc.returncode}: {self.stderr()}"
            assert time.monotonic() < deadline, f"collector did not start: {self.stderr()}"
            time.sleep(0.05)

    def excluded_pids(self) -> list[int]:
        return [int(line.split(":")[1]) for line in self.stdout().splitlines()
                if line.startswith("Skipping self PID:")]

    def bpftrace_pid(self) -> int:
        pids = [p for p in self.excluded_pids() if p != self.proc.pid]
        assert len(pids) == 1, self.stdout()
        return pids[0]

    def stop(self, sig=signal.SIGTERM, timeout: float = 2.0) -> tuple[int, float]:
        """(exit status, seconds it took) after ``sig``."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"collector still running {timeout} s after {sig!r}: {self.stderr()}")
        return code, time.monotonic() - start

    def kill(self) -> None:
        """Teardown: SIGTERM (bpftrace detaches in order), SIGKILL only if that hangs."""
        procs.stop(self.proc, signal.SIGTERM, 5)


class StreamReader:
    """A real SUB socket on the collector, decoding strictly."""

    def __init__(self, endpoint: str, topics=("",), curve_client=None, **sockopts):
        self.ctx = zmq.Context()
        self.sock = make_subscriber(self.ctx, endpoint, topics, curve_client=curve_client, **sockopts)
        self.statuses: list[dict] = []
        self.bytes_received = 0              # frames' bytes, as they came over the wire

    def messages(self, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                frames = self.sock.recv_multipart()
                self.bytes_received += sum(len(f) for f in frames)
                msg = decode(frames)
                if msg.topic == "status":
                    self.statuses.append(msg.payload)
                yield msg

    def wait_status(self, timeout: float = 10) -> dict:
        for msg in self.messages(timeout):
            if msg.topic == "status":
                return msg.payload
        raise AssertionError("no status message from the collector")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def collect_child_events(sub: StreamReader, child: Child, timeout: float = 20) -> tuple[list[dict], list[dict], int]:
    """Runs the child; returns (its marked events, every event seen, lost_total growth meanwhile).

    Stops when every expected event arrived (plus 0.3 s to catch duplicates), or, on a machine
    so busy that bpftrace reports lost events, 1.5 s after the child finished: then the
    caller checks that whatever is missing is covered by the counted losses.
    """
    lost_before = sub.wait_status()["lost_total"]
    child.run()
    finished = time.monotonic()
    want, counts = len(child.expected()), child.counts()
    mine, seen = [], []
    end = None
    for msg in sub.messages(timeout):
        for ev in msg.events:
            seen.append(ev)
            if ev["pid"] == child.pid and ev["count"] in counts:
                mine.append(ev)
        now = time.monotonic()
        if end is None and len(mine) >= want:
            end = now + 0.3
        if end is None and msg.topic == "status" and msg.payload["lost_total"] > lost_before \
                and now - finished > 1.5:
            end = now
        if end is not None and now >= end:
            break
    lost = (sub.statuses[-1]["lost_total"] if sub.statuses else lost_before) - lost_before
    return mine, seen, lost


def assert_delivered(mine: list[dict], child: Child, lost: int) -> None:
    """Each call arrives at most once, with its own fields; a missing one only if losses were counted."""
    got = Counter((e["syscall"], e["fd"], e["count"], e["comm"]) for e in mine)
    want = Counter(child.expected())
    assert not got - want, f"unexpected or duplicated events: {got - want}"
    missing = sum((want - got).values())
    assert missing <= lost, f"{missing} events missing but only {lost} counted as lost"
    if lost == 0:
        assert got == want


@contextmanager
def events_and_counts(workdir: Path, *args: str, interval: str = "0.5"):
    """An events and a counts collector with the same ``args`` (in workdir/ev and workdir/cn), each with a
    reader past its first status: yields (events reader, counts reader, the events collector's first
    status); both collectors and readers are stopped on the way out, also when the test fails."""
    (workdir / "ev").mkdir()
    (workdir / "cn").mkdir()
    ev_coll = CollectorProcess(workdir / "ev", *args)
    cn_coll = CollectorProcess(workdir / "cn", "--mode", "counts", "--interval", interval, *args)
    ev_sub = StreamReader(ev_coll.endpoint, ("syscall.", "status"))
    cn_sub = StreamReader(cn_coll.endpoint, ("counts", "status"))
    try:
        status = ev_sub.wait_status()
        cn_sub.wait_status()
        yield ev_sub, cn_sub, status
    finally:
        ev_sub.close()
        cn_sub.close()
        ev_coll.kill()
        cn_coll.kill()
