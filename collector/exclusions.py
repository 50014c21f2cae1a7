"""What the stream leaves out so that it never watches itself, found and verified by the collector.

Receiving the stream makes a subscriber read and write (ZeroMQ's eventfd signalling); published
again, those calls would feed the stream forever (98% of an idle stream once). Three kinds of
process are concerned, all listed in ``status.excluded`` (pid, kind, what of it is left out):

- **self**: the collector and its bpftrace, left out in the kernel (the program's predicate).
- **subscribers**: every socket of shared.zmqsock.make_subscriber subscribes to
  ``~subscriber:<pid>:<pid namespace inode>``. That is a claim, verified here, never taken on
  its word (docs/SECURITY.md, "Exclusion"):
  * the PID is a process, not a thread (/proc/<tid> exists for every thread; its Tgid differs);
  * a PID of another PID namespace is looked up in an index of /proc built at most every
    REFRESH_S and only while such an announce waits: an announce never scans /proc;
  * in that process's network namespace (its /proc/PID/net/tcp, world-readable) a socket owned
    by that process's uid (real and effective) is the other end of one of the collector's own
    connections (its /proc/self/net/tcp and fds), and that connection backs no other subscriber
    (one subscriber per connection); on ipc:// the kernel names the peer process (SO_PEERCRED).
    No namespace or port is taken instead of the socket: a process of another user, or one
    without a connection of its own, is refused;
  * announces wait in a bounded queue (MAX_PENDING) and are verified in batches (BATCH every
    BATCH_S at most; a network namespace's table is read once per batch); at most MAX_PER_UID
    subscribers per uid and MAX_SUBSCRIBERS in all; every refusal is counted
    (``status.announces_refused_total``) and logged at a bounded rate.
  Verified subscribers are checked again every REFRESH_S and dropped once gone, replaced (a new
  start time) or disconnected.
- **peers**: other syswatch collectors on the host, found by a scan of /proc every REFRESH_S and
  identified by what they are, not by their argv: a process whose every uid is 0 (a set-uid
  program started by a user keeps that user's real uid), whose executable is a root-owned file
  named bpftrace (where the kernel lets us read its ``exe``; where it does not, the peer holds
  capabilities we lack, and its name must be bpftrace), running syswatch's program (the
  marker in its command line only narrows, it never admits on its own); and its parent if every
  uid of that is 0 too. Left out as whole processes: their I/O is their collector's work (the
  output pipe, /proc scans, publishing), only root can start one, and root can unload our probes
  anyway.

What "left out" means for a subscriber: its ZeroMQ eventfd signalling and its connections to the
collector, decided per event by collector/streamio.py from ``rules`` (a value replaced on change).
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections import Counter
from typing import Callable, NamedTuple

from syswatch.collector import procscan
from syswatch.collector.program import READY
from syswatch.collector.streamio import Rules
from syswatch.shared import procnet
from syswatch.shared.ratelog import RateLimitedLog

log = logging.getLogger("syswatch.collector")

REFRESH_S = 2.0
MAX_SUBSCRIBERS = 256
MAX_PER_UID = 16
MAX_PENDING = 256                # distinct (pid, namespace) announces waiting to be verified
BATCH = 100                      # announces verified per batch...
BATCH_S = 0.1                    # ...and a batch at most this often
MAX_ANNOUNCES_PER_PID = 8        # sockets one process may announce (one connection each)


class Subscriber(NamedTuple):
    pid: int                     # host PID
    announced: tuple[int, int]   # (pid, pid namespace) as announced
    uid: int
    start: int                   # /proc/PID/stat start time: a reused PID is another process
    comm: str
    claims: frozenset[int]       # the inodes of the collector's connections it holds (one each)
    peer_sockets: frozenset[int]  # the inodes of its ends of those connections


class Peer(NamedTuple):
    pid: int
    start: int
    comm: str
    why: str                     # "bpftrace running syswatch's program" / "parent of ..."


class Connection(NamedTuple):
    """One of the collector's own accepted connections, seen from its side."""
    inode: int
    local: procnet.Endpoint
    remote: procnet.Endpoint


class _Batch:
    """What one batch of verifications reads once: the collector's connections, and the TCP table
    of each network namespace involved (told apart by the inode of /proc/PID/net/tcp, which is
    the namespace's own entry; only a cache key, never evidence)."""

    def __init__(self, owner: Exclusions):
        self._owner = owner
        self._conns: list[Connection] | None = None
        self._tables: dict[int, dict] = {}

    def connections(self) -> list[Connection]:
        if self._conns is None:
            self._conns = self._owner._connections()
        return self._conns

    def table(self, pid: int) -> dict:
        """(local, remote) -> established socket, in process ``pid``'s network namespace."""
        net = f"{self._owner.proc}/{pid}/net"
        try:
            key = os.stat(f"{net}/tcp").st_ino
        except OSError:
            return {}
        got = self._tables.get(key)
        if got is None:
            got = self._tables[key] = {(s.local, s.remote): s
                                       for s in procnet.tcp_sockets(net, states=(procnet.ESTABLISHED,))}
        return got


class Exclusions:
    """What the stream leaves out: ``rules`` (for collector/streamio.py) and ``excluded`` (the PIDs
    concerned), both replaced on change, never mutated; why, in ``entries()``. ``announce`` queues
    a claim; ``refresh`` (call it every loop round: it returns at once unless work is due)
    verifies and re-checks within its budgets."""

    def __init__(self, own: list[int], port: int | None, clock: Callable[[], float] = time.monotonic,
                 proc: str = procscan.PROC, ipc_path: str | None = None):
        self.excluded: frozenset[int] = frozenset()    # PIDs of which something is left out
        self.rules = Rules()                           # what exactly: collector/streamio.py
        self.own = set(own)
        self.port = port                       # the collector's TCP port; None for ipc://
        self.ipc_path = ipc_path               # the collector's ipc:// path, if that is what it binds
        self.proc = proc
        self.subscribers: dict[int, Subscriber] = {}
        self.peers: dict[int, Peer] = {}
        self.refused = 0
        self.refusals: Counter[str] = Counter()
        self._clock = clock
        self._next_refresh = 0.0
        # (pid, ns) -> [announces, peer ip, arrived]; this PID namespace's apart from the others', so
        # a flood naming other namespaces (which wait for the index) cannot crowd out a subscriber here
        self._pending: dict[tuple[int, int], list] = {}
        self._pending_nested: dict[tuple[int, int], list] = {}
        self._next_batch = 0.0
        self._index: dict[int, list[int]] = {}              # innermost nested PID -> host PIDs
        self._index_at = -REFRESH_S
        self._own_ns = _pid_namespace()
        self._log_refused = RateLimitedLog(log, burst=5, window_s=60.0)
        self._log_admitted = RateLimitedLog(log, burst=10, window_s=60.0)

    # -- input ------------------------------------------------------------------------------
    def announce(self, pid: int, pid_ns: int, peer_ip: str | None = None) -> frozenset[int]:
        """A subscriber claims (pid, pid namespace); ``peer_ip``: the address its announce came
        from (ZeroMQ's Peer-Address), which narrows the connections it may hold. Queued only."""
        key = (pid, pid_ns)
        queue = self._pending if pid_ns == self._own_ns else self._pending_nested
        waiting = queue.get(key)
        if waiting is not None:
            waiting[0] = min(waiting[0] + 1, MAX_ANNOUNCES_PER_PID)
        elif len(queue) >= MAX_PENDING:
            self._refuse("queue full", f"{MAX_PENDING} announces wait already", pid, pid_ns)
        else:
            queue[key] = [1, peer_ip, self._clock()]
        return self.excluded

    def refresh(self, force: bool = False) -> frozenset[int]:
        """Verifies waiting announces (within the rate), and every REFRESH_S re-checks the
        subscribers and looks for other collectors. Returns ``excluded``."""
        now = self._clock()
        changed = False
        if (self._pending or self._pending_nested) and now >= self._next_batch:
            self._next_batch = now + BATCH_S
            changed |= self._verify_pending(now)
        if force or now >= self._next_refresh:
            self._next_refresh = now + REFRESH_S
            changed |= self._recheck()
            changed |= self._find_peers()
            self._log_refused.tick()
        if changed:
            self._apply()
        return self.excluded

    # -- subscribers ------------------------------------------------------------------------
    def _verify_pending(self, now: float) -> bool:
        """One batch: up to BATCH announces, against one read of each table involved. An announce
        from another PID namespace waits for an index of nested PIDs built after it arrived."""
        batch = _Batch(self)
        changed = False
        done = 0
        nested = [(k, v) for k, v in self._pending_nested.items() if v[2] <= self._index_at]
        if len(nested) < len(self._pending_nested) and now - self._index_at >= REFRESH_S:
            self._build_index(now)             # some arrived after the last index: a new one
            nested = list(self._pending_nested.items())
        for queue, items in ((self._pending, list(self._pending.items())), (self._pending_nested, nested)):
            for key, (count, peer_ip, _) in items:
                if done >= BATCH:
                    return changed
                del queue[key]
                done += 1
                changed |= self._verify(*key, count, peer_ip, batch)
        return changed

    def _build_index(self, now: float) -> None:
        """Host PIDs by their innermost PID, for processes in nested PID namespaces."""
        self._index_at = now
        index: dict[int, list[int]] = {}
        for hpid in procscan.pids(self.proc):
            st = procscan.read_status(hpid, self.proc)
            if st and len(st.nspid) > 1 and st.tgid == hpid:
                index.setdefault(st.nspid[-1], []).append(hpid)
        self._index = index

    def _verify(self, pid: int, ns: int, count: int, peer_ip: str | None, batch: _Batch) -> bool:
        candidates = [pid] if ns == self._own_ns else self._index.get(pid, [])
        statuses = [st for st in (procscan.read_status(c, self.proc) for c in candidates) if st]
        if not statuses:
            return self._refuse("no such process", "no such process", pid, ns)
        threads = [st for st in statuses if st.tgid != st.pid]
        statuses = [st for st in statuses if st.tgid == st.pid and st.pid not in self.own]
        if not statuses:
            if threads:
                return self._refuse("thread", "a thread id, not a process", pid, ns)
            return self._refuse("self", "the collector itself", pid, ns)
        held = {}
        for st in statuses:
            found = self._held_connections(st, batch, peer_ip)
            if found:
                held[st.pid] = (st, found)
        if not held:
            return self._refuse("no connection", "it holds no connection of its own to the collector (no "
                                "socket of its uid in its network namespace is the other end of one, or each "
                                "such connection backs another subscriber)", pid, ns)
        if len(held) > 1:
            return self._refuse("ambiguous", f"it matches {len(held)} processes holding connections", pid, ns)
        ((hpid, (st, found)),) = held.items()
        stat = procscan.read_stat(hpid, self.proc)
        if stat is None:
            return self._refuse("no such process", "gone", pid, ns)
        old = self.subscribers.get(hpid)
        if old is not None and old.start != stat.start:
            old = None                         # the PID was reused: a new process
        if old is None:
            others = [s for p, s in self.subscribers.items() if p != hpid]
            if len(others) >= MAX_SUBSCRIBERS:
                return self._refuse("too many", f"{MAX_SUBSCRIBERS} subscribers are verified already (the maximum)",
                                    pid, ns)
            if sum(1 for s in others if s.uid == st.uids[0]) >= MAX_PER_UID:
                return self._refuse("too many for uid", f"uid {st.uids[0]} has {MAX_PER_UID} subscribers "
                                    "already (the maximum)", pid, ns)
        take = found[:count]
        claims = frozenset(c.inode for c, _ in take)
        peer_socks = frozenset(p for _, p in take if p)
        if old is not None:
            claims |= old.claims
            peer_socks |= old.peer_sockets
        self.subscribers[hpid] = Subscriber(hpid, (pid, ns), st.uids[0], stat.start, stat.comm, claims, peer_socks)
        if old is None:
            self._log_admitted.info("subscriber PID %d (%s, uid %d) verified: %s", hpid, stat.comm, st.uids[0],
                                    self.what(hpid))
        return old is None

    def _held_connections(self, st: procscan.Status, batch: _Batch,
                          peer_ip: str | None) -> list[tuple[Connection, int]]:
        """The collector's connections, not claimed by another subscriber, whose other end is a
        socket of process ``st``'s uid in its network namespace: [(our connection, its socket)]."""
        uid = st.uids[0]
        if st.uids[1] != uid:
            return []                          # a set-uid program: its sockets are not its user's to claim
        claimed = {c for s in self.subscribers.values() if s.pid != st.pid for c in s.claims}
        mine = self.subscribers.get(st.pid)
        if self.port is None:
            peer_ip = None                     # ipc://: no address; the kernel names the peer below
        free = [c for c in batch.connections() if c.inode not in claimed
                and (mine is None or c.inode not in mine.claims) and (not peer_ip or c.remote.ip == peer_ip)]
        if not free:
            return []
        if self.port is None:                   # ipc://: the kernel names each peer process
            return [(c, 0) for c in free if c.remote.port == st.pid]
        theirs = batch.table(st.pid)
        out = []
        for c in free:
            s = theirs.get((c.remote, c.local))
            if s is not None and s.uid == uid:
                out.append((c, s.inode))
        return out

    def _connections(self) -> list[Connection]:
        """The collector's accepted connections: established, on its port, and its own fds."""
        mine = _own_socket_inodes()
        if self.port is None:
            return self._ipc_connections(mine)
        return [Connection(s.inode, s.local, s.remote)
                for s in procnet.tcp_sockets("/proc/self/net", states=(procnet.ESTABLISHED,), local_port=self.port)
                if s.inode in mine]

    def _ipc_connections(self, mine: dict[int, int]) -> list[Connection]:
        """ipc://: every Unix socket of ours bound to the endpoint's path, with its peer's PID from
        the kernel (SO_PEERCRED) in place of the remote port."""
        if not self.ipc_path:
            return []
        out = []
        for inode, fd in mine.items():
            try:
                with socket.socket(fileno=os.dup(fd)) as s:
                    if s.family != socket.AF_UNIX or s.getsockname() != self.ipc_path:
                        continue
                    pid, uid, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            except OSError:
                continue
            if pid > 0:
                out.append(Connection(inode, procnet.Endpoint("", 0), procnet.Endpoint("ipc", pid)))
        return out

    def _recheck(self) -> bool:
        """Drops subscribers that are gone, replaced, or hold none of their connections any more."""
        if not self.subscribers:
            return False
        live = {c.inode for c in self._connections()}
        changed = False
        for hpid, sub in list(self.subscribers.items()):
            stat = procscan.read_stat(hpid, self.proc)
            claims = sub.claims & live
            if stat is None or stat.start != sub.start or not claims:
                del self.subscribers[hpid]
                changed = True
                self._log_admitted.info("subscriber PID %d left: its I/O is traced again", hpid)
            elif claims != sub.claims:
                self.subscribers[hpid] = sub._replace(claims=claims)
        return changed

    def _refuse(self, code: str, why: str, pid: int, ns: int) -> bool:
        """Counts (``refused``, ``refusals[code]``) and logs, at a bounded rate, a refused announce."""
        self.refused += 1
        self.refusals[code] += 1
        self._log_refused.warning("announce of PID %d (PID namespace %d) refused: %s; its I/O stays in the "
                                  "stream (refusals so far: %d)", pid, ns, why, self.refused)
        return False

    # -- peers ------------------------------------------------------------------------------
    def _find_peers(self) -> bool:
        found: dict[int, Peer] = {}
        marker = READY.encode()
        for pid in procscan.pids(self.proc):
            if pid in self.own:
                continue
            stat = procscan.read_stat(pid, self.proc)
            if stat is None or stat.comm != "bpftrace":
                continue
            old = self.peers.get(pid)
            if old is not None and old.start == stat.start and old.why.startswith("bpftrace"):
                found[pid] = old
            elif _is_bpftrace(pid, self.proc) and procscan.cmdline_has(pid, marker, self.proc):
                found[pid] = Peer(pid, stat.start, stat.comm, "bpftrace running syswatch's program")
            else:
                continue
            parent = procscan.read_stat(stat.ppid, self.proc) if stat.ppid > 1 else None
            pst = procscan.read_status(stat.ppid, self.proc) if parent else None
            if parent and pst and stat.ppid not in self.own and set(pst.uids) == {0}:
                found[stat.ppid] = Peer(stat.ppid, parent.start, parent.comm, f"parent of bpftrace {pid}")
        new = set(found) - set(self.peers)
        if new:
            log.info("other syswatch collector processes on this host, left out: %s",
                     ", ".join(f"{p} ({found[p].comm}: {found[p].why})" for p in sorted(new)))
        changed = set(found) != set(self.peers)
        self.peers = found
        return changed

    # -- output -----------------------------------------------------------------------------
    def _apply(self) -> None:
        pids = frozenset(self.subscribers) | frozenset(self.peers)
        if pids != self.excluded:
            self.excluded = pids
        self.rules = Rules(pids=frozenset(self.peers), subscribers=frozenset(self.subscribers),
                           sockets=frozenset(i for s in self.subscribers.values() for i in s.peer_sockets))

    def pids(self) -> list[int]:
        """Every PID of which something is left out, for status: own first."""
        return [*sorted(self.own), *sorted(set(self.subscribers) | set(self.peers))]

    def what(self, pid: int) -> str:
        """For the log: what of a verified subscriber is left out."""
        return "its ZeroMQ eventfd signalling and its connections to the collector"

    def entries(self, learned: Callable[[int], list[int]] = lambda pid: []) -> list[dict]:
        """status.excluded: one entry per PID, what of it is left out (``learned(pid)``: the
        descriptors of a subscriber known to be ZeroMQ's mailboxes)."""
        out = [{"pid": p, "kind": "self", "comm": _comm(p, self.proc), "what": ["all"]} for p in sorted(self.own)]
        for p in sorted(self.subscribers):
            sub = self.subscribers[p]
            what = [f"eventfd:{fd}" for fd in learned(p)] + [f"socket:[{i}]" for i in sorted(sub.peer_sockets)]
            out.append({"pid": p, "kind": "subscriber", "comm": sub.comm, "what": what[:64]})
        for p in sorted(self.peers):
            out.append({"pid": p, "kind": "peer", "comm": self.peers[p].comm, "what": ["all"]})
        return out


def _is_bpftrace(pid: int, proc: str) -> bool:
    """A real root process running a root-owned executable named bpftrace (see the module doc)."""
    st = procscan.read_status(pid, proc)
    if st is None or set(st.uids) != {0} or set(st.gids) != {0}:
        return False
    try:
        exe = procscan.exe_of(pid, proc)
    except PermissionError:                    # it holds capabilities we lack: it is root's
        return st.name == "bpftrace"
    if exe is None:
        return False
    name = os.path.basename(exe.path.removesuffix(" (deleted)"))
    return name.startswith("bpftrace") and exe.uid == 0 and not exe.mode & 0o022


def _own_socket_inodes() -> dict[int, int]:
    """socket inode -> fd, of this process's sockets."""
    out: dict[int, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out[int(target[8:-1])] = int(name)
    return out


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _comm(pid: int, proc: str = procscan.PROC) -> str:
    st = procscan.read_stat(pid, proc)
    return st.comm if st else "?"
