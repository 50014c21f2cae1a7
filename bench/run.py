"""The one benchmark command: overhead, throughput, CPU per event, latency and API load.

Prints a markdown report, saves it with the raw results (JSON) in --out, and, for a full
run, splices it into docs/BENCHMARKS.md. Needs root, bpftrace and strace.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

from bench import api_load, latency, machine, overhead, report, saturation, targets, throughput
from bench.plan import FULL, QUICK
from harness import ROOT

SECTIONS = ("overhead", "saturation", "latency", "api")
DOC = ROOT / "docs" / "BENCHMARKS.md"

EPILOG = textwrap.dedent(f"""\
    sections:
      overhead  dd (bs=1) and a 4 KiB-buffer file copy under: no tracing, raw bpftrace (empty probe,
                count(), printf per event), the collector in events and counts mode (subscriber
                attached) and strace; interleaved pairs. Also gives throughput, lost/dropped counts
                and CPU per event (collector vs bpftrace, from /proc) from the same runs.
      saturation  a multi-process burst (4 dd bs=1 writers + tar|gzip, cp -r, sqlite, cat in one
                container) under the host collector and the compose collector, checked exactly
                against a lossless count(); and the ceiling stage by stage: bpftrace 0.23 alone
                (into a file, into a pipe), the parser alone, ZeroMQ alone.
      latency   steady 20,000 writes/s from one process (delivered completely?) and the latency
                from syscall to subscriber at ~100/s and ~10,000/s.
      api       requests/s and p50/p99 of POST /add_ips, POST /print_all_ips (10,000 IPs) and
                GET /stats with 1 and 16 clients (wrk if installed), and the API subscriber's
                sustained events/s.

    examples:
      sudo python3 -m bench.run                      # full run (~6 min), updates {DOC.relative_to(ROOT)}
      sudo python3 -m bench.run --quick              # CI size (< 2 min), report in a temp dir
      sudo python3 -m bench.run --only overhead,api  # some sections
      sudo python3 -m bench.run --only overhead --tracers bpf23-empty,bpf23-events,bpf23-exit --no-docs
      sudo python3 -m bench.run --quick --out /tmp/b --docs /tmp/b/BENCHMARKS.md

    The machine should be otherwise idle: other work on it shows up as noise in every ratio.
    Timings are never asserted by the tests; tests/test_bench_run.py runs --quick (and a 30 s soak) to keep
    this working.
    """)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__.split("\n\n")[0],
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small workloads, one round (CI; default: the full plan, 3 rounds)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run (default: {','.join(SECTIONS)})")
    ap.add_argument("--out", type=Path, default=None,
                    help="directory for report.md and results.json (default: a new temp directory)")
    ap.add_argument("--docs", type=Path, default=None,
                    help=f"markdown file whose results section is replaced (default: {DOC.relative_to(ROOT)} "
                         "for a full run of every section, none for --quick)")
    ap.add_argument("--no-docs", action="store_true", help="do not update any markdown file")
    ap.add_argument("--tracers", default="", metavar="NAMES",
                    help="overhead: only these set-ups, comma-separated (default: all of them: "
                         f"{','.join(overhead.TRACERS)}; only when named: {','.join(overhead.EXTRA_TRACERS)}); "
                         "no tracing is always measured")
    args = ap.parse_args(argv)
    args.tracer_names = [t.strip() for t in args.tracers.split(",") if t.strip()]
    known = overhead.TRACERS + overhead.EXTRA_TRACERS
    unknown = [t for t in args.tracer_names if t not in known]
    if unknown:
        ap.error(f"--tracers: unknown set-up(s) {', '.join(unknown)}; known: {', '.join(known)}")
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad or not args.sections:
        ap.error(f"--only: unknown section(s) {', '.join(bad) or '(none given)'}; known: {', '.join(SECTIONS)}")
    if (args.docs is None and not args.quick and not args.no_docs and args.sections == list(SECTIONS)
            and not args.tracer_names):
        args.docs = DOC
    if args.no_docs:
        args.docs = None
    return args


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    machine.check_prerequisites()
    plan = QUICK if args.quick else FULL
    out = args.out or Path(tempfile.mkdtemp(prefix="syswatch-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results: dict = {"machine": machine.describe(), "plan": plan.as_dict(), "errors": {}}
    log(f"{plan.name} run of {', '.join(args.sections)}; results in {out}")
    runners = {"overhead": lambda: overhead.run(plan, log, args.tracer_names or None),
               "latency": lambda: latency.run(plan, log),
               "saturation": lambda: saturation.run(plan, log),
               "api": lambda: api_load.run(plan, log)}
    for section in args.sections:
        try:
            results[section] = runners[section]()
        except Exception as exc:  # one broken section must not hide the others' numbers
            log(f"{section} failed:\n{traceback.format_exc()}")
            results["errors"][section] = f"{type(exc).__name__}: {exc}"
    if "overhead" in results:
        results["throughput"] = throughput.derive(results["overhead"])
    results["targets"] = targets.check(results)
    results["wall_s"] = time.monotonic() - t0
    results["machine"]["loadavg_at_end"] = __import__("os").getloadavg()[0]
    text = report.render(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "report.md").write_text(text)
    print(text)
    if args.docs:
        report.splice(args.docs, "results", text)
        log(f"updated {args.docs}")
    log(f"done in {results['wall_s']:.0f} s; {out / 'report.md'}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
