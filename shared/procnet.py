"""The kernel's TCP socket tables (/proc/PID/net/tcp and tcp6), read once, in one place.

Each table lists the sockets of one network namespace: addresses, state, the owner's uid and the
socket's inode (the ``socket:[INODE]`` a process's fd points to). The tables are world-readable,
also for a process of another user whose fds root may not read without CAP_SYS_PTRACE.
"""
from __future__ import annotations

import ipaddress
from typing import NamedTuple

ESTABLISHED = "01"
CLOSING_STATES = ("04", "05", "06", "0B")   # FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSING: this side closed
MAX_LINES = 1 << 20                          # a table is read up to this many sockets


class Endpoint(NamedTuple):
    ip: str            # canonical text; an IPv4-mapped IPv6 address as its IPv4 form
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


class TcpSocket(NamedTuple):
    local: Endpoint
    remote: Endpoint
    state: str         # two hex digits, as the table prints it
    uid: int
    inode: int


def endpoint(text: str) -> Endpoint:
    """The table's ``0100007F:A2A1`` (or 32 hex digits of IPv6) as Endpoint("127.0.0.1", 41633)."""
    addr, port = text.rsplit(":", 1)
    raw = bytes.fromhex(addr)
    # the kernel prints each 32-bit word of the address in host (little-endian) order
    ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return Endpoint(str(ip), int(port, 16))


def tcp_sockets(net_dir: str = "/proc/self/net", states: tuple[str, ...] | None = None,
                local_port: int | None = None) -> list[TcpSocket]:
    """The sockets of tcp and tcp6 in ``net_dir`` (e.g. /proc/1234/net), optionally only those in
    ``states`` or bound to ``local_port``. A table that cannot be read counts as empty."""
    out = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{net_dir}/{table}") as f:
                next(f, None)
                for n, line in enumerate(f):
                    if n >= MAX_LINES:
                        break
                    cols = line.split()
                    if len(cols) < 10 or (states is not None and cols[3] not in states):
                        continue
                    try:
                        local = endpoint(cols[1])
                        if local_port is not None and local.port != local_port:
                            continue
                        out.append(TcpSocket(local, endpoint(cols[2]), cols[3], int(cols[7]), int(cols[9])))
                    except ValueError:
                        continue
        except OSError:
            continue
    return out
