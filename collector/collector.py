"""syswatch collector: runs bpftrace (collector/program.py) and publishes on ZeroMQ (protocol v2).

    sudo python -m collector.collector --help

One process, one thread for the work (the XPUB socket is used from this thread only): a poll
loop reads bpftrace's stdout in 256 KiB chunks, turns each chunk into one batch message per
syscall topic (so every batch is published within one read of its arrival, well inside the
contract's 10 ms), applies subscriptions, publishes ``status`` every second and echoes a
capped number of events on the console. See docs/COLLECTOR.md and docs/PROTOCOL.md.
"""
from __future__ import annotations

import os
import sys

# Say "must run as root" before any third-party import: an unprivileged user's interpreter may
# not be able to import zmq at all (issue 17). Only when run as a program (python -m, or the
# installed syswatch-collector script), and not for --help.
if (__name__ == "__main__" or os.path.basename(sys.argv[0]) == "syswatch-collector") and os.geteuid() != 0 and not any(
        a in ("-h", "-V") or len(a) > 3 and ("--help".startswith(a) or "--version".startswith(a)) for a in sys.argv[1:]):
    from .bpf import SetupError, check_root     # stdlib only
    try:
        check_root()
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

from syswatch.shared.deps import require  # noqa: E402  (stdlib only)

require("syswatch-collector", "zmq")          # a missing package: one line, exit 2

import argparse  # noqa: E402
import errno  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import zmq  # noqa: E402

from syswatch.shared import curve  # noqa: E402
from syswatch.shared.config import add_option  # noqa: E402
from syswatch.shared.protocol import (DEFAULT_ENDPOINT, DEFAULT_SYSCALLS, SYSCALLS, TOPIC_COUNTS,  # noqa: E402
                             TOPIC_STATUS, encode, encode_event_batch, json_string, parse_announce,
                             topic_for, valid_subscription)
from syswatch.shared.zmqsock import EndpointError, check_endpoint, make_publisher  # noqa: E402

from syswatch import __version__  # noqa: E402
from . import bpf, bpfversion, program  # noqa: E402
from .bpf import Bpftrace, SetupError  # noqa: E402
from .containers import Containers  # noqa: E402
from .echo import Echo  # noqa: E402
from .exclusions import Exclusions  # noqa: E402
from .hostinfo import host_name, online_cpus  # noqa: E402
from .parser import KICK_STALE_S, NoContainers, Parser  # noqa: E402

log = logging.getLogger("syswatch.collector")

# One message holds at most one 256 KiB read of bpftrace output (~1,000 events, ~300 KiB of
# JSON): 200 queued messages per subscriber bound what a stalled subscriber costs to ~60 MiB.
PUB_SNDHWM = 200
ROWS_PER_MESSAGE = 10_000           # counts rows per message: ~2.5 MB, under the API's 8 MiB limit
STATUS_EVERY_S = 1.0
LOG_STATUS_EVERY_S = 10.0
READY_TIMEOUT_S = 120.0              # compiling takes ~1 s, far longer on a loaded machine
MALFORMED_LOG_PER_MIN = 5
MAX_LINE = 1 << 20
# Wait this long after bpftrace's stdout becomes readable, so a read collects a batch
# (measured on 2 vCPUs under load, dd bs=1: collector CPU per event fell from ~10 us to
# ~4.5 us, about 0.2x bpftrace's own CPU per event).
COALESCE_S = 0.002

EPILOG = """\
examples:
  sudo syswatch-collector
        trace every read/write on the host, publish on tcp://127.0.0.1:5556
  sudo syswatch-collector --syscalls read,write,pread64,pwrite64,readv,writev
        the whole read/write family, each syscall on its own topic (syscall.pread64, ...)
  sudo syswatch-collector --mode counts --interval 5
        count calls, bytes moved, errors and latency per process in the kernel, every 5 s
  sudo syswatch-collector -p 1234 -p 5678 -n nginx
        only PIDs 1234 and 5678 whose name is nginx (filtered in the kernel)
  sudo syswatch-collector --container web -d 60
        only the processes of container "web" (name or id prefix), for 60 seconds
  sudo syswatch-collector --probe tracepoint --echo-rate 0
        syscall tracepoints, no console echo
  sudo SYSWATCH_CURVE_SERVER_KEY=keys/server.key_secret SYSWATCH_CURVE_CLIENTS=keys/clients \\
       syswatch-collector --bind tcp://0.0.0.0:5556
        publish beyond this host, encrypted, to authorised subscribers only
  syswatch-tail                      # watch the stream;  syswatch-top: busiest processes

Installed in a virtual environment, give sudo the script's path (sudo's PATH does not hold
the venv's bin/): sudo /opt/syswatch/bin/syswatch-collector. In a checkout, from its top:
sudo python3 -m collector.collector. CurveZMQ key pairs: python3 -m syswatch.shared.curve --help.

Every flag has an environment variable (flag > environment > default), shown as [env NAME].
Status (topic "status", every second) counts events, lost (bpftrace's buffer overflowed),
dropped (could not be queued) and malformed lines. Exit status: 0 on SIGINT/SIGTERM or at the
end of --duration, 1 when bpftrace fails, 2 for a usage or set-up error.
"""


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


def one_of(*allowed: str):
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
               metavar="LIST", help=f"comma-separated syscalls to trace, from: {', '.join(SYSCALLS)}")
    add_option(p, "--interval", env="SYSWATCH_INTERVAL", default=1.0, type=seconds, metavar="SECONDS",
               help="seconds between counts messages in counts mode")
    add_option(p, "--echo-rate", env="SYSWATCH_ECHO_RATE", default=50, type=non_negative_int, metavar="LINES",
               help="console echo lines per second at most, 0 = off")
    add_option(p, "-p", "--pid", env="SYSWATCH_PID", default=[], type=int, repeatable=True, metavar="PID",
               dest="pid", help="trace only this PID; repeatable, env comma separated")
    add_option(p, "-n", "--comm", env="SYSWATCH_COMM", default=[], repeatable=True, metavar="NAME", dest="comm",
               help="trace only processes with this name (15 bytes at most); repeatable")
    add_option(p, "-c", "--container", env="SYSWATCH_CONTAINER", default=[], repeatable=True, metavar="ID|NAME",
               dest="container", help="trace only this container (id prefix or name, filtered in the kernel "
                                      "by its cgroup); repeatable")
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
    add_option(p, "--log-level", env="SYSWATCH_LOG_LEVEL", default="info",
               type=one_of("debug", "info", "warning", "error"), help="log level of stderr messages")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    return p.parse_args(argv)


def warn_if_public(endpoint: str, curve_on: bool) -> None:
    """Binding beyond loopback is allowed (containers need it) but the user should know."""
    if not endpoint.startswith("tcp://"):
        return
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        log.warning("%s is not a loopback address: the event stream (every process's syscalls) "
                    "can leave this host%s", endpoint,
                    "" if curve_on else
                    "; set SYSWATCH_CURVE_SERVER_KEY and SYSWATCH_CURVE_CLIENTS to encrypt it and "
                    "admit only authorised subscribers (python3 -m syswatch.shared.curve --help)")


class BpftraceFailed(RuntimeError):
    """bpftrace exited or hung before its probes were attached."""


class Collector:
    """Owns the bpftrace child, the publisher socket, the parser and the poll loop."""

    def __init__(self, args: argparse.Namespace, sock: zmq.Socket, containers, cgroups: list[int]):
        self.args = args
        self.sock = sock
        self.containers = containers
        self.cgroups = cgroups
        self.host_json = json_string(args.hostname)
        self.started = time.monotonic()
        self.dropped = 0
        self.rejected_subscriptions = 0
        self.echo = Echo(args.echo_rate if args.mode == "events" else 0)
        self.ready = False
        self.parser = Parser(args.mode, args.syscalls, containers, self._log_malformed, self._set_ready,
                             keys_escaped_twice=args.bpftrace_version.map_key_strings_escaped_twice,
                             kick_cpus=() if args.bpftrace_version.ringbuf_output else online_cpus())
        self.exclusions = Exclusions(self.parser.excluded_pids, [os.getpid()], endpoint_port(sock))
        self.bt: Bpftrace | None = None
        self.poller: zmq.Poller | None = None
        self.probe = ""
        self._partial = b""
        self._last_logged = (0, 0, 0)
        self._last_stale: list[int] = []
        self._next_status_log = 0.0
        self._malformed_logged = 0
        self._malformed_window = 0.0
        self.stop_requested = False
        # Signals only set a flag; the wake-up pipe makes the poll return at once.
        self._wake_r, wake_w = os.pipe()
        for fd in (self._wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)

    # -- start-up ------------------------------------------------------------------------
    def _set_ready(self) -> None:
        """bpftrace attached its probes: the seed's start-up lines (contract), before any echo."""
        self.ready = True
        print("Monitoring sys_read and sys_write calls...")
        print(f"Host PID: {os.getpid()}")
        for pid in (os.getpid(), self.bt.pid):
            print(f"Skipping self PID: {pid}")
        sys.stdout.flush()

    def start(self) -> None:
        """Starts bpftrace with the probe kind asked for (auto: kprobe, else tracepoint)."""
        want = self.args.probe
        if want == "auto":
            reason = bpf.kprobes_unavailable_reason()
            if reason:
                log.info("probe auto: using syscall tracepoints: %s", reason)
                want = "tracepoint"
            else:
                try:
                    self._start("kprobe")
                    return
                except BpftraceFailed as exc:
                    log.warning("probe auto: kprobes could not attach (%s); using syscall tracepoints", exc)
                    self.bt.stop()
                    want = "tracepoint"
        self._start(want)

    def _start(self, probe: str) -> None:
        text = program.render(self.args.mode, probe, self.args.syscalls, self.args.pid, self.args.comm,
                              self.cgroups, kicks=not self.args.bpftrace_version.ringbuf_output)
        interval_ms = max(1, round(self.args.interval * 1000))
        self.bt = Bpftrace(program.command(self.args.bpftrace, self.args.mode, text, interval_ms),
                           self.args.bpftrace_version, self.args.on_overload)
        self.probe = probe
        self.exclusions.own = {os.getpid(), self.bt.pid}
        self.poller = zmq.Poller()
        for fd in (self.bt.stdout_fd, self.bt.stderr_fd, self._wake_r):
            self.poller.register(fd, zmq.POLLIN)
        self.poller.register(self.sock, zmq.POLLIN)
        log.debug("bpftrace pid %d, program:\n%s", self.bt.pid, text)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready:
            if self.stop_requested:
                return
            if time.monotonic() > deadline:
                raise BpftraceFailed(f"bpftrace did not attach its probes within {READY_TIMEOUT_S:.0f} s")
            if not self._poll(0.1):
                raise BpftraceFailed(self.bt.exit_message())

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        """Until SIGINT/SIGTERM or --duration (returns 0) or bpftrace's death (returns 1)."""
        end = time.monotonic() + self.args.duration if self.args.duration else float("inf")
        next_status = time.monotonic()
        self.exclusions.refresh(force=True)
        while not self.stop_requested:
            now = time.monotonic()
            if now >= end:
                log.info("--duration %.0f s reached: stopping", self.args.duration)
                break
            if now >= next_status:
                self.publish_status()
                next_status = now + STATUS_EVERY_S
            self.exclusions.refresh()
            if not self._poll(max(0.0, min(next_status, end) - time.monotonic())):
                if self.stop_requested:
                    break
                log.error("%s", self.bt.exit_message())
                return 1
            self.echo.tick()
        return 0

    def _poll(self, timeout_s: float) -> bool:
        """One poll round; False when bpftrace's stdout hit EOF (it exited)."""
        try:
            ready = dict(self.poller.poll(timeout_s * 1000))
        except zmq.ZMQError:
            ready = {}
        if self.sock in ready:
            self._subscriptions()
        if self.bt.stderr_fd in ready:
            self.bt.drain_stderr()
        if self._wake_r in ready:
            try:
                signals = os.read(self._wake_r, 512)
            except BlockingIOError:
                signals = b""
            if any(s in (signal.SIGINT, signal.SIGTERM) for s in signals):
                self.stop_requested = True
        if self.bt.stdout_fd in ready:
            return self._read_stdout()
        return True

    def _subscriptions(self) -> None:
        """Apply what subscribers asked for: only prefixes of our topics; announces exclude the PID."""
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg or msg[0] not in (0, 1):
                continue
            subscribe, topic = msg[0] == 1, msg[1:]
            announce = parse_announce(topic)
            if announce:
                if subscribe:
                    self.exclusions.announce(*announce)
            elif valid_subscription(topic):
                self.sock.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, topic)
            else:
                self.rejected_subscriptions += 1
                if self.rejected_subscriptions <= 5:
                    log.warning("ignored a subscription to %.60r: not a topic prefix this collector "
                                "publishes", topic)

    def _read_stdout(self) -> bool:
        # bpftrace writes line by line: wait a moment so one read (and one message per topic)
        # carries many events instead of one. Costs at most COALESCE_S of latency.
        time.sleep(COALESCE_S)
        data = self.bt.read_stdout()
        if data is None:
            return True
        if not data:
            self.bt.proc.wait()
            return False
        data = self._partial + data
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) > MAX_LINE:             # no newline in 1 MiB: not bpftrace's output format
                self.parser.bad_line(data[:200])
                data = b""
            self._partial = data
            return True
        self._partial = data[cut + 1:]
        parsed = self.parser.parse(data[:cut])
        for syscall, events in parsed.events.items():
            self._send(encode_event_batch(topic_for(syscall), self.host_json, events), len(events))
            self.echo.events(syscall, events)
        for rows in parsed.intervals:
            # one interval may take several messages: each stays far below subscribers' size limits
            for at in range(0, max(len(rows), 1), ROWS_PER_MESSAGE):
                chunk = rows[at:at + ROWS_PER_MESSAGE]
                payload = {"host": self.args.hostname, "ts_ns": time.time_ns(),
                           "interval_ns": round(self.args.interval * 1e9), "rows": chunk}
                self._send(encode(TOPIC_COUNTS, payload), sum(r["calls"] for r in chunk))
        return True

    def _send(self, frames: list[bytes], n_events: int) -> None:
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += n_events

    # -- status and logs ---------------------------------------------------------------
    def status(self) -> dict:
        return {"host": self.args.hostname, "ts_ns": time.time_ns(), "mode": self.args.mode,
                "probe": self.probe, "syscalls": list(self.args.syscalls),
                "excluded_pids": self.exclusions.pids(),
                "bpftrace": str(self.args.bpftrace_version),
                "output": "ringbuf" if self.args.bpftrace_version.ringbuf_output else "perf",
                "overload": self.args.on_overload,
                "events_total": self.parser.events, "lost_total": self.parser.lost,
                "dropped_total": self.dropped, "malformed_total": self.parser.malformed,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "stale_cpus": self.parser.stale_cpus()}

    def publish_status(self) -> None:
        st = self.status()
        if st["stale_cpus"] != self._last_stale:
            if st["stale_cpus"]:
                log.warning("no loss count from CPU(s) %s for %.0f s: lost_total leaves out what they lost "
                            "since (bpftrace stopped, or its output buffer on those CPUs stopped delivering)",
                            ",".join(map(str, st["stale_cpus"])), KICK_STALE_S)
            else:
                log.warning("every CPU's loss count is current again")
            self._last_stale = st["stale_cpus"]
        self._send(encode(TOPIC_STATUS, st), 0)
        bad = (st["lost_total"], st["dropped_total"], st["malformed_total"])
        now = time.monotonic()
        if bad != self._last_logged or now >= self._next_status_log:
            level = logging.WARNING if bad != self._last_logged else logging.INFO
            log.log(level, "status: events_total=%d lost_total=%d dropped_total=%d malformed_total=%d "
                    "excluded_events=%d", st["events_total"], *bad, self.parser.excluded)
            self._last_logged = bad
            self._next_status_log = now + LOG_STATUS_EVERY_S

    def _log_malformed(self, line: bytes) -> None:
        now = time.monotonic()
        if now - self._malformed_window > 60:
            self._malformed_window, self._malformed_logged = now, 0
        self._malformed_logged += 1
        if self._malformed_logged <= MALFORMED_LOG_PER_MIN:
            log.warning("unparseable bpftrace line (counted in malformed_total): %.200r", line)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        if self.bt:
            running = self.bt.proc.poll() is None
            code = self.bt.stop()
            if running:
                log.info("bpftrace stopped (exit status %s): probes detached", code)


def endpoint_port(sock: zmq.Socket) -> int | None:
    """The TCP port the socket is bound to (None for ipc:// and other transports)."""
    last = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    if last.startswith("tcp://"):
        return int(last.rsplit(":", 1)[1])
    return None


def setup(args: argparse.Namespace) -> tuple[object, list[int]]:
    """Checks that must pass before anything is bound; (containers lookup, container cgroups)."""
    bpf.check_root()
    args.bpftrace = bpf.find_bpftrace(args.bpftrace)
    try:
        args.bpftrace_version = bpfversion.detect(args.bpftrace)
    except bpfversion.BpftraceVersionError as exc:
        raise SetupError(f"cannot tell which bpftrace {args.bpftrace} is: {exc}") from None
    bpf.check_host_pid_namespace()
    bpf.ensure_tracefs()
    program.predicate(args.pid, args.comm)          # validates the filters
    containers = Containers()
    cgroups: list[int] = []
    for ref in args.container:
        try:
            full, ids = containers.cgroups_of(ref)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        log.info("--container %s: container %s, filtered in the kernel by cgroup id %s (processes it "
                 "starts in new cgroups later are not traced; a restarted container needs a new collector)",
                 ref, full[:12], ", ".join(map(str, ids)))
        cgroups += ids
    if args.hostname is None:
        args.hostname = host_name()
    return (containers if containers.root is not None else NoContainers()), cgroups


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s syswatch-collector %(levelname)s %(message)s")
    try:
        check_endpoint(args.bind)
        containers, cgroups = setup(args)
        server_keys = curve.server_from_env()
    except (SetupError, program.FilterError, curve.CurveError, EndpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warn_if_public(args.bind, server_keys is not None)
    ctx = zmq.Context()
    auth = None
    try:
        if server_keys:
            auth = curve.start_authenticator(ctx, server_keys)
        sock = make_publisher(ctx, args.bind, sndhwm=PUB_SNDHWM, manual=True, curve_server=server_keys)
    except (zmq.ZMQError, EndpointError) as exc:
        print(f"error: {bind_error(args.bind, exc)}", file=sys.stderr)
        if auth:
            auth.stop()
        ctx.term()
        return 2
    coll = Collector(args, sock, containers, cgroups)
    signal.signal(signal.SIGINT, lambda *_: None)      # the wake-up fd tells the loop
    signal.signal(signal.SIGTERM, lambda *_: None)
    print("Loading eBPF program", flush=True)
    code = 0
    try:
        coll.start()
        if not coll.stop_requested:
            log.info("probe %s, mode %s, syscalls %s, host %s, %s (%s output, %s, on overload: %s), "
                     "publishing on %s%s", coll.probe, args.mode, ",".join(args.syscalls), args.hostname,
                     args.bpftrace_version.raw,
                     "ring buffer" if args.bpftrace_version.ringbuf_output else "perf buffer",
                     coll.bt.buffer_desc(), args.on_overload, args.bind,
                     " (CurveZMQ)" if server_keys else "")
            code = coll.run()
    except BpftraceFailed as exc:
        print(f"error: bpftrace could not start tracing: {exc}", file=sys.stderr)
        code = 1
    finally:
        coll.close()
        if code == 0:
            coll.publish_status()                      # final counters for subscribers
        sock.close(linger=0)
        if auth:
            auth.stop()
        ctx.term()
    return code


def bind_error(endpoint: str, exc: Exception) -> str:
    """What a bind failure means, in words that fit the cause."""
    errno_ = getattr(exc, "errno", None)
    if errno_ == zmq.EADDRINUSE:
        return (f"cannot bind {endpoint}: the address is in use (is another collector running?); "
                "choose another --bind / SYSWATCH_BIND")
    if errno_ == errno.ENOENT:
        return f"cannot bind {endpoint}: the directory of the ipc path does not exist"
    if errno_ == zmq.EADDRNOTAVAIL:
        return f"cannot bind {endpoint}: no interface of this host has that address"
    return f"cannot bind {endpoint}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
