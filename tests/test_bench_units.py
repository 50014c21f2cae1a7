"""Fast checks of the benchmark suite's own logic (no root, no bpftrace needed); the in-process
ones are marked ``unit``."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bench import catalog, machine, report, saturation, stats, targets, tracers
from harness import ROOT, workloads


@pytest.mark.unit
def test_percentile_nearest_rank():
    xs = list(range(1, 101))
    assert stats.percentile(xs, 50) == 50
    assert stats.percentile(xs, 99) == 99
    assert stats.percentile(xs, 100) == 100
    assert stats.percentile([7], 99) == 7
    assert stats.percentile([], 50) is None


@pytest.mark.unit
def test_dd_events_match_only_the_data_calls():
    ev = {"pid": 1, "syscall": "read", "fd": 0, "count": 1}
    assert workloads.is_dd_event(ev)
    assert not workloads.is_dd_event({**ev, "fd": 3})                      # ld.so / locale reads
    assert not workloads.is_dd_event({**ev, "syscall": "write", "fd": 2})  # the records in/out lines
    assert workloads.copy_events(4096 * 10) == 21                          # 10 reads + 10 writes + final empty read


@pytest.mark.unit
def test_bpftrace_lost_lines_are_summed():
    err = "Attaching 3 probes...\nLost 120 events\nsomething\nLost 5 events\n"
    assert tracers._lost_from(err) == 125


@pytest.mark.unit
def test_splice_keeps_the_hand_written_text(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## What we tried\n\nnotes\n")
    report.splice(doc, "results", "## Results\n\nfirst\n")
    report.splice(doc, "results", "## Results\n\nsecond\n")
    text = doc.read_text()
    assert "intro" in text and "notes" in text and "second" in text and "first" not in text
    assert text.count("<!-- bench:results:begin -->") == 1


@pytest.mark.unit
def test_targets_without_measurements_say_so():
    rows = targets.check({})
    assert len(rows) == 18 and all(r["met"] is None and r["shown"] == "not measured" for r in rows)


@pytest.mark.unit
def test_not_root_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(machine.os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as exc:
        machine.check_prerequisites()
    assert "run as root" in str(exc.value)


@pytest.mark.parametrize("module", ["bench.run", "bench.soak"])
def test_help_lists_flags_and_examples(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    assert "examples:" in out.stdout
    assert ("--quick" if module == "bench.run" else "--duration") in out.stdout


def test_unknown_section_is_refused():
    out = subprocess.run([sys.executable, "-m", "bench.run", "--only", "overhead,nope"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown section(s) nope" in out.stderr


@pytest.mark.unit
def test_targets_judge_the_thresholds():
    """Synthetic results right at and beyond each threshold: met / not met as issue 5 says."""
    def results(scale):  # scale 1: every target just met; scale 2: every target missed
        good = scale == 1
        return {
            "throughput": {"workloads": {"dd": {
                "events_vs_printf": 1.10 if good else 1.2,
                "collector": {"accounted_frac": 0.99 if good else 0.98, "delivered_frac": 0.80 if good else 0.5,
                              "cpu_ratio": 1.0 if good else 1.5, "collector_us_per_event": 2.0,
                              "bpftrace_us_per_event": 2.0},
                "counts": {"vs_raw_count": 1.10 if good else 1.3, "events_vs_counts": 5 if good else 4}}}},
            "latency": {"steady": {"rate": 20000, "made": 100, "delivered": 100 if good else 99, "lost": 0,
                                   "dropped": 0},
                        "high": {"p99_ms": 49.9 if good else 50.0}},
            "api": {"subscriber": {"rate": 100_000 if good else 99_999},
                    "rows": [{"endpoint": "add_ips", "clients": 16, "rps": 1000 if good else 999,
                              "p99_ms": 49 if good else 51},
                             {"endpoint": "stats", "clients": 1, "rps": 2000 if good else 10},
                             {"endpoint": "stats", "clients": 16, "rps": 10 if good else 1999}]},
        }
    assert [r["met"] for r in targets.check(results(1))][:12] == [True] * 12
    assert [r["met"] for r in targets.check(results(2))][:12] == [False] * 12


def test_bench_subscriber_is_ready_only_with_a_status_and_says_when_one_is_missing(monkeypatch):
    """Issue 17: a subscriber that joins after the collector's first status (ZeroMQ's slow joiner)
    sees events at once; it must not start a run without a status to count from, and a status
    missing after the run is a clear NoStatus, not a crash later. A real PUB socket stands in for
    the collector: events of this process flow all the time, a status only when ``sending``."""
    import os
    import threading
    import time

    from bench import subscriber as bench_subscriber
    from harness.api import Publisher, event
    from harness.procs import free_port

    monkeypatch.setattr(bench_subscriber, "STATUS_TIMEOUT_S", 1.5)
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}")
    sub = bench_subscriber.BenchSubscriber(pub.endpoint)
    sending, stop, lock = threading.Event(), threading.Event(), threading.Lock()

    def collector():
        while not stop.is_set():
            pub.events([event(pid=os.getpid(), count=1)])
            with lock:
                if sending.is_set():
                    pub.status()
            time.sleep(0.05)

    feeder = threading.Thread(target=collector, daemon=True)
    feeder.start()
    sub.start()
    try:
        with pytest.raises(TimeoutError, match="no status message reached"):
            sub.wait_ready(timeout=2)
        assert sub.matched, "events did arrive: only the status was missing"
        sending.set()
        sub.wait_ready(timeout=10)
        st0 = sub.status
        assert st0 is not None
        assert sub.settled_status(st0, made=0)["ts_ns"] > st0["ts_ns"]   # a status sent after the run
        with lock:
            sending.clear()                                                 # no status sent from now on
        with pytest.raises(bench_subscriber.NoStatus, match="after the run"):
            sub.settled_status(st0, made=0)
        with pytest.raises(bench_subscriber.NoStatus, match="before the run"):
            sub.settled_status(None, made=0)
    finally:
        stop.set()
        feeder.join(5)
        sub.stop()
        pub.close()


def _row(tracer, wl, ratio):
    return {"tracer": tracer, "workload": wl, "ratio": ratio, "label": catalog.LABELS[tracer], "events": 2,
            "base_s": 1.0, "traced_s": ratio, "pairs": 1}


@pytest.mark.unit
def test_issue16_targets_divide_by_the_empty_probe_of_the_same_run():
    o = {"rows": [_row("bpf23-empty", "dd", 3.0), _row("compose-events", "dd", 4.2), _row("compose-counts", "dd", 3.9),
                  _row("bpf23-empty", "copy", 1.2), _row("compose-events", "copy", 1.5),
                  _row("compose-counts", "copy", 1.3),
                  _row("bpf-empty", "dd", 2.0)]}
    multi = [{"tracer": "compose-events", "made": 10, "delivered": 6, "lost": 4, "dropped": 0, "exact": True}]
    rows = {r["target"]: r for r in targets.issue16({"overhead": o, "saturation": {"multi": multi},
                                                     "latency": {"steady-compose": {"made": 5, "delivered": 5,
                                                                                    "lost": 0, "dropped": 0}}})}
    ev_dd = rows["compose collector, events mode <= 1.5x the empty probe's slowdown (dd)"]
    assert ev_dd["value"] == pytest.approx(1.4) and ev_dd["met"] is True
    cnt_dd = rows["compose collector, counts mode <= 1.2x the empty probe's slowdown (dd)"]
    assert cnt_dd["value"] == pytest.approx(1.3) and cnt_dd["met"] is False
    assert rows["multi-process saturation: delivered + lost + dropped = made, every collector"]["met"] is True
    assert rows["compose collector: steady 20,000 writes/s delivered completely"]["met"] is True
    table = "\n".join(report.vs_empty_md(o))
    assert "1.40x" in table and "2.10x" in table          # compose events dd over 0.23's and 0.17's empty probe


@pytest.mark.unit
def test_saturation_report_says_exact_or_by_how_much():
    base = {"tracer": "collector-events", "writers": 4, "dd_n": 5, "status": {"bpftrace": "0.17.0"},
            "delivered_rate": 1.0, "elapsed_s": 1.0, "made": 100, "delivered": 60, "lost": 40, "dropped": 0}
    text = "\n".join(report.saturation_md({"multi": [{**base, "exact": True},
                                                      {**base, "lost": 44, "exact": False}]}))
    assert "**exact**" in text and "**off by +4**" in text


@pytest.mark.unit
def test_multi_process_pieces():
    script = saturation.mixed_script(3, 1000)
    assert script.count("bs=1 count=1000") == 3 and script.endswith("wait") and "sqlite3" in script
    prog = saturation.truth_program(4242)
    assert "/cgroup == 4242/" in prog and "count()" in prog and "sys_exit_write" in prog
    assert saturation.parse_count("Attaching 7 probes...\nready\n\n@n: 2011071\n\n") == 2011071
    assert saturation.parse_count("nothing counted\n") == 0


@pytest.mark.unit
def test_ceiling_window_too_short_is_measured_longer_or_reported_not_measured():
    """Issue 32: dd ended before the ceiling's window opened (a fast machine, the quick plan) and the
    quick run crashed formatting printed_rate None. Fed that short window, the stage runs dd again
    with more calls; when no run gives a window, the log, the report and BENCHMARKS say so."""
    asked = []

    def short_then_long(n):           # dd's window: empty for the first two sizes, then 0.8 s
        asked.append(n)
        if len(asked) < 3:
            return None, (100.0, 5_000), 0.2
        return (200.0, 10_000), (200.8, 90_000), 1.1
    m = saturation.measure_window(short_then_long, 1000)
    assert asked == [1000, 1000 * saturation.GROWTH, 1000 * saturation.GROWTH ** 2]
    assert m["dd_runs"] == asked and m["dd_calls"] == 2 * sum(asked) and m["elapsed_s"] == 1.1
    assert saturation.window_rate(m["window"], per_line=100) == pytest.approx((1000, 0.8))

    def always_short(n):              # the sample after the window opened came after dd's end
        return (50.0, 7_000), (49.9, 7_000), 0.1
    m = saturation.measure_window(always_short, 1000)
    assert len(m["dd_runs"]) == saturation.WINDOW_TRIES
    rate, secs = saturation.window_rate(m["window"], per_line=100)
    assert rate is None and secs == 0
    assert saturation.window_rate((None, (1.0, 10)), per_line=100) == (None, 0.0)
    stage = {**m, "printed_rate": rate, "window_s": secs, "printed": 70, "lost": 0, "bytes_per_line": 100.0}
    shown = saturation.rate_text(stage, " lines/s")
    assert shown.startswith("not measured (dd ended within") and "64,000 calls" in shown
    assert saturation.rate_text({**stage, "printed_rate": 123456.7}, " lines/s") == "123,457 lines/s"
    ceiling = {"bpftrace_file": stage, "bpftrace_pipe": {**stage, "lost": None},
               "parser": {"events": 70, "rate": 1e6}, "zmq": {"received": 70, "rate": 2e6}}
    text = "\n".join(report.saturation_md({"multi": [], "ceiling": ceiling}))
    assert text.count("not measured (dd ended within") == 2 and "1,000,000" in text


def test_parser_and_zmq_stages_on_captured_output(tmp_path):
    """The ceiling's user-space stages on a small synthetic capture in the collector's format."""
    from syswatch.shared import record
    c0, c1 = record.comm_words(b"dd")
    line = record.render_line(dict(cpu=0, idx=1, ts=1, pid=5, tid=5, uid=0, fd=1, count=1, ret=1, cgroup=1,
                                   ino=4, dev=6, mode=0o20666, flags=1, namekey=9, comm0=c0, comm1=c1), False) + b"\n"
    cap = tmp_path / "cap.txt"
    cap.write_bytes(line * 5000)
    parsed = saturation.parser_alone(cap)
    assert parsed["events"] == 5000 and parsed["rate"] > 0 and parsed["batches"]
    z = saturation.zmq_alone(parsed["batches"], repeat_to=20_000)
    assert z["sent"] >= 20_000 and 0 < z["received"] <= z["sent"]


@pytest.mark.unit
def test_api_cost_measures_every_row_in_process():
    """bench/api_cost.py at a tiny size: every row there, ratios against its reference (never judged here)."""
    from bench import api_cost
    r = api_cost.run(batches=2, filter_events=512, repeat=1, states=api_cost.STATES[:2])
    assert [x["ratio"] for x in r["ingest"]["rows"]][0] == 1.0 and len(r["ingest"]["rows"]) == 3
    assert r["filters"]["rows"][0]["ratio"] == 1.0 and all(x["ns_per_event"] >= 0 for x in r["filters"]["rows"])
    assert {(x["state"], x["request"]) for x in r["requests"]["rows"]} == {
        (state, request) for state in api_cost.STATES[:2] for request in ("GET /stats", "GET /stats?host=",
                                                                          "GET /metrics")}
    assert all(x["bytes"] > 1000 and x["cpu_ms"] > 0 for x in r["requests"]["rows"])
    text = "\n".join(api_cost.markdown(r))
    assert "| `GET /metrics` | hostile: 2 hosts + a hostile endpoint |" in text


@pytest.mark.unit
def test_the_rss_figure_is_an_svg_with_every_series_and_breaks_at_restarts():
    import xml.dom.minidom

    from bench.soak import figure
    samples = [(t, "collector", 100 if t < 50 else 200, 40_960 + t, 20, 4) for t in range(0, 100, 5)]
    samples += [(t, "api", 300, 51_200, 15, 20) for t in range(0, 100, 5)]
    svg = figure({"samples": samples, "restart_marks": [(50.0, "collector restart")]})
    doc = xml.dom.minidom.parseString(svg)
    lines = doc.getElementsByTagName("polyline")
    assert len(lines) == 3                      # the collector's two lives and the API's one
    texts = [t.firstChild.data for t in doc.getElementsByTagName("text") if t.firstChild]
    assert "collector" in texts and "api" in texts and "MiB" in texts


@pytest.mark.unit
def test_history_bench_host_makes_the_events_it_says():
    from bench.history import SyntheticHost
    from syswatch.shared import protocol
    host = SyntheticHost(processes=30, files=50, containers=4, rate=200, pool=2000)
    frames = host.batches(1_765_000_000)
    events = [e for f in frames for e in protocol.decode(f).events]
    assert len(events) == 200 and all(e["ts_ns"] // 10**9 == 1_765_000_000 for e in events)
    assert {e["container_id"] for e in events} <= {c for _, _, c, _, _ in host.processes}
    assert len({e["pid"] for e in events}) > 10                    # a busy host: many processes every second


def test_history_bench_runs_and_reports(tmp_path):
    """A few simulated minutes through the real ingest path (threads and loopback sockets in this process):
    every event fed is answered, and the report has its rows."""
    from bench import history
    args = history.parse_args(["--hours", "0.05", "--queries", "1", "--no-docs", "--out", str(tmp_path)])
    results = history.run(args, tmp_path, lambda line: None)
    assert results["day_total_calls"] == results["events"] == 180 * 400
    assert (results["status"]["events_dropped"], results["status"]["late_events"]) == (0, 0)
    text = history.render(results, machine.describe())
    for row in ("rows written per second", "recorder thread CPU", "| 1 s | 1 h |", "last hour by container",
                "a day by process"):
        assert row in text, row


def test_the_v2_collector_tracer_runs_that_revisions_collector(monkeypatch):
    """v2collector23-events (issue 22's "what v2 events mode costs") runs the collector of git
    legacy.V2_REVISION, which every clone holds, with the collector image's bpftrace."""
    from bench import legacy
    files = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", legacy.V2_REVISION, "collector/"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert "collector/collector.py" in files
    monkeypatch.setattr(catalog, "trixie_bpftrace", lambda: "/opt/bpftrace-0.23")
    t = catalog.make("v2collector23-events")
    assert (t.revision, t.extra, t.mode) == (legacy.V2_REVISION, ["--bpftrace", "/opt/bpftrace-0.23"], "events")
    assert catalog.make("collector23-events").revision == ""
