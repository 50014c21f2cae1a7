"""Soak: the whole system (collector + API, local processes) for a set time under a steady
syscall load and API traffic.

Reports events seen versus events made, the counted losses, the memory (RSS) of every
process at start, end and peak, the API's requests and errors. Exit status 0 only when
nothing went missing without being counted (seen + lost + dropped >= made), no HTTP request
failed and every process is still running at the end. Timings are never judged.

    sudo python3 -m bench.soak --duration 30                 # the CI run
    sudo python3 -m bench.soak --duration 600 --docs docs/BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from bench import machine, report, tracers
from bench.api_load import BenchApi
from bench.subscriber import NoStatus
from harness import ROOT, procs, workloads


class ApiTraffic(threading.Thread):
    """A client cycling through the API's endpoints at about ``rps`` requests/s."""

    def __init__(self, port: int, rps: float, watch_pid: int):
        super().__init__(daemon=True, name="soak-api-traffic")
        self.port, self.period, self.watch_pid = port, 1.0 / rps, watch_pid
        self.stop_flag = threading.Event()
        self.requests = 0
        self.errors: list[str] = []
        self.last_stats: dict | None = None

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        n = 0
        while not self.stop_flag.is_set():
            n += 1
            step = n % 5
            if step == 0:
                req = ("POST", "/add_ips", {"add_ips": [n, f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"]})
            elif step == 1:
                req = ("GET", "/stats", None)
            elif step == 2:
                req = ("GET", f"/events?limit=20&pid={self.watch_pid}", None)
            elif step == 3:
                req = ("POST", "/print_all_ips", {"print_all_ips": True})
            else:
                req = ("GET", "/healthz", None)
            method, path, body = req
            try:
                data = json.dumps(body).encode() if body is not None else None
                conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
                resp = conn.getresponse()
                payload = resp.read()
                if resp.status != 200:
                    self.errors.append(f"{method} {path}: {resp.status} {payload[:200]!r}")
                elif path == "/stats":
                    self.last_stats = json.loads(payload)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.requests += 1
            self.stop_flag.wait(self.period)
        conn.close()


def soak(duration: float, rate: int, api_rps: float, log) -> dict:
    result: dict = {"duration_s": duration, "rate": rate, "api_rps": api_rps, "errors": []}
    out = Path(tempfile.mkstemp(prefix="syswatch-soak-send.")[1])
    try:
        return _soak(result, out, duration, rate, api_rps, log)
    finally:
        out.unlink(missing_ok=True)


def _soak(result: dict, out: Path, duration: float, rate: int, api_rps: float, log) -> dict:
    with tracers.CollectorTracer("events") as col, BenchApi(col.endpoint) as api:
        sub = col.subscriber
        deadline = time.monotonic() + 15
        while not api.request("GET", "/healthz")[1].get("collector_connected"):
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not connect to the collector within 15 s")
            time.sleep(0.2)
        roles = {"collector": col.proc.pid, "bpftrace": col.bpftrace_pid, "api": api.proc.pid}
        rss = {role: {"start_kib": procs.rss_kib(pid, gone=0), "peak_kib": procs.rss_kib(pid, gone=0)}
               for role, pid in roles.items() if pid}
        writer = procs.Gated(workloads.writer_argv(rate, duration, out), cwd=ROOT)
        sub.watch(writer.pid, workloads.is_writer_event)
        st0 = sub.status
        recv0 = sub.events_received
        traffic = ApiTraffic(api.port, api_rps, writer.pid)
        traffic.start()
        writer.release()
        log(f"soak: {duration:.0f} s, {rate} writes/s from pid {writer.pid}, ~{api_rps:.0f} API requests/s")
        next_log = time.monotonic() + 10
        while not writer.poll():  # sample memory while the load runs
            for role, pid in roles.items():
                if pid:
                    rss[role]["peak_kib"] = max(rss[role]["peak_kib"], procs.rss_kib(pid, gone=0))
            for role, p in (("collector", col.proc), ("api", api.proc)):
                if p.poll() is not None and f"{role} exited" not in result["errors"]:
                    result["errors"].append(f"{role} exited with status {p.returncode}")
            if time.monotonic() > next_log:
                log(f"soak: {sub.matched:,} events seen so far; RSS "
                    + ", ".join(f"{r} {procs.rss_kib(p, gone=0) // 1024} MiB" for r, p in roles.items() if p))
                next_log += 10
            time.sleep(0.5)
        writer.wait()
        made = len(workloads.read_send_times(out))
        sub.wait_drained(made, quiet=3.0)
        traffic.stop_flag.set()
        traffic.join(15)
        try:
            st1 = sub.settled_status(st0, made)
        except NoStatus as exc:   # wait_ready saw a status, so st0 is there; st1 can still be missing
            st1 = None
            result["errors"].append(str(exc))
        for role, pid in roles.items():
            if pid:
                rss[role]["end_kib"] = procs.rss_kib(pid, gone=0)
                rss[role]["peak_kib"] = max(rss[role]["peak_kib"], rss[role]["end_kib"])
        for role, p in (("collector", col.proc), ("api", api.proc)):
            if p.poll() is not None:
                result["errors"].append(f"{role} is not running at the end (status {p.returncode})")
        api_stats = api.stats()
        # the API's own view of the writer (it counts every call, not only the identifiable writes)
        api_writer_calls = next((p["calls"] for p in api_stats.get("top_processes_by_calls", [])
                                 if p["pid"] == writer.pid), None)
    def grew(key: str) -> int | None:   # None: a status was missing (already an error)
        return st1[key] - st0[key] if st0 and st1 else None

    lost, dropped = grew("lost_total"), grew("dropped_total")
    result.update(made=made, seen=sub.matched,
                  subscriber_received=sub.events_received - recv0,
                  collector_published=grew("events_total"), lost=lost, dropped=dropped, rss=rss,
                  api_requests=traffic.requests, http_errors=traffic.errors[:20],
                  http_error_count=len(traffic.errors),
                  api_events_received=api_stats.get("events_received"), api_writer_calls=api_writer_calls,
                  api_events_not_received=(api_stats.get("api") or {}).get("events_not_received"),
                  api_malformed=(api_stats.get("api") or {}).get("malformed_messages"),
                  collector_malformed=grew("malformed_total"))
    if not made:
        result["errors"].append("the load process made no writes")
    elif lost is not None and result["seen"] + lost + dropped < made:
        result["errors"].append(f"{made - result['seen']} of {made} events neither delivered nor counted lost/dropped")
    if traffic.errors:
        result["errors"].append(f"{len(traffic.errors)} API request(s) failed")
    result["ok"] = not result["errors"]
    return result


def _n(x) -> str:
    """A count for the report; "unknown" where a status was missing."""
    return "unknown" if x is None else f"{x:,}"


def render(r: dict, m: dict) -> str:
    rows = [[role, f"{v['start_kib'] / 1024:.1f}", f"{v.get('end_kib', 0) / 1024:.1f}", f"{v['peak_kib'] / 1024:.1f}",
             f"{(v.get('end_kib', 0) - v['start_kib']) / 1024:+.1f}"] for role, v in r["rss"].items()]
    lines = [
        "## Soak", "",
        f"{m['date']}, {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}: collector (events mode) + API "
        f"for **{r['duration_s']:.0f} s**, one process writing {r['rate']:,}/s, ~{r['api_rps']:.0f} API "
        f"requests/s (add_ips, stats, events, print_all_ips, healthz).", "",
        f"- events made {r['made']:,}; seen by a subscriber {r['seen']:,}; counted lost {_n(r['lost'])}, "
        f"dropped {_n(r['dropped'])}; malformed lines {_n(r['collector_malformed'])}",
        f"- all processes: the collector handled {_n(r['collector_published'])} events, the subscriber "
        f"received {r['subscriber_received']:,}",
        f"- API: {r['api_requests']:,} requests, {r['http_error_count']} failed; its subscriber received "
        f"{_n(r['api_events_received'])} events (all processes; the load process's calls: "
        f"{'not in its top 10' if r['api_writer_calls'] is None else format(r['api_writer_calls'], ',')}), "
        f"estimated not received {_n(r['api_events_not_received'])}, malformed {_n(r['api_malformed'])}",
        f"- result: **{'OK' if r['ok'] else 'FAILED: ' + '; '.join(r['errors'])}**", "",
    ] + report._table(["process", "RSS start MiB", "RSS end MiB", "RSS peak MiB", "change MiB"], rows)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python3 -m bench.soak", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=textwrap.dedent("""\
        examples:
          sudo python3 -m bench.soak --duration 30                      # CI size
          sudo python3 -m bench.soak --duration 600 --docs docs/BENCHMARKS.md
          sudo python3 -m bench.soak --rate 10000 --api-rps 50 --json /tmp/soak.json
        """))
    ap.add_argument("--duration", type=float, default=60, help="seconds of load (default: 60)")
    ap.add_argument("--rate", type=int, default=2000, help="writes/s of the load process (default: 2000)")
    ap.add_argument("--api-rps", type=float, default=20, help="API requests/s (default: 20)")
    ap.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    ap.add_argument("--docs", type=Path, help="replace the soak section of this markdown file")
    args = ap.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.api_rps <= 0:
        ap.error("--duration, --rate and --api-rps must be positive")
    machine.check_prerequisites()

    def log(msg):
        print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    result = soak(args.duration, args.rate, args.api_rps, log)
    text = render(result, machine.describe())
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.docs:
        report.splice(args.docs, "soak", text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
