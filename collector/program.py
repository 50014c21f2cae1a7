"""Build the bpftrace program and command line for a mode, probe kind, syscall set and filters.

One template per mode lives here; collector/syscalls.bt and collector/syscalls_counts.bt are
that template rendered for the defaults (read and write, tracepoints, no filter, this project's
reference kernel layout), runnable by hand, and a unit test keeps them equal to ``render()``
(regenerate: ``python -m collector.program``; the collector renders for the running kernel).

One probe per call (issue 24): the exit. The call's fd and count are still in the caller's saved
registers (the ``struct pt_regs`` at the top of its kernel stack, collector/kernel.py), the file
the fd points to is reachable from ``curtask``, so nothing has to be kept from the entry. Every
call's registers are checked (the syscall number and the return value must be the call's own);
a call that fails the check is printed with flag bit 0 clear and never published. Latency needs
the entry's time: with ``latency=True`` (--latency) the entry probe keeps (start, fd, count) per
thread in ``@start`` (a hash map; sched_process_exit drops the entry of a thread that dies inside
a call), as before. Filters (--pid, --comm, --container, the collector's own PIDs) are predicates
on the first probe of each call, so the kernel drops what is not wanted before anything is kept.

Events mode prints text (not -f json: 2x faster in bpftrace per line, measured) with full
buffering (-B full): one write per 8 KiB instead of per line. Only numbers are printed, except
names, which go as hex (%rh), so no byte of a name can break a line or forge a field. A probe
prints a flush marker every few milliseconds (bpftrace flushes its output at a print()), which
bounds how long an event waits in bpftrace's buffer. shared/record.py declares the line.

Files: an exit probe on the open family walks the new file's dentries and mounts up to the
process's root, once per open, and prints the path's components (collector/parser.py joins them,
collector/files.py keeps them per (pid, fd)); every event carries the inode, device, mode, a
deleted flag and a name key that changes on rename.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

from syswatch.collector.kernel import Kernel
from syswatch.shared import record
from syswatch.shared.protocol import ALL_SYSCALLS_WORD, DEFAULT_SYSCALLS, SYSCALLS

HERE = Path(__file__).resolve().parent
FILES = {"events": HERE / "syscalls.bt", "counts": HERE / "syscalls_counts.bt"}
COMM_MAX = 15                        # TASK_COMM_LEN - 1: the kernel truncates longer names
_SAFE_COMM = re.compile(r"[\x20-\x7e]+")
OVERLOAD = ("drop", "buffer")        # --on-overload: what events mode does when bpftrace falls behind
# Output buffer pages per policy: 0.17 per CPU (perf), 0.18+ in total (one ring buffer).
_PAGES = {("perf", "drop"): 1024, ("perf", "buffer"): 4096,
          ("ringbuf", "drop"): 4096, ("ringbuf", "buffer"): 32768}


def env(version=None, overload: str = "drop") -> dict[str, str]:
    """bpftrace's environment for ``version`` (collector.bpfversion.Version; None: 0.17's names).

    Output buffer: 0.17 has a perf ring per CPU, 0.18+ one BPF ring buffer for all CPUs, sized by
    the same variable (per CPU or in total). A BPF program cannot wait for a reader, so when
    bpftrace falls behind the only choice is how much backlog the kernel holds before it drops
    (and counts): ``drop`` (default) 4 MiB per CPU / 16 MiB, events late by well under a second;
    ``buffer`` 4x (0.17) or 8x (0.23) that, absorbing bursts of seconds at the cost of memory and
    of seconds of latency while the backlog drains. Map size: room for many keys (threads inside
    a call, (pid, cgroup, syscall, name) rows); the variable was renamed in 0.20. Strings: room for
    a file name's chunk (name_chunk).
    """
    if overload not in OVERLOAD:
        raise ValueError(f"overload must be one of {OVERLOAD}, not {overload!r}")
    ringbuf = version is not None and version.ringbuf_output
    renamed = version is not None and version.at_least(0, 20)
    return {"BPFTRACE_PERF_RB_PAGES": str(_PAGES["ringbuf" if ringbuf else "perf", overload]),
            "BPFTRACE_MAX_MAP_KEYS" if renamed else "BPFTRACE_MAP_KEYS_MAX": "65536", **strlen_env(version)}


def name_chunk(version=None) -> int:
    """Bytes of a name one printf carries: bpftrace 0.23 strings hold 1024 bytes (a whole name,
    NAME_MAX is 255); older ones 64 by default, raised to 128 by ``env`` (0.17 keeps strings on
    the 512-byte BPF stack), of which 120 are used: a name of 255 bytes takes three lines."""
    return 255 if version is not None and version.at_least(0, 23) else 120


def strlen_env(version=None) -> dict[str, str]:
    return {} if version is not None and version.at_least(0, 23) else {"BPFTRACE_STRLEN": "128"}


READY = "syswatch-ready"
INTERVAL = "syswatch-interval"
KICK = "syswatch-kick"               # events mode: per-CPU count of events printed, for the loss check
FLUSH = "syswatch-flush"             # events mode: printed with print(), which flushes bpftrace's output
FLUSH_EVERY_NS = 5_000_000           # an event waits in bpftrace's buffer at most this long (plus a poll)
# Open records (both modes): the opened fd's file, its path's components leaf first, the end
OPEN = "syswatch-open"               # OPEN pid tid fd ino dev mode namekey
NAME = "syswatch-name"               # NAME tid len hex   (one component; len is its whole length)
NAME_MORE = "syswatch-name+"         # NAME_MORE tid hex  (the component's next chunk)
OPENED = "syswatch-opened"           # OPENED tid components complete(1|0)
PATH_DEPTH = 32                      # components walked per open (a deeper path is resolved from /proc)
OPEN_SYSCALLS = ("open", "openat", "openat2", "creat")


class Args(NamedTuple):
    """Where a call's arguments are: its entry tracepoint's field names and the user's registers
    (x86-64 syscall ABI: di si dx r10 r8 r9). ``fd`` is the source, ``fd_out`` the destination of
    a two-descriptor call ("" for the others). The count is the bytes asked for, except for the
    vector calls: the number of iovecs (the sum of their lengths would mean reading user memory in
    a loop; ret has the bytes moved)."""
    nr: int                          # x86-64 syscall number: the exit probe checks the registers are the call's
    fd: str
    fd_reg: str
    cnt: str                         # the count argument (tracepoint field)
    count_reg: str
    fd_out: str = ""
    out_reg: str = ""


ARGS = {
    "read": Args(0, "fd", "di", "count", "dx"), "write": Args(1, "fd", "di", "count", "dx"),
    "pread64": Args(17, "fd", "di", "count", "dx"), "pwrite64": Args(18, "fd", "di", "count", "dx"),
    "readv": Args(19, "fd", "di", "vlen", "dx"), "writev": Args(20, "fd", "di", "vlen", "dx"),
    "preadv": Args(295, "fd", "di", "vlen", "dx"), "pwritev": Args(296, "fd", "di", "vlen", "dx"),
    "preadv2": Args(327, "fd", "di", "vlen", "dx"), "pwritev2": Args(328, "fd", "di", "vlen", "dx"),
    # copy_file_range(fd_in, off_in, fd_out, off_out, len, flags)
    "copy_file_range": Args(326, "fd_in", "di", "len", "r8", "fd_out", "dx"),
    # sendfile(out_fd, in_fd, offset, count): the destination first
    "sendfile": Args(40, "in_fd", "si", "count", "r10", "out_fd", "di"),
    # splice(fd_in, off_in, fd_out, off_out, len, flags)
    "splice": Args(275, "fd_in", "di", "len", "r8", "fd_out", "dx"),
    # tee(fdin, fdout, len, flags)
    "tee": Args(276, "fdin", "di", "len", "dx", "fdout", "si"),
}
# The kernel's name where it is not strace's (tracepoint sys_enter_sendfile64, __x64_sys_sendfile64)
KERNEL_NAME = {"sendfile": "sendfile64"}
USER_CS = 0x33                       # a 64-bit process's code segment in its saved registers
EBADF = 9
# kprobe: the x86-64 syscall wrappers get the user's registers as a struct pt_regs *;
# fd is the first argument (rdi), count/vlen the third (rdx).
_REGS = "((struct pt_regs *)arg0)"


class FilterError(ValueError):
    """A filter value that cannot become a bpftrace predicate; the text says why."""


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


def check_syscalls(names: list[str]) -> list[str]:
    """The syscalls to trace, in protocol order, or FilterError naming the valid ones.
    ``all`` (ALL_SYSCALLS_WORD) stands for every one of them."""
    valid = f"{', '.join(SYSCALLS)} (or {ALL_SYSCALLS_WORD}: every one)"
    if not names:
        raise FilterError(f"name at least one of: {valid}")
    if ALL_SYSCALLS_WORD in names:
        names = list(SYSCALLS)
    unknown = [n for n in names if n not in SYSCALLS]
    if unknown:
        raise FilterError(f"unknown {', '.join(map(repr, unknown))}; valid: {valid}")
    return [s for s in SYSCALLS if s in names]


def predicate(pids=(), comms=(), cgroups=(), uids=(), tids=()) -> str:
    """The first probe's predicate: never the collector ($1) nor bpftrace ($3), then the filters."""
    conds = ["pid != $1", "pid != $3"]
    for flag, key, values, top in (("--pid", "pid", pids, 2**22), ("--tid", "tid", tids, 2**22),
                                   ("--uid", "uid", uids, 2**32 - 1)):
        for v in values:
            if not (0 if key == "uid" else 1) <= v <= top:
                raise FilterError(f"{flag} {v}: a {key.upper()} is between {0 if key == 'uid' else 1} and {top}")
        if values:
            conds.append("(" + " || ".join(f"{key} == {int(v)}" for v in values) + ")")
    if comms:
        conds.append("(" + " || ".join(f"comm == {comm_literal(c)}" for c in comms) + ")")
    if cgroups:
        conds.append("(" + " || ".join(f"cgroup == {int(c)}" for c in cgroups) + ")")
    return "/" + " && ".join(conds) + "/"


class ExitFilter(NamedTuple):
    """Filters known only when a call returns (-x/--failed, --min-latency): the exit probe's
    predicate, so the kernel drops the other calls before anything is printed or counted (a
    condition inside the body would not fit 0.17's 512-byte stack with --latency). --min-latency
    needs the entry's time (latency); with latency a second exit probe, with the opposite
    predicate, drops the entry of a call the filter refused."""
    failed: bool = False
    min_latency_ns: int = 0

    def condition(self, ret: str, latency: bool) -> str:
        conds = ([f"{ret} < 0"] if self.failed else []) + (
            [f"nsecs - @start[tid].0 >= {int(self.min_latency_ns)}"] if self.min_latency_ns and latency else [])
        return " && ".join(conds)


class Probes(NamedTuple):
    enter: str                       # the entry probe (only with latency)
    leave: str                       # the exit probe
    fd: str                          # fd and count at entry
    cnt: str
    ret: str                         # the return value at exit
    check: str                       # at exit, with $r the saved registers: they are this call's
    args: Args                       # the registers the exit reads them from


def probes(name: str, probe: str) -> Probes:
    """The probe points and expressions for ``name`` and ``probe`` (kprobe|tracepoint)."""
    a, kname = ARGS[name], KERNEL_NAME.get(name, name)
    if probe == "tracepoint":
        return Probes(f"tracepoint:syscalls:sys_enter_{kname}", f"tracepoint:syscalls:sys_exit_{kname}",
                      f"args->{a.fd}", f"args->{a.cnt}", "args->ret",
                      f"$r->orig_ax == {a.nr} && $r->ax == (uint64)$ret", a)
    if probe == "kprobe":
        # at a kretprobe the caller has not yet stored the return value in its registers
        return Probes(f"kprobe:__x64_sys_{kname}", f"kretprobe:__x64_sys_{kname}",
                      f"{_REGS}->{a.fd_reg}", f"{_REGS}->{a.count_reg}", "(int64)retval",
                      f"$r->orig_ax == {a.nr} && ($r->cs & 0xffff) == {USER_CS}", a)
    raise ValueError(f"probe must be kprobe or tracepoint, not {probe!r}")


HEADERS = {
    "events": """\
#!/usr/bin/env bpftrace
/*
 * syscalls.bt  Trace every read(2) and write(2) on the host, one line per call when it
 *              returns, with the file its fd points to, except the calls of the PIDs given as
 *              $1 and $3 (the collector and bpftrace itself: tracing them would feed back).
 *
 * USAGE: BPFTRACE_MAP_KEYS_MAX=65536 BPFTRACE_STRLEN=128 bpftrace -B full syscalls.bt COLLECTOR_PID CLOCK_OFFSET_NS BPFTRACE_PID
 *        e.g.  bpftrace -B full collector/syscalls.bt 0 0 0   (nothing excluded, monotonic ts)
 *
 * Generated by collector/program.py (python -m collector.program events > collector/syscalls.bt),
 * which also renders it for other syscalls (pread64, pwrite64, readv, writev), kprobes, filters,
 * latency (--latency: an entry probe keeps the start time) and the running kernel's layout: this
 * file assumes task_struct.comm at byte 1752, a 16 KiB kernel stack without FRED padding, and the
 * internal filesystems' devices of the kernel it was rendered on (anonymous inodes: 16, memfd: 1).
 *
 * One probe per call: at the exit, fd and count come from the caller's saved registers at the top
 * of its kernel stack, checked against the syscall number and the return value (flags bit 0; a
 * call that fails the check is never published), and the file from curtask's fd table: inode,
 * device, mode, deleted (bit 1), a key that changes with the file's name. An exit probe on the
 * open family prints each opened file's path, leaf first, walked up to the process's root.
 *
 * Losses: each event line starts with the CPU that printed it, and @sent[cpu] counts the events
 * each CPU printed. About once a second every CPU prints its count (the "kick") into its own
 * buffer, behind the events it printed before: profile:hz kicks a busy CPU and power:cpu_idle an
 * idle one. The collector's loss count for that CPU is the count minus the events of that CPU that
 * arrived: exact, and known within a second. Kicks are numbered per CPU, so the collector knows how
 * many of bpftrace's lost events were kicks. With bpftrace 0.18+'s one ring buffer the same holds
 * (a CPU's kick is reserved after its events), and END prints every CPU's last kick.
 *
 * Output (text, -B full): numbers only, names in hex, so no name can break a line; the same probe
 * prints a flush marker every 5 ms (print() flushes bpftrace's output). nsecs is CLOCK_MONOTONIC:
 * $2 is the offset to the wall clock (time.time_ns() - time.monotonic_ns(), taken at start-up).
 * An event line (shared/record.py): cpu idx ts pid tid uid fd count ret cgroup ino dev mode flags
 * namekey comm0 comm1 [namelen namehex]; an open: syswatch-open pid tid fd ino dev mode namekey, one
 * syswatch-name tid len hex per component (syswatch-name+ tid hex: more of it), syswatch-opened.
 *
 * Example output:
 *   syswatch-ready
 *   syswatch-flush
 *   syswatch-open 5489 5489 3 2146343 266338304 33188 81985529216486895
 *   syswatch-name 5489 6 70 61 73 73 77 64
 *   syswatch-name 5489 3 65 74 63
 *   syswatch-opened 5489 2 1
 *   0 0 1795548582161190450 5489 5489 0 3 4096 1234 1 2146343 266338304 33188 1 81985529216486895 1752392034 0
 *   syswatch-kick 0 1 1
 */
""",
    "counts": """\
#!/usr/bin/env bpftrace
/*
 * syscalls_counts.bt  Count read(2)/write(2) calls per (pid, cgroup, syscall, fd, file, name) in
 *                     the kernel: calls and bytes moved (stats of the positive ret), errors (ret <
 *                     0) per errno, printed every $2 milliseconds (the collector's low-overhead
 *                     "counts" mode). The PIDs $1 and $3 (the collector and bpftrace) are not counted.
 *
 * USAGE: BPFTRACE_MAP_KEYS_MAX=65536 BPFTRACE_STRLEN=128 bpftrace -f json syscalls_counts.bt COLLECTOR_PID INTERVAL_MS BPFTRACE_PID
 *        e.g.  bpftrace -f json collector/syscalls_counts.bt 0 1000 0
 *
 * Generated by collector/program.py (python -m collector.program counts > collector/syscalls_counts.bt).
 * One probe per call, as in events mode (fd from the saved registers, checked; the file from the fd
 * table); with --latency an entry probe adds @lat (summed time in the call) and the call's log2
 * latency bucket to @calls' key (shared/latency.py's layout: the bit length of the nanoseconds), so
 * @calls' counts per bucket are the histogram, exact, at no map update of its own. Run with -f json:
 * text output would print process names raw. Map keys are "pid,cgroup,syscall index,fd,ino,dev,mode,
 * name", @errors' "...,mode,errno,name": the name last, so a comma in it stays in it. @total counts
 * every call, so the collector knows when a full map (BPFTRACE_MAP_KEYS_MAX) kept calls out of the
 * keyed maps.
 *
 * Exactness: clear() right after print() would lose the increments made in between. So the
 * maps are double-buffered: the probes write to the "a" maps while @gen == 0 and to the "b"
 * maps otherwise; the interval probe flips @gen first, then prints and clears the maps nobody
 * writes to any more (print/clear run later, in bpftrace's user space, in order).
 *
 * Example output (one interval: two writes to a file, a read of a closed fd 5 failing with EBADF):
 *   {"type": "stats", "data": {"@calls_a": {"812,1,0,5,0,0,0,bash": {"count": 1, "average": 0, "total": 0}, "812,1,1,3,2146343,266338304,33188,bash": {"count": 2, "average": 26, "total": 52}}}}
 *   {"type": "map", "data": {"@errors_a": {"812,1,0,5,0,0,0,9,bash": 1}}}
 *   {"type": "stats", "data": {"@total_a": {"count": 3, "average": 17, "total": 52}}}
 *   {"type": "map", "data": {"@unreadable": 0}}
 *   {"type": "printf", "data": "syswatch-interval\\n"}
 * and with --latency (the same calls: 1,290 ns in bucket 11, writes of 9,000 and 40,000 ns in 14 and 16):
 *   {"type": "stats", "data": {"@calls_a": {"812,1,0,5,0,0,0,11,bash": {"count": 1, "average": 0, "total": 0}, "812,1,1,3,2146343,266338304,33188,14,bash": {"count": 1, "average": 26, "total": 26}, "812,1,1,3,2146343,266338304,33188,16,bash": {"count": 1, "average": 26, "total": 26}}}}
 *   {"type": "map", "data": {"@lat_a": {"812,1,0,5,0,0,0,bash": 1290, "812,1,1,3,2146343,266338304,33188,bash": 49000}}}
 */
""",
}


def record_format(latency: bool = False, name_tail: bool = False, out: bool = False) -> str:
    """The printf format of one event line, as a bpftrace string literal (shared/record.py)."""
    return '"' + record.printf_format(latency, name_tail, out) + '"'


def _exprs(idx: int, latency: bool, kernel: Kernel, ret: str, out: bool = False) -> str:
    """The event line's printf arguments for the syscall at ``idx`` (``out``: a two-fd call's)."""
    fill = {"idx": str(idx), "ts": "$e.0 + $2" if latency else "nsecs + $2", "fd": "$fd", "count": "$cnt",
            "ret": "$ret", "lat": "nsecs - $e.0", "comm": str(kernel.comm_offset)}
    cols = record.columns(latency) + (record.OUT_COLUMNS if out else ())
    return ", ".join(c.expr.format(**fill) for c in cols)


def _file_walk(kernel: Kernel, two_fd: bool = False) -> str:
    """Statements that set $i (inode), $d (dentry), $dev, $fl's bit 1 and $nk from $fd (with $ret).
    A one-fd call that failed with EBADF had no file; a two-fd call's EBADF may be the other fd's, so
    its source is walked when the fd is within the fd table (a closed slot gives no file)."""
    guard = "$fd >= 0 && $fd < (int32)curtask->files->fdt->max_fds" if two_fd else f"$ret != -{EBADF}"
    return f"""$i = (struct inode *)0;
$d = (struct dentry *)0;
if ({guard}) {{
	$f = (struct file *)*(curtask->files->fdt->fd + $fd);
	$i = $f->f_inode;
	$d = $f->f_path.dentry;
}}
$dev = $i->i_sb->s_dev;
$fl = $fl | ($d->d_hash.pprev == 0 ? {record.FLAG_DELETED} : 0);
$nk = $d->d_name.hash_len ^ (uint64)$d->d_parent;"""


def _out_walk() -> str:
    """Statements that set a two-fd call's destination: $io (inode), $do (dentry), $devo, $flo (bit
    1: deleted), $nko, from $fdo (checked against the fd table's size: it may be any number)."""
    return f"""$io = (struct inode *)0;
$do = (struct dentry *)0;
if ($fdo >= 0 && $fdo < (int32)curtask->files->fdt->max_fds) {{
	$fo = (struct file *)*(curtask->files->fdt->fd + $fdo);
	$io = $fo->f_inode;
	$do = $fo->f_path.dentry;
}}
$devo = $io->i_sb->s_dev;
$flo = $do->d_hash.pprev == 0 && $do != 0 ? {record.FLAG_DELETED} : 0;
$nko = $do->d_name.hash_len ^ (uint64)$do->d_parent;"""


def _regs(kernel: Kernel) -> str:
    return f"$r = (struct pt_regs *)((uint64)curtask->stack + {kernel.stack_top}) - 1;"


def _block(text: str, depth: int) -> str:
    """``text``'s lines indented by ``depth`` tabs (bpftrace statements inside a probe or an if)."""
    return "\n".join("\t" * depth + line if line else line for line in text.splitlines())


def _probe(point: str, pred: str, body: str, latency: bool, enter: Probes, entry_value: str,
           when: ExitFilter = ExitFilter()) -> str:
    """The probes of one traced call: exit only, or (latency) an entry that keeps ``entry_value``
    in @start and an exit that takes it; ``body`` runs at the exit (if ``when`` holds)."""
    cond = when.condition(enter.ret, latency)
    if not latency:
        if cond:
            pred = f"{pred[:-1]} && {cond}/"
        return f"\n{point}\n{pred}\n{{\n{_block(body, 1)}\n}}\n"
    refused = f"""
{point}
/@start[tid].0 && !({cond})/
{{
	delete(@start[tid]);
}}
""" if cond else ""
    return f"""
{enter.enter}
{pred}
{{
	@start[tid] = {entry_value};
}}
{refused}
{point}{f"{chr(10)}/{cond}/" if cond else ""}
{{
	$e = @start[tid];
	if ($e.0) {{
		delete(@start[tid]);
{_block(body, 2)}
	}}
}}
"""


def _arguments(pr: Probes, latency: bool, kernel: Kernel, count: bool = True, out: bool = False) -> str:
    """Statements that set $ret, $fd, ($cnt), ($fdo: ``out``) and $fl's bit 0 (the arguments are the
    call's). The destination fd of a two-fd call comes from the saved registers also with latency
    (@start keeps one tuple type for every call), so those calls are checked in both forms."""
    # $ret is declared before it takes the return value: bpftrace 0.17 would otherwise give it the
    # tracepoint's address space and warn when it is compared with the registers
    ret = f"$ret = 0;\n$ret = {pr.ret};\n"
    a = pr.args
    if latency:                          # from the entry's arguments, kept in @start
        head = ret + "$fd = (int32)$e.1;\n" + ("$cnt = $e.2;\n" if count else "")
        if not out:
            return head + "$fl = 1;"
        return f"{_regs(kernel)}\n{head}$fdo = (int32)$r->{a.out_reg};\n$fl = ({pr.check}) ? 1 : 0;"
    return (f"{_regs(kernel)}\n{ret}$fd = (int32)$r->{a.fd_reg};\n"
            + ("$cnt = $r->{};\n".format(a.count_reg) if count else "")
            + (f"$fdo = (int32)$r->{a.out_reg};\n" if out else "")
            + f"$fl = ({pr.check}) ? 1 : 0;")


class Sent(NamedTuple):
    """How the events program counts each CPU's printed events for the kicks: ``add`` follows each
    event's printf, ``read`` is the kick's value for CPU ``{cpu}``."""
    add: str
    read: str


# a hash map keyed by CPU (any bpftrace), or a per-CPU count() read as the sum of its slots (0.21+:
# no bucket lock). Measured 2026-12-07, bpftrace 0.23, dd bs=1, the workload's CPU against the empty
# probe's, medians of 4 runs of 3 pairs: count() 1.83x, the hash 2.03x, no kicks 1.79x (noise ~20%).
SENT_HASH = Sent("@sent[cpu] = @sent[cpu] + 1;", "@sent[{cpu}]")
SENT_COUNT = Sent("@sent[cpu] = count();", "(uint64)@sent[{cpu}]")


def sent_counter(version) -> Sent:
    return SENT_COUNT if version is not None and version.aggregation_reads else SENT_HASH


def _kick(sent: Sent, cpu: str, indent: str) -> str:
    """CPU ``cpu``'s kick: its number, then the line with its count of printed events."""
    return (f"{indent}@kicks[{cpu}] = @kicks[{cpu}] + 1;\n"
            f"{indent}printf(\"{KICK} %d %d %d\\n\", {cpu}, {sent.read.format(cpu=cpu)}, @kicks[{cpu}]);\n")


def _event_probe(idx: int, name: str, pr: Probes, pred: str, latency: bool, sent: Sent | None, kernel: Kernel,
                 chunk: int, when: ExitFilter = ExitFilter()) -> str:
    args = _exprs(idx, latency, kernel, pr.ret, bool(pr.args.fd_out))
    if pr.args.fd_out:
        # two files' facts fill bpftrace 0.17's 512-byte stack: no kernel-only name (an eventfd or
        # memfd at either end is named from /proc/PID/fd)
        body = f"""{_arguments(pr, latency, kernel, out=True)}
{_file_walk(kernel, two_fd=True)}
{_out_walk()}
printf({record_format(latency, False, True)},
    {args});"""
        if sent:
            body += "\n" + sent.add
        # (uint64): these tracepoints declare their fds int, read's unsigned int; @start has one type
        return _probe(pr.leave, pred, body, latency, pr, f"(nsecs, (uint64){pr.fd}, {pr.cnt})", when)
    body = f"""{_arguments(pr, latency, kernel)}
{_file_walk(kernel)}
if ($dev == {kernel.anon_dev} || $dev == {kernel.memfd_dev}) {{
	/* a file only the kernel can name (eventfd, memfd, ...): the dentry's name too */
	$np = $d->d_name.name;
	$nl = $d->d_name.len;
	printf({record_format(latency, True)},
	    {args}, $nl, buf($np, $nl < {chunk} ? $nl : {chunk}));
}} else {{
	printf({record_format(latency)},
	    {args});
}}""" + ("\n" + sent.add if sent else "")
    return _probe(pr.leave, pred, body, latency, pr, f"(nsecs, {pr.fd}, {pr.cnt})", when)


def _open_probes(pred: str, kernel: Kernel, chunk: int, probe: str = "tracepoint") -> str:
    """The probes that name files: an exit probe for the open family (the new fd's file and its path,
    leaf first), and one at every exec for the fds a program is started with (0, 1, 2: a shell's
    redirections, subprocess's /dev/null), which were opened by another program, often filtered out."""
    if probe == "kprobe":                # a kernel without syscall tracepoints: the wrappers' returns
        points = ",\n".join(f"kretprobe:__x64_sys_{n}" for n in OPEN_SYSCALLS)
        ret = "(int64)retval"
    else:
        points = ",\n".join(f"tracepoint:syscalls:sys_exit_{n}" for n in OPEN_SYSCALLS)
        ret = "args->ret"
    more = "".join(f"""
			if ($l > {k * chunk}) {{
				printf("{NAME_MORE} %d %rh\\n", tid, buf($p + {k * chunk}, $l - {k * chunk} < {chunk} ? $l - {k * chunk} : {chunk}));
			}}""" for k in range(1, -(-255 // chunk)))
    walk = f"""$d = $f->f_path.dentry;
$mnt = (uint64)$f->f_path.mnt;
$m = (struct mount *)($mnt - {kernel.mount_mnt_offset});
$rootd = (uint64)curtask->fs->root.dentry;
$rootm = (uint64)curtask->fs->root.mnt;
printf("{OPEN} %d %d %d %llu %u %u %llu\\n", pid, tid, $fd, $f->f_inode->i_ino, $f->f_inode->i_sb->s_dev,
    $f->f_inode->i_mode, $d->d_name.hash_len ^ (uint64)$d->d_parent);
$n = 0;
$k = 0;
$done = 0;
while ($n < {PATH_DEPTH}) {{
	if ((uint64)$d == $rootd && $mnt == $rootm) {{
		$done = 1;
		break;
	}}
	if ((uint64)$d == (uint64)((struct vfsmount *)$mnt)->mnt_root) {{
		if ((uint64)$m == (uint64)$m->mnt_parent) {{
			$done = 1;
			break;
		}}
		$d = $m->mnt_mountpoint;
		$m = $m->mnt_parent;
		$mnt = (uint64)$m + {kernel.mount_mnt_offset};
	}} else {{
		$p = $d->d_name.name;
		$l = $d->d_name.len;
		printf("{NAME} %d %d %rh\\n", tid, $l, buf($p, $l < {chunk} ? $l : {chunk}));{more}
		$d = $d->d_parent;
		$k++;
	}}
	$n++;
}}
printf("{OPENED} %d %d %d\\n", tid, $k, $done);"""
    return f"""
{points}
{pred}
{{
	/* the path as the process sees it: dentries up to its root, crossing mounts to their mount
	   points (struct mount holds its struct vfsmount at byte {kernel.mount_mnt_offset}) */
	$fd = 0;
	$fd = {ret};
	if ($fd >= 0) {{
		$f = (struct file *)*(curtask->files->fdt->fd + $fd);
{_block(walk, 2)}
	}}
}}

tracepoint:sched:sched_process_exec
{pred}
{{
	$fd = 0;
	while ($fd < 3) {{
		$f = (struct file *)*(curtask->files->fdt->fd + $fd);
		if ($f != 0) {{
{_block(walk, 3)}
		}}
		$fd++;
	}}
}}
"""


def _flush_and_kick(sent: Sent | None) -> str:
    kick = """
	if (nsecs >= @kick_at[cpu]) {
		/* on every CPU, about once a second: the events it printed so far, behind them in its
		   buffer, and the kick's number (a gap: kick lines lost, which bpftrace's own loss count
		   includes). cpu_idle kicks an idle CPU, where the profile probe does not fire: without it
		   a burst's loss on a CPU that then idles would never be counted. */
		@kick_at[cpu] = nsecs + 900000000;
%s	}""" % _kick(sent, "cpu", "\t\t") if sent else ""
    return f"""
profile:hz:99,
tracepoint:power:cpu_idle
{{
	if (nsecs >= @flush_at) {{
		/* bpftrace buffers its output (-B full) and flushes it at a print(): an event waits at
		   most {FLUSH_EVERY_NS // 1_000_000} ms for the next one, or for 8 KiB of lines */
		@flush_at = nsecs + {FLUSH_EVERY_NS};
		print("{FLUSH}");
	}}{kick}
}}
"""


def _events(syscalls: list[str], probe: str, pred: str, sent: Sent | None, latency: bool, paths: bool,
            kernel: Kernel, chunk: int, when: ExitFilter, end_kicks: tuple[int, ...] = ()) -> str:
    """``sent``: per-CPU @sent counts and the kick line, the collector's exact loss count (None: none).
    ``end_kicks``: the CPUs whose last kick END prints (ring buffer: it follows every event in the
    one buffer, so a stopped bpftrace's last second is counted too; per-CPU perf buffers give no
    such order, so 0.17's collector falls back to bpftrace's own count once kicks stop)."""
    out = [HEADERS["events"], "BEGIN\n{\n\t/* every probe is attached once BEGIN runs: the collector waits "
           f"for this line */\n\tprintf(\"{READY}\\n\");\n\tprint(\"{FLUSH}\");\n}}\n"]
    for idx, name in enumerate(syscalls):
        out.append(_event_probe(idx, name, probes(name, probe), pred, latency, sent, kernel, chunk, when))
    if paths:
        out.append(_open_probes(pred, kernel, chunk, probe))
    if latency:
        out.append(_EXIT_CLEANUP)
    out.append(_flush_and_kick(sent))
    clears = ["@flush_at"] + (["@start"] if latency else []) + (["@sent", "@kicks", "@kick_at"] if sent else [])
    last = "".join(_kick(sent, str(c), "\t") for c in end_kicks) if sent else ""
    out.append("\nEND\n{\n" + last + "".join(f"\tclear({m});\n" for m in clears) + "}\n")
    return "".join(out)


COUNTS_KEY = "[pid, cgroup, {idx}, $fd, $i->i_ino, $dev, $i->i_mode, {more}comm]"
COUNTS_MAPS = ("calls", "errors", "lat", "total")
LATENCY_MAPS = ("lat",)              # only with --latency


def _log2_bucket(ns: str, var: str) -> str:
    """Statements that set ``var`` to the bit length of ``ns`` (a latency's shared/latency.py
    bucket: 0 for 0 ns, i for [2**(i-1), 2**i)) by halving the range six times, as hist() does."""
    steps = "".join(f"if ($v >= {1 << s:#x}) {{ {var} = {var} + {s}; $v = $v >> {s}; }}\n"
                    for s in (32, 16, 8, 4, 2, 1))
    return f"$v = (uint64)({ns});\n{var} = (uint64)0;\n{steps}{var} = {var} + $v;"


def _counts(syscalls: list[str], probe: str, pred: str, latency: bool, paths: bool, kernel: Kernel,
            chunk: int, when: ExitFilter) -> str:
    out = [HEADERS["counts"], f"BEGIN\n{{\n\t@gen = 0;\n\tprintf(\"{READY}\\n\");\n}}\n"]
    for idx, name in enumerate(syscalls):
        pr = probes(name, probe)
        key = COUNTS_KEY.format(idx=idx, more="")
        # with latency the calls are counted per latency bucket too: the histogram costs no map of its own
        calls_key = COUNTS_KEY.format(idx=idx, more="$lb, " if latency else "")
        # errors per errno: the number before the name, which must stay last (a comma in it)
        errkey = COUNTS_KEY.format(idx=idx, more="-$ret, ")
        upd = {gen: (f"@calls_{gen}{calls_key} = stats($b);\n@total_{gen} = stats($b);\n"
                     f"if ($ret < 0) {{ @errors_{gen}{errkey} = count(); }}"
                     + (f"\n@lat_{gen}{key} = sum($l);" if latency else ""))
               for gen in "ab"}
        measure = "\n" + _block("$l = nsecs - $e.0;\n" + _log2_bucket("$l", "$lb"), 1) if latency else ""
        body = f"""{_arguments(pr, latency, kernel, count=False)}
{_file_walk(kernel, two_fd=bool(pr.args.fd_out))}
if ($fl & 1) {{
	$b = $ret > 0 ? $ret : 0;{measure}
	if (@gen == 0) {{
{_block(upd["a"], 2)}
	}} else {{
{_block(upd["b"], 2)}
	}}
}} else {{
	@unreadable = count();
}}"""
        fd = f"(uint64){pr.fd}" if pr.args.fd_out else pr.fd     # one @start type (events mode says why)
        out.append(_probe(pr.leave, pred, body, latency, pr, f"(nsecs, {fd})", when))
    if paths:
        out.append(_open_probes(pred, kernel, chunk, probe))
    maps = [m for m in COUNTS_MAPS if latency or m not in LATENCY_MAPS]
    prints = {g: " ".join(f"print(@{m}_{g});" for m in maps) for g in "ab"}
    clears = {g: " ".join(f"clear(@{m}_{g});" for m in maps) for g in "ab"}
    if latency:
        out.append(_EXIT_CLEANUP)
    out.append(f"""
interval:ms:$2
{{
	if (@gen == 0) {{
		@gen = 1;
		{prints["a"]}
		{clears["a"]}
	}} else {{
		@gen = 0;
		{prints["b"]}
		{clears["b"]}
	}}
	print(@unreadable);
	printf("{INTERVAL}\\n");
}}

END
{{
	/* the collector publishes only complete intervals: print nothing at exit */
	{clears["a"]} {clears["b"]} clear(@unreadable); delete(@gen);{" clear(@start);" if latency else ""}
}}
""")
    return "".join(out)


_EXIT_CLEANUP = """
tracepoint:sched:sched_process_exit
/@start[tid].0/
{
	/* a thread that dies inside a call never reaches the exit probe */
	delete(@start[tid]);
}
"""


def render(mode: str, probe: str = "tracepoint", syscalls=DEFAULT_SYSCALLS, pids=(), comms=(),
           cgroups=(), kicks: bool = True, latency: bool = False, paths: bool = True,
           kernel: Kernel | None = None, version=None, uids=(), tids=(), failed: bool = False,
           min_latency_ns: int = 0, cpus=()) -> str:
    """The program text for ``mode`` (events|counts), ``probe`` (kprobe|tracepoint) and filters.

    ``kicks``: events mode's own loss count, per CPU (False: bpftrace's count alone, which with a
    ring buffer also holds the flush and file-naming lines it dropped: the bench's older programs).
    ``cpus``: the online CPUs, whose last kicks END prints when ``version`` has a ring buffer.
    ``latency``: an entry probe keeps the start time (lat_ns). ``paths``: the open probe that names
    files (off with --no-paths). ``kernel``: the running kernel's layout (collector/kernel.py; the
    default is the reference layout of the shipped files). ``version``: the bpftrace that runs it.
    ``uids``, ``tids``: more first-probe filters; ``failed``, ``min_latency_ns``: filters at the exit
    (issue 25: -x, --min-latency, which needs ``latency``)."""
    if min_latency_ns and not latency:
        raise FilterError("--min-latency needs the time in each call: it turns --latency on")
    pred = predicate(list(pids), list(comms), list(cgroups), list(uids), list(tids))
    when = ExitFilter(failed, min_latency_ns)
    kernel = kernel or REFERENCE_KERNEL
    chunk = name_chunk(version)
    names = check_syscalls(list(syscalls))
    if mode == "events":
        end_kicks = tuple(cpus) if version is not None and version.ringbuf_output else ()
        return _events(names, probe, pred, sent_counter(version) if kicks else None, latency, paths, kernel,
                       chunk, when, end_kicks)
    if mode == "counts":
        return _counts(names, probe, pred, latency, paths, kernel, chunk, when)
    raise ValueError(f"mode must be events or counts, not {mode!r}")


# The layout the shipped .bt files are rendered for (this project's CI machine, kernel 6.18).
REFERENCE_KERNEL = Kernel(comm_offset=1752, mount_mnt_offset=32, stack_top=16384, pipe_dev=15, sock_dev=9,
                          anon_dev=16, memfd_dev=1, layout_from="reference")


def clock_offset_ns() -> int:
    """Wall clock minus CLOCK_MONOTONIC (bpftrace's nsecs), for EVENT ts_ns."""
    return time.time_ns() - time.monotonic_ns()


def command(bpftrace: str, mode: str, program: str, interval_ms: int) -> list[str]:
    """argv for /bin/sh that execs bpftrace with the positional parameters of the programs.

    $3 (bpftrace's own PID) is not known before it starts: the shell passes its own PID
    (``$$``) and then execs bpftrace, which keeps that PID.
    """
    second = str(clock_offset_ns()) if mode == "events" else str(interval_ms)
    # events: text, fully buffered (numbers and hex names only); counts: JSON, whose map keys hold
    # process names that bpftrace then escapes itself
    output = ["-B", "full"] if mode == "events" else ["-f", "json"]
    return ["/bin/sh", "-c", 'exec "$@" "$$"', "sh", bpftrace, *output, "-e", program,
            str(os.getpid()), second]


if __name__ == "__main__":
    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else "events"))
