"""What the collector reads about other processes in /proc: only world-readable files, bounded.

With the capability set the collector is deployed with (CAP_SYS_ADMIN and CAP_IPC_LOCK, no
CAP_SYS_PTRACE), root may not read another user's /proc/PID/fd, nor the ``exe`` link of a
process holding capabilities the collector lacks. Everything here works without: ``stat`` and
``status`` (names, parent, uids, PIDs in nested namespaces, start time), ``net/tcp`` (in
shared/procnet.py), and ``exe`` where the kernel lets us (``exe_of`` says when it does not).
"""
from __future__ import annotations

import os
from typing import Iterator, NamedTuple

PROC = "/proc"
MAX_PROCESSES = 1 << 17          # a scan reads at most this many /proc entries


class Stat(NamedTuple):
    pid: int
    comm: str
    ppid: int
    start: int                   # start time in clock ticks since boot: tells a reused PID apart


class Status(NamedTuple):
    pid: int
    name: str
    tgid: int
    ppid: int
    uids: tuple[int, ...]        # real, effective, saved, filesystem
    gids: tuple[int, ...]
    nspid: tuple[int, ...]       # the PID in each PID namespace, outermost (ours) first


def read_stat(pid: int, proc: str = PROC) -> Stat | None:
    """/proc/PID/stat, or None if the process is gone (or PID is not a number there)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            raw = f.read(4096)
        head, _, rest = raw.rpartition(b")")
        fields = rest.split()
        return Stat(pid, head.partition(b"(")[2].decode("utf-8", "backslashreplace"), int(fields[1]),
                    int(fields[19]))
    except (OSError, ValueError, IndexError):
        return None


def read_status(pid: int, proc: str = PROC) -> Status | None:
    """/proc/PID/status (also for a thread id: its Tgid then differs), or None."""
    got: dict[str, str] = {}
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            for n, line in enumerate(f):
                if n > 80:
                    break
                key, _, val = line.decode("utf-8", "backslashreplace").partition(":")
                if key in ("Name", "Tgid", "PPid", "Uid", "Gid", "NSpid"):
                    got[key] = val.strip()
        return Status(pid, got.get("Name", ""), int(got["Tgid"]), int(got["PPid"]),
                      tuple(int(x) for x in got["Uid"].split()), tuple(int(x) for x in got["Gid"].split()),
                      tuple(int(x) for x in got.get("NSpid", str(pid)).split()))
    except (OSError, ValueError, KeyError):
        return None


def pids(proc: str = PROC) -> Iterator[int]:
    """The processes (thread group leaders: /proc lists no thread ids) in /proc, at most MAX_PROCESSES."""
    try:
        with os.scandir(proc) as it:
            for n, entry in enumerate(it):
                if n >= MAX_PROCESSES:
                    return
                if entry.name.isdigit():
                    yield int(entry.name)
    except OSError:
        return


class Exe(NamedTuple):
    path: str                    # as the process's mount namespace names it
    uid: int                     # owner of the file
    mode: int


def exe_of(pid: int, proc: str = PROC) -> Exe | None:
    """The executable of a process, or None if the process is gone. PermissionError when the kernel
    will not say (the process holds capabilities this one lacks, or belongs to another user)."""
    try:
        path = os.readlink(f"{proc}/{pid}/exe")
        st = os.stat(f"{proc}/{pid}/exe")
        return Exe(path, st.st_uid, st.st_mode)
    except PermissionError:
        raise
    except OSError:
        return None


def cmdline_has(pid: int, marker: bytes, proc: str = PROC) -> bool:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            return marker in f.read(1 << 20)
    except OSError:
        return False
