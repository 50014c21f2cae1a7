"""The bpftrace line parsers (events and counts mode), including property-based tests:
arbitrary bytes never raise and never yield an event with a field taken from a name."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syswatch.collector.parser import KICK_STALE_S, MALFORMED_KEPT, Parser, decode_comm
from syswatch.collector.streamio import Rules


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


SYSCALLS = ["read", "write", "pread64", "pwrite64", "readv", "writev"]


def line(name: bytes, syscall: str = "write", pid: int = 42, tid: int = 43, uid: int = 1000,
         fd: int = 1, count: int = 5, ts: int = 1_700_000_000_000_000_000, ret: int = 5, lat: int = 777,
         cgroup: int = 1, cpu: int = 0) -> bytes:
    name = name[:15].split(b"\0", 1)[0]           # %s of comm: at most 15 bytes, up to the NUL
    return envelope(b"%d:" % cpu + str(SYSCALLS.index(syscall)).encode() +
                    b'{"ts_ns":%d,"pid":%d,"tid":%d,"uid":%d,"syscall":"%s","fd":%d,"count":%d,"ret":%d,'
                    b'"lat_ns":%d,"cgroup_id":%d,"comm":"' % (ts, pid, tid, uid, syscall.encode(), fd, count, ret, lat,
                                                              cgroup) + name + b'"}\n')


class Clock:
    """The parser's monotonic clock, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def parser(mode="events", containers=None, **kw) -> Parser:
    return Parser(mode, SYSCALLS, containers, **kw)


def kick(cpu: int, printed: int, seq: int | None = None) -> bytes:
    """A kick line: CPU ``cpu`` printed ``printed`` events so far (``seq``: the kick's number)."""
    return envelope(b"syswatch-kick %d %d" % (cpu, printed) + (b" %d" % seq if seq is not None else b"") + b"\n")


def parse(data: bytes, p: Parser | None = None) -> tuple[list[bytes], list[bytes]]:
    """(read events, write events) of one parse."""
    out = (p or parser()).parse(data)
    return out.events.get("read", []), out.events.get("write", [])


class FakeContainers:
    """A container lookup for unit tests: cgroup 77 is container abc, everything else the host."""

    def fields(self, cgroup_id):
        return ("0123456789ab", 'we"b') if cgroup_id == 77 else ("", "")

    def fields_json(self, cgroup_id):
        cid, name = self.fields(cgroup_id)
        return b'"container_id":"%s","container_name":%s,' % (cid.encode(), json.dumps(name).encode())


FIELDS = {"ts_ns", "pid", "tid", "uid", "syscall", "fd", "count", "ret", "lat_ns", "cgroup_id", "container_id",
          "container_name", "comm"}


@pytest.mark.unit
def test_event_line_becomes_event_json():
    p = parser()
    reads, writes = parse(line(b"bash") + b"\n" + line(b"cat", "read", fd=0, count=4096, ret=-9), p)
    assert [json.loads(w) for w in writes] == [
        {"ts_ns": 1_700_000_000_000_000_000, "pid": 42, "tid": 43, "uid": 1000, "syscall": "write",
         "fd": 1, "count": 5, "ret": 5, "lat_ns": 777, "cgroup_id": 1, "container_id": "", "container_name": "",
         "comm": "bash"}]
    assert json.loads(reads[0])["comm"] == "cat" and json.loads(reads[0])["ret"] == -9
    assert (p.events, p.lost, p.malformed) == (2, 0, 0)


@pytest.mark.unit
def test_every_syscall_gets_its_own_batch_and_containers_their_fields():
    p = parser(containers=FakeContainers())
    out = p.parse(b"\n".join(line(b"db", sc, cgroup=77 if sc == "pwrite64" else 1) for sc in SYSCALLS))
    assert sorted(out.events) == sorted(SYSCALLS)
    (pw,) = out.events["pwrite64"]
    assert json.loads(pw)["container_id"] == "0123456789ab" and json.loads(pw)["container_name"] == 'we"b'
    assert json.loads(out.events["readv"][0])["container_id"] == ""


@pytest.mark.unit
def test_excluded_processes_are_counted_not_published():
    p = parser()
    p.rules = Rules(pids=frozenset({42}))
    out = p.parse(line(b"x") + b"\n" + line(b"y", pid=43))
    assert [json.loads(e)["pid"] for e in out.events["write"]] == [43]
    assert (p.events, p.excluded) == (1, 1)


@pytest.mark.unit
def test_a_subscriber_s_zeromq_signalling_is_left_out_and_nothing_else():
    """A verified subscriber (pid 42): the eventfds its ZeroMQ thread touched are left out, its
    reads of a file stay; another process's identical calls stay."""
    p = parser()
    p.parse(line(b"ZMQbg/IO/0", fd=9, count=8, ret=8))          # learned before verification, published
    assert p.events == 1
    p.rules = Rules(subscribers=frozenset({42}))
    out = p.parse(b"\n".join([
        line(b"ZMQbg/IO/0", fd=9, count=8, ret=8),              # I/O thread writes the socket's mailbox
        line(b"python3", syscall="read", fd=9, count=8, ret=8),  # the application reads it
        line(b"python3", syscall="read", fd=9, count=8, ret=-11),  # nothing there: EAGAIN
        line(b"python3", syscall="read", fd=3, count=4096, ret=13),  # a file: stays
        line(b"python3", syscall="read", fd=9, count=8, ret=8, pid=43),  # another process: stays
    ]))
    got = [(e["pid"], e["fd"], e["count"]) for e in map(json.loads, out.events["read"])]
    assert got == [(42, 3, 4096), (43, 9, 8)] and "write" not in out.events
    assert (p.events, p.excluded) == (3, 3)


@pytest.mark.unit
def test_hostile_names_are_decoded_not_parsed():
    for name, want in [(b'a b"c\\d%s\te\nf', 'a b"c\\d%s\te\nf'), (b"\xff\xfebad", "\\xff\\xfebad"),
                       (b'x"}\\n"}', 'x"}\\n"}'), (b"\x01\x1f\r", "\x01\x1f\r"),
                       (b'","pid":1,"x":"', '","pid":1,"x":"'), (b"\xc3\xa9t\xc3\xa9", "été"),
                       (b"", "")]:
        (ev,) = parse(line(name))[1]
        obj = json.loads(ev)
        assert obj["comm"] == want and obj["pid"] == 42 and set(obj) == FIELDS


@pytest.mark.unit
def test_lost_ready_attach_and_malformed_lines_are_counted():
    p = parser()
    data = b"\n".join([b'{"type": "attached_probes", "data": {"probes": 2}}', envelope(b"syswatch-ready\n"),
                       b'{"type": "lost_events", "data": {"events": 17}}',
                       b'{"type": "lost_events", "data": {"events": 3}}',
                       b"garbage", line(b"x")[:-3], line(b"x").replace(b"write", b"read"),
                       line(b"x").replace(b'"ts_ns\\":1', b'"ts_ns\\":01'),
                       envelope(b"syswatch-kick x 1\n"),
                       line(b"x").replace(b'comm\\":\\"x', b'comm\\":\\"x"y'),    # a raw quote: not bpftrace's
                       b'{"type": "lost_events", "data": {"events": "many"}}',
                       line(b"ok")])
    out = p.parse(data)
    assert (len(out.events.get("read", [])), len(out.events["write"])) == (0, 1)
    assert (p.reported_lost, p.lost, p.malformed, out.ready) == (20, 20, 7, True)
    assert out.malformed[0] == b"garbage" and len(out.malformed) == MALFORMED_KEPT   # all counted, a few kept
    assert p.parse(line(b"ok")).malformed == [] and not p.parse(line(b"ok")).ready


@pytest.mark.unit
def test_kicks_show_losses_bpftrace_has_not_reported():
    """Issue 12 item 6: each CPU's count of printed events (its kick) against the events of that CPU
    that arrived before it; the shortfall is lost, exactly, per CPU."""
    p = parser()
    p.parse(b"\n".join([line(b"a", cpu=0)] * 10 + [line(b"b", cpu=1)] * 4 + [kick(0, 10), kick(1, 4)]))
    assert p.lost == 0
    p.parse(b"\n".join([line(b"a", cpu=0)] * 5 + [kick(0, 25)]))     # CPU 0 printed 25, 15 arrived
    assert p.lost == 10
    p.parse(b'{"type": "lost_events", "data": {"events": 10}}')      # bpftrace reports them later: not twice
    assert p.lost == 10
    p.parse(b'{"type": "lost_events", "data": {"events": 2}}')       # lost kick lines: not events
    assert p.lost == 10
    p.parse(b"\n".join([line(b"b", cpu=1)] * 2 + [kick(1, 9), kick(0, 25)]))   # CPU 1: 9 printed, 6 arrived
    assert p.lost == 13
    p.rules = Rules(pids=frozenset({42}))
    p.parse(b"\n".join([line(b"a", cpu=0)] + [kick(0, 26)]))      # excluded, but it arrived
    assert p.lost == 13 and p.excluded == 1


@pytest.mark.unit
def test_bpftrace_s_count_minus_lost_kicks_counts_once_kicks_stop():
    """A stopped bpftrace sends no kicks: its own loss count is all there is, less the kick lines
    it lost (numbered kicks show the gaps); status never steps back."""
    clock = Clock()
    p = parser(clock=clock)
    p.parse(b"\n".join([line(b"a", cpu=0)] * 3 + [kick(0, 3, 1), kick(0, 8, 4)]))   # kicks 2, 3 lost
    assert p.lost == 5
    p.parse(b'{"type": "lost_events", "data": {"events": 40}}')      # 5 + 2 kicks + 33 after the last kick
    assert p.lost == 5                                                # kicks still coming: they are exact
    clock.now += KICK_STALE_S + 1
    assert p.lost == 38                                               # 40 - 2 kick lines
    clock.now -= KICK_STALE_S + 1
    assert p.lost == 38                                               # a counter never steps back


@pytest.mark.unit
def test_a_cpu_whose_kicks_stop_is_named_stale():
    """Every CPU kicks once a second: one that stops while the others go on has losses nobody can
    count any more, and status names it (stale_cpus) until its kicks come back."""
    clock = Clock()
    p = parser(clock=clock)
    assert p.stale_cpus() == []                                       # no kick yet: nothing to judge
    p.parse(b"\n".join([kick(0, 0, 1), kick(1, 0, 1)]))
    assert p.stale_cpus() == []
    clock.now += KICK_STALE_S + 1
    p.parse(kick(1, 0, 2))                                            # CPU 1 goes on, CPU 0 fell silent
    assert p.stale_cpus() == [0]
    p.parse(kick(0, 0, 2))
    assert p.stale_cpus() == []


@pytest.mark.unit
def test_a_cpu_that_never_kicks_after_ready_is_stale_and_bpftrace_s_count_is_used():
    """CI saw it: bpftrace stopped before a CPU's first kick, that CPU's buffer filled, and it never
    delivered again. Every online CPU is expected to kick from ready on, so that CPU is named stale,
    and bpftrace's own count (less the kick lines it lost) is used while any CPU is stale."""
    clock = Clock()
    p = Parser("events", SYSCALLS, None, kick_cpus=[0, 1], clock=clock)
    p.parse(envelope(b"syswatch-ready\n"))
    assert p.stale_cpus() == [] and p.lost == 0
    p.parse(b"\n".join([line(b"a", cpu=1)] * 3 + [b'{"type": "lost_events", "data": {"events": 7}}']))
    clock.now += KICK_STALE_S + 1
    p.parse(kick(0, 0, 1))                                            # CPU 0 kicks, CPU 1 never did
    assert p.stale_cpus() == [1]
    assert p.lost == 7                                                # what bpftrace counted on CPU 1
    p.parse(kick(1, 10, 1))                                           # CPU 1 comes back: 10 printed, 3 arrived
    assert p.stale_cpus() == [] and p.lost == 7


@pytest.mark.unit
def test_counts_mode_and_ring_buffer_expect_no_kicks():
    clock = Clock()
    p = Parser("counts", SYSCALLS, None, kick_cpus=[0, 1], clock=clock)
    p.parse(envelope(b"syswatch-ready\n"))
    clock.now += KICK_STALE_S + 1
    assert p.stale_cpus() == []


@pytest.mark.unit
@pytest.mark.parametrize("text, cpus", [("0-3\n", [0, 1, 2, 3]), ("0,2-3,7", [0, 2, 3, 7]), ("5", [5])])
def test_online_cpus_reads_the_kernel_s_list(tmp_path, text, cpus):
    from syswatch.collector.hostinfo import online_cpus
    f = tmp_path / "online"
    f.write_text(text)
    assert online_cpus(str(f)) == cpus


@pytest.mark.unit
@pytest.mark.parametrize("text", ["", "x-1", "3-"])
def test_online_cpus_falls_back_to_the_cpu_count(tmp_path, text):
    import os

    from syswatch.collector.hostinfo import online_cpus
    f = tmp_path / "online"
    f.write_text(text)
    assert online_cpus(str(f)) == list(range(os.cpu_count()))
    assert online_cpus(str(tmp_path / "missing")) == list(range(os.cpu_count()))


@pytest.mark.unit
def test_ring_buffer_output_counts_bpftrace_s_own_report():
    p = parser()                                                      # no kicks: bpftrace 0.18+
    p.parse(b'{"type": "lost_events", "data": {"events": 1016068}}')
    assert p.lost == 1016068


@pytest.mark.unit
def test_negative_fd_is_valid_json():
    (ev,) = parse(line(b"x", fd=-1))[1]
    assert json.loads(ev)["fd"] == -1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise_and_yield_only_valid_events(data):
    p = parser()
    out = p.parse(data)
    events = [e for batch in out.events.values() for e in batch]
    for ev in events:
        assert set(json.loads(ev)) == FIELDS
    assert p.events == len(events)


@settings(max_examples=300, deadline=None)
@given(name=st.binary(max_size=20), pid=st.integers(0, 2**22), tid=st.integers(0, 2**22),
       uid=st.integers(0, 2**32 - 1), fd=st.integers(-1, 2**31 - 1), count=st.integers(0, 2**64 - 1),
       ret=st.integers(-4095, 2**62), syscall=st.sampled_from(SYSCALLS), junk=st.binary(max_size=60))
def test_any_name_keeps_every_other_field(name, pid, tid, uid, fd, count, ret, syscall, junk):
    p = parser()
    data = junk.replace(b"\n", b"") + b"\n" + line(name, syscall, pid, tid, uid, fd, count, ret=ret)
    (ev,) = p.parse(data).events[syscall]
    obj = json.loads(ev)
    assert obj == {"ts_ns": 1_700_000_000_000_000_000, "pid": pid, "tid": tid, "uid": uid,
                   "syscall": syscall, "fd": fd, "count": count, "ret": ret, "lat_ns": 777, "cgroup_id": 1,
                   "container_id": "", "container_name": "", "comm": decode_comm(name[:15])}


def stats_line(mapname: str, entries: dict) -> bytes:
    return json.dumps({"type": "stats", "data": {mapname: entries}}).encode()


def map_line(mapname: str, entries: dict) -> bytes:
    return json.dumps({"type": "map", "data": {mapname: entries}}).encode()


INTERVAL = b'{"type": "printf", "data": "syswatch-interval\\n"}'


def counts(p: Parser, *lines: bytes) -> list:
    return p.parse(b"\n".join(lines)).intervals


@pytest.mark.unit
def test_counts_rows_and_interval():
    p = parser(mode="counts", containers=FakeContainers())
    (rows,) = counts(p, b'{"type": "attached_probes", "data": {"probes": 5}}',
                     stats_line("@calls_a", {"12,1,0,bash": {"count": 3, "average": 1, "total": 30},
                                             "13,77,0,a,b c": {"count": 1, "average": 9, "total": 9},
                                             "12,1,1,bash": {"count": 2, "average": 26, "total": 52}}),
                     map_line("@bytes_a", {"12,1,0,bash": 3, "13,77,0,a,b c": 0, "12,1,1,bash": 52}),
                     map_line("@errors_a", {"13,77,0,a,b c": 1}), b"", INTERVAL)
    assert rows == [
        {"pid": 12, "comm": "bash", "container_id": "", "container_name": "", "syscall": "read", "calls": 3,
         "bytes": 3, "errors": 0, "lat_ns_sum": 30},
        {"pid": 13, "comm": "a,b c", "container_id": "0123456789ab", "container_name": 'we"b', "syscall": "read",
         "calls": 1, "bytes": 0, "errors": 1, "lat_ns_sum": 9},
        {"pid": 12, "comm": "bash", "container_id": "", "container_name": "", "syscall": "write", "calls": 2,
         "bytes": 52, "errors": 0, "lat_ns_sum": 52}]
    assert counts(p, INTERVAL) == [[]]
    assert p.events == 6


@pytest.mark.unit
def test_counts_high_bytes_as_bpftrace_escapes_them():
    # bpftrace 0.17 prints byte 0xff of a name as \uffffffff, 0xc3 as \uffffffc3 (seen on this kernel)
    raw = b'{"type": "stats", "data": {"@calls_b": {"7,1,1,a\\\\b\\t\\uffffffff\\uffffffc3\\uffffffa9\\\\uffffffc3": ' \
          b'{"count": 1, "average": 1, "total": 1}}}}'
    p = parser(mode="counts")
    ((row,),) = counts(p, raw, INTERVAL)
    assert row["comm"] == "a\\b\t\\xff\u00e9\\uffffffc3"
    assert p.malformed == 0


@pytest.mark.unit
def test_counts_lost_and_malformed():
    p = parser(mode="counts")
    out = p.parse(b"\n".join([b'{"type": "lost_events", "data": {"events": 4}}', b"not json",
                              stats_line("@open_a", {"1,1,0,x": {"count": 1, "average": 1, "total": 1}}),
                              stats_line("@calls_a", {"x,1,0,y": {"count": 1, "average": 1, "total": 1}}),
                              stats_line("@calls_a", {"1,1,9,y": {"count": 1, "average": 1, "total": 1}}),
                              map_line("@bytes_a", {"1,1,0,y": -5}),
                              b'{"type": "lost_events", "data": {"events": "x"}}']))
    assert p.lost == 4 and p.malformed == 6 and len(out.malformed) == MALFORMED_KEPT
    assert out.malformed[0] == b"not json"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_counts_parser_never_raises(data):
    p = parser(mode="counts")
    for rows in p.parse(data).intervals:
        assert isinstance(rows, list)
