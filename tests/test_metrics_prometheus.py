"""GET /metrics against the real Prometheus tools (Debian's prometheus package: prometheus 2.42 and
promtool): promtool lints real scrapes, and a real Prometheus scraping a real API, fed by a real
collector (root, bpftrace) tracing a real workload, answers every expression of the Grafana
dashboard deploy/grafana/syswatch.json with data."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests

import syswatch
from harness import ROOT, prometheus
from harness.api import ApiProcess, Publisher, connect, event
from harness.collector import CollectorProcess
from harness.procs import die_with_parent, wait_for
from harness.prometheus import JOB, Prometheus, promtool
from tests.conftest import have, is_root, require

DASHBOARD = ROOT / "deploy" / "grafana" / "syswatch.json"
HOST = "promtest"          # the collector's --hostname: the dashboard's $host
RATE_INTERVAL = "10s"      # Grafana's $__rate_interval for a 1 s scrape interval is 4 s at least; 10 s is safe
SCRAPES = 12               # scrapes to wait for before querying (more than one rate interval)

# Makes known calls until killed: writes to /dev/null, reads from /dev/zero and a read of a closed
# fd (EBADF), so events, bytes and errors all move.
WORKLOAD = r"""
import os, sys, time
null, zero = os.open("/dev/null", os.O_WRONLY), os.open("/dev/zero", os.O_RDONLY)
print(os.getpid(), flush=True)
while True:
    os.write(null, b"x" * 64)
    os.read(zero, 64)
    try:
        os.read(999, 1)
    except OSError:
        pass
    time.sleep(0.01)
"""


def require_prometheus() -> None:
    require(prometheus.missing() is None, prometheus.missing() or "")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def substitute(expr: str, host: str = HOST, job: str = JOB) -> str:
    """What Grafana sends for ``expr``: its variables filled in (a single value, or the All regex)."""
    for name, value in (("__rate_interval", RATE_INTERVAL), ("__interval", "1s"), ("host", host), ("job", job)):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"a variable the test does not know in: {expr}"
    return expr


def test_promtool_lints_a_real_scrape(tmp_path):
    """Every family the API exposes, with samples in each (two hosts, errors, requests, a 404)."""
    require_prometheus()
    with ApiProcess(tmp_path / "ips.sqlite3", "--hosts-per-collector", "2") as srv:
        pub = Publisher(srv.collector, host="lint-a")
        try:
            connect(srv, pub)
            pub.events([event(syscall="read", ret=-9), event(syscall="write", count=5)])
            pub.host = "lint-b"  # a second host on the same stream
            pub.status()
            pub.events([event(syscall="write", count=1000)])
            wait_for(lambda: srv.get("/stats").json()["events_received"] >= 3, what="the events")
            assert srv.post("/add_ips", {"add_ips": [1, 2]}).status_code == 200
            assert srv.get("/no/such/path").status_code == 404
            r = srv.get("/metrics")
        finally:
            pub.close()
    assert r.status_code == 200
    assert re.fullmatch(r"text/plain; version=[0-9.]+; charset=utf-8", r.headers["Content-Type"])
    assert 'syswatch_http_request_duration_seconds_bucket{' in r.text and 'host="lint-b"' in r.text
    lint = promtool("check", "metrics", stdin=r.text)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr


def test_promtool_parses_every_dashboard_expression(tmp_path):
    """Offline: each expression, its variables filled in, as a recording rule for `promtool check rules`."""
    require_prometheus()
    rules = [{"record": f"syswatch:dashboard:{i}", "expr": substitute(expr, ".*", ".*")}
             for i, (_, expr) in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard.rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = promtool("check", "rules", str(path))
    assert check.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in check.stdout, check.stdout + check.stderr


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """(prometheus, api): a real collector tracing the workload, the API subscribed to it and a
    Prometheus that has scraped the API SCRAPES times. Everything is stopped also on failure."""
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-test.sh does it)")
    require_prometheus()
    tmp = tmp_path_factory.mktemp("prometheus")
    stop = []
    try:
        work = subprocess.Popen([sys.executable, "-c", WORKLOAD], stdout=subprocess.PIPE, text=True,
                                preexec_fn=die_with_parent)
        stop.append(lambda: (work.kill(), work.wait()))
        pid = int(work.stdout.readline())
        col = CollectorProcess(tmp, "--hostname", HOST, "--pid", str(pid), "--echo-rate", "0", wait=False)
        stop.append(col.kill)
        col.wait_monitoring()
        api = ApiProcess(tmp / "ips.sqlite3", collector=col.endpoint)
        stop.append(api.stop)
        api.start()
        wait_for(lambda: api.get("/stats").json()["totals"]["write"]["calls"] > 0, 30, 0.2, "the workload's events")
        prom = Prometheus(tmp, f"127.0.0.1:{api.port}")
        stop.append(prom.stop)
        wait_for(prom.ready, 60, 0.2, "prometheus to be ready")

        wait_for(lambda: prom.scrapes() >= SCRAPES, 90, 0.5, f"{SCRAPES} scrapes of the API")
        yield prom, api
    finally:
        for fn in reversed(stop):
            fn()


def test_prometheus_scrapes_the_api_without_errors(scraped):
    prom, api = scraped
    targets = requests.get(prom.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")], targets
    build = prom.query(f'syswatch_build_info{{job="{JOB}"}}')["data"]["result"]
    assert [b["metric"]["version"] for b in build] == [syswatch.__version__], build
    lint = promtool("check", "metrics", stdin=api.get("/metrics").text)  # the real collector's stream too
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr


@pytest.mark.parametrize("host, job", [(HOST, JOB), (".*", ".*")], ids=["one-host", "all"])
def test_every_dashboard_expression_returns_data(scraped, host, job):
    prom, _ = scraped
    failures, answers = [], {}
    for title, expr in dashboard_queries():
        query = substitute(expr, host, job)
        answer = prom.query(query)
        if answer.get("status") != "success" or not answer["data"]["result"]:
            failures.append(f"{title}: {query}\n    -> {answer}")
        answers[expr] = answer
    assert not failures, "dashboard queries without data:\n" + "\n".join(failures)
    # the workload's writes show as a positive rate
    events = next(a for e, a in answers.items() if e.startswith("sum by (syscall) (rate(syswatch_events_total"))
    rates = {r["metric"]["syscall"]: float(r["value"][1]) for r in events["data"]["result"]}
    assert rates["write"] > 0 and rates["read"] > 0, rates


def test_dashboard_variables_resolve(scraped):
    """The template variables' label_values(metric{...}, label) queries, as Grafana runs them."""
    prom, _ = scraped
    dash = json.loads(DASHBOARD.read_text())
    expect = {"host": HOST, "job": JOB}
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.+), *(\w+)\)", var["query"]["query"])
        assert m, var["query"]
        selector = m.group(1).replace("$job", JOB)
        values = requests.get(f"{prom.url}/api/v1/label/{m.group(2)}/values", params={"match[]": selector},
                              timeout=10).json()["data"]
        assert expect[var["name"]] in values, (var["name"], values)
