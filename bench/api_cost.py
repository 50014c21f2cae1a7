"""The API's own costs, in process (no root, no sockets): what issues 25 and 29 added, as ratios within one run.

- ingest: CPU per event of the aggregates (api/hoststats.py: latency histograms, errnos, files) against
  a reference copy of the aggregation before them (calls, bytes, errors and a latency sum per syscall,
  process and container), on the same synthetic batches.
- filters: CPU per event of matching /events and /events/stream filters (shared/selection.py): none
  given, one given, every one given; against a reference copy of the filter before them (five fields,
  each checked for every event).
- requests: CPU and bytes per GET /stats, /stats?host= and /metrics with an ordinary state (one host)
  and a hostile one (64 hosts with 255-character names, each status holding 1,024 excluded PIDs and
  8,192 stale CPUs, every syscall, every errno), through the real WSGI app.

    python3 -m bench.api_cost            # prints the tables (~20 s)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from harness.api import ApiInProcess, event
from syswatch.api.aggregates import MAX_HOSTS, StreamStats
from syswatch.api.hub import StreamClient
from syswatch.shared import protocol
from syswatch.shared.selection import Selection


def _batches(n: int, per_batch: int = 256, paths: bool = False) -> list[list[dict]]:
    """``n`` batches of read events from 50 processes, 1 in 100 failing, latencies over 20 buckets."""
    out = []
    for b in range(n):
        batch = []
        for i in range(per_batch):
            e = event(syscall="read", pid=100_000 + i % 50, comm=f"bench{i % 50}", count=100 + i,
                      ret=-11 if i % 100 == 7 else 100 + i, lat_ns=500 << (i % 20),
                      container_id="0123456789ab" if i % 5 == 0 else "", container_name="web" if i % 5 == 0 else "")
            if paths:
                e.update(path=f"/var/lib/bench/{i % 200}", ino=1000 + i % 200, dev=2049, file_type="reg")
            batch.append(e)
        out.append(batch)
    return out


class ReferenceAggregates:
    """The aggregation before issue 25 (api/stream.py's add_events loop, v2): a baseline only."""

    def __init__(self):
        self.totals: dict = {}
        self.procs: dict = {}
        self.containers: dict = {}

    def add_events(self, host: str, events: list) -> None:
        syscall = events[0]["syscall"]
        total = self.totals.setdefault(syscall, [0, 0, 0, 0])
        procs, containers = self.procs, self.containers
        for e in events:
            ret = e["ret"]
            moved = ret if ret > 0 else 0
            err = 1 if ret < 0 else 0
            lat = e["lat_ns"]
            cid = e["container_id"]
            key = (e["pid"], e["comm"], cid)
            row = procs.get(key)
            if row is None:
                procs[key] = [1, moved, err, lat, e["container_name"]]
            else:
                row[0] += 1
                row[1] += moved
                row[2] += err
                row[3] += lat
            if cid:
                crow = containers.get(cid)
                if crow is None:
                    containers[cid] = [1, moved, err, lat, e["container_name"]]
                else:
                    crow[0] += 1
                    crow[1] += moved
                    crow[2] += err
                    crow[3] += lat
            total[0] += 1
            total[1] += moved
            total[2] += err
            total[3] += lat
            e["host"] = host


class ReferenceFilter:
    """The /events filter before this round (api/validation.py's EventFilter): five fields per event."""

    def __init__(self, pid=None, comm=None, syscall=None, container=None, host=None):
        self.pid, self.comm, self.syscall, self.container, self.host = pid, comm, syscall, container, host

    def matches(self, e: dict) -> bool:
        return ((self.pid is None or e["pid"] == self.pid)
                and (self.comm is None or e["comm"] == self.comm)
                and (self.syscall is None or e["syscall"] == self.syscall)
                and (self.host is None or e.get("host") == self.host)
                and (self.container is None or e["container_id"].startswith(self.container)
                     or e["container_name"] == self.container))


def _cpu_ns_per(n: int, fn: Callable[[], None], repeat: int = 5) -> float:
    """Best of ``repeat`` runs of ``fn`` (CPU time of this process), per item of ``n``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time_ns()
        fn()
        best = min(best, time.process_time_ns() - t0)
    return best / n


def ingest(batches: int) -> dict:
    plain, with_paths = _batches(batches), _batches(batches, paths=True)
    n = batches * 256

    def reference():
        agg = ReferenceAggregates()
        for b in plain:
            agg.add_events("bench", b)

    def current(data):
        def run():
            st = StreamStats(["e"], 1000)
            for b in data:
                st.add_events("bench", b)
        return run
    rows = {"reference (before issue 25)": _cpu_ns_per(n, reference),
            "current: histograms, errnos": _cpu_ns_per(n, current(plain)),
            "current, events with paths: + files": _cpu_ns_per(n, current(with_paths))}
    base = rows["reference (before issue 25)"]
    return {"events": n, "rows": [{"what": k, "ns_per_event": v, "ratio": v / base} for k, v in rows.items()]}


def filters(events_n: int) -> dict:
    events = [e for b in _batches(events_n // 256, paths=True) for e in b]
    for e in events:
        e["host"] = "bench"
    n = len(events)

    def matching(flt) -> Callable[[], None]:       # what GET /events does over its buffer
        def run():
            [e for e in events if flt.matches(e)]
        return run

    def streaming(flt: Selection) -> Callable[[], None]:   # what the hub does for each open stream
        client = StreamClient(flt, n + 1)

        def run():
            client.offer(1, events)
            client.take(0)
        return run
    every = Selection(pids=(100_001,), tids=(100_001,), uids=(1000,), comms=("bench1",), syscalls=("read",),
                      hosts=("bench",), containers=("web",), paths=("/var/lib",), file_types=("reg",), failed=True,
                      min_latency_ns=1000)
    ref = "reference: pid= (before: five fields checked per event)"
    rows = {ref: _cpu_ns_per(n, matching(ReferenceFilter(pid=100_001))),
            "pid=": _cpu_ns_per(n, matching(Selection(pids=(100_001,)))),
            "pid= and failed=1": _cpu_ns_per(n, matching(Selection(pids=(100_001,), failed=True))),
            "every filter given (11)": _cpu_ns_per(n, matching(every)),
            "stream, no filter (fast path: no per-event call)": _cpu_ns_per(n, streaming(Selection())),
            "stream, pid=": _cpu_ns_per(n, streaming(Selection(pids=(100_001,))))}
    base = rows[ref]
    return {"events": n, "rows": [{"what": k, "ns_per_event": v, "ratio": v / base} for k, v in rows.items()]}


def _fill(api: ApiInProcess, endpoint: str, host: str, hostile: bool) -> None:
    """One host's state: a status and 200 processes per syscall (hostile: the longest names, every syscall,
    every errno, the largest status lists the protocol allows)."""
    status = {"host": host, "ts_ns": time.time_ns(), "mode": "events", "probe": "tracepoint",
              "syscalls": list(protocol.SYSCALLS) if hostile else ["read", "write"], "events_total": 10,
              "lost_total": 0, "dropped_total": 0, "malformed_total": 0, "uptime_s": 5.0,
              "excluded_pids": list(range(protocol.MAX_EXCLUDED_PIDS)) if hostile else [1, 2]}
    if hostile:
        status["stale_cpus"] = list(range(protocol.MAX_CPUS))
    api.app.subscriber.handle(protocol.encode("status", status), endpoint)
    for sc in status["syscalls"]:
        batch = [event(syscall=sc, pid=p, comm=("c" * 64 if hostile else f"p{p}"),
                       ret=(-(p % 60) - 1 if hostile else 100), lat_ns=500 << (p % 20),
                       container_id="0123456789ab" if p % 10 == 0 else "",
                       container_name=("n" * 255 if hostile else "web") if p % 10 == 0 else "")
                 for p in range(1, 201)]
        api.app.subscriber.handle(protocol.encode(f"syscall.{sc}", {"host": host, "events": batch}), endpoint)


# (state, endpoints configured, what each endpoint sends): hostile = two real hosts and a hostile endpoint
# sending 64 junk hosts (one admitted) with everything it may; at the bound = 64 endpoints all doing so.
STATES = ("ordinary: one host", "hostile: 2 hosts + a hostile endpoint", "at the bound: 64 hostile endpoints")


def requests_cost(repeat: int, states: tuple = STATES) -> dict:
    out = []
    for state in states:
        with tempfile.TemporaryDirectory(prefix="syswatch-bench-cost-") as tmp:
            n = {STATES[0]: 1, STATES[1]: 3, STATES[2]: MAX_HOSTS}[state]
            endpoints = [f"tcp://10.2.0.{i}:5556" for i in range(n)]
            api = ApiInProcess.from_args(Path(tmp) / "ips.sqlite3", *[a for e in endpoints for a in ("--collector", e)])
            if state == STATES[0]:
                _fill(api, endpoints[0], "vm", False)
            elif state == STATES[1]:
                _fill(api, endpoints[0], "node-a", False)
                _fill(api, endpoints[1], "node-b", False)
                for j in range(64):
                    _fill(api, endpoints[2], f"{j:03d}" + "j" * 252, True)
            else:
                for i, endpoint in enumerate(endpoints):
                    _fill(api, endpoint, f"{i:03d}" + "h" * 252, True)
            host = api.get("/stats").json()["hosts"][0]
            for name, path, params in (("GET /stats", "/stats", None), ("GET /stats?host=", "/stats", {"host": host}),
                                       ("GET /metrics", "/metrics", None)):
                size = len(api.get(path, params=params).content)
                ms = _cpu_ns_per(1, lambda: api.get(path, params=params), repeat) / 1e6
                out.append({"state": state, "request": name, "bytes": size, "cpu_ms": ms})
    ordinary = {r["request"]: r for r in out if r["state"] == STATES[0]}
    for r in out:
        r["ratio"] = r["cpu_ms"] / ordinary[r["request"]]["cpu_ms"]
    return {"rows": out}


def run(batches: int = 80, filter_events: int = 20_480, repeat: int = 5, states: tuple = STATES) -> dict:
    return {"ingest": ingest(batches), "filters": filters(filter_events), "requests": requests_cost(repeat, states)}


def markdown(r: dict) -> list[str]:
    out = ["#### API costs in process (bench/api_cost.py; CPU time, best of 5)", ""]
    out += ["| aggregating events | ns/event | vs reference |", "|---|---|---|"]
    out += [f"| {x['what']} | {x['ns_per_event']:,.0f} | {x['ratio']:.2f}x |" for x in r["ingest"]["rows"]]
    out += ["", "| matching a filter (/events, each open stream) | ns/event | vs reference |", "|---|---|---|"]
    out += [f"| {x['what']} | {x['ns_per_event']:,.0f} | {x['ratio']:.2f}x |" for x in r["filters"]["rows"]]
    out += ["", "| request | state | bytes | CPU ms | vs ordinary |", "|---|---|---|---|---|"]
    out += [f"| `{x['request']}` | {x['state']} | {x['bytes']:,} | {x['cpu_ms']:.2f} | {x['ratio']:.1f}x |"
            for x in r["requests"]["rows"]]
    return out + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.api_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON (default: markdown)")
    args = ap.parse_args(argv)
    results = run()
    print(json.dumps(results, indent=1) if args.json else "\n".join(markdown(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
