"""Build the bpftrace program text and command line for a mode, probe kind and filters.

The programs live in collector/syscalls.bt (events) and collector/syscalls_counts.bt
(counts), both runnable by hand. Here they are only edited at fixed markers:
tracepoint -> kprobe names and arguments, and the predicate extended with the
--pid/--comm filters so that filtering happens in the kernel. Each edit checks that its
marker was found, so a change to the .bt files cannot silently disable a filter.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROGRAMS = {"events": HERE / "syscalls.bt", "counts": HERE / "syscalls_counts.bt"}
SELF_PREDICATE = "/pid != $1 && pid != $3/"
# kprobe: the x86-64 syscall wrappers get the user's registers as a struct pt_regs *;
# read(fd, buf, count): fd in rdi, count in rdx.
KPROBE_EDITS = {
    "tracepoint:syscalls:sys_enter_read": "kprobe:__x64_sys_read",
    "tracepoint:syscalls:sys_enter_write": "kprobe:__x64_sys_write",
    "args->fd": "((struct pt_regs *)arg0)->di",
    "args->count": "((struct pt_regs *)arg0)->dx",
}
COMM_MAX = 15                        # TASK_COMM_LEN - 1: the kernel truncates longer names
_SAFE_COMM = re.compile(r"[\x20-\x7e]+")
ENV = {
    # Per-CPU perf ring of 1024 pages (4 MiB): absorbs bursts at saturation (issue 5).
    "BPFTRACE_PERF_RB_PAGES": "1024",
    # Counts mode: room for many (pid, comm) keys per interval, so no update is dropped.
    "BPFTRACE_MAP_KEYS_MAX": "65536",
}


class FilterError(ValueError):
    """A --pid/--comm value that cannot become a bpftrace predicate; the text says why."""


def comm_literal(name: str) -> str:
    """``name`` as a bpftrace string literal, or FilterError."""
    if not name:
        raise FilterError("--comm needs a non-empty process name")
    if len(name.encode()) > COMM_MAX:
        raise FilterError(f"--comm {name!r} is longer than {COMM_MAX} bytes; the kernel truncates "
                          f"process names, so use {name.encode()[:COMM_MAX].decode(errors='ignore')!r}")
    if not _SAFE_COMM.fullmatch(name) or '"' in name or "\\" in name:
        raise FilterError(f"--comm {name!r}: only printable ASCII without quotes or backslashes "
                          "can be matched in the kernel")
    return f'"{name}"'


def predicate(pids: list[int], comms: list[str]) -> str:
    conds = ["pid != $1", "pid != $3"]
    if pids:
        for pid in pids:
            if pid <= 0 or pid > 2**22:
                raise FilterError(f"--pid {pid}: a PID is between 1 and {2**22}")
        conds.append("(" + " || ".join(f"pid == {p}" for p in pids) + ")")
    if comms:
        conds.append("(" + " || ".join(f"comm == {comm_literal(c)}" for c in comms) + ")")
    return "/" + " && ".join(conds) + "/"


def _replace(text: str, old: str, new: str) -> str:
    if old not in text:
        raise RuntimeError(f"bpftrace program template lacks {old!r}: collector/*.bt and "
                           "collector/program.py disagree")
    return text.replace(old, new)


def build(mode: str, probe: str, pids: list[int] = (), comms: list[str] = ()) -> str:
    """The program text for ``mode`` (events|counts) and ``probe`` (kprobe|tracepoint)."""
    text = PROGRAMS[mode].read_text()
    if probe == "kprobe":
        for old, new in KPROBE_EDITS.items():
            if old != "args->fd" or mode == "events":      # counts mode does not use fd
                text = _replace(text, old, new)
    elif probe != "tracepoint":
        raise ValueError(f"probe must be kprobe or tracepoint, not {probe!r}")
    return _replace(text, SELF_PREDICATE, predicate(list(pids), list(comms)))


def clock_offset_ns() -> int:
    """Wall clock minus CLOCK_MONOTONIC (bpftrace's nsecs), for EVENT ts_ns."""
    return time.time_ns() - time.monotonic_ns()


def command(bpftrace: str, mode: str, program: str, interval_ms: int) -> list[str]:
    """argv for /bin/sh that execs bpftrace with the positional parameters of the .bt files.

    $3 (bpftrace's own PID) is not known before it starts: the shell passes its own PID
    (``$$``) and then execs bpftrace, which keeps that PID.
    """
    second = str(clock_offset_ns()) if mode == "events" else str(interval_ms)
    # JSON output in both modes: bpftrace then escapes process names itself (cheaper than %rx)
    return ["/bin/sh", "-c", 'exec "$@" "$$"', "sh", bpftrace, "-f", "json", "-e", program,
            str(os.getpid()), second]
