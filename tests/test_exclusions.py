"""collector/exclusions.py against real processes, without bpftrace: this test process plays the
collector (an XPUB socket read by the same code path: announces go to Exclusions), and real
subscribers, attackers and victims run as uid nobody (Debian's python3 with python3-zmq, which
any user may run). What each verification may read is what the deployed capability set allows
(world-readable /proc files); tests/test_exclusion_attacks.py repeats the attacks against the
real collector with the unit's capability set."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import zmq

from harness import ROOT, nobody
from harness.nobody import Nobody
from syswatch.collector import exclusions as exmod
from syswatch.collector.exclusions import Exclusions
from syswatch.shared.protocol import parse_announce
from tests.conftest import is_root, require


class FakeCollector:
    """The collector's side of the exclusions, in this process: an XPUB in manual mode on a free
    port, announces read exactly as the loop reads them (with ZeroMQ's Peer-Address)."""

    def __init__(self, ipc: str | None = None):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_MANUAL, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        if ipc:
            self.sock.bind(f"ipc://{ipc}")
            os.chmod(ipc, 0o777)
            self.port, self.endpoint = None, f"ipc://{ipc}"
        else:
            self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
            self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.ex = Exclusions([os.getpid()], self.port, ipc_path=ipc)

    def pump(self, seconds: float) -> None:
        """Runs the loop's part for ``seconds``: read subscriptions, announce, refresh."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.sock.poll(20):
                while True:
                    try:
                        frame = self.sock.recv(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    raw = frame.bytes
                    got = parse_announce(raw[1:]) if raw[:1] == b"\x01" else None
                    if got:
                        self.ex.announce(*got, frame.get("Peer-Address"))
            self.ex.refresh()

    def until(self, cond, timeout: float = 15.0, what: str = ""):
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.ex.entries()} " \
                                                f"refused {dict(self.ex.refusals)}"
            self.pump(0.05)

    def close(self):
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture(params=["tcp"])
def coll(request):
    require(is_root(), "run as root (the collector's side runs as root): sudo scripts/test.sh")
    missing = nobody.available()
    require(missing is None, missing or "")
    ipc_dir = None
    if request.param == "ipc":                 # pytest's tmp_path is root's alone: nobody could not connect
        ipc_dir = tempfile.mkdtemp(prefix="syswatch-ipc-", dir="/tmp")
        os.chmod(ipc_dir, 0o755)
    c = FakeCollector(os.path.join(ipc_dir, "stream") if ipc_dir else None)
    procs: list[Nobody] = []

    def start(mode, arg=None, **kw):
        procs.append(Nobody(c.endpoint, mode, None if arg is None else int(arg), **kw))
        return procs[-1]
    c.start = start
    yield c
    for p in procs:
        p.close()
    c.close()
    if ipc_dir:
        shutil.rmtree(ipc_dir)


@pytest.mark.parametrize("coll", ["tcp", "ipc"], indirect=True)
def test_an_unprivileged_subscriber_is_verified_and_listed(coll):
    sub = coll.start("self")
    coll.until(lambda: sub.pid in coll.ex.excluded, what="the subscriber verified")
    (entry,) = [e for e in coll.ex.entries() if e["pid"] == sub.pid]
    assert entry["kind"] == "subscriber" and entry["comm"] == "python3"
    assert coll.ex.subscribers[sub.pid].uid == 65534 and len(coll.ex.subscribers[sub.pid].claims) == 1
    sub.close()
    coll.until(lambda: sub.pid not in coll.ex.excluded, what="the subscriber dropped once gone")


@pytest.mark.parametrize("coll", ["tcp", "ipc"], indirect=True)
def test_anyone_cannot_hide_anyone(coll):
    """Attack 1: uid nobody announces a daemon-owned process (uid 1): refused, not excluded."""
    victim = subprocess.Popen(["setpriv", "--reuid=1", "--regid=1", "--clear-groups", "sleep", "60"])
    try:
        attacker = coll.start("pid", str(victim.pid))
        coll.until(lambda: coll.ex.refusals["no connection"] >= 1, what="the refusal")
        coll.pump(1.0)
        assert victim.pid not in coll.ex.excluded and attacker.pid not in coll.ex.excluded
        # the same as root: a root-owned victim is not the attacker's either
        victim_root = subprocess.Popen(["sleep", "60"])
        try:
            coll.start("pid", str(victim_root.pid))
            coll.until(lambda: coll.ex.refusals["no connection"] >= 2, what="the second refusal")
            assert victim_root.pid not in coll.ex.excluded
        finally:
            victim_root.kill()
            victim_root.wait()
    finally:
        victim.kill()
        victim.wait()


def test_thread_ids_are_not_processes_and_a_connection_backs_one_subscriber(coll):
    """Attack 2: one process with 64 threads announces every thread id (one connection): the
    threads are refused; one connection announcing 8 child processes backs one of them at most.
    A real subscriber that comes after is still verified."""
    threads = coll.start("tids", "64")
    coll.until(lambda: coll.ex.refusals["thread"] >= 64, what="64 thread ids refused")
    assert not coll.ex.excluded & set(range(threads.pid + 1, threads.pid + 200))
    spawner = coll.start("spawn", "8")
    coll.until(lambda: coll.ex.refusals["no connection"] >= 7, what="7 of 8 children refused")
    assert len(set(spawner.kids) & coll.ex.excluded) <= 1
    good = coll.start("self")
    coll.until(lambda: good.pid in coll.ex.excluded, what="a real subscriber after the attack")


def test_a_uid_cannot_take_every_slot(coll, monkeypatch):
    monkeypatch.setattr(exmod, "MAX_PER_UID", 3)
    subs = [coll.start("self") for _ in range(5)]
    coll.until(lambda: coll.ex.refusals["too many for uid"] >= 2, what="the uid's bound")
    assert len({s.pid for s in subs} & coll.ex.excluded) == 3
    root_sub = coll.start("self", nobody=False)
    coll.until(lambda: root_sub.pid in coll.ex.excluded, what="another uid's subscriber still verified")


def test_an_announce_flood_costs_a_bounded_log_and_no_scan(coll, caplog):
    """Attack 3: 5,000 announces naming foreign PID namespaces: refused or queued, a handful of
    log lines, the index of nested PIDs built at most every REFRESH_S, and a real subscriber
    verified meanwhile."""
    import logging
    caplog.set_level(logging.INFO, logger="syswatch.collector")
    builds = []
    real_build = coll.ex._build_index
    coll.ex._build_index = lambda now: (builds.append(now), real_build(now))
    coll.start("flood", "5000")
    good = coll.start("self")
    start = time.monotonic()
    # ZeroMQ passes on what fits the SUB's send queue (about 1,000 of the 5,000)
    coll.until(lambda: coll.ex.refused >= 500 and not coll.ex._pending_nested, timeout=30, what="the flood refused")
    coll.until(lambda: good.pid in coll.ex.excluded, what="the real subscriber")
    coll.pump(2.0)
    elapsed = time.monotonic() - start
    assert len(builds) <= elapsed / exmod.REFRESH_S + 2, (len(builds), elapsed)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) <= 6, len(refusals)
    assert coll.ex.refusals["queue full"] and coll.ex.refusals["no such process"] >= exmod.MAX_PENDING - 1


def test_a_subscriber_in_another_pid_namespace_is_found_through_the_index(coll):
    """A subscriber in a container-like PID namespace announces its own namespace's PID (1)."""
    sub = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", nobody.SUBSCRIBER,
                            coll.endpoint, "self"], cwd="/", env={"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]},
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        sub.stdout.readline()
        from syswatch.collector.procscan import pids, read_status
        inner = [p for p in pids() if (st := read_status(p)) and st.ppid == sub.pid]
        assert len(inner) == 1
        coll.until(lambda: inner[0] in coll.ex.excluded, what="the namespaced subscriber")
        assert coll.ex.subscribers[inner[0]].announced[0] == 1
    finally:
        sub.stdin.close()
        sub.wait(10)


def test_a_setuid_program_with_a_collector_s_argv_is_no_peer(coll):
    """Attack 4: `su` started by uid nobody with argv ["/tmp/not/bpftrace", "-c", "syswatch-ready",
    "root"] (also through a symlink named bpftrace, so that its name is bpftrace too), and a nobody
    process whose executable is a file named bpftrace, are not other collectors."""
    tmp = os.path.join("/tmp", f"swx-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    os.chmod(tmp, 0o755)
    link, copy = os.path.join(tmp, "bpftrace"), os.path.join(tmp, "sub", "bpftrace")
    os.symlink("/usr/bin/su", link)
    os.makedirs(os.path.dirname(copy))
    os.chmod(os.path.dirname(copy), 0o755)
    subprocess.run(["cp", "/usr/bin/sleep", copy], check=True)
    spoofs = [subprocess.Popen([*nobody.SETPRIV_NOBODY, "bash", "-c",
                                f"exec -a /tmp/not/bpftrace {su} -c syswatch-ready root"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for su in ("su", link)]
    spoofs.append(subprocess.Popen([*nobody.SETPRIV_NOBODY, copy, "60", "syswatch-ready"]))
    try:
        deadline = time.monotonic() + 10
        while not all(procscan_comm(p.pid) in ("su", "bpftrace") for p in spoofs):
            assert time.monotonic() < deadline, [procscan_comm(p.pid) for p in spoofs]
            time.sleep(0.05)
        assert procscan_comm(spoofs[1].pid) == "bpftrace"     # the name is no proof
        coll.ex.refresh(force=True)
        pids = {p.pid for p in spoofs}
        assert not pids & set(coll.ex.peers) and not pids & coll.ex.excluded, coll.ex.peers
    finally:
        for p in spoofs:
            p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", tmp], check=True)


def procscan_comm(pid: int) -> str:
    from syswatch.collector.procscan import read_stat
    st = read_stat(pid)
    return st.comm if st else ""
