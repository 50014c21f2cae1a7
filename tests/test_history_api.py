"""GET /history and the history store through the API: in process (make_app, the ingest code, the recorder's
rounds) for the answers, errors and settings; as a process for what needs one: a full disk (a real small
tmpfs), a graceful restart, start-up errors."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from harness.api import ApiInProcess, ApiProcess, Feed, Publisher, connect, event, metric
from harness.procs import wait_for
from syswatch.api.history_store import StoreUnusable, default_path
from tests.conftest import is_root, require

NOW = int(time.time()) // 60 * 60
T0 = NOW - 600                   # ten minutes ago, on a whole minute: every second there is over


def feed_minutes(api: ApiInProcess) -> dict:
    """Events of two containers and the host in two past minutes, through the API's ingest code; then one
    round of the recorder writes them. Returns the calls fed per (minute, container id)."""
    feed = Feed(api)
    fed: dict = {}
    for m, cid, n, ret in ((0, "aaaaaaaaaaaa", 30, 100), (0, "", 5, -9), (1, "bbbbbbbbbbbb", 12, 7),
                           (1, "aaaaaaaaaaaa", 3, 1)):
        feed.events([event(pid=100 + m, comm=f"w{cid[:1]}", container_id=cid, container_name=f"n-{cid[:1]}" if cid
                           else "", ts_ns=(T0 + 60 * m + 5 + i % 50) * 10**9, ret=ret, count=abs(ret))
                     for i in range(n)])
        fed[(m, cid)] = fed.get((m, cid), 0) + n
    api.app.history._round()
    return fed


@pytest.fixture
def api(tmp_path):
    srv = ApiInProcess.from_args(tmp_path / "ips.sqlite3")
    yield srv
    srv.app.close()


@pytest.mark.unit
def test_history_answers_per_minute_and_container(api):
    fed = feed_minutes(api)
    r = api.get("/history", params={"from": T0, "to": T0 + 120, "group": "container", "step": "1m"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json"), r.text
    a = r.json()
    assert (a["from"], a["step_s"], a["times"]) == (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0)), 60,
                                                    [T0, T0 + 60])
    series = {s["container_id"]: s["calls"] for s in a["series"]}
    for (m, cid), n in fed.items():
        assert series[cid][m] == n
    assert a["totals"] == {"calls": 50, "bytes": 30 * 100 + 12 * 7 + 3, "errors": 5,
                           "lat_ns_sum": 50 * 1500}
    rows = {r["key"]: r for r in a["rows"]}
    assert rows["aaaaaaaaaaaa"]["container_name"] == "n-a" and rows["aaaaaaaaaaaa"]["calls"] == 33
    # relative to now, reaching back to T0 (set when the module was imported: in a full run that can be
    # half an hour before this test)
    back = f"-{(int(time.time()) - T0) // 60 + 5}m"
    by_proc = api.get("/history", params={"from": back, "group": "process", "container": "n-b"}).json()
    assert [(r["pid"], r["comm"], r["calls"]) for r in by_proc["rows"]] == [(101, "wb", 12)]


@pytest.mark.unit
def test_history_groups_by_the_file_the_events_name(api):
    """Issue 22 -> 26's hand-off: the decoder keeps path and file_type, so group=file has them."""
    feed = Feed(api)
    for path, n in (("/var/log/syslog", 7), ("pipe:[42]", 2)):
        feed.events([{**event(pid=7, comm="w", ts_ns=(T0 + 5 + i) * 10**9, ret=10, count=10), "path": path,
                      "file_type": "reg" if path.startswith("/") else "fifo", "ino": 3, "dev": 2049}
                     for i in range(n)])
    api.app.history._round()
    rows = api.get("/history", params={"from": T0, "to": T0 + 60, "group": "file"}).json()["rows"]
    assert {(r["path"], r["file_type"], r["calls"]) for r in rows} == {("/var/log/syslog", "reg", 7),
                                                                      ("pipe:[42]", "fifo", 2)}


@pytest.mark.unit
def test_csv_has_a_line_per_step_and_key(api):
    feed_minutes(api)
    r = api.get("/history", params={"from": T0, "to": T0 + 120, "group": "container", "step": "60",
                                    "format": "csv"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/csv; charset=utf-8"
    lines = r.text.splitlines()
    assert lines[0] == "time,host,key,container_id,container_name,calls,bytes,errors,lat_ns_sum"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0))
    assert f"{stamp},testhost,aaaaaaaaaaaa,aaaaaaaaaaaa,n-a,30,3000,0,45000" in lines
    assert len(lines) == 1 + 4


@pytest.mark.unit
@pytest.mark.parametrize("query,fragment", [
    ("from=yesterday", "'from' = \"yesterday\" is not a time"),
    ("from=-400d", "at most 31 days"),
    ("from=-1d&step=1", "points; at most 1440"),
    ("to=-1h&from=-30m", "the range is empty"),
    ("group=user", "'group'"),
    ("limit=-1", "'limit'"),
    ("from=-1h&from=-2h", "given 2 times"),
    ("color=red", "unknown query parameter"),
])
def test_malformed_and_huge_ranges_are_400_json(api, query, fragment):
    r = api.get("/history?" + query)
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json")
    assert fragment in r.json()["error"], r.json()


@pytest.mark.unit
def test_stats_metrics_and_the_documents_show_the_store(api):
    feed_minutes(api)
    api.app.history._refresh_status()
    h = api.get("/stats").json()["history"]
    assert h["state"] == "recording" and h["path"] == default_path(api.config.db)
    assert 0 < h["disk_bytes"] <= h["max_bytes"] == 1024 << 20
    assert h["events_recorded"] == 50 and h["rows_written"] > 0
    text = api.get("/metrics").text
    assert metric(text, "syswatch_history_disk_bytes") == h["disk_bytes"]
    assert metric(text, "syswatch_history_recording") == 1
    assert metric(text, "syswatch_history_events_recorded_total") == 50
    assert metric(text, "syswatch_history_rows", step="1s") == h["tiers"][0]["rows"]
    doc = api.get("/openapi.json").json()
    assert {p["name"] for p in doc["paths"]["/history"]["get"]["parameters"]} >= {"from", "to", "group", "host",
                                                                                 "container", "format"}
    assert "/history" in api.get("/apis").json()["available_apis"]


@pytest.mark.unit
def test_history_off_and_its_path(tmp_path):
    off = ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--history-max-mb", "0")
    r = off.get("/history")
    assert r.status_code == 404 and "--history-max-mb 0" in r.json()["error"]
    assert off.get("/stats").json()["history"] is None and not os.path.exists(default_path(off.config.db))
    elsewhere = tmp_path / "h" / "store.sqlite3"
    elsewhere.parent.mkdir()
    on = ApiInProcess.from_args(tmp_path / "ips.sqlite3", env={"SYSWATCH_HISTORY_DB": str(elsewhere),
                                                                "SYSWATCH_HISTORY_MAX_MB": "3"})
    assert on.app.history.store.path == str(elsewhere) and on.app.history.store.max_bytes == 3 << 20
    on.app.close()
    with pytest.raises(StoreUnusable, match="is a directory"):
        ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--history-db", str(tmp_path))


def test_a_bad_history_file_is_a_start_up_error(tmp_path):
    other = tmp_path / "notes.sqlite3"
    subprocess.run(["sqlite3", str(other), "CREATE TABLE notes (x);"], check=True)
    srv = ApiProcess(tmp_path / "ips.sqlite3", "--history-db", str(other)).start(wait=False)
    try:
        assert srv.wait_exit(30) == 2, srv.output
    finally:
        srv.stop()
    assert "is not a syswatch history database" in srv.output and "--history-db" in srv.output
    assert "Traceback" not in srv.output


def test_sigterm_writes_the_open_seconds(tmp_path):
    """A graceful stop writes what the recorder holds, the current second included: a restart loses nothing."""
    srv = ApiProcess(tmp_path / "ips.sqlite3")
    with srv:
        pub = Publisher(srv.collector)
        connect(srv, pub)
        pub.events([event(pid=7, comm="last", ts_ns=time.time_ns()) for _ in range(40)])
        wait_for(lambda: srv.get("/stats").json()["events_received"] >= 40, 10, 0.05, "the API to get the events")
        assert srv.stop(signal.SIGTERM) == 0
        srv.start()
        a = srv.get("/history", params={"from": "-2m", "to": int(time.time()) + 5, "group": "process"}).json()
        assert [(r["comm"], r["calls"]) for r in a["rows"]] == [("last", 40)], a
        pub.close()


def test_full_disk_is_a_status_and_recording_resumes(tmp_path):
    """The history store on a 2 MiB tmpfs filled to the last byte: /stats and /metrics say so, the API goes on
    answering, and once space is back the seconds kept in memory are written: nothing fed is missing."""
    require(is_root(), "run as root (the test mounts a small tmpfs): sudo scripts/test.sh")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "syswatch-test-tmpfs", str(mnt)], check=True)
    srv = ApiProcess(tmp_path / "ips.sqlite3", "--history-db", str(mnt / "history.sqlite3"))
    pub = None
    fed = 0

    def send(n: int) -> None:
        nonlocal fed
        pub.events([event(pid=1000 + i % 300, comm=f"c{i % 300}", ts_ns=time.time_ns()) for i in range(n)])
        fed += n

    def history() -> dict:
        return srv.get("/stats").json()["history"]
    try:
        srv.start()
        pub = Publisher(srv.collector)
        connect(srv, pub)
        send(200)
        wait_for(lambda: history()["complete_until"] > time.time() - 3 and history()["rows_written"], 15, 0.1,
                 "the first seconds to be written")
        with open(mnt / "filler", "wb", buffering=0) as f:           # fill the file system to the last byte
            for chunk in (65536, 1):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError:
                    pass
        for _ in range(6):                                           # new processes: new names, new pages
            send(300)
            time.sleep(0.5)
        last_sent = time.time()
        h = wait_for(lambda: (h := history())["state"] == "disk full" and h, 20, 0.2, "the disk full status")
        assert "disk full" in h["error"] and "resumes by itself" in h["error"] and h["intervals_pending"] > 0
        assert metric(srv.get("/metrics").text, "syswatch_history_recording") == 0
        assert srv.get("/healthz").status_code == 200 and srv.get("/events?limit=5").status_code == 200
        assert srv.get("/history", params={"from": "-5m"}).status_code == 200   # what is written still answers
        os.unlink(mnt / "filler")
        wait_for(lambda: history()["state"] == "recording" and history()["intervals_pending"] == 0, 20, 0.2,
                 "recording to resume")
        wait_for(lambda: history()["complete_until"] > last_sent, 15, 0.2, "the last second fed to be written")
        a = srv.get("/history", params={"from": "-5m", "to": int(time.time()) + 5, "group": "host"}).json()
        assert a["totals"]["calls"] == fed, (a["totals"], fed, history())
        assert history()["disk_bytes"] <= 2 << 20
    finally:
        if pub is not None:
            pub.close()
        srv.stop()
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)])
    assert not os.path.ismount(mnt)


def test_a_nats_backlog_is_recorded_at_its_own_time(tmp_path):
    """Events published to JetStream while the API was down arrive after their seconds were written (the
    store went on to 'now' before the API stopped): they are recorded in their own minute, and counted late."""
    from harness.nats import NatsServer, publish_raw
    from syswatch.shared import jetstream, natsclient, protocol
    from tests.conftest import require_nats_server
    require_nats_server()
    with NatsServer(tmp_path) as nats:
        conn = natsclient.Connection(natsclient.Options(servers=(nats.url,))).connect()
        jetstream.ensure_stream(conn, jetstream.DEFAULT_STREAM, jetstream.StreamLimits())
        conn.close()
        srv = ApiProcess(tmp_path / "ips.sqlite3", "--nats", nats.url)
        with srv:
            started = time.time()
            wait_for(lambda: srv.get("/stats").json()["history"]["complete_until"] > started, 15, 0.2,
                     "the store to be written up to now")
            assert srv.stop(signal.SIGTERM) == 0
            minute = int(started) // 60 * 60 - 120                  # two minutes before the API stopped
            batch = [event(pid=77, comm="backlog", ts_ns=(minute + 10 + i % 40) * 10**9, count=8) for i in range(90)]
            frames = protocol.encode(protocol.topic_for("write"), {"host": "node-a", "events": batch})
            publish_raw(nats.url, [(jetstream.subject("node-a", frames[0].decode()), frames[1])])
            srv.start()
            wait_for(lambda: srv.get("/stats").json()["history"]["late_events"] == 90, 30, 0.2,
                     "the backlog to reach the recorder")
            wait_for(lambda: srv.get("/stats").json()["history"]["intervals_pending"] == 0, 15, 0.2, "it written")
            wait_for(lambda: srv.get("/history", params={"from": minute, "to": minute + 60}).json()["totals"]["calls"]
                     == 90, 15, 0.2, "the backlog in its own minute")
            a = srv.get("/history", params={"from": minute - 60, "to": minute + 180, "group": "process",
                                            "step": 60}).json()
            assert [(s["comm"], s["calls"]) for s in a["series"]] == [("backlog", [0, 90, 0, 0])], a["series"]
