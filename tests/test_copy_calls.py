"""The calls that move bytes without read or write (issue 30): copy_file_range, sendfile, splice, tee,
preadv/pwritev/preadv2/pwritev2.

Ground truth is strace -f -y: `cp` of a 6 MB file (copy_file_range), Python's socket.sendfile of a file to
a local TCP peer (sendfile), os.splice from a file into a pipe and out to a file, tee between two pipes,
os.preadv/os.pwritev with and without RWF_* flags. Every traced call's syscall, source fd and path,
destination fd and path, count and ret equal strace's, call for call, with both bpftrace versions; a
counts collector watching the same run adds up the same bytes, once per call. The unit tests check the
line the program prints for a two-fd call, what the parser and the views make of it, and --syscalls.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.api import ApiInProcess, Feed, event, metric
from harness.collector import events_and_counts
from syswatch.collector import cli
from syswatch.collector.files import Files
from syswatch.collector.parser import Parser
from syswatch.collector.program import REFERENCE_KERNEL as K
from syswatch.shared import protocol, record
from syswatch.shared.selection import Selection
from syswatch.subscribers.lines import event_line
from tests.conftest import have, is_root, require

COPY_CALLS = "copy_file_range,sendfile,splice,tee,preadv,pwritev,preadv2,pwritev2"

# --- unit: the line, the parser, the views --------------------------------------------------------------
REG = dict(dev=266338304, mode=0o100644)


def _open(pid: int, fd: int, path: bytes, ino: int) -> list[bytes]:
    parts = [p for p in path.split(b"/") if p][::-1]
    return ([b"syswatch-open %d %d %d %d %d %d 9" % (pid, pid, fd, ino, REG["dev"], REG["mode"])]
            + [b"syswatch-name %d %d %s" % (pid, len(p), p.hex(" ").encode()) for p in parts]
            + [b"syswatch-opened %d %d 1" % (pid, len(parts))])


def _line(syscall: str, fd: int, fd_out: int, ino: int, ino_out: int, count: int, ret: int,
          out_dev: int = REG["dev"], out_mode: int = REG["mode"]) -> bytes:
    c0, c1 = record.comm_words(b"cp")
    vals = dict(cpu=0, idx=protocol.SYSCALLS.index(syscall), ts=1_700_000_000_000_000_000, pid=42, tid=42, uid=0,
                fd=fd, count=count, ret=ret, cgroup=1, ino=ino, flags=1, namekey=9, comm0=c0, comm1=c1, **REG,
                fd_out=fd_out, ino_out=ino_out, dev_out=out_dev, mode_out=out_mode, flags_out=0, namekey_out=9)
    return record.render_line(vals, latency=False)


def _parse(lines: list[bytes], **kw) -> tuple[Parser, dict]:
    p = Parser("events", list(protocol.SYSCALLS), files=Files(K, proc="/nonexistent"), **kw)
    out = p.parse(b"\n".join(lines))
    return p, {sc: [json.loads(e) for e in evs] for sc, evs in out.events.items()}


@pytest.mark.unit
def test_a_two_fd_call_carries_both_files_through_every_view():
    """copy_file_range(3</src/a>, 4</dst/b>, 65536) = 65536: the event names both ends, passes the
    protocol's check, shows in strace's shape in the tail, and a path or type filter matches either end;
    sendfile shows out before in (strace's order); a bad destination fd is unknown, never another file."""
    opens = _open(42, 3, b"/src/a", 700) + _open(42, 4, b"/dst/b", 701)
    lines = [_line("copy_file_range", 3, 4, 700, 701, 65536, 65536),
             _line("sendfile", 3, 5, 700, 88, 4096, 4096, out_dev=K.sock_dev, out_mode=0o140777),
             _line("splice", 3, 999, 700, 0, 10, -errno.EBADF, out_dev=0, out_mode=0)]
    p, evs = _parse(opens + lines)
    cfr, = evs["copy_file_range"]
    assert (cfr["fd"], cfr["path"], cfr["file_type"], cfr["fd_out"], cfr["path_out"], cfr["file_type_out"],
            cfr["count"], cfr["ret"]) == (3, "/src/a", "reg", 4, "/dst/b", "reg", 65536, 65536)
    assert protocol.clean_event(cfr, "copy_file_range") == cfr
    assert "copy_file_range(3</src/a>, 4</dst/b>, 65536) = 65536" in event_line(cfr, "h")
    sf, = evs["sendfile"]
    assert (sf["fd_out"], sf["path_out"], sf["file_type_out"]) == (5, "socket:[88]", "sock")
    assert "sendfile(5<socket:[88]>, 3</src/a>, 4096) = 4096" in event_line(sf, "h")
    bad, = evs["splice"]
    assert (bad["fd_out"], bad["path_out"], bad["file_type_out"], bad["ret"]) == (999, "", "unknown", -9)
    assert Selection(paths=("/dst",)).matches(cfr) and not Selection(paths=("/dst",)).matches(sf)
    assert Selection(file_types=("sock",)).matches(sf)
    # the collector's --path: either end keeps the call
    _, kept = _parse(opens + lines, path_prefixes=("/dst",))
    assert [e["syscall"] for v in kept.values() for e in v] == ["copy_file_range"]
    # ... by whole components, the rule of tail and the API (shared.selection.path_matches)
    _, kept = _parse(opens + lines, path_prefixes=("/ds",))
    assert [e["syscall"] for v in kept.values() for e in v] == []
    _, kept = _parse(opens + lines, path_prefixes=("socket:",))
    assert [e["syscall"] for v in kept.values() for e in v] == ["sendfile"]


@pytest.mark.unit
def test_syscalls_option_takes_all_and_names_the_valid_ones():
    assert cli.syscall_list("all") == list(protocol.SYSCALLS)
    assert cli.syscall_list("sendfile,read") == ["read", "sendfile"]
    with pytest.raises(ValueError, match="unknown 'sendfile64'; valid: read, write, .*, tee \\(or all"):
        cli.syscall_list("read,sendfile64")
    assert protocol.DEFAULT_SYSCALLS == ("read", "write")
    assert set(protocol.TWO_FD_SYSCALLS) <= set(protocol.SYSCALLS)
    assert max(len(s) for s in protocol.SYSCALLS) <= record.FIELD["syscall"].bounds


@pytest.mark.unit
def test_the_api_shows_copies_in_stats_events_and_metrics(tmp_path):
    """A host tracing --syscalls all sends a cp: /stats totals it under copy_file_range (bytes once),
    /events?syscall=copy_file_range gives both ends, /metrics labels it; a counts row of sendfile
    passes the protocol and adds up too."""
    api = ApiInProcess(tmp_path / "ips.sqlite3", recent_events=100)
    feed = Feed(api)
    feed.status(syscalls=list(protocol.SYSCALLS))
    cp = {**event(comm="cp", syscall="copy_file_range", fd=3, count=2**63 - 2**30, ret=6_000_000),
          "path": "/src/a", "file_type": "reg", "fd_out": 4, "path_out": "/dst/a", "file_type_out": "reg"}
    feed.events([cp, {**cp, "ret": 0}])
    totals = api.get("/stats").json()["totals"]
    assert (totals["copy_file_range"]["calls"], totals["copy_file_range"]["bytes"]) == (2, 6_000_000)
    assert totals["read"]["calls"] == totals["write"]["calls"] == 0
    got = api.get("/events", params={"syscall": "copy_file_range"}).json()["events"]
    assert sorted((e["fd"], e["path"], e["fd_out"], e["path_out"], e["ret"]) for e in got) == [
        (3, "/src/a", 4, "/dst/a", 0), (3, "/src/a", 4, "/dst/a", 6_000_000)]
    assert api.get("/events", params={"syscall": "sendfile64"}).status_code == 400
    text = api.get("/metrics").text
    assert metric(text, "syswatch_moved_bytes_total", host="testhost", syscall="copy_file_range") == 6_000_000
    assert metric(text, "syswatch_events_total", host="testhost", syscall="tee") == 0     # traced, no call yet
    row = {"pid": 7, "comm": "nginx", "container_id": "", "syscall": "sendfile", "calls": 3, "bytes": 9000,
           "errors": 0}
    assert protocol.clean_row(row)["syscall"] == "sendfile"


# --- real: against strace ------------------------------------------------------------------------------
_STRACE = re.compile(r"(\d+) +(\w+)\((.*)\) += (-?\d+)(?: (E[A-Z0-9]+) .*)?")
_FD = r"(-?\d+)(?:<([^>]*)>)?"
_OFF = r"(?:NULL|\[\d+\](?: => \[\d+\])?)"
_ARGS = {"copy_file_range": re.compile(rf"{_FD}, {_OFF}, {_FD}, {_OFF}, (\d+), [\w|]+"),
         "splice": re.compile(rf"{_FD}, {_OFF}, {_FD}, {_OFF}, (\d+), [\w|]+"),
         "tee": re.compile(rf"{_FD}, {_FD}, (\d+), [\w|]+"),
         "sendfile": re.compile(rf"{_FD}, {_FD}, {_OFF}, (\d+)")}
_VECTOR = re.compile(rf"{_FD}, \[.*\], (\d+), \d+(?:, [\w|]+)?")


def strace_calls(path: Path) -> dict[int, list[tuple]]:
    """pid -> [(syscall, fd, path, fd_out, path_out, count, ret)] in order, from strace -f -y -s 0."""
    calls: dict[int, list[tuple]] = {}
    for line in path.read_text(errors="surrogateescape").splitlines():
        m = _STRACE.fullmatch(line)
        assert m or "+++" in line or "---" in line, f"strace line not understood: {line}"
        if not m:
            continue
        pid, syscall, args, ret, err = m.groups()
        a = (_ARGS.get(syscall) or _VECTOR).fullmatch(args)
        assert a, f"{syscall} arguments not understood: {args}"
        if syscall == "sendfile":
            fd_out, path_out, fd, fpath, count = a.groups()
        elif syscall in _ARGS:
            fd, fpath, fd_out, path_out, count = a.groups()
        else:
            (fd, fpath, count), fd_out, path_out = a.groups(), None, None
        calls.setdefault(int(pid), []).append(
            (syscall, int(fd), fpath or "", None if fd_out is None else int(fd_out),
             None if fd_out is None else path_out or "", int(count), -getattr(errno, err) if err else int(ret)))
    return calls


WORKLOAD = r"""
import ctypes, os, socket, sys, threading
with open("/proc/self/comm", "w") as f:
    f.write("swcopy")                                # the collector's -n (threads inherit it)
os.chdir(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
src = os.open("big.bin", os.O_RDONLY)
dst = os.open("spliced.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
r, w = os.pipe()
for _ in range(3):                                   # file -> pipe -> file
    os.splice(src, w, 65536)
    os.splice(r, dst, 65536)
r2, w2 = os.pipe()
os.write(w, b"t" * 100)
libc.tee(r, w2, 100, 0)                              # pipe -> pipe, nothing consumed
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname()); peer, _ = srv.accept()
got = []
reader = threading.Thread(target=lambda: [got.append(len(b)) for b in iter(lambda: peer.recv(1 << 20), b"")])
reader.start()
with open("big.bin", "rb") as f:
    cli.sendfile(f)                                  # os.sendfile in a loop, until it returns 0
cli.shutdown(socket.SHUT_WR)
reader.join()
assert sum(got) == os.path.getsize("big.bin"), sum(got)
buf = bytearray(4096)
os.preadv(src, [buf, bytearray(100)], 0)
os.preadv(src, [buf], 8192, os.RWF_HIPRI)
os.pwritev(dst, [b"a" * 10, b"b" * 20], 0)
os.pwritev(dst, [b"c" * 30], 0, os.RWF_DSYNC)
for fn, args in ((libc.preadv, (src, (ctypes.c_char * 1)(), 0, 0)), (libc.copy_file_range, (src, None, 999, None,
                                                                                               10, 0))):
    fn(*args)                                        # a NULL iovec array with 0 entries; a bad destination
"""


@pytest.mark.slow
def test_copy_calls_equal_strace_and_counts_add_up(tmp_path, bpftrace_bin):
    """Issue 30: cp, sendfile, splice, tee and the vector calls under strace -f -y; the collector's events of
    each process are strace's calls, in order (syscall, fd, path, fd_out, path_out, count, ret), and a counts
    collector watching the same run publishes the same calls and bytes per syscall."""
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    for tool in ("strace", "cp"):
        require(have(tool), f"install {tool}: apt-get install -y {tool} (scripts/setup-test.sh does it)")
    (tmp_path / "big.bin").write_bytes(os.urandom(6 << 20))
    swcp = tmp_path / "swcp"
    shutil.copy(shutil.which("cp") or "cp", swcp)
    script = tmp_path / "work.py"
    script.write_text(WORKLOAD)
    args = ("--syscalls", COPY_CALLS, "--echo-rate", "0", "--bpftrace", bpftrace_bin, "-n", "swcp", "-n", "swcopy")
    with events_and_counts(tmp_path, *args) as (ev_sub, cn_sub, st0):
        want: dict[int, list[tuple]] = {}
        for name, argv in (("cp", [str(swcp), "big.bin", "copy.bin"]), ("py", ["python3", str(script), "."])):
            trace = tmp_path / f"{name}.strace"
            subprocess.run(["strace", "-f", "-qq", "-y", "-s", "0", "-e", f"trace={COPY_CALLS}", "-e", "signal=none",
                            "-o", str(trace), *argv], cwd=tmp_path, check=True, timeout=120)
            want.update(strace_calls(trace))
        assert (tmp_path / "copy.bin").read_bytes() == (tmp_path / "big.bin").read_bytes()
        total = sum(len(c) for c in want.values())
        got: list[dict] = []
        deadline = time.monotonic() + 30
        for msg in ev_sub.messages(30):
            got += [e for e in msg.events if e["pid"] in want]
            if len(got) >= total or time.monotonic() > deadline:
                break
        st1 = ev_sub.statuses[-1]
        assert st1["lost_total"] == st0["lost_total"] and st1["unreadable_total"] == 0, st1
        for pid, calls in want.items():
            mine = sorted((e for e in got if e["pid"] == pid), key=lambda e: e["ts_ns"])
            seen = [(e["syscall"], e["fd"], e["path"], e.get("fd_out"), e.get("path_out"), e["count"], e["ret"])
                    for e in mine]
            assert seen == calls, f"pid {pid}: first difference at " + next(
                (f"call {i}: collector {a} strace {b}" for i, (a, b) in enumerate(zip(seen, calls)) if a != b),
                f"the end: {len(seen)} events, {len(calls)} calls")
        kinds = Counter(c[0] for calls in want.values() for c in calls)
        assert set(kinds) >= {"copy_file_range", "sendfile", "splice", "tee", "preadv", "preadv2", "pwritev2"}, kinds
        cp_bytes = sum(c[6] for calls in want.values() for c in calls if c[0] == "copy_file_range" and c[6] > 0)
        assert cp_bytes >= 6 << 20, kinds                # cp's bytes, seen although cp never read or wrote
        # counts mode: the same calls and bytes per syscall (a two-fd call's bytes once)
        ev_sums: Counter = Counter()
        for e in got:
            ev_sums[(e["syscall"], "calls")] += 1
            ev_sums[(e["syscall"], "bytes")] += max(e["ret"], 0)
        cn_sums: Counter = Counter()
        deadline = time.monotonic() + 30
        for msg in cn_sub.messages(30):
            if msg.topic == "counts":
                for r in msg.payload["rows"]:
                    if r["comm"] in ("swcp", "swcopy"):
                        cn_sums[(r["syscall"], "calls")] += r["calls"]
                        cn_sums[(r["syscall"], "bytes")] += r["bytes"]
            if sum(v for (_, k), v in cn_sums.items() if k == "calls") >= total or time.monotonic() > deadline:
                break
        assert cn_sums == ev_sums
