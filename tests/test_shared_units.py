"""Unit tests of the small shared modules every reader of the stream uses: the errno table
(shared/errnos.py), the latency histogram (shared/latency.py), the duration spelling
(shared/units.py) and the one escaping rule for text outputs (shared/escaping.py)."""
from __future__ import annotations

import errno
import math
import os
import random

import pytest

from syswatch.shared import errnos, latency, units
from syswatch.shared.escaping import visible

pytestmark = pytest.mark.unit


# --- errnos ------------------------------------------------------------------------------------------
def test_errno_table_agrees_with_this_linux_libc_and_uses_the_kernel_spelling():
    for n, (name, message) in errnos.TABLE.items():
        if n < 512:
            assert errno.errorcode.get(n) == name or name in ("EAGAIN", "EDEADLK", "EOPNOTSUPP", "EHWPOISON"), n
            assert os.strerror(n) == message or n == 133, (n, message)
    assert errnos.name(11) == "EAGAIN" and errnos.name(35) == "EDEADLK" and errnos.name(95) == "EOPNOTSUPP"
    assert errnos.TABLE[516] == ("ERESTART_RESTARTBLOCK", "Interrupted by signal")
    assert len(errnos.LABELS) == len(errnos.TABLE) + 1 == 151   # the bound of every errno label set


@pytest.mark.parametrize("ret, shown", [
    (8192, "8192"), (0, "0"),
    (-9, "-1 EBADF (Bad file descriptor)"),
    (-11, "-1 EAGAIN (Resource temporarily unavailable)"),
    (-512, "? ERESTARTSYS (To be restarted if SA_RESTART is set)"),
    (-4000, "-1 ERRNO_4000 (Unknown error 4000)"),
])
def test_a_return_value_is_shown_as_strace_shows_it(ret, shown):
    assert errnos.shown_ret(ret) == shown


def test_labels_are_bounded_to_the_table():
    assert errnos.label(-9) == "EBADF" and errnos.label(-(2**63)) == "other" and errnos.label(-41) == "other"
    assert {errnos.label(-n) for n in range(1, 5000)} == errnos.LABELS


# --- latency -----------------------------------------------------------------------------------------
def test_buckets_are_bpftrace_hist_buckets():
    assert [latency.bucket(ns) for ns in (0, 1, 2, 3, 4, 1023, 1024, 2**64 - 1)] == [0, 1, 2, 2, 3, 10, 11, 64]
    assert [latency.label(i) for i in (0, 1, 2, 11, 21, 31)] == ["[0]", "[1]", "[2, 4)", "[1K, 2K)", "[1M, 2M)",
                                                                 "[1G, 2G)"]
    for i in range(1, latency.NBUCKETS):
        assert latency.bucket(latency.lower(i)) == i == latency.bucket(latency.upper(i) - 1)


def test_histogram_is_exact_and_counts_unmeasured_calls_apart():
    h = latency.Histogram()
    values = [0, 1, 5, 999, 1000, 40_000, 41_000, 20_000_000, 2**64 - 1]
    for v in values:
        h.add(v)
    h.add(None)
    h.add(None)
    assert h.measured == len(values) and h.unmeasured == 2
    assert sum(h.buckets()) == len(values) and h.sum_ns == sum(values) and h.max_ns == 2**64 - 1
    assert h.summary()["lat_unmeasured"] == 2 and h.summary()["lat_measured"] == 9
    empty = latency.Histogram()
    empty.add(None)
    assert empty.summary() == {"p50_ns": None, "p90_ns": None, "p99_ns": None, "max_ns": None,
                               "lat_measured": 0, "lat_unmeasured": 1}


def test_quantiles_fall_in_the_bucket_of_the_true_quantile_and_never_above_the_max():
    rng = random.Random(25)
    for _ in range(200):
        values = sorted(int(rng.lognormvariate(10, 3)) for _ in range(rng.randint(1, 400)))
        h = latency.Histogram()
        for v in values:
            h.add(v)
        for q in (0.5, 0.9, 0.99, 1.0):
            true = values[max(1, math.ceil(q * len(values))) - 1]      # nearest rank
            est = h.quantile(q)
            assert latency.bucket(est) == latency.bucket(true) and est <= values[-1], (q, true, est)


def test_buckets_from_counts_rows_and_from_events_make_the_same_histogram():
    a, b = latency.Histogram(), latency.Histogram()
    values = [3, 900, 1500, 1600, 70_000]
    for v in values:
        a.add(v)
    b.add_buckets(a.buckets(), sum(values), max(values))
    assert b.counts == a.counts and b.sum_ns == a.sum_ns and b.max_ns == a.max_ns
    c = latency.Histogram()
    c.add_buckets(a.buckets(), sum(values))                 # no max from the source: the top bucket's end
    assert c.max_ns == latency.upper(latency.bucket(70_000)) - 1
    a.merge(b)
    assert a.measured == 10 and a.sum_ns == 2 * sum(values)


def test_prometheus_buckets_are_cumulative_and_end_with_every_measured_call():
    h = latency.Histogram()
    for v in (100, 255, 256, 257, 1023, 1024, 2**40):
        h.add(v)
    cum = h.cumulative()
    assert len(cum) == len(latency.EXPORTED_EXPONENTS) + 1 == 25
    le = dict(cum)
    assert le[1024e-9] == 5           # 100, 255, 256, 257, 1023: shorter than 1024 ns
    assert le[2048e-9] == 6 and le[2**33 * 1e-9] == 6 and le[math.inf] == 7
    assert [n for _, n in cum] == sorted(n for _, n in cum)


@pytest.mark.parametrize("bad", [[-1], [1.5], "12", [0] * 66, [True], [2**64]])
def test_check_buckets_refuses_what_is_not_a_histogram(bad):
    with pytest.raises(ValueError):
        latency.check_buckets(bad)


# --- durations ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, ns", [("500us", 500_000), ("20ms", 20_000_000), ("1s", 10**9), ("1.5ms", 1_500_000),
                                      ("250ns", 250), ("0", 0), (" 10ms ", 10_000_000), ("0.000000001s", 1)])
def test_duration_spelling(text, ns):
    assert units.parse_duration(text) == ns


@pytest.mark.parametrize("text", ["10", "10 ms", "ms", "-1ms", "1e3us", "2d", "1m", "", "90000s", "1.0000000001s"])
def test_duration_spelling_refuses_what_could_mean_two_things(text):
    with pytest.raises(ValueError, match="duration|longer than a day"):
        units.parse_duration(text)


def test_shown_latency():
    assert [units.shown(n) for n in (None, 812, 41_000, 1_234_567, 2_500_000_000)] == [
        "-", "812ns", "41.0us", "1.23ms", "2.50s"]


# --- escaping ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, shown", [
    ("postgres", "postgres"), ("café 日本", "café 日本"),
    ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),          # set the window title
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),                 # clear the screen
    ("red\x1b[31m", "red\\x1b[31m"),
    ("\x9b31m", "\\x9b31m"),                              # the 8-bit CSI
    ("a\nforged line", "a\\nforged line"), ("cr\r", "cr\\r"), ("tab\t", "tab\\t"), ("\x00\x7f", "\\x00\\x7f"),
    ("evil\u202etxt.exe", "evil\\u202etxt.exe"),          # right-to-left override
    ("zero\u200bwidth", "zero\\u200bwidth"), ("line\u2028sep", "line\\u2028sep"),
    ("back\\slash", "back\\\\slash"), ("\\x1b", "\\\\x1b"),   # a literal escape cannot pass for a real one
    ("bad\udcffbyte", "bad\\xffbyte"),                    # surrogateescape'd byte
])
def test_visible_shows_what_could_act_on_a_terminal_as_text(text, shown):
    out = visible(text)
    assert out == shown and out.isprintable() and "\x1b" not in out


def test_visible_cuts_without_splitting_an_escape():
    assert visible("abcdefgh", 6) == "abc..."
    assert visible("ab\x1bcdef", 7) == "ab..."                 # \x1b does not fit whole: left out
    assert visible("ab\x1bcdef", 9) == "ab\\x1b..."
    for limit in range(3, 30):
        out = visible("\\\x1b\u202e" * 5, limit)
        assert len(out) <= limit and out.endswith("...")
        body = out[:-3]
        assert body.count("\\\\") * 2 + body.count("\\x1b") * 4 + body.count("\\u202e") * 6 == len(body)


# --- selection ---------------------------------------------------------------------------------------
from syswatch.shared.selection import Selection, path_matches  # noqa: E402


def ev(**over) -> dict:
    e = {"ts_ns": 1, "pid": 10, "tid": 11, "uid": 1000, "comm": "pg", "syscall": "read", "fd": 3, "count": 8,
         "ret": 8, "lat_ns": 5000, "cgroup_id": 1, "container_id": "0123456789ab", "container_name": "db",
         "host": "vm", "path": "/var/lib/pg/base/1", "file_type": "reg"}
    e.update(over)
    return e


def test_an_empty_selection_has_no_checks():
    s = Selection()
    assert s.empty and s.matches({}) and s.shown() == "none"


@pytest.mark.parametrize("sel, yes, no", [
    (Selection(pids=(10, 12)), ev(), ev(pid=13)),
    (Selection(tids=(11,)), ev(), ev(tid=10)),
    (Selection(uids=(1000,)), ev(), ev(uid=0)),
    (Selection(comms=("pg",)), ev(), ev(comm="pgx")),
    (Selection(syscalls=("read",)), ev(), ev(syscall="write")),
    (Selection(hosts=("vm",)), ev(), ev(host="vm2")),
    (Selection(containers=("0123",)), ev(), ev(container_id="9123456789ab", container_name="web")),
    (Selection(containers=("db",)), ev(), ev(container_name="")),
    (Selection(containers=("0123456789ab" + "c" * 52,)), ev(), ev(container_id="")),
    (Selection(failed=True), ev(ret=-11), ev(ret=0)),
    (Selection(min_latency_ns=5000), ev(), ev(lat_ns=4999)),
    (Selection(min_latency_ns=1), ev(), {k: v for k, v in ev().items() if k != "lat_ns"}),  # unmeasured: never
    (Selection(paths=("/var/lib/pg",)), ev(), ev(path="/var/lib/pgx/1")),
    (Selection(paths=("/var/lib/pg/",)), ev(), ev(path="/var/lib/pg")),
    (Selection(paths=("/dst",)), ev(path="/src/a", path_out="/dst/a"), ev(path="/src/a", path_out="/x")),
    (Selection(paths=("/var",)), ev(), ev(path="")),
    (Selection(file_types=("sock",)), ev(file_type="sock"), ev()),
    (Selection(file_types=("fifo",)), ev(file_type="reg", file_type_out="fifo"), {**ev(), "file_type": None}),
    (Selection(pids=(10,), failed=True, min_latency_ns=100), ev(ret=-9), ev(ret=-9, pid=9)),
])
def test_each_filter_selects_what_it_names(sel, yes, no):
    assert not sel.empty and sel.matches(yes) and not sel.matches(no)


def test_path_prefixes_match_whole_components():
    assert path_matches("/var/log", "/var/log") and path_matches("/var/log/syslog", "/var/log")
    assert not path_matches("/var/logs", "/var/log") and path_matches("/var/logs", "/var/")
    assert path_matches("pipe:[123]", "pipe:[123]") and not path_matches("/", "/var")


def test_rows_are_matched_on_the_fields_they_have():
    row = {"pid": 10, "comm": "pg", "container_id": "", "container_name": "", "syscall": "read", "calls": 3}
    sel = Selection(pids=(10,), uids=(0,), failed=True)
    assert sel.matches_row(row) and not Selection(pids=(9,)).matches_row(row)
    assert sel.per_call_only() == ["uid", "failed"]
    assert Selection(uids=(0,), min_latency_ns=5).shown() == "uid=0, min_latency=5ns"


# --- the tail's lines -------------------------------------------------------------------------------
from syswatch.subscribers import lines  # noqa: E402


def test_the_tail_line_has_strace_s_shape(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    import time as _time
    _time.tzset()
    base = {"ts_ns": 1_764_000_062_123_456_789, "pid": 812, "tid": 812, "uid": 0, "comm": "postgres",
            "syscall": "pread64", "fd": 7, "count": 8192, "ret": 8192, "lat_ns": 41_000, "cgroup_id": 1,
            "container_id": "", "container_name": ""}
    assert lines.event_line(base, "db1") == "16:01:02.123456 postgres[812] pread64(7, 8192) = 8192 <0.000041> host=db1"
    with_path = {**base, "path": "/var/lib/postgresql/base/1/1259", "container_id": "0123456789ab",
                 "container_name": "pg", "tid": 813, "ret": -11}
    assert lines.event_line(with_path, "db1") == (
        "16:01:02.123456 postgres[812/813] pread64(7</var/lib/postgresql/base/1/1259>, 8192) = "
        "-1 EAGAIN (Resource temporarily unavailable) <0.000041> container=pg host=db1")
    unmeasured = {k: v for k, v in base.items() if k != "lat_ns"}
    assert lines.event_line(unmeasured, "h").endswith("= 8192 host=h")
    send = {**base, "syscall": "sendfile", "fd": 3, "path": "/in", "fd_out": 5, "path_out": "/out"}
    assert "sendfile(5</out>, 3</in>, 8192)" in lines.event_line(send, "h")
    splice = {**send, "syscall": "splice"}
    assert "splice(3</in>, 5</out>, 8192)" in lines.event_line(splice, "h")


def test_the_tail_line_shows_hostile_strings_as_text():
    e = {"ts_ns": 0, "pid": 1, "tid": 1, "comm": "\x1b]0;pwned\x07", "syscall": "read", "fd": 1, "count": 1,
         "ret": 1, "lat_ns": 1, "container_id": "0123456789ab", "container_name": "\x1b[2J", "path": "/a\nb\x1b[31m"}
    line = lines.event_line(e, "h\u202e")
    assert "\x1b" not in line and "\x07" not in line and "\n" not in line and "\u202e" not in line
    assert "\\x1b]0;pwned\\x07[1]" in line and "1</a\\nb\\x1b[31m>" in line and "container=\\x1b[2J" in line
    status = lines.status_line("status", {"v": 2, "host": "vm", "bpftrace": "\x1b[31mv0.17",
                                          "stale_cpus": list(range(100))})
    assert status.startswith("status: host=vm bpftrace=\\x1b[31mv0.17 stale_cpus=[0, 1,") and "100 in all" in status
