"""Container ids from every runtime's cgroup layout, on the real kernel (issue 28).

Users' hosts (Ubuntu 24.04, Debian 12 with systemd) have a pure cgroup v2 hierarchy at
/sys/fs/cgroup, where Docker's systemd driver puts a container in system.slice/docker-<id>.scope.
This test builds each runtime's layout as real cgroup v2 groups, moves a child into each, runs one
collector filtered on those children and checks every event's cgroup_id and container_id. It runs
on this CI host (hybrid: v2 at /sys/fs/cgroup/unified) and, through tests/test_kernel_vm.py, in
the kprobe VM, which mounts only cgroup2, at /sys/fs/cgroup (that test checks the VM's hierarchy
and that this module passed there).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from harness.collector import CollectorProcess, StreamReader
from syswatch.collector.containers import find_cgroup2_root
from tests.conftest import have, is_root, require

WRITE_SIZE = 7171

# runtime -> the path of a container's cgroup below the v2 root (ID: its 64 hex digits, POD: a pod uid)
LAYOUTS = {
    "docker, systemd driver": "system.slice/docker-{ID}.scope",
    "docker, systemd driver, a sub-cgroup of the container": "system.slice/docker-{ID}.scope/init",
    "docker, cgroupfs driver": "docker/{ID}",
    "containerd CRI, systemd": "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD}.slice/"
                               "cri-containerd-{ID}.scope",
    "containerd CRI, cgroupfs": "kubepods/besteffort/pod{POD}/{ID}",
    "CRI-O": "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD}.slice/crio-{ID}.scope",
    "podman, systemd": "machine.slice/libpod-{ID}.scope",
    "podman, cgroupfs": "libpod_parent/libpod-{ID}",
    "no container": "syswatch-test.slice/plain-{POD}.scope",
}

CHILD = f"""
import os, sys
fd = os.open("/dev/null", os.O_WRONLY)
print(os.getpid(), flush=True)
sys.stdin.readline()
os.write(fd, b"c" * {WRITE_SIZE})
"""


class Groups:
    """The layouts' groups, made below the v2 root; removed (only what was made) afterwards."""

    def __init__(self, root: Path):
        self.root = root
        self.made: list[Path] = []

    def make(self, rel: str) -> Path:
        path = self.root
        for part in rel.split("/"):
            path = path / part
            if not path.exists():
                path.mkdir()
                self.made.append(path)
        return path

    def remove(self) -> None:
        for path in reversed(self.made):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)       # a child that just exited may still be counted in it


def test_each_runtimes_layout_maps_to_its_container(tmp_path):
    require(is_root(), "run as root (bpftrace and cgroups need it): scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-test.sh does it)")
    root = find_cgroup2_root()
    require(root is not None, "a cgroup v2 hierarchy (/sys/fs/cgroup or /sys/fs/cgroup/unified)")
    v1_mounts = [ln for ln in Path("/proc/mounts").read_text().splitlines() if ln.split()[2] == "cgroup"]
    if os.environ.get("SYSWATCH_VM"):        # the kprobe VM is what users have: cgroup2 alone at /sys/fs/cgroup
        assert str(root) == "/sys/fs/cgroup" and not v1_mounts, (root, v1_mounts)
    groups = Groups(root)
    children: dict[str, tuple[subprocess.Popen, int, Path, str]] = {}
    try:
        for runtime, layout in LAYOUTS.items():
            cid = uuid.uuid4().hex + uuid.uuid4().hex
            leaf = groups.make(layout.format(ID=cid, POD=uuid.uuid4().hex[:8] + "_" + uuid.uuid4().hex[:4]))
            proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
            pid = int(proc.stdout.readline())
            (leaf / "cgroup.procs").write_text(str(pid))
            children[runtime] = (proc, pid, leaf, "" if runtime == "no container" else cid)
        pids = [a for c in children.values() for a in ("-p", str(c[1]))]
        coll = CollectorProcess(tmp_path, "--echo-rate", "0", *pids)
        sub = StreamReader(coll.endpoint)
        try:
            sub.wait_status(timeout=60 * float(os.environ.get("SYSWATCH_TEST_SLOWDOWN", "1")))
            for proc, *_ in children.values():
                proc.stdin.write("go\n")
                proc.stdin.flush()
            got: dict[int, dict] = {}
            for msg in sub.messages(60):
                got.update({e["pid"]: e for e in msg.events if e["count"] == WRITE_SIZE})
                if len(got) == len(children):
                    break
            wrong = []
            for runtime, (_, pid, leaf, cid) in children.items():
                ev = got.get(pid)
                want = (leaf.stat().st_ino, cid[:12])
                seen = (ev["cgroup_id"], ev["container_id"]) if ev else "no event"
                if seen != want:
                    wrong.append(f"{runtime} ({leaf.relative_to(root)}): want {want}, got {seen}")
            assert not wrong, "\n".join(wrong) + f"\nevents: {json.dumps(list(got.values()))[:2000]}"
        finally:
            sub.close()
            coll.kill()
    finally:
        for proc, *_ in children.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        groups.remove()
