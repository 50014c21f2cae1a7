"""The benchmark suite in quick mode (so it cannot rot) and the soak's CI run.

Timings are never asserted (the machine is noisy and shared): these tests check that every
section ran and that the non-timing content is sane: event counts made by the workloads,
delivered <= made, exact counts-mode totals, percentiles in order, every target evaluated.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import ROOT
from tests.conftest import have, is_root, require

pytestmark = pytest.mark.slow


def _run(argv, timeout):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-test.sh does it)")
    require(have("strace"), "install strace: apt-get install -y strace (scripts/setup-host.sh does it)")
    require(subprocess.run(["bash", str(ROOT / "scripts" / "trixie-bpftrace.sh"), "--check"]).returncode == 0,
            "build bpftrace 0.23 for the bpf23-* rows: sudo scripts/trixie-bpftrace.sh (scripts/test.sh does it)")
    # the compose collector rows (issue 16) need the images; the bench itself never builds them
    from harness.compose import compose_command, docker_answers
    require(compose_command() is not None and docker_answers(), "docker-compose and dockerd: scripts/setup-host.sh")
    build = subprocess.run([*compose_command(), "build", "collector", "api"], cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-2000:]
    out = tmp_path_factory.mktemp("bench")
    doc = ROOT / "docs" / "BENCHMARKS.md"
    doc_before = doc.read_bytes() if doc.exists() else None
    proc = _run(["-m", "bench.run", "--quick", "--out", str(out)], timeout=600)
    assert proc.returncode == 0, f"bench.run --quick failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert (doc.read_bytes() if doc.exists() else None) == doc_before, "--quick must not touch docs/BENCHMARKS.md"
    return {"results": json.loads((out / "results.json").read_text()), "report": (out / "report.md").read_text(),
            "stdout": proc.stdout}


def test_quick_run_has_every_section(quick):
    r = quick["results"]
    assert r["errors"] == {}
    for section in ("machine", "overhead", "throughput", "saturation", "latency", "api", "targets"):
        assert section in r, section
        assert not (isinstance(r[section], dict) and r[section].get("skipped")), f"{section} skipped: {r[section]}"
    for heading in ("## Results", "### Overhead", "### Throughput", "### Saturation", "### Steady rate and latency",
                    "### API", "### Targets"):
        assert heading in quick["report"], heading
    assert quick["report"] in quick["stdout"], "the report is printed"
    m = r["machine"]
    assert m["nproc"] >= 1 and m["kernel"] and m["versions"]["bpftrace"].startswith("bpftrace")


def test_overhead_rows_cover_every_tracer_and_workload(quick):
    rows = quick["results"]["overhead"]["rows"]
    got = {(row["tracer"], row["workload"]) for row in rows}
    tracers = {"bpf-empty", "bpf-empty-exit", "bpf-count", "bpf-printf", "bpf23-empty", "bpf23-empty-exit",
               "bpf23-count", "bpf23-printf", "bpf23-inflight", "bpf23-record", "bpf23-events",
               "bpf23-exit", "bpf23-files", "bpf23-files-lat", "bpf23-rawtp",
               "collector-events", "collector-events-all", "collector-counts", "compose-events", "compose-counts",
               "strace"}
    assert quick["results"]["overhead"]["skipped"] == {}
    assert got == {(t, w) for t in tracers for w in ("dd", "copy")}
    plan = quick["results"]["plan"]
    for row in rows:
        assert row["pairs"] == plan["rounds"]
        assert row["ratio"] > 0 and row["base_s"] > 0 and row["traced_s"] > 0
        n = plan["strace_dd_n"] if row["tracer"] == "strace" else plan["dd_n"]
        if row["workload"] == "dd":
            assert row["events"] == 2 * n


def test_delivery_counts_are_consistent(quick):
    t = quick["results"]["throughput"]["workloads"]
    for wl in ("dd", "copy"):
        c = t[wl]["collector"]
        # Not "everything delivered": on a loaded host the perf buffer overflows (counted as lost).
        assert 0 <= c["delivered"] <= c["made"], c
        assert c["lost"] is not None and c["dropped"] is not None and c["malformed"] == 0
        assert c["delivered"] + c["lost"] + c["dropped"] > 0, "nothing delivered and nothing counted"
        if c["delivered"]:  # the collector handled events, so it used CPU for them
            assert c["collector_us_per_event"] > 0 and c["bpftrace_us_per_event"] > 0
        # counts are aggregated in the kernel: every call of the workload must be counted
        assert t[wl]["counts"]["counted_min"] >= t[wl]["counts"]["made"]
        assert t[wl]["raw_printf"]["lost"] is not None  # bpftrace's own "Lost N events" were read


def test_latency_and_steady_rate_content(quick):
    lat = quick["results"]["latency"]
    plan = quick["results"]["plan"]
    for key, rate, secs in (("steady", "steady_rate", "steady_s"), ("low", "latency_low_rate", "latency_low_s"),
                            ("high", "latency_high_rate", "latency_high_s")):
        r = lat[key]
        assert r["made"] == int(plan[rate] * plan[secs])
        assert 0 <= r["delivered"] <= r["made"]
        assert r["lost"] is not None and r["dropped"] is not None
        if r["delivered"]:
            assert r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
        else:  # nothing arrived: only excusable when the collector counted losses
            assert r["lost"] + r["dropped"] > 0


def test_saturation_is_exact_and_names_what_ran(quick):
    """Issue 16: the multi-process burst under both collectors, checked against the lossless count."""
    sat = quick["results"]["saturation"]
    assert sat["skipped"] == {}
    assert {r["tracer"] for r in sat["multi"]} == {"collector-events", "compose-events"}
    for r in sat["multi"]:
        assert r["job_status"] == 0 and r["made"] > 4 * r["dd_n"] * 2, r
        accounted = r["delivered"] + r["lost"] + r["dropped"]
        shown = {k: v for k, v in r.items() if k != "status"} | {"status": r["status"]}
        # exact with both bpftrace versions, by the per-CPU kicks (two CI quick runs accounted 89-90%
        # before idle CPUs kicked too; 0.23's own loss count also held dropped file-naming lines)
        assert accounted == r["made"], shown
    by = {r["tracer"]: r["status"] for r in sat["multi"]}
    assert by["compose-events"]["bpftrace"].startswith("0.23") and by["compose-events"]["output"] == "ringbuf"
    assert by["collector-events"]["output"] == "perf"
    c = sat["ceiling"]
    assert c["parser"]["events"] > 0 and c["zmq"]["received"] > 0 and c["bpftrace_file"]["printed"] > 0
    steady = quick["results"]["latency"]["steady-compose"]
    assert 0 <= steady["delivered"] <= steady["made"]


def test_api_load_content(quick):
    api = quick["results"]["api"]
    assert {(row["endpoint"], row["clients"]) for row in api["rows"]} == {
        (e, c) for e in ("add_ips", "print_all_ips", "stats") for c in (1, 16)}
    for row in api["rows"]:
        assert row["requests"] > 0 and row["non2xx"] == 0 and row["errors"] == 0, row
        assert row["p50_ms"] <= row["p99_ms"]
        if row["endpoint"] == "print_all_ips":
            assert row["list_size"] == quick["results"]["plan"]["api_ips"]
    sub = api["subscriber"]
    assert 0 < sub["received"] <= sub["sent"] <= sub["offered"]


def test_every_target_is_evaluated(quick):
    targets = quick["results"]["targets"]
    dd = quick["results"]["throughput"]["workloads"]["dd"]["collector"]
    assert len(targets) == 18
    for t in targets:
        assert t["met"] is True or t["met"] is False or t["met"] is None, t
        if t["met"] is None:
            # only the CPU-per-event ratio can lack a value: when the collector delivered none of
            # dd's events (a saturated host) there is nothing to divide its CPU time by
            assert t["target"].startswith("collector CPU per event") and not dd["delivered"], t
            assert t["shown"] == "not measured", t
        else:
            assert t["value"] is not None and t["shown"] and t["shown"] != "not measured", t


def test_soak_2_minutes(root_and_bpftrace, tmp_path):
    """The CI soak (issue 23), two minutes of the hour-long one: 5,000 writes/s plus bursts, a uid-nobody
    subscriber reading a file every second, hostile stream peers, HTTP abuse, the collector restarted
    every 45 s and the API every 70 s. Every workload event is delivered or counted lost, every read of
    the subscriber arrives, no endpoint answers invalid JSON, memory stays flat, nothing is left over."""
    from harness import nobody
    missing = nobody.available()
    require(missing is None, missing or "")
    out = tmp_path / "soak.json"
    proc = _run(["-m", "bench.soak", "--duration", "120", "--collector-every", "45", "--api-every", "70",
                 "--sample-every", "2", "--warmup", "15", "--json", str(out)], timeout=600)
    assert out.exists(), f"soak wrote no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    r = json.loads(out.read_text())
    assert proc.returncode == 0 and r["ok"], f"soak failed: {r['errors']}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert r["restarts"] == {"collector": 2, "api": 1}, r["restarts"]
    t = r["totals"]
    assert t["made"] > 100_000 and 0 < t["seen"] <= t["made"] and t["reads"] > 60 and t["reads_missing"] == 0
    assert all(h["done"] > 0 and h["errors"] == 0 and h["invalid_json"] == 0 for h in r["http"].values()), r["http"]
    assert r["sse"]["streams"] > 0 and r["sse"]["lines"] > 0
    roles = {p["role"] for p in r["processes"]}
    assert roles == {"collector", "bpftrace", "api", "subscriber (nobody)"}, roles
    assert "## Soak" in proc.stdout
