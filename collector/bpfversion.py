"""Which bpftrace a path runs, and what that version accepts and prints (issue 16).

``detect(path)`` runs ``PATH --version`` and parses its one line::

    bpftrace v0.17.0                  (Debian bookworm)
    bpftrace v0.23.2                  (Debian trixie, also through scripts/trixie-bpftrace.sh)
    bpftrace v0.21.0-167-g1a2b3c4d    (a build from git: the describe suffix is kept in ``raw``)

The two things the collector's output handling depends on are not taken from the version
number but **probed**, by running the binary once (``probe``; ``detect`` does it, and caches the
answer per binary): whether printf goes through one BPF ring buffer (0.18+ by the CHANGELOG) or
per-CPU perf buffers, and whether ``-f json`` escapes map-key strings twice (0.22+). So a build
between the two Debian ones (Ubuntu 24.04's 0.20.2), a backport or a distribution patch is
handled by what it does. The other properties are from bpftrace's CHANGELOG, checked on 0.17.0
and 0.23.2 on a 6.18 kernel (scripts/bpftrace-compare.py, docs/bpftrace-versions.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

_VERSION = re.compile(r"\bbpftrace\s+v?(\d+)\.(\d+)(?:\.(\d+))?(\S*)")


class BpftraceVersionError(RuntimeError):
    """The binary could not be run, or its --version output is not bpftrace's."""


class Features(NamedTuple):
    """What one bpftrace binary was seen doing (``probe``)."""
    ringbuf_output: bool                   # printf output through a BPF ring buffer map
    map_key_strings_escaped_twice: bool    # -f json map keys: one more escape inside the JSON string


class Version(NamedTuple):
    major: int
    minor: int
    patch: int
    raw: str = ""          # the --version line as printed, e.g. "bpftrace v0.23.2"
    features: Features | None = None       # probed (detect); None: parsed only, the CHANGELOG's answer

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
        ``{"type": "lost_events", "data": {"events": N}}`` without slowing the traced task.
        Probed (the map types bpftrace created) when detected; else the CHANGELOG's 0.18."""
        return self.features.ringbuf_output if self.features else self.at_least(0, 18)

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
    def aggregation_reads(self) -> bool:
        """A count() map's value can be read in a probe (0.21+: the per-CPU values summed, cast to
        uint64 to print), so a per-CPU counter needs no shared hash map's lock (collector/program.py's
        kicks)."""
        return self.at_least(0, 21)

    @property
    def map_key_strings_escaped_twice(self) -> bool:
        """-f json map keys (print/stats of a map keyed by [pid, comm]): 0.22+ escapes a string
        key part once more before the JSON escape, so after json.loads the key still holds
        ``\\"``, ``\\\\``, ``\\n`` and ``\\uffffffXX``: one more unescape is needed. printf
        records are escaped once in both versions. Probed (a key holding a quote) when detected;
        else the CHANGELOG's 0.22."""
        return self.features.map_key_strings_escaped_twice if self.features else self.at_least(0, 22)

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


def detect(bpftrace_path: str, timeout: float = 60.0, features: bool = True) -> Version:
    """Run ``bpftrace_path --version`` and parse it (the trixie wrapper needs root: it unshares);
    with ``features`` (needs root, as bpftrace does) the returned Version carries what ``probe``
    saw, from the cache when this binary was probed before."""
    version = _version(bpftrace_path, timeout)
    if not features:
        return version
    return version._replace(features=probe(bpftrace_path, version, timeout=max(timeout, 120.0)))


def _version(bpftrace_path: str, timeout: float) -> Version:
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


# ---------------------------------------------------------------------------------------------
# Feature probe: one short bpftrace run. BEGIN fills a map whose string key holds a quote and
# prints it (-f json shows how keys are escaped), then prints a marker; while bpftrace waits for
# a signal, the types of the BPF maps it holds (/proc/PID/fdinfo: map_type) tell its output
# buffer: BPF_MAP_TYPE_RINGBUF (27) or BPF_MAP_TYPE_PERF_EVENT_ARRAY (4).
PROBE_PROGRAM = 'BEGIN { @syswatch_probe["q\\"b"] = 1; print(@syswatch_probe); clear(@syswatch_probe); ' \
                'printf("syswatch-probe\\n"); }'
_MAP_RINGBUF, _MAP_PERF_EVENT_ARRAY = 27, 4
_cache: dict[str, Features] = {}
CACHE_DIR = "/run/syswatch"          # tmpfs: forgotten at reboot; SYSWATCH_FEATURES_CACHE overrides


def probe(bpftrace_path: str, version: Version | None = None, timeout: float = 120.0) -> Features:
    """What ``bpftrace_path`` does (one run of PROBE_PROGRAM, needs root), cached per binary: in this
    process, and in CACHE_DIR keyed by the file's identity and its --version line, so each
    collector start does not pay for a bpftrace start (seconds; a minute under emulation)."""
    key = _cache_key(bpftrace_path, version)
    if key in _cache:
        return _cache[key]
    cached = _read_cache(key)
    if cached is None:
        cached = _run_probe(bpftrace_path, timeout)
        _write_cache(key, cached)
    _cache[key] = cached
    return cached


def _cache_key(path: str, version: Version | None) -> str:
    real = os.path.realpath(path if "/" in path else (_which(path) or path))
    try:
        st = os.stat(real)
        ident = f"{real} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}"
    except OSError:
        ident = real
    return hashlib.sha256(f"{ident} {version.raw if version else ''}".encode()).hexdigest()[:32]


def _which(name: str) -> str | None:
    import shutil
    return shutil.which(name)


def _cache_file(key: str) -> Path:
    return Path(os.environ.get("SYSWATCH_FEATURES_CACHE") or CACHE_DIR) / f"bpftrace-{key}.json"


def _read_cache(key: str) -> Features | None:
    try:
        data = json.loads(_cache_file(key).read_text())
        return Features(bool(data["ringbuf_output"]), bool(data["map_key_strings_escaped_twice"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(key: str, feats: Features) -> None:
    path = _cache_file(key)
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(feats._asdict()))
        os.replace(tmp, path)
    except OSError:
        pass                            # read-only /run: probe again next time


def _run_probe(path: str, timeout: float) -> Features:
    try:
        proc = subprocess.Popen([path, "-f", "json", "-e", PROBE_PROGRAM], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise BpftraceVersionError(f"cannot run {path} for its feature probe: {exc}") from None
    assert proc.stdout is not None and proc.stderr is not None
    out, err_pipe = proc.stdout, proc.stderr
    lines: list[bytes] = []
    buf = b""
    deadline = time.monotonic() + timeout
    eof = False
    try:
        while not any(b'"syswatch-probe' in ln for ln in lines):
            left = deadline - time.monotonic()
            if left <= 0 or eof or proc.poll() is not None and not select.select([out], [], [], 0)[0]:
                err = err_pipe.read() if proc.poll() is not None else b""
                raise BpftraceVersionError(
                    f"{path}'s feature probe " + (f"exited with status {proc.returncode}" if proc.poll() is not None
                                                  else f"printed nothing within {timeout:.0f} s")
                    + f": {(err.decode(errors='replace').strip() or '(no message)')[-400:]}")
            if select.select([out], [], [], min(left, 0.5))[0]:
                chunk = os.read(out.fileno(), 65536)
                if not chunk:           # EOF: stdout closed without the probe's line; its exit says why
                    eof = True
                    try:
                        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
                buf += chunk
                *done, buf = buf.split(b"\n")
                lines += done
        map_types = _map_types(proc.pid)
    finally:
        _stop(proc)
    keys = None
    for ln in lines:
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("type") == "map" and isinstance(rec.get("data"), dict):
            keys = list((rec["data"].get("@syswatch_probe") or {}).keys())
    if not keys:
        raise BpftraceVersionError(f"{path}'s feature probe printed no map: {b' | '.join(lines)[:300]!r}")
    if _MAP_RINGBUF in map_types:
        ringbuf = True
    elif _MAP_PERF_EVENT_ARRAY in map_types:
        ringbuf = False
    else:
        raise BpftraceVersionError(f"{path}'s feature probe: no ring buffer or perf buffer among its BPF maps "
                                   f"(map types {sorted(map_types)})")
    # the key was q"b: printed once-escaped it reads back as q"b, escaped twice as q\"b
    if keys[0] not in ('q"b', 'q\\"b'):
        raise BpftraceVersionError(f"{path}'s feature probe: unexpected map key {keys[0]!r}")
    return Features(ringbuf_output=ringbuf, map_key_strings_escaped_twice=keys[0] == 'q\\"b')


def _map_types(pid: int) -> set[int]:
    """The BPF map types among a process's file descriptors (root reads any process's fdinfo)."""
    types: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return types
    for fd in fds:
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        m = re.search(r"^map_type:\s*(\d+)", text, re.M)
        if m:
            types.add(int(m.group(1)))
    return types


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGINT)     # bpftrace detaches its probes and exits 0
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()
