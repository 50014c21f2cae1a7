"""The syscall workloads the benchmarks trace, and a paced writer process.

* ``dd_argv(n)``: ``dd if=/dev/zero of=/dev/null bs=1 count=n`` makes exactly n reads of fd 0
  and n writes of fd 1, one byte each (plus a few start-up reads and stderr writes of
  other fds/sizes, which a subscriber tells apart with ``is_dd_event``).
* ``copy_argv(src, dst)``: a realistic copy of a file with 4 KiB buffers (dd bs=4096).
* the writer (``python3 -m bench.workloads writer ...``): one process writing to /dev/null at a
  steady rate; write number i asks for ``BASE_COUNT + i`` bytes, so every event is
  identifiable, and it records ``time.time_ns()`` just before each write (for latency).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from array import array
from pathlib import Path

# Byte counts of the writer's writes start here: nothing else on a host asks for exactly these.
BASE_COUNT = 700_000


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
    return [sys.executable, "-m", "bench.workloads", "writer", "--rate", str(rate),
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
    ap = argparse.ArgumentParser(prog="python3 -m bench.workloads",
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
