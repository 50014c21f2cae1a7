"""The syscall workloads the benchmarks trace, and a paced writer process.

* ``dd_argv(n)``: ``dd if=/dev/zero of=/dev/null bs=1 count=n`` makes exactly n reads of fd 0
  and n writes of fd 1, one byte each (plus a few start-up reads and stderr writes of
  other fds/sizes, which a subscriber tells apart with ``is_dd_event``).
* ``copy_argv(src, dst)``: a realistic copy of a file with 4 KiB buffers (dd bs=4096).
* the writer (``python3 -m harness.workloads writer ...``): one process writing to /dev/null at a
  steady rate; write number i asks for ``BASE_COUNT + i`` bytes, so every event is
  identifiable, and it records ``time.time_ns()`` just before each write (for latency).
* ``Child``: a process whose worker thread renames itself and makes a known list of writes and
  reads, each with its own byte count (the collector tests compare it call for call).
* ``build_rounds(dir)``: harness/rounds.c, a static binary that makes a known round of reads and
  writes per SIGUSR1 and nothing else, not even at start (a container's only process).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from array import array
from pathlib import Path

from harness.procs import die_with_parent

# Byte counts of the writer's writes start here: nothing else on a host asks for exactly these.
BASE_COUNT = 700_000


ROUNDS_C = Path(__file__).resolve().parent / "rounds.c"


def rounds_missing() -> str | None:
    """What building harness/rounds.c needs, as what to do about it; None when nothing is missing."""
    import shutil
    if shutil.which("gcc") is None or not any(Path(d, "libc.a").exists() for d in
                                              ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")):
        return "install gcc and libc6-dev (a static libc): apt-get install -y gcc libc6-dev (scripts/setup-host.sh)"
    return None


def build_rounds(directory: Path) -> Path:
    """harness/rounds.c built statically into ``directory``/rounds (it runs in any container)."""
    out = directory / "rounds"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(out), str(ROUNDS_C)], check=True)
    return out


def dd_argv(n: int) -> list[str]:
    return ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={n}"]


def dd_events(n: int) -> int:
    """Events made by ``dd_argv(n)`` that ``is_dd_event`` matches."""
    return 2 * n


def is_dd_event(ev: dict) -> bool:
    """One of dd's n one-byte reads of fd 0 / writes of fd 1 (not its start-up or stderr calls)."""
    return ev["count"] == 1 and ((ev["syscall"] == "read" and ev["fd"] == 0)
                                 or (ev["syscall"] == "write" and ev["fd"] == 1))


def copy_argv(src: Path, dst: Path) -> list[str]:
    return ["dd", f"if={src}", f"of={dst}", "bs=4096"]


def copy_events(size_bytes: int) -> int:
    """Reads and writes of one 4 KiB-buffer copy of a ``size_bytes`` file (+1: the final empty read)."""
    blocks = -(-size_bytes // 4096)
    return 2 * blocks + 1


def make_file(path: Path, size_bytes: int) -> Path:
    """A file of ``size_bytes`` (random-ish content), reused when it already has that size."""
    if not path.exists() or path.stat().st_size != size_bytes:
        chunk = os.urandom(1 << 20)
        with open(path, "wb") as f:
            left = size_bytes
            while left > 0:
                f.write(chunk[:min(left, len(chunk))])
                left -= len(chunk)
    with open(path, "rb") as f:  # warm the page cache: measure syscalls, not the disk
        while f.read(1 << 22):
            pass
    return path


def writer_argv(rate: int, seconds: float, out: Path) -> list[str]:
    return [sys.executable, "-m", "harness.workloads", "writer", "--rate", str(rate),
            "--seconds", str(seconds), "--out", str(out)]


def is_writer_event(ev: dict) -> bool:
    return ev["syscall"] == "write" and ev["count"] >= BASE_COUNT


def read_send_times(out: Path) -> array:
    """The writer's send times (time.time_ns() before write i) as array('q')."""
    times = array("q")
    times.frombytes(out.read_bytes())
    return times


def _writer(rate: int, seconds: float, out: Path) -> None:
    total = int(rate * seconds)
    buf = memoryview(bytes(BASE_COUNT + total))
    sent = array("q", bytes(8 * total))
    fd = os.open("/dev/null", os.O_WRONLY)
    period = 1.0 / rate
    start = time.perf_counter()
    for i in range(total):
        due = start + i * period
        delay = due - time.perf_counter()
        if delay > 0.0005:  # sleep in ~1 ms steps; finer pacing would only burn CPU
            time.sleep(delay)
        sent[i] = time.time_ns()
        os.write(fd, buf[:BASE_COUNT + i])
    os.close(fd)
    data = memoryview(sent.tobytes())
    with open(out, "wb", buffering=0) as f:  # in writes far below BASE_COUNT: not mistaken for the load
        for i in range(0, len(data), 1 << 16):
            f.write(data[i:i + (1 << 16)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m harness.workloads",
                                 description="Benchmark workload helpers (used by bench.run).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("writer", help="write to /dev/null at a steady rate, recording send times")
    w.add_argument("--rate", type=int, required=True, help="writes per second")
    w.add_argument("--seconds", type=float, required=True, help="how long to write")
    w.add_argument("--out", type=Path, required=True, help="file for the send times (int64 ns)")
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        ap.error("--rate and --seconds must be positive")
    _writer(args.rate, args.seconds, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# The child: a worker thread renames itself (prctl PR_SET_NAME) to each given name in
# turn and, per name, makes WRITES writes to /dev/null and READS reads from /dev/zero with
# distinctive byte counts (BASE + k): no other call of the process can have such a count.
CHILD = r"""
import ctypes, json, os, sys, threading
names = [bytes.fromhex(h) for h in sys.argv[1].split(",")]
base, writes, reads = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
wfd = os.open("/dev/null", os.O_WRONLY)
rfd = os.open("/dev/zero", os.O_RDONLY)
go = threading.Event()
info = {}
def work():
    info["tid"] = threading.get_native_id()
    ready.set()
    go.wait()
    k = 0
    for name in names:
        libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0)
        for _ in range(writes):
            os.write(wfd, b"x" * (base + k)); k += 1
        for _ in range(reads):
            os.read(rfd, base + k); k += 1
ready = threading.Event()
t = threading.Thread(target=work); t.start(); ready.wait()
print(json.dumps({"pid": os.getpid(), "tid": info["tid"], "wfd": wfd, "rfd": rfd, "uid": os.getuid()}), flush=True)
sys.stdin.readline()
go.set(); t.join()
"""


class Child:
    """A child making ``writes`` + ``reads`` calls per name; ``run()`` does them and waits."""

    def __init__(self, names: list[bytes], base: int, writes: int, reads: int):
        self.names, self.base, self.writes, self.reads = names, base, writes, reads
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, ",".join(n.hex() for n in names), str(base), str(writes), str(reads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None     # PIPE
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.info = json.loads(self.stdout.readline())
        self.pid = self.info["pid"]

    def run(self) -> None:
        self.started_ns = time.time_ns()
        self.stdin.write("go\n")
        self.stdin.flush()
        assert self.proc.wait(30) == 0
        self.finished_ns = time.time_ns()

    def expected(self) -> list[tuple[str, int, int, str]]:
        """(syscall, fd, count, comm) of every call the child makes, in order."""
        out, k = [], 0
        for name in self.names:
            comm = name[:15].decode("utf-8", "backslashreplace")
            for _ in range(self.writes):
                out.append(("write", self.info["wfd"], self.base + k, comm))
                k += 1
            for _ in range(self.reads):
                out.append(("read", self.info["rfd"], self.base + k, comm))
                k += 1
        return out

    def counts(self) -> set[int]:
        n = len(self.names) * (self.writes + self.reads)
        return set(range(self.base, self.base + n))


# A child that sets up, prints {"pid": ...} (plus what `prepare` adds), waits for "go", then runs `body`.
PRELUDE = """
import ctypes, json, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
info = {"pid": os.getpid()}
"""


class Script:
    """A Python child that runs ``prepare``, prints ``info`` (with its pid) as JSON, waits for "go"
    (``run``), then runs ``body``: its pid is known before it makes the calls a test traces."""

    def __init__(self, prepare: str, body: str, tmp: Path):
        code = PRELUDE + textwrap.dedent(prepare) + "\nprint(json.dumps(info), flush=True)\nsys.stdin.readline()\n" \
            + textwrap.dedent(body)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=tmp)
        assert self.proc.stdin is not None and self.proc.stdout is not None     # PIPE
        self.stdin = self.proc.stdin
        self.info = json.loads(self.proc.stdout.readline())
        self.pid = self.info["pid"]

    def run(self, timeout: float = 30) -> None:
        self.stdin.write("go\n")
        self.stdin.flush()
        assert self.proc.wait(timeout) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
# Writes COUNT bytes to /dev/null N times per round; one round each time a line arrives on stdin.
ROUND_WRITER = r"""
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
fd = os.open("/dev/null", os.O_WRONLY)
print(os.getpid(), flush=True)
for line in sys.stdin:
    for _ in range(int(sys.argv[2])):
        os.write(fd, b"w" * int(sys.argv[3]))
    print("round", flush=True)
"""


class Writer:
    """A process named ``name`` writing ``per_round`` times ``size`` bytes to /dev/null per ``round()``."""

    def __init__(self, name: str, per_round: int, size: int):
        self.proc = subprocess.Popen([sys.executable, "-c", ROUND_WRITER, name, str(per_round), str(size)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=die_with_parent)
        assert self.proc.stdin is not None and self.proc.stdout is not None     # PIPE
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.pid = int(self.stdout.readline())
        self.rounds = 0

    def round(self) -> None:
        self.stdin.write("go\n")
        self.stdin.flush()
        assert self.stdout.readline().strip() == "round"
        self.rounds += 1

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


# Reads of known latency and failures of known errno (issue 25's tests): a pipe fed by a thread after
# each delay, then reads of a closed fd (EBADF) and of a non-blocking empty pipe (EAGAIN). Prints its
# pid, waits for a line on stdin ("go": the tracer is ready), then each call's own time in ns.
PACED_READS = r"""
import errno, fcntl, json, os, sys, threading, time
delays, fails = json.loads(sys.argv[1]), int(sys.argv[2])
r, w = os.pipe()
empty_r, _empty_w = os.pipe()
fcntl.fcntl(empty_r, fcntl.F_SETFL, fcntl.fcntl(empty_r, fcntl.F_GETFL) | os.O_NONBLOCK)
closed = os.dup(w)
os.close(closed)
print(json.dumps({"pid": os.getpid()}), flush=True)
sys.stdin.readline()
def feed():
    for d in delays:
        if d:
            time.sleep(d)
        os.write(w, b"x")
threading.Thread(target=feed).start()
reads, failed, errors = [], [], []
for _ in delays:
    t0 = time.perf_counter_ns()
    os.read(r, 1)
    reads.append(time.perf_counter_ns() - t0)
for fd in [closed] * fails + [empty_r] * fails:
    t0 = time.perf_counter_ns()
    try:
        os.read(fd, 1)
    except OSError as exc:
        failed.append(time.perf_counter_ns() - t0)
        errors.append(exc.errno)
assert errors == [errno.EBADF] * fails + [errno.EAGAIN] * fails, errors
print(json.dumps({"reads": reads, "failed": failed}), flush=True)
"""


class PacedReads:
    """PACED_READS as a child: ``pid`` once started; ``run()`` lets it go and returns its own timings
    ({"reads": [ns per read], "failed": [ns per failing read]}); ``kill()`` in a finally."""

    def __init__(self, delays: list[float], fails: int):
        self.proc = subprocess.Popen([sys.executable, "-c", PACED_READS, json.dumps(delays), str(fails)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=die_with_parent)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pid = json.loads(self.proc.stdout.readline())["pid"]

    def run(self, timeout: float = 30) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        took = json.loads(self.proc.stdout.readline())
        assert self.proc.wait(timeout) == 0
        return took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def nearest_rank(values: list[int], q: float) -> int:
    """The ``q`` quantile of ``values`` by the nearest-rank method (a value that occurred)."""
    ranked = sorted(values)
    return ranked[max(1, math.ceil(q * len(ranked))) - 1]
