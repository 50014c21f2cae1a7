"""Turn bpftrace's stdout into wire-protocol JSON, counting every line it cannot use.

bpftrace runs with ``-f json`` in both modes. Events mode (collector/syscalls.bt) prints
one line per call::

    {"type": "printf", "data": "w{\\"ts_ns\\":1,\\"pid\\":2,...,\\"count\\":5,\\"comm\\":\\"bash\\"}\\n"}

i.e. bpftrace's JSON envelope around the syscall letter and the EVENT object, the process
name last. One strict regex per line checks the envelope and that only digits stand where
bpftrace's %d/%llu go; the name (whatever it holds: bpftrace escaped it) is looked up in a
cache that maps bpftrace's escaped form to our own JSON string. No JSON parsing per event
(issue 5: the collector's CPU per event must stay below bpftrace's), and no name can add,
remove or change another field.

Process names are bytes; they are decoded as UTF-8 with ``errors="backslashreplace"``,
so a non-UTF-8 byte 0xff arrives as the four characters ``\\xff`` (readable, lossless
for valid UTF-8, and never invalid JSON).

Counts mode (collector/syscalls_counts.bt) prints maps as JSON lines; see CountsParser.
"""
from __future__ import annotations

import json
import re
from typing import Callable

from shared.protocol import json_string

READY = b"syswatch-ready"
INTERVAL = "syswatch-interval\n"

_NUM = rb"(?:0|[1-9]\d*)"
_ENVELOPE = b'{"type": "printf", "data": "'
# The event object as it stands inside the envelope's string: every quote escaped.
_EVENT_BODY = (rb'\{\\"ts_ns\\":%s,\\"pid\\":%s,\\"tid\\":%s,\\"uid\\":%s,\\"syscall\\":\\"%%s\\",'
               rb'\\"fd\\":(?:0|-?[1-9]\d*),\\"count\\":%s,\\"comm\\":\\"') % (_NUM, _NUM, _NUM, _NUM, _NUM)
# The syscall letter must agree with the syscall field (it picks the topic). Group 1 is
# the name as bpftrace escaped it; the line ends with the object's and envelope's closing.
_EVENT_LINE = re.compile(re.escape(_ENVELOPE) + b"(?:r" + _EVENT_BODY % b"read" + b"|w" + _EVENT_BODY % b"write"
                         + rb')(.*)\\"\}\\n"\}')
LETTER = len(_ENVELOPE)                # offset of the syscall letter in a line
COMM_CACHE_MAX = 4096                  # distinct names kept; a renaming storm just refills it

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


class EventParser:
    """Parses complete lines of events-mode output into per-syscall lists of EVENT JSON bytes.

    Counters (read by the collector's status): ``events``, ``lost`` (bpftrace's
    ``lost_events`` records), ``malformed`` (anything else). ``on_malformed(line)`` is
    called for each malformed line (the collector logs them, rate-limited).
    """

    def __init__(self, on_malformed: Callable[[bytes], None] | None = None,
                 on_ready: Callable[[], None] | None = None):
        self.events = 0
        self.lost = 0
        self.malformed = 0
        self._comm_cache: dict[bytes, bytes] = {}
        self._on_malformed = on_malformed
        self._on_ready = on_ready

    def _comm_json(self, escaped: bytes) -> bytes | None:
        """Our JSON for a name as bpftrace escaped it (without the opening quote) plus ``}``."""
        try:
            raw = unescape_bpftrace(escaped.decode("ascii"))
        except ValueError:                 # includes UnicodeError: not what bpftrace prints
            return None
        if len(self._comm_cache) >= COMM_CACHE_MAX:
            self._comm_cache.clear()
        tail = self._comm_cache[escaped] = json_string(decode_comm(raw))[1:] + b"}"
        return tail

    def parse(self, data: bytes) -> tuple[list[bytes], list[bytes]]:
        """(read events, write events) of ``data``: whole lines, newline separated."""
        reads: list[bytes] = []
        writes: list[bytes] = []
        cache = self._comm_cache
        match = _EVENT_LINE.fullmatch
        for line in data.split(b"\n"):
            m = match(line)
            if m:
                escaped = m.group(1)
                tail = cache.get(escaped)
                if tail is None:
                    tail = self._comm_json(escaped)
                    if tail is None:
                        self._bad(line)
                        continue
                # digits and escaped quotes only, up to and including `"comm":"`
                event = line[LETTER + 1:m.start(1)].replace(b'\\"', b'"') + tail
                if line[LETTER] == 119:    # b"w"
                    writes.append(event)
                else:
                    reads.append(event)
            elif line:
                self._other(line)
        self.events += len(reads) + len(writes)
        return reads, writes

    def _other(self, line: bytes) -> None:
        record = json_record(line)
        kind, data = record if record else (None, None)
        if kind == "lost_events" and isinstance(data, dict) and isinstance(data.get("events"), int):
            self.lost += data["events"]
        elif kind == "printf" and data == READY.decode() + "\n":
            if self._on_ready:
                self._on_ready()
        elif kind == "attached_probes":
            pass                           # bpftrace's own start-up record
        else:
            self._bad(line)

    def _bad(self, line: bytes) -> None:
        self.malformed += 1
        if self._on_malformed:
            self._on_malformed(line)


class CountsParser:
    """Collects counts-mode output (``bpftrace -f json``) into rows, one interval at a time.

    ``feed(line)`` returns the rows of a finished interval when the line is the interval
    marker, else None. Map keys are ``"<pid>,<comm>"`` (pid first: split at the first comma,
    a comma in the name stays in the name).
    """

    def __init__(self, on_malformed: Callable[[bytes], None] | None = None,
                 on_ready: Callable[[], None] | None = None):
        self.lost = 0
        self.malformed = 0
        self._rows: list[dict] = []
        self._on_malformed = on_malformed
        self._on_ready = on_ready

    def feed(self, line: bytes) -> list[dict] | None:
        if not line.strip():
            return None                    # bpftrace prints an empty map as a blank line
        record = json_record(line)
        if record is None:
            return self._bad(line)
        kind, data = record
        if kind == "stats" and isinstance(data, dict):
            for name, entries in data.items():
                syscall = name[1:].rsplit("_", 1)[0]    # "@read_a" -> "read"
                if syscall not in ("read", "write") or not isinstance(entries, dict):
                    return self._bad(line)
                for key, val in entries.items():
                    pid, sep, comm = key.partition(",")
                    try:
                        row = {"pid": int(pid), "comm": decode_comm(comm.encode("latin-1")),
                               "syscall": syscall, "calls": int(val["count"]), "bytes": int(val["total"])}
                    except (ValueError, KeyError, TypeError, UnicodeError):
                        self._bad(line)
                        continue
                    self._rows.append(row)
            return None
        if kind == "printf" and data == INTERVAL:
            rows, self._rows = self._rows, []
            return rows
        if kind == "printf" and data == READY.decode() + "\n":
            if self._on_ready:
                self._on_ready()
            return None
        if kind == "lost_events" and isinstance(data, dict):
            self.lost += int(data.get("events", 0))
            return None
        if kind == "attached_probes":
            return None
        return self._bad(line)

    def _bad(self, line: bytes) -> None:
        self.malformed += 1
        if self._on_malformed:
            self._on_malformed(line)
        return None
