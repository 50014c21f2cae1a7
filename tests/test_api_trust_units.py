"""Issue 29 in process: the API's trust boundaries against hostile collectors and slow clients, through
the real ingest code (StreamSubscriber.handle with the endpoint each message came from) and the real
WSGI app. The same attacks over real sockets, beside real collectors: tests/test_api_hostile_collectors.py."""
from __future__ import annotations

import json
import threading
import time

import pytest

from harness.api import ApiInProcess, event
from harness.procs import wait_for
from syswatch.api import aggregates, sse
from syswatch.api.hub import TooManyFromAddress, TooManyStreams
from syswatch.shared import protocol
from syswatch.shared.selection import Selection

pytestmark = pytest.mark.unit

REAL, EVIL, LATE = "tcp://10.0.0.1:5556", "tcp://10.6.6.6:5556", "tcp://10.0.0.3:5556"
STATS_LIMIT = 200_000       # the documented bounds of one /stats answer (docs/SECURITY.md)
STATS_HOST_LIMIT = 50_000   # /stats?host=


def status(host: str, **over) -> dict:
    s = {"host": host, "ts_ns": time.time_ns(), "mode": "events", "probe": "tracepoint",
         "syscalls": ["read", "write"], "excluded_pids": [1], "events_total": 10, "lost_total": 0,
         "dropped_total": 0, "malformed_total": 0, "uptime_s": 5.0}
    s.update(over)
    return s


def send(api, endpoint: str, topic: str, payload: dict) -> None:
    api.app.subscriber.handle(protocol.encode(topic, payload), endpoint)


def batch(host: str, n: int = 3, **over) -> dict:
    return {"host": host, "events": [event(syscall="read", **over) for _ in range(n)]}


@pytest.fixture
def api(tmp_path):
    return ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--collector", REAL, "--collector", EVIL,
                                  "--collector", LATE)


def stats(api) -> dict:
    r = api.get("/stats")
    assert r.status_code == 200
    return r.json()


def test_a_stolen_host_name_and_junk_hosts_change_nothing_for_the_real_host(api):
    send(api, REAL, "status", status("vm", events_total=3, uptime_s=5.0))
    send(api, REAL, "syscall.read", batch("vm", 3))
    before = stats(api)
    # the hostile endpoint: the real host's name with absurd numbers, then junk names of 255 characters
    send(api, EVIL, "status", status("vm", events_total=18 * 10**18, uptime_s=9.0))
    send(api, EVIL, "syscall.read", batch("vm", 50, ret=4096))
    for i in range(63):
        send(api, EVIL, "status", status(f"{i:03d}" + "j" * 252))
    after = stats(api)
    vm = next(c for c in after["collectors"] if c["host"] == "vm")
    assert vm["endpoint"] == REAL and vm["status"]["events_total"] == 3 and vm["events_received"] == 3
    assert after["totals"]["read"]["calls"] == before["totals"]["read"]["calls"] == 3
    assert after["api"]["events_not_received"] == 0
    # the hostile endpoint got one host slot, the first junk name; the rest was refused and counted
    assert after["hosts"] == ["000" + "j" * 252, "vm"]
    assert after["api"]["messages_refused"] == 2 + 62 and after["api"]["malformed_messages"] == 0
    assert "belongs to 'tcp://10.0.0.1:5556'" in (after["api"]["last_refused_reason"] or "") or \
        "already speaks for 1 host" in after["api"]["last_refused_reason"]
    # a collector added afterwards finds a slot
    send(api, LATE, "status", status("late"))
    assert "late" in stats(api)["hosts"]


def test_hosts_not_heard_from_expire_and_free_their_name(api):
    send(api, EVIL, "status", status("vm"))                 # the hostile one got there first
    send(api, REAL, "status", status("vm"))
    assert next(c for c in stats(api)["collectors"] if c["host"] == "vm")["endpoint"] == EVIL
    api.app.stats.tick(time.monotonic() + api.config.host_expiry + 1)   # nothing heard for the expiry
    s = stats(api)
    assert s["hosts"] == [] and s["api"]["hosts_expired"] == 1
    send(api, REAL, "status", status("vm"))                 # the name is free again
    assert next(c for c in stats(api)["collectors"] if c["host"] == "vm")["endpoint"] == REAL


def test_counters_that_cannot_be_true_are_refused_not_shown(api):
    send(api, REAL, "status", status("vm", events_total=1000, uptime_s=100.0))
    send(api, REAL, "status", status("vm", events_total=10, uptime_s=101.0))       # backwards, no restart
    send(api, REAL, "status", status("vm", events_total=2**63, uptime_s=102.0))    # past what a host makes
    send(api, REAL, "syscall.read", batch("vm", 1, ret=2**40, count=2**40))         # one read moving 1 TiB
    send(api, REAL, "counts", {"host": "vm", "ts_ns": 1, "interval_ns": 10**9, "rows": [
        {"pid": 1, "comm": "x", "container_id": "", "container_name": "", "syscall": "read", "calls": 1,
         "bytes": 0, "errors": 5, "lat_ns_sum": 0}]})
    s = stats(api)
    vm = next(c for c in s["collectors"] if c["host"] == "vm")
    assert vm["status"]["events_total"] == 1000 and s["totals"]["read"]["calls"] == 0
    assert s["api"]["implausible_messages"] == 4
    send(api, REAL, "status", status("vm", events_total=5, uptime_s=1.0))           # a restart is fine
    assert next(c for c in stats(api)["collectors"] if c["host"] == "vm")["status"]["events_total"] == 5


def test_oversized_but_valid_statuses_keep_stats_and_metrics_small(tmp_path):
    endpoints = [f"tcp://10.1.0.{i}:5556" for i in range(aggregates.MAX_HOSTS)]
    api = ApiInProcess.from_args(tmp_path / "ips.sqlite3", *[a for e in endpoints for a in ("--collector", e)])
    huge = {"excluded_pids": list(range(protocol.MAX_EXCLUDED_PIDS)), "stale_cpus": list(range(protocol.MAX_CPUS)),
            "syscalls": list(protocol.SYSCALLS), "bpftrace": "v" * 32}
    for i, endpoint in enumerate(endpoints):
        host = f"{i:03d}" + "h" * 252
        send(api, endpoint, "status", status(host, **huge))
        for sc in protocol.SYSCALLS:
            send(api, endpoint, f"syscall.{sc}", {"host": host, "events": [
                {**event(syscall=sc, comm="c" * 64, container_id="0123456789ab", container_name="n" * 255,
                         ret=-n, lat_ns=2**n, pid=n), "syscall": sc} for n in range(1, 60)]})
    body = api.get("/stats").content
    s = json.loads(body)
    assert len(s["hosts"]) == aggregates.MAX_HOSTS
    st = s["collectors"][0]["status"]
    assert st["excluded_pids"] == list(range(16)) and st["excluded_pids_count"] == protocol.MAX_EXCLUDED_PIDS
    assert len(st["stale_cpus"]) == 16 and st["stale_cpus_count"] == protocol.MAX_CPUS
    assert len(body) < STATS_LIMIT, len(body)
    one = api.get("/stats", params={"host": s["hosts"][0]}).content
    assert len(one) < STATS_HOST_LIMIT, len(one)


class FakeChannel:
    """What api/peer.py reads of waitress's connection object (the bytes still to send; how to close), and
    waitress's worker: ``serve`` pulls the body in a thread as waitress does, adding what it writes to
    the bytes waiting; a test plays the client by taking bytes off (``take``) or not."""

    def __init__(self):
        self.total_outbufs_len = 0
        self.will_close = False
        self.lock = threading.Lock()
        self.written = 0
        self.thread: threading.Thread | None = None

    def check_client_disconnected(self) -> bool:
        return False

    def take(self, n: int) -> None:
        with self.lock:
            self.total_outbufs_len = max(0, self.total_outbufs_len - n)

    def serve(self, body) -> None:
        def run():
            for chunk in body:
                with self.lock:
                    self.total_outbufs_len += len(chunk)
                    self.written += len(chunk)
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()


def open_stream(api, channel: FakeChannel | None = None, remote: str = "127.0.0.1", query: str = ""):
    client = api.client
    environ = client.environ("GET", "/events/stream" + query)
    environ["REMOTE_ADDR"] = remote
    if channel is not None:
        environ["waitress.client_disconnected"] = channel.check_client_disconnected
    seen = {}
    body = api.app.wsgi(environ, lambda status, headers, exc_info=None: seen.update(status=status))
    return seen, body


def test_streams_are_capped_per_address_and_refusals_counted(tmp_path):
    api = ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--max-streams", "4", "--max-streams-per-address", "2",
                                 "--threads", "8")
    bodies = [open_stream(api, remote="10.9.9.9")[1] for _ in range(2)]
    seen, refused = open_stream(api, remote="10.9.9.9")
    assert seen["status"].startswith("429") and b"from your address" in b"".join(refused)
    bodies += [open_stream(api, remote=f"10.9.9.{i}")[1] for i in (1, 2)]
    seen, full = open_stream(api, remote="10.9.9.3")
    assert seen["status"].startswith("503") and b"--max-streams" in b"".join(full)
    s = stats(api)
    assert s["api"]["sse_streams_refused"] == 2 and s["api"]["event_streams"] == 4
    assert s["api"]["event_streams_max"] == 4 and s["api"]["event_streams_per_address"] == 2
    for b in bodies:
        b.close()
    assert api.app.hub.count() == 0
    with pytest.raises(TooManyFromAddress):
        hub = api.app.hub
        hub.per_address = 0
        hub.open(Selection(), address="x")
    assert issubclass(TooManyFromAddress, TooManyStreams)


def test_a_client_that_takes_nothing_is_closed_and_its_slot_freed(tmp_path, monkeypatch):
    monkeypatch.setattr(sse, "POLL_S", 0.01)
    api = ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--sse-stall-timeout", "0.3", "--sse-heartbeat", "0.05")
    channel = FakeChannel()
    _, body = open_stream(api, channel)
    started = time.monotonic()
    channel.serve(body)
    wait_for(lambda: api.app.hub.count() == 1, 5, 0.01, "the stream to open")
    for _ in range(20):                               # events keep coming; the client reads nothing
        api.app.hub.publish([event() for _ in range(100)])
        time.sleep(0.01)
    assert channel.thread is not None
    channel.thread.join(10)                           # the body ends by itself after the stall timeout
    body.close()
    assert not channel.thread.is_alive() and time.monotonic() - started >= 0.3
    s = stats(api)
    assert channel.will_close and api.app.hub.count() == 0 and s["api"]["sse_streams_stalled"] == 1
    assert channel.written <= sse.MAX_UNSENT + 400_000    # it stopped writing once the client was behind


def test_a_slow_client_that_keeps_reading_is_not_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(sse, "POLL_S", 0.01)
    api = ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--sse-stall-timeout", "0.2", "--sse-heartbeat", "0.05",
                                 "--stream-queue", "1000")
    channel = FakeChannel()
    _, body = open_stream(api, channel)
    channel.serve(body)
    wait_for(lambda: api.app.hub.count() == 1, 5, 0.01, "the stream to open")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:                # far more offered than taken: a slow reader
        api.app.hub.publish([event() for _ in range(50)])
        channel.take(2_000)
        time.sleep(0.005)
    assert api.app.hub.count() == 1 and not channel.will_close
    api.app.hub.end_all()
    assert channel.thread is not None
    channel.thread.join(10)
    body.close()
    s = stats(api)
    assert s["api"]["sse_streams_stalled"] == 0 and s["api"]["sse_dropped_events"] > 0
    assert channel.written > sse.MAX_UNSENT


def test_a_write_is_bounded_whatever_is_queued(tmp_path):
    api = ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--stream-queue", "20000")
    channel = FakeChannel()
    _, body = open_stream(api, channel)
    chunks = iter(body)
    next(chunks)
    for _ in range(10):
        api.app.hub.publish([event() for _ in range(1000)])
    written = [next(chunks) for _ in range(10)]
    body.close()
    assert max(map(len, written)) < 400_000                  # far below waitress's 1 MiB write bound
    assert sum(c.count(b"\ndata: ") for c in written) == 10_000


def test_a_client_that_is_behind_keeps_only_the_newest_events_queued(tmp_path, monkeypatch):
    monkeypatch.setattr(sse, "POLL_S", 0.01)
    api = ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--sse-stall-timeout", "60", "--stream-queue", "20000")
    channel = FakeChannel()
    _, body = open_stream(api, channel)
    channel.total_outbufs_len = sse.MAX_UNSENT + 1          # behind from the start: nothing is written
    channel.serve(body)
    wait_for(lambda: api.app.hub.count() == 1, 5, 0.01, "the stream to open")
    (client,) = api.app.hub._clients
    for _ in range(30):
        api.app.hub.publish([event() for _ in range(500)])
        time.sleep(0.005)
    wait_for(lambda: client.queued <= sse.TAKE_MOST + 500, 5, 0.01, f"the queue trimmed (holds {client.queued})")
    api.app.hub.end_all()
    assert channel.thread is not None
    channel.thread.join(10)
    body.close()
    assert stats(api)["api"]["sse_dropped_events"] >= 15_000 - sse.TAKE_MOST - 500
