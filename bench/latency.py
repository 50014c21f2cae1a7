"""Steady-rate delivery and syscall-to-subscriber latency, under the collector in events mode.

A writer process (harness.workloads writer) writes to /dev/null at a fixed rate; write i asks
for BASE_COUNT + i bytes and its send time (time.time_ns() just before the call) is recorded.
The subscriber stamps each matching event with its arrival time. Latency = arrival - send,
so it covers bpftrace's output buffering, the collector's parse + batching (flushed at least
every 10 ms) and ZeroMQ delivery. Both clocks are the same host's wall clock.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from bench import catalog, compose, stats, tracers
from bench.plan import Plan
from harness import ROOT, procs, workloads


def paced_run(tracer: tracers.CollectorTracer, rate: int, seconds: float) -> dict:
    """Run the writer at ``rate`` for ``seconds``; delivery counts and latency percentiles."""
    sub = tracer.subscriber
    out = Path(tempfile.mkstemp(prefix="syswatch-bench-send.")[1])
    try:
        gated = procs.Gated(workloads.writer_argv(rate, seconds, out), cwd=ROOT)
        sub.watch(gated.pid, workloads.is_writer_event)
        sub.record_arrivals = True
        st0 = sub.status
        gated.release()
        elapsed = gated.wait()
        sub.wait_drained(int(rate * seconds), quiet=2.0)
        st1 = sub.settled_status(st0, int(rate * seconds))      # NoStatus: the section fails, saying why
        sub.record_arrivals = False
        sent = workloads.read_send_times(out)
    finally:
        out.unlink()
    arrivals = dict(sub.arrivals)
    lat_ms = [(arrivals[i] - sent[i]) / 1e6 for i in range(len(sent)) if i in arrivals]
    result = {
        "rate": rate, "seconds": seconds, "made": len(sent), "delivered": len(arrivals),
        "achieved_rate": len(sent) / elapsed if elapsed else None,
        "p50_ms": stats.percentile(lat_ms, 50), "p99_ms": stats.percentile(lat_ms, 99),
        "max_ms": max(lat_ms) if lat_ms else None,
        "lost": st1["lost_total"] - st0["lost_total"],
        "dropped": st1["dropped_total"] - st0["dropped_total"],
    }
    return result


def run(plan: Plan, log: Callable[[str], None]) -> dict:
    results = {}
    with catalog.make("collector-events") as tracer:
        for key, rate, secs in (("steady", plan.steady_rate, plan.steady_s),
                                ("low", plan.latency_low_rate, plan.latency_low_s),
                                ("high", plan.latency_high_rate, plan.latency_high_s)):
            r = paced_run(tracer, rate, secs)
            results[key] = r
            log(f"paced writer {key}: {rate}/s for {secs}s: delivered {r['delivered']}/{r['made']}, "
                f"latency p50 {_fmt(r['p50_ms'])} ms p99 {_fmt(r['p99_ms'])} ms")
    if compose.unavailable() is None:          # the compose collector (0.23): the steady rate too
        with catalog.make("compose-events") as tracer:
            r = results["steady-compose"] = paced_run(tracer, plan.steady_rate, plan.steady_s)
        log(f"paced writer steady (compose collector): {plan.steady_rate}/s for {plan.steady_s}s: "
            f"delivered {r['delivered']}/{r['made']}, latency p99 {_fmt(r['p99_ms'])} ms")
    return results


def _fmt(x):
    return "-" if x is None else f"{x:.2f}"
