"""The bpftrace line parsers (events and counts mode), including property-based tests:
arbitrary bytes never raise and never yield an event with a field taken from a name. Event lines
are built by shared/record.render_line, as bpftrace prints them."""
from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syswatch.collector.files import Files
from syswatch.collector.parser import KICK_STALE_S, MALFORMED_KEPT, Parser, decode_comm
from syswatch.collector.program import REFERENCE_KERNEL
from syswatch.collector.streamio import Rules
from syswatch.shared import latency, record


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
    """One printf record of bpftrace -f json (counts mode)."""
    return b'{"type": "printf", "data": "' + bt_escape(text) + b'"}'


SYSCALLS = ["read", "write", "pread64", "pwrite64", "readv", "writev"]
K = REFERENCE_KERNEL
DEVNULL = dict(ino=4, dev=6, mode=0o20666)          # a character device (/dev/null's numbers)
EVENTFD = dict(ino=17, dev=K.anon_dev, mode=0o600)   # anon_inode:[eventfd] (no type bits in i_mode)


def line(name: bytes, syscall: str = "write", pid: int = 42, tid: int = 43, uid: int = 1000,
         fd: int = 1, count: int = 5, ts: int = 1_700_000_000_000_000_000, ret: int = 5, lat: int = 777,
         cgroup: int = 1, cpu: int = 0, flags: int = 1, namekey: int = 9, latency: bool = False,
         kname: bytes | None = None, **file) -> bytes:
    """An event line as the events program prints it (shared/record.py's columns)."""
    c0, c1 = record.comm_words(name.split(b"\0", 1)[0])
    vals = dict(cpu=cpu, idx=SYSCALLS.index(syscall), ts=ts, pid=pid, tid=tid, uid=uid, fd=fd, count=count,
                ret=ret, lat=lat, cgroup=cgroup, flags=flags, namekey=namekey, comm0=c0, comm1=c1,
                **{**DEVNULL, **file})
    return record.render_line(vals, latency, kname)


def parser(mode="events", containers=None, latency=False, **kw) -> Parser:
    return Parser(mode, SYSCALLS, containers, latency=latency, files=Files(K, proc="/nonexistent"), **kw)


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
        return b'"container_id":"%s","container_name":%s' % (cid.encode(), json.dumps(name).encode())


class Clock:
    """The parser's monotonic clock, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


FIELDS = {"ts_ns", "pid", "tid", "uid", "syscall", "fd", "count", "ret", "cgroup_id", "container_id",
          "container_name", "comm", "file_type", "path", "ino", "dev"}


def kick(cpu: int, printed: int, seq: int | None = None) -> bytes:
    return b"syswatch-kick %d %d" % (cpu, printed) + (b" %d" % seq if seq is not None else b"")


@pytest.mark.unit
def test_event_line_becomes_event_json():
    p = parser()
    reads, writes = parse(line(b"bash") + b"\n" + line(b"cat", "read", fd=0, count=4096, ret=-9, ino=0, dev=0,
                                                        mode=0), p)
    assert [json.loads(w) for w in writes] == [
        {"ts_ns": 1_700_000_000_000_000_000, "pid": 42, "tid": 43, "uid": 1000, "syscall": "write",
         "fd": 1, "count": 5, "ret": 5, "cgroup_id": 1, "container_id": "", "container_name": "",
         "comm": "bash", "file_type": "chr", "path": "", "ino": 4, "dev": 6}]
    assert json.loads(reads[0])["comm"] == "cat" and json.loads(reads[0])["ret"] == -9
    assert json.loads(reads[0])["file_type"] == "unknown"            # EBADF: no file
    assert (p.events, p.lost, p.malformed) == (2, 0, 0)


@pytest.mark.unit
def test_latency_is_a_field_only_when_measured():
    """Without --latency an event has no lat_ns (never an invented 0); with it, the entry's time."""
    (ev,) = parse(line(b"x"))[1]
    assert "lat_ns" not in json.loads(ev)
    (ev,) = parse(line(b"x", latency=True, lat=4242), parser(latency=True))[1]
    assert json.loads(ev)["lat_ns"] == 4242
    # a line of the other layout is not an event of this one
    p = parser()
    assert p.parse(line(b"x", latency=True)).events == {} and p.malformed == 1


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
def test_calls_whose_registers_fail_the_check_are_counted_never_published():
    """Issue 24: flags bit 0 clear means the saved registers the exit probe read were not this call's;
    its fd and count would be wrong, so the event is not published, only counted."""
    p = parser()
    out = p.parse(b"\n".join([line(b"x", flags=0), line(b"x", flags=2), line(b"x", flags=3), line(b"x")]))
    assert len(out.events["write"]) == 2 and (p.unreadable, p.events, p.malformed) == (2, 2, 0)
def test_a_subscriber_s_zeromq_signalling_is_left_out_and_nothing_else():
    """A verified subscriber (pid 42): the eventfds its ZeroMQ thread touched are left out, its
    reads of a file stay (also 8 bytes through a descriptor number a mailbox had: the event says
    it is a regular file, issue 22); another process's identical calls stay."""
    p = parser()
    p.parse(line(b"ZMQbg/IO/0", fd=9, count=8, ret=8, **EVENTFD))   # learned before verification, published
    assert p.events == 1
    p.rules = Rules(subscribers=frozenset({42}))
    out = p.parse(b"\n".join([
        line(b"ZMQbg/IO/0", fd=9, count=8, ret=8, **EVENTFD),       # I/O thread writes the socket's mailbox
        line(b"python3", syscall="read", fd=9, count=8, ret=8, **EVENTFD),    # the application reads it
        line(b"python3", syscall="read", fd=9, count=8, ret=-11, **EVENTFD),  # nothing there: EAGAIN
        line(b"python3", syscall="read", fd=3, count=4096, ret=13),  # a file: stays
        line(b"python3", syscall="read", fd=9, count=8, ret=8, ino=99, dev=2049, mode=0o100644),  # a file
        line(b"python3", syscall="read", fd=9, count=8, ret=8, pid=43, **EVENTFD),  # another process: stays
    ]))
    got = [(e["pid"], e["fd"], e["count"], e["file_type"]) for e in map(json.loads, out.events["read"])]
    assert got == [(42, 3, 4096, "chr"), (42, 9, 8, "reg"), (43, 9, 8, "anon")] and "write" not in out.events
    assert (p.events, p.excluded) == (4, 3)


@pytest.mark.unit
def test_hostile_names_are_decoded_not_parsed():
    for name, want in [(b'a b"c\\d%s\te\nf', 'a b"c\\d%s\te\nf'), (b"\xff\xfebad", "\\xff\\xfebad"),
                       (b'x"}\\n"}', 'x"}\\n"}'), (b"\x01\x1f\r", "\x01\x1f\r"),
                       (b'","pid":1,"x":"', '","pid":1,"x":"'), (b"\xc3\xa9t\xc3\xa9", "été"),
                       (b"\\x41\xff", "\\x5cx41\\xff"), (b"", "")]:
        (ev,) = parse(line(name))[1]
        obj = json.loads(ev)
        assert obj["comm"] == want and obj["pid"] == 42 and set(obj) == FIELDS
        assert record.name_bytes(obj["comm"]) == name[:15]


@pytest.mark.unit
def test_lost_ready_attach_flush_and_malformed_lines_are_counted():
    p = parser()
    data = b"\n".join([b"Attaching 5 probes...", b"syswatch-ready", b"syswatch-flush", b"Lost 17 events",
                       b"Lost 3 events", b"garbage", line(b"x")[:-3] + b" x", line(b"x").replace(b" 42 ", b" 042 "),
                       b"syswatch-kick x 1", line(b"x", syscall="write").replace(b"0 1 ", b"0 9 ", 1),
                       b"Lost many events", line(b"ok")])
    out = p.parse(data)
    assert (len(out.events.get("read", [])), len(out.events["write"])) == (0, 2)
    assert (p.reported_lost, p.lost, out.ready) == (20, 20, True)
    assert p.malformed == 5, out.malformed
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
    p.parse(b"Lost 10 events")                                        # bpftrace reports them later: not twice
    assert p.lost == 10
    p.parse(b"Lost 2 events")                                         # lost kick lines: not events
    assert p.lost == 10
    p.parse(b"\n".join([line(b"b", cpu=1)] * 2 + [kick(1, 9), kick(0, 25)]))   # CPU 1: 9 printed, 6 arrived
    assert p.lost == 13
    p.rules = Rules(pids=frozenset({42}))
    p.parse(b"\n".join([line(b"a", cpu=0)] + [kick(0, 26)]))      # excluded, but it arrived
    assert p.lost == 13 and p.excluded == 1
    p.parse(b"\n".join([line(b"a", cpu=0, flags=0)] + [kick(0, 27)]))   # unreadable, but it arrived
    assert p.lost == 13 and p.unreadable == 1


@pytest.mark.unit
def test_bpftrace_s_count_minus_lost_kicks_counts_once_kicks_stop():
    """A stopped bpftrace sends no kicks: its own loss count is all there is, less the kick lines
    it lost (numbered kicks show the gaps); status never steps back."""
    clock = Clock()
    p = parser(clock=clock)
    p.parse(b"\n".join([line(b"a", cpu=0)] * 3 + [kick(0, 3, 1), kick(0, 8, 4)]))   # kicks 2, 3 lost
    assert p.lost == 5
    p.parse(b"Lost 40 events")                                        # 5 + 2 kicks + 33 after the last kick
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
    p = parser(kick_cpus=[0, 1], clock=clock)
    p.parse(b"syswatch-ready")
    assert p.stale_cpus() == [] and p.lost == 0
    p.parse(b"\n".join([line(b"a", cpu=1)] * 3 + [b"Lost 7 events"]))
    clock.now += KICK_STALE_S + 1
    p.parse(kick(0, 0, 1))                                            # CPU 0 kicks, CPU 1 never did
    assert p.stale_cpus() == [1]
    assert p.lost == 7                                                # what bpftrace counted on CPU 1
    p.parse(kick(1, 10, 1))                                           # CPU 1 comes back: 10 printed, 3 arrived
    assert p.stale_cpus() == [] and p.lost == 7


@pytest.mark.unit
def test_counts_mode_and_ring_buffer_expect_no_kicks():
    clock = Clock()
    p = parser(mode="counts", kick_cpus=[0, 1], clock=clock)
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
def test_ring_buffer_losses_come_from_the_kicks_not_bpftrace_s_count():
    """Issue 24: bpftrace 0.18+'s one ring buffer counts every line it dropped (flush markers, the
    open probe's file-naming lines, kicks) as a lost event, so its count over-counts; the kicks
    count events only, and END's last kick (behind every event in the one buffer) closes the last
    second, so bpftrace's count is not used even once the kicks stop."""
    clock = Clock()
    p = parser(kick_cpus=[0, 1], clock=clock, ring_buffer=True)
    p.parse(b"syswatch-ready")
    p.parse(b"\n".join([line(b"a", cpu=0)] * 4 + [line(b"b", cpu=1)] * 2 + [kick(0, 6, 1), kick(1, 2, 1)]))
    p.parse(b"Lost 30 events")                                        # 2 events + 28 naming and flush lines
    assert p.lost == 2
    p.parse(b"\n".join([line(b"a", cpu=0)] * 3 + [kick(0, 12, 2), kick(1, 5, 2)]))   # END: the last kicks
    assert p.lost == 2 + 3 + 3
    clock.now += KICK_STALE_S + 1                                     # bpftrace stopped
    assert p.stale_cpus() == [0, 1] and p.lost == 8
    p0 = parser(kick_cpus=[0], clock=clock)                           # 0.17's perf buffers: no END order
    p0.parse(b"\n".join([b"syswatch-ready", line(b"a", cpu=0), kick(0, 1, 1), b"Lost 9 events"]))
    clock.now += KICK_STALE_S + 1
    assert p0.lost == 9


@pytest.mark.unit
def test_negative_fd_is_valid_json():
    (ev,) = parse(line(b"x", fd=-1, ret=-9, ino=0, dev=0, mode=0))[1]
    assert json.loads(ev)["fd"] == -1


# --- files --------------------------------------------------------------------------------------

def open_lines(pid: int, tid: int, fd: int, path: bytes, ino: int, dev: int, mode: int = 0o100644,
               namekey: int = 9, chunk: int = 120, complete: bool = True) -> list[bytes]:
    """An open's lines as the open probe prints them: the file, its components leaf first, the end."""
    parts = [p for p in path.split(b"/") if p][::-1]
    out = [b"syswatch-open %d %d %d %d %d %d %d" % (pid, tid, fd, ino, dev, mode, namekey)]
    for part in parts:
        out.append(b"syswatch-name %d %d %s" % (tid, len(part), part[:chunk].hex(" ").encode()))
        for at in range(chunk, len(part), chunk):
            out.append(b"syswatch-name+ %d %s" % (tid, part[at:at + chunk].hex(" ").encode()))
    out.append(b"syswatch-opened %d %d %d" % (tid, len(parts), 1 if complete else 0))
    return out


REG = dict(ino=555, dev=266338304, mode=0o100644)


@pytest.mark.unit
def test_an_open_names_its_fd_and_the_name_key_catches_renames():
    p = parser()
    data = open_lines(42, 43, 7, b"/tmp/d/abc", 555, 266338304, namekey=9) + [
        line(b"x", "read", fd=7, **REG),
        line(b"x", "read", fd=7, flags=3, **REG),                   # deleted while open
        line(b"x", "read", fd=7, namekey=10, **REG),                # renamed: the old name is not used
        line(b"x", "read", fd=8, **REG),                            # dup'ed fd: the same file by (dev, ino)
        line(b"x", "read", fd=7, ino=556, dev=266338304, mode=0o100644)]   # fd reused for another file
    paths = [json.loads(e)["path"] for e in p.parse(b"\n".join(data)).events["read"]]
    assert paths == ["/tmp/d/abc", "/tmp/d/abc (deleted)", "", "/tmp/d/abc", ""]
    assert json.loads(p.parse(line(b"x", "read", fd=7, **REG)).events["read"][0])["dev"] == 65024


@pytest.mark.unit
def test_an_open_in_the_same_chunk_names_events_printed_before_it_on_another_cpu():
    """bpftrace 0.17 reads per-CPU buffers in turn: a read on CPU 1 can come out before the open on
    CPU 0 that it follows. The chunk's open lines are read before its events are built."""
    p = parser()
    data = [line(b"x", "read", fd=7, cpu=1, **REG)] + open_lines(42, 43, 7, b"/srv/f", 555, 266338304)
    (ev,) = p.parse(b"\n".join(data)).events["read"]
    assert json.loads(ev)["path"] == "/srv/f"


@pytest.mark.unit
@pytest.mark.parametrize("raw", [b"new\nline", b'q"uote\\back', b"\xff\xfe", b"n" * 255, b"\\x41"])
def test_hostile_path_components_round_trip(raw):
    p = parser()
    data = open_lines(42, 43, 7, b"/tmp/" + raw + b"/" + raw, 555, 266338304) + [line(b"x", "read", fd=7, **REG)]
    (ev,) = p.parse(b"\n".join(data)).events["read"]
    path = json.loads(ev)["path"]
    assert record.name_bytes(path) == b"/tmp/" + raw + b"/" + raw and "\n" not in ev.decode()


@pytest.mark.unit
def test_an_incomplete_or_damaged_open_names_nothing():
    p = parser()
    lost_component = open_lines(42, 43, 7, b"/a/b", 555, 266338304)
    del lost_component[1]
    too_deep = open_lines(42, 44, 8, b"/a/b", 555, 266338304, complete=False)
    short = open_lines(42, 45, 9, b"/a/" + b"n" * 200, 555, 266338304)
    short[1] = short[1][:-9]                                        # a chunk shorter than its length says
    data = lost_component + too_deep + short + [line(b"x", "read", fd=fd, **REG) for fd in (7, 8, 9)]
    assert [json.loads(e)["path"] for e in p.parse(b"\n".join(data)).events["read"]] == ["", "", ""]


@pytest.mark.unit
def test_pseudo_files_are_named_from_their_inode_or_the_kernel_s_name():
    p = parser()
    data = [line(b"x", "read", fd=3, ino=99, dev=K.pipe_dev, mode=0o10600),
            line(b"x", "read", fd=4, ino=98, dev=K.sock_dev, mode=0o140777),
            line(b"x", "read", fd=5, ino=97, dev=K.anon_dev, mode=0o600, kname=b"[eventfd]"),
            line(b"x", "read", fd=6, ino=96, dev=K.memfd_dev, mode=0o100777, flags=3, kname=b"memfd:a\nb")]
    evs = [json.loads(e) for e in p.parse(b"\n".join(data)).events["read"]]
    assert [(e["file_type"], e["path"]) for e in evs] == [
        ("fifo", "pipe:[99]"), ("sock", "socket:[98]"), ("anon", "anon_inode:[eventfd]"),
        ("reg", "/memfd:a\nb (deleted)")]
    assert evs[1]["sock"] == "" and all("sock" not in e for e in evs if e["file_type"] != "sock")


@pytest.mark.unit
def test_no_paths_leaves_names_out_but_keeps_types():
    p = Parser("events", SYSCALLS, latency=False, files=Files(K, paths=False, proc="/nonexistent"))
    data = open_lines(42, 43, 7, b"/tmp/abc", 555, 266338304) + [
        line(b"x", "read", fd=7, **REG), line(b"x", "read", fd=4, ino=98, dev=K.sock_dev, mode=0o140777)]
    evs = [json.loads(e) for e in p.parse(b"\n".join(data)).events["read"]]
    assert [(e["file_type"], e["path"], e.get("sock")) for e in evs] == [("reg", "", None), ("sock", "", "")]


@pytest.mark.unit
def test_path_prefixes_filter_before_publishing():
    p = parser(path_prefixes=("/var/lib/", "pipe:"))
    data = open_lines(42, 43, 7, b"/var/lib/x", 555, 266338304) + open_lines(42, 43, 8, b"/etc/x", 556, 266338304) + [
        line(b"x", "read", fd=7, **REG), line(b"x", "read", fd=8, ino=556, dev=266338304, mode=0o100644),
        line(b"x", "read", fd=3, ino=99, dev=K.pipe_dev, mode=0o10600)]
    evs = [json.loads(e)["path"] for e in p.parse(b"\n".join(data)).events["read"]]
    assert evs == ["/var/lib/x", "pipe:[99]"] and p.filtered == 1 and p.events == 2


@pytest.mark.unit
def test_the_name_caches_are_bounded(monkeypatch):
    """A process opening a million files must not grow the collector without limit: the caches
    keep their entry and character bounds (the oldest names go; a later event re-resolves)."""
    from syswatch.collector import files as files_mod
    from syswatch.collector import parser as parser_mod
    monkeypatch.setattr(files_mod, "MAX_FDS", 500)
    monkeypatch.setattr(files_mod, "MAX_INODES", 500)
    monkeypatch.setattr(files_mod, "MAX_NAME_CHARS", 20_000)
    monkeypatch.setattr(parser_mod, "FILE_CACHE_MAX", 300)
    p = parser()
    long = b"/" + b"d" * 200 + b"/"
    for k in range(0, 5000, 100):
        data = []
        for fd in range(k, k + 100):
            data += open_lines(42, 43, fd, long + b"f%d" % fd, 10_000 + fd, 266338304)
            data.append(line(b"x", "read", fd=fd, ino=10_000 + fd, dev=266338304, mode=0o100644))
        p.parse(b"\n".join(data))
        assert len(p.files.by_fd) <= 500 and p.files.by_fd.weight <= 20_000 + 300
        assert len(p.files.by_inode) <= 500 and len(p._file_cache) <= 300
    (ev,) = p.parse(b"\n".join(open_lines(42, 43, 4999, long + b"last", 4, 266338304) + [
        line(b"x", "read", fd=4999, ino=4, dev=266338304, mode=0o100644)])).events["read"]
    assert json.loads(ev)["path"].endswith("/last")


# --- properties -----------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise_and_yield_only_valid_events(data):
    p = parser()
    out = p.parse(data)
    events = [e for batch in out.events.values() for e in batch]
    for ev in events:
        assert set(json.loads(ev)) >= FIELDS - {"sock"}
    assert p.events == len(events)


@settings(max_examples=300, deadline=None)
@given(name=st.binary(max_size=20), pid=st.integers(0, 2**22), tid=st.integers(0, 2**22),
       uid=st.integers(0, 2**32 - 1), fd=st.integers(-1, 2**31 - 1), count=st.integers(0, 2**64 - 1),
       ret=st.integers(-4095, 2**62), syscall=st.sampled_from(SYSCALLS), junk=st.binary(max_size=60),
       latency=st.booleans())
def test_any_name_keeps_every_other_field(name, pid, tid, uid, fd, count, ret, syscall, junk, latency):
    p = parser(latency=latency)
    data = junk.replace(b"\n", b"") + b"\n" + line(name, syscall, pid, tid, uid, fd, count, ret=ret, latency=latency)
    (ev,) = p.parse(data).events[syscall]
    obj = json.loads(ev)
    want = {"ts_ns": 1_700_000_000_000_000_000, "pid": pid, "tid": tid, "uid": uid,
            "syscall": syscall, "fd": fd, "count": count, "ret": ret, "cgroup_id": 1,
            "container_id": "", "container_name": "", "comm": decode_comm(name[:15]), "file_type": "chr",
            "path": "", "ino": 4, "dev": 6, **({"lat_ns": 777} if latency else {})}
    assert obj == want


# --- counts mode -----------------------------------------------------------------------------------

def stats_line(mapname: str, entries: dict) -> bytes:
    return json.dumps({"type": "stats", "data": {mapname: entries}}).encode()


def map_line(mapname: str, entries: dict) -> bytes:
    return json.dumps({"type": "map", "data": {mapname: entries}}).encode()


INTERVAL = b'{"type": "printf", "data": "syswatch-interval\\n"}'


def counts(p: Parser, *lines: bytes) -> list:
    return p.parse(b"\n".join(lines)).intervals


def stat(count: int, total: int) -> dict:
    return {"count": count, "average": total // max(count, 1), "total": total}


@pytest.mark.unit
def test_counts_rows_files_and_the_rest_add_up():
    """Rows per process and per file from one keyed map; the top files plus the rest equal the rows."""
    p = parser(mode="counts", containers=FakeContainers(), top_files=2)
    opens = [envelope(x + b"\n") for x in open_lines(12, 12, 3, b"/data/a", 100, 266338304)]
    (iv,) = counts(p, b'{"type": "attached_probes", "data": {"probes": 5}}', *opens,
                   stats_line("@calls_a", {"12,1,0,3,100,266338304,33188,bash": stat(3, 30),
                                           "13,77,0,4,101,266338304,33188,a,b c": stat(1, 9),
                                           "12,1,1,1,4,6,8630,bash": stat(2, 52),
                                           "12,1,0,5,102,266338304,33188,bash": stat(1, 1)}),
                   map_line("@errors_a", {"13,77,0,4,101,266338304,33188,11,a,b c": 1}),
                   stats_line("@total_a", stat(7, 92)), map_line("@unreadable", 0), b"", INTERVAL)
    assert iv.rows == [
        {"pid": 12, "comm": "bash", "container_id": "", "container_name": "", "syscall": "read", "calls": 4,
         "bytes": 31, "errors": 0},
        {"pid": 13, "comm": "a,b c", "container_id": "0123456789ab", "container_name": 'we"b', "syscall": "read",
         "calls": 1, "bytes": 9, "errors": 1, "errnos": {"EAGAIN": 1}},
        {"pid": 12, "comm": "bash", "container_id": "", "container_name": "", "syscall": "write", "calls": 2,
         "bytes": 52, "errors": 0}]
    assert [(f["path"], f["file_type"], f["syscall"], f["calls"], f["bytes"]) for f in iv.files] == [
        ("", "chr", "write", 2, 52), ("/data/a", "reg", "read", 3, 30)]
    assert iv.files_rest == {"files": 2, "calls": 2, "bytes": 10, "errors": 1}
    for k in ("calls", "bytes", "errors"):
        assert sum(r[k] for r in iv.rows) == sum(f[k] for f in iv.files) + iv.files_rest[k]
    assert counts(p, INTERVAL)[0].rows == []
    assert p.events == 7 and p.unattributed == 0


@pytest.mark.unit
def test_counts_calls_a_full_map_left_out_go_to_the_rest():
    p = parser(mode="counts", top_files=5)
    (iv,) = counts(p, stats_line("@calls_b", {"12,1,0,3,100,266338304,33188,bash": stat(3, 30)}),
                   stats_line("@total_b", stat(10, 100)), INTERVAL)
    assert iv.files_rest["calls"] == 7 and iv.files_rest["bytes"] == 70 and p.unattributed == 7


@pytest.mark.unit
def test_counts_latency_sums_only_with_latency():
    p = parser(mode="counts", latency=True)
    (iv,) = counts(p, stats_line("@calls_a", bucketed("12,1,0,3,100,266338304,33188,bash", 3000, 3000, 3000,
                                                      nbytes=10)),
                   map_line("@lat_a", {"12,1,0,3,100,266338304,33188,bash": 9000}), INTERVAL)
    assert iv.rows[0]["lat_ns_sum"] == 9000 and iv.files[0]["lat_ns_sum"] == 9000
    (iv,) = counts(parser(mode="counts"), stats_line("@calls_a", {"12,1,0,3,100,266338304,33188,bash": stat(3, 30)}),
                   INTERVAL)
    assert "lat_ns_sum" not in iv.rows[0] and "lat_ns_sum" not in iv.files[0]
    assert "lat_hist" not in iv.rows[0] and "errnos" not in iv.rows[0]


def bucketed(key: str, *lat_ns: int, nbytes: int = 0) -> dict:
    """@calls' entries with --latency for the calls of ``key`` (pid,...,mode,name) that took
    ``lat_ns``, each moving ``nbytes``: the latency bucket before the name, as the program keys them."""
    head, name = key.split(",", 7)[:7], key.split(",", 7)[7]
    bs = [latency.bucket(n) for n in lat_ns]
    return {",".join(head + [str(i), name]): stat(bs.count(i), bs.count(i) * nbytes) for i in sorted(set(bs))}


@pytest.mark.unit
def test_counts_latency_buckets_and_errnos_per_row():
    """A process row merges its files' bucketed calls and errno counts; the buckets add up to the
    calls, names stay whole after commas."""
    p = parser(mode="counts", latency=True)
    (iv,) = counts(p, stats_line("@calls_a", {**bucketed("12,1,0,3,100,266338304,33188,a,b", 5_000_000, 40_000_000, 0,
                                                         nbytes=10),
                                              **bucketed("12,1,0,9,0,0,0,a,b", 9, 10, 11, 10)}),
                   map_line("@errors_a", {"12,1,0,9,0,0,0,9,a,b": 3, "12,1,0,9,0,0,0,11,a,b": 1}),
                   map_line("@lat_a", {"12,1,0,3,100,266338304,33188,a,b": 45_000_000, "12,1,0,9,0,0,0,a,b": 40}),
                   INTERVAL)
    (row,) = iv.rows
    want = [0] * 27
    want[0], want[4], want[23], want[26] = 1, 4, 1, 1
    assert row["lat_hist"] == want and sum(row["lat_hist"]) == row["calls"] == 7 and row["bytes"] == 30
    assert row["lat_ns_sum"] == 45_000_040 and iv.files[0]["calls"] == 3
    assert row["errnos"] == {"EBADF": 3, "EAGAIN": 1} and row["errors"] == 4 and p.malformed == 0
    for bad in ("12,1,0,9,0,0,0,65,a", "12,1,0,9,0,0,0,-1,a", "12,1,0,9,0,0,0,x,a", "12,1,0,9,0,0,0,a"):
        p = parser(mode="counts", latency=True)
        counts(p, stats_line("@calls_a", {bad: stat(1, 0)}), INTERVAL)
        assert p.malformed == 1, bad


@pytest.mark.unit
def test_the_program_buckets_as_shared_latency():
    """The kernel's bucket statements, run by hand on the values that bound every bucket, give
    shared/latency.py's bucket (the bit length) for each."""
    import re

    from syswatch.collector.program import _log2_bucket
    text = _log2_bucket("$l", "$lb")

    def run(ns: int) -> int:
        env = {"$l": ns}
        for stmt in re.findall(r"(?:if \(.*?\) \{ .*? \}|[^;\n]+;)", text):
            m = re.fullmatch(r"if \(\$v >= (0x[0-9a-f]+)\) \{ (.*) \}", stmt)
            if m and env["$v"] < int(m.group(1), 16):
                continue
            for assign in (m.group(2) if m else stmt).split(";"):
                if assign.strip():
                    var, expr = assign.split("=", 1)
                    expr = re.sub(r"\(uint64\)", "", expr).replace("$", "d_")
                    env[var.strip()] = eval(expr, {}, {k.replace("$", "d_"): v for k, v in env.items()})
        return env["$lb"]

    values = sorted({0, 1, 2**64 - 1} | {v for i in range(64) for v in (2**i, 2**i - 1, 2**i + 1)})
    assert [run(v) for v in values] == [latency.bucket(v) for v in values]


@pytest.mark.unit
def test_counts_high_bytes_as_bpftrace_escapes_them():
    # bpftrace 0.17 prints byte 0xff of a name as \uffffffff, 0xc3 as \uffffffc3 (seen on this kernel)
    raw = b'{"type": "stats", "data": {"@calls_b": {"7,1,1,1,4,6,8630,a\\\\b\\t\\uffffffff\\uffffffc3\\uffffffa9' \
          b'\\\\uffffffc3": {"count": 1, "average": 1, "total": 1}}}}'
    p = parser(mode="counts")
    (iv,) = counts(p, raw, INTERVAL)
    assert iv.rows[0]["comm"] == "a\\b\t\\xff\u00e9\\uffffffc3"
    assert p.malformed == 0


@pytest.mark.unit
def test_counts_lost_and_malformed():
    p = parser(mode="counts")
    out = p.parse(b"\n".join([b'{"type": "lost_events", "data": {"events": 4}}', b"not json",
                              stats_line("@open_a", {"1,1,0,1,1,1,1,x": stat(1, 1)}),
                              stats_line("@calls_a", {"x,1,0,1,1,1,1,y": stat(1, 1)}),
                              stats_line("@calls_a", {"1,1,9,1,1,1,1,y": stat(1, 1)}),
                              map_line("@errors_a", {"1,1,0,1,1,1,1,9,y": -5}),
                              map_line("@errors_a", {"1,1,0,1,1,1,1,y": 1}),
                              b'{"type": "lost_events", "data": {"events": "x"}}']))
    assert p.lost == 4 and p.malformed == 7 and len(out.malformed) == MALFORMED_KEPT
    assert out.malformed[0] == b"not json"


@pytest.mark.unit
def test_counts_unreadable_calls_are_counted():
    p = parser(mode="counts")
    counts(p, map_line("@unreadable", 3), INTERVAL, map_line("@unreadable", 2))
    assert p.unreadable == 5


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_counts_parser_never_raises(data):
    p = parser(mode="counts")
    for iv in p.parse(data).intervals:
        assert isinstance(iv.rows, list)


@pytest.mark.unit
def test_a_file_opened_before_the_probes_keeps_its_name_after_it_is_closed(tmp_path):
    """No open line names a file opened before bpftrace attached: /proc is read once at ready, so a
    call on it is named even if the process closes it (or exits) before its line is read; the same
    fd number holding another file later gets "" (unknown), never that name."""
    f = tmp_path / "before.txt"
    f.write_bytes(b"x")
    fd = os.open(f, os.O_RDONLY)
    st = os.fstat(fd)
    files = Files(K, pids=(os.getpid(),))
    assert files.prime() >= 1
    os.close(fd)
    dev = record.kernel_dev(st.st_dev)
    assert files.name(os.getpid(), fd, st.st_ino, dev, 9, False)[1] == str(f)
    assert files.name(os.getpid(), fd, st.st_ino + 1, dev, 9, False)[1] == ""
