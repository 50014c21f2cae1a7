"""Turn bpftrace's stdout into wire-protocol JSON, counting every line it cannot use.

One interface for both modes: ``Parser.parse(lines)`` takes complete lines and returns a
``Parsed`` (event batches per syscall, the rows of every counts interval that ended, whether
bpftrace said it is ready, a few of the lines it could not parse, for the log); the parser alone
keeps the counters the collector publishes in ``status``. It calls nothing back.

bpftrace runs with ``-f json``. Events mode (collector/syscalls.bt) prints one line per call::

    {"type": "printf", "data": "1{\\"ts_ns\\":1,\\"pid\\":2,...,\\"cgroup_id\\":9,\\"comm\\":\\"bash\\"}\\n"}

i.e. bpftrace's JSON envelope around the syscall's index in the program and the EVENT object
without its container fields, the process name last. One strict regex per line checks the
envelope and that only digits stand where bpftrace's %d/%llu go; the name (whatever it holds:
bpftrace escaped it) is looked up in a cache mapping bpftrace's escaped form to our own JSON
string, and the container fields come from a cache keyed by cgroup id. No JSON parsing per
event, and no name can add, remove or change another field.

Process names are bytes; they are decoded as UTF-8 with ``errors="backslashreplace"``, so a
non-UTF-8 byte 0xff arrives as the four characters ``\\xff`` (readable, lossless for valid
UTF-8, and never invalid JSON).

Counts mode (collector/syscalls_counts.bt) prints maps keyed ``"pid,cgroup,index,name"``.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from syswatch.collector.program import INTERVAL, KICK, READY
from syswatch.collector.streamio import Rules, StreamIO
from syswatch.shared.protocol import json_string

_NUM = rb"(?:0|[1-9]\d*)"
_INT = rb"(?:0|-?[1-9]\d*)"
_ENVELOPE = b'{"type": "printf", "data": "'
# Groups: 1 CPU, 2 syscall index, 3 the object up to the container fields (quotes escaped), 4 pid,
# 5 syscall name, 6 cgroup id, 7 the name as bpftrace escaped it.
_EVENT_LINE = re.compile(
    re.escape(_ENVELOPE) + rb'(\d{1,4}):(\d)(\{\\"ts_ns\\":%s,\\"pid\\":(%s),\\"tid\\":%s,\\"uid\\":%s,'
    rb'\\"syscall\\":\\"([a-z0-9]{1,16})\\",\\"fd\\":%s,\\"count\\":%s,\\"ret\\":%s,\\"lat_ns\\":%s,'
    rb'\\"cgroup_id\\":(%s),)\\"comm\\":\\"(.*)\\"\}\\n"\}' % (_NUM, _NUM, _NUM, _NUM, _INT, _NUM, _INT, _NUM, _NUM))
# fd, count and ret of an event already matched, read only for the few the stream may leave out
_FD_COUNT_RET = re.compile(rb'\\"fd\\":(-?\d+),\\"count\\":(\d+),\\"ret\\":(-?\d+),')
COMM_CACHE_MAX = 4096                  # distinct names kept; a renaming storm just refills it
MALFORMED_KEPT = 5                     # malformed lines kept per parse for the log (all are counted)
_READY_DATA = READY + "\n"
_KICK = re.compile(KICK + r" (\d{1,4}) (\d{1,20})(?: (\d{1,20}))?\n")
KICK_STALE_S = 3.0                     # no kick for this long: kicks stopped (bpftrace was stopped)
_INTERVAL_DATA = INTERVAL + "\n"

# bpftrace 0.17's JSON output escapes bytes >= 0x80 of a string as "\\uffffffNN" (a
# sign-extended char), which json.loads reads as U+FFFF followed by "ffNN". Rewrite
# them to \\u00NN first (skipping escaped backslashes), so every byte maps to one
# code point < 256 and latin-1 gives the name's original bytes back.
_BPFTRACE_HIGH_BYTE = re.compile(r'(\\\\)|\\uffffff([0-9a-fA-F]{2})')


def _fix_high_bytes(text: str) -> str:
    return _BPFTRACE_HIGH_BYTE.sub(lambda m: m.group(1) or "\\u00" + m.group(2), text)


def decode_comm(raw: bytes) -> str:
    """A kernel process name (bytes, NUL padded) as text; see the module docstring."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def unescape_bpftrace(escaped: str) -> bytes:
    """The bytes of a string as bpftrace's JSON output escaped it; ValueError if it is not one."""
    text = json.loads('"' + _fix_high_bytes(escaped) + '"')
    return text.encode("latin-1")      # UnicodeEncodeError (a ValueError) past U+00FF


def json_record(line: bytes) -> tuple[str, object] | None:
    """(type, data) of one line of bpftrace's JSON output, or None if it is not one."""
    try:
        msg = json.loads(_fix_high_bytes(line.decode("utf-8", "surrogateescape")))
        return msg["type"], msg["data"]
    except (ValueError, KeyError, TypeError, UnicodeError, RecursionError):
        return None


class NoContainers:
    """The container lookup when none is wanted: every cgroup is the host's."""

    HOST = b'"container_id":"","container_name":"",'

    def fields_json(self, cgroup_id: int) -> bytes:
        return self.HOST

    def fields(self, cgroup_id: int) -> tuple[str, str]:
        return "", ""


@dataclass
class Parsed:
    """What one chunk of output yields: event batches (JSON bytes) per syscall, finished intervals,
    whether bpftrace attached its probes (its ready line), and up to MALFORMED_KEPT malformed lines."""
    events: dict[str, list[bytes]] = field(default_factory=dict)
    intervals: list[list[dict]] = field(default_factory=list)
    ready: bool = False
    malformed: list[bytes] = field(default_factory=list)


class Parser:
    """Parses complete lines of bpftrace output for ``syscalls`` (in program order).

    Counters, read by the collector's status: ``events`` (published), ``excluded`` (the stream's own
    I/O, not published: collector/streamio.py), ``lost`` (see ``lost_total``), ``malformed``.
    ``rules``: what to leave out (streamio.Rules), a value the owner replaces. ``clock``: monotonic
    seconds, for the kicks' ages.
    """

    def __init__(self, mode: str, syscalls: list[str], containers=None, keys_escaped_twice: bool = False,
                 kick_cpus: Iterable[int] = (), clock: Callable[[], float] = time.monotonic):
        self.mode = mode
        # events mode with kicks (0.17): every online CPU kicks about once a second from ready on,
        # so one that never kicks (bpftrace stopped before its first kick) shows as stale too
        self.kick_cpus = list(kick_cpus) if mode == "events" else []
        self.keys_escaped_twice = keys_escaped_twice   # bpftrace 0.22+ escapes map-key strings once more
        self.syscalls = list(syscalls)
        self.containers = containers or NoContainers()
        self.stream_io = StreamIO()        # which events are the stream's own I/O
        self.events = 0
        self.excluded = 0
        self.malformed = 0
        self.reported_lost = 0             # bpftrace's lost_events records (counts mode: the loss count)
        self._lost_shown = 0               # what status said last: ``lost`` never steps back
        self._kicks: dict[int, int] = {}       # CPU -> kick lines that arrived
        self._kick_at: dict[int, float] = {}   # CPU -> monotonic time of its last kick
        self._kicks_lost: dict[int, int] = {}  # CPU -> kick lines bpftrace lost (its count has them)
        self._arrived: dict[int, int] = {}     # events mode: CPU -> its events that arrived
        self._lost_by_cpu: dict[int, int] = {}
        self._clock = clock
        self._malformed_lines: list[bytes] = []   # kept for the next Parsed
        self._comm_cache: dict[bytes, bytes] = {}
        self._names = {str(i).encode(): name.encode() for i, name in enumerate(self.syscalls)}
        self._pending: dict[tuple, dict] = {}     # counts mode: rows of the interval being printed

    # --- both modes ------------------------------------------------------------------------
    def parse(self, data: bytes) -> Parsed:
        """Everything in ``data``: whole lines, newline separated."""
        out = Parsed()
        if self.mode == "events":
            self._events(data, out)
        else:
            for line in data.split(b"\n"):
                if line.strip():           # bpftrace prints an empty map as a blank line
                    self._record(line, out)
        out.malformed = self.take_malformed()
        return out

    def _record(self, line: bytes, out: Parsed) -> None:
        """A line that is not an event: ready, lost, maps, the interval marker."""
        record = json_record(line)
        kind, data = record if record else (None, None)
        if kind == "printf" and data == _READY_DATA:
            now = self._clock()
            for cpu in self.kick_cpus:
                self._kick_at.setdefault(cpu, now)
            out.ready = True
        elif kind == "lost_events" and isinstance(data, dict) and type(data.get("events")) is int \
                and data["events"] >= 0:
            self.reported_lost += data["events"]
        elif kind == "attached_probes":
            pass                           # bpftrace's own start-up record
        elif self.mode == "events" and kind == "printf" and isinstance(data, str) and (kick := _KICK.fullmatch(data)):
            self._kick(*(int(g) for g in kick.groups() if g is not None))
        elif self.mode == "counts" and kind in ("stats", "map") and isinstance(data, dict) and len(data) == 1:
            self._map(line, data)
        elif self.mode == "counts" and kind == "printf" and data == _INTERVAL_DATA:
            out.intervals.append(self._finish_interval())
        else:
            self.bad_line(line)

    def bad_line(self, line: bytes) -> None:
        """Count a line that is not bpftrace output of this program (and keep a few for the log)."""
        self.malformed += 1
        if len(self._malformed_lines) < MALFORMED_KEPT:
            self._malformed_lines.append(line)

    def take_malformed(self) -> list[bytes]:
        """The malformed lines kept since the last call (``parse`` returns them in ``Parsed``)."""
        lines, self._malformed_lines = self._malformed_lines, []
        return lines

    @property
    def rules(self) -> Rules:
        return self.stream_io.rules

    @rules.setter
    def rules(self, rules: Rules) -> None:
        self.stream_io.rules = rules

    # --- events mode -------------------------------------------------------------------------
    def _events(self, data: bytes, out: Parsed) -> None:
        batches: dict[bytes, list[bytes]] = {}
        names, cache = self._names, self._comm_cache
        rules = self.stream_io.rules
        watched = frozenset(b"%d" % p for p in rules.pids | rules.subscribers)   # compared as bpftrace prints them
        excluded = self.stream_io.excluded
        fields = _FD_COUNT_RET.search
        containers = self.containers.fields_json
        match = _EVENT_LINE.fullmatch
        arrived = self._arrived
        n_excluded = 0
        for line in data.split(b"\n"):
            m = match(line)
            if m is None:
                if line:
                    self._record(line, out)
                continue
            cpu, idx, body, pid, syscall, cgroup, escaped = m.groups()
            cpu = int(cpu)
            arrived[cpu] = arrived.get(cpu, 0) + 1     # before any check: it arrived, kept or not
            if names.get(idx) != syscall:
                self.bad_line(line)            # the index picks the topic: it must agree with the name
                continue
            if pid in watched or escaped[:5] == b"ZMQbg":     # ZeroMQ's threads: learned (streamio)
                fd, count, ret = fields(body).groups()   # type: ignore[union-attr]  # matched above
                if excluded(int(pid), escaped, int(fd), int(count), int(ret)):
                    n_excluded += 1
                    continue
            tail = cache.get(escaped)
            if tail is None:
                tail = self._comm_json(escaped)
                if tail is None:
                    self.bad_line(line)
                    continue
            event = body.replace(b'\\"', b'"') + containers(int(cgroup)) + tail
            batch = batches.get(syscall)
            if batch is None:
                batches[syscall] = [event]
            else:
                batch.append(event)
        for syscall, batch in batches.items():
            out.events[syscall.decode()] = batch
            self.events += len(batch)
        self.excluded += n_excluded

    def _comm_json(self, escaped: bytes) -> bytes | None:
        """Our JSON for a name as bpftrace escaped it, as ``"comm":"..."}``."""
        try:
            raw = unescape_bpftrace(escaped.decode("ascii"))
        except ValueError:                 # includes UnicodeError: not what bpftrace prints
            return None
        if len(self._comm_cache) >= COMM_CACHE_MAX:
            self._comm_cache.clear()
        tail = self._comm_cache[escaped] = b'"comm":' + json_string(decode_comm(raw)) + b"}"
        return tail

    @property
    def lost(self) -> int:
        """Events lost, for status. Ring-buffer bpftrace (no kicks) and counts mode: bpftrace's own
        count, exact and prompt. Events mode with kicks (0.17): the kicks' per-CPU count, exact and
        known within a second; bpftrace's count also holds the kick lines it lost, so it is used
        (minus the lost kicks known so far) only once some CPU's kicks stopped coming: a stopped
        bpftrace, or a CPU whose buffer stopped delivering."""
        if self.mode != "events" or not self._kick_at:
            lost = self.reported_lost
        else:
            lost = sum(self._lost_by_cpu.values())
            if self.stale_cpus():
                lost = max(lost, self.reported_lost - sum(self._kicks_lost.values()))
        self._lost_shown = max(self._lost_shown, lost)      # a counter: never steps back
        return self._lost_shown

    def stale_cpus(self) -> list[int]:
        """CPUs whose kicks stopped coming: what they lost since their last kick is not in ``lost``.
        Every online CPU kicks about once a second from ready on (profile:hz:1 while busy,
        power:cpu_idle while idle), so this is empty while bpftrace works and lists every CPU while
        bpftrace is stopped. status says so instead of showing a loss count it cannot vouch for."""
        now = self._clock()
        return sorted(cpu for cpu, at in self._kick_at.items() if now - at > KICK_STALE_S)

    def _kick(self, cpu: int, printed: int, seq: int | None = None) -> None:
        """CPU ``cpu`` has printed ``printed`` events so far, all of them before this line in its
        buffer: the ones that did not arrive are lost. Exact, and known within a second even when
        bpftrace would never report them (a full buffer on a CPU that then goes quiet). ``seq``
        numbers the CPU's kicks: the gaps are kick lines lost, which bpftrace counts as lost events."""
        self._kick_at[cpu] = self._clock()
        self._kicks[cpu] = self._kicks.get(cpu, 0) + 1
        if seq is not None:
            self._kicks_lost[cpu] = max(0, seq - self._kicks[cpu])
        lost = printed - self._arrived.get(cpu, 0)
        if lost > self._lost_by_cpu.get(cpu, 0):
            self._lost_by_cpu[cpu] = lost

    # --- counts mode -------------------------------------------------------------------------
    def _map(self, line: bytes, data: dict) -> None:
        ((name, entries),) = data.items()
        kind, _, gen = name[1:].rpartition("_")
        if kind not in ("calls", "bytes", "errors") or gen not in ("a", "b") or not isinstance(entries, dict):
            return self.bad_line(line)
        for key, val in entries.items():
            try:
                pid, cgroup, idx, comm = key.split(",", 3)
                syscall = self.syscalls[int(idx)]
                raw = unescape_bpftrace(comm) if self.keys_escaped_twice else comm.encode("latin-1")
                row = self._row(int(pid), int(cgroup), syscall, decode_comm(raw))
                if kind == "calls":
                    calls, lat_sum = val["count"], val["total"]
                    if type(calls) is not int or type(lat_sum) is not int or calls < 0 or lat_sum < 0:
                        raise ValueError("negative or non-integer stats")
                    row["calls"] += calls
                    row["lat_ns_sum"] += lat_sum
                else:
                    if type(val) is not int or val < 0:
                        raise ValueError("negative or non-integer count")
                    row[kind] += val
            except (ValueError, KeyError, TypeError, IndexError, UnicodeError):
                self.bad_line(line)

    def _row(self, pid: int, cgroup: int, syscall: str, comm: str) -> dict:
        key = (pid, cgroup, syscall, comm)
        rows = self._pending
        row = rows.get(key)
        if row is None:
            cid, cname = self.containers.fields(cgroup)
            row = rows[key] = {"pid": pid, "comm": comm, "container_id": cid, "container_name": cname,
                               "syscall": syscall, "calls": 0, "bytes": 0, "errors": 0, "lat_ns_sum": 0}
        return row

    def _finish_interval(self) -> list[dict]:
        excluded = self.stream_io.rules.pids     # other collectors: counted, not published (rows carry no fd)
        rows = [r for r in self._pending.values() if r["calls"] and r["pid"] not in excluded]
        self.excluded += sum(r["calls"] for r in self._pending.values() if r["pid"] in excluded)
        self._pending.clear()
        self.events += sum(r["calls"] for r in rows)
        return rows
