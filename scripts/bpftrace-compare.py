#!/usr/bin/env python3
"""Run the same bpftrace programs under two bpftrace binaries and print what each outputs.

The evidence behind docs/bpftrace-versions.md (bookworm's 0.17 against trixie's 0.23 run
through scripts/trixie-bpftrace.sh). Each case starts bpftrace, waits for its BEGIN line,
runs a child that makes known read/write calls under a process name holding quotes, a
backslash, a newline and non-UTF-8 bytes, stops bpftrace with SIGINT and prints its
stdout lines (those about the child, and every non-printf record) and its stderr.

Usage:  sudo scripts/bpftrace-compare.py [--old bpftrace] [--new "$(scripts/trixie-bpftrace.sh)"]
                                         [--case NAME ...] [--saturate N]
  --saturate N   also run syscalls.bt (stdout to a file) against `dd bs=1 count=N` and count
                 printf records and lost_events records: a real ring/perf buffer saturation.
Root only. Runs one bpftrace at a time; each case takes 1-3 s, the saturation run longer.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# 15 bytes at most (TASK_COMM_LEN - 1): quote, backslash, newline, Latin-1 e-acute, 0xff
CHILD_COMM = b'q"b\\n\nx\xe9\xff'
CHILD_WRITES = 3

CHILD_CODE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0)   # PR_SET_NAME
fd = os.open("/dev/null", os.O_WRONLY)
os.read(0, 1)                       # wait for the go byte on stdin
for _ in range(int(sys.argv[2])):
    os.write(fd, b"abcde")
os.write(fd, b"")                   # a zero-byte write: ret 0
try:
    os.write(987654, b"x")          # EBADF: ret -9
except OSError:
    pass
"""

EXIT_PROBES = """
tracepoint:syscalls:sys_enter_write /pid == $1/ { @start[tid] = nsecs; }
tracepoint:syscalls:sys_exit_write /pid == $1 && @start[tid]/ {
    printf("ret=%d lat_ok=%d\\n", ARGS ret, nsecs - @start[tid] > 0);
    DELETE
}
"""

# name -> (program text, positional args after the child's pid or None, needs a child)
CASES: dict[str, tuple[str, list[str]]] = {
    "events": ("@file:collector/syscalls.bt", ["0", "0"]),
    "counts": ("@file:collector/syscalls_counts.bt", ["0", "500"]),
    "exit-args-arrow": (EXIT_PROBES.replace("ARGS ", "args->").replace("DELETE", "delete(@start[tid]);"), ["@CHILD"]),
    "exit-args-dot": (EXIT_PROBES.replace("ARGS ", "args.").replace("DELETE", "delete(@start[tid]);"), ["@CHILD"]),
    "delete-two-args": (EXIT_PROBES.replace("ARGS ", "args.").replace("DELETE", "delete(@start, tid);"), ["@CHILD"]),
    "kretprobe": ("kretprobe:vfs_write /pid == $1/ { printf(\"kret %d\\n\", retval); }", ["@CHILD"]),
    "kretfunc": ("kretfunc:vfs_write /pid == $1/ { printf(\"kretfunc %d\\n\", retval); }", ["@CHILD"]),
    "fexit": ("fexit:vfs_write /pid == $1/ { printf(\"fexit %d\\n\", retval); }", ["@CHILD"]),
    "builtins": ("tracepoint:syscalls:sys_enter_write /pid == $1/ { printf(\"cgroup=%llu curtask_nonzero=%d "
                 "tgid=%d nsecs_nonzero=%d\\n\", cgroup, curtask != 0, "
                 "((struct task_struct *)curtask)->tgid, nsecs > 0); }",
                 ["@CHILD"]),
    "positional-interval": ("interval:ms:$2 /$1 == 7/ { printf(\"tick $1=%d\\n\", $1); exit(); }", ["7", "200"]),
    "config-block": ("config = { perf_rb_pages = 128 }\nBEGIN { printf(\"config ok\\n\"); exit(); }", []),
    "map-print": ("BEGIN { @s[1, \"a\\\"b\"] = stats(5); @s[1, \"a\\\"b\"] = stats(7); @c[2] = count(); "
                  "@h = hist(100); print(@s); print(@c); exit(); }", []),
}


def set_child_comm_hex() -> str:
    return CHILD_COMM.hex()


READY = 'BEGIN { printf("compare-ready\\n"); }\n'


def start_bpftrace(bpftrace: str, prog: str, args: list[str], stdout) -> subprocess.Popen:
    """bpftrace -f json PROG ARGS... BPFTRACE_PID, the way the collector starts it: the shell
    passes its own PID ($$) and execs bpftrace, which keeps it (the .bt files exclude $3)."""
    if prog.startswith("@file:"):
        cmd = [bpftrace, "-f", "json", str(REPO / prog[len("@file:"):]), *args]
    else:
        if "BEGIN {" in prog:                         # one BEGIN probe only
            prog = prog.replace("BEGIN {", READY[:-3], 1)
        elif prog.startswith("config"):               # a config block must come first
            head, _, tail = prog.partition("}\n")
            prog = head + "}\n" + READY + tail
        else:
            prog = READY + prog
        cmd = [bpftrace, "-f", "json", "-e", prog, *args]
    return subprocess.Popen(["/bin/sh", "-c", 'exec "$@" "$$"', "sh", *cmd], stdout=stdout,
                            stderr=subprocess.PIPE)


def wait_started(proc: subprocess.Popen, out: Path, timeout: float = 60) -> bool:
    """Every probe is attached once BEGIN ran: wait for its line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        text = out.read_text(errors="replace")
        if "compare-ready" in text or "syswatch-ready" in text:
            return True
        time.sleep(0.05)
    return False


def run_case(bpftrace: str, name: str) -> dict:
    prog, args = CASES[name]
    child = None
    if "@CHILD" in args or prog.startswith("@file:"):
        child = subprocess.Popen([sys.executable, "-c", CHILD_CODE, set_child_comm_hex(), str(CHILD_WRITES)],
                                 stdin=subprocess.PIPE)
        args = [str(child.pid) if a == "@CHILD" else a for a in args]
    with tempfile.NamedTemporaryFile(prefix="bt-compare.", delete=False) as f:
        out = Path(f.name)
    try:
        with open(out, "wb") as fo:
            proc = start_bpftrace(bpftrace, prog, args, fo)
        started = wait_started(proc, out)
        if child:
            time.sleep(0.2)
            child.stdin.write(b"g")
            child.stdin.close()
            child.wait(timeout=30)
            time.sleep(1.2 if name == "counts" else 0.5)
        else:
            time.sleep(1.0)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        lines = out.read_bytes().decode(errors="replace").splitlines()
    finally:
        out.unlink()
        if child and child.poll() is None:
            child.kill()
            child.wait()
    keep = []
    for line in lines:
        if prog.startswith("@file:") and str(child.pid) not in line and '"printf"' in line \
                and "-ready" not in line and "syswatch-interval" not in line:
            continue                                  # other processes' events
        if prog.startswith("@file:") and '"stats"' in line and str(child.pid) not in line:
            # keep the record's shape, not every process on the host
            try:
                rec = json.loads(line)
                for m, rows in rec["data"].items():
                    rec["data"][m] = {k: v for k, v in rows.items() if k.startswith(f"{child.pid},")}
                line = json.dumps(rec) + "   (filtered to the child)"
            except (ValueError, KeyError, AttributeError):
                pass
        keep.append(line)
    return {"started": started, "exit": proc.returncode, "stdout": keep, "stderr": err.strip().splitlines()}


def saturate(bpftrace: str, n: int) -> dict:
    """syscalls.bt with stdout to a file, one dd bs=1 count=N: delivered printf records vs lost."""
    with tempfile.NamedTemporaryFile(prefix="bt-saturate.", delete=False) as f:
        out = Path(f.name)
    try:
        with open(out, "wb") as fo:
            proc = start_bpftrace(bpftrace, "@file:collector/syscalls.bt", ["0", "0"], fo)
        if not wait_started(proc, out):
            raise RuntimeError(f"{bpftrace} did not start: {proc.stderr.read().decode(errors='replace')}")
        t0 = time.monotonic()
        dd = subprocess.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={n}"],
                            stderr=subprocess.DEVNULL)
        elapsed = time.monotonic() - t0
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        printf = dd_events = lost = 0
        lost_lines = []
        other = {}
        with open(out, "rb") as fi:
            for raw in fi:
                if not raw.strip():
                    other["<blank line>"] = other.get("<blank line>", 0) + 1
                    continue
                rec = json.loads(raw)
                kind = rec["type"]
                if kind == "printf":
                    printf += 1
                    if '"comm\\":\\"dd\\"' in raw.decode(errors="replace") or '"comm\":\"dd\"' in rec["data"]:
                        dd_events += 1
                elif kind == "lost_events":
                    lost += rec["data"]["events"]
                    if len(lost_lines) < 3:
                        lost_lines.append(raw.decode().rstrip())
                else:
                    other.setdefault(kind, raw.decode().rstrip())
    finally:
        out.unlink()
    return {"dd_exit": dd.returncode, "dd_elapsed_s": round(elapsed, 2), "made_by_dd_at_least": 2 * n,
            "printf_records": printf, "dd_events_delivered": dd_events, "lost_total": lost,
            "lost_examples": lost_lines, "other_records": other, "stderr": err.strip().splitlines()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", default="bpftrace")
    p.add_argument("--new", default="/var/cache/syswatch-trixie/bin/bpftrace")
    p.add_argument("--case", action="append", choices=sorted(CASES))
    p.add_argument("--saturate", type=int, default=0)
    p.add_argument("--no-cases", action="store_true", help="only the saturation run")
    a = p.parse_args()
    if os.geteuid() != 0:
        print("bpftrace-compare: run as root", file=sys.stderr)
        return 1
    for name in [] if a.no_cases else a.case or list(CASES):
        for label, binary in (("old", a.old), ("new", a.new)):
            ver = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
            r = run_case(binary, name)
            print(f"=== {name} [{label}: {ver}] started={r['started']} exit={r['exit']}")
            for line in r["stdout"]:
                print(f"  out| {line}")
            for line in r["stderr"]:
                print(f"  err| {line}")
    if a.saturate:
        for label, binary in (("old", a.old), ("new", a.new)):
            ver = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
            print(f"=== saturate dd bs=1 count={a.saturate} [{label}: {ver}]")
            print(json.dumps(saturate(binary, a.saturate), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
