"""The targets of issue 5 (and the soak's completeness), checked against one run's results."""
from __future__ import annotations


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def check(results: dict) -> list[dict]:
    """One row per target: what, the measured value, met (True/False/None = not measured)."""
    rows = []

    def add(what: str, value, ok, shown: str):
        rows.append({"target": what, "value": value, "met": ok if value is not None else None,
                     "shown": shown if value is not None else "not measured"})

    dd = _get(results, "throughput", "workloads", "dd") or {}
    v = dd.get("events_vs_printf")
    add("events mode slowdown <= 1.10x raw bpftrace printf's (dd)", v, v is not None and v <= 1.10,
        f"{v:.2f}x" if v else "")
    steady = _get(results, "latency", "steady")
    if steady:
        complete = steady["delivered"] == steady["made"] and not steady.get("lost") and not steady.get("dropped")
        add(f"steady {steady['rate']:,} writes/s from one process delivered completely", complete, complete,
            f"{steady['delivered']:,}/{steady['made']:,} delivered, lost {steady.get('lost')}, "
            f"dropped {steady.get('dropped')}")
    else:
        add("steady 20,000 writes/s delivered completely", None, None, "")
    c = dd.get("collector") or {}
    v = c.get("accounted_frac")
    add("saturation (dd): delivered + counted lost/dropped >= 0.99 of made", v, v is not None and v >= 0.99,
        f"{v:.3f}" if v is not None else "")
    v = c.get("delivered_frac")
    add("saturation (dd): delivered >= 0.80 of made", v, v is not None and v >= 0.80,
        f"{v:.3f}" if v is not None else "")
    v = c.get("cpu_ratio")
    add("collector CPU per event <= bpftrace's (dd, same run)", v, v is not None and v <= 1.0,
        f"{v:.2f}x ({c.get('collector_us_per_event', 0):.2f} vs {c.get('bpftrace_us_per_event', 0):.2f} us)"
        if v else "")
    cnt = dd.get("counts") or {}
    v = cnt.get("vs_raw_count")
    add("counts mode slowdown <= 1.10x raw bpftrace count()'s (dd)", v, v is not None and v <= 1.10,
        f"{v:.2f}x" if v else "")
    v = cnt.get("events_vs_counts")
    add("counts mode >= 5x cheaper than events mode (dd slowdowns)", v, v is not None and v >= 5,
        f"{v:.1f}x" if v else "")
    high = _get(results, "latency", "high")
    v = high and high["p99_ms"]
    if high and v is None:  # nothing arrived: a miss, not a missing measurement
        add("latency p99 < 50 ms at 10,000 events/s", float("inf"), False, "no event delivered")
    else:
        add("latency p99 < 50 ms at 10,000 events/s", v, v is not None and v < 50, f"{v:.1f} ms" if v else "")
    v = _get(results, "api", "subscriber", "rate")
    add("API subscriber sustains 100,000 events/s", v, v is not None and v >= 100_000,
        f"{v:,.0f} events/s" if v else "")
    api_rows = _get(results, "api", "rows") or []
    add_ips = next((r for r in api_rows if r["endpoint"] == "add_ips" and r["clients"] == 16), None)
    v = add_ips and add_ips["rps"]
    add("POST /add_ips >= 1,000 req/s with 16 clients", v, v is not None and v >= 1000,
        f"{v:,.0f} req/s" if v else "")
    v = add_ips and add_ips["p99_ms"]
    add("POST /add_ips p99 < 50 ms with 16 clients", v, v is not None and v < 50, f"{v:.1f} ms" if v else "")
    st = [r["rps"] for r in api_rows if r["endpoint"] == "stats"]
    v = max(st) if st else None
    add("GET /stats >= 2,000 req/s", v, v is not None and v >= 2000, f"{v:,.0f} req/s" if v else "")
    return rows + issue16(results)


def vs_empty(overhead: dict, tracer: str, workload: str, empty: str, key: str = "ratio") -> float | None:
    """``tracer``'s slowdown over the empty probe's (same workload, same run); ``key`` cpu_ratio:
    the workload's own CPU time instead of its elapsed time."""
    rows = {(r["tracer"], r["workload"]): r.get(key) for r in (overhead or {}).get("rows", [])}
    a, b = rows.get((tracer, workload)), rows.get((empty, workload))
    return a / b if a and b else None


def issue16(results: dict) -> list[dict]:
    """Issue 16: the compose collector (bpftrace 0.23) against the empty probe of the same
    bpftrace; exact accounting of the multi-process burst; 20,000/s steady through compose."""
    rows = []

    def add(what: str, value, ok, shown: str):
        rows.append({"target": what, "value": value, "met": ok if value is not None else None,
                     "shown": shown if value is not None else "not measured"})
    o = results.get("overhead")
    for mode, limit in (("events", 1.5), ("counts", 1.2)):
        for wl in ("dd", "copy"):
            v = vs_empty(o, f"compose-{mode}", wl, "bpf23-empty")
            add(f"compose collector, {mode} mode <= {limit}x the empty probe's slowdown ({wl})", v,
                v is not None and v <= limit, f"{v:.2f}x" if v else "")
    multi = _get(results, "saturation", "multi")
    v = all(r["exact"] for r in multi) if multi else None
    add("multi-process saturation: delivered + lost + dropped = made, every collector", v, bool(v),
        "; ".join(f"{r['tracer']}: {r['delivered'] + r['lost'] + r['dropped']:,} of {r['made']:,}"
                  for r in multi or []))
    st = _get(results, "latency", "steady-compose")
    v = st and st["delivered"] == st["made"] and not st.get("lost") and not st.get("dropped")
    add("compose collector: steady 20,000 writes/s delivered completely", st and v, bool(v),
        f"{st['delivered']:,}/{st['made']:,} delivered, lost {st.get('lost')}" if st else "")
    return rows
