"""What each event's fd pointed to: its type and its name, as /proc/PID/fd/N (and strace -y) spell it.

Where the kernel's answer and user space's are combined, and how a race is resolved:

* The kernel (every event) gives the file's inode, device and mode, whether its dentry was
  deleted, and a *name key* that changes when the file's name does; for files only the kernel can
  name (anonymous inodes, memfd) the dentry's name too. These are facts at the time of the call.
* The kernel (every open: open, openat, openat2, creat) walks the new file's dentries and mounts up
  to the opening process's root and prints the path: the name as that process sees it, also for a
  file that is opened, read and closed within microseconds, or by a process that is gone when the
  collector reads the line. Kept per (pid, fd) with the file's (dev, ino, name key).
* User space, for fds opened before the collector started (or whose open was lost): the link
  /proc/PID/fd/N, checked with stat() against the event's (dev, ino).

A name is used only when its (dev, ino) (and, when it has one, its name key) are the event's own:
an fd closed and reused, a pid reused, a rename or an open line that arrived late all show as a
mismatch, and the next source is tried. When none matches the path is "" (unknown), never another
file's name. Names are cached per (pid, fd) with the event's file facts; every cache is bounded.
Pipes and sockets are named from their inode (``pipe:[INO]``, ``socket:[INO]``, and for sockets
the ends, collector/sockets.py), deleted files get " (deleted)", memfd "/memfd:NAME (deleted)".
"""
from __future__ import annotations

import os
import time
from typing import Callable

from syswatch.collector.cache import Bounded
from syswatch.collector.kernel import Kernel
from syswatch.collector.sockets import Sockets
from syswatch.shared.protocol import json_string
from syswatch.shared.record import MAX_PATH, decode_name, file_type, kernel_dev, user_dev

MAX_FDS = 65_536                 # (pid, fd) names kept
MAX_INODES = 65_536              # names of opened files by (dev, ino), for other fds of the same file
MAX_NAME_CHARS = 32 << 20        # characters of names kept in each cache (hostile 4 KiB paths)
MAX_PENDING_OPENS = 4096         # opens whose path lines are still arriving (one per thread)
PRIME_S = 1.0                    # at most this long reading /proc's fds once the probes are attached
DELETED = " (deleted)"


class Opened:
    """A path being assembled from an open's lines (leaf first)."""
    __slots__ = ("pid", "fd", "ino", "dev", "mode", "namekey", "parts", "lens", "broken")

    def __init__(self, pid: int, fd: int, ino: int, dev: int, mode: int, namekey: int):
        self.pid, self.fd, self.ino, self.dev, self.mode, self.namekey = pid, fd, ino, dev, mode, namekey
        self.parts: list[bytes] = []
        self.lens: list[int] = []
        self.broken = False


def _weight(entry: tuple) -> int:
    return len(entry[-1]) + 64


class Files:
    """Names and types for events (``event_json``) and counts rows (``describe``).

    ``paths=False`` (--no-paths): paths and socket ends are left out; types, inodes and devices stay.
    """

    def __init__(self, kernel: Kernel, paths: bool = True, proc: str = "/proc",
                 sockets: Sockets | None = None, readlink: Callable[[str], str] = os.readlink,
                 stat: Callable[[str], os.stat_result] = os.stat, pids: tuple[int, ...] = ()):
        self.kernel = kernel
        self.pids = pids                         # --pid: the processes ``prime`` reads (none: all)
        self.paths = paths
        self.proc = proc
        self.pseudo = kernel.pseudo_devs()
        self.sockets = sockets or Sockets(proc)
        self._readlink, self._stat = readlink, stat
        # (pid, fd) -> (ino, dev, namekey or None, path): from opens and from /proc
        self.by_fd: Bounded[tuple[int, int], tuple] = Bounded(MAX_FDS, MAX_NAME_CHARS, _weight)
        # (dev, ino) -> (namekey, path): from opens, for a dup'ed or inherited fd whose process is gone
        self.by_inode: Bounded[tuple[int, int], tuple] = Bounded(MAX_INODES, MAX_NAME_CHARS, _weight)
        self.pending: dict[int, Opened] = {}     # tid -> open being read
        self.resolved = {"open": 0, "proc": 0, "inode": 0, "pseudo": 0, "unknown": 0}

    def prime(self, clock: Callable[[], float] = time.monotonic) -> int:
        """Once the probes are attached: the open fds of the processes running now, from /proc
        (bounded by MAX_FDS and PRIME_S). A file opened before the collector started is then named
        even when its process closes it or exits before the collector reads the call's line (every
        later open is named by the open probe). Returns the fds read."""
        end, n = clock() + PRIME_S, 0
        try:
            pids = self.pids or [int(d) for d in os.listdir(self.proc) if d.isdigit()]
        except OSError:
            return 0
        for pid in pids:
            try:
                fds = os.listdir(f"{self.proc}/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                if n >= MAX_FDS or clock() > end:
                    return n
                link = f"{self.proc}/{pid}/fd/{fd}"
                try:
                    target, st = self._readlink(link), self._stat(link)
                except (OSError, ValueError):
                    continue
                dev = kernel_dev(st.st_dev)
                if dev in self.pseudo or not target.startswith("/"):
                    continue                     # pipes, sockets, anon inodes: named from the event
                path = decode_name(os.fsencode(target))
                if path.endswith(DELETED):
                    path = path[:-len(DELETED)]
                if len(path) <= MAX_PATH - len(DELETED):
                    self.by_fd.put((pid, int(fd)), (st.st_ino, dev, None, path))
                    n += 1
        return n

    # --- open lines ---------------------------------------------------------------------------
    def open_start(self, pid: int, tid: int, fd: int, ino: int, dev: int, mode: int, namekey: int) -> None:
        if len(self.pending) >= MAX_PENDING_OPENS and tid not in self.pending:
            self.pending.clear()                 # lines of threads whose end was lost: start over
        self.pending[tid] = Opened(pid, fd, ino, dev, mode, namekey)

    def open_name(self, tid: int, length: int, raw: bytes) -> None:
        op = self.pending.get(tid)
        if op is not None:
            op.parts.append(raw)
            op.lens.append(length)

    def open_more(self, tid: int, raw: bytes) -> None:
        op = self.pending.get(tid)
        if op is not None and op.parts:
            op.parts[-1] += raw

    def open_end(self, tid: int, components: int, complete: bool) -> None:
        op = self.pending.pop(tid, None)
        if op is None or not complete or components != len(op.parts) \
                or any(len(p) != n for p, n in zip(op.parts, op.lens)):
            return                               # a lost line or a path deeper than the walk: /proc later
        path = decode_name(b"/" + b"/".join(reversed(op.parts)))
        if len(path) > MAX_PATH - len(DELETED):
            return
        if op.dev not in self.pseudo:
            self.by_fd.put((op.pid, op.fd), (op.ino, op.dev, op.namekey, path))
            self.by_inode.put((op.dev, op.ino), (op.namekey, path))

    # --- events -------------------------------------------------------------------------------
    def name(self, pid: int, fd: int, ino: int, dev: int, namekey: int | None, deleted: bool,
             kname: bytes | None = None) -> tuple[str, str, str | None]:
        """(file_type source, path, sock) for one call's file; the type's source is the mode's."""
        kind = self.pseudo.get(dev)
        if kind == "pipe":
            return "", f"pipe:[{ino}]", None
        if kind == "sock":
            return "", f"socket:[{ino}]", (self.sockets.describe(pid, ino) if self.paths else "")
        if kind == "anon":
            if kname is not None:
                self.resolved["pseudo"] += 1
                return "anon", "anon_inode:" + decode_name(kname), None
            return "anon", self._proc(pid, fd, ino, dev, namekey, deleted=False, pseudo=True), None
        if kind == "memfd" and kname is not None:
            self.resolved["pseudo"] += 1
            return "", "/" + decode_name(kname) + DELETED, None
        if not ino and not dev:
            return "unknown", "", None
        return "", self._path(pid, fd, ino, dev, namekey, deleted), None

    def _path(self, pid: int, fd: int, ino: int, dev: int, namekey: int | None, deleted: bool) -> str:
        suffix = DELETED if deleted else ""
        hit = self.by_fd.get((pid, fd))
        if hit is not None and hit[0] == ino and hit[1] == dev and (namekey is None or hit[2] in (None, namekey)):
            self.resolved["open"] += 1
            return hit[3] + suffix
        path = self._proc(pid, fd, ino, dev, namekey, deleted)
        if path:
            return path
        alt = self.by_inode.get((dev, ino))
        if alt is not None and (namekey is None or alt[0] == namekey):
            self.resolved["inode"] += 1
            return alt[1] + suffix
        self.resolved["unknown"] += 1
        return ""

    def _proc(self, pid: int, fd: int, ino: int, dev: int, namekey: int | None, deleted: bool,
              pseudo: bool = False) -> str:
        """/proc/PID/fd/FD, if it still points to this file (checked with stat against dev, ino)."""
        link = f"{self.proc}/{pid}/fd/{fd}"
        try:
            target = self._readlink(link)
            st = self._stat(link)
        except (OSError, ValueError):
            return ""
        if st.st_ino != ino or st.st_dev != user_dev(dev):
            return ""                            # closed and reused since the call: not this file
        self.resolved["proc"] += 1
        path = decode_name(os.fsencode(target))
        if pseudo:
            return path
        if path.endswith(DELETED):
            path = path[:-len(DELETED)]
        if len(path) <= MAX_PATH - len(DELETED):
            self.by_fd.put((pid, fd), (ino, dev, namekey, path))
        return path + (DELETED if deleted else "")

    def event_json(self, pid: int, fd: int, ino: int, dev: int, mode: int, namekey: int | None,
                   deleted: bool, kname: bytes | None = None) -> tuple[bytes, str]:
        """The event's file fields as JSON (``"file_type":..,"path":..,"ino":..,"dev":..[,"sock":..]``)
        and its path (for --path)."""
        ftype, path, sock = self.name(pid, fd, ino, dev, namekey, deleted, kname)
        ftype = ftype or file_type(mode)
        if not self.paths:
            path = ""
        out = b'"file_type":"%s","path":%s,"ino":%d,"dev":%d' % (
            ftype.encode(), json_string(path), ino, user_dev(dev) if dev else 0)
        if sock is not None:
            out += b',"sock":' + json_string(sock)
        return out, path

    def out_json(self, pid: int, fd: int, ino: int, dev: int, mode: int, namekey: int | None,
                 deleted: bool) -> tuple[bytes, str]:
        """A two-fd call's destination as JSON to follow ``event_json``'s (``,"fd_out":..,"path_out":..,
        "file_type_out":..``; the kernel gives no name of its own here: /proc names anon and memfd
        files) and its path (for --path)."""
        if fd < 0 or (not ino and not dev):
            ftype, path = "unknown", ""
        else:
            kind, path, _sock = self.name(pid, fd, ino, dev, namekey, deleted)
            ftype = kind or file_type(mode)
        if not self.paths:
            path = ""
        return b',"fd_out":%d,"path_out":%s,"file_type_out":"%s"' % (fd, json_string(path), ftype.encode()), path
