"""History bench: a day of a busy host recorded by the API's history store, fed through the real ingest path.

    sudo python3 -m bench.history                 # a simulated day (~6 min on 2 vCPUs), updates docs/BENCHMARKS.md
    python3 -m bench.history --hours 1 --no-docs  # one simulated hour, report only

The host (``SyntheticHost``): 200 processes (180 in 20 containers, 20 on the host), each reading and writing
a working set of the host's 1,000 files, at ``--rate`` events per second, with a few failing calls.
Events are protocol v2 batches on a ZeroMQ PUB socket; the API built by ``make_app`` subscribes to it
like to a collector, decodes, aggregates, and its history recorder writes the store, all as in
production. Only the clock is simulated: the recorder reads the bench's clock, which walks through the
day second by second (``--hours`` of it, ending now), so a day is recorded in minutes.

Reported: rows written per second (at real time, and what the bench achieved), the recorder thread's CPU
(per second of the day: the share of one CPU recording costs the API), disk per tier (SQLite's dbstat:
bytes held and per day of data), and the latency of /history over HTTP at that size: the last hour by
container, a day by process (median and slowest of several).
"""
from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import zmq

from bench import machine, report
from harness import ROOT
from harness.procs import free_port
from syswatch.api.app import ApiConfig, make_app
from syswatch.shared import protocol, zmqsock

DOC = ROOT / "docs" / "BENCHMARKS.md"

SYSCALLS = (("read", 45), ("write", 40), ("pread64", 10), ("pwrite64", 5))
ERROR_RATE = 0.01


class SyntheticHost:
    """A busy host's events: ``processes`` processes in ``containers`` containers (a tenth of them on the host
    itself), ``files`` files; a process's activity follows a Zipf-like law (a few busy ones, a long tail),
    each works on 5-40 of the files. ``batches(t)`` gives one second's events as ready protocol frames."""

    def __init__(self, processes: int = 200, files: int = 1000, containers: int = 20, rate: int = 400,
                 host: str = "bench-host", seed: int = 26, pool: int = 40_000):
        rnd = random.Random(seed)
        self.rate, self.host = rate, host
        cids = [f"{rnd.getrandbits(48):012x}" for _ in range(containers)]
        paths = [f"/srv/data/{d:02d}/file-{i:04d}.dat" for i, d in ((i, i % 50) for i in range(files))]
        self.processes = []
        busy = list(range(processes))
        rnd.shuffle(busy)                           # which process is how busy: not by where it runs
        for i in busy:
            on_host = i < processes // 10
            cid = "" if on_host else cids[i % containers]
            cname = "" if on_host else f"svc-{cids.index(cid):02d}"
            work = rnd.sample(paths, rnd.randrange(5, 41))
            self.processes.append((10_000 + i, f"worker-{i:03d}"[:15], cid, cname, work))
        weights = [1 / (i + 1) ** 0.9 for i in range(processes)]
        names, sc_weights = zip(*SYSCALLS)
        # A pool of pre-serialised events without their time: a second's batch is a slice of it, stamped.
        self.pool: dict[str, list[bytes]] = {sc: [] for sc in names}
        procs = rnd.choices(self.processes, weights, k=pool)
        for pid, comm, cid, cname, work in procs:
            sc = rnd.choices(names, sc_weights)[0]
            count = rnd.choice((512, 4096, 4096, 65536))
            ret = -11 if rnd.random() < ERROR_RATE else rnd.choice((count, count, count // 2, 0))
            body = {"pid": pid, "tid": pid, "uid": 1000, "comm": comm, "syscall": sc, "fd": 3 + work.index(
                    path := rnd.choice(work)), "count": count, "ret": ret, "lat_ns": int(rnd.lognormvariate(8.5, 1.2)),
                    "cgroup_id": 1 if not cid else 4000 + cids.index(cid), "container_id": cid,
                    "container_name": cname, "path": path, "file_type": "reg"}
            self.pool[sc].append(json.dumps(body, separators=(",", ":"))[1:].encode())
        self.share = {sc: w / sum(sc_weights) for sc, w in SYSCALLS}
        self.host_json = protocol.json_string(host)
        self._offset = {sc: 0 for sc in names}

    def batches(self, t: int) -> list[list[bytes]]:
        """Frames of the events of second ``t`` (unix seconds), one message per syscall."""
        frames = []
        for sc, tails in self.pool.items():
            n = round(self.rate * self.share[sc])
            start = self._offset[sc]
            chosen = [tails[(start + i) % len(tails)] for i in range(n)]
            self._offset[sc] = (start + n) % len(tails)
            step = 1_000_000_000 // max(n, 1)
            base = t * 1_000_000_000
            events = [b'{"ts_ns":%d,' % (base + i * step) + tail for i, tail in enumerate(chosen)]
            frames.append(protocol.encode_event_batch(protocol.EVENT_PREFIX + sc, self.host_json, events))
        return frames


class SimClock:
    """The recorder's clock: during the feed, the simulated time the API has taken in (``delivered()`` events
    at ``per_second`` a second from ``start``), so the recorder never closes a second whose events are still
    on their way through ZeroMQ and the ingest thread; after the feed (``done``), the real time."""

    def __init__(self, start: float, per_second: int):
        self.start, self.per_second = start, per_second
        self.delivered = lambda: 0
        self.done = False

    def __call__(self) -> float:
        if self.done:
            return time.time()
        return self.start + self.delivered() / self.per_second


def cpu_of_thread(native_id: int) -> float:
    """utime + stime of one thread of this process (seconds), from /proc."""
    raw = Path(f"/proc/self/task/{native_id}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    import os
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tier_bytes(path: str) -> dict:
    """Bytes of each table (and its index) of the store, from SQLite's dbstat."""
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    finally:
        conn.close()


def timed_get(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return time.perf_counter() - start, len(body)


def run(args: argparse.Namespace, out: Path, log) -> dict:
    import waitress

    seconds = int(args.hours * 3600)
    t_end = int(time.time())
    t0 = t_end - seconds
    hosts = [SyntheticHost(args.processes, args.files, args.containers, args.rate, host=f"bench-host-{i:02d}",
                           seed=26 + i) for i in range(args.hosts)]
    per_second = sum(round(h.rate * share) for h in hosts for share in h.share.values())
    clock = SimClock(t0, per_second)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # one endpoint speaks for every synthetic host: the API's trust rule allows it that many (api/trust.py)
    config = ApiConfig(port=free_port(), db=str(out / "ips.sqlite3"), collectors=(endpoint,),
                       history_max_mb=args.max_mb, hosts_per_collector=len(hosts))
    app = make_app(config, log=lambda line: None, clock=clock)
    rec = app.history
    assert rec is not None
    ctx = zmq.Context()
    pub = zmqsock.make_publisher(ctx, endpoint, sndhwm=1_000_000)
    server = waitress.create_server(app.wsgi, host="127.0.0.1", port=config.port, threads=4)
    web = threading.Thread(target=server.run, daemon=True)
    app.subscriber.start()
    rec.start()
    web.start()
    try:
        status = {"host": hosts[0].host, "ts_ns": 0, "mode": "events", "probe": "tracepoint",
                  "syscalls": ["read", "write"], "excluded_pids": [], "events_total": 0, "lost_total": 0,
                  "dropped_total": 0, "malformed_total": 0, "uptime_s": 1.0}
        deadline = time.monotonic() + 20
        while not app.stats.connected():              # ZeroMQ's slow joiner
            pub.send_multipart(protocol.encode(protocol.TOPIC_STATUS, {**status, "ts_ns": time.time_ns()}))
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not subscribe within 20 s")
            time.sleep(0.05)
        base_received = app.stats.events_received
        sent = 0
        clock.delivered = (lambda: sent) if args.direct else (lambda: app.stats.events_received - base_received)
        sync_every = max(1, min(60, 20_000 // per_second))   # seconds fed between waits: the queues stay short
        log(f"feeding {seconds} simulated seconds of {args.hosts} host(s), {per_second} events per simulated "
            f"second ({seconds * per_second:,} events)")
        rec_cpu0, ingest_cpu0 = cpu_of_thread(rec.native_id), cpu_of_thread(app.subscriber.native_id)
        wall0 = time.monotonic()
        for s in range(seconds):
            for h in hosts:
                for frames in h.batches(t0 + s):
                    if args.direct:                   # the recorder alone, with the events' paths
                        events = json.loads(frames[1])["events"]
                        rec.offer_events(h.host, events)
                        sent += len(events)
                    else:
                        pub.send_multipart(frames)
            if not args.direct:
                sent += per_second
            if s % sync_every == sync_every - 1 or s == seconds - 1:
                waited = time.monotonic() + 120
                while not args.direct and app.stats.events_received - base_received < sent:
                    if time.monotonic() > waited:     # refused or lost: say so, never wait forever
                        raise RuntimeError(f"the API took {app.stats.events_received - base_received:,} of "
                                           f"{sent:,} events within 120 s: {app.stats.snapshot()['api']}")
                    time.sleep(0.002)
                rec.sync()
                if s % 3600 == 3599:
                    log(f"  {(s + 1) // 3600} h simulated, {time.monotonic() - wall0:.0f} s")
        clock.done = True                             # real time: every simulated second is over
        deadline = time.monotonic() + 120
        while True:                                   # the last seconds close GRACE_S after they end
            rec.sync()
            st = rec.status()
            if st["complete_until"] >= t_end and all(t["written_until"] >= t_end - t["step_s"] - 60
                                                     for t in st["tiers"]):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the recorder did not catch up within 120 s: {st}")
            time.sleep(0.1)
        wall = time.monotonic() - wall0
        rec_cpu = cpu_of_thread(rec.native_id) - rec_cpu0
        ingest_cpu = cpu_of_thread(app.subscriber.native_id) - ingest_cpu0
        st = rec.status()
        log(f"recorded in {wall:.0f} s: {st['rows_written']:,} rows, recorder CPU {rec_cpu:.1f} s, "
            f"disk {st['disk_bytes'] / 2**20:.1f} MiB")
        sizes = tier_bytes(rec.store.path)
        base = f"http://127.0.0.1:{config.port}/history?"
        queries = {
            "last hour by container": f"from={t_end - 3600}&to={t_end}&group=container",
            "a day by process": f"from={t_end - min(seconds, 86400)}&to={t_end}&group=process",
            "5 minutes an hour ago by file": f"from={t_end - 3900}&to={t_end - 3600}&group=file&step=60",
            "a day by file, CSV": f"from={t_end - min(seconds, 86400)}&to={t_end}&group=file&format=csv"
                                  f"&limit=20&step=3600",
        }
        latency = {}
        for name, q in queries.items():
            times, size = [], 0
            for _ in range(args.queries):
                took, size = timed_get(base + q)
                times.append(took)
            latency[name] = {"query": q, "median_ms": statistics.median(times) * 1000, "max_ms": max(times) * 1000,
                             "bytes": size}
            log(f"  {name}: median {latency[name]['median_ms']:.0f} ms")
        answer = json.loads(urllib.request.urlopen(base + queries["a day by process"], timeout=120).read())
        return {
            "direct": args.direct, "hours": args.hours, "hosts": args.hosts, "rate": args.rate,
            "processes": args.processes, "files": args.files, "containers": args.containers, "events": sent,
            "wall_s": wall,
            "recorder_cpu_s": rec_cpu, "ingest_cpu_s": ingest_cpu, "status": st, "table_bytes": sizes,
            "latency": latency, "day_total_calls": answer["totals"]["calls"], "day_intervals": answer["intervals"],
            "top_n": rec.store.top_n,
        }
    finally:
        server.task_dispatcher.shutdown()
        server.trigger.pull_trigger(server.close)   # closed in its own loop's thread, which then ends
        web.join(10)
        app.subscriber.stop()
        app.close()
        pub.close(0)
        ctx.term()


def render(r: dict, m: dict) -> str:
    sim_s = r["hours"] * 3600
    st = r["status"]
    per_host = r["hosts"]
    tiers = {t["step_s"]: t for t in st["tiers"]}
    names = {1: "1s", 10: "10s", 60: "1m"}
    rows = []
    for step, t in tiers.items():
        table = f"agg_{names[step]}"
        held = r["table_bytes"].get(table, 0)
        span = min(sim_s, t["keep_s"])                 # the time the tier holds after the run
        per_day = held / span * 86400 if span else 0
        full = per_day * t["keep_s"] / 86400
        kept = f"{t['keep_s'] // 3600} h" if t["keep_s"] < 86400 * 2 else f"{t['keep_s'] // 86400} days"
        rows.append([f"{step} s", kept,
                     f"{t['rows']:,}", f"{held / 2**20:.1f} MiB", f"{per_day / 2**20:.1f} MiB",
                     f"{full / 2**20:.0f} MiB"])
    names_bytes = sum(v for k, v in r["table_bytes"].items() if "names" in k)
    full_total = sum(float(x[5].split()[0]) for x in rows)
    lines = [
        f"Run: {m['date']}, {m['nproc']} CPUs ({m['cpu']}), load average {m['loadavg_at_start']:.2f} at start. "
        f"`python3 -m bench.history --hours {r['hours']:g} --hosts {r['hosts']}{' --direct' if r['direct'] else ''}`: "
        f"{r['hosts']} host(s) of "
        f"{r['processes']} processes in {r['containers']} containers working on {r['files']:,} files, "
        f"{r['rate']:,} events per second each, {r['hours']:g} simulated hours ({r['events']:,} events) "
        + ("handed to the recorder directly with their paths (`--direct`)" if r["direct"] else
           "through the real ingest path (ZeroMQ, decode, aggregates, recorder, SQLite)")
        + f", the recorder on a simulated clock; top {r['top_n']} per interval and dimension.",
        "",
        "| what | measured |",
        "|---|---|",
        f"| rows written per second of recorded time (1 s tier) | {st['rows_written'] / sim_s:,.0f} "
        f"({st['rows_written'] / sim_s / per_host:,.0f} per host) |",
        f"| rows written per second, as fast as the bench could feed | "
        f"{st['rows_written'] / r['wall_s']:,.0f} ({r['wall_s']:.0f} s for {r['hours']:g} h) |",
        f"| recorder thread CPU per second of recorded time | {r['recorder_cpu_s'] / sim_s * 1000:.2f} ms "
        f"(**{r['recorder_cpu_s'] / sim_s * 100:.2f}%** of one CPU, "
        f"{r['recorder_cpu_s'] * 1e9 / r['events']:,.0f} ns per event) |",
        f"| ingest thread CPU (decode, live aggregates; without history too) | "
        f"{r['ingest_cpu_s'] / sim_s * 100:.2f}% of one CPU |",
        f"| store on disk after the run (file, WAL, index) | {st['disk_bytes'] / 2**20:.1f} MiB "
        f"(names: {names_bytes / 2**20:.2f} MiB) |",
        f"| a day by process: calls answered / fed | {r['day_total_calls']:,} / {r['events']:,} |",
        f"| events the recorder dropped (queue full) / recorded late | {st['events_dropped']:,} / "
        f"{st['late_events']:,} |",
        "",
        "Disk per tier (SQLite's dbstat of each tier's table; *per day*: what one day of data takes in that "
        "tier; *full*: the tier at its retention):",
        "",
    ]
    lines += report._table(["tier", "kept", "rows held", "on disk now", "per day of data", "full"], rows)
    lines += [f"At steady state (every tier at its retention) the store would hold about **{full_total:.0f} MiB** "
              f"for this load (default limit {ApiConfig.history_max_mb} MiB).", ""]
    lines += report._table(["/history query", "median", "slowest", "answer"],
                           [[f"{name} (`{q['query'].split('&', 2)[-1]}`)", f"{q['median_ms']:.0f} ms",
                             f"{q['max_ms']:.0f} ms", f"{q['bytes'] / 1024:.0f} KiB"]
                            for name, q in r["latency"].items()])
    title = "### History store (`bench.history" + (" --direct" if r["direct"] else "") + "`)"
    return "\n".join([title, ""] + lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m bench.history", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=textwrap.dedent(__doc__.split("\n\n", 1)[1]))
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours to record (default 24)")
    ap.add_argument("--hosts", type=int, default=1, help="hosts (collectors) recorded at once (default 1)")
    ap.add_argument("--rate", type=int, default=400, help="events per simulated second and host (default 400)")
    ap.add_argument("--processes", type=int, default=200, help="processes per host (default 200)")
    ap.add_argument("--files", type=int, default=1000, help="files per host (default 1000)")
    ap.add_argument("--containers", type=int, default=20, help="containers per host (default 20)")
    ap.add_argument("--direct", action="store_true",
                    help="hand the events to the recorder directly, paths included (the protocol decoder of this "
                         "version drops EVENT path and file_type): the file dimension's cost")
    ap.add_argument("--max-mb", type=int, default=4096, help="the store's size limit (default 4096: no trimming)")
    ap.add_argument("--queries", type=int, default=7, help="repetitions of each /history query (default 7)")
    ap.add_argument("--out", type=Path, default=None, help="directory for the store, report.md and results.json")
    ap.add_argument("--docs", type=Path, default=None,
                    help=f"markdown file whose history section (history, history-direct, history-hosts) is "
                         f"replaced (default: {DOC.relative_to(ROOT)} for a simulated day of one host)")
    ap.add_argument("--no-docs", action="store_true", help="update no markdown file")
    args = ap.parse_args(argv)
    if not 0 < args.hours <= 48:
        ap.error("--hours must be in (0, 48]")
    if not 1 <= args.hosts <= 64:
        ap.error("--hosts must be 1..64 (the API's MAX_HOSTS)")
    if args.docs is None and not args.no_docs and args.hours >= 24 and args.hosts == 1 and not args.direct:
        args.docs = DOC
    if args.no_docs:
        args.docs = None
    return args


def section(args: argparse.Namespace) -> str:
    """The docs section a run fills: history, history-direct, history-hosts."""
    return "history" + ("-direct" if args.direct else "") + ("-hosts" if args.hosts > 1 else "")


def log(msg: str) -> None:
    print(f"[bench.history {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="syswatch-bench-history-"))
    out.mkdir(parents=True, exist_ok=True)
    m = machine.describe()
    results = run(args, out, log)
    m["loadavg_at_end"] = __import__("os").getloadavg()[0]
    text = render(results, m)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "report.md").write_text(text)
    print(text)
    if args.docs:
        report.splice(args.docs, section(args), text)
        log(f"updated {args.docs} (section {section(args)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
