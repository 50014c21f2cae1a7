"""Overhead (slowdown against no tracing) and, from the same runs, throughput and CPU per event.

For every tracer and workload the suite runs (baseline, traced) pairs, interleaved round
by round (A B A B ...), so slow drift of a noisy machine hits both sides of each ratio.
A tracer is started before its traced runs and stopped after them, so its start-up is
never timed. The reported ratio is the median of the per-pair ratios.

The collector's dd runs double as the throughput measurement: its subscriber counts the
workload's own events (by pid, comm and the syscall's fd/size), status messages give the
lost/dropped counters, and /proc gives the CPU time of the collector and its bpftrace.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from bench import catalog, compose, stats, tracers
from bench.plan import Plan
from harness import procs, workloads
from harness.bpftrace import trixie_missing

TRACERS = ["bpf-empty", "bpf-empty-exit", "bpf-count", "bpf-printf",
           "bpf23-empty", "bpf23-empty-exit", "bpf23-count", "bpf23-printf",
           "bpf23-inflight", "bpf23-record", "bpf23-events",
           "bpf23-exit", "bpf23-files", "bpf23-files-lat", "bpf23-rawtp",
           "collector-events", "collector-events-all", "collector-counts", "compose-events", "compose-counts",
           "strace"]
# Run only when named (bench.run --tracers): issue 25's counts-mode histogram against the sum alone.
EXTRA_TRACERS = ["bpf23-counts-sum", "bpf23-counts-hist", "bpf23-counts-histfn", "bpf-counts-sum", "bpf-counts-hist",
                 "bpf-counts-histfn", "bpf23-files-nokick", "bpf23-files-kickh", "collector23-events",
                 "v2collector23-events"]
COMPOSE = ("compose-events", "compose-counts")


def dd_like(bs: int) -> Callable[[dict], bool]:
    """Events of a ``dd bs=BS``: reads of fd 0 and writes of fd 1 asking for BS bytes."""
    def match(ev: dict) -> bool:
        return ev["count"] == bs and ((ev["syscall"] == "read" and ev["fd"] == 0)
                                      or (ev["syscall"] == "write" and ev["fd"] == 1))
    return match


def is_dd_row(row: dict) -> bool:
    return row.get("comm") == "dd"


class Workload:
    def __init__(self, key: str, desc: str, argv: list[str], events: int, bs: int):
        self.key, self.desc, self.argv, self.events, self.bs = key, desc, argv, events, bs


def make_workloads(plan: Plan, tmp: Path, for_strace: bool = False) -> list[Workload]:
    n = plan.strace_dd_n if for_strace else plan.dd_n
    mb = plan.strace_copy_mb if for_strace else plan.copy_mb
    src = workloads.make_file(tmp / f"copy-src-{mb}M", mb << 20)
    return [
        Workload("dd", f"dd if=/dev/zero of=/dev/null bs=1 count={n}", workloads.dd_argv(n),
                 workloads.dd_events(n), 1),
        Workload("copy", f"copy a {mb} MB file with 4 KiB buffers (dd bs=4096)",
                 workloads.copy_argv(src, tmp / "copy-dst"), workloads.copy_events(mb << 20), 4096),
    ]


def timed_run(tracer: tracers.Tracer, wl: Workload) -> dict:
    """One run of ``wl`` under ``tracer``: elapsed seconds, plus delivery and CPU figures."""
    sub = tracer.subscriber
    gated = procs.Gated(tracer.wrap(wl.argv))
    if sub:
        sub.watch(gated.pid, dd_like(wl.bs), row_match=is_dd_row)
        st0 = sub.status
    pids = tracer.pids()
    cpu0 = {role: procs.cpu_seconds(pid) for role, pid in pids.items()}
    gated.release()
    elapsed = gated.wait()
    run = {"elapsed_s": elapsed, "made": wl.events,
           "workload_cpu_s": gated.rusage.ru_utime + gated.rusage.ru_stime}
    if sub:
        # counts arrive once per interval: a quiet spell must outlast one
        counts = tracer.name.endswith("counts")
        sub.wait_drained(wl.events, quiet=getattr(tracer, "interval", 1.0) + 1.5 if counts else 2.0)
        st1 = sub.settled_status(st0, wl.events)          # NoStatus: the section fails, saying why
        run["delivered"] = sub.matched
        # from the workload's start to the arrival of its last event (the pipeline drained)
        run["span_s"] = max(elapsed, sub.last_arrival - gated.started_mono)
        run["counted_calls"] = sub.counted_calls
        for key in ("events_total", "lost_total", "dropped_total", "malformed_total"):
            run[key.replace("_total", "")] = st1[key] - st0[key]
    if isinstance(tracer, tracers.CollectorTracer) and not tracer.alive():
        run["collector_exited"] = f"status {getattr(tracer.proc, 'returncode', '?')}: {tracer.log_tail(6)}"
    elif pids.get("bpftrace") and procs.comm_of(pids["bpftrace"]) != "bpftrace":
        run["collector_exited"] = f"its bpftrace {pids['bpftrace']} is gone: {getattr(tracer, 'log_tail', str)()}"
    cpu1 = {role: procs.cpu_seconds(pid) for role, pid in pids.items()}
    run["cpu_s"] = {role: cpu1[role] - cpu0[role] for role in pids}
    return run


def run(plan: Plan, log: Callable[[str], None], only_tracers: list[str] | None = None) -> dict:
    # tmpfs when there is one: the copy then measures syscalls, not the disk's writeback
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    if shm and shutil.disk_usage(shm).free < 3 * (plan.copy_mb << 20):
        shm = None
    tmp = Path(tempfile.mkdtemp(prefix="syswatch-bench-", dir=shm))
    wls = {False: make_workloads(plan, tmp), True: make_workloads(plan, tmp, for_strace=True)}
    names = [t for t in TRACERS + EXTRA_TRACERS if t in only_tracers] if only_tracers else list(TRACERS)
    skipped = {}
    why = trixie_missing() if any(t in tracers.RAW23 for t in names) else None
    if why:
        for t in [t for t in names if t in tracers.RAW23]:
            skipped[t] = why
            names.remove(t)
    if any(t in COMPOSE for t in names):
        why = compose.unavailable()
        for t in [t for t in names if t in COMPOSE] if why else []:
            skipped[t] = why
            names.remove(t)
    pairs: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    versions: dict[str, str] = {}
    raw_lost: dict[str, int] = {}
    try:
        for rnd in range(plan.rounds):
            for name in names:
                wl_set = wls[name == "strace"]
                base = {wl.key: timed_run(tracers.Tracer(), wl) for wl in wl_set}
                with catalog.make(name) as tracer:
                    traced = {wl.key: timed_run(tracer, wl) for wl in wl_set}
                    if tracer.subscriber and tracer.subscriber.status:   # which bpftrace, output, policy
                        st = tracer.subscriber.status
                        versions[name] = " ".join(str(st[k]) for k in ("bpftrace", "output", "overload") if k in st)
                if hasattr(tracer, "lost"):
                    raw_lost[name] = raw_lost.get(name, 0) + tracer.lost
                for wl in wl_set:
                    pairs.setdefault((name, wl.key), []).append((base[wl.key], traced[wl.key]))
                    log(f"overhead round {rnd + 1}/{plan.rounds}: {name:17} {wl.key:4} "
                        f"{base[wl.key]['elapsed_s']:7.3f}s -> {traced[wl.key]['elapsed_s']:7.3f}s")
    finally:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
    rows = []
    for (name, key), runs in pairs.items():
        wl = next(w for w in wls[name == "strace"] if w.key == key)
        rows.append({
            "tracer": name, "label": catalog.LABELS[name], "workload": key, "desc": wl.desc,
            "events": wl.events, "pairs": len(runs),
            "base_s": stats.median([b["elapsed_s"] for b, _ in runs]),
            "traced_s": stats.median([t["elapsed_s"] for _, t in runs]),
            "ratio": stats.median([t["elapsed_s"] / b["elapsed_s"] for b, t in runs]),
            # the workload's own CPU time (the BPF programs run in its context): what tracing costs
            # the traced process, apart from the CPUs that bpftrace and the collector take from it
            "cpu_ratio": stats.median([t["workload_cpu_s"] / b["workload_cpu_s"] for b, t in runs
                                       if b.get("workload_cpu_s")]),
            "runs": [t for _, t in runs],
        })
    warnings = [f"{r['tracer']} {r['workload']} run {i + 1}: {run['collector_exited']}"
                for r in rows for i, run in enumerate(r["runs"]) if run.get("collector_exited")]
    return {"rows": rows, "skipped": skipped, "raw_lost": raw_lost, "warnings": warnings, "versions": versions,
            "workloads": {w.key: w.desc for w in wls[False]},
            "strace_workloads": {w.key: w.desc for w in wls[True]}}
