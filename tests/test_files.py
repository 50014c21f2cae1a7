"""Which file, which socket (issue 22) and one probe per call (issue 24), against the real kernel.

Ground truth is strace -y/-yy: for gzip, sha256sum and an SQLite workload (pread64/pwrite64) every
traced call's syscall, fd, count, ret and path equal strace's, call for call, with both bpftrace
versions (the exit-only probe reads fd and count from the saved registers). Then each kind of fd
(pipe, UNIX socket pair, TCP to a local server, eventfd, memfd, a tty, a file deleted while open,
files opened and closed within microseconds) gets its type and name; counts mode's file rows add up
to events mode's totals; --latency measures what the entry/exit program always measured.
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

from harness.collector import CollectorProcess, StreamReader, events_and_counts
from harness.workloads import Script
from syswatch.shared import record
from tests.conftest import have, is_root, require

FAMILY = "read,write,pread64,pwrite64"
# strace -y -s 0: `1234 pread64(3</tmp/x/db>, ""..., 4096, 0) = 4096` (the buffer as "" or an address)
_STRACE = re.compile(r"(\d+) +(read|write|pread64|pwrite64)\((-?\d+)(?:<(.*)>)?, (?:\"\"(?:\.\.\.)?|0x[0-9a-f]+|NULL), "
                     r"(\d+)(?:, \d+)?\) += (-?\d+)(?: (E[A-Z0-9]+) .*)?")


@pytest.fixture
def tools():
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-host.sh does it)")
    for tool in ("strace", "gzip", "sha256sum", "sqlite3"):
        require(have(tool), f"install {tool}: apt-get install -y {tool} (scripts/setup-host.sh does it)")


def strace_calls(path: Path) -> dict[int, list[tuple]]:
    """pid -> [(syscall, fd, path, count, ret)] in order, from strace -f -y -s 0 -o PATH."""
    calls: dict[int, list[tuple]] = {}
    for line in path.read_text(errors="surrogateescape").splitlines():
        m = _STRACE.fullmatch(line)
        if not m:
            assert "unfinished" not in line and "resumed" not in line, line
            continue
        pid, syscall, fd, target, count, ret, err = m.groups()
        value = -getattr(errno, err) if err else int(ret)
        calls.setdefault(int(pid), []).append((syscall, int(fd), target or "", int(count), value))
    return calls


def expected_type(path: str) -> str:
    if path.startswith("pipe:"):
        return "fifo"
    if path.startswith("socket:"):
        return "sock"
    if not path:
        return "unknown"
    try:
        return record.file_type(os.stat(path).st_mode)
    except FileNotFoundError:                            # deleted since (SQLite's journal): a regular file
        return "reg"


def events_until(sub: StreamReader, done, timeout: float = 30) -> list[dict]:
    got: list[dict] = []
    end = None
    for msg in sub.messages(timeout):
        got += msg.events
        if end is None and done(got):
            end = time.monotonic() + 0.5          # duplicates would come now
        if end is not None and time.monotonic() >= end:
            break
    return got


def workloads(tmp: Path) -> list[tuple[str, list[str], Path]]:
    """(comm, argv, cwd): gzip, sha256sum and sqlite3 under names of their own (the collector's -n)."""
    data = tmp / "input.txt"
    data.write_bytes(b"".join(b"line %d of a file gzip and sha256sum read\n" % i for i in range(20_000)))
    sql = tmp / "work.sql"
    sql.write_text("PRAGMA page_size=4096; CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);\n"
                   + "BEGIN;\n" + "".join(f"INSERT INTO t(v) VALUES ('{'v' * 200}{i}');\n" for i in range(300))
                   + "COMMIT;\nSELECT count(*), sum(length(v)) FROM t;\nUPDATE t SET v = 'x' WHERE k % 7 = 0;\n")
    out = []
    for comm, tool, args in (("swgzip", "gzip", ["-k", "-f", "input.txt"]), ("swsha", "sha256sum", ["input.txt"]),
                             ("swsqlite", "sqlite3", ["db.sqlite", ".read work.sql"])):
        binary = tmp / comm
        shutil.copy(shutil.which(tool) or tool, binary)
        out.append((comm, [str(binary), *args], tmp))
    return out


@pytest.mark.slow
def test_every_call_equals_strace_s_fd_count_ret_and_path(tmp_path, tools, bpftrace_bin):
    """Issues 22 and 24: gzip, sha256sum and SQLite (pread64/pwrite64), each under strace -f -y; the
    collector's events of each process are strace's calls, in order: syscall, fd, count (from the saved
    registers at the exit), ret, path and type. Files are opened, read and closed within microseconds
    by processes that are gone when the collector reads their lines: the open probe names them."""
    wls = workloads(tmp_path)
    coll = CollectorProcess(tmp_path, "--syscalls", FAMILY, "--echo-rate", "0", "--bpftrace", bpftrace_bin,
                            *[a for comm, _, _ in wls for a in ("-n", comm)])
    sub = StreamReader(coll.endpoint, ("syscall.", "status"))
    try:
        st0 = sub.wait_status()
        traces = []
        for comm, argv, cwd in wls:
            out = tmp_path / f"{comm}.strace"
            subprocess.run(["strace", "-f", "-qq", "-y", "-s", "0", "-e", f"trace={FAMILY}", "-e", "signal=none",
                            "-o", str(out), *argv], cwd=cwd, check=True, stdout=subprocess.DEVNULL, timeout=120)
            traces.append((comm, strace_calls(out)))
        want = {pid: calls for _, t in traces for pid, calls in t.items()}
        total = sum(len(c) for c in want.values())
        got = events_until(sub, lambda ev: len([e for e in ev if e["pid"] in want]) >= total)
        st1 = sub.statuses[-1]
        assert st1["lost_total"] == st0["lost_total"] and st1["unreadable_total"] == 0, st1
        assert st1["latency"] is False and "lat_ns" not in got[0]
        for comm, t in traces:
            for pid, calls in t.items():
                mine = sorted((e for e in got if e["pid"] == pid), key=lambda e: e["ts_ns"])
                seen = [(e["syscall"], e["fd"], e["path"], e["count"], e["ret"]) for e in mine]
                assert seen == calls, f"{comm} (pid {pid}): first difference at " + next(
                    (f"call {i}: collector {a} strace {b}" for i, (a, b) in enumerate(zip(seen, calls)) if a != b),
                    f"the end: {len(seen)} events, {len(calls)} calls")
                assert [e["file_type"] for e in mine] == [expected_type(c[2]) for c in calls]
                assert all(e["comm"] == comm for e in mine)
        kinds = Counter(e["syscall"] for e in got)
        assert kinds["pread64"] and kinds["pwrite64"] and kinds["read"] and kinds["write"], kinds
        assert any(c[2].endswith("/input.txt.gz") for t in want.values() for c in t)
    finally:
        sub.close()
        coll.kill()


KINDS = r"""
import socket, tty, pty
os.chdir(sys.argv[1] if len(sys.argv) > 1 else ".")
r, w = os.pipe()
a, b = socket.socketpair()
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname()); acc, _ = srv.accept()
efd = os.eventfd(0)
mfd = os.memfd_create("sw mem\nfd")
master, slave = pty.openpty()
gone = os.open("doomed.txt", os.O_RDWR | os.O_CREAT, 0o600)
os.unlink("doomed.txt")
fds = {"pipe": w, "socketpair": a.fileno(), "tcp": cli.fileno(), "eventfd": efd, "memfd": mfd, "tty": slave,
       "deleted": gone}
info["fds"] = fds
info["names"] = {k: os.readlink(f"/proc/self/fd/{fd}") for k, fd in fds.items()}
info["tcp"] = "tcp %s:%d->%s:%d" % (*cli.getsockname(), *cli.getpeername())
"""
KINDS_BODY = r"""
os.write(w, b"p" * 101)
os.write(a.fileno(), b"s" * 102)                     # write(2), not send(2): the traced calls
os.write(cli.fileno(), b"t" * 103)
os.eventfd_write(efd, 104)                          # an 8-byte write
os.write(mfd, b"m" * 105)
os.write(slave, b"y" * 106)
os.write(gone, b"d" * 107)
for i in range(50):                                  # open, read, close: microseconds
    fd = os.open(f"short{i}", os.O_RDONLY)
    os.read(fd, 108)
    os.close(fd)
time.sleep(1)                                        # the sockets still open while their ends are looked up
"""


@pytest.mark.slow
def test_each_kind_of_fd_gets_its_type_and_name(tmp_path, tools):
    """A pipe, a UNIX socket pair, a TCP connection to a local server (its ends), an eventfd, a memfd
    (a name with a newline), a tty and a file deleted while open, named as /proc/PID/fd (strace -y)
    names them; 50 files opened, read and closed within microseconds, each by its own path."""
    for i in range(50):
        (tmp_path / f"short{i}").write_bytes(b"x" * (200 + i))
    child = Script(KINDS, KINDS_BODY, tmp_path)
    coll = CollectorProcess(tmp_path, "--pid", str(child.pid), "--echo-rate", "0")
    sub = StreamReader(coll.endpoint, ("syscall.", "status"))
    try:
        sub.wait_status()
        child.run()
        fds, names = child.info["fds"], child.info["names"]
        writes = {fd: kind for kind, fd in fds.items()}
        got = events_until(sub, lambda ev: len({e["fd"] for e in ev if e["syscall"] == "write" and e["fd"] in writes})
                           == len(fds) and len([e for e in ev if e["count"] == 108]) == 50)
        want = {"pipe": "fifo", "socketpair": "sock", "tcp": "sock", "eventfd": "anon", "memfd": "reg", "tty": "chr",
                "deleted": "reg"}
        for kind, ftype in want.items():
            (ev,) = [e for e in got if e["fd"] == fds[kind] and e["syscall"] == "write"] or [(kind, got)]
            assert (ev["path"], ev["file_type"], ev["ret"]) == (names[kind], ftype, ev["count"]), (kind, ev)
        assert names["deleted"].endswith("/doomed.txt (deleted)") and names["memfd"] == "/memfd:sw mem\nfd (deleted)"
        tcp = next(e for e in got if e["fd"] == fds["tcp"])
        assert tcp["sock"] == child.info["tcp"], tcp
        assert next(e for e in got if e["fd"] == fds["socketpair"])["sock"] == "unix"
        short = sorted((e for e in got if e["count"] == 108), key=lambda e: e["ts_ns"])
        assert [e["path"] for e in short] == [str(tmp_path / f"short{i}") for i in range(50)]
        assert [e["ret"] for e in short] == [108] * 50
    finally:
        child.kill()
        sub.close()
        coll.kill()


def hostile_paths(root: Path) -> list[bytes]:
    """Files whose names hold a newline, quotes, backslashes, invalid UTF-8, a \\xNN look-alike, and a
    path of about 4,000 bytes (PATH_MAX is 4,096)."""
    base = os.fsencode(root)
    names = [b'new\nline "quote" back\\slash', b"bad \xff\xfe utf-8", b"looks like \\x41 an escape"]
    deep = base
    while len(deep) + 251 < 3900:
        deep += b"/" + b"d" * 250
    os.makedirs(deep)
    paths = [base + b"/" + n for n in names] + [deep + b"/" + b"f" * (4000 - len(deep) - 1)]
    for i, p in enumerate(paths):
        with open(p, "wb") as f:
            f.write(b"h" * (300 + i))
    return paths


def sse_events(response, want: int, timeout: float) -> list[dict]:
    events, buf = [], b""
    deadline = time.monotonic() + timeout
    for chunk in response.iter_content(chunk_size=None):
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            events += [json.loads(line[6:]) for line in block.split(b"\n") if line.startswith(b"data: ")]
        if len(events) >= want or time.monotonic() > deadline:
            break
    return events


@pytest.mark.slow
def test_hostile_names_round_trip_through_tail_the_api_and_sse(tmp_path, tools):
    """Issue 22: names with newlines, quotes, backslashes, invalid UTF-8 and 4,000 bytes never break a
    line or a message and come back exactly (shared.record.name_bytes) from syswatch-tail --json,
    GET /events and the SSE stream of a real API."""
    import sys

    import requests

    from harness.api import ApiProcess
    paths = hostile_paths(tmp_path)
    child = Script(f"paths = {paths!r}", """
        for i, p in enumerate(paths):
            fd = os.open(p, os.O_RDONLY)
            os.read(fd, 1000 + i)
            os.close(fd)
        """, tmp_path)
    coll = CollectorProcess(tmp_path, "--pid", str(child.pid), "--echo-rate", "0")
    api = ApiProcess(tmp_path / "api.sqlite3", collector=coll.endpoint).start()
    tail = subprocess.Popen([sys.executable, "-m", "subscribers.tail", "-e", coll.endpoint, "--json", "--count",
                             str(len(paths) + 1), "-d", "60", "-p", str(child.pid)], cwd=Path(__file__).parent.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sub = StreamReader(coll.endpoint, ("status",))
    try:
        sub.wait_status()
        deadline = time.monotonic() + 30
        while not api.get("/healthz").json()["collector_connected"]:
            assert time.monotonic() < deadline, api.output
            time.sleep(0.1)
        with requests.get(api.url("/events/stream"), params={"pid": child.pid}, stream=True, timeout=60) as sse:
            time.sleep(0.5)                                # the stream is registered, tail is connected
            child.run()
            streamed = sse_events(sse, len(paths) + 1, 30)     # + the child's read of "go"
        out, err = tail.communicate(timeout=60)
        tailed = [json.loads(line) for line in out.decode().splitlines()]
        deadline = time.monotonic() + 20
        while len(listed := api.get("/events", params={"pid": child.pid}).json()["events"]) < len(paths) + 1:
            assert time.monotonic() < deadline, listed
            time.sleep(0.2)
        for where, events in (("tail --json", tailed), ("GET /events", listed), ("SSE", streamed)):
            mine = sorted((e for e in events if 1000 <= e["count"] < 1000 + len(paths)), key=lambda e: e["count"])
            assert [record.name_bytes(e["path"]) for e in mine] == paths, (where, [e["path"][:80] for e in mine])
            assert [e["ret"] for e in mine] == [300 + i for i in range(len(paths))], where
        assert max(len(e["path"]) for e in tailed) >= 4000 and any("\n" in e["path"] for e in tailed)
    finally:
        tail.kill()
        tail.wait()
        child.kill()
        sub.close()
        api.stop()
        coll.kill()


COUNTS_BODY = """
    fds = [os.open(f"f{i:03d}", os.O_RDWR) for i in range(120)]
    for rnd in range(3):
        for i, fd in enumerate(fds):
            os.pread(fd, 64 + i, 0)
            os.write(fd, b"w" * (i + 1))
        try:
            os.read(9999, 5)                       # EBADF: an error on no file
        except OSError:
            pass
        time.sleep(0.6)
    """


@pytest.mark.slow
def test_counts_file_rows_add_up_to_events_mode_totals(tmp_path, tools):
    """Issue 22: one workload watched by an events collector and a counts collector at once: per file,
    the counts rows (the top 100 per interval) and the rest add up exactly to the events' sums."""
    for i in range(120):
        (tmp_path / f"f{i:03d}").write_bytes(b"c" * 500)
    child = Script("", COUNTS_BODY, tmp_path)
    args = ("--pid", str(child.pid), "--echo-rate", "0", "--syscalls", FAMILY)
    try:
        with events_and_counts(tmp_path, *args) as (ev_sub, cn_sub, _):
            child.run()
            n_calls = 3 * (120 * 2 + 1) + 1                 # + the read of "go": it returns after the probes attach
            events = events_until(ev_sub, lambda ev: len([e for e in ev if e["pid"] == child.pid]) >= n_calls)
            totals: Counter = Counter()
            files: Counter = Counter()
            rest: Counter = Counter()
            deadline = time.monotonic() + 30
            for msg in cn_sub.messages(30):
                if msg.topic == "counts":
                    for r in msg.payload["rows"]:
                        totals.update({"calls": r["calls"], "bytes": r["bytes"], "errors": r["errors"]})
                    for f in msg.payload.get("files", []):
                        for k in ("calls", "bytes", "errors"):
                            files[(f["path"], f["syscall"], k)] += f[k]
                    rest.update({k: v for k, v in msg.payload.get("files_rest", {}).items() if k != "files"})
                if totals["calls"] >= n_calls or time.monotonic() > deadline:
                    break
            mine = [e for e in events if e["pid"] == child.pid]
            assert len(mine) == n_calls and totals["calls"] == n_calls, (len(mine), totals)
            want = Counter()
            for e in mine:
                want[(e["path"], e["syscall"], "calls")] += 1
                want[(e["path"], e["syscall"], "bytes")] += max(e["ret"], 0)
            assert totals == Counter(calls=n_calls, bytes=sum(max(e["ret"], 0) for e in mine), errors=3)
            for key, val in files.items():                  # every file row shown equals the events' sum
                assert want[key] >= val, key                 # (a file may be in the top in one interval only)
            for k in ("calls", "bytes", "errors"):                 # files shown + the rest = the rows, exactly
                assert sum(v for (_, _, kk), v in files.items() if kk == k) + rest[k] == totals[k], k
            assert {p for (p, _, _) in files} >= {str(tmp_path / "f119")}   # the busiest files, by path
    finally:
        child.kill()


# the entry/exit program every earlier version ran (issue 24's baseline), printing (tid, count, lat)
TODAY = r"""
tracepoint:syscalls:sys_enter_read /pid == $1/ { @s[tid] = (nsecs, args->count); }
tracepoint:syscalls:sys_exit_read /@s[tid].0/ { $e = @s[tid]; delete(@s[tid]);
    printf("%d %d %llu\n", tid, $e.1, nsecs - $e.0); }
END { clear(@s); }
"""


@pytest.mark.slow
def test_latency_option_measures_what_the_entry_exit_program_measured(tmp_path, tools):
    """Issue 24: --latency gives every call the lat_ns that the entry/exit program gives it (both
    attached at once to the same calls), within the few microseconds between two probes' clocks."""
    child = Script("""
        r, w = os.pipe()
        def later(n):
            for i in range(n):
                time.sleep(0.002 * (i % 5))
                os.write(w, b"z" * (i + 1))
        """, """
        t = threading.Thread(target=later, args=(40,))
        t.start()
        for i in range(40):
            os.read(r, 7000 + i)
        t.join()
        """, tmp_path)
    ref = subprocess.Popen(["bpftrace", "-e", TODAY, str(child.pid)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    coll = CollectorProcess(tmp_path, "--pid", str(child.pid), "--echo-rate", "0", "--latency")
    sub = StreamReader(coll.endpoint, ("syscall.", "status"))
    try:
        st = sub.wait_status()
        assert st["latency"] is True
        time.sleep(1)                                    # bpftrace's own start (it prints "Attaching" first)
        child.run()
        got = events_until(sub, lambda ev: len([e for e in ev if 7000 <= e["count"] < 7040]) >= 40)
        ours = {e["count"]: e["lat_ns"] for e in got if 7000 <= e["count"] < 7040}
        time.sleep(0.5)
        ref.send_signal(2)
        out, _ = ref.communicate(timeout=30)
        theirs = {int(c): int(lat) for tid, c, lat in (ln.split() for ln in out.splitlines() if ln[:1].isdigit())
                  if 7000 <= int(c) < 7040}
        assert set(ours) == set(theirs) == set(range(7000, 7040))
        worst = max(abs(ours[c] - theirs[c]) for c in ours)
        assert worst < 50_000, sorted((c, ours[c], theirs[c]) for c in ours)
        assert max(ours.values()) > 5_000_000            # the blocking reads: milliseconds, measured
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()
        child.kill()
        sub.close()
        coll.kill()
