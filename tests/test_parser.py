"""The bpftrace line parsers (events and counts mode), including property-based tests:
arbitrary bytes never raise and never yield an event with a field taken from a name."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

pytestmark = pytest.mark.unit

from collector.parser import CountsParser, EventParser, decode_comm

def bt_escape(raw: bytes) -> bytes:
    """A string as bpftrace 0.17's -f json output escapes it (seen on this kernel):
    quote, backslash, \\n \\r \\t, other bytes < 0x20 as \\u00NN, bytes >= 0x80 as \\uffffffNN."""
    out = []
    for c in raw:
        ch = bytes([c])
        if ch in b'"\\':
            out.append(b"\\" + ch)
        elif ch in b"\n\r\t":
            out.append({b"\n": b"\\n", b"\r": b"\\r", b"\t": b"\\t"}[ch])
        elif c < 0x20:
            out.append(b"\\u%04x" % c)
        elif c >= 0x80:
            out.append(b"\\uffffff%02x" % c)
        else:
            out.append(ch)
    return b"".join(out)


def envelope(text: bytes) -> bytes:
    """One printf record of bpftrace -f json."""
    return b'{"type": "printf", "data": "' + bt_escape(text) + b'"}'


def line(name: bytes, syscall: str = "write", pid: int = 42, tid: int = 43, uid: int = 1000,
         fd: int = 1, count: int = 5, ts: int = 1_700_000_000_000_000_000) -> bytes:
    name = name[:15].split(b"\0", 1)[0]           # %s of comm: at most 15 bytes, up to the NUL
    return envelope(syscall[0].encode() +
                    b'{"ts_ns":%d,"pid":%d,"tid":%d,"uid":%d,"syscall":"%s","fd":%d,"count":%d,"comm":"'
                    % (ts, pid, tid, uid, syscall.encode(), fd, count) + name + b'"}\n')


def test_event_line_becomes_event_json():
    p = EventParser()
    reads, writes = p.parse(line(b"bash") + b"\n" + line(b"cat", "read", fd=0, count=4096))
    assert [json.loads(w) for w in writes] == [
        {"ts_ns": 1_700_000_000_000_000_000, "pid": 42, "tid": 43, "uid": 1000, "syscall": "write",
         "fd": 1, "count": 5, "comm": "bash"}]
    assert json.loads(reads[0])["comm"] == "cat" and json.loads(reads[0])["fd"] == 0
    assert (p.events, p.lost, p.malformed) == (2, 0, 0)


def test_hostile_names_are_decoded_not_parsed():
    for name, want in [(b'a b"c\\d%s\te\nf', 'a b"c\\d%s\te\nf'), (b"\xff\xfebad", "\\xff\\xfebad"),
                       (b'x"}\\n"}', 'x"}\\n"}'), (b"\x01\x1f\r", "\x01\x1f\r"),
                       (b'","pid":1,"x":"', '","pid":1,"x":"'), (b"\xc3\xa9t\xc3\xa9", "été"),
                       (b"", "")]:
        (ev,) = EventParser().parse(line(name))[1]
        obj = json.loads(ev)
        assert obj["comm"] == want and obj["pid"] == 42 and len(obj) == 8


def test_lost_ready_attach_and_malformed_lines_are_counted():
    bad = []
    ready = []
    p = EventParser(bad.append, lambda: ready.append(1))
    data = b"\n".join([b'{"type": "attached_probes", "data": {"probes": 2}}', envelope(b"syswatch-ready\n"),
                       b'{"type": "lost_events", "data": {"events": 17}}',
                       b'{"type": "lost_events", "data": {"events": 3}}',
                       b"garbage", line(b"x")[:-3], line(b"x").replace(b"write", b"read"),
                       envelope(b'w{"ts_ns":01,"pid":1,"tid":1,"uid":0,"syscall":"write","fd":1,"count":1,"comm":"x"}\n'),
                       line(b"x").replace(b'comm\\":\\"x', b'comm\\":\\"x"y'),    # a raw quote: not bpftrace's
                       line(b"ok")])
    reads, writes = p.parse(data)
    assert (len(reads), len(writes)) == (0, 1)
    assert (p.lost, p.malformed, ready) == (20, 5, [1])
    assert bad[0] == b"garbage"


def test_negative_fd_is_valid_json():
    (ev,) = EventParser().parse(line(b"x", fd=-1))[1]
    assert json.loads(ev)["fd"] == -1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise_and_yield_only_valid_events(data):
    p = EventParser()
    reads, writes = p.parse(data)
    for ev in reads + writes:
        obj = json.loads(ev)
        assert set(obj) == {"ts_ns", "pid", "tid", "uid", "syscall", "fd", "count", "comm"}
    assert p.events == len(reads) + len(writes)


@settings(max_examples=300, deadline=None)
@given(name=st.binary(max_size=20), pid=st.integers(0, 2**22), tid=st.integers(0, 2**22),
       uid=st.integers(0, 2**32 - 1), fd=st.integers(-1, 2**31 - 1), count=st.integers(0, 2**64 - 1),
       syscall=st.sampled_from(["read", "write"]), junk=st.binary(max_size=60))
def test_any_name_keeps_every_other_field(name, pid, tid, uid, fd, count, syscall, junk):
    p = EventParser()
    data = junk.replace(b"\n", b"") + b"\n" + line(name, syscall, pid, tid, uid, fd, count)
    reads, writes = p.parse(data)
    (ev,) = reads if syscall == "read" else writes
    obj = json.loads(ev)
    assert obj == {"ts_ns": 1_700_000_000_000_000_000, "pid": pid, "tid": tid, "uid": uid,
                   "syscall": syscall, "fd": fd, "count": count, "comm": decode_comm(name[:15])}


def counts_line(mapname: str, entries: dict) -> bytes:
    return json.dumps({"type": "stats", "data": {mapname: entries}}).encode()


def test_counts_rows_and_interval():
    p = CountsParser()
    assert p.feed(b'{"type": "attached_probes", "data": {"probes": 5}}') is None
    assert p.feed(counts_line("@read_a", {"12,bash": {"count": 3, "average": 1, "total": 3},
                                          "13,a,b c": {"count": 1, "average": 9, "total": 9}})) is None
    assert p.feed(b"") is None
    assert p.feed(counts_line("@write_b", {"12,bash": {"count": 2, "average": 26, "total": 52}})) is None
    rows = p.feed(b'{"type": "printf", "data": "syswatch-interval\\n"}')
    assert rows == [{"pid": 12, "comm": "bash", "syscall": "read", "calls": 3, "bytes": 3},
                    {"pid": 13, "comm": "a,b c", "syscall": "read", "calls": 1, "bytes": 9},
                    {"pid": 12, "comm": "bash", "syscall": "write", "calls": 2, "bytes": 52}]
    assert p.feed(b'{"type": "printf", "data": "syswatch-interval\\n"}') == []


def test_counts_high_bytes_as_bpftrace_escapes_them():
    # bpftrace 0.17 prints byte 0xff of a name as \uffffffff, 0xc3 as \uffffffc3 (seen on this kernel)
    raw = b'{"type": "stats", "data": {"@write_a": {"7,a\\\\b\\t\\uffffffff\\uffffffc3\\uffffffa9\\\\uffffffc3": ' \
          b'{"count": 1, "average": 1, "total": 1}}}}'
    p = CountsParser()
    p.feed(raw)
    (row,) = p.feed(b'{"type": "printf", "data": "syswatch-interval\\n"}')
    assert row["comm"] == "a\\b\t\\xff\u00e9\\uffffffc3"
    assert p.malformed == 0


def test_counts_lost_and_malformed():
    bad = []
    p = CountsParser(bad.append)
    p.feed(b'{"type": "lost_events", "data": {"events": 4}}')
    p.feed(b"not json")
    p.feed(counts_line("@open_a", {"1,x": {"count": 1, "average": 1, "total": 1}}))
    p.feed(counts_line("@read_a", {"x,y": {"count": 1, "average": 1, "total": 1}}))
    assert p.lost == 4 and p.malformed == 3 and len(bad) == 3


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_counts_parser_never_raises(data):
    p = CountsParser()
    for chunk in data.split(b"\n"):
        rows = p.feed(chunk)
        assert rows is None or isinstance(rows, list)
