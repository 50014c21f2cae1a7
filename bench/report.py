"""Results -> markdown (printed, saved, and spliced into docs/BENCHMARKS.md between markers)."""
from __future__ import annotations

import re
from pathlib import Path

from . import tracers


def _f(x, fmt="{:.2f}", none="-"):
    return none if x is None else fmt.format(x)


def _table(head: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def machine_md(m: dict, plan: dict) -> list[str]:
    v = m["versions"]
    out = [
        f"Run: **{plan['name']}** plan, {m['date']}. Machine: {m['nproc']} CPUs ({m['cpu']}), "
        f"kernel {m['kernel']}, load average {m['loadavg_at_start']:.2f} at start"
        + (f", {m['loadavg_at_end']:.2f} at end." if "loadavg_at_end" in m else "."),
        "",
    ]
    busy = m["loadavg_at_start"] > 0.5 * m["nproc"] or m.get("other_tracers_at_start")
    if busy:
        out += [f"**Noisy run**: the machine was busy (other tracers running: "
                f"{', '.join(m.get('other_tracers_at_start') or []) or 'none'}); another tracer slows every "
                "syscall and competes for the CPUs, so treat these numbers as indicative only.", ""]
    return out + [
        f"Versions: {v['bpftrace']}; Python {v['python']}; pyzmq {v['pyzmq']}; bottle {v['bottle']}; "
        f"waitress {v['waitress']}; {v['strace']}; wrk: {v['wrk']}.",
        "",
    ]


def overhead_md(o: dict) -> list[str]:
    out = ["### Overhead: slowdown against no tracing",
           "",
           "Workloads: " + "; ".join(f"`{k}` = {d}" for k, d in o.get("workloads", {}).items())
           + ". strace gets smaller ones (" + "; ".join(o.get("strace_workloads", {}).values())
           + "), each ratio against its own baseline. Ratio = median of interleaved (baseline, traced) pairs.",
           ""]
    rows = [[tracers.LABELS[r["tracer"]], r["workload"], f"{r['events']:,}", _f(r["base_s"], "{:.3f}"),
             _f(r["traced_s"], "{:.3f}"), f"**{r['ratio']:.2f}x**", r["pairs"]] for r in o.get("rows", [])]
    out += _table(["tracing", "workload", "syscalls", "none (s)", "traced (s)", "slowdown", "pairs"], rows)
    for w in o.get("warnings", []):
        out.append(f"- **warning**: {w}")
    if o.get("raw_lost"):
        out += ["Raw bpftrace \"Lost N events\" over all its runs: "
                + ", ".join(f"{k} {v}" for k, v in o["raw_lost"].items()), ""]
    return out


def throughput_md(t: dict) -> list[str]:
    out = ["### Throughput and CPU per event (same runs as above)", ""]
    rows = []
    for wl, res in t.get("workloads", {}).items():
        p, c = res.get("raw_printf"), res.get("collector")
        if p:
            rows.append([wl, "raw bpftrace printf", f"{p['made']:,}", "all printed", _f(p["lost"], "{}"), "-",
                         f"{p['rate']:,.0f}", "-", _f(p["bpftrace_us_per_event"])])
        if c:
            rows.append([wl, "collector events -> subscriber", f"{c['made']:,}",
                         f"{c['delivered']:,} ({c['delivered_frac']:.1%})", _f(c["lost"], "{:,}"),
                         _f(c["dropped"], "{:,}"), f"{c['rate']:,.0f}", _f(c["collector_us_per_event"]),
                         _f(c["bpftrace_us_per_event"])])
    out += _table(["workload", "path", "events made", "delivered", "lost (bpftrace)", "dropped",
                   "events/s", "collector CPU us/event", "bpftrace CPU us/event"], rows)
    out += ["Delivered = the workload's own events seen by a subscriber (matched by pid, comm, fd and size; "
            "worst run). Lost/dropped are the collector's host-wide status counters over the run. "
            "events/s = delivered / (workload start -> last event arrived). CPU per event = utime+stime from "
            "/proc over all events the collector handled in the run.", ""]
    rows = []
    for wl, res in t.get("workloads", {}).items():
        c = res.get("counts")
        if c:
            rows.append([wl, f"{c['ratio']:.2f}x", _f(c["vs_raw_count"], "{:.2f}x"),
                         _f(c["events_vs_counts"], "{:.1f}x"), f"{c['counted_min']:,} / {c['made']:,}"])
    if rows:
        out += ["Counts mode:", ""]
        out += _table(["workload", "counts-mode slowdown", "vs raw count()", "events-mode slowdown / counts-mode",
                       "calls counted / made"], rows)
    return out


def latency_md(lat: dict) -> list[str]:
    rows = [[k, f"{r['rate']:,}/s for {r['seconds']} s", f"{r['achieved_rate']:,.0f}/s",
             f"{r['delivered']:,} / {r['made']:,}", _f(r.get("lost"), "{}"), _f(r.get("dropped"), "{}"),
             _f(r["p50_ms"]), _f(r["p99_ms"]), _f(r["max_ms"])] for k, r in lat.items()]
    return ["### Steady rate and latency (collector, events mode)", "",
            "One process writes to /dev/null at a fixed rate; latency = arrival at a subscriber minus "
            "`time.time_ns()` taken just before the write.", ""] + _table(
        ["run", "offered", "achieved", "delivered / made", "lost", "dropped", "p50 ms", "p99 ms", "max ms"], rows)


def api_md(api: dict) -> list[str]:
    rows = [[f"`{'GET /stats' if r['endpoint'] == 'stats' else 'POST /' + r['endpoint']}`"
             + (f" ({r['list_size']:,} IPs)" if r.get("list_size") else ""), r["clients"],
             f"{r['rps']:,.0f}", _f(r["p50_ms"]), _f(r["p99_ms"]), r["non2xx"] + r["errors"]] for r in api["rows"]]
    s = api["subscriber"]
    return ["### API", "", f"Load generator: {api['loader']}, {api['seconds']} s per row, loopback.", ""] + _table(
        ["request", "clients", "req/s", "p50 ms", "p99 ms", "errors"], rows) + [
        f"API subscriber: offered {s['offered_rate']:,} events/s for {s['send_s']:.1f} s "
        f"(synthetic batches of 256), took in {s['received']:,} of {s['sent']:,} at "
        f"**{s['rate']:,.0f} events/s** (a lower bound when it took everything: it kept up with the offer).", ""]


def targets_md(rows: list[dict]) -> list[str]:
    mark = {True: "met", False: "**not met**", None: "not measured"}
    return ["### Targets (issue 5)", ""] + _table(
        ["target", "measured", "result"], [[r["target"], r["shown"], mark[r["met"]]] for r in rows])


def render(results: dict) -> str:
    out = ["## Results", ""]
    out += machine_md(results["machine"], results["plan"])
    if "overhead" in results:
        out += overhead_md(results["overhead"])
    if "throughput" in results:
        out += throughput_md(results["throughput"])
    if "latency" in results:
        out += latency_md(results["latency"])
    if "api" in results:
        out += api_md(results["api"])
    if "targets" in results:
        out += targets_md(results["targets"])
    for name, err in results.get("errors", {}).items():
        out.append(f"- **{name} failed**: {err}")
    out.append(f"Suite wall time: {results.get('wall_s', 0):.0f} s.")
    return "\n".join(out) + "\n"


def splice(doc: Path, section: str, markdown: str) -> None:
    """Replace the text between ``<!-- bench:SECTION:begin/end -->`` in ``doc`` (appended if absent)."""
    begin, end = f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
