"""Turn bpftrace's stdout into wire-protocol JSON, counting every line it cannot use.

Events mode (collector/syscalls.bt) prints one line per call::

    w\\x62\\x61\\x73\\x68\\x00...\\x00 {"ts_ns":1,"pid":2,"tid":2,"uid":0,"syscall":"write","fd":1,"count":5,"comm":

i.e. the syscall letter, the 16-byte process name with every byte as ``\\xNN`` (64
characters: it cannot hold a space, quote or newline, whatever the name is), a space,
and the start of the EVENT object. The parser checks the fixed layout, looks the name up
in a cache and appends the cached JSON string plus ``}``: no JSON parsing per event
(issue 5: the collector's CPU per event must stay below bpftrace's).

Process names are bytes; they are decoded as UTF-8 with ``errors="backslashreplace"``,
so a non-UTF-8 byte 0xff arrives as the four characters ``\\xff`` (readable, lossless
for valid UTF-8, and never invalid JSON).

Counts mode (collector/syscalls_counts.bt, ``bpftrace -f json``) prints maps as JSON
lines; see CountsParser.
"""
from __future__ import annotations

import json
import re
from typing import Callable

from shared.protocol import json_string

READY = b"syswatch-ready"
INTERVAL = "syswatch-interval\n"

COMM_HEX_LEN = 64                      # 16 bytes x "\xNN"
BODY_START = COMM_HEX_LEN + 2          # letter + hex + space
_NUM = rb"(?:0|[1-9]\d*)"
_EVENT_BODY = (rb'(?:\\x[0-9a-f]{2}){16} \{"ts_ns":%s,"pid":%s,"tid":%s,"uid":%s,"syscall":"%%s",'
               rb'"fd":(?:0|-?[1-9]\d*),"count":%s,"comm":') % (_NUM, _NUM, _NUM, _NUM, _NUM)
# The syscall letter must agree with the syscall field (it picks the topic).
_EVENT_LINE = re.compile(b"r" + _EVENT_BODY % b"read" + b"|w" + _EVENT_BODY % b"write")
_LOST = re.compile(rb"Lost (\d+) events")
COMM_CACHE_MAX = 4096                  # distinct names kept; a renaming storm just refills it


def decode_comm(raw: bytes) -> str:
    """A kernel process name (bytes, NUL padded) as text; see the module docstring."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


class EventParser:
    """Parses complete lines of events-mode output into per-syscall lists of EVENT JSON bytes.

    Counters (read by the collector's status): ``events``, ``lost`` (bpftrace's
    ``Lost N events``), ``malformed`` (anything else). ``on_malformed(line)`` is called
    for each malformed line (the collector logs them, rate-limited).
    """

    def __init__(self, on_malformed: Callable[[bytes], None] | None = None,
                 on_ready: Callable[[], None] | None = None):
        self.events = 0
        self.lost = 0
        self.malformed = 0
        self._comm_cache: dict[bytes, bytes] = {}
        self._on_malformed = on_malformed
        self._on_ready = on_ready

    def _comm_json(self, hexname: bytes) -> bytes:
        """JSON string of a %rx-printed name (already validated) plus the closing ``}``."""
        raw = bytes.fromhex(hexname.replace(b"\\x", b"").decode("ascii"))
        if len(self._comm_cache) >= COMM_CACHE_MAX:
            self._comm_cache.clear()
        tail = self._comm_cache[hexname] = json_string(decode_comm(raw)) + b"}"
        return tail

    def parse(self, data: bytes) -> tuple[list[bytes], list[bytes]]:
        """(read events, write events) of ``data``: whole lines, newline separated."""
        reads: list[bytes] = []
        writes: list[bytes] = []
        cache = self._comm_cache
        match = _EVENT_LINE.fullmatch
        for line in data.split(b"\n"):
            # One strict regex per line: the letter, 64 hex chars, and the EVENT prefix
            # with only digits where bpftrace's %d/%llu go. Whatever matches is valid JSON
            # once the name is appended; nothing in it is user text.
            if match(line):
                hexname = line[1:65]
                tail = cache.get(hexname)
                if tail is None:
                    tail = self._comm_json(hexname)
                if line[0] == 119:         # b"w"
                    writes.append(line[66:] + tail)
                else:
                    reads.append(line[66:] + tail)
            elif line:
                self._other(line)
        self.events += len(reads) + len(writes)
        return reads, writes

    def _other(self, line: bytes) -> None:
        lost = _LOST.fullmatch(line.strip())
        if lost:
            self.lost += int(lost.group(1))
        elif line == READY:
            if self._on_ready:
                self._on_ready()
        elif line.startswith(b"Attaching ") and line.endswith(b"probes..."):
            pass                           # bpftrace's own start-up line
        else:
            self._bad(line)

    def _bad(self, line: bytes) -> None:
        self.malformed += 1
        if self._on_malformed:
            self._on_malformed(line)


# bpftrace 0.17's JSON output escapes bytes >= 0x80 of a string as "\uffffffNN" (a
# sign-extended char), which json.loads reads as U+FFFF followed by "ffNN". Rewrite
# them to \u00NN first (skipping escaped backslashes), so every byte maps to one
# code point < 256 and latin-1 gives the name's original bytes back.
_BPFTRACE_HIGH_BYTE = re.compile(r'(\\\\)|\\uffffff([0-9a-fA-F]{2})')


def _fix_high_bytes(text: str) -> str:
    return _BPFTRACE_HIGH_BYTE.sub(lambda m: m.group(1) or "\\u00" + m.group(2), text)


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
        try:
            msg = json.loads(_fix_high_bytes(line.decode("utf-8", "surrogateescape")))
            kind, data = msg["type"], msg["data"]
        except (ValueError, KeyError, TypeError, UnicodeError):
            return self._bad(line)
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
