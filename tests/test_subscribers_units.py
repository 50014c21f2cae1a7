"""syswatch-tail and syswatch-top in process: their flags, filters and what a person reads (the p99 and
errno columns, --group file, escapes shown as text). Against a real collector: tests/test_subscribers.py."""
from __future__ import annotations

import json

import pytest

from syswatch.subscribers import common, tail, top

pytestmark = pytest.mark.unit


def ev(**over) -> dict:
    e = {"ts_ns": 1_764_000_000_000_000_000, "pid": 10, "tid": 10, "uid": 1000, "comm": "pg", "syscall": "read",
         "fd": 3, "count": 100, "ret": 100, "lat_ns": 1000, "cgroup_id": 1, "container_id": "",
         "container_name": ""}
    e.update(over)
    return e


def test_the_filter_flags_build_one_selection(monkeypatch):
    args = tail.parse_args(["-x", "--min-latency", "20ms", "-u", "0", "-t", "7", "--path", "/var/log", "-p", "1",
                            "-p", "2", "-n", "pg", "-c", "web"])
    sel = common.selection(args)
    assert sel.failed and sel.min_latency_ns == 20_000_000 and sel.uids == (0,) and sel.tids == (7,)
    assert sel.paths == ("/var/log",) and sel.pids == (1, 2) and sel.comms == ("pg",) and sel.containers == ("web",)
    monkeypatch.setenv("SYSWATCH_MIN_LATENCY", "500us")
    monkeypatch.setenv("SYSWATCH_FAILED", "1")
    monkeypatch.setenv("SYSWATCH_UID", "0,33")
    env = common.selection(tail.parse_args([]))
    assert env.min_latency_ns == 500_000 and env.failed and env.uids == (0, 33)
    assert common.selection(tail.parse_args(["-u", "5"])).uids == (5,)          # the flag beats the variable


@pytest.mark.parametrize("argv", [["--min-latency", "20"], ["-u", "root"], ["-u", "-1"], ["-t", "x"]])
def test_bad_filter_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        tail.parse_args(argv)
    assert exc.value.code == 2 and "error:" in capsys.readouterr().err


def test_top_takes_top_s_delay_letter_and_tail_keeps_bcc_s_duration():
    t = top.parse_args(["-d", "2.5"])
    assert t.delay == 2.5 and t.duration == 0.0
    assert top.parse_args(["--duration", "9"]).duration == 9.0
    assert tail.parse_args(["-d", "9"]).duration == 9.0


def test_tail_lines_for_each_topic():
    assert tail.text_line("syscall.read", ev(ret=-11), "vm").endswith(
        "pg[10] read(3, 100) = -1 EAGAIN (Resource temporarily unavailable) <0.000001> host=vm")
    row = {"pid": 1, "comm": "x\x1b[2J", "container_id": "", "container_name": "", "syscall": "write", "calls": 4,
           "bytes": 40, "errors": 1, "lat_ns_sum": 4000, "lat_hist": [0] * 10 + [4]}
    assert tail.text_line("counts", row, "vm") == (
        "counts: x\\x1b[2J[1] write calls=4 bytes=40 errors=1 avg=1.0us p99=1.0us host=vm")
    assert tail.text_line("status", {"v": 2, "host": "vm", "bpftrace": "\x1b]0;t\x07"}, "vm") == \
        "status: host=vm bpftrace=\\x1b]0;t\\x07"


def sample_of(group: str, events: list) -> top.Sample:
    s = top.Sample(group)
    for e in events:
        s.add_event("vm", e)
    return s


def test_top_has_a_p99_and_an_errno_column():
    events = [ev(lat_ns=1000 * (i + 1)) for i in range(99)] + [ev(lat_ns=50_000_000)]
    events += [ev(pid=20, comm="dockerd", ret=-11) for _ in range(5)] + [ev(pid=20, comm="dockerd", ret=-9)]
    sample = sample_of("process", events)
    rows = {r["pid"]: r for r in sample.table("p99")}
    assert 65_536 <= rows[10]["p99_ns"] < 131_072          # in the bucket of the 99th call (99 us)
    assert rows[20]["errnos"] == {"EAGAIN": 5, "EBADF": 1}
    text = top.render(sample, "calls", 10)
    header = next(line for line in text.splitlines() if "READ/s" in line)
    assert "P99" in header and "ERRNO" in header
    dockerd = next(line for line in text.splitlines() if "dockerd" in line)
    assert "EAGAIN+1" in dockerd
    pg = next(line for line in text.splitlines() if " pg " in line)
    assert "us" in pg.split()[-2] and pg.split()[-1] == "-"


def test_top_sorts_by_p99_and_rows_without_latency_show_a_dash():
    unmeasured = {k: v for k, v in ev(pid=30).items() if k != "lat_ns"}
    sample = sample_of("process", [ev(pid=1, lat_ns=10), ev(pid=2, lat_ns=10_000_000), unmeasured])
    assert [r["pid"] for r in sample.table("p99")] == [2, 1, 30]
    assert sample.table("p99")[-1]["p99_ns"] is None
    assert " - " in next(line for line in top.render(sample, "calls", 10).splitlines() if line.strip().startswith("30"))


def test_top_group_file_keys_by_inode_and_shows_the_end_of_long_paths():
    long = "/srv/" + "d" * 80 + "/base/1/1259"
    sample = sample_of("file", [ev(path=long, ino=5, dev=1, file_type="reg", ret=10)] * 3
                       + [ev(path="/other/name", ino=5, dev=1, file_type="reg", ret=10)]
                       + [ev(path="socket:[77]", ino=77, dev=9, file_type="sock")] + [ev()])
    rows = sample.table("calls")
    assert [(r["path"], r["ino"]) for r in rows] == [("/other/name", 5), ("socket:[77]", 77)]
    text = top.render(sample_of("file", [ev(path=long, ino=5, dev=1, file_type="reg")]), "calls", 10)
    assert "d/base/1/1259" in text and "   ...ddd" in text and "TYPE" in text and "PATH" in text


def test_top_shows_hostile_names_as_text():
    sample = sample_of("process", [ev(comm="\x1b]0;pwn\x07", container_name="\x1b[2J", container_id="0123456789ab")])
    sample.status["vm"] = {"host": "vm\u202e", "mode": "events", "probe": "tracepoint", "events_total": 1,
                           "lost_total": 0, "dropped_total": 0, "malformed_total": 0}
    text = top.render(sample, "calls", 10)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b]0;pwn\\x07" in text and "vm\\u202e" in text
    out = json.dumps(sample.table("calls"))
    assert json.loads(out)[0]["comm"] == "\x1b]0;pwn\x07"      # JSON keeps the name exact


def test_top_counts_rows_with_and_without_buckets():
    s = top.Sample("process")
    row = {"pid": 1, "comm": "a", "container_id": "", "container_name": "", "syscall": "read", "calls": 10,
           "bytes": 100, "errors": 2, "lat_ns_sum": 10_000}
    s.add_counts({"host": "vm", "interval_ns": 10**9}, [dict(row, lat_hist=[0] * 10 + [10]), dict(row, pid=2)])
    rows = {r["pid"]: r for r in s.table("calls")}
    assert rows[1]["p99_ns"] is not None and rows[2]["p99_ns"] is None
    assert rows[1]["avg_lat_us"] == rows[2]["avg_lat_us"] == 1.0 and rows[2]["errnos"] == {"unknown": 2}
