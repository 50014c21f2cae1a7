"""Which bpftrace a path runs, and what that version accepts and prints (issue 16).

``detect(path)`` runs ``PATH --version`` and parses its one line::

    bpftrace v0.17.0                  (Debian bookworm)
    bpftrace v0.23.2                  (Debian trixie, also through scripts/trixie-bpftrace.sh)
    bpftrace v0.21.0-167-g1a2b3c4d    (a build from git: the describe suffix is kept in ``raw``)

The properties below name what the collector has to adapt to. Each was checked on 0.17.0
and 0.23.2 on a 6.18 kernel (scripts/bpftrace-compare.py, docs/bpftrace-versions.md); the
version where it changed comes from bpftrace's CHANGELOG.
"""
from __future__ import annotations

import re
import subprocess
from typing import NamedTuple

_VERSION = re.compile(r"\bbpftrace\s+v?(\d+)\.(\d+)(?:\.(\d+))?(\S*)")


class BpftraceVersionError(RuntimeError):
    """The binary could not be run, or its --version output is not bpftrace's."""


class Version(NamedTuple):
    major: int
    minor: int
    patch: int
    raw: str = ""          # the --version line as printed, e.g. "bpftrace v0.23.2"

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        return self.key >= (major, minor, patch)

    @property
    def ringbuf_output(self) -> bool:
        """printf/print go through one BPF ring buffer shared by all CPUs (0.18+) instead of
        per-CPU perf buffers; BPFTRACE_PERF_RB_PAGES then sizes that ring (pages, in total).
        A full ring drops the event and bumps a counter read at every poll, reported as
        ``{"type": "lost_events", "data": {"events": N}}`` without slowing the traced task."""
        return self.at_least(0, 18)

    @property
    def args_dot(self) -> bool:
        """``args.ret`` is accepted (args is a struct since 0.19); ``args->ret`` works in both."""
        return self.at_least(0, 19)

    @property
    def config_block(self) -> bool:
        """``config = { perf_rb_pages = N }`` at the top of a program (0.20+); 0.17: syntax error."""
        return self.at_least(0, 20)

    @property
    def fexit_alias(self) -> bool:
        """``fentry``/``fexit`` are accepted names (0.20+); 0.17 knows only kfunc/kretfunc and
        aborts (SIGABRT, "Invalid probe type made it to attachpoint parser") on fexit."""
        return self.at_least(0, 20)

    @property
    def delete_with_key_args(self) -> bool:
        """``delete(@map, key)`` (0.21+); ``delete(@map[key])`` works in both."""
        return self.at_least(0, 21)

    @property
    def map_key_strings_escaped_twice(self) -> bool:
        """-f json map keys (print/stats of a map keyed by [pid, comm]): 0.22+ escapes a string
        key part once more before the JSON escape, so after json.loads the key still holds
        ``\\"``, ``\\\\``, ``\\n`` and ``\\uffffffXX``: one more unescape is needed. printf
        records are escaped once in both versions."""
        return self.at_least(0, 22)

    @property
    def line_buffering_flag(self) -> bool:
        """``-B line`` is accepted (0.23 lists it; 0.17 knows only full/none). Both default to
        line-buffered stdout, so the collector needs no -B flag."""
        return self.at_least(0, 23)


def parse(text: str) -> Version:
    """The Version in ``bpftrace --version`` output; BpftraceVersionError if there is none."""
    m = _VERSION.search(text)
    if not m:
        raise BpftraceVersionError(f"not bpftrace --version output: {text.strip()[:200]!r}")
    line = next((ln.strip() for ln in text.splitlines() if m.group(0) in ln), m.group(0))
    return Version(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), line)


def detect(bpftrace_path: str, timeout: float = 60.0) -> Version:
    """Run ``bpftrace_path --version`` and parse it (the trixie wrapper needs root: it unshares)."""
    try:
        proc = subprocess.run([bpftrace_path, "--version"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise BpftraceVersionError(f"{bpftrace_path}: no such file") from None
    except PermissionError:
        raise BpftraceVersionError(f"{bpftrace_path}: not executable") from None
    except subprocess.TimeoutExpired:
        raise BpftraceVersionError(f"{bpftrace_path} --version did not answer within {timeout:.0f} s") from None
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise BpftraceVersionError(f"{bpftrace_path} --version exited with status {proc.returncode}: "
                                   f"{(err or out).strip()[-400:]}")
    try:
        return parse(out)
    except BpftraceVersionError:
        raise BpftraceVersionError(f"{bpftrace_path} --version printed no bpftrace version: "
                                   f"{(out + err).strip()[:200]!r}") from None
