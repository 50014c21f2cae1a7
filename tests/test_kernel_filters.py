"""Issue 25's filters on the collector, in the kernel: -x/--failed, --min-latency, -u/--uid, -t/--tid.

A child (named swfilt) makes 40 reads of known latency from a pipe fed at set intervals and 30 failing
reads (EBADF, EAGAIN), and a forked child of it running as uid 65534 writes 10 times. Four collectors
watch the same run: one unfiltered with --latency (the truth), one with -x, one with
--min-latency 20ms -t TID -u 0, one with -u 65534. Each delivers exactly the truth's calls its filter
selects (a call within 2 ms of the latency bound may go either way: each collector times the call
with its own probes).
"""
from __future__ import annotations

import json
import select
import subprocess
import sys
import time

import pytest

from harness.collector import CollectorProcess, StreamReader
from harness.procs import die_with_parent
from syswatch.collector import cli, program
from tests.conftest import have, is_root, require

BOUND_NS = 20_000_000


@pytest.mark.unit
def test_filters_become_predicates_and_exit_conditions():
    text = program.render("events", uids=[1000], tids=[7], failed=True, min_latency_ns=BOUND_NS, latency=True)
    assert "/pid != $1 && pid != $3 && (tid == 7) && (uid == 1000)/" in text
    cond = f"args->ret < 0 && nsecs - @start[tid].0 >= {BOUND_NS}"
    assert f"sys_exit_read\n/{cond}/\n{{" in text                          # the exit's predicate
    assert f"sys_exit_read\n/@start[tid].0 && !({cond})/\n{{\n\tdelete(@start[tid]);" in text
    counts = program.render("counts", failed=True)
    assert counts.count("pid != $3 && args->ret < 0/") == 2            # read and write: counted only if failed
    with pytest.raises(program.FilterError, match="turns --latency on"):
        program.render("events", min_latency_ns=1)
    with pytest.raises(program.FilterError, match="--uid 4294967296"):
        program.predicate(uids=[2**32])
    config = cli.parse_args(["-x", "--min-latency", "20ms", "-u", "0", "-t", "5"])
    assert config.latency and config.filters.min_latency_ns == BOUND_NS and config.filters.failed
    assert config.filters.uids == (0,) and config.filters.tids == (5,)


CHILD = r"""
import errno, fcntl, json, os, sys, threading, time
with open("/proc/self/comm", "w") as f:
    f.write("swfilt")
delays = [0.0] * 10 + [0.005] * 15 + [0.012] * 5 + [0.030] * 10
r, w = os.pipe()
empty_r, _empty_w = os.pipe()
fcntl.fcntl(empty_r, fcntl.F_SETFL, fcntl.fcntl(empty_r, fcntl.F_GETFL) | os.O_NONBLOCK)
go_r, go_w = os.pipe()
closed = os.dup(w)                                   # the last fd made: no later one reuses its number
os.close(closed)
kid = os.fork()
if kid == 0:
    os.close(go_w)
    os.setgid(65534)
    os.setuid(65534)
    os.read(go_r, 1)
    null = os.open("/dev/null", os.O_WRONLY)
    for _ in range(10):
        os.write(null, b"n")
    os._exit(0)
print(json.dumps({"pid": os.getpid(), "kid": kid}), flush=True)
sys.stdin.readline()
def feed():
    for d in delays:
        if d:
            time.sleep(d)
        os.write(w, b"x")
threading.Thread(target=feed).start()
for _ in delays:
    os.read(r, 1)
for fd in [closed] * 15 + [empty_r] * 15:
    try:
        os.read(fd, 1)
    except OSError:
        pass
os.write(go_w, b"g")
os.waitpid(kid, 0)
print("done", flush=True)
"""


def drain(sub: StreamReader, done, timeout: float = 30) -> list[dict]:
    """Events until ``done(events)``, then one more second (anything the filter should have dropped)."""
    got: list[dict] = []
    end = None
    for msg in sub.messages(timeout):
        got += msg.events
        if end is None and done(got):
            end = time.monotonic() + 1.0
        if end is not None and time.monotonic() >= end:
            break
    return got


@pytest.mark.slow
def test_collector_filters_deliver_exactly_what_they_select(tmp_path):
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-host.sh does it)")
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, preexec_fn=die_with_parent)
    assert child.stdin is not None and child.stdout is not None
    ids = json.loads(child.stdout.readline())
    pid, kid = ids["pid"], ids["kid"]
    setups = {"truth": ["--latency"], "failed": ["-x"],
              "slow": ["--min-latency", "20ms", "-t", str(pid), "-u", "0"], "nobody": ["-u", "65534"]}
    colls, subs = {}, {}
    try:
        for name, flags in setups.items():
            (tmp_path / name).mkdir()
            colls[name] = CollectorProcess(tmp_path / name, "-n", "swfilt", "--echo-rate", "0", *flags)
            subs[name] = StreamReader(colls[name].endpoint, ("syscall.", "status"))
        for sub in subs.values():
            sub.wait_status()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert select.select([child.stdout], [], [], 90)[0], "the child did not finish its calls within 90 s"
        assert child.stdout.readline() == "done\n" and child.wait(30) == 0
        def n(evs, who, syscall):
            return len([e for e in evs if e["pid"] == who and e["syscall"] == syscall])
        truth = [e for e in drain(subs["truth"], lambda ev: n(ev, pid, "read") >= 70 and n(ev, kid, "write") >= 10)
                 if e["pid"] in (pid, kid)]
        mine = [e for e in truth if e["pid"] == pid and e["syscall"] == "read"]
        got = {"failed": drain(subs["failed"], lambda ev: len(ev) >= 30),
               "slow": drain(subs["slow"], lambda ev: len(ev) >= len([e for e in mine if e["lat_ns"] >= BOUND_NS])),
               "nobody": drain(subs["nobody"], lambda ev: n(ev, kid, "write") >= 10)}
        assert len(mine) >= 70 and len([e for e in truth if e["pid"] == kid and e["syscall"] == "write"]) == 10
        failed = [(e["tid"], e["fd"], e["ret"]) for e in truth if e["ret"] < 0]
        assert len(failed) == 30 and sorted(failed) == sorted((e["tid"], e["fd"], e["ret"]) for e in got["failed"])
        main = [e for e in truth if e["tid"] == pid]                 # -t: the main thread's calls of any kind
        sure = [e for e in main if e["lat_ns"] >= BOUND_NS + 2_000_000]
        maybe = [e for e in main if abs(e["lat_ns"] - BOUND_NS) < 2_000_000]
        assert len(sure) >= 8, [e["lat_ns"] for e in mine]
        assert all(e["lat_ns"] >= BOUND_NS and e["tid"] == pid and e["uid"] == 0 for e in got["slow"]), got["slow"]
        assert len(sure) <= len(got["slow"]) <= len(sure) + len(maybe), (len(sure), len(maybe), len(got["slow"]))
        nobody = [e for e in got["nobody"] if e["pid"] in (pid, kid)]
        assert [(e["pid"], e["uid"]) for e in nobody if e["syscall"] == "write"] == [(kid, 65534)] * 10
        assert all(e["pid"] == kid for e in nobody), nobody
    finally:
        child.kill()
        child.wait()
        for sub in subs.values():
            sub.close()
        for coll in colls.values():
            coll.kill()
