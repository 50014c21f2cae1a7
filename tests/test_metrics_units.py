"""Unit layer of GET /metrics (pytest -m unit), in process over the real models: how the stats model
maps to metric families, the request histogram's route-template labels, the bound on label
cardinality, and the Grafana dashboard's references. The real Prometheus side (promtool, a real
server querying every dashboard expression) is tests/test_metrics_prometheus.py."""
from __future__ import annotations

import json
import math
import re
import wsgiref.util

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

import syswatch
from harness import ROOT
from syswatch.api import metrics, validation
from syswatch.api.aggregates import COUNTERS, MAX_HOSTS
from syswatch.api.app import ApiConfig, make_app
from syswatch.api.httplog import DURATION_BUCKETS, UNMATCHED, RequestStats
from syswatch.api.ingest import StreamSubscriber
from syswatch.api.routes import ROUTES
from syswatch.shared import protocol

pytestmark = pytest.mark.unit

ENDPOINT = "tcp://127.0.0.1:1"
DASHBOARD = ROOT / "deploy" / "grafana" / "syswatch.json"


def _event(**over):
    e = {"ts_ns": 1, "pid": 10, "tid": 10, "uid": 0, "comm": "a", "syscall": "read", "fd": 3, "count": 100,
         "ret": 100, "lat_ns": 1000, "cgroup_id": 1, "container_id": "", "container_name": ""}
    return {**e, **over}


def _status(host: str, **over) -> dict:
    return {"host": host, "ts_ns": 1, "mode": "events", "probe": "tracepoint", "syscalls": ["read", "write"],
            "excluded_pids": [], "events_total": 5, "lost_total": 2, "dropped_total": 1, "malformed_total": 3,
            "uptime_s": 1.0, **over}


class Parts:
    """The models of one API, wired by make_app as api/server.py wires them, with its /metrics registry."""

    def __init__(self, tmp_path, endpoints=(ENDPOINT,)):
        self.log: list[str] = []
        app = make_app(ApiConfig(db=str(tmp_path / "ips.sqlite3"), collectors=tuple(endpoints), max_ips=1000,
                                 max_items=100, recent_events=100, max_streams=2, stream_queue=100),
                       log=self.log.append)
        self.stream, self.hub, self.requests = app.stats, app.hub, app.requests
        self.iplist, self.api = app.iplist, app.api
        self.app = app.wsgi

    def value(self, name: str, **labels):
        return self.api.registry.get_sample_value(name, labels)

    def scrape(self) -> str:
        return metrics.exposition(self.api.registry).decode()

    def request(self, method: str, path: str, raw: str | None = None) -> int:
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "REQUEST_URI": raw or path}
        wsgiref.util.setup_testing_defaults(environ)
        status = []
        body = self.app(environ, lambda s, headers, exc_info=None: status.append(int(s.split()[0])))
        b"".join(body)
        body.close()  # the server closes the body: that is when AccessLog times and counts the request
        return status[0]


def test_every_syswatch_metric_is_derived_from_the_stats_model(tmp_path):
    p = Parts(tmp_path)
    p.stream.add_events("h1", [_event(ret=-9, lat_ns=2000), _event(ret=50), _event(ret=70)])
    p.stream.add_events("h2", [_event(syscall="pwrite64", ret=8, lat_ns=500_000)])
    p.stream.set_status(_status("h1"), "tcp://127.0.0.1:1")
    p.iplist.add(validation.entries({"add_ips": [1, "10.0.0.1"]}, 100))

    assert p.value("syswatch_events_total", host="h1", syscall="read") == 3
    assert p.value("syswatch_moved_bytes_total", host="h1", syscall="read") == 120
    assert p.value("syswatch_errors_total", host="h1", syscall="read", errno="EBADF") == 1
    # the latency histogram: 2000 ns < 2048 ns, 1000 ns twice < 1024 ns; sum and count of the measured calls
    lat = {"host": "h1", "syscall": "read"}
    assert p.value("syswatch_call_latency_seconds_sum", **lat) == pytest.approx(4e-6)
    assert p.value("syswatch_call_latency_seconds_count", **lat) == 3
    assert p.value("syswatch_call_latency_seconds_bucket", **lat, le="1.024e-06") == 2
    assert p.value("syswatch_call_latency_seconds_bucket", **lat, le="2.048e-06") == 3
    assert p.value("syswatch_call_latency_seconds_bucket", **lat, le="+Inf") == 3
    assert p.value("syswatch_call_latency_unmeasured_total", **lat) == 0
    assert p.value("syswatch_call_latency_seconds_bucket", host="h2", syscall="pwrite64", le="0.000524288") == 1
    # every syscall a collector traces has its series before the first call (rate() of 0, not no data)
    assert p.value("syswatch_events_total", host="h1", syscall="write") == 0
    assert p.value("syswatch_moved_bytes_total", host="h2", syscall="pwrite64") == 8
    assert p.value("syswatch_collector_connected", host="h1", endpoint="tcp://127.0.0.1:1") == 1
    for key in ("events_total", "lost_total", "dropped_total", "malformed_total"):
        assert p.value(f"syswatch_collector_{key}", host="h1") == _status("h1")[key]
    assert p.value("syswatch_collector_lost_total", host="h2") is None  # no status from h2 yet
    snap = p.stream.snapshot()
    for name, (kind, _) in COUNTERS.items():
        assert p.value(f"syswatch_api_{name}" + ("_total" if kind == "counter" else "")) == snap["api"][name], name
    assert p.value("syswatch_ip_list_size") == 2 and p.value("syswatch_api_event_streams") == 0
    # /stats and /metrics agree: one model
    for syscall, row in snap["totals"].items():
        by_host = [p.value("syswatch_events_total", host=h, syscall=syscall) or 0 for h in ("h1", "h2")]
        assert sum(by_host) == row["calls"], syscall

    text = p.scrape()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    build = next(s for f in families.values() for s in f.samples if s.name == "syswatch_build_info")
    assert build.value == 1
    assert build.labels["version"] == syswatch.__version__ and build.labels["libzmq"] == zmq.zmq_version()
    assert p.value("process_resident_memory_bytes") > 0 and p.value("process_cpu_seconds_total") >= 0
    assert "python_info" in text and "python_gc_collections_total" in text
    # Prometheus computes rates: no app-computed rate gauge, every counter sample ends in _total
    assert not re.search(r"per_second|_per_s\b|_rate\b", text)
    for family in families.values():
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        assert family.documentation, family.name


def test_each_api_has_its_own_registry(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Parts(tmp_path / "a"), Parts(tmp_path / "b")
    a.stream.add_events("ha", [_event()])
    b.stream.add_events("hb", [_event(), _event()])
    assert a.value("syswatch_events_total", host="ha", syscall="read") == 1
    assert a.value("syswatch_events_total", host="hb", syscall="read") is None
    assert b.value("syswatch_events_total", host="hb", syscall="read") == 2
    assert a.api.registry is not b.api.registry


def test_request_histogram_is_labelled_by_route_template_method_and_status(tmp_path):
    p = Parts(tmp_path)
    assert p.request("GET", "/static/dashboard.css") == 200
    assert p.request("GET", "/static/vendor/uplot/uPlot.min.css") == 200
    assert p.request("GET", "/stats") == 200
    assert p.request("HEAD", "/healthz") == 200
    assert p.request("POST", "/stats") == 405
    assert p.request("BREW", "/stats") == 405
    for i in range(300):  # scanners: every unknown path is the one label "unmatched"
        assert p.request("GET", f"/wp-admin/{i}.php") == 404
    assert p.request("GET", "/%63lear_ip_list".replace("%63", "c"), raw="/%63lear_ip_list") == 404

    series = p.requests.snapshot()
    assert series == {("/static/<name:path>", "GET", 200): 2, ("/stats", "GET", 200): 1, ("/healthz", "HEAD", 200): 1,
                      (UNMATCHED, "POST", 405): 1, (UNMATCHED, "other", 405): 1, (UNMATCHED, "GET", 404): 301}
    known = {r.path for r in ROUTES} | {UNMATCHED}
    families = {f.name: f for f in text_string_to_metric_families(p.scrape())}
    hist = families["syswatch_http_request_duration_seconds"]
    assert hist.type == "histogram"
    assert {s.labels["route"] for s in hist.samples} <= known
    for (route, method, status), n in series.items():
        labels = {"route": route, "method": method, "status": str(status)}
        assert p.value("syswatch_http_requests_total", **labels) == n
        assert p.value("syswatch_http_request_duration_seconds_count", **labels) == n
        assert p.value("syswatch_http_request_duration_seconds_bucket", **labels, le="+Inf") == n
        assert p.value("syswatch_http_request_duration_seconds_sum", **labels) > 0
        cumulative = [s.value for s in hist.samples if s.name.endswith("_bucket")
                      and {k: v for k, v in s.labels.items() if k != "le"} == labels]
        assert len(cumulative) == len(DURATION_BUCKETS) and cumulative == sorted(cumulative)
    assert sum(series.values()) == len(p.log)  # one access-log line per request counted


def test_request_durations_fall_in_inclusive_buckets():
    stats = RequestStats(["/stats"])
    stats.add("/stats", "GET", 200, 0.001)      # exactly a bound: counted in le="0.001"
    stats.add("/stats", "GET", 200, 0.0011)
    stats.add("/stats", "GET", 200, 1e6)        # only +Inf
    stats.add("/nowhere", "GET", 404, 0.0)      # not in the table: unmatched
    buckets, total = stats.durations()[("/stats", "GET", 200)]
    as_dict = dict(buckets)
    assert as_dict[0.0005] == 0 and as_dict[0.001] == 1 and as_dict[0.0025] == 2 and as_dict[60.0] == 2
    assert as_dict[math.inf] == 3 and total == pytest.approx(1e6 + 0.0021)
    assert set(stats.snapshot()) == {("/stats", "GET", 200), (UNMATCHED, "GET", 404)}


def test_host_labels_are_bounded_by_max_hosts(tmp_path):
    """Three times MAX_HOSTS collectors (255-character names, each on an endpoint of its own) send status
    and every syscall, failing with every errno, through the real decode path: /metrics holds MAX_HOSTS
    hosts, the rest is refused; each (host, syscall) has the documented number of series."""
    endpoints = [f"tcp://10.0.{i // 250}.{i % 250}:5556" for i in range(3 * MAX_HOSTS)]
    p = Parts(tmp_path, endpoints)
    sub = StreamSubscriber(endpoints, p.stream, p.hub, ctx=zmq.Context.instance())
    hosts = [f"{i:04d}-" + "h" * 250 for i in range(3 * MAX_HOSTS)]
    every_errno = [_event(ret=-n) for n in range(1, 200)]
    for host, endpoint in zip(hosts, endpoints):
        sub.handle(protocol.encode(protocol.TOPIC_STATUS, _status(host, syscalls=list(protocol.SYSCALLS))), endpoint)
        for syscall in protocol.SYSCALLS:
            batch = [{**e, "syscall": syscall, "lat_ns": 2 ** (i % 64)} for i, e in enumerate(every_errno)]
            sub.handle(protocol.encode(protocol.topic_for(syscall), {"host": host, "events": batch}), endpoint)
    text = p.scrape()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith("syswatch_")]
    seen_hosts = {s.labels["host"] for s in samples if s.labels.get("host")}
    assert len(seen_hosts) == MAX_HOSTS and seen_hosts == set(hosts[:MAX_HOSTS])
    per_host = [s for s in samples if s.labels.get("host")]       # host="": an endpoint not heard from
    # per (host, syscall): 3 counters, 27 histogram series, 8 errno names + "other"; per host: connected
    # and 4 status counters (api/metrics.py's docstring)
    assert len(per_host) == MAX_HOSTS * ((3 + 27 + 9) * len(protocol.SYSCALLS) + 1 + 4)
    errnos_seen = {s.labels["errno"] for s in samples if s.name == "syswatch_errors_total"}
    assert "other" in errnos_seen and len(errnos_seen) == 9
    refused = (3 * MAX_HOSTS - MAX_HOSTS) * (1 + len(protocol.SYSCALLS))
    assert p.value("syswatch_api_messages_refused_total") == refused
    assert p.value("syswatch_api_malformed_messages_total") == 0
    # at the bound, with the longest names: 35,264 series of ~330 bytes (a 255-character host label each),
    # 0.85 MB per syscall (docs/API.md)
    assert len(text.encode()) < 900_000 * len(protocol.SYSCALLS)


def test_every_metric_the_dashboard_uses_is_exposed(tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "syswatch" and dash["title"]
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert "label_values(syswatch_events_total" in variables["host"]["query"]["query"]
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert all(t["datasource"] == p["datasource"] and t["expr"] for t in p["targets"])
    for needed in ("rate(syswatch_events_total", "rate(syswatch_moved_bytes_total", "rate(syswatch_errors_total",
                   "rate(syswatch_collector_lost_total", "rate(syswatch_collector_dropped_total",
                   "syswatch_collector_connected", "rate(syswatch_call_latency_seconds_sum",
                   "rate(syswatch_call_latency_seconds_bucket", "increase(syswatch_call_latency_seconds_bucket",
                   "sum by (syscall, errno)",
                   "histogram_quantile(0.5,", "histogram_quantile(0.99,", "process_resident_memory_bytes",
                   "rate(process_cpu_seconds_total"):
        assert any(needed in e for e in exprs), needed
    assert all('host=~"$host"' in e for e in exprs if "syswatch_events_total" in e)

    p = Parts(tmp_path)
    p.stream.add_events("h1", [_event(), _event(ret=-11)])
    p.stream.set_status(_status("h1"), "tcp://127.0.0.1:1")
    p.request("GET", "/metrics")
    exposed = {s.name for f in text_string_to_metric_families(p.scrape()) for s in f.samples}
    text = " ".join(exprs + [v["definition"] for v in variables.values()])
    names = set(re.findall(r"\b((?:syswatch|process)_[a-z_]+)\b", text))
    assert names and names <= exposed, names - exposed
