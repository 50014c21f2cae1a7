"""The collector against the real kernel: real bpftrace, real ZeroMQ subscribers, a child
process making known calls. Other processes (and other bpftrace runs) may be busy on the
machine: every assertion filters on the child's pid and its distinctive byte counts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from harness import ROOT
from harness.collector import Child, CollectorProcess, StreamReader, assert_delivered, collect_child_events
from harness.procs import free_port
from syswatch.collector import program
from syswatch.shared import protocol
from tests.conftest import have, is_root, require

HOSTILE = [
    b'a b"c\\d%s\te\nf',          # space, quote, backslash, %, tab, newline
    b"\xff\xfe\x80bad",           # not UTF-8
    b'","pid":1,"x":"',           # tries to inject JSON fields
    b'{"comm":"x"}',
    b"\xc3\xa9t\xc3\xa9 %n%x",    # valid UTF-8 and printf conversions
    b"\x01\x1b[2Jclear",          # control characters, terminal escape
    b"123456789012345678",        # longer than the kernel keeps (15 bytes)
]


@pytest.fixture(scope="module")
def events_collector(tmp_path_factory):
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-test.sh does it)")
    coll = CollectorProcess(tmp_path_factory.mktemp("events"), "--echo-rate", "5")
    yield coll
    coll.kill()


@pytest.fixture
def subscriber(events_collector):
    sub = StreamReader(events_collector.endpoint)
    sub.wait_status()                       # connected (ZeroMQ's slow joiner)
    yield sub
    sub.close()


def test_startup_lines_and_auto_probe_falls_back(events_collector):
    out = events_collector.stdout().splitlines()
    assert out[:3] == ["Loading eBPF program", "Monitoring sys_read and sys_write calls...",
                       f"Host PID: {events_collector.proc.pid}"]
    excluded = events_collector.excluded_pids()
    assert len(excluded) == 2 and events_collector.proc.pid in excluded
    if program_kprobes_missing():
        fallback = [line for line in events_collector.stderr().splitlines() if "probe auto" in line]
        assert len(fallback) == 1 and "tracepoint" in fallback[0], events_collector.stderr()


def program_kprobes_missing() -> bool:
    from syswatch.collector import bpf
    return bpf.kprobes_unavailable_reason() is not None


def test_host_wide_stream_excludes_the_collector(events_collector, subscriber):
    """Host-wide: the child's events arrive (or are counted as lost), none from excluded PIDs."""
    child = Child([b"syswatch-evt"], base=770_001, writes=25, reads=15)
    mine, seen, lost = collect_child_events(subscriber, child)
    assert_delivered(mine, child, lost)
    assert seen, "the host makes read/write calls all the time"
    status = subscriber.statuses[-1]
    assert status["mode"] == "events" and status["probe"] in ("kprobe", "tracepoint")
    excluded = set(status["excluded_pids"])
    kinds = {e["pid"]: e for e in status["excluded"]}
    # the collector and bpftrace (everything), and this test process: a subscriber (its ZeroMQ signalling)
    own = set(events_collector.excluded_pids())
    assert own | {os.getpid()} <= excluded and {kinds[p]["kind"] for p in own} == {"self"}
    assert kinds[os.getpid()]["kind"] == "subscriber" and kinds[os.getpid()]["what"], kinds[os.getpid()]
    # anything more may only be another syswatch collector on this host (a concurrent run's bpftrace
    # and its parent, left out so that the two do not feed each other)
    assert {kinds[p]["kind"] for p in excluded - own - {os.getpid()}} <= {"peer"}, kinds
    whole = {p for p, e in kinds.items() if e["what"] == ["all"]}
    assert not [e for e in seen if e["pid"] in whole], "the collector traced itself or a peer collector"
    zmq_fds = {int(w.split(":")[1]) for w in kinds[os.getpid()]["what"] if w.startswith("eventfd:")}
    signalling = [e for e in seen if e["pid"] == os.getpid() and e["fd"] in zmq_fds and e["count"] == 8
                  and e["ts_ns"] > child.started_ns]
    assert not signalling, f"this subscriber's ZeroMQ signalling was published: {signalling[:3]}"


@pytest.fixture(scope="module")
def traced_child(tmp_path_factory):
    """One child (a plain name, then every hostile name) traced by a collector filtered on its
    PID: the kernel passes only its calls, so nothing is lost however busy the machine is."""
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace")
    child = Child([b"syswatch-evt"] + HOSTILE, base=770_001, writes=6, reads=4)
    coll = CollectorProcess(tmp_path_factory.mktemp("filtered"), "--pid", str(child.pid), "--echo-rate", "0")
    sub = StreamReader(coll.endpoint)
    try:
        t0 = time.time_ns()
        mine, seen, lost = collect_child_events(sub, child)
        yield child, mine, seen, lost, t0
    finally:
        sub.close()
        coll.kill()


def test_events_arrive_once_with_every_field(traced_child):
    child, mine, seen, lost, t0 = traced_child
    assert lost == 0
    got = Counter((e["syscall"], e["fd"], e["count"], e["comm"]) for e in mine)
    assert got == Counter(child.expected()), "each call exactly once"
    for ev in mine:
        assert ev["pid"] == child.pid and ev["tid"] == child.info["tid"] != child.pid
        assert ev["uid"] == child.info["uid"]
        # wall clock: between the child's start and end, give or take a second
        assert child.started_ns - 1e9 < ev["ts_ns"] < child.finished_ns + 1e9, (ev["ts_ns"], child.started_ns)
        # no lat_ns without --latency (never an invented 0); the file the fd points to
        assert set(ev) == {"ts_ns", "pid", "tid", "uid", "comm", "syscall", "fd", "count", "ret",
                           "cgroup_id", "container_id", "container_name", "file_type", "path", "ino", "dev"}
        assert ev["ret"] == ev["count"] and ev["container_id"] == "" and ev["file_type"] == "chr"
        assert ev["path"] == ("/dev/null" if ev["syscall"] == "write" else "/dev/zero")
    assert {e["pid"] for e in seen} == {child.pid}


def test_hostile_names_arrive_intact(traced_child):
    child, mine, _, _, _ = traced_child
    by_count = {count: comm for _, _, count, comm in child.expected()}
    for ev in mine:                                # the name of the moment, decoded as documented
        assert ev["comm"] == by_count[ev["count"]]
        assert ev["pid"] == child.pid              # no field was taken from a name
    comms = {e["comm"] for e in mine}
    assert {'a b"c\\d%s\te\nf', '","pid":1,"x":"', "\\xff\\xfe\\x80bad", "123456789012345",
            "\u00e9t\u00e9 %n%x", "\x01\x1b[2Jclear"} <= comms


def test_status_counters_and_echo(events_collector, subscriber):
    """The child makes 60 calls at once, far over the echo limit of 5/s (whatever else the host
    does): they are counted in status, and a summary line says how many were not echoed."""
    summary = "were not echoed (echo limit 5/s"
    before = events_collector.stdout().count(summary)
    st0 = subscriber.wait_status()
    child = Child([b"syswatch-echo"], base=880_001, writes=40, reads=20)
    child.run()
    st = subscriber.wait_status()
    while st["ts_ns"] <= child.finished_ns:
        st = subscriber.wait_status()
    for key in ("events_total", "lost_total", "dropped_total", "malformed_total"):
        assert isinstance(st[key], int) and st[key] >= st0[key] >= 0
    counted = st["events_total"] - st0["events_total"] + st["lost_total"] - st0["lost_total"]
    assert counted >= 60 and st["malformed_total"] == 0
    assert st["uptime_s"] > 0 and st["host"]
    deadline = time.monotonic() + 10             # the summary comes when the one-second window closes
    while events_collector.stdout().count(summary) == before and time.monotonic() < deadline:
        subscriber.wait_status()
    out = events_collector.stdout()
    assert out.count(summary) > before, out[-2000:]
    echo = [line for line in out.splitlines() if " - hello sys_" in line]
    assert echo and all(line.split(" - ")[0].isdigit() for line in echo)


@pytest.fixture(scope="module")
def counts_collector(tmp_path_factory):
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace")
    coll = CollectorProcess(tmp_path_factory.mktemp("counts"), "--mode", "counts", "--interval", "0.25")
    yield coll
    coll.kill()


def test_counts_mode_sums_are_exact(counts_collector):
    sub = StreamReader(counts_collector.endpoint, ("counts", "status"))
    try:
        sub.wait_status()
        names = [b"syswatch-cnt", b'q"uo\nte\xff']
        child = Child(names, base=990_001, writes=300, reads=200)
        comms = {n.decode("utf-8", "backslashreplace") for n in names}
        child.run()
        rows, intervals = [], 0
        for msg in sub.messages(15):
            if msg.topic == "counts":
                assert msg.payload["interval_ns"] == 250_000_000
                # the child's main thread ("python") makes calls of its own: keep the worker's names
                rows += [r for r in msg.payload["rows"] if r["pid"] == child.pid and r["comm"] in comms]
                intervals += 1
                got = {}
                for r in rows:
                    key = (r["comm"], r["syscall"])
                    got[key] = [a + b for a, b in zip(got.get(key, [0, 0]), [r["calls"], r["bytes"]])]
                want = {}
                for syscall, _fd, count, comm in child.expected():
                    c = want.setdefault((comm, syscall), [0, 0])
                    c[0] += 1
                    c[1] += count
                if got == want and intervals >= 3:
                    break
        assert got == want
        # a status sent after the counts above has counted at least the child's calls
        st = sub.wait_status()
        assert st["mode"] == "counts" and st["events_total"] >= sum(c for c, _ in want.values())
        assert not [r for r in rows if r["pid"] in st["excluded_pids"]]
    finally:
        sub.close()


def test_filters_restrict_in_the_kernel(tmp_path, root_and_bpftrace):
    text = program.render("events", "tracepoint", pids=[4242, 4343], comms=["nginx"])
    # read, write, the open family (names files) and exec (names the fds a program starts with)
    assert text.count('/pid != $1 && pid != $3 && (pid == 4242 || pid == 4343) && (comm == "nginx")/') == 4
    child = Child([b"syswatch-flt"], base=660_001, writes=5, reads=5)
    other = Child([b"syswatch-flt"], base=660_001, writes=5, reads=5)
    coll = CollectorProcess(tmp_path, "--pid", str(child.pid), "--comm", "syswatch-flt", "--echo-rate", "0")
    sub = StreamReader(coll.endpoint)
    try:
        sub.wait_status()
        other.run()
        mine, seen, lost = collect_child_events(sub, child)
        assert_delivered(mine, child, lost)
        # the filter is in the kernel: nothing else at all reaches the stream
        assert {(e["pid"], e["comm"]) for e in seen} == {(child.pid, "syswatch-flt")}
    finally:
        sub.close()
        coll.kill()


@pytest.mark.parametrize("flags,message", [(["--comm", "a-name-longer-than-15"], "longer than 15 bytes"),
                                           (["--pid", "0"], "--pid 0: a PID is between 1 and")],
                         ids=["comm-too-long", "pid-0"])
def test_bad_filter_is_a_clear_error(flags, message, root_and_bpftrace):
    """As root with bpftrace, so the run gets past those checks to the filter's own."""
    res = subprocess.run([sys.executable, "-m", "collector.collector", "--bind", f"tcp://127.0.0.1:{free_port()}",
                          *flags], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Loading eBPF program" not in res.stdout, "refused before bpftrace starts"


def test_kprobe_program_compiles(tmp_path, root_and_bpftrace):
    for mode, latency in (("events", False), ("events", True), ("counts", False), ("counts", True)):
        text = program.render(mode, "kprobe", protocol.SYSCALLS, [1], ["bash"], latency=latency)
        # one probe per call (the return) unless latency is measured (issue 24)
        assert "kretprobe:__x64_sys_read" in text and "kretprobe:__x64_sys_writev" in text
        assert "kretprobe:__x64_sys_openat" in text
        assert ("kprobe:__x64_sys_read" in text) == latency
        assert "tracepoint:syscalls" not in text
        src = tmp_path / f"{mode}.bt"
        src.write_text(text)
        elf = tmp_path / f"{mode}.elf"
        res = subprocess.run(["bpftrace", "--emit-elf", str(elf), str(src), "1", "1000", "2"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert elf.read_bytes()[:4] == b"\x7fELF"


def _bpf_attachments(pid: int) -> set[int]:
    res = subprocess.run(["bpftool", "perf", "list", "-j"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return {a["prog_id"] for a in json.loads(res.stdout or "[]") if a.get("pid") == pid}


def _prog_ids() -> set[int]:
    res = subprocess.run(["bpftool", "prog", "list", "-j"], capture_output=True, text=True, timeout=30)
    return {p["id"] for p in json.loads(res.stdout or "[]")}


def test_sigterm_exits_0_and_detaches_everything(tmp_path, root_and_bpftrace):
    require(have("bpftool"), "install bpftool: apt-get install -y bpftool (scripts/setup-test.sh does it)")
    coll = CollectorProcess(tmp_path, "--echo-rate", "0")
    try:
        bt = coll.bpftrace_pid()
        progs = _bpf_attachments(bt)
        assert len(progs) >= 2, "bpftrace's read and write programs are attached"
        code, took = coll.stop(signal.SIGTERM)
        assert code == 0, coll.stderr()
        assert took < 2.0
        assert not os.path.exists(f"/proc/{bt}"), "bpftrace is gone"
        assert not _bpf_attachments(bt)
        assert not progs & _prog_ids(), "no BPF program of the collector is left loaded"
    finally:
        coll.kill()


def test_collector_killed_takes_bpftrace_with_it(tmp_path, root_and_bpftrace):
    """SIGKILL on the collector (OOM killer): bpftrace must not survive as an orphan with its probes."""
    coll = CollectorProcess(tmp_path, "--echo-rate", "0", "--pid", "1")
    bt = coll.bpftrace_pid()
    coll.proc.kill()
    coll.proc.wait()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{bt}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{bt}"), "bpftrace outlived the collector"


def test_sigint_exits_0(tmp_path, root_and_bpftrace):
    coll = CollectorProcess(tmp_path, "--mode", "counts")
    try:
        code, took = coll.stop(signal.SIGINT)
        assert code == 0 and took < 2.0
    finally:
        coll.kill()


def test_bpftrace_killed_exits_nonzero_with_message(tmp_path, root_and_bpftrace):
    coll = CollectorProcess(tmp_path, "--echo-rate", "0")
    try:
        os.kill(coll.bpftrace_pid(), signal.SIGKILL)
        start = time.monotonic()
        code = coll.proc.wait(5)
        assert time.monotonic() - start < 2.0
        assert code not in (0, None)
        assert "bpftrace was killed by signal 9 (SIGKILL)" in coll.stderr()
    finally:
        coll.kill()


def test_bpftrace_missing_or_failing(tmp_path, root_and_bpftrace):
    # missing: a PATH without bpftrace
    env = {"PATH": "/nonexistent"}
    res = subprocess.run([sys.executable, "-m", "collector.collector"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, env={**os.environ, **env})
    assert res.returncode == 2 and "apt-get install -y bpftrace" in res.stderr
    # failing: explicit kprobes on a kernel without them, or a bpftrace that cannot attach
    fake = tmp_path / "bin"
    fake.mkdir()
    # it tells its version (the collector asks first), then cannot attach
    (fake / "bpftrace").write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'bpftrace v0.17.0'; exit 0; }\n"
                                   "echo 'ERROR: Error attaching probe: fake' >&2\nexit 1\n")
    (fake / "bpftrace").chmod(0o755)
    run_fake = dict(cwd=ROOT, capture_output=True, text=True, timeout=30,
                    env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}",
                         "SYSWATCH_FEATURES_CACHE": str(tmp_path / "features")})
    # its feature probe (a BEGIN-only run) fails the same way: a set-up error naming bpftrace's words
    res = subprocess.run([sys.executable, "-m", "collector.collector", "--bind", f"tcp://127.0.0.1:{free_port()}"],
                         **run_fake)
    assert res.returncode == 2, res.stderr
    assert "feature probe exited with status 1: ERROR: Error attaching probe: fake" in res.stderr
    # features known (cached from an earlier run): it fails when the collector starts tracing
    from syswatch.collector import bpfversion
    key = bpfversion._cache_key(str(fake / "bpftrace"), bpfversion.parse("bpftrace v0.17.0\n"))
    cache = tmp_path / "features" / f"bpftrace-{key}.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"ringbuf_output": False, "map_key_strings_escaped_twice": False}))
    res = subprocess.run([sys.executable, "-m", "collector.collector", "--bind", f"tcp://127.0.0.1:{free_port()}"],
                         **run_fake)
    assert res.returncode == 1, res.stderr
    assert "bpftrace exited with status 1; bpftrace said: ERROR: Error attaching probe: fake" in res.stderr
    # one that cannot even say which version it is: a set-up error, before anything is bound
    (fake / "bpftrace").write_text("#!/bin/sh\necho 'broken' >&2\nexit 3\n")
    res = subprocess.run([sys.executable, "-m", "collector.collector", "--bind", f"tcp://127.0.0.1:{free_port()}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert res.returncode == 2 and "cannot tell which bpftrace" in res.stderr and "broken" in res.stderr


def test_explicit_kprobe_fails_clearly_without_kernel_support(tmp_path, root_and_bpftrace):
    if not program_kprobes_missing():             # a kernel with kprobes: they must work
        coll = CollectorProcess(tmp_path, "--probe", "kprobe", "--echo-rate", "0")
        sub = StreamReader(coll.endpoint, ("status",))
        try:
            assert sub.wait_status()["probe"] == "kprobe"
        finally:
            sub.close()
            coll.kill()
        return
    res = subprocess.run([sys.executable, "-m", "collector.collector", "--probe", "kprobe",
                          "--bind", f"tcp://127.0.0.1:{free_port()}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "bpftrace could not start tracing" in res.stderr and "kprobe" in res.stderr


# Two ways to be unprivileged, so the message is checked whatever is installed on the machine:
# uid 65534 with site-packages switched off (-S: zmq cannot be imported, as for a user who cannot
# read root's packages), and euid 65534 in a new user namespace (same files, zmq imports fine).
UNPRIVILEGED = {
    "uid-65534-without-zmq": (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], ["-S"], False),
    "userns-with-zmq": (["unshare", "--user"], [], True),
}


@pytest.mark.parametrize("how", UNPRIVILEGED)
def test_not_root_is_a_clear_error(how):
    require(is_root(), "needs root to drop to an unprivileged user")
    wrap, flags, zmq_importable = UNPRIVILEGED[how]
    require(have(wrap[0]), f"needs util-linux {wrap[0]}")
    probe = subprocess.run([*wrap, sys.executable, *flags, "-c", "import os, zmq; print(os.geteuid())"],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
    if zmq_importable:
        assert probe.returncode == 0 and probe.stdout.strip() != "0", probe.stderr
    else:
        assert "No module named 'zmq'" in probe.stderr, (probe.stdout, probe.stderr)
    res = subprocess.run([*wrap, sys.executable, *flags, "-m", "collector.collector"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stderr
    assert "must run as root" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_other_pid_namespace_is_refused():
    require(is_root(), "needs root for unshare --pid")
    require(have("unshare"), "needs util-linux unshare")
    res = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "collector.collector"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "PID namespace" in res.stderr and "pid: host" in res.stderr


def test_help_lists_every_flag_with_defaults():
    res = subprocess.run([sys.executable, "-m", "collector.collector", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0
    for flag in ("--bind", "--mode", "--probe", "--interval", "--echo-rate", "--pid", "--comm"):
        assert flag in res.stdout
    assert "tcp://127.0.0.1:5556" in res.stdout and "examples:" in res.stdout


def test_env_overrides_and_bad_env(tmp_path):
    from syswatch.collector.cli import parse_args
    os.environ["SYSWATCH_MODE"] = "counts"
    try:
        assert parse_args([]).mode == "counts"
        assert parse_args(["--mode", "events"]).mode == "events"
    finally:
        del os.environ["SYSWATCH_MODE"]
    res = subprocess.run([sys.executable, "-m", "collector.collector"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, env={**os.environ, "SYSWATCH_ECHO_RATE": "lots"})
    assert res.returncode != 0 and "SYSWATCH_ECHO_RATE" in res.stderr


def test_non_loopback_bind_warns(tmp_path, root_and_bpftrace):
    port = free_port()
    coll = CollectorProcess(tmp_path, "--echo-rate", "0", bind=f"tcp://0.0.0.0:{port}")
    try:
        err = coll.stderr()
        assert "is not a loopback address" in err and "SYSWATCH_CURVE_SERVER_KEY" in err
        assert coll.stop()[0] == 0
    finally:
        coll.kill()
