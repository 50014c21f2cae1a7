"""What the events program must know about the running kernel, found once at start-up.

* Where a returning syscall's arguments are: the user's registers (``struct pt_regs``) sit at the
  top of the thread's kernel stack, ``task->stack + THREAD_SIZE - padding``. THREAD_SIZE is 16 KiB
  on x86-64, 32 KiB with KASAN; the padding is 16 bytes with FRED (6.9+), else 0. Both come from
  the kernel's build configuration (/proc/config.gz or /boot/config-RELEASE); without one the
  usual layout is assumed. Either way the program checks every call (the syscall number and the
  return value in the registers it found must be the call's own) and never publishes arguments
  that fail the check: they count in status ``unreadable_total`` instead.
* Offsets bpftrace 0.17 cannot compute (collector/btf.py): the thread's name in task_struct, the
  ``struct vfsmount`` inside ``struct mount``.
* The devices of the kernel's internal filesystems, whose files have no path: pipes, sockets,
  anonymous inodes (eventfd, timerfd, ...) and memfd (an internal tmpfs). Their files are named
  as the kernel names them: ``pipe:[INO]``, ``socket:[INO]``, ``anon_inode:[NAME]``,
  ``/memfd:NAME (deleted)``.
"""
from __future__ import annotations

import gzip
import logging
import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path

from syswatch.collector import btf
from syswatch.shared.record import kernel_dev

log = logging.getLogger("syswatch.collector")

CONFIG_PATHS = (Path("/proc/config.gz"), Path(f"/boot/config-{platform.release()}"))


@dataclass(frozen=True)
class Kernel:
    """The layout facts the events program is rendered with (kernel dev_t encodings)."""
    comm_offset: int = 0           # task_struct.comm
    mount_mnt_offset: int = 32     # struct mount's struct vfsmount
    stack_top: int = 16384         # task->stack + stack_top is where the user's pt_regs end
    pipe_dev: int = 0
    sock_dev: int = 0
    anon_dev: int = 0
    memfd_dev: int = 0
    layout_from: str = "assumed"   # where stack_top came from, for the log

    def pseudo_devs(self) -> dict[int, str]:
        """dev -> which internal filesystem ("pipe", "sock", "anon", "memfd")."""
        return {d: k for d, k in ((self.pipe_dev, "pipe"), (self.sock_dev, "sock"), (self.anon_dev, "anon"),
                                  (self.memfd_dev, "memfd")) if d}


def kernel_config() -> dict[str, str] | None:
    """CONFIG_* -> value of the running kernel's build, or None when no configuration is readable."""
    for path in CONFIG_PATHS:
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except OSError:
            continue
        out = {}
        for line in raw.decode("ascii", "replace").splitlines():
            key, sep, val = line.partition("=")
            if sep and key.startswith("CONFIG_"):
                out[key] = val
        return out
    return None


def stack_top(config: dict[str, str] | None) -> tuple[int, str]:
    """(THREAD_SIZE - padding, where it came from) for x86-64."""
    if config is None:
        return 16384, "assumed (no kernel configuration readable)"
    size = 32768 if config.get("CONFIG_KASAN") == "y" else 16384
    pad = 16 if config.get("CONFIG_X86_FRED") == "y" else 0
    return size - pad, "kernel configuration"


def _pseudo_devs() -> tuple[int, int, int, int]:
    devs = []
    r, w = os.pipe()
    try:
        devs.append(kernel_dev(os.fstat(r).st_dev))
    finally:
        os.close(r)
        os.close(w)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        devs.append(kernel_dev(os.fstat(s.fileno()).st_dev))
    for make in (lambda: os.eventfd(0), lambda: os.memfd_create("syswatch")):
        try:
            fd = make()
        except (OSError, AttributeError):
            devs.append(0)
            continue
        try:
            devs.append(kernel_dev(os.fstat(fd).st_dev))
        finally:
            os.close(fd)
    return devs[0], devs[1], devs[2], devs[3]


def detect() -> Kernel:
    """The running kernel's facts; btf.BtfError when its BTF lacks what the program reads."""
    if platform.machine() != "x86_64":
        raise btf.BtfError(f"this collector reads x86-64 syscall registers; this machine is {platform.machine()}")
    offs = btf.offsets("task_struct.comm", "mount.mnt")
    top, source = stack_top(kernel_config())
    pipe, sock, anon, memfd = _pseudo_devs()
    return Kernel(comm_offset=offs["task_struct.comm"], mount_mnt_offset=offs["mount.mnt"], stack_top=top,
                  pipe_dev=pipe, sock_dev=sock, anon_dev=anon, memfd_dev=memfd, layout_from=source)
