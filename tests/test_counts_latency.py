"""Issue 25 in counts mode, for real: latency histograms and errnos built in the kernel per row.

A child makes 40 reads of known latency (a pipe fed at set intervals: some find data, some wait ~5 ms,
some ~40 ms) and 30 failing reads (15 EBADF on a closed fd, 15 EAGAIN on a non-blocking empty pipe),
traced by a real collector in counts mode with --latency (bpftrace 0.17 and 0.23) and an API process
subscribed to it. Checked: every row's lat_hist adds up to its calls exactly; the slow reads sit in the
bucket of the child's own clock around each call (or the one below: the kernel's time is inside it);
errnos name every failure exactly; /stats shows the same histogram, the errnos, and a p99 within one
bucket of the child's own."""
from __future__ import annotations

from collections import Counter

from harness.api import ApiProcess
from harness.collector import CollectorProcess, StreamReader
from harness.procs import wait_for
from harness.workloads import PacedReads, nearest_rank
from syswatch.collector import parser
from syswatch.shared import latency

DELAYS = [0.0] * 10 + [0.005] * 20 + [0.040] * 10
FAILS = 15                                   # EBADF, then as many EAGAIN
READS = len(DELAYS) + 2 * FAILS
SLOW_NS = 2_000_000                          # a read this slow waited for the feeder

def test_counts_rows_carry_exact_histograms_and_errnos(tmp_path, bpftrace_bin):
    child = PacedReads(DELAYS, FAILS)
    stop = [child.kill]
    pid = child.pid
    try:
        col = CollectorProcess(tmp_path, "--mode", "counts", "--interval", "0.25", "--latency", "--pid", str(pid),
                               "--bpftrace", bpftrace_bin)
        stop.append(col.kill)
        api = ApiProcess(tmp_path / "ips.sqlite3", collector=col.endpoint)
        stop.append(api.stop)
        api.start()
        sub = StreamReader(col.endpoint, ("counts", "status"))
        stop.append(sub.close)
        sub.wait_status()
        wait_for(lambda: api.get("/stats").json()["collectors"][0]["connected"], 30, 0.2,
                 "the API to hear the collector")
        took = child.run()["reads"]
        rows, reads = [], 0
        for msg in sub.messages(30):
            if msg.topic == "counts":
                mine = [r for r in msg.payload["rows"] if r["pid"] == pid]
                rows += mine
                reads += sum(r["calls"] for r in mine if r["syscall"] == "read")
                if reads >= READS:
                    break
        # every row (reads, and the feeder thread's writes) holds each of its calls in one bucket
        assert rows and all(sum(r["lat_hist"]) == r["calls"] for r in rows), rows
        assert all("errnos" not in r for r in rows if not r["errors"]), rows
        read_rows = [r for r in rows if r["syscall"] == "read"]
        assert sum(r["calls"] for r in read_rows) == READS, read_rows
        errnos: Counter = Counter()
        hist: list[int] = []
        for r in read_rows:
            errnos.update(r.get("errnos", {}))
            parser.add_buckets(hist, r["lat_hist"])
        assert errnos == {"EBADF": FAILS, "EAGAIN": FAILS}, read_rows
        # the slowest reads, sorted, beside the child's own clock around each call (sorted): same
        # bucket, or the one below (the kernel's time is inside the child's)
        kernel = sorted(i for i, n in enumerate(hist) for _ in range(n))[-len(took):]
        pairs = [(k, latency.bucket(o)) for k, o in zip(kernel, sorted(took)) if o >= SLOW_NS]
        assert len(pairs) >= 20 and all(o - 1 <= k <= o for k, o in pairs), (pairs, sorted(took))
        # the API reads the same rows: one histogram, the errnos, a p99 within one bucket of the child's
        wait_for(lambda: api.get("/stats").json()["totals"]["read"]["calls"] >= READS, 30, 0.2,
                 "the API to receive every read")
        total = api.get("/stats").json()["totals"]["read"]
        assert total["calls"] == READS and total["lat_hist"] == hist and total["lat_measured"] == READS, total
        assert total["errnos"] == {"EBADF": FAILS, "EAGAIN": FAILS}, total
        own = nearest_rank(took + [0] * 2 * FAILS, 0.99)
        assert abs(latency.bucket(total["p99_ns"]) - latency.bucket(own)) <= 1, (total["p99_ns"], own)
    finally:
        for fn in reversed(stop):
            fn()
