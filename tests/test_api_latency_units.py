"""Issue 25 (and 22's /stats side) in process: latency histograms and percentiles, errors by errno name,
top files, and the filters of /events, through the API's real ingest code (harness.api.Feed) and
its HTTP answers (harness.wsgi)."""
from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.api import ApiInProcess, Feed, event, metric
from syswatch.api import hoststats
from syswatch.shared import latency, protocol

pytestmark = pytest.mark.unit


@pytest.fixture
def api(tmp_path):
    return ApiInProcess(tmp_path / "ips.sqlite3", recent_events=1000)


FILE_FIELDS = ("path", "ino", "dev", "file_type")


def ev(**kw) -> dict:
    """harness.api.event plus the file fields of the files branch's record (path, ino, dev, file_type)."""
    extra = {k: kw.pop(k) for k in FILE_FIELDS if k in kw}
    return {**event(**kw), **extra}


def put(api, events: list) -> None:
    """Events straight into the aggregates as the ingest applies them (decode keeps only the protocol's
    fields, and the file fields are not declared in it yet: the files branch adds them)."""
    assert api.app.stats.add_events("testhost", events, api.collector)
    api.app.hub.publish(events)


def stats(api, **params) -> dict:
    r = api.get("/stats", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_histogram_of_known_latencies_is_exact_and_its_percentiles_are_in_the_true_bucket(api):
    feed = Feed(api)
    feed.status()
    lats = [1_000 * (i + 1) for i in range(100)] + [50_000_000]     # 1..100 us, and one 50 ms call
    feed.events([event(syscall="read", lat_ns=n) for n in lats])
    read = stats(api)["totals"]["read"]
    expected = latency.Histogram()
    for n in lats:
        expected.add(n)
    assert read["lat_hist"] == expected.buckets() and sum(read["lat_hist"]) == read["calls"] == 101
    assert read["lat_measured"] == 101 and read["lat_unmeasured"] == 0 and read["max_ns"] == 50_000_000
    ranked = sorted(lats)
    for q, key in ((0.5, "p50_ns"), (0.9, "p90_ns"), (0.99, "p99_ns")):
        true = ranked[math.ceil(q * len(ranked)) - 1]
        assert latency.bucket(read[key]) == latency.bucket(true), (key, read[key], true)
    assert read["avg_ns"] == sum(lats) // len(lats)


def test_calls_without_a_latency_are_counted_apart_never_as_zero(api):
    feed = Feed(api)
    without = {k: v for k, v in event(syscall="write").items() if k != "lat_ns"}
    api.app.stats.add_events("testhost", [dict(without), dict(without), event(syscall="write", lat_ns=3000)])
    feed.status()
    write = stats(api)["totals"]["write"]
    assert write["calls"] == 3 and write["lat_measured"] == 1 and write["lat_unmeasured"] == 2
    assert write["lat_hist"][0:2] == [0, 0] and sum(write["lat_hist"]) == 1       # no 0 ns bucket filled
    assert write["p50_ns"] == write["max_ns"] == 3000 and write["avg_ns"] == 3000
    text = api.get("/metrics").text
    assert metric(text, "syswatch_call_latency_unmeasured_total", host="testhost", syscall="write") == 2
    assert metric(text, "syswatch_call_latency_seconds_count", host="testhost", syscall="write") == 1


def test_counts_rows_with_buckets_and_without_feed_the_same_tables(api):
    feed = Feed(api)
    feed.status(mode="counts")
    row = {"pid": 7, "comm": "pg", "container_id": "0123456789ab", "container_name": "db", "syscall": "read",
           "calls": 10, "bytes": 900, "errors": 2, "lat_ns_sum": 40_000,
           "lat_hist": [0] * 11 + [4, 6], "lat_ns_max": 5000}
    plain = {**row, "pid": 8, "lat_hist": None, "lat_ns_max": None, "errors": 0, "lat_ns_sum": 80_000, "calls": 20,
             "bytes": 0}
    api.app.stats.add_counts({"host": "testhost", "ts_ns": 1, "interval_ns": 10**9,
                              "rows": [row, {k: v for k, v in plain.items() if v is not None}]}, api.collector)
    s = stats(api)
    read = s["totals"]["read"]
    assert read["calls"] == 30 and read["lat_hist"] == [0] * 11 + [4, 6] and read["lat_measured"] == 10
    assert read["lat_unmeasured"] == 20          # the row without buckets: its mean is known, not its spread
    assert read["avg_ns"] == (40_000 + 80_000) // 30 and read["max_ns"] == 5000
    assert read["errnos"] == {"unknown": 2}      # a counts row says how many failed, not how
    (db,) = s["top_containers_by_calls"]
    assert db["p99_ns"] is not None and latency.bucket(db["p99_ns"]) == 12 and db["lat_unmeasured"] == 20


def test_errors_are_named_by_errno_everywhere(api):
    feed = Feed(api)
    feed.status()
    feed.events([event(syscall="read", ret=-11, pid=1) for _ in range(5)] + [event(syscall="read", ret=-9, pid=1)]
                + [event(syscall="read", ret=-4000, pid=2)] + [event(syscall="read", ret=-512, pid=2)])
    s = stats(api)
    assert s["totals"]["read"]["errnos"] == {"EAGAIN": 5, "EBADF": 1, "ERESTARTSYS": 1, "other": 1}
    assert list(s["totals"]["read"]["errnos"]) == ["EAGAIN", "EBADF", "ERESTARTSYS", "other"]  # most first
    procs = {p["pid"]: p["errnos"] for p in s["top_processes_by_calls"]}
    assert procs == {1: {"EAGAIN": 5, "EBADF": 1}, 2: {"ERESTARTSYS": 1, "other": 1}}
    text = api.get("/metrics").text
    assert metric(text, "syswatch_errors_total", host="testhost", syscall="read", errno="EAGAIN") == 5
    assert metric(text, "syswatch_errors_total", host="testhost", syscall="read", errno="other") == 1


def test_errno_names_per_row_are_bounded(api):
    feed = Feed(api)
    feed.status()
    feed.events([event(syscall="read", ret=-n) for n in range(1, 134)])
    s = stats(api)
    errnos = s["totals"]["read"]["errnos"]
    assert len(errnos) == hoststats.MAX_ERRNOS + 1 and errnos["other"] == 133 - hoststats.MAX_ERRNOS
    assert sum(errnos.values()) == 133 == s["totals"]["read"]["errors"]
    families = {f.name: f for f in text_string_to_metric_families(api.get("/metrics").text)}
    assert len([x for x in families["syswatch_errors"].samples if x.name.endswith("_total")]) == 9


def test_the_prometheus_histogram_agrees_with_stats(api):
    feed = Feed(api)
    feed.status()
    feed.events([event(syscall="read", lat_ns=2**k + 1) for k in range(5, 40)])
    text = api.get("/metrics").text
    read = stats(api)["totals"]["read"]
    buckets = read["lat_hist"] + [0] * 65
    exported = {float(s.labels["le"]): s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "syswatch_call_latency_seconds_bucket" and s.labels.get("syscall") == "read"}
    for e in latency.EXPORTED_EXPONENTS:     # le = 2**e ns: the calls of the log2 buckets 0..e
        assert exported[(1 << e) * 1e-9] == sum(buckets[:e + 1]), e
    assert metric(text, "syswatch_call_latency_seconds_bucket", host="testhost", syscall="read", le="+Inf") == 35
    assert metric(text, "syswatch_call_latency_seconds_sum", host="testhost", syscall="read") == pytest.approx(
        sum(2**k + 1 for k in range(5, 40)) * 1e-9)


def test_top_files_by_calls_and_bytes_one_file_under_two_names(api):
    feed = Feed(api)
    feed.status()
    put(api, [ev(syscall="read", ret=10, path="/var/lib/pg/base/1", ino=77, dev=2049, file_type="reg")
              for _ in range(3)]
        + [ev(syscall="read", ret=10, path="/srv/link-to-base-1", ino=77, dev=2049, file_type="reg")]
        + [ev(syscall="read", ret=5000, path="pipe:[123]", ino=123, dev=14, file_type="fifo")]
        + [ev(syscall="read", ret=1, path="/no/inode")] + [ev(syscall="read")])
    s = stats(api)
    by_calls = s["top_files_by_calls"]
    assert by_calls[0] == {"host": "testhost", "path": "/srv/link-to-base-1", "file_type": "reg", "dev": 2049,
                           "ino": 77, "calls": 4, "bytes": 40, "errors": 0, "lat_ns_sum": 6000, "avg_ns": 1500}
    assert s["top_files_by_bytes"][0]["path"] == "pipe:[123]" and s["top_files_by_bytes"][0]["file_type"] == "fifo"
    assert {f["path"] for f in by_calls} == {"/srv/link-to-base-1", "pipe:[123]", "/no/inode"}
    assert next(f for f in by_calls if f["path"] == "/no/inode")["ino"] is None
    assert s["api"]["files_tracked"] == 3


def test_file_rows_are_bounded(api, monkeypatch):
    import syswatch.api.aggregates as aggregates
    monkeypatch.setattr(aggregates, "MAX_TRACKED_FILES", 1000)
    feed = Feed(api)
    feed.status()
    for chunk in range(10):
        put(api, [ev(syscall="read", path=f"/tmp/f{chunk}-{i}", ino=chunk * 1000 + i + 1) for i in range(300)])
    s = stats(api)
    assert s["api"]["files_tracked"] <= 1000 and s["api"]["files_evicted"] >= 2000
    assert s["api"]["files_tracked"] + s["api"]["files_evicted"] == 3000


@pytest.mark.parametrize("query, pids", [
    ({"failed": "1"}, [2, 3]),
    ({"min_latency": "20ms"}, [3, 4]),
    ({"min_latency": "20ms", "failed": "1"}, [3]),
    ({"uid": "0"}, [4]),
    ({"tid": "11"}, [1]),
    ({"path": "/var/log"}, [1, 4]),
    ({"path": "/var/log/"}, [4]),
    ({"file_type": "sock"}, [2]),
    ({"failed": "0"}, [1, 2, 3, 4]),
])
def test_event_filters_select_what_they_name(api, query, pids):
    feed = Feed(api)
    feed.status()
    put(api, [ev(pid=1, tid=11, path="/var/log", file_type="reg", lat_ns=1000),
              ev(pid=2, ret=-11, path="socket:[9]", file_type="sock", lat_ns=1000),
              ev(pid=3, ret=-9, lat_ns=25_000_000),
              ev(pid=4, uid=0, path="/var/log/syslog", file_type="reg", lat_ns=20_000_000)])
    r = api.get("/events", params=query)
    assert r.status_code == 200, r.text
    assert [e["pid"] for e in r.json()["events"]] == pids


@pytest.mark.parametrize("query, message", [
    ({"min_latency": "20"}, "give a number and a unit"),
    ({"failed": "yes"}, "must be 1"),
    ({"file_type": "file"}, "must be one of reg, dir"),
    ({"path": "/a\x1bb"}, "printable"),
    ({"uid": "-1"}, "must be an integer"),
])
def test_bad_filters_are_400_naming_the_parameter(api, query, message):
    for path in ("/events", "/events/stream"):
        r = api.get(path, params=query)
        assert r.status_code == 400 and message in r.json()["error"], r.text


def test_every_traced_syscall_has_latency_series_from_the_first_status(api):
    Feed(api).status(syscalls=["read", "pread64"])
    text = api.get("/metrics").text
    for sc in ("read", "pread64"):
        assert metric(text, "syswatch_call_latency_seconds_count", host="testhost", syscall=sc) == 0
    assert "pread64" in stats(api)["totals"] and stats(api)["totals"]["pread64"]["p99_ns"] is None
    assert set(protocol.SYSCALLS) >= set(stats(api)["totals"])
