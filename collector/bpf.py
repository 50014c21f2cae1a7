"""Running bpftrace: pre-flight checks with clear errors, start, non-blocking reads, stop.

Every check raises SetupError with a message that says what to do; the collector prints
it and exits non-zero.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path

from syswatch.collector import program

log = logging.getLogger("syswatch.collector")

PROC_PID_INIT_INO = 4026531836       # the initial (host) PID namespace's inode number
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
HARMLESS_STDERR = (b"couldn't set RLIMIT_MEMLOCK",)   # printed on every start on 5.11+ kernels
READ_CHUNK = 1 << 18
PIPE_SIZE = 1 << 20                  # bpftrace's stdout pipe: room for ~6,000 lines while we batch
F_SETPIPE_SZ = 1031                  # fcntl.F_SETPIPE_SZ (Python 3.10+ has the name; keep it explicit)


class SetupError(RuntimeError):
    """The collector cannot start; the text says why and what to do."""


def check_root() -> None:
    if os.geteuid() != 0:
        raise SetupError("the collector must run as root (bpftrace loads BPF programs): "
                         f"sudo {invocation()}")


def invocation() -> str:
    """How this collector was started, as a user would type it again: ``python3 -m collector.collector``
    in a checkout, ``python3 -m syswatch.collector.collector`` or the console script once installed
    (where the checkout's module does not exist). The script by the path it ran from: a venv's bin/
    is on the user's PATH perhaps, but not on sudo's secure_path."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.endswith("collector.collector"):
        return f"python3 -m {spec.name}"
    return shlex.quote(sys.argv[0]) if sys.argv and sys.argv[0] else "syswatch-collector"


def find_bpftrace(name: str = "bpftrace") -> str:
    """The bpftrace to run: ``name`` on PATH, or a path (--bpftrace / SYSWATCH_BPFTRACE)."""
    path = shutil.which(name)
    if not path:
        if name != "bpftrace":
            raise SetupError(f"--bpftrace {name!r} is not an executable file")
        raise SetupError("bpftrace is not installed: apt-get install -y bpftrace "
                         "(scripts/setup-test.sh does it), or name one with --bpftrace PATH")
    return path


def check_host_pid_namespace(ns_link: str = "/proc/self/ns/pid") -> None:
    """bpftrace reports host PIDs: in another PID namespace the collector could not exclude itself."""
    try:
        ns = os.readlink(ns_link)
    except OSError as exc:
        raise SetupError(f"cannot read {ns_link}: {exc}") from None
    if ns != f"pid:[{PROC_PID_INIT_INO}]":
        raise SetupError(f"the collector runs in a PID namespace ({ns}) other than the host's: bpftrace "
                         "reports host PIDs, so it could not exclude its own PIDs and would trace "
                         "itself. Run it in the host PID namespace (docker-compose: `pid: host`)")


def tracefs_dir() -> Path | None:
    for d in TRACEFS_DIRS:
        if (d / "events").is_dir():
            return d
    return None


def ensure_tracefs() -> Path:
    """The mounted tracefs (syscall tracepoints need it); mounts it when missing."""
    found = tracefs_dir()
    if found:
        return found
    target = TRACEFS_DIRS[0]
    log.warning("tracefs is not mounted: mounting it on %s", target)
    res = subprocess.run(["mount", "-t", "tracefs", "tracefs", str(target)],
                         capture_output=True, text=True)
    if res.returncode != 0 or not tracefs_dir():
        raise SetupError(f"tracefs is not mounted and mounting it failed ({res.stderr.strip() or res.returncode}): "
                         f"run `mount -t tracefs tracefs {target}` on the host (scripts/setup-host.sh does it); "
                         f"in a container, mount the host's {target} into it")
    return target


def kprobes_unavailable_reason() -> str | None:
    """Why kprobes cannot work here (None: they may). Without CONFIG_KPROBES tracefs has no kprobe_events."""
    tfs = tracefs_dir()
    if tfs is None:
        return "tracefs is not mounted"
    if not (tfs / "kprobe_events").exists():
        return f"the kernel has no kprobe support ({tfs}/kprobe_events is missing: CONFIG_KPROBES is off)"
    return None


PR_SET_PDEATHSIG = 1


_COLLECTOR_PID = os.getpid()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the collector exits (survives the sh exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != _COLLECTOR_PID:      # the collector died before prctl took effect
        os._exit(1)


class Bpftrace:
    """One bpftrace child. Reads are non-blocking (the collector polls both pipes)."""

    def __init__(self, argv: list[str], version=None, overload: str = "drop"):
        env = dict(os.environ)
        for key, val in program.env(version, overload).items():
            env.setdefault(key, val)               # a BPFTRACE_* the user set wins
        self.env = env
        self.ringbuf = version is not None and version.ringbuf_output
        # Own session: a terminal's Ctrl-C reaches the collector only, which then stops bpftrace
        # in order. PDEATHSIG: if the collector itself dies (SIGKILL, OOM), the kernel sends
        # bpftrace SIGTERM, so no orphaned bpftrace keeps its probes attached.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        assert self.proc.stdout is not None and self.proc.stderr is not None     # PIPE
        self.stdout_fd = self.proc.stdout.fileno()
        self.stderr_fd = self.proc.stderr.fileno()
        for fd in (self.stdout_fd, self.stderr_fd):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        try:
            fcntl.fcntl(self.stdout_fd, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError as exc:               # capped by /proc/sys/fs/pipe-max-size
            log.debug("cannot enlarge bpftrace's stdout pipe: %s", exc)
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._err_partial = b""

    def buffer_desc(self) -> str:
        """The output buffer bpftrace was given, for the start-up log."""
        try:
            mib = int(self.env.get("BPFTRACE_PERF_RB_PAGES", "64")) * 4096 / 2**20
        except ValueError:
            return f"BPFTRACE_PERF_RB_PAGES={self.env['BPFTRACE_PERF_RB_PAGES']!r}"
        return f"{mib:g} MiB ring buffer" if self.ringbuf else f"{mib:g} MiB perf buffer per CPU"

    def read_stdout(self) -> bytes | None:
        """Up to 256 KiB; b"" at EOF, None when nothing is ready."""
        try:
            return os.read(self.stdout_fd, READ_CHUNK)
        except BlockingIOError:
            return None

    def drain_stderr(self) -> bool:
        """Logs bpftrace's stderr lines (keeping the last ones for error messages); False at EOF."""
        while True:
            try:
                data = os.read(self.stderr_fd, READ_CHUNK)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return False
                raise
            if not data:
                if self._err_partial:
                    self._stderr_line(self._err_partial)
                    self._err_partial = b""
                return False
            *lines, self._err_partial = (self._err_partial + data).split(b"\n")
            for line in lines:
                self._stderr_line(line)

    def _stderr_line(self, line: bytes) -> None:
        text = line.decode("utf-8", "backslashreplace").rstrip()
        if not text or text.startswith("~"):
            return
        if any(h in line for h in HARMLESS_STDERR):
            log.debug("bpftrace: %s", text)
            return
        self.stderr_tail.append(text)
        log.warning("bpftrace: %s", text)

    def exit_message(self) -> str:
        code = self.proc.poll()
        how = f"was killed by signal {-code} ({signal.Signals(-code).name})" if code is not None and code < 0 \
            else f"exited with status {code}"
        self.drain_stderr()
        errors = [t for t in self.stderr_tail if "WARNING" not in t] or list(self.stderr_tail)
        detail = ("; bpftrace said: " + " | ".join(errors[-4:])) if errors else ""
        return f"bpftrace {how}{detail}"

    def stop(self, timeout: float = 1.5) -> int | None:
        """SIGINT (bpftrace detaches its probes and exits), then SIGKILL if it hangs."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("bpftrace did not exit %.1f s after SIGINT: killing it", timeout)
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode
