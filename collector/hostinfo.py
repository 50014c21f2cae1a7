"""The traced machine's name, also when the collector runs in a container.

In docker-compose the collector's own UTS namespace holds the container's id as hostname, and
docker-compose 1.29 has no `uts: host`. The compose file mounts the host's /etc/hostname at
/host/etc/hostname, which is read first. Elsewhere, when the collector runs in another UTS
namespace than PID 1 (the host's init, with `pid: host`) and may look at it, a short-lived thread
joins PID 1's UTS namespace (setns changes only the calling thread) and asks.
"""
from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWUTS = 0x04000000


def _same_uts() -> bool:
    try:
        return os.readlink("/proc/self/ns/uts") == os.readlink("/proc/1/ns/uts")
    except OSError:
        return True                     # cannot tell: use our own name


MOUNTED_HOSTNAME = "/host/etc/hostname"


def host_name() -> str:
    """The host's name: the mounted host /etc/hostname, ours, or PID 1's in another UTS namespace."""
    try:
        with open(MOUNTED_HOSTNAME) as f:
            name = f.read().strip()
        if name:
            return name
    except OSError:
        pass
    if _same_uts():
        return socket.gethostname()
    result: list[str] = []

    def ask() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open("/proc/1/ns/uts", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWUTS) == 0:
                    result.append(socket.gethostname())
            finally:
                os.close(fd)
        except OSError:
            pass

    t = threading.Thread(target=ask, name="syswatch-hostname")
    t.start()
    t.join()
    if result:
        return result[0]
    try:                                # no CAP_SYS_ADMIN: the host's /etc/hostname through PID 1's root
        with open("/proc/1/root/etc/hostname") as f:
            return f.read().strip() or socket.gethostname()
    except OSError:
        return socket.gethostname()


ONLINE_CPUS = "/sys/devices/system/cpu/online"


def online_cpus(path: str = ONLINE_CPUS) -> list[int]:
    """The CPUs bpftrace's profile probes attach to: the kernel's online list ("0-3,6"), as bpftrace
    reads it. Falls back to 0..cpu_count-1 when it cannot be read or parsed."""
    try:
        with open(path) as f:
            text = f.read().strip()
        cpus: set[int] = set()
        for part in text.split(","):
            lo, dash, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi if dash else lo) + 1))
        if cpus:
            return sorted(cpus)
    except (OSError, ValueError):
        pass
    return list(range(os.cpu_count() or 1))
