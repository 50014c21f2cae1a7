"""syswatch collector: runs collector/syscalls.bt under bpftrace and publishes on ZeroMQ.

    sudo python -m collector.collector --help

One process, one thread for the work (the PUB socket is used from this thread only):
a poll loop reads bpftrace's stdout in 64 KiB chunks, turns each chunk into one batch
message per syscall topic (so every batch is published within one read of its arrival,
well inside the contract's 10 ms), publishes ``status`` every second and echoes a capped
number of events on the console. See docs/readme/collector.md.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import select
import signal
import socket
import sys
import time

# Say "must run as root" before any third-party import: an unprivileged user's interpreter may
# not be able to import zmq at all (issue 17). Only when run as a program, and not for --help.
if __name__ == "__main__" and os.geteuid() != 0 and not any(
        a == "-h" or len(a) > 3 and ("--help".startswith(a) or "--version".startswith(a)) for a in sys.argv[1:]):
    from .bpf import SetupError, check_root     # stdlib only
    try:
        check_root()
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

import zmq

from shared import curve
from shared.config import env_default
from shared.protocol import DEFAULT_ENDPOINT, TOPIC_COUNTS, TOPIC_READ, TOPIC_STATUS, TOPIC_WRITE, \
    encode, encode_event_batch, json_string
from shared.zmqsock import make_publisher

from . import bpf, program
from .bpf import Bpftrace, SetupError
from .echo import Echo
from .parser import CountsParser, EventParser

log = logging.getLogger("syswatch.collector")

# One message holds at most one 64 KiB read of bpftrace output (~400 events): 1000 queued
# messages per subscriber bound the memory a stalled subscriber costs to ~64 MiB.
PUB_SNDHWM = 1000
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
  sudo python -m collector.collector
        trace every read/write on the host, publish on tcp://127.0.0.1:5556
  sudo python -m collector.collector --mode counts --interval 5
        count calls and bytes per process in the kernel, publish totals every 5 s
  sudo python -m collector.collector --pid 1234 --pid 5678 --comm nginx
        only PIDs 1234 and 5678 whose name is nginx (filtered in the kernel)
  sudo python -m collector.collector --probe tracepoint --echo-rate 0
        syscall tracepoints, no console echo
  sudo SYSWATCH_CURVE_SERVER_KEY=keys/server.key_secret SYSWATCH_CURVE_CLIENTS=keys/clients \\
       python -m collector.collector --bind tcp://0.0.0.0:5556
        publish beyond this host, encrypted, to authorised subscribers only
        (keys: python -m shared.curve keys server; python -m shared.curve keys/clients alice)
  python subscribers/tail.py         # watch the stream;  python subscribers/top.py: busiest processes

Every flag has an environment variable (flag > environment > default), shown as [env NAME].
Status (topic "status", every second) counts events, lost (bpftrace's perf buffer
overflowed), dropped (could not be queued) and malformed lines.
"""


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A flag or environment value that does not convert; argparse and env_default show the text."""


def positive_float(text: str) -> float:
    try:
        val = float(text)
    except ValueError:
        raise BadValue(f"{text!r} is not a number of seconds") from None
    if not 0.01 <= val <= 3600:
        raise BadValue(f"{text!r}: must be between 0.01 and 3600 seconds")
    return val


def non_negative_int(text: str) -> int:
    try:
        val = int(text)
    except ValueError:
        raise BadValue(f"{text!r} is not a whole number") from None
    if val < 0:
        raise BadValue(f"{text!r}: must be 0 or more")
    return val


def choice(*allowed: str):
    def convert(text: str) -> str:
        if text not in allowed:
            raise BadValue(f"{text!r}: must be one of {', '.join(allowed)}")
        return text
    return convert


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m collector.collector",
        description="Trace read/write system calls host-wide with bpftrace and publish them on "
                    "ZeroMQ (wire protocol v1). Runs as root, in the host PID namespace.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind", metavar="ENDPOINT", default=env_default("SYSWATCH_BIND", DEFAULT_ENDPOINT),
                   help="ZeroMQ PUB endpoint [env SYSWATCH_BIND] (default: %(default)s)")
    p.add_argument("--mode", type=choice("events", "counts"), metavar="{events,counts}",
                   default=env_default("SYSWATCH_MODE", "events", choice("events", "counts")),
                   help="events: every call; counts: per-process totals aggregated in the kernel "
                        "[env SYSWATCH_MODE] (default: %(default)s)")
    p.add_argument("--probe", type=choice("auto", "kprobe", "tracepoint"), metavar="{auto,kprobe,tracepoint}",
                   default=env_default("SYSWATCH_PROBE", "auto", choice("auto", "kprobe", "tracepoint")),
                   help="auto: kprobes __x64_sys_read/write if the kernel can, else syscall "
                        "tracepoints [env SYSWATCH_PROBE] (default: %(default)s)")
    p.add_argument("--interval", type=positive_float, metavar="SECONDS",
                   default=env_default("SYSWATCH_INTERVAL", 1.0, positive_float),
                   help="seconds between counts messages in counts mode [env SYSWATCH_INTERVAL] "
                        "(default: %(default)s)")
    p.add_argument("--echo-rate", type=non_negative_int, metavar="LINES",
                   default=env_default("SYSWATCH_ECHO_RATE", 50, non_negative_int),
                   help="console echo lines per second at most, 0 = off [env SYSWATCH_ECHO_RATE] "
                        "(default: %(default)s)")
    p.add_argument("--pid", type=int, action="append", default=None, metavar="PID",
                   help="trace only this PID; repeatable [env SYSWATCH_PID, comma separated] "
                        "(default: every PID)")
    p.add_argument("--comm", action="append", default=None, metavar="NAME",
                   help="trace only processes with this name (15 bytes at most); repeatable "
                        "[env SYSWATCH_COMM, comma separated] (default: every name)")
    p.add_argument("--hostname", default=env_default("SYSWATCH_HOSTNAME", socket.gethostname()),
                   help="the host field of every message [env SYSWATCH_HOSTNAME] (default: %(default)s)")
    p.add_argument("--log-level", default=env_default("SYSWATCH_LOG_LEVEL", "info"),
                   choices=("debug", "info", "warning", "error"),
                   help="log level of stderr messages [env SYSWATCH_LOG_LEVEL] (default: %(default)s)")
    args = p.parse_args(argv)
    if args.pid is None:
        args.pid = env_default("SYSWATCH_PID", [], lambda s: [int(x) for x in s.split(",") if x.strip()])
    if args.comm is None:
        args.comm = env_default("SYSWATCH_COMM", [], lambda s: [x for x in s.split(",") if x])
    return args


def warn_if_public(endpoint: str) -> None:
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
                    "" if curve.server_from_env() else
                    "; set SYSWATCH_CURVE_SERVER_KEY and SYSWATCH_CURVE_CLIENTS to encrypt it and "
                    "admit only authorised subscribers (python -m shared.curve --help)")


class Collector:
    """Owns the bpftrace child, the PUB socket and the counters published in ``status``."""

    def __init__(self, args: argparse.Namespace, sock: zmq.Socket, bpftrace_path: str):
        self.args = args
        self.sock = sock
        self.bpftrace_path = bpftrace_path
        self.host_json = json_string(args.hostname)
        self.started = time.monotonic()
        self.dropped = 0
        self.calls_counted = 0               # counts mode: events_total
        self.echo = Echo(args.echo_rate if args.mode == "events" else 0)
        self.ready = False
        self._malformed_logged = 0
        self._malformed_window = 0.0
        self.parser = EventParser(self._log_malformed, self._set_ready) if args.mode == "events" \
            else CountsParser(self._log_malformed, self._set_ready)
        self.bt: Bpftrace | None = None
        self.probe = ""
        self._partial = b""
        self._last_logged = (0, 0, 0)
        self.stop_requested = False
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    # -- start-up ------------------------------------------------------------------------
    def _set_ready(self) -> None:
        """bpftrace attached its probes: the seed's start-up lines (contract), before any echo."""
        self.ready = True
        print("Monitoring sys_read and sys_write calls...")
        print(f"Host PID: {os.getpid()}")
        for pid in self.excluded_pids():
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
                    want = "tracepoint"
        self._start(want)

    def _start(self, probe: str) -> None:
        text = program.build(self.args.mode, probe, self.args.pid, self.args.comm)
        interval_ms = max(1, round(self.args.interval * 1000))
        self.bt = Bpftrace(program.command(self.bpftrace_path, self.args.mode, text, interval_ms))
        self.probe = probe
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
        """Until SIGINT/SIGTERM (returns 0) or bpftrace's death (returns 1)."""
        next_status = time.monotonic()
        while not self.stop_requested:
            now = time.monotonic()
            if now >= next_status:
                self.publish_status()
                next_status = now + STATUS_EVERY_S
            if not self._poll(max(0.0, next_status - time.monotonic())):
                if self.stop_requested:
                    break
                log.error("%s", self.bt.exit_message())
                return 1
            self.echo.tick()
        return 0

    def _poll(self, timeout_s: float) -> bool:
        """One poll round; False when bpftrace's stdout hit EOF (it exited)."""
        poller = self._poller()
        try:
            ready = poller.poll(timeout_s * 1000)
        except InterruptedError:
            ready = []
        alive = True
        for fd, _ in ready:
            if fd == self.bt.stdout_fd:
                alive = self._read_stdout()
            elif fd == self.bt.stderr_fd:
                self.bt.drain_stderr()
            elif fd == self._wake_r:
                try:
                    os.read(self._wake_r, 512)
                except BlockingIOError:
                    pass
        return alive

    def _poller(self) -> select.poll:
        if getattr(self, "_poll_for", None) is not self.bt:
            self._poll_obj = select.poll()
            for fd in (self.bt.stdout_fd, self.bt.stderr_fd, self._wake_r):
                self._poll_obj.register(fd, select.POLLIN)
            self._poll_for = self.bt
        return self._poll_obj

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
                self.parser.malformed += 1
                self._log_malformed(data[:200])
                data = b""
            self._partial = data
            return True
        self._partial = data[cut + 1:]
        if self.args.mode == "events":
            self._events(data[:cut])
        else:
            for line in data[:cut].split(b"\n"):
                rows = self.parser.feed(line)
                if rows is not None:
                    self._counts(rows)
        return True

    def _events(self, lines: bytes) -> None:
        reads, writes = self.parser.parse(lines)
        for topic, syscall, events in ((TOPIC_READ, "read", reads), (TOPIC_WRITE, "write", writes)):
            if events:
                self._send(encode_event_batch(topic, self.host_json, events), len(events))
                self.echo.events(syscall, events)

    def _counts(self, rows: list[dict]) -> None:
        self.calls_counted += sum(r["calls"] for r in rows)
        payload = {"host": self.args.hostname, "ts_ns": time.time_ns(),
                   "interval_ns": round(self.args.interval * 1e9), "rows": rows}
        self._send(encode(TOPIC_COUNTS, payload), len(rows))

    def _send(self, frames: list[bytes], n_events: int) -> None:
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += n_events

    # -- status and logs ---------------------------------------------------------------
    def status(self) -> dict:
        events = self.parser.events if self.args.mode == "events" else self.calls_counted
        return {"host": self.args.hostname, "ts_ns": time.time_ns(), "mode": self.args.mode,
                "probe": self.probe, "excluded_pids": self.excluded_pids(),
                "events_total": events, "lost_total": self.parser.lost,
                "dropped_total": self.dropped, "malformed_total": self.parser.malformed,
                "uptime_s": round(time.monotonic() - self.started, 3)}

    def excluded_pids(self) -> list[int]:
        return [os.getpid()] + ([self.bt.pid] if self.bt else [])

    def publish_status(self) -> None:
        st = self.status()
        self._send(encode(TOPIC_STATUS, st), 0)
        bad = (st["lost_total"], st["dropped_total"], st["malformed_total"])
        periodic = int(st["uptime_s"] // LOG_STATUS_EVERY_S) != int((st["uptime_s"] - STATUS_EVERY_S) // LOG_STATUS_EVERY_S)
        if bad != self._last_logged or periodic:
            level = logging.WARNING if bad != self._last_logged else logging.INFO
            log.log(level, "status: events_total=%d lost_total=%d dropped_total=%d malformed_total=%d",
                    st["events_total"], *bad)
            self._last_logged = bad

    def _log_malformed(self, line: bytes) -> None:
        now = time.monotonic()
        if now - self._malformed_window > 60:
            self._malformed_window, self._malformed_logged = now, 0
        self._malformed_logged += 1
        if self._malformed_logged <= MALFORMED_LOG_PER_MIN:
            log.warning("unparseable bpftrace line (counted in malformed_total): %.200r", line)

    # -- shutdown ------------------------------------------------------------------------
    def request_stop(self, signum, _frame) -> None:
        self.stop_requested = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.bt:
            running = self.bt.proc.poll() is None
            code = self.bt.stop()
            if running:
                log.info("bpftrace stopped (exit status %s): probes detached", code)


class BpftraceFailed(RuntimeError):
    """bpftrace exited or hung before its probes were attached."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s syswatch-collector %(levelname)s %(message)s")
    try:
        bpf.check_root()
        bpftrace_path = bpf.find_bpftrace()
        bpf.check_host_pid_namespace()
        bpf.ensure_tracefs()
        program.predicate(args.pid, args.comm)          # validates the filters
        server_keys = curve.server_from_env()
    except (SetupError, program.FilterError, curve.CurveError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warn_if_public(args.bind)
    ctx = zmq.Context()
    auth = None
    try:
        if server_keys:
            auth = curve.start_authenticator(ctx, server_keys)
        sock = make_publisher(ctx, args.bind, sndhwm=PUB_SNDHWM, curve_server=server_keys)
    except zmq.ZMQError as exc:
        print(f"error: cannot bind the ZeroMQ publisher to {args.bind}: {exc} "
              "(is another collector running? choose another --bind / SYSWATCH_BIND)", file=sys.stderr)
        if auth:
            auth.stop()
        ctx.term()
        return 2
    coll = Collector(args, sock, bpftrace_path)
    signal.signal(signal.SIGINT, coll.request_stop)
    signal.signal(signal.SIGTERM, coll.request_stop)
    print("Loading eBPF program", flush=True)
    code = 0
    try:
        coll.start()
        if not coll.stop_requested:
            log.info("probe %s, mode %s, publishing on %s%s", coll.probe, args.mode, args.bind,
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


if __name__ == "__main__":
    sys.exit(main())
