"""End to end through Docker: both images built, `docker-compose up -d`, the real collector
tracing the real kernel, the real API over the container network, a subscriber on the host.

One compose project (unique name, free host ports) serves every test of this module and is
always removed with `docker-compose down -v`, whatever happens.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import zmq

from harness import ROOT
from harness.compose import ComposeStack, docker, receive, wait_for_status
from harness.procs import free_port
from syswatch.shared import protocol, zmqsock
from tests.conftest import require_compose_stack, uncaptured_printer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# A child process with its own comm (PR_SET_NAME) writing COUNT bytes to /dev/null in small bursts.
WRITE_COUNT = 77
CHILD = r"""
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)   # PR_SET_NAME: the comm bpftrace reports
fd = os.open("/dev/null", os.O_WRONLY)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    for _ in range(20):
        os.write(fd, b"x" * int(sys.argv[3]))
    time.sleep(0.01)
"""


@pytest.fixture(scope="module")
def stack(request):
    require_compose_stack()
    s = ComposeStack(api_port=free_port(), collector_port=free_port())
    with s.running(uncaptured_printer(request.config)):
        yield s


def run_child(comm: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, comm, str(seconds), str(WRITE_COUNT)])


def test_api_walkthrough_script_passes(stack):
    proc = subprocess.run([str(ROOT / "test_api.sh")], env={**stack.env, "BASE_URL": stack.api_url},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all 7 answers are correct" in proc.stdout


def test_host_subscriber_and_api_see_a_child_process(stack):
    comm = f"swe2e{uuid.uuid4().hex[:8]}"
    ctx = zmq.Context()
    sock = zmqsock.make_subscriber(ctx, stack.collector_endpoint, (protocol.topic_for("write"), protocol.TOPIC_STATUS))
    child = None
    try:
        status = wait_for_status(sock)  # the subscription is live once a message arrives
        assert status["probe"] in ("kprobe", "tracepoint")
        # the image's trixie bpftrace 0.23, its ring buffer and the default policy (issue 16)
        assert status["bpftrace"].startswith("0.23.") and status["output"] == "ringbuf", status
        assert status["overload"] == "drop", status
        child = run_child(comm, 60)  # writes until this test stops it
        mine = []
        for msg in receive(sock, time.monotonic() + 20):
            mine += [e for e in msg.events if e["pid"] == child.pid and e["comm"] == comm]
            if len(mine) >= 50:
                break
        assert len(mine) >= 50, f"the host subscriber saw {len(mine)} write events of pid {child.pid} ({comm})"
        assert all(e["syscall"] == "write" and e["count"] == WRITE_COUNT and e["tid"] == child.pid
                   for e in mine), mine[:3]

        # The API gets the same events from tcp://collector:5556 over the compose network. Asked
        # while the child still writes: on a busy host its recent-events buffer turns over fast.
        deadline = time.monotonic() + 20
        while True:
            code, answer = stack.http("GET", f"/events?pid={child.pid}&syscall=write&limit=20")
            if code == 200 and answer["events"]:
                break
            assert time.monotonic() < deadline, f"/events {code} {answer}"
            time.sleep(0.3)
        assert all(e["pid"] == child.pid and e["comm"] == comm and e["count"] == WRITE_COUNT
                   for e in answer["events"]), answer["events"][:3]
        code, stats = stack.http("GET", "/stats")
        assert code == 200 and stats["connected"] is True, stats
        assert [c["endpoint"] for c in stats["collectors"]] == ["tcp://collector:5556"]
        # the traced machine's name, not the collector container's id
        assert stats["hosts"] == [socket.gethostname()] and status["host"] == socket.gethostname()
        assert stats["totals"]["write"]["calls"] >= len(mine), stats["totals"]
        assert stats["collector_status"]["probe"] == status["probe"]
        assert child.poll() is None, "the child stopped early"
    finally:
        if child:
            child.kill()
            child.wait()
        sock.close()
        ctx.term()


def test_a_container_s_events_carry_its_id_and_name_and_the_api_is_left_out(stack):
    """Event model v2 in compose: a process in another container is named by that container (id as
    `docker ps` shows it, and name), a host process by ""; the API container, a subscriber, is not
    traced (its host PID is in excluded_pids)."""
    name = f"swe2e-ctr-{uuid.uuid4().hex[:6]}"
    ctx = zmq.Context()
    sock = zmqsock.make_subscriber(ctx, stack.collector_endpoint, (protocol.topic_for("write"), protocol.TOPIC_STATUS))
    try:
        wait_for_status(sock)
        cid = docker("run", "-d", "--rm", "--name", name, "debian:bookworm-slim", "sh", "-c",
                     "while :; do echo swe2e-ctr > /dev/null; done").stdout.strip()
        assert len(cid) == 64, cid
        theirs, status = [], None
        for msg in receive(sock, time.monotonic() + 30):
            if msg.topic == protocol.TOPIC_STATUS:
                status = msg.payload
            theirs += [e for e in msg.events if e["count"] == len("swe2e-ctr\n") and e["comm"] == "sh"
                       and e["container_id"] == cid[:12]]
            if len([e for e in theirs if e["container_name"]]) >= 20 and status:
                break
        named = [e for e in theirs if e["container_name"]]
        assert len(named) >= 20, f"{len(theirs)} events of container {name}, {len(named)} named"
        # the name is asked off the collector's loop: the first events may carry only the id
        assert {(e["container_id"], e["container_name"], e["ret"]) for e in theirs} <= {(cid[:12], name, 10),
                                                                                       (cid[:12], "", 10)}
        assert theirs[-1]["container_name"] == name
        api_pid = stack.inspect("api")["State"]["Pid"]
        assert api_pid in status["excluded_pids"], (api_pid, status["excluded_pids"])
        deadline = time.monotonic() + 20
        while True:
            code, stats = stack.http("GET", "/stats")
            tops = {c["container_id"]: c for c in stats["top_containers_by_calls"]}
            if cid[:12] in tops:
                break
            assert time.monotonic() < deadline, stats["top_containers_by_calls"]
            time.sleep(0.5)
        assert tops[cid[:12]]["container_name"] == name and tops[cid[:12]]["calls"] >= 20
        code, answer = stack.http("GET", f"/events?container={name}&limit=5")
        assert code == 200 and answer["events"] and all(e["container_id"] == cid[:12] for e in answer["events"])
    finally:
        docker("rm", "-f", name, check=False)
        sock.close()
        ctx.term()


def test_a_container_s_file_is_named_by_its_own_path(stack):
    """Issue 22: a file that exists only inside a container is named by the path its process sees
    (walked up to the process's root, across its mounts: the overlay root and /dev), never by where
    the host keeps it (/var/lib/docker/...). Ground truth: the container's own paths, which do not
    exist on the host."""
    name = f"swe2e-file-{uuid.uuid4().hex[:6]}"
    data = "swe2e-data"
    inside = "/swe2e-files/in the container.txt"            # a space too: the name arrives whole
    assert not os.path.exists(os.path.dirname(inside))
    ctx = zmq.Context()
    sock = zmqsock.make_subscriber(ctx, stack.collector_endpoint, (protocol.EVENT_PREFIX,))
    try:
        cid = docker("run", "-d", "--rm", "--name", name, "debian:bookworm-slim", "sh", "-c",
                     f"mkdir -p /swe2e-files && printf {data} > '{inside}' && "
                     f"while :; do cat '{inside}' > /dev/null; done").stdout.strip()[:12]
        reads, writes = [], []
        for msg in receive(sock, time.monotonic() + 30):
            mine = [e for e in msg.events if e["comm"] == "cat" and e["container_id"] == cid]
            reads += [e for e in mine if e["syscall"] == "read" and e["ret"] == len(data)]
            writes += [e for e in mine if e["syscall"] == "write" and e["count"] == len(data)]
            if len(reads) >= 20 and len(writes) >= 20:
                break
        assert len(reads) >= 20 and len(writes) >= 20, (len(reads), len(writes))
        assert {e["path"] for e in reads} == {inside}, {e["path"] for e in reads}
        assert {e["path"] for e in writes} == {"/dev/null"}, {e["path"] for e in writes}
    finally:
        docker("rm", "-f", name, check=False)
        sock.close()
        ctx.term()


def test_ip_list_survives_api_restart_and_recreate(stack):
    ips = ["10.0.0.1", 3232235777, "2001:db8::1"]
    assert stack.http("POST", "/clear_ip_list", {"clear_ip_list": True})[0] == 200
    code, added = stack.http("POST", "/add_ips", {"add_ips": ips})
    assert code == 200, added

    stack.compose("restart", "api", timeout=120)
    stack.wait_api_answers()
    code, listed = stack.http("POST", "/print_all_ips", {"print_all_ips": True})
    assert (code, listed["ips"], listed["total_ips"]) == (200, ips, 3), listed

    # A new container (as after an image upgrade) finds the list on the named volume.
    old = stack.container_id("api")
    stack.compose("up", "-d", "--force-recreate", "--no-deps", "api", timeout=120)
    assert stack.container_id("api") != old
    stack.wait_api_answers()
    code, listed = stack.http("POST", "/print_all_ips", {"print_all_ips": True})
    assert (code, listed["ips"]) == (200, ips), listed
    stack.http("POST", "/clear_ip_list", {"clear_ip_list": True})


def test_api_container_is_unprivileged(stack):
    info = stack.inspect("api")
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] and any(c in ("ALL", "CAP_ALL") for c in host["CapDrop"]), host["CapDrop"]
    assert not host.get("CapAdd")
    assert host["Privileged"] is False
    assert any(o.startswith("no-new-privileges") for o in host["SecurityOpt"]), host["SecurityOpt"]

    cid = info["Id"]
    assert docker("exec", cid, "id", "-u").stdout.strip() != "0"
    # PID 1 is the API server itself: what the kernel says about its credentials.
    status = dict(line.split(":\t", 1) for line in
                  docker("exec", cid, "cat", "/proc/1/status").stdout.splitlines() if ":\t" in line)
    assert int(status["Uid"].split()[0]) != 0, status["Uid"]
    for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, f"{cap}={status[cap]}"
    assert status["NoNewPrivs"].strip() == "1"
    assert docker("exec", cid, "cat", "/proc/1/cmdline").stdout.split("\0")[:3] == ["python3", "-m", "api.server"]

    ro = docker("exec", cid, "touch", "/opt/syswatch/api/x", check=False)
    assert ro.returncode != 0 and "Read-only file system" in ro.stderr, ro
    assert docker("exec", cid, "touch", "/data/.probe", check=False).returncode == 0  # the volume is writable
    docker("exec", cid, "rm", "-f", "/data/.probe")


def test_published_ports_are_loopback_only(stack):
    for service, port in (("api", "8080/tcp"), ("collector", "5556/tcp")):
        bindings = stack.inspect(service)["NetworkSettings"]["Ports"][port]
        assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings), (service, bindings)


def test_collector_runs_unprivileged_but_for_sys_admin_and_ipc_lock(stack):
    info = stack.inspect("collector")
    host = info["HostConfig"]
    assert host["Privileged"] is False
    assert host["PidMode"] == "host"
    assert sorted(c.replace("CAP_", "") for c in host["CapAdd"]) == ["IPC_LOCK", "SYS_ADMIN"]
    # The collector's view of PIDs is the host's: its PID 1 is the host's init, not itself.
    pid = info["State"]["Pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:3] == [b"python3", b"-m", b"collector.collector"]


def test_collector_comes_back_after_bpftrace_is_killed(stack):
    """SIGKILL to bpftrace: the collector exits, `restart: unless-stopped` brings it back, and a
    subscriber that stayed connected the whole time receives again; the API stays healthy."""
    ctx = zmq.Context()
    sock = zmqsock.make_subscriber(ctx, stack.collector_endpoint, (protocol.TOPIC_STATUS,))
    try:
        assert wait_for_status(sock)
        info = stack.inspect("collector")
        state, restarts = info["State"], info["RestartCount"]
        children = open(f"/proc/{state['Pid']}/task/{state['Pid']}/children").read().split()
        bpftrace = [int(p) for p in children if open(f"/proc/{p}/comm").read().strip() == "bpftrace"]
        assert bpftrace, f"no bpftrace child of the collector (pid {state['Pid']}): {children}"
        os.kill(bpftrace[0], signal.SIGKILL)

        deadline = time.monotonic() + 30
        while stack.inspect("collector")["RestartCount"] == restarts:
            assert time.monotonic() < deadline, f"collector was not restarted; logs:\n{stack.logs('collector')}"
            time.sleep(0.2)
        after = stack.wait_running("collector")
        assert after["Pid"] != state["Pid"]
        # Same socket, never reconnected by hand: ZeroMQ reconnects to the new collector.
        for msg in receive(sock, time.monotonic() + 30):
            if after["Pid"] in msg.payload["excluded_pids"]:
                break
        else:
            raise AssertionError(f"no status from the restarted collector (pid {after['Pid']})")
    finally:
        sock.close()
        ctx.term()
    wait_connected(stack, True)  # the API's subscriber resumed too


def wait_connected(stack: ComposeStack, want: bool, timeout: float = 30) -> dict:
    """Poll /healthz (which must answer 200 throughout) until it says collector_connected == want."""
    deadline = time.monotonic() + timeout
    while True:
        code, health = stack.http("GET", "/healthz")
        assert code == 200, (code, health)
        if health["collector_connected"] is want:
            return health
        assert time.monotonic() < deadline, f"collector_connected never became {want}: {health}"
        time.sleep(0.5)


def test_api_stays_healthy_while_the_collector_is_away(stack):
    wait_connected(stack, True)
    stack.compose("stop", "collector", timeout=60)
    try:
        wait_connected(stack, False)
        code, stats = stack.http("GET", "/stats")
        assert code == 200 and stats["connected"] is False
    finally:
        stack.compose("start", "collector", timeout=60)
    wait_connected(stack, True)
    assert stack.inspect("api")["State"]["Running"] and "Health" not in stack.inspect("api")["State"]


# The collector image also runs the unprivileged NATS bridge (subscribers/nats_bridge.py) as a sidecar.
@pytest.mark.parametrize("service, packages", [("collector", ["collector", "subscribers"]), ("api", ["api"])])
def test_images_hold_only_what_they_run(stack, service, packages):
    image = stack.inspect(service)["Config"]["Image"]
    listing = docker("run", "--rm", "--entrypoint", "sh", image, "-c",
                     "ls -A /opt/syswatch; for t in gcc cc make pip pip3 git curl; do command -v $t; done; "
                     "python3 -c 'import pytest' 2>/dev/null && echo pytest; true").stdout.split()
    assert listing == sorted([*packages, "shared", "syswatch"]), listing   # syswatch/: the package's __init__ only
    size_mb = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6
    stack.timings[f"{service} image MB"] = size_mb


def test_collector_container_without_the_hosts_tracefs_mounts_its_own(stack):
    """Hosts where tracefs is not mounted: the compose bind mount then brings an empty directory.
    Started without the tracefs/debugfs volumes, the collector mounts tracefs itself and traces."""
    image = stack.inspect("collector")["Config"]["Image"]
    port = free_port()
    name = f"{stack.project}-notracefs"
    docker("run", "-d", "--rm", "--name", name, "--pid", "host", "--cap-add", "SYS_ADMIN", "--cap-add", "IPC_LOCK",
           "--security-opt", "seccomp:unconfined", "--security-opt", "apparmor:unconfined",
           "-p", f"127.0.0.1:{port}:5556", image)
    ctx = zmq.Context()
    sock = zmqsock.make_subscriber(ctx, f"tcp://127.0.0.1:{port}", (protocol.TOPIC_STATUS,))
    try:
        status = wait_for_status(sock, timeout=30)
        assert status["probe"] in ("kprobe", "tracepoint")
        logs = docker("logs", name).stderr + docker("logs", name).stdout
        assert "tracefs is not mounted: mounting it on /sys/kernel/tracing" in logs, logs[-2000:]
    finally:
        sock.close()
        ctx.term()
        docker("rm", "-f", name, check=False)


def test_a_failing_test_still_removes_its_stack(stack):
    """The guarantee every test here relies on: `down -v` runs even when the body raises."""
    other = ComposeStack(api_port=free_port(), collector_port=free_port())
    with pytest.raises(RuntimeError, match="a test failed"):
        with other.running(report=lambda line: None):
            assert docker("ps", "-q", "--filter", f"label=com.docker.compose.project={other.project}").stdout.strip()
            raise RuntimeError("a test failed")
    label = f"label=com.docker.compose.project={other.project}"
    assert docker("ps", "-aq", "--filter", label).stdout.strip() == ""
    assert docker("volume", "ls", "-q", "--filter", label).stdout.strip() == ""
    assert docker("network", "ls", "-q", "--filter", label).stdout.strip() == ""
