"""PIDs whose I/O the stream leaves out, so the stream never watches itself.

Three kinds, all listed in ``status.excluded_pids``:
- the collector and its bpftrace: excluded in the kernel (the program's predicate);
- subscribers: every subscriber built with shared.zmqsock.make_subscriber subscribes to
  ``~subscriber:<pid>:<pid namespace inode>``. Receiving a batch makes a subscriber read and
  write (ZeroMQ's eventfd signalling, the API's answers), and without this every such call
  would be published again, forever. The collector maps the PID to a host PID (a subscriber in
  a container announces its own namespace's PID) and admits it only if that process holds an
  established TCP connection to the collector's port, so a process cannot hide by announcing
  some other PID. Announced PIDs are checked again every REFRESH_S and dropped once the process
  is gone or disconnected. At most MAX_SUBSCRIBERS are kept.
- other collectors on the same host (a bpftrace running syswatch's program, owned by root, and
  its root parent): each would otherwise publish the other's output I/O, and the two streams
  would feed each other. Found by a scan of /proc every REFRESH_S.
Subscribers and peers are filtered in user space before publishing: ``announce`` and ``refresh``
return the set of PIDs to leave out (a new frozenset, never changed afterwards), which the loop
hands to the parser (its ``excluded_pids``); their events are counted in ``excluded``, never published.

Limit, documented: a process that connects to the collector and announces itself is left out
of the stream while it stays connected; it is listed in ``excluded_pids`` and logged.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

from syswatch.collector.program import READY

log = logging.getLogger("syswatch.collector")

REFRESH_S = 2.0
MAX_SUBSCRIBERS = 64
_ESTABLISHED = "01"


def _host_pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _nspid(pid: str, proc: str) -> list[int]:
    """The PIDs of a process in each nested namespace (/proc/PID/status "NSpid:", readable by all)."""
    with open(f"{proc}/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return []


def host_pids(pid: int, pid_ns: int, proc: str = "/proc") -> list[int]:
    """Host PIDs that may be process ``pid`` of PID namespace ``pid_ns``: exactly one when the
    namespace can be read (/proc/N/ns/pid needs ptrace access), else every process whose
    innermost PID is ``pid`` in a nested namespace (the connection check decides)."""
    if pid_ns == _host_pid_namespace():
        return [pid] if os.path.exists(f"{proc}/{pid}") else []
    maybe = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            nspid = _nspid(name, proc)
            if len(nspid) < 2 or nspid[-1] != pid:
                continue
            try:
                if os.stat(f"{proc}/{name}/ns/pid").st_ino == pid_ns:
                    return [int(name)]
            except PermissionError:         # an unprivileged process seen without CAP_SYS_PTRACE
                maybe.append(int(name))
        except (OSError, ValueError):
            continue
    return maybe


def _socket_inodes(pid: int, proc: str) -> set[str] | None:
    """The inodes of the process's sockets, or None when its fds cannot be read (no ptrace access)."""
    try:
        names = os.listdir(f"{proc}/{pid}/fd")
    except PermissionError:
        return None
    inodes = set()
    for fd in names:
        try:
            target = os.readlink(f"{proc}/{pid}/fd/{fd}")
        except PermissionError:             # the list may be readable, the links not
            return None
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connected_to(pid: int, port: int, proc: str = "/proc") -> bool:
    """Whether process ``pid`` holds an established TCP connection to remote port ``port``.

    Where its fds cannot be read (a process of another user, in a container, and no
    CAP_SYS_PTRACE), a connection to that port in the process's network namespace counts."""
    try:
        inodes = _socket_inodes(pid, proc)
    except OSError:
        return False
    if inodes is not None and not inodes:
        return False
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/{pid}/net/{table}") as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9 and cols[3] == _ESTABLISHED and (inodes is None or cols[9] in inodes) \
                            and int(cols[2].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


def _owner_is_root(pid: int, proc: str) -> bool:
    try:
        return os.stat(f"{proc}/{pid}").st_uid == 0
    except OSError:
        return False


def peer_collectors(own: set[int], proc: str = "/proc") -> set[int]:
    """PIDs of other syswatch collectors' bpftrace processes and their (root) parents."""
    marker = READY.encode()
    found: set[int] = set()
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) in own:
            continue
        pid = int(name)
        try:
            with open(f"{proc}/{name}/cmdline", "rb") as f:
                cmdline = f.read(1 << 20)
            if marker not in cmdline or not cmdline.split(b"\0", 1)[0].endswith(b"bpftrace") \
                    or not _owner_is_root(pid, proc):
                continue
            found.add(pid)
            with open(f"{proc}/{name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            if ppid > 1 and ppid not in own and _owner_is_root(ppid, proc):
                found.add(ppid)
        except (OSError, ValueError, IndexError):
            continue
    return found


class Exclusions:
    """Which subscriber and peer-collector PIDs the stream leaves out (``excluded``)."""

    def __init__(self, own: list[int], port: int | None, clock: Callable[[], float] = time.monotonic):
        self.excluded: frozenset[int] = frozenset()   # replaced, never mutated: the parser holds it
        self.own = set(own)
        self.port = port                       # the collector's TCP port; None for ipc:// etc.
        self.subscribers: dict[int, tuple[int, int]] = {}   # host pid -> (pid, ns) as announced
        self.peers: set[int] = set()
        self._clock = clock
        self._next_refresh = 0.0
        self.refused = 0

    def announce(self, pid: int, pid_ns: int) -> frozenset[int]:
        """A subscriber announced itself: verify and exclude it. Returns ``excluded``."""
        candidates = [p for p in host_pids(pid, pid_ns) if p not in self.own]
        if self.port is not None and len(candidates) > 1:
            candidates = [p for p in candidates if connected_to(p, self.port)]
        if len(candidates) != 1:
            self.refused += 1
            log.warning("a subscriber announced PID %d of PID namespace %d, which matches %d processes "
                        "here: not excluded", pid, pid_ns, len(candidates))
            return self.excluded
        hpid = candidates[0]
        if hpid in self.subscribers:
            return self.excluded
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            self.refused += 1
            log.warning("subscriber PID %d not excluded: %d subscribers are excluded already (the maximum)",
                        hpid, MAX_SUBSCRIBERS)
            return self.excluded
        # ZeroMQ passes a subscription on only after the handshake: the connection is up by now.
        if self.port is not None and not connected_to(hpid, self.port):
            self.refused += 1
            log.warning("subscriber PID %d announced itself but holds no connection to port %d: "
                        "not excluded", hpid, self.port)
            return self.excluded
        self.subscribers[hpid] = (pid, pid_ns)
        log.info("subscriber PID %d (%s): its own I/O is left out of the stream", hpid, _comm(hpid))
        return self._apply()

    def refresh(self, force: bool = False) -> frozenset[int]:
        """Every REFRESH_S: drop subscribers that left, find other collectors. Returns ``excluded``."""
        now = self._clock()
        if not force and now < self._next_refresh:
            return self.excluded
        self._next_refresh = now + REFRESH_S
        for hpid in list(self.subscribers):
            alive = os.path.exists(f"/proc/{hpid}")
            if not alive or (self.port is not None and not connected_to(hpid, self.port)):
                del self.subscribers[hpid]
                log.info("subscriber PID %d left: its I/O is traced again", hpid)
        peers = peer_collectors(self.own)
        if peers - self.peers:
            log.info("other syswatch collector processes on this host: %s (their I/O is left out)",
                     ", ".join(map(str, sorted(peers))))
        self.peers = peers
        return self._apply()

    def _apply(self) -> frozenset[int]:
        pids = frozenset(self.subscribers) | self.peers
        if pids != self.excluded:
            self.excluded = pids
        return self.excluded

    def pids(self) -> list[int]:
        """Every excluded PID, for status: own first."""
        return [*sorted(self.own), *sorted(set(self.subscribers) | self.peers)]


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"
