"""Turn bpftrace's stdout into wire-protocol JSON, counting every line it cannot use.

One interface for both modes: ``Parser.parse(lines)`` takes complete lines and returns a
``Parsed`` (event batches per syscall, every counts interval that ended, whether bpftrace said it
is ready, a few of the lines it could not parse, for the log); the parser alone keeps the counters
the collector publishes in ``status``. It calls nothing back.

Events mode (collector/syscalls.bt, bpftrace's text output) prints one line of numbers per call,
laid out by shared/record.py::

    0 1 1795548582161190450 5489 5489 0 3 4096 1234 1 2146343 266338304 33188 1 8198552 1752392034 0

One strict regex (record.line_pattern) checks that only digits stand where bpftrace's %d/%llu
go and takes them; the JSON event is assembled from those digits (no int() on the hot path), the
process name from a cache keyed by its two words, the container fields from a cache keyed by
cgroup id, the file's fields from collector/files.py. Names are printed in hex (%rh), so no byte
of a name can break a line, and no name can add, remove or change a field. A chunk is read in two
passes: the other lines first (the open records that name files, kicks, flush markers), so an
event and the open of its file that arrived in the same chunk from different CPUs are matched.

Names are bytes; shared/record.decode_name writes a non-UTF-8 byte 0xff as the four characters
``\\xff`` (readable, reversible, never invalid JSON).

Counts mode (collector/syscalls_counts.bt, -f json) prints maps keyed
``"pid,cgroup,index,fd,ino,dev,mode,name"``; each interval becomes per-process rows and the
interval's top files plus the rest of them (``Interval``).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from syswatch.collector.files import Files
from syswatch.collector.kernel import Kernel
from syswatch.collector.program import FLUSH, INTERVAL, KICK, NAME, NAME_MORE, OPEN, OPENED, READY
from syswatch.collector.streamio import ZMQ_THREADS, Rules, StreamIO
from syswatch.shared import errnos, record
from syswatch.shared.latency import NBUCKETS
from syswatch.shared.protocol import json_string
from syswatch.shared.selection import path_matches

COMM_CACHE_MAX = 4096                  # distinct names kept; a renaming storm just refills it
FILE_CACHE_MAX = 65_536                # (pid, fd) -> the event's file JSON
MALFORMED_KEPT = 5                     # malformed lines kept per parse for the log (all are counted)
TOP_FILES = 100                        # counts mode: file rows per interval (the rest: files_rest)
_READY_DATA = READY + "\n"
_KICK = re.compile(KICK + r" (\d{1,4}) (\d{1,20})(?: (\d{1,20}))?\n")
_KICK_TEXT = re.compile(KICK.encode() + rb" (\d{1,4}) (\d{1,20})(?: (\d{1,20}))?")
KICK_STALE_S = 3.0                     # no kick for this long: kicks stopped (bpftrace was stopped)
_INTERVAL_DATA = INTERVAL + "\n"
_HEX = rb"((?:[0-9a-f]{2}(?: [0-9a-f]{2}){0,254})?)"
_OPEN = re.compile(OPEN.encode() + rb" (\d{1,10}) (\d{1,10}) (\d{1,10}) (\d{1,20}) (\d{1,10}) (\d{1,10}) (\d{1,20})")
_NAME = re.compile(NAME.encode() + rb" (\d{1,10}) (\d{1,3}) " + _HEX)
_NAME_MORE = re.compile(re.escape(NAME_MORE.encode()) + rb" (\d{1,10}) " + _HEX)
_OPENED = re.compile(OPENED.encode() + rb" (\d{1,10}) (\d{1,3}) ([01])")
_LOST = re.compile(rb"Lost (\d{1,20}) events")
_FLUSH = FLUSH.encode()
_ATTACHING = re.compile(rb"Attaching \d+ probes?\.\.\.")

# bpftrace 0.17's JSON output escapes bytes >= 0x80 of a string as "\\uffffffNN" (a
# sign-extended char), which json.loads reads as U+FFFF followed by "ffNN". Rewrite
# them to \\u00NN first (skipping escaped backslashes), so every byte maps to one
# code point < 256 and latin-1 gives the name's original bytes back.
_BPFTRACE_HIGH_BYTE = re.compile(r'(\\\\)|\\uffffff([0-9a-fA-F]{2})')


def _fix_high_bytes(text: str) -> str:
    return _BPFTRACE_HIGH_BYTE.sub(lambda m: m.group(1) or "\\u00" + m.group(2), text)


def decode_comm(raw: bytes) -> str:
    """A kernel process name (bytes, NUL padded) as text (shared/record.decode_name)."""
    return record.decode_name(raw.split(b"\0", 1)[0])


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


def add_bucket(into: list[int], i: int, n: int) -> None:
    """Add ``n`` calls to bucket ``i`` (0..64, shared/latency.py's) of the list ``into``; ValueError
    for a bucket no latency has (a forged or misread key)."""
    if not 0 <= i < NBUCKETS or n < 0:
        raise ValueError(f"latency bucket {i} is not one of 0..{NBUCKETS - 1}")
    into.extend([0] * (i + 1 - len(into)))
    into[i] += n


def add_buckets(into: list[int], more: list[int]) -> None:
    """``into += more``, bucket by bucket; trailing zeros are left out."""
    into.extend([0] * (len(more) - len(into)))
    for i, n in enumerate(more):
        into[i] += n
    while into and not into[-1]:
        into.pop()


class NoContainers:
    """The container lookup when none is wanted: every cgroup is the host's."""

    HOST = b'"container_id":"","container_name":""'

    def fields_json(self, cgroup_id: int) -> bytes:
        return self.HOST

    def fields(self, cgroup_id: int) -> tuple[str, str]:
        return "", ""


@dataclass
class Interval:
    """One counts interval: per-process rows, the top files, the rest of the files' calls."""
    rows: list[dict]
    files: list[dict] = field(default_factory=list)
    files_rest: dict = field(default_factory=dict)


@dataclass
class Parsed:
    """What one chunk of output yields: event batches (JSON bytes) per syscall, finished intervals,
    whether bpftrace attached its probes (its ready line), and up to MALFORMED_KEPT malformed lines."""
    events: dict[str, list[bytes]] = field(default_factory=dict)
    intervals: list[Interval] = field(default_factory=list)
    ready: bool = False
    malformed: list[bytes] = field(default_factory=list)


def _event_template(latency: bool) -> bytes:
    """The EVENT's JSON as a %-template, in shared/record.py's field order: a column's digits are
    copied (%s), the computed groups are filled as one piece each (the container's two fields, comm,
    the file's fields)."""
    pieces = []
    for f in record.FIELDS:
        if f.name == "lat_ns" and not latency:
            continue
        if f.name == "syscall":
            pieces.append(b'"syscall":"%s"')
        elif f.name in ("container_id", "comm", "file_type"):
            pieces.append(b"%s")                 # containers.fields_json, the comm, files.event_json
        elif f.column and f.name != "ino":
            pieces.append(b'"%s":%%s' % f.name.encode())
    return b"{" + b",".join(pieces) + b"}"


class Parser:
    """Parses complete lines of bpftrace output for ``syscalls`` (in program order).

    Counters, read by the collector's status: ``events`` (published), ``excluded`` (the stream's own
    I/O, not published: collector/streamio.py), ``lost`` (see ``lost_total``), ``malformed``,
    ``unreadable`` (calls whose arguments failed the kernel's check: never published), ``filtered``
    (events whose path is outside --path). ``rules``: what to leave out (streamio.Rules), a value
    the owner replaces. ``clock``: monotonic seconds, for the kicks' ages. ``files``: names and
    types of the events' files (collector/files.py). ``path_prefixes``: --path.
    """

    def __init__(self, mode: str, syscalls: list[str], containers=None, keys_escaped_twice: bool = False,
                 kick_cpus: Iterable[int] = (), clock: Callable[[], float] = time.monotonic,
                 latency: bool = False, files: Files | None = None, path_prefixes: Iterable[str] = (),
                 top_files: int = TOP_FILES, ring_buffer: bool = False):
        self.mode = mode
        # events mode: every online CPU kicks about once a second from ready on, so one that never
        # kicks (bpftrace stopped before its first kick) shows as stale too
        self.kick_cpus = list(kick_cpus) if mode == "events" else []
        # bpftrace 0.18+: one ring buffer, whose loss count also holds the flush, kick and file-naming
        # lines it dropped, and whose END prints every CPU's last kick behind all events
        self.ring_buffer = ring_buffer
        self.keys_escaped_twice = keys_escaped_twice   # bpftrace 0.22+ escapes map-key strings once more
        self.syscalls = list(syscalls)
        self.containers = containers or NoContainers()
        self.latency = latency
        self.files = files or Files(Kernel())
        self.path_prefixes = tuple(path_prefixes)
        self.top_files = top_files
        self.stream_io = StreamIO()        # which events are the stream's own I/O
        self.events = 0
        self.excluded = 0
        self.malformed = 0
        self.unreadable = 0
        self.filtered = 0
        self.unattributed = 0              # counts mode: calls a full map kept out of the keyed rows
        self.reported_lost = 0             # bpftrace's lost_events records (counts mode: the loss count)
        self._lost_shown = 0               # what status said last: ``lost`` never steps back
        self._kicks: dict[int, int] = {}       # CPU -> kick lines that arrived
        self._kick_at: dict[int, float] = {}   # CPU -> monotonic time of its last kick
        self._kicks_lost: dict[int, int] = {}  # CPU -> kick lines bpftrace lost (its count has them)
        self._arrived: dict[int, int] = {}     # events mode: CPU -> its events that arrived
        self._lost_by_cpu: dict[int, int] = {}
        self._clock = clock
        self._malformed_lines: list[bytes] = []   # kept for the next Parsed
        self._comm_cache: dict[tuple[bytes, bytes], bytes] = {}
        self._zmq_comms: dict[tuple[bytes, bytes], bytes] = {}   # names of ZeroMQ's threads: raw bytes
        self._names = {str(i).encode(): name.encode() for i, name in enumerate(self.syscalls)}
        self._line = record.line_pattern(latency).fullmatch
        self._template = _event_template(latency)
        cols = [c.name for c in record.columns(latency)]
        self._sig = (cols.index("ino") + 1, cols.index("namekey") + 1)   # the file's facts: groups
        self._file_cache: dict[tuple[bytes, bytes], tuple[bytes, bytes, bool]] = {}
        self._pending: dict[tuple, dict] = {}     # counts mode: rows of the interval being printed
        self._pending_files: dict[tuple, dict] = {}
        self._kernel_total = [0, 0]               # counts mode: @total of the interval (calls, bytes)

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
        """A JSON line (counts mode): ready, lost, maps, the interval marker, an open's lines."""
        record_ = json_record(line)
        kind, data = record_ if record_ else (None, None)
        if kind == "printf" and data == _READY_DATA:
            self.files.prime()                 # fds opened before the probes attached
            out.ready = True
        elif kind == "lost_events" and isinstance(data, dict) and type(data.get("events")) is int \
                and data["events"] >= 0:
            self.reported_lost += data["events"]
        elif kind == "attached_probes":
            pass                           # bpftrace's own start-up record
        elif kind in ("stats", "map", "hist") and isinstance(data, dict) and len(data) == 1:
            self._map(line, data)
        elif kind == "printf" and data == _INTERVAL_DATA:
            out.intervals.append(self._finish_interval())
        elif kind == "printf" and isinstance(data, str) and data.endswith("\n") \
                and self._open_line(data[:-1].encode("latin-1", "replace")):
            pass
        else:
            self.bad_line(line)

    def _text(self, line: bytes, out: Parsed) -> None:
        """A text line (events mode) that is not an event."""
        if line == _FLUSH or self._open_line(line):
            return
        if line.startswith(b"syswatch-kick "):
            kick = _KICK_TEXT.fullmatch(line)
            if kick:
                return self._kick(*(int(g) for g in kick.groups() if g is not None))
        elif line == _READY_DATA[:-1].encode():
            self.files.prime()                 # fds opened before the probes attached
            now = self._clock()
            for cpu in self.kick_cpus:
                self._kick_at.setdefault(cpu, now)
            out.ready = True
            return
        elif line.startswith(b"Lost "):
            lost = _LOST.fullmatch(line)
            if lost:
                self.reported_lost += int(lost.group(1))
                return
        elif _ATTACHING.fullmatch(line):
            return                         # bpftrace's own start-up line
        self.bad_line(line)

    def _open_line(self, line: bytes) -> bool:
        """An open's lines (both modes): the file, its path's components, the end."""
        if not line.startswith(b"syswatch-"):
            return False
        m = _NAME.fullmatch(line)
        if m:
            self.files.open_name(int(m.group(1)), int(m.group(2)), bytes.fromhex(m.group(3).decode()))
            return True
        m = _NAME_MORE.fullmatch(line)
        if m:
            self.files.open_more(int(m.group(1)), bytes.fromhex(m.group(2).decode()))
            return True
        m = _OPEN.fullmatch(line)
        if m:
            self.files.open_start(*(int(g) for g in m.groups()))
            return True
        m = _OPENED.fullmatch(line)
        if m:
            self.files.open_end(int(m.group(1)), int(m.group(2)), m.group(3) == b"1")
            return True
        return False

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
        match, arrived = self._line, self._arrived
        matches = []
        # pass 1, in order: every event's arrival on its CPU (before that CPU's next kick), and
        # every other line: opens name files before the events of this chunk are built
        for line in data.split(b"\n"):
            m = match(line)
            if m is None:
                if line:
                    self._text(line, out)
                continue
            cpu = int(m.group(1))
            arrived[cpu] = arrived.get(cpu, 0) + 1     # it arrived, kept or not
            matches.append(m)
        if matches:
            self._build(matches, out)

    def _build(self, matches: list, out: Parsed) -> None:
        batches: dict[bytes, list[bytes]] = {}
        names, cache = self._names, self._comm_cache
        rules = self.stream_io.rules
        watched = frozenset(b"%d" % p for p in rules.pids | rules.subscribers)   # compared as printed
        excluded, zmq_comms = self.stream_io.excluded, self._zmq_comms
        file_type, anon_dev = record.file_type, self.files.kernel.anon_dev
        containers = self.containers.fields_json
        template, latency, prefixes = self._template, self.latency, self.path_prefixes
        file_cache, file_json = self._file_cache, self._file_json
        sig_from, sig_to = self._sig
        n_excluded = n_unreadable = n_filtered = 0
        for m in matches:
            if latency:
                (_cpu, idx, ts, pid, tid, uid, fd, count, ret, lat, cgroup, ino, dev, mode, flags, namekey,
                 c0, c1, fdo, inoo, devo, modeo, flo, nko, nlen, nhex) = m.groups()
            else:
                (_cpu, idx, ts, pid, tid, uid, fd, count, ret, cgroup, ino, dev, mode, flags, namekey,
                 c0, c1, fdo, inoo, devo, modeo, flo, nko, nlen, nhex) = m.groups()
            syscall = names.get(idx)
            if syscall is None:
                self.bad_line(m.string)
                continue
            if flags != b"1" and flags != b"3":
                n_unreadable += 1              # the registers were not this call's: never published
                continue
            comm = cache.get((c0, c1))
            if comm is None:
                comm = self._comm_json(c0, c1)
            if pid in watched or (c0, c1) in zmq_comms:       # ZeroMQ's threads: learned (streamio)
                kdev = int(dev)
                if excluded(int(pid), zmq_comms.get((c0, c1), b""), int(fd), int(count), int(ret), int(ino),
                            file_type(int(mode), anon=kdev != 0 and kdev == anon_dev) if kdev else "unknown"):
                    n_excluded += 1
                    continue
            fkey = (pid, fd)
            sig = m.string[m.start(sig_from):m.end(sig_to)]        # ino dev mode flags namekey
            hit = file_cache.get(fkey)
            if hit is None or hit[0] != sig or nhex is not None:
                hit = file_json(fkey, sig, ino, dev, mode, flags, namekey, nlen, nhex)
            file_fields, keep = hit[1], hit[2]
            if fdo is not None:               # a two-fd call: the destination's fields follow
                out_fields, out_path = self.files.out_json(int(pid), int(fdo), int(inoo), int(devo), int(modeo),
                                                           int(nko), flo == b"2")
                file_fields += out_fields
                keep = keep or bool(prefixes) and any(path_matches(out_path, p) for p in prefixes)
            if prefixes and not keep:
                n_filtered += 1
                continue
            if latency:
                event = template % (ts, pid, tid, uid, syscall, fd, count, ret, lat, cgroup,
                                    containers(int(cgroup)), comm, file_fields)
            else:
                event = template % (ts, pid, tid, uid, syscall, fd, count, ret, cgroup,
                                    containers(int(cgroup)), comm, file_fields)
            batch = batches.get(syscall)
            if batch is None:
                batches[syscall] = [event]
            else:
                batch.append(event)
        for syscall, batch in batches.items():
            out.events[syscall.decode()] = batch
            self.events += len(batch)
        self.excluded += n_excluded
        self.unreadable += n_unreadable
        self.filtered += n_filtered

    def _file_json(self, fkey: tuple[bytes, bytes], sig: bytes, ino: bytes, dev: bytes, mode: bytes,
                   flags: bytes, namekey: bytes, nlen: bytes | None, nhex: bytes | None) -> tuple:
        """(signature, the event's file fields as JSON, whether --path keeps it), cached per (pid, fd)."""
        kname = None
        if nhex is not None:
            kname = bytes.fromhex(nhex.decode())
            if len(kname) != int(nlen or 0):
                kname = None                   # longer than one chunk: from /proc instead
        js, path = self.files.event_json(int(fkey[0]), int(fkey[1]), int(ino), int(dev), int(mode),
                                         int(namekey), flags == b"3", kname)
        keep = not self.path_prefixes or any(path_matches(path, p) for p in self.path_prefixes)
        hit = (sig, js, keep)
        if nhex is None:                       # a name only the kernel gives is not cached by (pid, fd)
            if len(self._file_cache) >= FILE_CACHE_MAX:
                self._file_cache.clear()
            self._file_cache[fkey] = hit
        return hit

    def _comm_json(self, c0: bytes, c1: bytes) -> bytes:
        """Our JSON for a name given as its two little-endian words, as ``"comm":"..."``."""
        raw = int(c0).to_bytes(8, "little") + int(c1).to_bytes(8, "little")
        if len(self._comm_cache) >= COMM_CACHE_MAX:
            self._comm_cache.clear()
            self._zmq_comms.clear()
        if raw.startswith(ZMQ_THREADS):
            self._zmq_comms[(c0, c1)] = raw.rstrip(b"\0")
        tail = self._comm_cache[(c0, c1)] = b'"comm":' + json_string(decode_comm(raw))
        return tail
    @property
    def lost(self) -> int:
        """Events lost, for status. Counts mode (and events mode before the first kick): bpftrace's
        own count. Events mode: the kicks' per-CPU count, exact and known within a second.
        bpftrace's count holds more than events (kick lines; with a ring buffer flush and
        file-naming lines too), so it is used only with per-CPU perf buffers (0.17), less the lost
        kicks known so far, once some CPU's kicks stopped coming: a stopped bpftrace, or a CPU whose
        buffer stopped delivering. A ring buffer's END kicks follow every event: nothing to add."""
        if self.mode != "events" or not self._kick_at:
            lost = self.reported_lost
        else:
            lost = sum(self._lost_by_cpu.values())
            if not self.ring_buffer and self.stale_cpus():
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
        if name == "@unreadable":
            if type(entries) is int and entries >= 0:
                self.unreadable += entries
            elif entries != {}:
                self.bad_line(line)
            return
        kind, _, gen = name[1:].rpartition("_")
        if kind == "total" and gen in ("a", "b"):
            if entries == {}:                  # bpftrace prints an unset scalar as an empty object
                return
            calls, total = (entries.get("count"), entries.get("total")) if isinstance(entries, dict) else (0, 0)
            if type(calls) is not int or type(total) is not int or calls < 0 or total < 0:
                return self.bad_line(line)
            self._kernel_total[0] += calls
            self._kernel_total[1] += total
            return
        if kind not in ("calls", "errors", "lat") or gen not in ("a", "b") or not isinstance(entries, dict):
            return self.bad_line(line)
        bucketed = kind == "calls" and self.latency     # @calls keyed by the latency bucket too
        for key, val in entries.items():
            try:
                if kind == "errors" or bucketed:  # the errno or the bucket before the name
                    pid, cgroup, idx, fd, ino, dev, mode, extra, comm = key.split(",", 8)
                else:
                    pid, cgroup, idx, fd, ino, dev, mode, comm = key.split(",", 7)
                syscall = self.syscalls[int(idx)]
                raw = unescape_bpftrace(comm) if self.keys_escaped_twice else comm.encode("latin-1")
                rkey = (int(pid), int(cgroup), syscall, decode_comm(raw), int(fd), int(ino), int(dev), int(mode))
                row = self._pending.get(rkey)
                if row is None:
                    row = self._pending[rkey] = {"calls": 0, "bytes": 0, "errors": 0, "lat_ns_sum": 0,
                                                 "lat_hist": [], "errnos": {}}
                if kind == "calls":
                    calls, total = val["count"], val["total"]
                    if type(calls) is not int or type(total) is not int or calls < 0 or total < 0:
                        raise ValueError("negative or non-integer stats")
                    row["calls"] += calls
                    row["bytes"] += total
                    if bucketed:
                        add_bucket(row["lat_hist"], int(extra), calls)
                else:
                    if type(val) is not int or val < 0:
                        raise ValueError("negative or non-integer count")
                    row["errors" if kind == "errors" else "lat_ns_sum"] += val
                    if kind == "errors":
                        name = errnos.label(-int(extra))
                        row["errnos"][name] = row["errnos"].get(name, 0) + val
            except (ValueError, KeyError, TypeError, IndexError, UnicodeError):
                self.bad_line(line)

    def _finish_interval(self) -> Interval:
        """The interval's rows per process (pid, cgroup, syscall, name) and per file (dev, ino,
        syscall): the top ``top_files`` by bytes, then calls, and the rest summed, so that files +
        rest equal the rows. Calls of excluded PIDs (subscribers, other collectors) are counted in
        ``excluded``, not published; calls a full kernel map kept out of the keyed rows (the
        interval's @total says how many) go to the rest and to ``unattributed``."""
        excluded = self.stream_io.rules.pids     # other collectors: counted, not published
        sums = ("calls", "bytes", "errors") + (("lat_ns_sum",) if self.latency else ())
        procs: dict[tuple, dict] = {}
        files: dict[tuple, dict] = {}
        seen = [0, 0]
        for (pid, cgroup, syscall, comm, fd, ino, dev, mode), r in self._pending.items():
            seen[0] += r["calls"]
            seen[1] += r["bytes"]
            if pid in excluded:
                self.excluded += r["calls"]
                continue
            row = procs.get((pid, cgroup, syscall, comm))
            if row is None:
                cid, cname = self.containers.fields(cgroup)
                row = procs[(pid, cgroup, syscall, comm)] = {
                    "pid": pid, "comm": comm, "container_id": cid, "container_name": cname, "syscall": syscall,
                    **{k: 0 for k in sums}}
            frow = files.get((dev, ino, syscall))
            if frow is None:
                frow = files[(dev, ino, syscall)] = {"syscall": syscall, "_who": (pid, fd, mode),
                                                     **{k: 0 for k in sums}}
            for k in sums:
                row[k] += r[k]
                frow[k] += r[k]
            if r["errnos"]:
                into = row.setdefault("errnos", {})
                for name, n in r["errnos"].items():
                    into[name] = into.get(name, 0) + n
            if self.latency:                     # @calls' buckets: they add up to its calls
                add_buckets(row.setdefault("lat_hist", []), r["lat_hist"])
        self._pending.clear()
        rows = [r for r in procs.values() if r["calls"]]
        self.events += sum(r["calls"] for r in rows)
        ranked = sorted(files.items(), key=lambda kv: (kv[1]["bytes"], kv[1]["calls"]), reverse=True)
        top = []
        for (dev, ino, _syscall), frow in ranked[:self.top_files]:
            pid, fd, mode = frow.pop("_who")
            js_path = self.files.name(pid, fd, ino, dev, None, False)
            ftype = js_path[0] or record.file_type(mode)
            path = js_path[1] if self.files.paths else ""
            top.append({"syscall": frow["syscall"], "file_type": ftype, "path": path, "ino": ino,
                        "dev": record.user_dev(dev) if dev else 0,
                        **({"sock": js_path[2]} if js_path[2] is not None else {}),
                        **{k: frow[k] for k in sums}})
        rest = {"files": max(0, len(ranked) - self.top_files), **{k: 0 for k in sums}}
        for _key, frow in ranked[self.top_files:]:
            for k in sums:
                rest[k] += frow[k]
        missing_calls = self._kernel_total[0] - seen[0]
        if missing_calls > 0:                  # a full map: counted by @total, in no keyed row
            self.unattributed += missing_calls
            rest["calls"] += missing_calls
            rest["bytes"] += max(0, self._kernel_total[1] - seen[1])
        self._kernel_total = [0, 0]
        return Interval(rows, top, rest)
