"""The collector's command line: flags and environment, read once into a frozen ``Config``.

Flag > environment > default (shared.config.add_option); a bad value exits 2 naming the flag or
the variable. Nothing else reads the argparse namespace: the rest of the collector gets the
``Config``, with the event filters as one value (``Config.filters``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable

from syswatch import __version__
from syswatch.collector import program
from syswatch.shared.config import add_option
from syswatch.shared.metricsserver import listen_text
from syswatch.shared.protocol import DEFAULT_ENDPOINT, DEFAULT_SYSCALLS, SYSCALLS
from syswatch.shared.selection import add_filter_flags

EPILOG = """\
examples:
  sudo syswatch-collector
        trace every read/write on the host, publish on tcp://127.0.0.1:5556
  sudo syswatch-collector --syscalls read,write,pread64,pwrite64,readv,writev
        the whole read/write family, each syscall on its own topic (syscall.pread64, ...)
  sudo syswatch-collector --syscalls all -n cp
        every call that moves a file's bytes (copy_file_range, sendfile, splice, tee too), of cp only
  sudo syswatch-collector --mode counts --interval 5
        count calls, bytes moved, errors and latency per process in the kernel, every 5 s
  sudo syswatch-collector -p 1234 -p 5678 -n nginx
        only PIDs 1234 and 5678 whose name is nginx (filtered in the kernel)
  sudo syswatch-collector --container web -d 60
        only the processes of container "web" (name or id prefix), for 60 seconds
  sudo syswatch-collector --probe tracepoint --echo-rate 0
        syscall tracepoints, no console echo
  sudo syswatch-collector --path /var/lib/postgresql --latency
        only calls on files under that path (as each process sees it), with the time in each call
  sudo syswatch-collector -x --min-latency 20ms -u 1000
        only calls of uid 1000 that failed and took 20 ms or more (dropped in the kernel otherwise)
  sudo syswatch-collector --no-paths
        leave file paths and socket ends out of every event (types, inodes and devices stay)
  sudo SYSWATCH_CURVE_SERVER_KEY=keys/server.key_secret SYSWATCH_CURVE_CLIENTS=keys/clients \\
       syswatch-collector --bind tcp://0.0.0.0:5556
        publish beyond this host, encrypted, to authorised subscribers only
  sudo syswatch-collector --metrics 0.0.0.0:9101
        also serve Prometheus metrics (events, lost, dropped, per syscall, process) on port 9101
  syswatch-tail                      # watch the stream;  syswatch-top: busiest processes

Installed in a virtual environment, give sudo the script's path (sudo's PATH does not hold
the venv's bin/): sudo /opt/syswatch/bin/syswatch-collector. In a checkout, from its top:
sudo python3 -m collector.collector. CurveZMQ key pairs: python3 -m syswatch.shared.curve --help.

Every flag has an environment variable (flag > environment > default), shown as [env NAME].
Status (topic "status", every second) counts events, lost (bpftrace's buffer overflowed),
dropped (could not be queued) and malformed lines. Exit status: 0 on SIGINT/SIGTERM or at the
end of --duration, 1 when bpftrace fails, 2 for a usage or set-up error.
"""


@dataclass(frozen=True)
class Filters:
    """Which calls are traced (every one when all are empty); applied in the kernel: the processes
    and threads at the call's first probe, -x and --min-latency when it returns (issue 25)."""
    pids: tuple[int, ...] = ()
    comms: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()       # id prefixes or names; preflight turns them into cgroup ids
    uids: tuple[int, ...] = ()
    tids: tuple[int, ...] = ()
    failed: bool = False                   # -x: only calls that returned an error
    min_latency_ns: int = 0                # only calls that took at least this long (needs latency)


@dataclass(frozen=True)
class Config:
    """What the user asked for, from flags and environment; built once by ``parse_args``."""
    bind: str = DEFAULT_ENDPOINT
    mode: str = "events"
    probe: str = "auto"
    syscalls: tuple[str, ...] = tuple(DEFAULT_SYSCALLS)
    interval: float = 1.0
    echo_rate: int = 50
    filters: Filters = field(default_factory=Filters)
    duration: float | None = None
    bpftrace: str = "bpftrace"             # as given; preflight resolves it to a path
    on_overload: str = "drop"
    hostname: str | None = None            # None: the host's name (preflight)
    log_level: str = "info"
    latency: bool = False                  # an entry probe per call measures lat_ns
    paths: bool = True                     # --no-paths: False
    path_prefixes: tuple[str, ...] = ()    # --path: only events on files under these
    metrics: str | None = None             # --metrics HOST:PORT: the collector's own Prometheus endpoint


def seconds(text: str) -> float:
    val = float(text)
    if not 0.01 <= val <= 3600:
        raise ValueError(f"{text!r}: must be between 0.01 and 3600 seconds")
    return val


def duration(text: str) -> float:
    val = float(text)
    if not 0 < val <= 10 * 365 * 86400:
        raise ValueError(f"{text!r}: must be a positive number of seconds")
    return val


def non_negative_int(text: str) -> int:
    val = int(text)
    if val < 0:
        raise ValueError(f"{text!r}: must be 0 or more")
    return val


def one_of(*allowed: str) -> Callable[[str], str]:
    def choice(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r}: must be one of {', '.join(allowed)}")
        return text
    choice.__name__ = "choice"
    return choice


def syscall_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    try:
        return program.check_syscalls(names)
    except program.FilterError as exc:
        raise ValueError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="syswatch-collector",
        description="Trace read/write system calls host-wide with bpftrace and publish them on "
                    "ZeroMQ (wire protocol v2). Runs as root, in the host PID namespace.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_option(p, "--bind", metavar="ENDPOINT", env="SYSWATCH_BIND", default=DEFAULT_ENDPOINT,
               help="ZeroMQ PUB endpoint")
    add_option(p, "--mode", env="SYSWATCH_MODE", default="events", type=one_of("events", "counts"),
               metavar="{events,counts}",
               help="events: every call; counts: per-process totals aggregated in the kernel")
    add_option(p, "--probe", env="SYSWATCH_PROBE", default="auto", type=one_of("auto", "kprobe", "tracepoint"),
               metavar="{auto,kprobe,tracepoint}",
               help="auto: kprobes/kretprobes on __x64_sys_* if the kernel can, else syscall tracepoints")
    add_option(p, "--syscalls", env="SYSWATCH_SYSCALLS", default=list(DEFAULT_SYSCALLS), type=syscall_list,
               metavar="LIST", help=f"comma-separated syscalls to trace, from: {', '.join(SYSCALLS)}; "
                                               "or all")
    add_option(p, "--interval", env="SYSWATCH_INTERVAL", default=1.0, type=seconds, metavar="SECONDS",
               help="seconds between counts messages in counts mode")
    add_option(p, "--echo-rate", env="SYSWATCH_ECHO_RATE", default=50, type=non_negative_int, metavar="LINES",
               help="console echo lines per second at most, 0 = off")
    add_filter_flags(p, where={
        "pid": ", in the kernel's predicate", "tid": ", in the kernel's predicate",
        "uid": ", in the kernel's predicate", "comm": ", in the kernel's predicate",
        "container": ", in the kernel by its cgroup", "path": ", before publishing",
        "failed": ", dropped in the kernel when the call returns",
        "min_latency": ", dropped in the kernel when the call returns; turns --latency on"})
    add_option(p, "-d", "--duration", env="SYSWATCH_DURATION", default=None, type=duration, metavar="SECONDS",
               help="stop after this many seconds")
    add_option(p, "--bpftrace", env="SYSWATCH_BPFTRACE", default="bpftrace", metavar="PATH",
               help="the bpftrace binary to run")
    add_option(p, "--on-overload", env="SYSWATCH_ON_OVERLOAD", default="drop", type=one_of(*program.OVERLOAD),
               metavar="{drop,buffer}", dest="on_overload",
               help="when bpftrace falls behind the calls: drop (and count) once a 4 MiB-per-CPU (0.17) / "
                    "16 MiB (0.23) buffer is full, events late by under a second; buffer: 4x/8x that "
                    "buffer, fewer drops in bursts, seconds of latency while it drains")
    add_option(p, "--hostname", env="SYSWATCH_HOSTNAME", default=None,
               help="the host field of every message (default: the host's name, also in a container)")
    add_option(p, "--latency", env="SYSWATCH_LATENCY", flag=True, default=False,
               help="measure the time in every call (lat_ns): an entry probe per call, about twice the "
                    "in-kernel cost of the exit-only record (docs/BENCHMARKS.md)")
    add_option(p, "--no-paths", env="SYSWATCH_NO_PATHS", flag=True, default=False, dest="no_paths",
               help="leave file paths and socket ends out of events (privacy; file types, inodes and "
                    "devices stay)")
    add_option(p, "--log-level", env="SYSWATCH_LOG_LEVEL", default="info",
               type=one_of("debug", "info", "warning", "error"), help="log level of stderr messages")
    add_option(p, "--metrics", env="SYSWATCH_METRICS", default=None, type=listen_text, metavar="HOST:PORT",
               help="serve the collector's own Prometheus metrics on http://HOST:PORT/metrics (a bare PORT: "
                    "127.0.0.1); counters, per-syscall calls, what it runs, process metrics")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    return p


def parse_args(argv: list[str] | None = None) -> Config:
    """The ``Config`` of a command line (and the environment); exits 2 on a bad flag or variable."""
    ns = parser().parse_args(argv)
    return Config(bind=ns.bind, mode=ns.mode, probe=ns.probe, syscalls=tuple(ns.syscalls),
                  interval=ns.interval, echo_rate=ns.echo_rate,
                  filters=Filters(pids=tuple(ns.pid), comms=tuple(ns.comm), containers=tuple(ns.container),
                                  uids=tuple(ns.uid), tids=tuple(ns.tid), failed=ns.failed,
                                  min_latency_ns=ns.min_latency),
                  duration=ns.duration, bpftrace=ns.bpftrace, on_overload=ns.on_overload,
                  hostname=ns.hostname, log_level=ns.log_level, latency=ns.latency or ns.min_latency > 0,
                  paths=not ns.no_paths,
                  path_prefixes=tuple(ns.path), metrics=ns.metrics)
