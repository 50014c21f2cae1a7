"""syswatch-tail's text lines: an event in strace's shape, a counts row, a status.

    12:01:02.123456 postgres[812] pread64(7</var/lib/postgresql/base/1/1259>, 8192) = 8192 <0.000041> host=db1
    12:01:02.124001 nginx[901/905] read(12<socket:[88123]>, 4096) = -1 EAGAIN (Resource temporarily
        unavailable) <0.000003> container=web host=node1        (one line)
    12:01:02.130000 cp[77] copy_file_range(3</src/a>, 4</dst/a>, 65536) = 65536 <0.000210> host=node1

The time is the call's entry (``ts_ns``) in local time with microseconds (strace ``-tt``);
``comm[pid]`` (``[pid/tid]`` for a thread other than the main one); the arguments syswatch knows:
the descriptor(s) and the byte count asked for; ``=`` what the call returned, an error as its errno
name and message (strace's ``-1 EAGAIN (...)``; ``? ERESTARTSYS (...)`` for a call that will be
restarted); ``<seconds>`` the time in the call (strace ``-T``; left out when the collector did not
measure it); then ``container=`` (name, else id; only for a process in a container) and ``host=``.
Calls with two descriptors show them in the syscall's own order: ``sendfile(out, in, count)``,
the others ``(in, out, count)``.

Every string a collector sent (names, paths, hosts, status fields) goes through the one escaping rule
(shared/escaping.py), so nothing it holds can act on the terminal.
"""
from __future__ import annotations

import time

from syswatch.shared import errnos, latency, units
from syswatch.shared.escaping import visible

OUT_FIRST = frozenset({"sendfile"})     # strace's argument order: sendfile(out_fd, in_fd, ...)


def clock(ts_ns: int) -> str:
    """``HH:MM:SS.uuuuuu`` in local time (strace -tt)."""
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{ns // 1000:06d}"


def fd_part(event: dict, out: bool = False) -> str:
    """One descriptor argument: ``7``, or with what it pointed to, ``7</etc/passwd>`` (strace -y);
    a socket whose ends are known as ``7<tcp 10.0.0.1:40000->10.0.0.2:5432>`` (strace -yy's detail).

    ``out``: the destination descriptor of a two-descriptor call (``fd_out``/``path_out``)."""
    fd = event.get("fd_out") if out else event.get("fd")
    path = (None if out else event.get("sock")) or event.get("path_out" if out else "path") or ""
    if out and fd is None:
        return "?"
    return f"{fd}<{visible(path)}>" if path else str(fd)


def arguments(event: dict) -> str:
    """The arguments syswatch knows, in the syscall's order."""
    count = event.get("count")
    if "fd_out" in event:
        first, second = fd_part(event), fd_part(event, out=True)
        if event["syscall"] in OUT_FIRST:
            first, second = second, first
        return f"{first}, {second}, {count}"
    return f"{fd_part(event)}, {count}"


def event_line(event: dict, host: str) -> str:
    pid, tid = event["pid"], event.get("tid", event["pid"])
    who = f"{visible(event['comm'])}[{pid}{'' if tid == pid else f'/{tid}'}]"
    lat = event.get("lat_ns")
    took = f" <{lat / 1e9:.6f}>" if lat is not None else ""
    line = (f"{clock(event['ts_ns'])} {who} {event['syscall']}({arguments(event)}) = "
            f"{errnos.shown_ret(event['ret'])}{took}")
    where = event.get("container_name") or event.get("container_id")
    if where:
        line += f" container={visible(where)}"
    return line + f" host={visible(host)}"


def counts_line(row: dict, host: str) -> str:
    where = row.get("container_name") or row.get("container_id")
    line = (f"counts: {visible(row['comm'])}[{row['pid']}] {row['syscall']} calls={row['calls']} "
            f"bytes={row['bytes']} errors={row['errors']}")
    if row["calls"] and "lat_ns_sum" in row:       # only when the collector measures latency
        line += f" avg={units.shown(row['lat_ns_sum'] // row['calls'])}"
    buckets = row.get("lat_hist")
    if buckets and "lat_ns_sum" in row:
        h = latency.Histogram()
        h.add_buckets(buckets, row["lat_ns_sum"], row.get("lat_ns_max"))
        line += f" p99={units.shown(h.quantile(0.99))}"
    if row.get("path"):
        line += f" path={visible(row['path'])}"
    if where:
        line += f" container={visible(where)}"
    return line + f" host={visible(host)}"


def status_line(topic: str, payload: dict) -> str:
    """``status: host=vm mode=events ...``: every field, strings escaped, long lists shortened."""
    parts = []
    for key, value in payload.items():
        if key == "v":
            continue
        if isinstance(value, list) and len(value) > 16:
            value = f"[{', '.join(map(str, value[:16]))}, ... {len(value)} in all]"
        parts.append(f"{visible(str(key))}={visible(str(value))}")
    return f"{visible(topic)}: " + " ".join(parts)
