"""The collector's work: one thread, one poll loop over bpftrace's output, the publisher socket
and the signal wake-up pipe (the XPUB socket is used from this thread only).

A poll round reads bpftrace's stdout in 256 KiB chunks, turns each chunk into one batch message
per syscall topic (so every batch is published within one read of its arrival, well inside the
contract's 10 ms), applies subscriptions, publishes ``status`` every second and echoes a capped
number of events on the console. See docs/COLLECTOR.md and docs/PROTOCOL.md.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import time

import zmq

from syswatch.collector import bpf, program
from syswatch.collector.bpf import Bpftrace
from syswatch.collector.cli import Config
from syswatch.collector.echo import Echo
from syswatch.collector.exclusions import Exclusions
from syswatch.collector.files import Files
from syswatch.collector.hostinfo import online_cpus
from syswatch.collector.parser import KICK_STALE_S, Parsed, Parser
from syswatch.collector.preflight import Prepared
from syswatch.shared.protocol import (
    TOPIC_COUNTS,
    TOPIC_STATUS,
    encode,
    encode_event_batch,
    json_string,
    parse_announce,
    topic_for,
    valid_subscription,
)

log = logging.getLogger("syswatch.collector")

# Counts rows per message. A row is at most ~7.7 KB encoded (65 latency buckets and all 151 errno names,
# each a u64; escaped names), a file row ~25 KB (a 4 KiB path of control bytes): 500 rows (3.9 MB) and
# an interval's 100 files (2.5 MB) stay under the API's 8 MiB limit.
ROWS_PER_MESSAGE = 500
STATUS_EVERY_S = 1.0
LOG_STATUS_EVERY_S = 10.0
READY_TIMEOUT_S = 120.0              # compiling takes ~1 s, far longer on a loaded machine
MALFORMED_LOG_PER_MIN = 5
MAX_LINE = 1 << 20
# Wait this long after bpftrace's stdout becomes readable, so a read collects a batch
# (measured on 2 vCPUs under load, dd bs=1: collector CPU per event fell from ~10 us to
# ~4.5 us, about 0.2x bpftrace's own CPU per event).
COALESCE_S = 0.002
UNREADABLE_STOP = 1000               # calls failing the register check (with none passing) before stopping


class BpftraceFailed(RuntimeError):
    """bpftrace exited or hung before its probes were attached."""


class Collector:
    """Owns the bpftrace child, the publisher socket, the parser and the poll loop."""

    def __init__(self, config: Config, prepared: Prepared, sock: zmq.Socket, curve_watch=None):
        self.config = config
        self.curve_watch = curve_watch         # shared.curve.RefusalWatch when CurveZMQ is on
        self.prepared = prepared
        self.sock = sock
        self.host_json = json_string(prepared.hostname)
        self.started = time.monotonic()
        self.dropped = 0
        # per syscall: [calls, bytes, errors] (bytes and errors from counts rows only: events stay JSON)
        self.per_syscall: dict[str, list[int]] = {sc: [0, 0, 0] for sc in config.syscalls}
        # what --metrics serves: a new dict every status, read by the HTTP thread (collector/metrics.py)
        self.metrics_snapshot: dict | None = None
        self.rejected_subscriptions = 0
        self.echo = Echo(config.echo_rate if config.mode == "events" else 0)
        self.ready = False
        version = prepared.version
        self.files = Files(prepared.kernel, paths=config.paths, pids=tuple(config.filters.pids))
        self.parser = Parser(config.mode, list(config.syscalls), prepared.containers,
                             keys_escaped_twice=version.map_key_strings_escaped_twice,
                             kick_cpus=online_cpus(), ring_buffer=version.ringbuf_output,
                             latency=config.latency, files=self.files, path_prefixes=config.path_prefixes)
        self.exclusions = Exclusions([os.getpid()], endpoint_port(sock), ipc_path=endpoint_ipc_path(sock))
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

    @property
    def bpftrace(self) -> Bpftrace:
        """The bpftrace child, from start() on."""
        if self.bt is None:
            raise RuntimeError("bpftrace has not been started")
        return self.bt

    def _poller(self) -> zmq.Poller:
        if self.poller is None:
            raise RuntimeError("bpftrace has not been started")
        return self.poller

    # -- what the parser and the exclusions report ----------------------------------------------
    def _report(self, parsed: Parsed) -> None:
        """Before the chunk's events: bpftrace is ready (start-up lines), lines it could not parse."""
        if parsed.ready and not self.ready:
            self._set_ready()
        self._log_malformed(parsed.malformed)

    def _exclude(self) -> None:
        """What the stream leaves out (collector/streamio.py): a new value for the parser when it changed."""
        rules = self.exclusions.rules
        old = self.parser.rules
        if rules is not old:
            self.parser.rules = rules
            self.parser.stream_io.forget(old.subscribers - rules.subscribers)

    # -- start-up ------------------------------------------------------------------------
    def _set_ready(self) -> None:
        """bpftrace attached its probes: the seed's start-up lines (contract), before any echo."""
        self.ready = True
        print("Monitoring sys_read and sys_write calls...")
        print(f"Host PID: {os.getpid()}")
        for pid in (os.getpid(), self.bpftrace.pid):
            print(f"Skipping self PID: {pid}")
        sys.stdout.flush()

    def start(self) -> None:
        """Starts bpftrace with the probe kind asked for (auto: kprobe, else tracepoint)."""
        want = self.config.probe
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
                    self.bpftrace.stop()
                    want = "tracepoint"
        self._start(want)

    def _start(self, probe: str) -> None:
        config, prepared = self.config, self.prepared
        text = program.render(config.mode, probe, config.syscalls, config.filters.pids, config.filters.comms,
                              prepared.cgroups, latency=config.latency, cpus=self.parser.kick_cpus,
                              paths=config.paths, kernel=prepared.kernel, version=prepared.version,
                              uids=config.filters.uids, tids=config.filters.tids, failed=config.filters.failed,
                              min_latency_ns=config.filters.min_latency_ns)
        interval_ms = max(1, round(config.interval * 1000))
        self.bt = Bpftrace(program.command(prepared.bpftrace, config.mode, text, interval_ms),
                           prepared.version, config.on_overload)
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
        end = time.monotonic() + self.config.duration if self.config.duration else float("inf")
        next_status = time.monotonic()
        self.exclusions.refresh(force=True)
        self._exclude()
        while not self.stop_requested:
            now = time.monotonic()
            if now >= end:
                log.info("--duration %.0f s reached: stopping", self.config.duration)
                break
            if now >= next_status:
                self.publish_status()
                next_status = now + STATUS_EVERY_S
                if self.arguments_unreadable():
                    return 1
            self.exclusions.refresh()
            self._exclude()
            if not self._poll(max(0.0, min(next_status, end) - time.monotonic())):
                if self.stop_requested:
                    break
                log.error("%s", self.bpftrace.exit_message())
                return 1
            self.echo.tick()
        return 0

    def arguments_unreadable(self) -> bool:
        """Fail safe: when the exit-only probe cannot read calls' arguments on this kernel (its
        layout is not the one collector/kernel.py found), every call fails the check and nothing is
        published. Say so and stop, instead of running on and showing an empty stream."""
        p = self.parser
        if self.config.latency or p.unreadable < UNREADABLE_STOP or p.unreadable < 10 * (p.events + p.excluded + 1):
            return False
        log.error("%d calls failed the check of their saved registers and %d passed: this kernel's stack "
                  "layout is not the one assumed (%s). Run the collector with --latency (SYSWATCH_LATENCY=1), "
                  "which takes the arguments at the entry of each call", p.unreadable, p.events,
                  self.prepared.kernel.layout_from)
        return True

    def _poll(self, timeout_s: float) -> bool:
        """One poll round; False when bpftrace's stdout hit EOF (it exited)."""
        try:
            ready = dict(self._poller().poll(int(timeout_s * 1000)))
        except zmq.ZMQError:
            ready = {}
        if self.sock in ready:
            self._subscriptions()
        if self.bpftrace.stderr_fd in ready:
            self.bpftrace.drain_stderr()
        if self._wake_r in ready:
            try:
                signals = os.read(self._wake_r, 512)
            except BlockingIOError:
                signals = b""
            if any(s in (signal.SIGINT, signal.SIGTERM) for s in signals):
                self.stop_requested = True
        if self.bpftrace.stdout_fd in ready:
            return self._read_stdout()
        return True

    def _subscriptions(self) -> None:
        """Apply what subscribers asked for: only prefixes of our topics; announces are queued for
        verification (collector/exclusions.py) with the address they came from."""
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            msg = frame.bytes
            if not msg or msg[0] not in (0, 1):
                continue
            subscribe, topic = msg[0] == 1, msg[1:]
            announce = parse_announce(topic)
            if announce:
                if subscribe:
                    self.exclusions.announce(*announce, peer_ip=_peer_ip(frame))
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
        data = self.bpftrace.read_stdout()
        if data is None:
            return True
        if not data:
            self.bpftrace.proc.wait()
            return False
        data = self._partial + data
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) > MAX_LINE:             # no newline in 1 MiB: not bpftrace's output format
                self.parser.bad_line(data[:200])
                self._log_malformed(self.parser.take_malformed())
                data = b""
            self._partial = data
            return True
        self._partial = data[cut + 1:]
        parsed = self.parser.parse(data[:cut])
        self._report(parsed)
        for syscall, events in parsed.events.items():
            self._send(encode_event_batch(topic_for(syscall), self.host_json, events), len(events))
            self.echo.events(syscall, events)
            self.per_syscall.setdefault(syscall, [0, 0, 0])[0] += len(events)
        for interval in parsed.intervals:
            rows = interval.rows
            for r in rows:
                totals = self.per_syscall.setdefault(r["syscall"], [0, 0, 0])
                totals[0] += r["calls"]
                totals[1] += r["bytes"]
                totals[2] += r["errors"]
            # one interval may take several messages: each stays far below subscribers' size limits;
            # the first carries the interval's files
            for at in range(0, max(len(rows), 1), ROWS_PER_MESSAGE):
                chunk = rows[at:at + ROWS_PER_MESSAGE]
                payload = {"host": self.prepared.hostname, "ts_ns": time.time_ns(),
                           "interval_ns": round(self.config.interval * 1e9), "rows": chunk}
                if at == 0:
                    payload["files"], payload["files_rest"] = interval.files, interval.files_rest
                self._send(encode(TOPIC_COUNTS, payload), sum(r["calls"] for r in chunk))
        return True

    def _send(self, frames: list[bytes], n_events: int) -> None:
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += n_events

    # -- status and logs ---------------------------------------------------------------
    def status(self) -> dict:
        return {"host": self.prepared.hostname, "ts_ns": time.time_ns(), "mode": self.config.mode,
                "probe": self.probe, "syscalls": list(self.config.syscalls),
                "excluded_pids": self.exclusions.pids(),
                "bpftrace": str(self.prepared.version),
                "output": "ringbuf" if self.prepared.version.ringbuf_output else "perf",
                "overload": self.config.on_overload,
                "events_total": self.parser.events, "lost_total": self.parser.lost,
                "dropped_total": self.dropped, "malformed_total": self.parser.malformed,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "stale_cpus": self.parser.stale_cpus(), "latency": self.config.latency,
                "paths": self.config.paths, "unreadable_total": self.parser.unreadable,
                "excluded": self.exclusions.entries(self.parser.stream_io.learned),
                "announces_refused_total": self.exclusions.refused,
                **({"curve_refused_total": self.curve_watch.refused} if self.curve_watch else {})}

    def publish_status(self) -> None:
        retry = getattr(self.prepared.containers, "retry_misses", None)
        if retry:
            retry()                            # containers the engine did not name: ask again, off the loop
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
        counts = self.config.mode == "counts"
        self.metrics_snapshot = {
            **st, "excluded_events": self.parser.excluded,
            "per_syscall": {sc: {"calls": c, "bytes": b if counts else None, "errors": e if counts else None}
                            for sc, (c, b, e) in self.per_syscall.items()}}
        bad = (st["lost_total"], st["dropped_total"], st["malformed_total"])
        now = time.monotonic()
        if bad != self._last_logged or now >= self._next_status_log:
            level = logging.WARNING if bad != self._last_logged else logging.INFO
            log.log(level, "status: events_total=%d lost_total=%d dropped_total=%d malformed_total=%d "
                    "excluded_events=%d", st["events_total"], *bad, self.parser.excluded)
            self._last_logged = bad
            self._next_status_log = now + LOG_STATUS_EVERY_S

    def _log_malformed(self, lines: list[bytes]) -> None:
        for line in lines:
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


def _peer_ip(frame: zmq.Frame) -> str | None:
    """The address a subscription came from (ZeroMQ's Peer-Address), as the kernel's tables spell it."""
    try:
        ip = ipaddress.ip_address(frame.get("Peer-Address"))
    except (zmq.ZMQError, ValueError, TypeError):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def endpoint_ipc_path(sock: zmq.Socket) -> str | None:
    """The path of the ipc:// endpoint the socket is bound to (None for tcp:// and others)."""
    last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return last[len("ipc://"):] if last.startswith("ipc://") else None


def endpoint_port(sock: zmq.Socket) -> int | None:
    """The TCP port the socket is bound to (None for ipc:// and other transports)."""
    last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    if last.startswith("tcp://"):
        return int(last.rsplit(":", 1)[1])
    return None
