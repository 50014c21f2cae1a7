"""Issue 14: one API over several collectors. Two real collectors on this machine, each with its own
--hostname and a filter that passes only its own child process, one API subscribed to both:
per-host numbers are exact, and one collector killed and restarted leaves the other flowing."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from harness import ROOT
from harness.api import ApiProcess, metric
from harness.collector import CollectorProcess
from harness.procs import wait_for
from harness.workloads import Writer
from tests.conftest import have, is_root, require
from tests.test_subscribers import wait_connected


def host_stats(api: ApiProcess, host: str) -> dict:
    r = api.get("/stats", params={"host": host})
    assert r.status_code == 200, r.text
    return r.json()


def writes_of(api: ApiProcess, host: str, pid: int) -> tuple[int, int]:
    """(calls, bytes moved) of ``pid``'s marked writes (11 or 13 bytes) on ``host``, from /events.

    (The writer's own "round" lines and stdin reads are events too: they are not counted.)"""
    events = api.get("/events", params={"host": host, "pid": pid, "syscall": "write", "limit": 10000}).json()["events"]
    mine = [e for e in events if e["count"] in (11, 13)]
    return len(mine), sum(e["ret"] for e in mine)


def test_two_hosts_one_api_exact_per_host_and_a_restart(tmp_path):
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace")
    alpha, beta = Writer("sw-alpha", 100, 11), Writer("sw-beta", 70, 13)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ca = CollectorProcess(tmp_path / "a", "--hostname", "node-a", "--pid", str(alpha.pid), "--echo-rate", "0")
    cb = CollectorProcess(tmp_path / "b", "--hostname", "node-b", "--pid", str(beta.pid), "--echo-rate", "0")
    # --collector is repeatable: the helper passes the first, the second follows
    api = ApiProcess(tmp_path / "ips.sqlite3", "--collector", cb.endpoint, collector=ca.endpoint)
    try:
        api.start()
        wait_for(lambda: api.get("/stats").json()["hosts"] == ["node-a", "node-b"], 20, 0.2, "both hosts")
        for _ in range(3):
            alpha.round()
            beta.round()
        wait_for(lambda: writes_of(api, "node-a", alpha.pid)[0] == 300, 20, 0.2, "node-a's writes")
        wait_for(lambda: writes_of(api, "node-b", beta.pid)[0] == 210, 20, 0.2, "node-b's writes")
        assert writes_of(api, "node-a", alpha.pid) == (300, 3300)
        assert writes_of(api, "node-b", beta.pid) == (210, 2730)
        assert writes_of(api, "node-a", beta.pid) == (0, 0) and writes_of(api, "node-b", alpha.pid) == (0, 0)
        procs = {(p["host"], p["pid"]) for p in api.get("/stats").json()["top_processes_by_calls"]}
        assert {("node-a", alpha.pid), ("node-b", beta.pid)} <= procs
        assert {(p["host"], p["pid"]) for p in host_stats(api, "node-a")["top_processes_by_calls"]} == \
            {("node-a", alpha.pid)}
        every = api.get("/stats").json()
        assert {c["host"]: c["connected"] for c in every["collectors"]} == {"node-a": True, "node-b": True}
        ev = api.get("/events", params={"host": "node-b", "limit": 1000}).json()["events"]
        assert ev and {(e["host"], e["pid"]) for e in ev if e["comm"] == "sw-beta"} == {("node-b", beta.pid)}
        metrics = api.get("/metrics").text
        assert metric(metrics, "syswatch_collector_connected", host="node-a", endpoint=ca.endpoint) == 1
        assert metric(metrics, "syswatch_collector_connected", host="node-b", endpoint=cb.endpoint) == 1

        # node-b goes away: shown disconnected, node-a keeps flowing
        cb.proc.kill()
        cb.proc.wait()
        wait_for(lambda: {c["host"]: c["connected"] for c in api.get("/stats").json()["collectors"]}
                 == {"node-a": True, "node-b": False}, 20, 0.3, "node-b disconnected")
        alpha.round()
        wait_for(lambda: writes_of(api, "node-a", alpha.pid)[0] == 400, 20, 0.2, "node-a still flowing")
        # ... and comes back on the same endpoint: it resumes
        cb = CollectorProcess(tmp_path / "b", "--hostname", "node-b", "--pid", str(beta.pid), "--echo-rate", "0",
                       bind=cb.endpoint)
        wait_for(lambda: {c["host"]: c["connected"] for c in api.get("/stats").json()["collectors"]}
                 == {"node-a": True, "node-b": True}, 30, 0.3, "node-b back")
        time.sleep(1.0)
        beta.round()
        wait_for(lambda: writes_of(api, "node-b", beta.pid)[0] == 280, 20, 0.2, "node-b's writes after restart")
        assert writes_of(api, "node-a", alpha.pid) == (400, 4400)
    finally:
        api.stop()
        ca.kill()
        cb.kill()
        alpha.kill()
        beta.kill()


def test_scripts_take_several_endpoints(tmp_path):
    """tail.py over two collectors prints both hosts' events (the fan-in of the scripts)."""
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace")
    alpha, beta = Writer("sw-alpha", 20, 11), Writer("sw-beta", 20, 13)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ca = CollectorProcess(tmp_path / "a", "--hostname", "node-a", "--pid", str(alpha.pid), "--echo-rate", "0")
    cb = CollectorProcess(tmp_path / "b", "--hostname", "node-b", "--pid", str(beta.pid), "--echo-rate", "0")
    tail = subprocess.Popen([sys.executable, str(ROOT / "subscribers" / "tail.py"), "-e", ca.endpoint,
                             "-e", cb.endpoint, "--json", "-n", "sw-alpha", "-n", "sw-beta", "--count", "40",
                             "-d", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # connected to both and subscribed (a fixed sleep was too short for a loaded machine's start-up)
        wait_connected(ca, tail)
        wait_connected(cb, tail)
        alpha.round()
        beta.round()
        out, err = tail.communicate(timeout=40)
        assert tail.returncode == 0, err
        seen = {(e["host"], e["comm"]) for e in map(json.loads, out.splitlines())}
        assert seen == {("node-a", "sw-alpha"), ("node-b", "sw-beta")}
    finally:
        if tail.poll() is None:
            tail.kill()
        ca.kill()
        cb.kill()
        alpha.kill()
        beta.kill()
