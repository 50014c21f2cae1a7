"""The tracing set-ups compared by the benchmarks, each started and stopped the same way.

    none            no tracing (the baseline every ratio is taken against)
    bpf-empty       bpftrace, an empty probe on the read/write tracepoints
    bpf-empty-exit  bpftrace, empty probes on the entry and exit tracepoints (the floor of anything
                    that reports ret and lat_ns)
    bpf-count       bpftrace, count() per pid in the kernel, nothing printed per event
    bpf-printf      bpftrace, one printf line per event (the same fields as the collector's), to /dev/null
    bpf23-empty / bpf23-empty-exit / bpf23-count / bpf23-printf
                    the same programs under bpftrace 0.23 from a Debian trixie root, run
                    through scripts/trixie-bpftrace.sh's wrapper (ring-buffer output; issue 16)
    bpf23-inflight / bpf23-record / bpf23-events
                    protocol v2's events program before issue 24 (bench/legacy.py) taken apart
                    (issue 16): only its per-call state (the @inflight entry saved at entry, read
                    and deleted at exit); only its record (the same 12 fields printed at exit, no
                    map); and the whole program, in bpftrace's JSON output, to /dev/null
    bpf23-exit / bpf23-files / bpf23-files-lat / bpf23-rawtp
                    issue 24's programs: the exit-only record (fd and count from the saved
                    registers, checked; no file); the collector's events program as it renders it
                    now (exit-only, the file of every event, the open probe that names files,
                    per-CPU kicks, text output, -B full); the same with --latency (an entry probe
                    per call); and the same record from one raw tracepoint on every syscall's exit
                    (tried)
    bpf23-files-nokick / bpf23-files-kickh (only when named in --tracers)
                    the events program without the kicks (before 2026-12-07), and with the kicks'
                    count in a hash map keyed by CPU (bpftrace before 0.21) instead of count()
    strace          strace -f -e trace=read,write -o /dev/null (wraps the workload)
    collector-events / collector-counts
                    python3 -m collector.collector in that mode, with a subscriber attached (the
                    host's bpftrace: bookworm's 0.17)
    collector23-events / v2collector23-events (only when named in --tracers)
                    the collector in events mode with bpftrace 0.23 (the collector image's) and a
                    subscriber: this checkout's, and protocol v2's (git legacy.V2_REVISION, before
                    files: issue 22's "what v2 events mode costs", the whole product against the whole)
    compose-events / compose-counts
                    the compose stack's collector (image on trixie, bpftrace 0.23) in that mode,
                    started from docker-compose.yml (bench/compose.py), with a subscriber attached

The raw bpftrace programs carry the collector's own predicate (its own pid excluded, so
printing to /dev/null does not trace itself), so in-kernel costs are comparable.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import legacy
from bench.subscriber import BenchSubscriber
from harness import ROOT, procs
from harness.collector import CollectorProcess
from syswatch.collector import program
from syswatch.shared import record

PROBES = "tracepoint:syscalls:sys_enter_read,tracepoint:syscalls:sys_enter_write"
PRED = "/pid != $1/"
EXITS = PROBES.replace("sys_enter_", "sys_exit_")
RAW_PROGRAMS = {
    "bpf-empty": f"{PROBES} {PRED} {{ }}",
    # the floor of any program that sees entry and exit (ret, lat_ns): two empty probes per call
    "bpf-empty-exit": f"{PROBES} {PRED} {{ }} {EXITS} {PRED} {{ }}",
    "bpf-count": f"{PROBES} {PRED} {{ @[pid] = count(); }} END {{ clear(@); }}",
    "bpf-printf": (f"{PROBES} {PRED} {{ printf(\"%llu %d %d %d %d %llu %s\\n\", "
                   f"nsecs, pid, tid, uid, args->fd, args->count, comm); }}"),
}


def _runnable(text: str) -> str:
    """A collector program for a raw run: after the header, bpftrace excluded as $1, monotonic ts."""
    return text[text.index("\nBEGIN"):].replace("$3", "$1").replace("$2", "0")


def _rendered(kicks: bool = True, **kw) -> str:
    """The collector's events program for bpftrace 0.23 on this machine's kernel; ``kicks=False``
    leaves out the per-CPU count of printed events and the kick line (the collector's loss count
    with a ring buffer since 2026-12-07; the program of earlier runs)."""
    from syswatch.collector.bpfversion import parse
    from syswatch.collector.kernel import detect
    return _runnable(program.render("events", "tracepoint", ["read", "write"], kicks=kicks, kernel=detect(),
                                    version=parse("bpftrace v0.23.2"), **kw))


def _counts(hist: str) -> str:
    """The collector's counts program with --latency for bpftrace 0.23 on this machine's kernel, intervals of
    1 s. ``hist``: "bucket" as the collector runs it (the calls counted per latency bucket), "sum" without
    the histogram (issue 25's yardstick: the sum alone), "hist" with bpftrace's hist() per row instead
    (the collector's program of 2026-12-06)."""
    import re

    from syswatch.collector.bpfversion import parse
    from syswatch.collector.kernel import detect
    text = program.render("counts", "tracepoint", ["read", "write"], kicks=False, kernel=detect(),
                          version=parse("bpftrace v0.23.2"), latency=True)
    text = text[text.index("\nBEGIN"):].replace("$3", "$1").replace("$2", "1000")
    if hist != "bucket":
        bucket = program._log2_bucket("$l", "$lb")
        assert bucket.splitlines()[0] in text, "the bucket statements are not in the program"
        for line in bucket.splitlines():
            text = re.sub(r"\n\s*" + re.escape(line) + r"(?=\n)", "", text)
        text = text.replace("$lb, comm]", "comm]")
        assert "$lb" not in text and "$v" not in text, "the bucket is still in the program"
    if hist == "hist":
        text, n = re.subn(r"(\n\s*)@lat_([ab])(\[[^\n]*\]) = sum\(\$l\);",
                          r"\g<0>\1@hist_\2\3 = hist($l);", text)
        text = re.sub(r"(print|clear)\(@lat_([ab])\);", r"\g<0> \1(@hist_\2);", text)
        assert n == 4 and text.count("print(@hist_") == 2, "hist() is not in the program"
    return text


def _exit_record() -> str:
    """The exit-only record of issue 24 without the file: fd and count from the saved registers
    (checked), the file's columns printed as 0."""
    return _record_probes(file=False)


def _record_probes(file: bool, raw: bool = False) -> str:
    """Exit probes printing the events line for read and write, from the collector's own pieces."""
    from syswatch.collector.kernel import detect
    kernel = detect()
    cols = record.columns(False)
    out = []
    for idx, name in enumerate(["read", "write"]):
        pr = program.probes(name, "tracepoint")
        fill = {"idx": "$nr" if raw else str(idx), "ts": "nsecs", "fd": "$fd", "count": "$cnt", "ret": "$ret",
                "lat": "0", "comm": str(kernel.comm_offset)}
        exprs = [("0" if not file and c.name in ("ino", "dev", "mode", "namekey") else c.expr.format(**fill))
                 for c in cols]
        fmt = program.record_format(False)
        if raw:                          # one probe for every syscall's exit: its registers are its argument
            body = ("$ret = 0;\n$ret = (int64)arg1;\n$fd = (int32)$r->di;\n$cnt = $r->dx;\n$fl = 1;\n"
                    + (program._file_walk(kernel) + "\n" if file else "") + f"printf({fmt}, {', '.join(exprs)});")
            return ("rawtracepoint:sys_exit\n/pid != $1/\n{\n\t$r = (struct pt_regs *)arg0;\n\t$nr = $r->orig_ax;\n"
                    "\tif ($nr <= 1) {\n" + "\n".join("\t\t" + ln for ln in body.splitlines()) + "\n\t}\n}\n")
        body = program._arguments(pr, False, kernel) + "\n" + (program._file_walk(kernel) + "\n" if file else "") \
            + f"printf({fmt}, {', '.join(exprs)});"
        out.append(f"{pr.leave}\n{PRED}\n{{\n" + "\n".join("\t" + ln for ln in body.splitlines()) + "\n}\n")
    return "\n".join(out)


def rawtp_program() -> str:
    """The events program's record (with the file) from rawtracepoint:sys_exit, its pt_regs argument:
    every syscall's exit runs it and returns early unless it is read or write. Tried for issue 24."""
    return _record_probes(file=True, raw=True)


RAW_PROGRAMS.update({
    "bpf-inflight": f"{PROBES} {PRED} {{ @inflight[tid] = (nsecs, args->fd, args->count); }} "
                    f"{EXITS} {{ $e = @inflight[tid]; if ($e.0) {{ delete(@inflight[tid]); }} }} "
                    f"END {{ clear(@inflight); }}",
    # v2's record (fd, count, lat_ns: constants), printed at exit with no map
    "bpf-record": EXITS + " " + PRED + " { printf(" + legacy.V2_RECORD + ", cpu, nsecs, pid, tid, uid, 1, 2, "
                  "args->ret, 3, cgroup, comm); }",
    "bpf-events": _runnable(legacy.V2_EVENTS),
})
RAW_FORMAT = {"bpf-events": "json", "bpf-record": "json"}      # as v2's collector ran them
# issue 24's programs: rendered lazily (they read the running kernel's layout), text, -B full
LAZY_PROGRAMS = {
    "bpf-exit": _exit_record,
    "bpf-files": lambda: _rendered(),
    "bpf-files-lat": lambda: _rendered(latency=True),
    "bpf-files-nokick": lambda: _rendered(kicks=False),
    # the kicks' count in a hash map keyed by CPU (what bpftrace before 0.21 runs) instead of count()
    "bpf-files-kickh": lambda: _rendered().replace(program.SENT_COUNT.add, program.SENT_HASH.add)
                                          .replace(", (uint64)@sent[cpu], ", ", @sent[cpu], "),
    "bpf-rawtp": rawtp_program,
    "bpf-counts-sum": lambda: _counts(hist="sum"),
    "bpf-counts-hist": lambda: _counts(hist="bucket"),
    "bpf-counts-histfn": lambda: _counts(hist="hist"),
}
RAW_PROGRAMS.update({k: "" for k in LAZY_PROGRAMS})
RAW_FLAGS = {k: ["-B", "full"] for k in LAZY_PROGRAMS}
RAW_FORMAT.update({k: "json" for k in LAZY_PROGRAMS if k.startswith("bpf-counts-")})     # counts mode runs -f json
# bpftrace 0.23 (trixie) runs the same programs: bpf23-X is RAW_PROGRAMS["bpf-X"]
RAW23 = {f"bpf23-{k[len('bpf-'):]}": k for k in RAW_PROGRAMS}


class Tracer:
    """No tracing; the base of every set-up. ``wrap`` turns a workload into what to run."""

    name = "none"
    subscriber: BenchSubscriber | None = None

    def wrap(self, argv: list[str]) -> list[str]:
        return argv

    def start(self) -> "Tracer":
        return self

    def stop(self) -> None:
        pass

    def pids(self) -> dict[str, int]:
        """Processes whose CPU time is attributed to tracing, by role."""
        return {}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Strace(Tracer):
    name = "strace"

    def wrap(self, argv):
        return ["strace", "-f", "-e", "trace=read,write", "-o", "/dev/null", *argv]


class RawBpftrace(Tracer):
    """bpftrace running one of RAW_PROGRAMS; attached when its BEGIN probe has run.

    ``binary`` is the bpftrace to run: the host's, or the trixie wrapper, which execs the
    trixie bpftrace in the same process, so the Gated pid is bpftrace's own either way."""

    def __init__(self, name: str, program: str | None = None, binary: str = "bpftrace"):
        self.name = name
        self.program = program or name
        self.binary = binary
        self.proc: procs.Gated | None = None

    def start(self):
        ready = Path(tempfile.mkstemp(prefix="syswatch-bench-ready.")[1])
        ready.unlink()
        touch = f'system("touch {ready}");'
        prog = LAZY_PROGRAMS[self.program]() if self.program in LAZY_PROGRAMS else RAW_PROGRAMS[self.program]
        # bpftrace 0.23 takes one BEGIN probe: the touch joins the program's own
        prog = prog.replace("BEGIN\n{", "BEGIN\n{\n\t" + touch, 1) if "BEGIN\n{" in prog \
            else f"BEGIN {{ {touch} }} {prog}"
        # Gated: the pid is known before bpftrace starts, so it is passed as $1 and excluded.
        fmt = ["-f", RAW_FORMAT[self.program]] if self.program in RAW_FORMAT else RAW_FLAGS.get(self.program, [])
        self.proc = procs.Gated([self.binary, "--unsafe", *fmt, "-o", "/dev/null", "-e", prog, "@PID@"],
                                stderr=subprocess.PIPE)
        self.proc.release()
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.proc.poll() is not None:
                err = self.proc.proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"bpftrace ({self.name}) exited at start-up: {err.strip()[-800:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"bpftrace ({self.name}) did not attach within 60 s")
            time.sleep(0.02)
        ready.unlink()
        return self

    def stop(self):
        if self.proc:
            procs.stop(self.proc.proc)
            self.lost = _lost_from(self.proc.proc.stderr.read().decode(errors="replace"))
            self.proc.proc.stderr.close()

    def pids(self):
        return {"bpftrace": self.proc.pid} if self.proc else {}


def _lost_from(stderr: str) -> int:
    """bpftrace's "Lost N events" lines, summed."""
    lost = 0
    for line in stderr.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "Lost" and words[2].startswith("event"):
            lost += int(words[1])
    return lost


class CollectorTracer(Tracer):
    """``python3 -m collector.collector --mode MODE`` on a free port (harness.collector.CollectorProcess),
    with a BenchSubscriber attached."""

    def __init__(self, mode: str, interval: float = 1.0, extra: tuple[str, ...] = (), name: str = "",
                 revision: str = ""):
        self.mode = mode
        self.revision = revision             # run the collector of this git revision (the bench's v2)
        self.name = name or f"collector-{mode}"
        self.interval = interval
        self.extra = list(extra)             # e.g. ("-c", NAME): then the bench's own writes are not traced
        self.endpoint = ""                   # the collector's, once started
        self.collector: CollectorProcess | None = None
        self.proc: subprocess.Popen | None = None
        self.bpftrace_pid: int | None = None
        self.orphaned_bpftrace = False
        self.dir: Path | None = None

    def start(self):
        args = ["--mode", self.mode, "--echo-rate", "0"]
        if self.mode == "counts":
            args += ["--interval", str(self.interval)]
        self.dir = Path(tempfile.mkdtemp(prefix=f"syswatch-bench-{self.name}."))
        root = None
        if self.revision:                    # that revision's files, under the run's own directory
            root = self.dir / "tree"
            root.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", self.revision], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        self.collector = CollectorProcess(self.dir, *args, *self.extra, wait=False, root=root)
        self.proc, self.endpoint = self.collector.proc, self.collector.endpoint
        self.subscriber = BenchSubscriber(self.endpoint)
        self.subscriber.start()
        try:
            if "-c" in self.extra:   # filtered: the bench's own writes do not show; a status means running
                if not self.subscriber.status_seen.wait(60):
                    raise TimeoutError("no status message within 60 s")
            else:
                self.subscriber.wait_ready(timeout=60)
        except Exception as exc:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"{self.name} did not deliver events: {exc}; its output:\n{tail}") from None
        self.bpftrace_pid = procs.descendant_named(self.proc.pid, "bpftrace", timeout=5)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        if self.collector is None:
            return ""
        try:
            lines = (self.collector.stdout() + self.collector.stderr()).splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self):
        if self.subscriber:
            self.subscriber.stop()
        if self.proc:
            self.exit_status = procs.stop(self.proc, timeout=10)
        # bpftrace must not outlive its collector (an orphan stays attached and slows every
        # syscall on the host); ours is ended by its pid, if it is still ours
        if self.bpftrace_pid and procs.comm_of(self.bpftrace_pid) == "bpftrace":
            self.orphaned_bpftrace = True
            print(f"bench: warning: bpftrace {self.bpftrace_pid} outlived its collector "
                  f"(exit status {self.exit_status}); ending it", file=sys.stderr)
            procs.terminate_pid(self.bpftrace_pid)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def pids(self):
        out = {"collector": self.proc.pid} if self.proc else {}
        if self.bpftrace_pid:
            out["bpftrace"] = self.bpftrace_pid
        return out
