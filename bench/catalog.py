"""Every tracing set-up the benchmarks compare, by name (bench/tracers.py, bench/compose.py).

``LABELS``: name -> how reports call it; ``make(name)``: a new, unstarted set-up.
"""
from __future__ import annotations

from bench import legacy
from bench.compose import ComposeCollectorTracer
from bench.tracers import RAW23, RAW_PROGRAMS, CollectorTracer, RawBpftrace, Strace, Tracer
from harness.bpftrace import TRIXIE_FIX, trixie_bpftrace

LABELS = {
    "none": "no tracing",
    "bpf-empty": "bpftrace, empty probe",
    "bpf-empty-exit": "bpftrace, empty probes at entry and exit",
    "bpf-count": "bpftrace, count() per pid",
    "bpf-printf": "bpftrace, printf per event to /dev/null",
    "bpf23-empty": "bpftrace 0.23, empty probe",
    "bpf23-empty-exit": "bpftrace 0.23, empty probes at entry and exit",
    "bpf23-count": "bpftrace 0.23, count() per pid",
    "bpf23-printf": "bpftrace 0.23, printf per event to /dev/null",
    "bpf23-inflight": "bpftrace 0.23, v2's events program's per-call state alone",
    "bpf23-record": "bpftrace 0.23, v2's events program's record alone",
    "bpf23-events": "bpftrace 0.23, v2's events program to /dev/null",
    "bpf23-exit": "bpftrace 0.23, exit-only record (fd, count from registers)",
    "bpf23-files": "bpftrace 0.23, the collector's events program (exit-only, files, kicks)",
    "bpf23-files-nokick": "bpftrace 0.23, the same without the per-CPU kicks",
    "bpf23-files-kickh": "bpftrace 0.23, the same with the kicks' count in a hash map",
    "bpf23-files-lat": "bpftrace 0.23, the same with --latency",
    "bpf23-rawtp": "bpftrace 0.23, the record from rawtracepoint:sys_exit",
    "bpf23-counts-sum": "bpftrace 0.23, the collector's counts program with --latency, latency sum only",
    "bpf23-counts-hist": "bpftrace 0.23, the same with the histogram: calls keyed by latency bucket",
    "bpf23-counts-histfn": "bpftrace 0.23, the same with hist() per row (the program of 2026-12-06)",
    "bpf-counts-sum": "bpftrace 0.17, the collector's counts program with --latency, latency sum only",
    "bpf-counts-hist": "bpftrace 0.17, the same with the histogram: calls keyed by latency bucket",
    "bpf-counts-histfn": "bpftrace 0.17, the same with hist() per row (the program of 2026-12-06)",
    "strace": "strace -f -e trace=read,write",
    "collector-events": "collector, events mode + subscriber",
    "collector-counts": "collector, counts mode + subscriber",
    "collector-events-all": "collector, events mode, --syscalls all + subscriber",
    "collector23-events": "collector (bpftrace 0.23), events mode + subscriber",
    "v2collector23-events": "protocol v2's collector (git 2eab2df, bpftrace 0.23), events mode + subscriber",
    "compose-events": "compose collector (0.23), events mode + subscriber",
    "compose-counts": "compose collector (0.23), counts mode + subscriber",
}


def _trixie() -> str:
    """The bpftrace 0.23 wrapper (scripts/trixie-bpftrace.sh), or what to run to get it."""
    binary = trixie_bpftrace()
    if binary is None:
        raise RuntimeError(TRIXIE_FIX)
    return binary


def make(name: str) -> Tracer:
    """The set-up called ``name`` (a key of LABELS), not started yet."""
    if name == "none":
        return Tracer()
    if name == "strace":
        return Strace()
    if name in RAW_PROGRAMS:
        return RawBpftrace(name)
    if name in RAW23:
        return RawBpftrace(name, RAW23[name], _trixie())
    if name == "collector-events-all":           # issue 30: the copy calls' probes attached, not called
        return CollectorTracer("events", extra=("--syscalls", "all"), name=name)
    if name in ("collector23-events", "v2collector23-events"):   # issue 22: v2's product against this one
        return CollectorTracer("events", extra=("--bpftrace", _trixie()), name=name,
                               revision=legacy.V2_REVISION if name.startswith("v2") else "")
    if name.startswith("collector-"):
        return CollectorTracer(name.split("-", 1)[1])
    if name.startswith("compose-"):
        return ComposeCollectorTracer(name.split("-", 1)[1])
    raise ValueError(f"unknown tracer {name!r}; known: {', '.join(LABELS)}")
