"""The history store, recorder and query in-process, on real SQLite files: exact totals per minute and
container, the tiers agreeing, the size limit holding while old tiers are trimmed, restarts, refusals,
and every malformed or huge range a 400 that names it. The recorder runs on a clock the test drives."""
from __future__ import annotations

import fcntl
import os
import random
import sqlite3
from collections import Counter, defaultdict

import pytest

from syswatch.api import history_query as hq
from syswatch.api.history_recorder import GRACE_S, Recorder
from syswatch.api.history_store import OTHER, HistoryStore, StoreUnusable, Tier, bound
from syswatch.api.validation import BadRequest

pytestmark = pytest.mark.unit

T0 = 1_765_000_800            # a whole minute (2025-12-06T05:60:00Z)
CIDS = ("aaaaaaaaaaaa", "bbbbbbbbbbbb", "")


def event(t: float, pid: int, comm: str, cid: str = "", syscall: str = "write", ret: int = 100,
          lat: int = 1000, **extra) -> dict:
    return {"ts_ns": int(t * 1e9), "pid": pid, "tid": pid, "uid": 0, "comm": comm, "syscall": syscall, "fd": 3,
            "count": max(ret, 1), "ret": ret, "lat_ns": lat, "cgroup_id": 1, "container_id": cid,
            "container_name": f"name-{cid}" if cid else "", **extra}


class Clocked:
    """A store and a recorder on a clock the test moves; ``run`` feeds events second by second."""

    def __init__(self, path, max_bytes: int = 64 << 20, tiers=None, start: float = T0):
        self.path = str(path)
        self.max_bytes, self.tiers = max_bytes, tiers
        self.now = start
        self.open()

    def open(self) -> None:
        kw = {"tiers": self.tiers} if self.tiers else {}
        self.store = HistoryStore(self.path, self.max_bytes, **kw)
        self.rec = Recorder(self.store, clock=lambda: self.now)

    def step(self, events: list, host: str = "h1") -> None:
        if events:
            self.rec.offer_events(host, events)
        self.rec._round()

    def settle(self, to: float) -> None:
        """Move the clock to ``to`` and run rounds until every closed second is written and rolled up."""
        self.now = to
        for _ in range(50):
            self.rec._maintain_at = 0
            self.rec._round()
        self.rec._refresh_status()

    def query(self, **params) -> dict:
        q = hq.parse({k: [str(v)] for k, v in params.items()}, self.now)
        return hq.answer(self.store, q)

    def crash(self) -> None:
        """What kill -9 leaves: the file as committed; nothing is flushed or closed properly."""
        self.store.conn.close()
        self.store._lock_file.close()

    def close(self) -> None:
        self.rec._round(final=True)
        self.store.close()


def test_bound_keeps_the_top_n_and_every_total():
    entries = {("c1", pid, "p"): [pid, 10 * pid, 0, 1] for pid in range(1, 11)}
    entries[("c2", 99, "q")] = [50, 1, 1, 1]
    entries[("c3", OTHER, 0)] = [7, 7, 7, 7]                      # a remainder already there
    out = bound(entries, 3, {"c1"})
    real = {k for k in out if k[1] != OTHER}
    assert real == {("c2", 99, "q"), ("c1", 10, "p"), ("c1", 9, "p")}
    assert out[("c1", OTHER, 0)][0] == sum(range(1, 9))            # c1 keeps its own remainder
    assert out[(OTHER, OTHER, 0)] == [7, 7, 7, 7]                  # c3 is not a kept container
    for i in range(4):
        assert sum(v[i] for v in out.values()) == sum(v[i] for v in entries.values())


def test_each_minute_and_container_is_exact(tmp_path):
    """Three minutes of events from two containers and the host, 150 processes (more than the top N),
    hitting errors too: per minute and per container /history gives exactly what was fed."""
    c = Clocked(tmp_path / "h.sqlite3")
    rnd = random.Random(7)
    want = defaultdict(Counter)                    # (minute, cid) -> calls, bytes, errors
    for s in range(180):
        c.now = T0 + s + 0.5
        batch = []
        for _ in range(rnd.randrange(20, 60)):
            cid = rnd.choice(CIDS)
            ret = rnd.choice((4096, 512, 0, -9))
            batch.append(event(T0 + s + rnd.random() * 0.99, rnd.randrange(150), f"p{rnd.randrange(5)}", cid,
                               rnd.choice(("read", "write")), ret, path=f"/data/{rnd.randrange(300)}",
                               file_type="reg"))
            w = want[(s // 60, cid)]
            w["calls"] += 1
            w["bytes"] += max(ret, 0)
            w["errors"] += ret < 0
        c.step(batch)
    c.settle(T0 + 180 + GRACE_S + 1)
    a = c.query(**{"from": T0, "to": T0 + 180, "group": "container", "step": 60})
    assert a["step_s"] == 60 and a["times"] == [T0, T0 + 60, T0 + 120]
    got = {s["container_id"]: s for s in a["series"]}
    for (minute, cid), w in want.items():
        for field in ("calls", "bytes", "errors"):
            assert got[cid][field][minute] == w[field], (minute, cid, field)
    # a container's processes (top N plus its remainder) add up to the container, also by file and syscall
    for cid in CIDS[:2]:
        total = sum(w["calls"] for (m, k), w in want.items() if k == cid)
        for group in ("process", "file", "syscall"):
            b = c.query(**{"from": T0, "to": T0 + 180, "group": group, "container": cid[:5], "limit": 1000})
            assert b["totals"]["calls"] == total and sum(r["calls"] for r in b["rows"]) == total, group
    proc = c.query(**{"from": T0, "to": T0 + 180, "group": "process", "limit": 5})
    assert proc["rows"][-1]["key"] == "(other)" and len(proc["rows"]) == 6
    assert proc["totals"]["calls"] == sum(w["calls"] for w in want.values())
    c.close()


def test_tiers_agree_and_old_ranges_come_from_coarser_tiers(tmp_path):
    tiers = (Tier("1s", 1, 600), Tier("10s", 10, 3600), Tier("1m", 60, 86400))
    c = Clocked(tmp_path / "h.sqlite3", tiers=tiers)
    fed = 0
    for s in range(0, 1200):
        c.now = T0 + s + 0.5
        c.step([event(T0 + s + 0.1, 100 + s % 7, "w", CIDS[s % 3], ret=10)] * 3)
        fed += 3
    c.settle(T0 + 1200 + GRACE_S + 1)
    fine = c.query(**{"from": T0 + 900, "to": T0 + 1200, "group": "syscall", "step": 1})
    coarse = c.query(**{"from": T0 + 900, "to": T0 + 1200, "group": "syscall", "step": 60})
    assert fine["intervals"][0]["step_s"] == 1 and coarse["intervals"][0]["step_s"] == 60
    assert fine["totals"] == coarse["totals"] and fine["totals"]["calls"] == 900
    # the 1 s tier keeps 10 minutes: the first 20 minutes now come from the 10 s and 1 min tiers
    assert c.store.lo(tiers[0]) >= T0 + 1200 - 600 - 60
    whole = c.query(**{"from": T0, "to": T0 + 1200, "group": "container", "step": 60})
    assert whole["totals"]["calls"] == fed
    assert {i["step_s"] for i in whole["intervals"]} <= {60}
    c.close()


def test_the_size_limit_holds_while_old_tiers_are_trimmed_and_totals_add_up(tmp_path):
    """A 1 MB store fed an hour of 80 distinct processes and files per second: the file, its WAL and
    index never exceed 1 MB; the finest tiers lose their oldest rows before their retention; and every
    minute still answered gives exactly what was fed in it."""
    limit = 1 << 20
    tiers = (Tier("1s", 1, 3600), Tier("10s", 10, 86400), Tier("1m", 60, 30 * 86400))
    c = Clocked(tmp_path / "h.sqlite3", max_bytes=limit, tiers=tiers)
    per_minute = Counter()
    peak = 0
    rnd = random.Random(3)
    for s in range(3600):
        c.now = T0 + s + 0.5
        batch = [event(T0 + s + 0.2, rnd.randrange(2000), f"c{rnd.randrange(99)}", rnd.choice(CIDS), ret=7,
                       path=f"/f/{rnd.randrange(5000)}") for _ in range(80)]
        c.step(batch)
        per_minute[s // 60] += len(batch)
        if s % 5 == 0:                          # maintain() once a second would be as often as the API does
            c.rec._maintain_at = 0
            c.rec._round()
        if s % 30 == 0:
            peak = max(peak, c.store.disk_bytes())
    c.settle(T0 + 3600 + GRACE_S + 1)
    peak = max(peak, c.store.disk_bytes())
    assert peak <= limit, f"the store took {peak} bytes on disk, over its limit of {limit}"
    assert c.store.trims > 0
    lo1s = c.store.lo(tiers[0])
    assert lo1s > T0 + 600, f"the 1 s tier was not trimmed to fit (kept from {lo1s - T0} s)"
    answer = c.query(**{"from": T0, "to": T0 + 3600, "group": "container", "step": 60})
    kept_from = (hq.datetime.fromisoformat(answer["intervals"][0]["from"].replace("Z", "+00:00")).timestamp())
    first_minute = int(kept_from - T0) // 60
    assert first_minute < 50, f"only the last {60 - first_minute} minutes are left of the hour"
    total = [sum(s["calls"][m] for s in answer["series"]) for m in range(60)]
    for m in range(first_minute, 60):
        assert total[m] == per_minute[m], (m, total[m], per_minute[m])
    assert answer["totals"]["calls"] == sum(per_minute[m] for m in range(first_minute, 60))
    c.close()


def test_a_crash_keeps_every_written_second_and_a_restart_goes_on(tmp_path):
    c = Clocked(tmp_path / "h.sqlite3")
    for s in range(30):
        c.now = T0 + s + 0.5
        c.step([event(T0 + s + 0.1, 5, "a", CIDS[0], ret=11)])
    c.settle(T0 + 30 + GRACE_S)
    written = c.store.hi(c.store.tiers[0])
    assert written == T0 + 30
    for s in range(30, 32):                      # in flight: not written when the process dies
        c.now = T0 + s + 0.5
        c.step([event(T0 + s + 0.1, 5, "a", CIDS[0], ret=11)])
    c.crash()
    c.now = T0 + 40
    c.open()
    assert c.store.hi(c.store.tiers[0]) == written
    a = c.query(**{"from": T0, "to": T0 + 30, "group": "process"})
    assert a["totals"] == {"calls": 30, "bytes": 330, "errors": 0, "lat_ns_sum": 30_000}
    c.step([event(T0 + 40.2, 5, "a", CIDS[0], ret=11)])
    c.settle(T0 + 50)
    assert c.query(**{"from": T0, "to": T0 + 60, "group": "process"})["totals"]["calls"] == 31
    c.close()


def test_late_and_skewed_events_are_kept_and_counted(tmp_path):
    c = Clocked(tmp_path / "h.sqlite3")
    c.now = T0 + 10.5
    c.step([event(T0 + 10.1, 1, "x")])
    c.settle(T0 + 20)
    c.step([event(T0 + 10.2, 1, "x"), event(T0 + 3600, 1, "x")])    # 10 s late; an hour ahead
    c.settle(T0 + 30)
    st = c.rec.status()
    assert (st["late_events"], st["clock_skewed_events"]) == (1, 1)
    late = c.query(**{"from": T0 + 10, "to": T0 + 11, "group": "host"})         # in its own second
    assert late["totals"]["calls"] == 2
    assert c.query(**{"from": T0, "to": T0 + 30, "group": "host"})["totals"]["calls"] == 3
    c.close()


def test_late_events_go_to_their_own_time_in_every_tier(tmp_path):
    """Events that come after their second was written (a NATS consumer catching up after the API was down)
    are added where they belong, in every tier holding that time; one older than all of them is counted."""
    tiers = (Tier("1s", 1, 600), Tier("10s", 10, 3600), Tier("1m", 60, 86400))
    c = Clocked(tmp_path / "h.sqlite3", tiers=tiers)
    for s in range(1200):
        c.now = T0 + s + 0.5
        c.step([event(T0 + s + 0.1, 1, "on-time")])
    c.settle(T0 + 1200 + GRACE_S + 1)
    assert c.store.lo(tiers[0]) > T0 + 35 and c.store.hi(tiers[1]) > T0 + 1155   # 1 s tier trimmed, 10 s rolled
    c.step([event(T0 + 35.5, 2, "late")] * 5 + [event(T0 + 1155.5, 2, "late")] * 7
           + [event(T0 - 40 * 86400, 2, "ancient")] * 3)
    c.settle(c.now + 5)
    st = c.rec.status()
    assert (st["late_events"], st["late_events_dropped"], st["late_events_misplaced"]) == (15, 3, 0)

    def tier_sum(tier: str, start: int, end: int) -> int:
        return c.store.conn.execute(f"SELECT sum(calls) FROM agg_{tier} WHERE dim=0 AND t>=? AND t<?",
                                    (start, end)).fetchone()[0] or 0
    assert tier_sum("10s", T0 + 30, T0 + 40) == 10 + 5 and tier_sum("1m", T0, T0 + 60) == 60 + 5
    assert tier_sum("1s", T0 + 1155, T0 + 1156) == 1 + 7
    assert tier_sum("10s", T0 + 1150, T0 + 1160) == 10 + 7 and tier_sum("1m", T0 + 1140, T0 + 1200) == 60 + 7
    whole = c.query(**{"from": T0, "to": T0 + 1200, "group": "process", "step": 60})
    assert {r["comm"]: r["calls"] for r in whole["rows"]} == {"on-time": 1200, "late": 12}
    c.close()


def test_counts_rows_are_recorded_like_events(tmp_path):
    c = Clocked(tmp_path / "h.sqlite3")
    c.now = T0 + 5
    rows = [{"pid": 7, "comm": "dd", "container_id": CIDS[1], "container_name": "db", "syscall": "read",
             "calls": 1000, "bytes": 4_096_000, "errors": 3, "lat_ns_sum": 99}]
    c.rec.offer_counts({"host": "h2", "ts_ns": (T0 + 2) * 10**9, "interval_ns": 10**9, "rows": rows})
    c.rec._round()
    c.settle(T0 + 10)
    a = c.query(**{"from": T0, "to": T0 + 10, "group": "container"})
    assert a["rows"] == [{"key": CIDS[1], "host": "h2", "container_id": CIDS[1], "container_name": "db",
                          "calls": 1000, "bytes": 4_096_000, "errors": 3, "lat_ns_sum": 99}]
    c.close()


def test_csv_lines_per_step_and_no_formula_cells(tmp_path):
    c = Clocked(tmp_path / "h.sqlite3")
    c.now = T0 + 1
    c.step([event(T0 + 0.5, 1, "=cmd|' /C calc'!A0", CIDS[0], ret=5)] * 2 + [event(T0 + 0.5, 2, "ok", ret=1)])
    c.settle(T0 + 10)
    text = hq.to_csv(c.query(**{"from": T0, "to": T0 + 10, "group": "process", "format": "csv", "step": 5}))
    lines = text.splitlines()
    assert lines[0] == "time,host,key,pid,comm,container_id,container_name,calls,bytes,errors,lat_ns_sum"
    assert lines[1].startswith("2025-12-06T06:00:00Z,h1,1 =cmd") and ",'=cmd|" in lines[1]
    assert lines[1].endswith(",2,10,0,2000") and len(lines) == 3
    c.close()


BAD = [
    ({"from": "yesterday"}, "'from'", "is not a time"),
    ({"from": "2026-12-06"}, "'from'", "lacks a date, a time or a UTC offset"),
    ({"from": "2026-12-06T03:10:00"}, "'from'", "UTC offset"),
    ({"from": "-15x"}, "'from'", "is not a duration"),
    ({"to": "1700000000000"}, "'to'", "outside the years 2000..2099"),
    ({"from": "-1h", "to": "-2h"}, "range is empty", "must be before"),
    ({"from": "-100d"}, "100.0 days", "at most 31 days"),
    ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "days", "shorter range"),
    ({"from": "-1d", "step": "1"}, "'step'", ""),
    ({"step": "5s561865s12442d761d"}, "'step'", "1 second to 31 days"),
    ({"step": "0"}, "'step'", "1 second to 31 days"),
    ({"from": "-1d", "step": "10"}, "gives 8640 points", "at least 60 s"),
    ({"group": "pid"}, "'group'", "process, container, syscall, file, host"),
    ({"limit": "0"}, "'limit'", "1..1000"),
    ({"limit": "100000"}, "'limit'", "1..1000"),
    ({"format": "xml"}, "'format'", "json, csv"),
    ({"order": "rand"}, "'order'", "calls, bytes, errors"),
    ({"hosts": "x"}, "unknown query parameter", "known: from, to"),
    ({"container": "\x07"}, "'container'", "printable"),
]


@pytest.mark.parametrize("params,part1,part2", BAD, ids=[repr(b[0])[:40] for b in BAD])
def test_malformed_and_huge_ranges_are_bad_requests(params, part1, part2):
    with pytest.raises(BadRequest) as err:
        hq.parse({k: [v] for k, v in params.items()}, T0)
    assert err.value.status == 400 and part1 in err.value.message and part2 in err.value.message


def test_times_rfc3339_relative_and_unix():
    assert hq.parse_time("2025-12-06T06:00:00Z", T0, "from") == T0
    assert hq.parse_time("2025-12-06T07:00:00+01:00", T0, "from") == T0
    assert hq.parse_time("2025-12-06T06:00:00.75Z", T0, "from") == T0
    assert hq.parse_time("-1h30m", T0, "from") == T0 - 5400
    assert hq.parse_time("now", T0 + 0.9, "to") == T0
    assert hq.parse_time(str(T0), 0, "to") == T0


def test_a_repeated_parameter_is_refused():
    with pytest.raises(BadRequest, match="given 2 times"):
        hq.parse({"from": ["-1h", "-2h"]}, T0)


def test_a_foreign_or_unusable_file_is_refused_untouched(tmp_path):
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE ips (x)").connection.commit()
    before = other.read_bytes()
    with pytest.raises(StoreUnusable, match="is not a syswatch history database"):
        HistoryStore(str(other), 64 << 20)
    assert other.read_bytes() == before and not os.path.exists(str(other) + "-wal")
    with pytest.raises(StoreUnusable, match="is a directory"):
        HistoryStore(str(tmp_path), 64 << 20)
    with pytest.raises(StoreUnusable, match="does not exist"):
        HistoryStore(str(tmp_path / "no" / "h.sqlite3"), 64 << 20)
    with pytest.raises(StoreUnusable, match="at least 1 MB"):
        HistoryStore(str(tmp_path / "h.sqlite3"), 100_000)


def test_a_second_recorder_on_the_same_file_is_refused(tmp_path):
    path = str(tmp_path / "h.sqlite3")
    first = HistoryStore(path, 64 << 20)
    try:
        with pytest.raises(StoreUnusable, match="another process records into"):
            HistoryStore(path, 64 << 20)
    finally:
        first.close()
    fd = os.open(path, os.O_RDONLY)               # closed: the lock is free again
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_the_queue_bound_drops_and_counts(tmp_path):
    store = HistoryStore(str(tmp_path / "h.sqlite3"), 64 << 20)
    rec = Recorder(store, clock=lambda: T0, max_queued_events=100)
    rec.offer_events("h", [event(T0, 1, "a")] * 60)
    rec.offer_events("h", [event(T0, 1, "a")] * 60)         # would make 120 queued
    rec._round()
    rec._refresh_status()
    assert (rec.status()["events_recorded"], rec.status()["events_dropped"]) == (60, 60)
    store.close()


def test_a_source_that_can_wait_waits_for_room(tmp_path):
    store = HistoryStore(str(tmp_path / "h.sqlite3"), 64 << 20)
    rec = Recorder(store, clock=lambda: T0, max_queued_events=100)
    rec.offer_events("h", [event(T0, 1, "a")] * 80)
    assert rec.wait_room(timeout=0.2) is False                 # not started: nobody drains the queue
    rec.start()
    try:
        assert rec.wait_room(timeout=10) is True and rec._queued <= 50
    finally:
        rec.stop()
        store.close()
