"""Saturation (issue 16): a multi-process run with exact accounting, and where the ceiling is.

multi-process  One container (syswatch-api's image: python3, tar, gzip, coreutils) runs, all at
               once, several ``dd bs=1`` writers and a mixed real workload (tar | gzip of a
               directory tree, cp -r, a python sqlite3 job, cat). The collector traces only that
               container (``--container``, filtered in the kernel by cgroup), so each of its
               counters is about the workload alone. The truth comes from a second, lossless
               bpftrace that count()s the container's completed read/write calls in a map:
               delivered (events_total) + lost + dropped must equal that count exactly.
ceiling        The stages of events mode, each alone, at saturation on dd bs=1: bpftrace 0.23 running
               the collector's program into a file (formatting), into a pipe drained by a reader
               (formatting + the pipe), the collector's parser on the captured output, and
               ZeroMQ publishing those batches to a subscriber.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import zmq

from bench import compose, tracers
from bench.plan import Plan
from harness import procs, workloads
from harness.bpftrace import TRIXIE_FIX, trixie_bpftrace

WORK_IMAGE = "syswatch-api:latest"


def mixed_script(writers: int, dd_n: int) -> str:
    """The container's workload: ``writers`` dd bs=1 and the mixed jobs, in parallel."""
    sql = ("import sqlite3; db = sqlite3.connect('/tmp/w.db'); db.execute('create table t (a, b)'); "
           "[db.execute('insert into t values (?, ?)', (i, 'x' * 100)) or db.commit() for i in range(2000)]; "
           "print(db.execute('select count(*) from t').fetchone()[0])")
    jobs = [f"dd if=/dev/zero of=/dev/null bs=1 count={dd_n} 2>/dev/null &" for _ in range(writers)]
    jobs += ["tar cf - /usr/lib/python3.11 2>/dev/null | gzip -1 > /dev/null &",
             "cp -r /usr/lib/python3.11 /tmp/copy &",
             f'python3 -c "{sql}" > /dev/null &',
             "find /usr/share -type f -exec cat {} + > /dev/null 2>&1 &"]
    return "cd /tmp; " + " ".join(jobs) + " wait"


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def cgroup_id(pid: int) -> int:
    """The cgroup v2 id (the directory's inode) of process ``pid``, as bpftrace's ``cgroup``."""
    from syswatch.collector.containers import find_cgroup2_root  # hybrid hosts: /sys/fs/cgroup/unified
    rel = next(line.split("::", 1)[1] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
               if line.startswith("0::"))
    return os.stat(f"{find_cgroup2_root()}{rel}").st_ino


def truth_program(cg: int) -> str:
    """Read/write calls that returned in cgroup ``cg``, counted at their exit as the collector's events
    are (issue 24: one probe per call, at the exit). Counting at the entry missed a call that began
    before its process joined the cgroup (docker exec's runc init reads its exec FIFO while it moves)."""
    leave = "tracepoint:syscalls:sys_exit_read,tracepoint:syscalls:sys_exit_write"
    return f'BEGIN {{ printf("ready\\n"); }} {leave} /cgroup == {cg}/ {{ @n = count(); }}'


def parse_count(text: str) -> int:
    m = re.search(r"^@n: (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


class Truth:
    """The lossless count: host bpftrace with the program above, stopped with SIGINT (prints @n)."""

    def __init__(self, cg: int):
        self.proc = subprocess.Popen(["bpftrace", "-e", truth_program(cg)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        for _ in range(5):          # "Attaching N probes..." comes first
            line = self.proc.stdout.readline()
            if line.strip() == "ready":
                return
            if not line:
                break
        procs.stop(self.proc)
        raise RuntimeError("the counting bpftrace did not start")

    def stop(self) -> int:
        procs.stop(self.proc)
        return parse_count(self.proc.stdout.read())


def multi_process_run(make_tracer: Callable[[str], tracers.Tracer], writers: int, dd_n: int) -> dict:
    name = f"syswatch-bench-work-{uuid.uuid4().hex[:8]}"
    # no health check: Docker would exec it in the container now and then, outside the workload
    run = _docker("run", "-d", "--rm", "--name", name, "--no-healthcheck", "--entrypoint", "sleep", WORK_IMAGE,
                  "infinity")
    if run.returncode != 0:
        raise RuntimeError(f"cannot start the workload container: {run.stderr.strip()}")
    try:
        pid = int(_docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())
        # sleep's own start-up reads (the dynamic loader) may still be running: before any tracer
        deadline = time.monotonic() + 10
        while procs.comm_of(pid) != "sleep" or "S" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.5)
        truth = Truth(cgroup_id(pid))
        try:
            with make_tracer(name) as tracer:
                sub = tracer.subscriber
                st0 = dict(sub.status)
                t0 = time.monotonic()
                job = _docker("exec", name, "sh", "-c", mixed_script(writers, dd_n), timeout=900)
                elapsed = time.monotonic() - t0
                made = None
                # drained: counters still for 2 s (bpftrace 0.23 reports losses within ~100 ms)
                last, since, st = None, time.monotonic(), sub.status
                while time.monotonic() - since < 2.5 and time.monotonic() - t0 < elapsed + 120:
                    st = sub.status
                    now = (st["events_total"], st["lost_total"], st["dropped_total"], sub.events_received)
                    if now != last:
                        last, since = now, time.monotonic()
                    time.sleep(0.1)
                status = {k: st[k] for k in ("bpftrace", "output", "overload", "stale_cpus") if k in st}
        finally:
            made = truth.stop()
    finally:
        _docker("rm", "-f", name)
    # the collector's whole life, which the counting bpftrace's spans: the container is idle
    # (sleep) outside the workload, so every one of its calls in that time is the workload's
    delivered, lost, dropped = st["events_total"], st["lost_total"], st["dropped_total"]
    return {"tracer": tracer.name, "writers": writers, "dd_n": dd_n, "made": made, "delivered": delivered,
            "lost": lost, "dropped": dropped, "received": sub.events_received,
            "before_workload": st0["events_total"] + st0["lost_total"],
            "exact": delivered + lost + dropped == made, "elapsed_s": elapsed,
            "delivered_rate": delivered / elapsed if elapsed else None, "job_status": job.returncode,
            "status": status}


# -- the ceiling, stage by stage ------------------------------------------------------------------
def _collector_program() -> str:
    from syswatch.collector import kernel, program
    from syswatch.collector.bpfversion import parse
    return program.render("events", kicks=False, kernel=kernel.detect(), version=parse("bpftrace v0.23.2"))


# The rate is taken over dd's run from WINDOW_OPENS_S after its start (bpftrace's buffer is full by
# then) to its end. A fast machine can finish the quick plan's dd before that window opens (CI:
# printed_rate None, and the log line's format crashed the quick run), so a window shorter than
# MIN_WINDOW_S is measured again with GROWTH times more calls, at most WINDOW_TRIES runs in all.
WINDOW_OPENS_S = 0.3
MIN_WINDOW_S = 0.5
GROWTH = 4
WINDOW_TRIES = 4

Sample = tuple[float, int]     # (time.monotonic(), bytes printed so far)


def measure_window(run_dd: Callable[[int], tuple[Sample | None, Sample, float]], dd_n: int) -> dict:
    """Run ``run_dd(n)`` (dd with n calls each way; returns the window's start sample, None when
    dd ended before the window opened, its end sample and dd's elapsed seconds) until the window
    lasts MIN_WINDOW_S, growing n. The result names every run; ``window`` is the last one's."""
    n, runs = dd_n, []
    for _ in range(WINDOW_TRIES):
        start, end, elapsed = run_dd(n)
        runs.append(n)
        if start is not None and end[0] - start[0] >= MIN_WINDOW_S:
            break
        n *= GROWTH
    return {"dd_runs": runs, "dd_calls": 2 * sum(runs), "elapsed_s": elapsed, "window": (start, end)}


def window_rate(window: tuple[Sample | None, Sample], per_line: float) -> tuple[float | None, float]:
    """(lines/s, seconds) over the window; the rate is None when it is empty (dd ended first)."""
    start, (t2, b2) = window
    if start is None or t2 <= start[0]:
        return None, 0.0
    t1, b1 = start
    return (b2 - b1) / per_line / (t2 - t1), t2 - t1


def rate_text(stage: dict, unit: str = "") -> str:
    """A stage's printed_rate for the log and the report: a number, or why there is none."""
    if stage["printed_rate"] is None:
        return (f"not measured (dd ended within {WINDOW_OPENS_S} s of its start in each of "
                f"{len(stage['dd_runs'])} runs, up to {stage['dd_runs'][-1]:,} calls)")
    return f"{stage['printed_rate']:,.0f}{unit}"


def bpftrace_alone(binary: str, dd_n: int, out: Path | None) -> dict:
    """bpftrace 0.23 with the collector's program, output to ``out`` (a file) or, when None, a pipe
    read by this process; dd bs=1 saturates it. The rate is lines printed per second over the
    middle of dd's run (see WINDOW_OPENS_S), when the ring buffer is full."""
    from syswatch.collector import program
    from syswatch.collector.bpfversion import detect
    env = {**os.environ, **program.env(detect(binary))}
    argv = program.command(binary, "events", _collector_program(), 1000)
    sink = open(out, "wb") if out else subprocess.PIPE
    bt = subprocess.Popen(argv, stdout=sink, stderr=subprocess.DEVNULL, env=env)
    counted = {"lines": 0, "bytes": 0}
    reader = None
    if out is None:
        def drain():
            for line in bt.stdout:
                counted["lines"] += 1
                counted["bytes"] += len(line)
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()

    def size() -> int:
        return out.stat().st_size if out else counted["bytes"]

    def run_dd(n: int) -> tuple[Sample | None, Sample, float]:
        gated = procs.Gated(workloads.dd_argv(n))
        done = threading.Event()
        timing: dict = {}

        def wait():
            try:
                timing["elapsed"] = gated.wait()
            except Exception as exc:    # noqa: BLE001 - raised below, in the caller's thread
                timing["error"] = exc
            timing["end"] = (time.monotonic(), size())
            done.set()
        gated.release()
        threading.Thread(target=wait, daemon=True).start()
        start = None if done.wait(WINDOW_OPENS_S) else (time.monotonic(), size())
        done.wait()
        if "error" in timing:
            raise timing["error"]
        return start, timing["end"], timing["elapsed"]
    try:
        deadline = time.monotonic() + 60
        while size() == 0:
            if time.monotonic() > deadline or bt.poll() is not None:
                raise RuntimeError("bpftrace (ceiling) did not start")
            time.sleep(0.05)
        time.sleep(0.5)
        measured = measure_window(run_dd, dd_n)
    finally:
        procs.stop(bt)
        if out:
            sink.close()
        if reader:
            reader.join(10)
    if out:
        data = out.read_bytes()
        if data.lstrip().startswith(b"{"):           # -f json (counts mode, and v2's events program)
            lines, total = data.count(b'"printf"'), len(data)
            lost = sum(int(n) for n in re.findall(rb'"lost_events", "data": \{"events": (\d+)\}', data))
        else:                                         # the events program's text lines (-B full, issue 24)
            lines, total = data.count(b"\n"), len(data)
            lost = sum(int(n) for n in re.findall(rb"Lost (\d+) events", data))
    else:
        lines, total, lost = counted["lines"], counted["bytes"], None
    per_line = total / lines if lines else 1
    rate, window_s = window_rate(measured.pop("window"), per_line)
    return {**measured, "printed": lines, "lost": lost, "bytes_per_line": per_line, "printed_rate": rate,
            "window_s": window_s}


def parser_alone(capture: Path) -> dict:
    """The collector's parser on captured bpftrace output, in the collector's 256 KiB reads."""
    from syswatch.collector.parser import Parser
    data = capture.read_bytes()
    p = Parser("events", ["read", "write"])
    chunk, partial, n, t0 = 256 << 10, b"", 0, time.perf_counter()
    batches = []
    for at in range(0, len(data), chunk):
        buf = partial + data[at:at + chunk]
        cut = buf.rfind(b"\n")
        partial = buf[cut + 1:]
        parsed = p.parse(buf[:cut])
        for syscall, events in parsed.events.items():
            n += len(events)
            if len(batches) < 2000:
                batches.append((syscall, events))
    secs = time.perf_counter() - t0
    return {"events": n, "seconds": secs, "rate": n / secs if secs else None, "batches": batches}


def zmq_alone(batches: list, repeat_to: int = 1_000_000) -> dict:
    """Those batches published over TCP loopback to one subscriber (PUB HWM as the collector's)."""
    from syswatch.shared.protocol import encode_event_batch, json_string, topic_for
    frames = [encode_event_batch(topic_for(s), json_string("bench"), ev) for s, ev in batches]
    sizes = [len(ev) for _, ev in batches]
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    pub.setsockopt(zmq.SNDHWM, 200)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(f"tcp://127.0.0.1:{port}")
    got = {"events": 0, "last": None}

    def receive():
        while True:
            try:
                msg = sub.recv_multipart()
            except zmq.ZMQError:
                return
            if msg[0] == b"end":
                return
            got["events"] += msg[1].count(b'"ts_ns"')
            got["last"] = time.perf_counter()
    time.sleep(0.3)
    pub.send_multipart([b"warm", b"{}"])
    time.sleep(0.3)
    t = threading.Thread(target=receive, daemon=True)
    t.start()
    sent, t0, dropped = 0, time.perf_counter(), 0
    while sent < repeat_to:
        for f, n in zip(frames, sizes):
            try:
                pub.send_multipart(f, zmq.NOBLOCK)
                sent += n
            except zmq.Again:
                dropped += n
    # PUB drops silently at its high-water mark, the end marker too: repeat it until it arrives
    deadline = time.monotonic() + 60
    while t.is_alive() and time.monotonic() < deadline:
        pub.send_multipart([b"end", b""])
        t.join(0.1)
    secs = (got["last"] or time.perf_counter()) - t0
    pub.close(0)
    sub.close(0)
    ctx.term()
    # dropped: refused by a full queue (zmq.Again) or dropped by PUB at its high-water mark
    return {"sent": sent, "received": got["events"], "dropped": dropped + sent - got["events"],
            "seconds": secs, "rate": got["events"] / secs if secs else None}


def ceiling(plan: Plan, log: Callable[[str], None]) -> dict:
    binary = trixie_bpftrace()
    if binary is None:
        raise RuntimeError(TRIXIE_FIX)
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    tmp = Path(tempfile.mkdtemp(prefix="syswatch-bench-ceiling-", dir=shm))
    try:
        capture = tmp / "bpftrace.txt"
        to_file = bpftrace_alone(binary, plan.dd_n, capture)
        log(f"ceiling: bpftrace 0.23 alone into a file: {rate_text(to_file, ' lines/s')} "
            f"({to_file['printed']:,} printed, {to_file['lost']:,} lost)")
        to_pipe = bpftrace_alone(binary, plan.dd_n, None)
        log(f"ceiling: bpftrace 0.23 into a pipe read by one reader: {rate_text(to_pipe, ' lines/s')}")
        parsed = parser_alone(capture)
        log(f"ceiling: the parser alone: {parsed['rate']:,.0f} events/s")
        z = zmq_alone(parsed.pop("batches"))
        log(f"ceiling: ZeroMQ alone (PUB -> SUB over TCP loopback): {z['rate']:,.0f} events/s")
    finally:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
    return {"bpftrace_file": to_file, "bpftrace_pipe": to_pipe, "parser": parsed, "zmq": z}


def run(plan: Plan, log: Callable[[str], None]) -> dict:
    out: dict = {"multi": [], "skipped": {}}
    writers, dd_n = 4, plan.dd_n // 4
    makers = {"collector-events": lambda name: tracers.CollectorTracer("events", extra=("-c", name))}
    why = compose.unavailable() or (None if _docker("image", "inspect", WORK_IMAGE).returncode == 0
                                    else f"{WORK_IMAGE} is not built: docker-compose build api")
    if why:
        out["skipped"]["compose-events"] = why
    else:
        makers["compose-events"] = lambda name: compose.ComposeCollectorTracer("events", container=name)
    if _docker("image", "inspect", WORK_IMAGE).returncode != 0:
        raise RuntimeError(f"{WORK_IMAGE} is not built: docker-compose build api")
    for key, make in makers.items():
        r = multi_process_run(make, writers, dd_n)
        out["multi"].append(r)
        log(f"multi-process {key}: made {r['made']:,}, delivered {r['delivered']:,} + lost {r['lost']:,} "
            f"+ dropped {r['dropped']:,} = {r['delivered'] + r['lost'] + r['dropped']:,} "
            f"({'exact' if r['exact'] else 'NOT exact'}), {r['delivered_rate']:,.0f} delivered/s")
    out["ceiling"] = ceiling(plan, log)
    return out


if __name__ == "__main__":      # python3 -m bench.saturation: this section alone, printed
    import json

    from bench.plan import FULL, QUICK
    res = run(QUICK if "--quick" in sys.argv else FULL, lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(res, indent=1, default=str))
