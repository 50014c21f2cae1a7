"""A socket's protocol and both ends, from /proc/PID/net/{tcp,tcp6,udp,udp6,unix}, by inode.

Socket inodes are unique on the host, so one bounded cache serves every process: a miss reads
the tables of that process's network namespace (all its sockets at once) and indexes them. A
busy namespace is re-read at most ``REFRESH_EVERY_S`` (a burst of new sockets costs one read per
interval, not one per socket); a socket that was closed before the collector looked it up is
not in any table: its ``sock`` is "" (its path still says ``socket:[INODE]``).
"""
from __future__ import annotations

import ipaddress
import os
import time
from typing import Callable

from syswatch.collector.cache import Bounded
from syswatch.shared.record import decode_name

REFRESH_EVERY_S = 0.2
TABLES = ("tcp", "tcp6", "udp", "udp6", "unix")
MAX_SOCKETS = 65_536            # cached descriptions (a namespace with more: the rest on the next miss)
MAX_NAMESPACES = 1024


def _addr4(text: str) -> str:
    ip, port = text.split(":")
    return f"{ipaddress.IPv4Address(int(ip, 16).to_bytes(4, 'little'))}:{int(port, 16)}"


def _addr6(text: str) -> str:
    ip, port = text.split(":")
    raw = b"".join(int(ip[i:i + 8], 16).to_bytes(4, "little") for i in range(0, 32, 8))
    addr = ipaddress.IPv6Address(raw)
    return f"[{addr.ipv4_mapped or addr}]:{int(port, 16)}"


def parse_inet(kind: str, text: str) -> dict[int, str]:
    """inode -> "tcp 127.0.0.1:40000->127.0.0.1:5556" for one /proc/net/{tcp,udp}[6] table."""
    addr = _addr6 if kind.endswith("6") else _addr4
    out = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        try:
            ino = int(f[9])
            if ino:
                out[ino] = f"{kind} {addr(f[1])}->{addr(f[2])}"
        except ValueError:
            continue
    return out


def parse_unix(raw: bytes) -> dict[int, str]:
    """inode -> "unix /path" ("unix @name" abstract, "unix" unbound) for /proc/net/unix."""
    out = {}
    for line in raw.split(b"\n")[1:]:
        f = line.split(None, 7)                  # Num RefCount Protocol Flags Type St Inode [Path]
        if len(f) < 7:
            continue
        try:
            ino = int(f[6])
        except ValueError:
            continue
        out[ino] = "unix " + decode_name(f[7]) if len(f) > 7 else "unix"
    return out


class Sockets:
    """inode -> description, looked up through a process's /proc entry; bounded."""

    def __init__(self, proc: str = "/proc", clock: Callable[[], float] = time.monotonic):
        self.proc = proc
        self.clock = clock
        self.cache: Bounded[int, str] = Bounded(MAX_SOCKETS)
        self._read_at: Bounded[int, float] = Bounded(MAX_NAMESPACES)   # netns inode -> last read

    def describe(self, pid: int, ino: int) -> str:
        """The socket's description, or "" when it is in no table (closed, or another kind)."""
        hit = self.cache.get(ino)
        if hit is not None:
            return hit
        try:
            ns = os.stat(f"{self.proc}/{pid}/ns/net").st_ino
        except OSError:
            return ""
        now = self.clock()
        if now - self._read_at.get(ns, -1e9) < REFRESH_EVERY_S:
            return ""
        self._read_at.put(ns, now)
        for kind in TABLES:
            try:
                with open(f"{self.proc}/{pid}/net/{kind}", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            table = parse_unix(raw) if kind == "unix" else parse_inet(kind, raw.decode("ascii", "replace"))
            for key, val in table.items():
                self.cache.put(key, val)
        return self.cache.get(ino) or ""
