"""Build the bpftrace program and command line for a mode, probe kind, syscall set and filters.

One template per mode lives here; collector/syscalls.bt and collector/syscalls_counts.bt are
that template rendered for the defaults (read and write, tracepoints, no filter), runnable by
hand, and a unit test keeps them equal to ``render()`` (regenerate: ``python -m collector.program``).

Each traced call is seen twice: at entry (start time, fd and count kept per thread in
``@inflight``, a hash map bounded by BPFTRACE_MAP_KEYS_MAX) and at exit, where the event is
printed with ``ret`` and ``lat_ns``. A thread that dies inside a call never reaches the exit
probe: sched_process_exit deletes its entry, so nothing leaks. Filters (--pid, --comm,
--container, the collector's own PIDs) are predicates on the entry probe, so the kernel drops
what is not wanted before anything is kept or printed.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from syswatch.shared.protocol import DEFAULT_SYSCALLS, SYSCALLS

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
    a call, (pid, cgroup, syscall, name) rows); the variable was renamed in 0.20.
    """
    if overload not in OVERLOAD:
        raise ValueError(f"overload must be one of {OVERLOAD}, not {overload!r}")
    ringbuf = version is not None and version.ringbuf_output
    renamed = version is not None and version.at_least(0, 20)
    return {"BPFTRACE_PERF_RB_PAGES": str(_PAGES["ringbuf" if ringbuf else "perf", overload]),
            "BPFTRACE_MAX_MAP_KEYS" if renamed else "BPFTRACE_MAP_KEYS_MAX": "65536"}


READY = "syswatch-ready"
INTERVAL = "syswatch-interval"
KICK = "syswatch-kick"               # events mode: per-CPU count of events printed, for the loss check
# The count argument: bytes asked for, except readv/writev: the number of iovecs (the sum of
# their lengths would mean reading user memory in a loop; ret has the bytes moved).
COUNT_ARG = {"read": "count", "write": "count", "pread64": "count", "pwrite64": "count",
             "readv": "vlen", "writev": "vlen"}
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
    """The syscalls to trace, in protocol order, or FilterError naming the valid ones."""
    if not names:
        raise FilterError(f"name at least one of: {', '.join(SYSCALLS)}")
    unknown = [n for n in names if n not in SYSCALLS]
    if unknown:
        raise FilterError(f"unknown {', '.join(map(repr, unknown))}; valid: {', '.join(SYSCALLS)}")
    return [s for s in SYSCALLS if s in names]


def predicate(pids=(), comms=(), cgroups=()) -> str:
    """The entry probes' predicate: never the collector ($1) nor bpftrace ($3), then the filters."""
    conds = ["pid != $1", "pid != $3"]
    if pids:
        for pid in pids:
            if pid <= 0 or pid > 2**22:
                raise FilterError(f"--pid {pid}: a PID is between 1 and {2**22}")
        conds.append("(" + " || ".join(f"pid == {p}" for p in pids) + ")")
    if comms:
        conds.append("(" + " || ".join(f"comm == {comm_literal(c)}" for c in comms) + ")")
    if cgroups:
        conds.append("(" + " || ".join(f"cgroup == {int(c)}" for c in cgroups) + ")")
    return "/" + " && ".join(conds) + "/"


def _probes(name: str, probe: str) -> tuple[str, str, str, str, str]:
    """(entry probe, exit probe, fd, count, ret) expressions for ``name`` and ``probe``."""
    if probe == "tracepoint":
        return (f"tracepoint:syscalls:sys_enter_{name}", f"tracepoint:syscalls:sys_exit_{name}",
                "args->fd", f"args->{COUNT_ARG[name]}", "args->ret")
    if probe == "kprobe":
        return (f"kprobe:__x64_sys_{name}", f"kretprobe:__x64_sys_{name}",
                f"{_REGS}->di", f"{_REGS}->dx", "retval")
    raise ValueError(f"probe must be kprobe or tracepoint, not {probe!r}")


HEADERS = {
    "events": """\
#!/usr/bin/env bpftrace
/*
 * syscalls.bt  Trace every read(2) and write(2) on the host, one line per call when it
 *              returns, except the calls of the PIDs given as $1 and $3 (the collector and
 *              bpftrace itself: tracing them would feed back on itself).
 *
 * USAGE: BPFTRACE_MAP_KEYS_MAX=65536 bpftrace -f json syscalls.bt COLLECTOR_PID CLOCK_OFFSET_NS BPFTRACE_PID
 *        e.g.  bpftrace -f json collector/syscalls.bt 0 0 0   (nothing excluded, monotonic ts)
 *
 * Generated by collector/program.py (python -m collector.program events > collector/syscalls.bt),
 * which also renders it for other syscalls (pread64, pwrite64, readv, writev), kprobes and
 * filters. The entry probe keeps (start, fd, count) per thread in @inflight; the exit probe
 * prints the event with ret (bytes moved or -errno) and lat_ns (time in the call), so a call
 * blocked for minutes is printed when it returns, as strace does. sched_process_exit drops
 * the entry of a thread that dies inside a call.
 *
 * Losses: each event line starts with the CPU that printed it, and @sent[cpu] counts the events
 * each CPU printed. Once a second every CPU prints its count (the "kick") into its own buffer,
 * behind the events it printed before: profile:hz:1 kicks a busy CPU and power:cpu_idle an idle
 * one (a profile probe does not fire on an idle CPU). The collector's loss count for that CPU is
 * then the count minus the events of that CPU that arrived. Exact, and known within a second even
 * on a quiet target, where bpftrace would report a full buffer only when a later event reaches
 * that CPU. A kick lost in a full buffer costs nothing but that second's update; kicks are
 * numbered per CPU, so the collector knows how many of bpftrace's lost events were kicks.
 * (bpftrace 0.18+ with its ring buffer reports losses exactly and at once: the collector then
 * renders this program without @sent and the kick.)
 *
 * Output (bpftrace -f json): one JSON line per call whose "data" is the CPU, ":", the syscall's
 * index in the program and the EVENT object without the container fields, the process name last. bpftrace's
 * JSON output escapes the whole printf text, so a name holding quotes, backslashes or newlines
 * stays inside its string; the collector checks the numeric fields against a fixed pattern and
 * re-encodes the name itself, so no name can add or change a field. nsecs is CLOCK_MONOTONIC:
 * $2 is the offset to the wall clock (time.time_ns() - time.monotonic_ns(), taken at start-up).
 *
 * Example output:
 *   {"type": "printf", "data": "syswatch-ready\\n"}
 *   {"type": "printf", "data": "0:1{\\"ts_ns\\":1795548582161190450,\\"pid\\":5489,\\"tid\\":5489,\\"uid\\":0,\\"syscall\\":\\"write\\",\\"fd\\":1,\\"count\\":5,\\"ret\\":5,\\"lat_ns\\":3120,\\"cgroup_id\\":1,\\"comm\\":\\"bash\\"}\\n"}
 *   {"type": "printf", "data": "syswatch-kick 0 1 1\\n"}
 */
""",
    "counts": """\
#!/usr/bin/env bpftrace
/*
 * syscalls_counts.bt  Count read(2)/write(2) calls per (pid, cgroup, syscall, name) in the
 *                     kernel: calls and summed latency (stats), bytes moved (sum of positive
 *                     ret) and errors (ret < 0), printed every $2 milliseconds (the collector's
 *                     low-overhead "counts" mode). The PIDs $1 and $3 (the collector and
 *                     bpftrace) are not counted.
 *
 * USAGE: BPFTRACE_MAP_KEYS_MAX=65536 bpftrace -f json syscalls_counts.bt COLLECTOR_PID INTERVAL_MS BPFTRACE_PID
 *        e.g.  bpftrace -f json collector/syscalls_counts.bt 0 1000 0
 *
 * Generated by collector/program.py (python -m collector.program counts > collector/syscalls_counts.bt).
 * Run with -f json: text output would print process names raw, and a name may hold newlines
 * and quotes. Map keys are "pid,cgroup,syscall index,name": the name last, so a comma in it
 * stays in it.
 *
 * Exactness: clear() right after print() would lose the increments made in between. So the
 * maps are double-buffered: the probes write to the "a" maps while @gen == 0 and to the "b"
 * maps otherwise; the interval probe flips @gen first, then prints and clears the maps nobody
 * writes to any more (print/clear run later, in bpftrace's user space, in order).
 *
 * Example output (one interval):
 *   {"type": "stats", "data": {"@calls_a": {"812,1,1,bash": {"count": 2, "average": 1500, "total": 3000}}}}
 *   {"type": "map", "data": {"@bytes_a": {"812,1,1,bash": 52}}}
 *   {"type": "map", "data": {"@errors_a": {}}}
 *   {"type": "printf", "data": "syswatch-interval\\n"}
 */
""",
}


def record_format(idx: int, name: str) -> str:
    """The printf format of one event line (a bpftrace string literal): the CPU, the syscall's index
    and the EVENT object without its container fields. Its values, in order: cpu, ts_ns, pid, tid,
    uid, fd, count, ret, lat_ns, cgroup_id, comm (collector/parser.py's _EVENT_LINE reads it)."""
    return (f'"%d:{idx}{{\\"ts_ns\\":%llu,\\"pid\\":%d,\\"tid\\":%d,\\"uid\\":%d,\\"syscall\\":\\"{name}\\",'
            f'\\"fd\\":%d,\\"count\\":%llu,\\"ret\\":%lld,\\"lat_ns\\":%llu,\\"cgroup_id\\":%llu,\\"comm\\":\\"%s\\"}}\\n"')


def _events(syscalls: list[str], probe: str, pred: str, kicks: bool = True) -> str:
    """``kicks``: per-CPU @sent counts and the profile:hz:1 kick line (0.17's perf buffers report
    a loss only when a later event reaches that CPU). bpftrace 0.18+ reads its ring buffer's one
    loss counter at every poll and reports it exactly and at once, so its program leaves both
    out: a map read and update less per event, in the traced process."""
    out = [HEADERS["events"], "BEGIN\n{\n\t/* every probe is attached once BEGIN runs: the collector waits "
           f"for this line */\n\tprintf(\"{READY}\\n\");\n}}\n"]
    for idx, name in enumerate(syscalls):
        enter, leave, fd, count, ret = _probes(name, probe)
        fmt = record_format(idx, name)
        values = f"cpu, $e.0 + $2, pid, tid, uid, $e.1, $e.2, {ret}, nsecs - $e.0, cgroup, comm"
        if kicks:
            body = f"""/@inflight[tid].0/
{{
	$e = @inflight[tid];
	delete(@inflight[tid]);
	@sent[cpu] = @sent[cpu] + 1;
	printf({fmt},
	    {values});
}}"""
        else:   # one lookup (a missing key reads as zeros), no per-CPU count
            body = f"""{{
	$e = @inflight[tid];
	if ($e.0) {{
		delete(@inflight[tid]);
		printf({fmt},
		    {values});
	}}
}}"""
        out.append(f"""
{enter}
{pred}
{{
	@inflight[tid] = (nsecs, {fd}, {count});
}}

{leave}
{body}
""")
    out.append("""
tracepoint:sched:sched_process_exit
/@inflight[tid].0/
{
	/* a thread that dies inside a call never reaches the exit probe */
	delete(@inflight[tid]);
}
""")
    if kicks:
        out.append(f"""
profile:hz:1,
tracepoint:power:cpu_idle
/nsecs >= @kick_at[cpu]/
{{
	/* on every CPU, about once a second: the events it printed so far, behind them in its
	   buffer, and the kick's number (a gap: kick lines lost, which bpftrace's own loss count
	   includes). cpu_idle kicks an idle CPU, where the profile probe does not fire: without it
	   a burst's loss on a CPU that then idles would never be counted. */
	@kick_at[cpu] = nsecs + 900000000;
	@kicks[cpu] = @kicks[cpu] + 1;
	printf("{KICK} %d %d %d\\n", cpu, @sent[cpu], @kicks[cpu]);
}}
""")
    out.append("\nEND\n{\n\tclear(@inflight);\n" + ("\tclear(@sent);\n\tclear(@kicks);\n\tclear(@kick_at);\n" if kicks else "") + "}\n")
    return "".join(out)


def _counts(syscalls: list[str], probe: str, pred: str, kicks: bool = True) -> str:
    out = [HEADERS["counts"], f"BEGIN\n{{\n\t@gen = 0;\n\tprintf(\"{READY}\\n\");\n}}\n"]
    for idx, name in enumerate(syscalls):
        enter, leave, _fd, _count, ret = _probes(name, probe)
        updates = {}
        for gen in "ab":
            key = f"[pid, cgroup, {idx}, comm]"
            updates[gen] = (f"@calls_{gen}{key} = stats($lat); @bytes_{gen}{key} = sum($ret > 0 ? $ret : 0);\n"
                            f"\t\tif ($ret < 0) {{ @errors_{gen}{key} = count(); }}")
        out.append(f"""
{enter}
{pred}
{{
	@inflight[tid] = nsecs;
}}

{leave}
/@inflight[tid]/
{{
	$lat = nsecs - @inflight[tid];
	$ret = {ret};
	delete(@inflight[tid]);
	if (@gen == 0) {{
		{updates["a"]}
	}} else {{
		{updates["b"]}
	}}
}}
""")
    prints = {g: " ".join(f"print(@{m}_{g});" for m in ("calls", "bytes", "errors")) for g in "ab"}
    clears = {g: " ".join(f"clear(@{m}_{g});" for m in ("calls", "bytes", "errors")) for g in "ab"}
    out.append(f"""
tracepoint:sched:sched_process_exit
/@inflight[tid]/
{{
	/* a thread that dies inside a call never reaches the exit probe */
	delete(@inflight[tid]);
}}

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
	printf("{INTERVAL}\\n");
}}

END
{{
	/* the collector publishes only complete intervals: print nothing at exit */
	{clears["a"]} {clears["b"]} clear(@inflight); delete(@gen);
}}
""")
    return "".join(out)


def render(mode: str, probe: str = "tracepoint", syscalls=DEFAULT_SYSCALLS, pids=(), comms=(),
           cgroups=(), kicks: bool = True) -> str:
    """The program text for ``mode`` (events|counts), ``probe`` (kprobe|tracepoint) and filters.

    ``kicks``: events mode's own loss count (bpftrace 0.17); False for bpftrace with ring-buffer
    output, whose loss reports are exact and prompt (the shipped .bt files are the 0.17 form)."""
    pred = predicate(list(pids), list(comms), list(cgroups))
    build = {"events": _events, "counts": _counts}[mode]
    return build(check_syscalls(list(syscalls)), probe, pred, kicks)


def clock_offset_ns() -> int:
    """Wall clock minus CLOCK_MONOTONIC (bpftrace's nsecs), for EVENT ts_ns."""
    return time.time_ns() - time.monotonic_ns()


def command(bpftrace: str, mode: str, program: str, interval_ms: int) -> list[str]:
    """argv for /bin/sh that execs bpftrace with the positional parameters of the programs.

    $3 (bpftrace's own PID) is not known before it starts: the shell passes its own PID
    (``$$``) and then execs bpftrace, which keeps that PID.
    """
    second = str(clock_offset_ns()) if mode == "events" else str(interval_ms)
    # JSON output in both modes: bpftrace then escapes process names itself
    return ["/bin/sh", "-c", 'exec "$@" "$$"', "sh", bpftrace, "-f", "json", "-e", program,
            str(os.getpid()), second]


if __name__ == "__main__":
    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else "events"))
