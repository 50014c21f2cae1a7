"""What the numbers were measured on: machine, versions, date, and the prerequisites check."""
from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def _pkg(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def other_tracers() -> list[str]:
    """bpftrace/strace/perf processes running now (another tracer slows every syscall: noise)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm in ("bpftrace", "strace", "perf"):
                found.append(f"{comm}[{entry}]")
    return found


def describe() -> dict:
    import zmq
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": cpu_model(),
        "loadavg_at_start": os.getloadavg()[0],
        "other_tracers_at_start": other_tracers(),
        "versions": {
            "bpftrace": _first_line(["bpftrace", "--version"]),
            "python": platform.python_version(),
            "pyzmq": f"{zmq.__version__} (libzmq {zmq.zmq_version()})",
            "bottle": _pkg("bottle"),
            "waitress": _pkg("waitress"),
            "strace": _first_line(["strace", "-V"]).replace(" -- version", ""),
            "wrk": " ".join(_first_line(["wrk", "-v"]).split()[:2]) if shutil.which("wrk") else "not installed",
        },
    }


def check_prerequisites() -> None:
    """Exit with a message saying what to do when this machine cannot run the suite."""
    problems = []
    if os.geteuid() != 0:
        problems.append(f"run as root (bpftrace needs it): sudo {sys.executable} -m bench.run")
    for tool, pkg in (("bpftrace", "bpftrace"), ("strace", "strace"), ("dd", "coreutils")):
        if not shutil.which(tool):
            problems.append(f"{tool} is not installed: apt-get install -y {pkg} (or sudo scripts/setup-host.sh)")
    if not os.path.isdir("/sys/kernel/tracing/events/syscalls") and os.geteuid() == 0:
        problems.append("tracefs is not mounted (syscall tracepoints need it): "
                        "mount -t tracefs tracefs /sys/kernel/tracing")
    if problems:
        sys.exit("bench: cannot run the benchmarks here:\n  - " + "\n  - ".join(problems))
