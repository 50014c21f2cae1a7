"""Throughput, CPU per event and counts-mode figures, derived from the overhead runs.

They come from the same runs as the slowdown ratios on purpose: the raw bpftrace printf
rate and the collector's delivered rate are then measured on the same machine minutes
apart, interleaved with the same baselines.
"""
from __future__ import annotations

from bench import stats


def _rows(overhead: dict, tracer: str, workload: str) -> dict | None:
    return next((r for r in overhead.get("rows", []) if r["tracer"] == tracer and r["workload"] == workload), None)


def _per_event(runs: list[dict], role: str, key: str) -> float | None:
    """Median over runs of CPU seconds of ``role`` per event (events counted by ``key``)."""
    vals = [r["cpu_s"][role] / r[key] for r in runs if r.get(key) and role in r.get("cpu_s", {})]
    return stats.median(vals)


def derive(overhead: dict) -> dict:
    out: dict = {"workloads": {}}
    raw_lost = overhead.get("raw_lost", {})
    for wl in ("dd", "copy"):
        res: dict = {}
        printf = _rows(overhead, "bpf-printf", wl)
        if printf:
            res["raw_printf"] = {
                "made": printf["events"],
                "rate": printf["events"] / printf["traced_s"],
                "lost": raw_lost.get("bpf-printf"),
                "bpftrace_us_per_event": _us(_per_event(printf["runs"], "bpftrace", "made")),
            }
        ev = _rows(overhead, "collector-events", wl)
        if ev:
            runs = ev["runs"]
            worst = min(runs, key=lambda r: r["delivered"])
            res["collector"] = {
                "made": worst["made"], "delivered": worst["delivered"],
                "lost": worst.get("lost"), "dropped": worst.get("dropped"),
                "malformed": worst.get("malformed"),
                "delivered_frac": worst["delivered"] / worst["made"],
                # lost/dropped are host-wide counters; capped so other processes' losses cannot
                # make up for this workload's missing events; the worst run counts
                "accounted_frac": min(min(1.0, (r["delivered"] + (r.get("lost") or 0)
                                                + (r.get("dropped") or 0)) / r["made"]) for r in runs),
                "rate": stats.median([r["delivered"] / r["span_s"] for r in runs]),
                "collector_us_per_event": _us(_per_event(runs, "collector", "events")),
                "bpftrace_us_per_event": _us(_per_event(runs, "bpftrace", "events")),
                "runs": len(runs),
            }
            c = res["collector"]
            if c["collector_us_per_event"] and c["bpftrace_us_per_event"]:
                c["cpu_ratio"] = c["collector_us_per_event"] / c["bpftrace_us_per_event"]
        cnt = _rows(overhead, "collector-counts", wl)
        raw_count = _rows(overhead, "bpf-count", wl)
        if cnt:
            res["counts"] = {
                "made": cnt["events"],
                "counted_min": min(r["counted_calls"] for r in cnt["runs"]),
                "ratio": cnt["ratio"],
                "vs_raw_count": stats.ratio(cnt["ratio"], raw_count["ratio"]) if raw_count else None,
                "events_vs_counts": stats.ratio(ev["ratio"], cnt["ratio"]) if ev else None,
            }
        if ev and printf:
            res["events_vs_printf"] = ev["ratio"] / printf["ratio"]
        out["workloads"][wl] = res
    return out


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e6
