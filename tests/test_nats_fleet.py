"""The fleet path for real: two real collectors (distinct --hostname, root, bpftrace) -> two bridges ->
Debian's nats-server (JetStream) -> the API (--nats), and a real Prometheus scraping both collectors'
own /metrics.

Each collector traces only its workloads (by name, in the kernel), children that make a known set of
calls with distinctive byte counts (harness/workloads.Child), so every count is exact: per host in
the API, per node in Prometheus, and after the API was killed and a workload ran while it was down.
Hostile messages put into the subjects by another client (nats-py) are refused by the same validator,
counted, and change nothing."""
from __future__ import annotations

import json
import signal
from collections import Counter

import pytest
import requests

from harness.api import ApiProcess, Publisher, event
from harness.collector import CollectorProcess
from harness.nats import BridgeProcess, NatsServer, publish_raw
from harness.procs import free_port, wait_for
from harness.prometheus import Prometheus, missing
from harness.workloads import Child
from tests.conftest import have, is_root, require, require_nats_server

HOSTS = ("fleet-a.example", "fleet-b")
WRITES, READS = 150, 150


def expected(child: Child) -> Counter:
    return Counter((sc, count) for sc, _fd, count, _comm in child.expected())


def received(api: ApiProcess, host: str, pid: int) -> Counter:
    events = api.get(f"/events?host={host}&pid={pid}&limit=10000").json()["events"]
    return Counter((e["syscall"], e["count"]) for e in events)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-host.sh does it)")
    require(missing() is None, missing() or "")
    require_nats_server()
    tmp = tmp_path_factory.mktemp("fleet")
    stop = []
    try:
        nats = NatsServer(tmp, max_payload="16MB").start()
        stop.append(nats.stop)
        collectors, bridges = {}, {}
        for i, host in enumerate(HOSTS):
            d = tmp / f"node{i}"
            d.mkdir()
            col = CollectorProcess(d, "--hostname", host, "-n", f"fleetw{i}a", "-n", f"fleetw{i}b",
                                   "--echo-rate", "0", "--metrics", f"127.0.0.1:{free_port()}", wait=False)
            stop.append(col.kill)
            collectors[host] = col
        for col in collectors.values():
            col.wait_monitoring()
        for host, col in collectors.items():
            bridge = BridgeProcess(tmp, col.endpoint, nats.url)
            stop.append(bridge.stop)
            bridges[host] = bridge
        api = ApiProcess(tmp / "ips.sqlite3", "--nats", nats.url, "--nats-consumer", "fleet-api")
        stop.append(api.stop)
        api.start()
        wait_for(lambda: sorted(api.get("/stats").json()["hosts"]) == sorted(HOSTS), 60, 0.2,
                 "both hosts' status through NATS")
        yield {"nats": nats, "collectors": collectors, "bridges": bridges, "api": api, "tmp": tmp}
    finally:
        for fn in reversed(stop):
            fn()


def test_per_host_counts_are_exact_through_nats(fleet):
    api = fleet["api"]
    children = {host: Child([f"fleetw{i}a".encode()], 50_000 + i * 10_000, WRITES, READS)
                for i, host in enumerate(HOSTS)}
    for child in children.values():
        child.run()
    for host, child in children.items():
        wait_for(lambda: received(api, host, child.pid) == expected(child), 60, 0.2,
                 f"{host}: the {WRITES + READS} calls of pid {child.pid}")
        other = HOSTS[1 - HOSTS.index(host)]
        assert received(api, other, child.pid) == Counter(), "each host's events under that host only"
    # each host's view carries its bridge's counters (they come every second)
    def bridges():
        entries = [e for e in api.get("/stats").json()["collectors"] if e["host"] in HOSTS]
        return entries if len(entries) == 2 and all(e["bridge"] for e in entries) else None
    entries = wait_for(bridges, 30, 0.2, "both bridges' counters in /stats")
    for entry in entries:
        bridge = entry["bridge"]
        assert bridge["unpublished_events"] == 0 and bridge["nats_connected"] and bridge["events_not_received"] == 0
        assert entry["endpoint"].startswith("nats://127.0.0.1:"), entry
    metrics = api.get("/metrics").text
    for host in HOSTS:
        assert f'syswatch_bridge_published_events_total{{host="{host}"}}' in metrics


def test_a_workload_run_while_the_api_is_down_arrives_whole_after_its_restart(fleet):
    api, host = fleet["api"], HOSTS[0]
    api.stop(signal.SIGKILL)
    child = Child([b"fleetw0b"], 90_000, WRITES, READS)
    child.run()
    # its events are in NATS before the API returns: the bridge has published them
    bridge = fleet["bridges"][host]
    wait_for(lambda: bridge.metrics()[("syswatch_bridge_queued_messages", None)] == 0, 30, 0.2, "the bridge's queue")
    api.start()
    wait_for(lambda: received(api, host, child.pid) == expected(child), 90, 0.2,
             f"every one of pid {child.pid}'s {WRITES + READS} calls after the restart")


def test_prometheus_answers_a_query_per_node_from_the_collectors_own_metrics(fleet):
    collectors = fleet["collectors"]
    targets = []
    for col in collectors.values():
        port = next(a for i, a in enumerate(col.proc.args) if col.proc.args[i - 1] == "--metrics").split(":")[1]
        targets.append(f"127.0.0.1:{port}")
    prom = Prometheus(fleet["tmp"], targets)
    try:
        wait_for(prom.ready, 60, 0.2, "prometheus to be ready")
        child = Child([b"fleetw1a"], 120_000, 40, 0)
        child.run()

        def answered():
            r = prom.query('syswatch_collector_syscall_calls_total{syscall="write"}')["data"]["result"]
            return {x["metric"]["host"]: float(x["value"][1]) for x in r}
        # fleet-b's writes: the first test's 150 and these 40; fleet-a's: its two workloads' 300
        want = {HOSTS[0]: 2 * WRITES, HOSTS[1]: WRITES + 40}
        wait_for(lambda: answered() == want, 60, 0.5, f"Prometheus to answer {want} (last: {answered()})")
        up = prom.query('up{job="syswatch"}')["data"]["result"]
        assert sorted(u["value"][1] for u in up) == ["1", "1"], up
        info = prom.query("syswatch_collector_info")["data"]["result"]
        assert sorted(i["metric"]["host"] for i in info) == sorted(HOSTS)
        assert all(i["metric"]["mode"] == "events" and i["metric"]["probe"] in ("tracepoint", "kprobe") for i in info)
        lost = prom.query("sum by (host) (syswatch_collector_lost_total)")["data"]["result"]
        assert len(lost) == 2
    finally:
        prom.stop()


def test_a_node_that_joins_later_shows_up_without_a_restart(fleet):
    """A third node (its bridge fed by a stand-in publisher) appears in the running API's views."""
    api = fleet["api"]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(endpoint, host="late-node")
    bridge = BridgeProcess(fleet["tmp"], endpoint, fleet["nats"].url)
    try:
        def seen():
            pub.status()
            return "late-node" in api.get("/stats").json()["hosts"]
        wait_for(seen, 30, 0.2, "the new node in /stats")
        pub.events([event(pid=31337, count=7)])
        wait_for(lambda: api.get("/events?host=late-node&pid=31337").json()["events"], 30, 0.2, "its event")
    finally:
        bridge.stop()
        pub.close()


def test_hostile_messages_in_the_subjects_are_refused_counted_and_change_nothing(fleet):
    api, nats = fleet["api"], fleet["nats"]
    before = api.get("/stats").json()
    good_status = json.dumps({"v": 2, "host": HOSTS[0], "ts_ns": 1, "mode": "events", "probe": "tracepoint",
                              "syscalls": ["write"], "excluded_pids": [], "events_total": 10**12,
                              "lost_total": 0, "dropped_total": 0, "malformed_total": 0, "uptime_s": 1}).encode()
    huge_event = {"ts_ns": 1, "pid": 1, "tid": 1, "uid": 0, "comm": "x", "syscall": "write", "fd": 1, "count": 1,
                  "ret": 1, "lat_ns": 1, "cgroup_id": 1, "container_id": "", "container_name": ""}
    hostile = [
        ("syswatch.fleet-b.status", b"\xff\xfe not json"),
        ("syswatch.fleet-b.syscall.write", b'{"v":1,"host":"fleet-b","events":[]}'),
        ("syswatch.fleet-b.status", good_status),                  # fleet-a's payload on fleet-b's subject
        ("syswatch.evil.syscall.write", json.dumps({"v": 2, "host": "evil", "events": [
            {**huge_event, "pid": -1}]}).encode()),               # out of range
        ("syswatch.fleet-b.syscall.write", json.dumps({"v": 2, "host": "fleet-b", "events": [
            {**huge_event, "comm": "c" * 10_000}]}).encode()),    # oversized string
        ("syswatch.fleet-b.syscall.write", b'{"v":2,"host":"fleet-b","events":[' + b"1," * 4_500_000 + b"1]}"),
        ("other.subject", b"{}"),                                  # not in the stream: NATS refuses, never stored
    ]
    stored = publish_raw(nats.url, hostile[:-1])
    assert len(stored) == len(hostile) - 1
    n = len(stored)

    def refused():
        return api.get("/stats").json()["api"]["malformed_messages"] - before["api"]["malformed_messages"]
    wait_for(lambda: refused() >= n, 30, 0.2, f"{n} refusals")
    after = api.get("/stats").json()
    assert refused() == n, after["api"]
    assert "evil" not in after["hosts"] and sorted(after["hosts"]) == sorted(before["hosts"]), "no host made up"
    for key in ("totals",):
        assert after[key] == before[key], "no total changed"
    for entry in after["collectors"]:
        assert entry["status"] is None or entry["status"]["events_total"] < 10**12, "a status was replaced"
    assert requests.get(api.url("/healthz"), timeout=5).status_code == 200
