"""The live views: /stats, /events, /events/stream, /metrics, /healthz, fed known events built with
shared/protocol. In process (make_app through harness.wsgi, messages handed to the API's ingest code;
marked unit): the aggregates, filters, query validation, malformed messages and strict output.
Against a real API process fed by a real ZeroMQ publisher (harness/api.py Publisher): the event
stream, a collector that comes and goes, full speed, and a client that stops reading."""
from __future__ import annotations

import json
import math
import socket
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.api import ApiInProcess, ApiProcess, Feed, Publisher, connect, event, metric
from harness.hostile import MALFORMED
from harness.procs import rss_kib, wait_for
from syswatch.shared import protocol


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(server, publisher): the API subscribed to a publisher it has heard from."""
    srv = ApiProcess(tmp_path_factory.mktemp("stream") / "ips.sqlite3", "--max-streams", "2",
                    "--threads", "8", "--sse-heartbeat", "0.5", "--stream-queue", "1000")
    with srv:
        pub = Publisher(srv.collector)
        connect(srv, pub)
        yield srv, pub
        pub.close()


@pytest.fixture
def fed(tmp_path):
    """(api, publisher): the API in process, each message applied by its ingest code before the call returns."""
    api = ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--max-streams", "2", "--threads", "8",
                                 "--sse-heartbeat", "0.5", "--stream-queue", "1000")
    pub = Feed(api)
    pub.status()
    return api, pub


def stats(srv):
    return srv.get("/stats").json()


def quiesce(srv):
    """Wait until the API has worked off what earlier tests sent (its counter stops moving)."""
    last = [-1]
    def still():
        now = stats(srv)["events_received"]
        same, last[0] = now == last[0], now
        return same
    wait_for(still, timeout=20, interval=0.3, what="the stream to go quiet")


def publish_and_wait(srv, pub, events):
    before = stats(srv)["events_received"]
    pub.events(events)
    wait_for(lambda: stats(srv)["events_received"] >= before + len(events), what="events to arrive")


KNOWN = ([event(pid=7001, comm="alpha", syscall="read", count=10) for _ in range(5)]
         + [event(pid=7002, comm="beta", syscall="write", count=1000) for _ in range(3)]
         + [event(pid=7003, comm="gamma", syscall="write", count=7) for _ in range(9)])


@pytest.mark.unit
def test_stats_events_and_metrics_show_known_events(fed):
    srv, pub = fed
    s0 = stats(srv)
    publish_and_wait(srv, pub, KNOWN)
    s = stats(srv)
    assert s["connected"] is True and [c["endpoint"] for c in s["collectors"]] == [srv.collector]
    assert s["hosts"] == ["testhost"] and s["collectors"][0]["host"] == "testhost"
    assert s["totals"]["read"]["calls"] - s0["totals"]["read"]["calls"] == 5
    assert s["totals"]["read"]["bytes"] - s0["totals"]["read"]["bytes"] == 50
    assert s["totals"]["write"]["calls"] - s0["totals"]["write"]["calls"] == 12
    assert s["totals"]["write"]["bytes"] - s0["totals"]["write"]["bytes"] == 3063
    by_calls = {(p["pid"], p["comm"]): (p["calls"], p["bytes"]) for p in s["top_processes_by_calls"]}
    assert by_calls[(7003, "gamma")] == (9, 63) and by_calls[(7001, "alpha")] == (5, 50)
    by_bytes = s["top_processes_by_bytes"]
    assert [p["bytes"] for p in by_bytes] == sorted((p["bytes"] for p in by_bytes), reverse=True)
    assert {(p["pid"], p["comm"]): p["bytes"] for p in by_bytes}[(7002, "beta")] == 3000
    assert s["collector_status"]["probe"] == "tracepoint" and "v" not in s["collector_status"]

    known = [{**e, "host": "testhost"} for e in KNOWN]
    r = srv.get("/events", params={"pid": 7003})
    assert r.status_code == 200 and r.json()["count"] == 9
    assert r.json()["events"] == [e for e in known if e["pid"] == 7003]
    assert srv.get("/events", params={"comm": "beta", "syscall": "write"}).json()["events"] == known[5:8]
    assert srv.get("/events", params={"syscall": "read", "pid": 7001, "limit": 2}).json()["events"] == known[3:5]
    assert srv.get("/events", params={"comm": "nobody"}).json() == {"events": [], "count": 0}
    assert srv.get("/events", params={"limit": 3}).json()["events"] == known[-3:]
    assert srv.get("/events", params={"limit": 3, "host": "testhost"}).json()["events"] == known[-3:]
    assert srv.get("/events", params={"host": "elsewhere"}).json()["count"] == 0

    text = srv.get("/metrics").text
    assert metric(text, "syswatch_events_total", host="testhost", syscall="read") == s["totals"]["read"]["calls"]
    assert metric(text, "syswatch_moved_bytes_total", host="testhost", syscall="write") == s["totals"]["write"]["bytes"]
    assert metric(text, "syswatch_collector_connected", host="testhost", endpoint=srv.collector) == 1
    for name in ("syswatch_collector_lost_total", "syswatch_collector_dropped_total",
                 "syswatch_collector_malformed_total"):
        assert metric(text, name, host="testhost") is not None, name
    for name in ("syswatch_api_sse_dropped_events_total", "syswatch_api_malformed_messages_total"):
        assert metric(text, name) is not None, name
    assert metric(text, "syswatch_http_requests_total", route="/stats", method="GET", status="200") >= 2
    assert "# TYPE syswatch_events_total counter" in text


@pytest.mark.unit
def test_collector_status_counters_reach_metrics(fed):
    srv, pub = fed
    pub.status(lost_total=11, dropped_total=0, malformed_total=3)
    wait_for(lambda: stats(srv)["collector_status"]["lost_total"] == 11, what="status")
    text = srv.get("/metrics").text
    assert metric(text, "syswatch_collector_lost_total", host="testhost") == 11
    assert metric(text, "syswatch_collector_malformed_total", host="testhost") == 3
    assert metric(text, "syswatch_collector_curve_refused_total", host="testhost") is None   # not sent: no sample
    pub.status(curve_refused_total=4, announces_refused_total=2)
    wait_for(lambda: stats(srv)["collector_status"].get("curve_refused_total") == 4, what="status")
    text = srv.get("/metrics").text
    assert metric(text, "syswatch_collector_curve_refused_total", host="testhost") == 4
    assert metric(text, "syswatch_collector_announces_refused_total", host="testhost") == 2
    pub.status()


@pytest.mark.unit
def test_events_not_received_is_estimated_from_the_collector_status(fed):
    srv, pub = fed
    pub.status()
    publish_and_wait(srv, pub, [event(pid=7100)] * 10)
    pub.status()  # the API got all 10 the collector published
    base = stats(srv)["api"]["events_not_received"]
    pub.events_total += 40  # the collector says it published 40 that never arrived (a ZeroMQ HWM drop)
    pub.status()
    wait_for(lambda: stats(srv)["api"]["events_not_received"] == base + 40, what="the estimate")
    assert metric(srv.get("/metrics").text, "syswatch_api_events_not_received") == base + 40
    # the collector restarts (counters from 0): the 40 stay counted, the estimate starts anew
    pub.events_total, pub.started = 0, time.monotonic()
    pub.status()
    publish_and_wait(srv, pub, [event(pid=7101)] * 5)
    pub.status()
    assert stats(srv)["api"]["events_not_received"] == base + 40


@pytest.mark.unit
def test_counts_mode_messages_feed_the_totals(fed):
    srv, pub = fed
    before = stats(srv)["totals"]["read"]
    rows = [{"pid": 7200, "comm": "counted", "container_id": "", "syscall": "read", "calls": 1000,
             "bytes": 4096000, "errors": 2, "lat_ns_sum": 10**6}]
    pub.raw(protocol.encode("counts", {"host": "testhost", "ts_ns": time.time_ns(), "interval_ns": 10**9,
                                       "rows": rows}))
    wait_for(lambda: stats(srv)["totals"]["read"]["calls"] == before["calls"] + 1000, what="counts")
    assert stats(srv)["totals"]["read"]["bytes"] == before["bytes"] + 4096000


BAD_EVENTS_QUERIES = [
    ({"limit": "0"}, "'limit' = 0 is out of range 1..10000"),
    ({"limit": "10001"}, "out of range 1..10000"),
    ({"limit": "ten"}, "'limit' = \"ten\" must be an integer"),
    ({"limit": "-1"}, "must be an integer"),
    ({"limit": "1.5"}, "must be an integer"),
    ({"limit": ""}, "must be an integer"),
    ({"pid": "abc"}, "'pid' = \"abc\" must be an integer"),
    ({"pid": "99999999999"}, "out of range"),
    ({"syscall": "open"}, "'syscall' = \"open\" must be one of read, write, pread64"),
    ({"comm": ""}, "'comm' = \"\" must be 1..64 printable characters"),
    ({"comm": "x" * 65}, "must be 1..64 printable"),
    ({"comm": "a\nb"}, "must be 1..64 printable"),
    ({"colour": "red"}, "unknown query parameter \"colour\""),
    ([("pid", "1"), ("pid", "2")], "'pid' is given 2 times"),
]


@pytest.mark.unit
@pytest.mark.parametrize("path", ["/events", "/events/stream"])
@pytest.mark.parametrize("params,message", BAD_EVENTS_QUERIES, ids=[str(p) for p, _ in BAD_EVENTS_QUERIES])
def test_bad_event_query_parameters_are_400(fed, path, params, message):
    srv, _ = fed
    if path == "/events/stream" and any(k == "limit" for k, *_ in (params.items() if isinstance(params, dict)
                                                                    else params)):
        message = "unknown query parameter \"limit\""
    r = srv.get(path, params=params)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"], r.json()


def sse_events(response, want: int, timeout: float = 10) -> tuple[list, list]:
    """Read an SSE response until ``want`` data events arrived: (events, comment lines)."""
    events, comments, buf = [], [], b""
    deadline = time.monotonic() + timeout
    for chunk in response.iter_content(chunk_size=None):
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            for line in block.decode().split("\n"):
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                elif line.startswith(":"):
                    comments.append(line)
        if len(events) >= want or time.monotonic() > deadline:
            break
    return events, comments


def test_event_stream_delivers_filtered_events_live_and_does_not_block_others(live):
    srv, pub = live
    with requests.get(srv.url("/events/stream"), params={"syscall": "read", "comm": "alpha"},
                      stream=True, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        # an open stream does not block other requests
        t = time.monotonic()
        assert srv.get("/healthz").status_code == 200 and srv.post("/add_ips", {"add_ips": [1]}).status_code == 200
        assert time.monotonic() - t < 5
        time.sleep(0.3)  # the stream is registered once its first line is out
        pub.events(KNOWN)
        got, comments = sse_events(r, want=5)
    assert got == [{**e, "host": "testhost"} for e in KNOWN[:5]]
    assert comments[0].startswith(": syswatch event stream (filters: comm=alpha, syscall=read)")


def test_event_stream_sends_heartbeats_when_idle(live):
    srv, _ = live
    with requests.get(srv.url("/events/stream"), params={"pid": 1}, stream=True, timeout=10) as r:
        buf = b""
        for chunk in r.iter_content(chunk_size=None):
            buf += chunk
            if buf.count(b": heartbeat") >= 2:
                break
    assert buf.count(b": heartbeat") >= 2 and b"data:" not in buf


def test_head_on_the_stream_answers_headers_and_holds_nothing(live):
    srv, _ = live
    wait_for(lambda: stats(srv)["api"]["event_streams"] == 0, what="earlier streams to close")
    for _ in range(5):  # more than --max-streams
        r = requests.head(srv.url("/events/stream"), timeout=5)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert stats(srv)["api"]["event_streams"] == 0


def test_stream_count_is_capped_with_a_json_503(live):
    srv, _ = live
    wait_for(lambda: stats(srv)["api"]["event_streams"] == 0, what="earlier streams to close")
    streams = [requests.get(srv.url("/events/stream"), stream=True, timeout=10) for _ in range(2)]
    try:
        assert all(s.status_code == 200 for s in streams)
        r = srv.get("/events/stream")
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert "2 event streams are open, the maximum (server option --max-streams)" in r.json()["error"]
        assert stats(srv)["api"]["event_streams"] == 2
    finally:
        for s in streams:
            s.close()
    # a closed client is noticed at the next heartbeat and its slot freed
    def slot_free():
        with srv.get("/events/stream", stream=True, timeout=10) as r:
            return r.status_code == 200
    wait_for(slot_free, timeout=10, interval=0.5, what="a stream slot to free up")


def test_a_stream_client_that_stops_reading_does_not_grow_memory(live):
    srv, pub = live
    wait_for(lambda: stats(srv)["api"]["event_streams"] == 0, timeout=15, what="earlier streams to close")
    dropped0 = stats(srv)["api"]["sse_dropped_events"]
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /events/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")  # ... and never read again
    wait_for(lambda: stats(srv)["api"]["event_streams"] == 1, what="the stream to open")
    rss0 = rss_kib(srv.proc.pid)
    batch = [event(pid=7300, comm="flood" + "x" * 9, count=i) for i in range(500)]
    for i in range(1000):  # 500,000 events, ~100 MB of SSE text
        pub.events(batch)
        if i % 50 == 0:
            time.sleep(0.02)
    wait_for(lambda: stats(srv)["api"]["sse_dropped_events"] > dropped0 + 100_000, timeout=20,
             what="the slow client's drops to be counted")
    grown_mib = (rss_kib(srv.proc.pid) - rss0) / 1024
    assert grown_mib < 60, f"the API grew by {grown_mib:.0f} MiB for a client that does not read"
    assert srv.get("/healthz").status_code == 200
    shown = stats(srv)["api"]["sse_dropped_events"]
    assert metric(srv.get("/metrics").text, "syswatch_api_sse_dropped_events_total") >= shown > dropped0 + 100_000
    sock.close()


@pytest.mark.unit
def test_malformed_messages_are_counted_and_skipped(fed):
    srv, pub = fed
    before = stats(srv)["api"]["malformed_messages"]
    for frames in MALFORMED:
        pub.raw(frames)
    good = [event(pid=7400, comm="after", syscall="read")]
    pub.events(good)
    wait_for(lambda: srv.get("/events", params={"pid": 7400}).json()["count"] == 1, what="the good event")
    s = stats(srv)
    assert s["api"]["malformed_messages"] - before == len(MALFORMED)
    assert s["api"]["last_malformed_reason"]
    assert srv.get("/events", params={"pid": 7400}).json()["events"] == [{**good[0], "host": "testhost"}]
    assert srv.get("/healthz").status_code == 200 and srv.post("/add_ips", {"add_ips": [2]}).status_code == 200


def test_api_starts_without_collector_then_picks_it_up_and_survives_its_restart(tmp_path):
    with ApiProcess(tmp_path / "ips.sqlite3") as srv:
        h = srv.get("/healthz")
        assert h.status_code == 200 and h.json()["collector_connected"] is False
        s = stats(srv)
        assert s["connected"] is False and s["collector_status"] is None
        assert s["collectors"] == [{"endpoint": srv.collector, "host": None, "connected": False,
                                    "last_message_age_s": None, "events_received": 0,
                                    "events_not_received": 0, "status": None, "bridge": None}]
        assert srv.post("/add_ips", {"add_ips": [1, 2]}).json()["total_ips"] == 2
        pub = Publisher(srv.collector)  # the collector appears: no restart of the API
        connect(srv, pub)
        publish_and_wait(srv, pub, [event(pid=7500, comm="late")])
        assert srv.get("/events", params={"comm": "late"}).json()["count"] == 1
        pub.close()  # the collector goes away ...
        wait_for(lambda: not srv.get("/healthz").json()["collector_connected"], timeout=8,
                 what="connected: false")
        assert srv.get("/healthz").status_code == 200
        pub = Publisher(srv.collector)  # ... and comes back
        connect(srv, pub)
        publish_and_wait(srv, pub, [event(pid=7501, comm="back")])
        assert srv.get("/events", params={"comm": "back"}).json()["count"] == 1
        pub.close()


def test_at_full_speed_every_event_is_received_or_counted(tmp_path):
    """A publisher sending as fast as it can: received + estimated-not-received == published."""
    with ApiProcess(tmp_path / "ips.sqlite3") as srv:
        pub = Publisher(srv.collector)
        connect(srv, pub)
        pub.status()
        time.sleep(0.2)
        batch = [event(pid=7600 + i % 7, comm="fast", count=i) for i in range(500)]
        frames = protocol.encode(protocol.topic_for("write"), {"host": pub.host, "events": batch})
        for i in range(600):  # 300,000 events
            pub.raw(frames)
            pub.events_total += len(batch)
            if i % 100 == 0:
                pub.status()
        pub.status()
        quiesce(srv)
        pub.status()
        time.sleep(0.5)
        s = stats(srv)
        received = s["totals"]["write"]["calls"]
        assert received + s["api"]["events_not_received"] == pub.events_total, s
        assert received > 0
        pub.close()


@pytest.mark.unit
def test_everything_the_api_emits_is_strict_json_and_bounded(fed):
    """Issue 12 (items 3-5): after hostile messages, /stats, /events and /metrics still answer, in strict
    JSON (no NaN/Infinity), unknown fields are dropped and nothing negative or oversized shows."""
    srv, pub = fed
    for frames in MALFORMED:
        pub.raw(frames)
    extra = dict(event(pid=7700, comm="extra"), padding="x" * 1_000_000, nested={"a": [1] * 1000})
    pub.raw(protocol.encode(protocol.topic_for("write"), {"host": pub.host, "events": [extra] * 3}))
    wait_for(lambda: srv.get("/events", params={"pid": 7700}).json()["count"] == 3, what="the padded events")

    def strict(text):
        return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    for path in ("/stats", "/events?limit=10000", "/healthz", "/openapi.json"):
        r = srv.get(path)
        assert r.status_code == 200, (path, r.text[:200])
        strict(r.text)
    events = srv.get("/events", params={"pid": 7700}).json()["events"]
    assert all(set(e) == set(event()) | {"host"} for e in events)      # the unknown fields dropped
    assert len(srv.get("/events", params={"pid": 7700}).content) < 5_000
    for family in text_string_to_metric_families(srv.get("/metrics").text):
        for sample in family.samples:  # finite, never negative (a +Inf bucket bound is a label, not a value)
            assert math.isfinite(sample.value) and sample.value >= 0, sample
