"""Process plumbing for the tests and the benchmarks: free ports, CPU time and memory from /proc,
start/stop helpers, die-with-parent, waiting for a condition.

CPU time is read from /proc/<pid>/stat (utime + stime of the whole thread group) so the
collector and bpftrace are measured the same way, in the same run.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn for the processes tests and benchmarks start: SIGTERM when the process that started
    them dies (even by a crash or SIGKILL), so a collector never outlives the run that started it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def wait_for(predicate: Callable[[], T], timeout: float = 10, interval: float = 0.05, what: str = "condition") -> T:
    """The first true value of ``predicate()``, polled every ``interval`` s; AssertionError naming
    ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0.0 if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()  # the comm field may hold spaces: skip past ')'
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int, gone: int | None = None) -> int:
    """Resident set size of ``pid`` in KiB. A process that is gone (or a zombie, which has no
    VmRSS) gives ``gone``, or raises ProcessLookupError when ``gone`` is None: a memory bound
    must not pass because the process died."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    if gone is None:
        raise ProcessLookupError(f"process {pid} is gone: no resident set size to read")
    return gone


def comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads')."""
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            kids.extend(int(k) for k in text)
    except OSError:
        pass
    return kids


def descendant_named(pid: int, name: str, timeout: float = 10.0) -> int | None:
    """The first descendant of ``pid`` whose comm is ``name`` (waits up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        todo = children(pid)
        while todo:
            kid = todo.pop()
            if comm_of(kid) == name:
                return kid
            todo.extend(children(kid))
        time.sleep(0.05)
    return None


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 10.0) -> int:
    """Ask ``proc`` to stop with ``sig``, then SIGTERM, then SIGKILL; returns its exit status."""
    for s, wait in ((sig, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        if proc.poll() is not None:
            break
        try:
            proc.send_signal(s)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def terminate_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM ``pid`` (not our child), SIGKILL after ``timeout``; gone already is fine."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or comm_of(pid) == "":
                return
            time.sleep(0.05)


class Gated:
    """A command started now but held before exec until ``release()``.

    The pid is known before the command makes its first syscall, so a subscriber can
    filter on it from the very first event. The holder is a tiny Python stub that reads
    one byte from a pipe and then execs the command in the same process (same pid, and
    the comm becomes the command's own name).
    """

    # "@PID@" in argv becomes the pid (e.g. bpftrace's own pid, to exclude it in its predicate).
    STUB = ("import os,sys; os.read(int(sys.argv[1]),1); "
            "a=[str(os.getpid()) if x=='@PID@' else x for x in sys.argv[2:]]; os.execvp(a[0], a)")

    def __init__(self, argv: list[str], **popen_kw):
        self.argv = list(argv)
        rfd, self._wfd = os.pipe()
        popen_kw.setdefault("stdin", subprocess.DEVNULL)
        popen_kw.setdefault("stdout", subprocess.DEVNULL)
        popen_kw.setdefault("stderr", subprocess.DEVNULL)
        self.proc = subprocess.Popen([sys.executable, "-c", self.STUB, str(rfd), *argv],
                                     pass_fds=(rfd,), **popen_kw)
        os.close(rfd)
        self.pid = self.proc.pid
        self.started = self.started_mono = 0.0

    def release(self) -> None:
        self.started = time.perf_counter()
        self.started_mono = time.monotonic()  # comparable with BenchSubscriber.last_arrival
        os.write(self._wfd, b"g")
        os.close(self._wfd)

    def poll(self) -> bool:
        """True once the command has exited (reaps it without blocking)."""
        if self.proc.returncode is None:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
            if pid == 0:
                return False
            self._reaped(status, rusage)
        return True

    def wait(self) -> float:
        """Wait for exit; returns the seconds from release() to exit. Raises on a non-zero exit.

        A blocking wait4() (Popen.wait with a timeout polls in steps of up to 50 ms, which
        would quantise the timings); the child's own CPU time is kept in ``rusage``."""
        if self.proc.returncode is None:
            _, status, rusage = os.wait4(self.pid, 0)
            self._reaped(status, rusage)
        if self.proc.returncode != 0:
            raise RuntimeError(f"workload {self.argv} exited with status {self.proc.returncode}")
        return self.elapsed

    def _reaped(self, status: int, rusage) -> None:
        self.elapsed = time.perf_counter() - self.started
        self.rusage = rusage
        self.proc.returncode = os.waitstatus_to_exitcode(status)
