"""Results -> markdown (printed, saved, and spliced into docs/BENCHMARKS.md between markers)."""
from __future__ import annotations

import re
from pathlib import Path

from bench import api_cost, catalog, saturation
from bench import targets as _targets


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
        others = m.get("other_tracers_at_start")
        why = (f"other tracers running: {', '.join(others)}; another tracer slows every syscall and competes "
               "for the CPUs" if others else f"load average {m['loadavg_at_start']:.2f} on {m['nproc']} CPUs")
        out += [f"**Noisy run**: the machine was busy ({why}), so treat these numbers as indicative only.", ""]
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
    rows = [[catalog.LABELS[r["tracer"]], r["workload"], f"{r['events']:,}", _f(r["base_s"], "{:.3f}"),
             _f(r["traced_s"], "{:.3f}"), f"**{r['ratio']:.2f}x**", _f(r.get("cpu_ratio"), "{:.2f}x"), r["pairs"]]
            for r in o.get("rows", [])]
    out += _table(["tracing", "workload", "syscalls", "none (s)", "traced (s)", "slowdown", "workload CPU",
                   "pairs"], rows)
    for name, why in o.get("skipped", {}).items():
        out.append(f"- **skipped** {catalog.LABELS.get(name, name)}: {why}")
    for w in o.get("warnings", []):
        out.append(f"- **warning**: {w}")
    if o.get("versions"):
        out += ["", "What each collector ran (its status: bpftrace, output, overload policy): "
                + "; ".join(f"{k} {v}" for k, v in o["versions"].items()), ""]
    out += vs_empty_md(o)
    if o.get("raw_lost"):
        out += ["Raw bpftrace \"Lost N events\" over all its runs: "
                + ", ".join(f"{k} {v}" for k, v in o["raw_lost"].items()), ""]
    return out


def vs_empty_md(o: dict) -> list[str]:
    """Issue 16's yardstick: each tracer's slowdown over the empty probe's, same workload, same run;
    and the same with the workload's own CPU time (utime + stime, where the BPF programs run)."""
    names = [t for t in catalog.LABELS if t not in ("none", "strace")
             and any(r["tracer"] == t for r in o.get("rows", []))]
    if not any(r["tracer"] in ("bpf-empty", "bpf23-empty") for r in o.get("rows", [])):
        return []
    rows = []
    for t in names:
        cells = [_targets.vs_empty(o, t, wl, e, key) for key in ("ratio", "cpu_ratio")
                 for wl in ("dd", "copy") for e in ("bpf-empty", "bpf23-empty")]
        rows.append([catalog.LABELS[t]] + [_f(c, "{:.2f}x") for c in cells])
    return ["Against the floor (issue 16): each slowdown divided by the empty probe's, same workload, same "
            "run; first by elapsed time, then by the workload's own CPU time (utime + stime from wait4: the BPF "
            "programs run in its context, while bpftrace's and the collector's user-space work compete with it "
            "for the 2 CPUs only in elapsed time).", ""] + _table(
        ["tracing", "dd / empty 0.17", "dd / empty 0.23", "copy / empty 0.17", "copy / empty 0.23",
         "dd CPU / empty 0.17", "dd CPU / empty 0.23", "copy CPU / empty 0.17", "copy CPU / empty 0.23"], rows)


def saturation_md(sat: dict) -> list[str]:
    out = ["### Saturation: a multi-process burst, and where the ceiling is", ""]
    multi = sat.get("multi", [])
    if multi:
        r0 = multi[0]
        out += [f"One container runs at once {r0['writers']} `dd if=/dev/zero of=/dev/null bs=1 count={r0['dd_n']:,}` "
                "and a mixed real workload (`tar cf - /usr/lib/python3.11 | gzip -1`, `cp -r` of the same tree, "
                "2,000 sqlite3 inserts with a commit each, `cat` of every file under /usr/share). The collector "
                "traces only that container (`--container`), so its counters are the workload's alone; **made** "
                "is counted by a second, lossless bpftrace (`count()` of the container's completed read/write "
                "calls in a map).", ""]
        rows = [[catalog.LABELS.get(r["tracer"], r["tracer"]), " ".join(str(v) for v in r["status"].values()),
                 f"{r['made']:,}", f"{r['delivered']:,} ({r['delivered'] / r['made']:.1%})", f"{r['lost']:,}",
                 f"{r['dropped']:,}", "**exact**" if r["exact"] else
                 f"**off by {r['delivered'] + r['lost'] + r['dropped'] - r['made']:+,}**",
                 f"{r['delivered_rate']:,.0f}", f"{r['elapsed_s']:.1f}"] for r in multi]
        out += _table(["collector", "bpftrace, output, policy", "made", "delivered", "lost", "dropped",
                       "delivered + lost + dropped", "delivered/s", "workload s"], rows)
    for name, why in sat.get("skipped", {}).items():
        out.append(f"- **skipped** {name}: {why}")
    c = sat.get("ceiling")
    if c:
        f, p, ps, z = c["bpftrace_file"], c["bpftrace_pipe"], c["parser"], c["zmq"]
        out += ["The ceiling, stage by stage (dd bs=1 saturating bpftrace 0.23 running the collector's own "
                "program; rates over the saturated middle of the run):", ""]
        out += _table(["stage", "events/s", "notes"], [
            ["bpftrace 0.23 formatting, into a file (tmpfs)", saturation.rate_text(f),
             f"{f['printed']:,} printed, {f['lost']:,} lost of {f['dd_calls']:,} calls; "
             f"{f['bytes_per_line']:.0f} bytes a line"],
            ["bpftrace 0.23 into a pipe, drained by one reader", saturation.rate_text(p), "formatting + the pipe"],
            ["the collector's parser alone, on the captured output", f"{ps['rate']:,.0f}",
             f"{ps['events']:,} events in 256 KiB reads"],
            ["ZeroMQ alone: those batches, PUB -> SUB over TCP loopback", f"{z['rate']:,.0f}",
             f"{z['received']:,} received"],
        ])
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
    rows = [[{"steady-compose": "steady, compose collector (0.23)"}.get(k, k), f"{r['rate']:,}/s for {r['seconds']} s",
             f"{r['achieved_rate']:,.0f}/s",
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
        f"**{s['rate']:,.0f} events/s** (a lower bound when it took everything: it kept up with the offer).", ""] + (
        api_cost.markdown(api["cost"]) if "cost" in api else [])


def targets_md(rows: list[dict]) -> list[str]:
    mark = {True: "met", False: "**not met**", None: "not measured"}
    return ["### Targets (issues 5 and 16)", ""] + _table(
        ["target", "measured", "result"], [[r["target"], r["shown"], mark[r["met"]]] for r in rows])


def render(results: dict) -> str:
    out = ["## Results", ""]
    out += machine_md(results["machine"], results["plan"])
    if "overhead" in results:
        out += overhead_md(results["overhead"])
    if "throughput" in results:
        out += throughput_md(results["throughput"])
    if "saturation" in results:
        out += saturation_md(results["saturation"])
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
