"""syswatch collector: runs bpftrace (collector/program.py) and publishes on ZeroMQ (protocol v2).

    sudo python -m collector.collector --help

The program: the command line (collector/cli.py), the host checks (collector/preflight.py), the
publisher socket, then the poll loop (collector/loop.py) until a signal, --duration or bpftrace's
end. See docs/COLLECTOR.md and docs/PROTOCOL.md.
"""
from __future__ import annotations

import os
import sys

# Say "must run as root" before any third-party import: an unprivileged user's interpreter may
# not be able to import zmq at all (issue 17). Only when run as a program (python -m, or the
# installed syswatch-collector script), and not for --help.
if (__name__ == "__main__" or os.path.basename(sys.argv[0]) == "syswatch-collector") and os.geteuid() != 0 \
        and not any(a in ("-h", "-V") or len(a) > 3 and ("--help".startswith(a) or "--version".startswith(a))
                    for a in sys.argv[1:]):
    from syswatch.collector.bpf import SetupError, check_root  # stdlib only
    try:
        check_root()
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

from syswatch.shared.deps import require  # noqa: E402  (stdlib only)

require("syswatch-collector", "zmq")          # a missing package: one line, exit 2

import errno  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402

import zmq  # noqa: E402

from syswatch.collector import program  # noqa: E402
from syswatch.collector.bpf import SetupError  # noqa: E402
from syswatch.collector.cli import parse_args  # noqa: E402
from syswatch.collector.loop import BpftraceFailed, Collector  # noqa: E402
from syswatch.collector.preflight import preflight  # noqa: E402
from syswatch.shared import curve  # noqa: E402
from syswatch.shared.zmqsock import EndpointError, check_endpoint, make_publisher  # noqa: E402

log = logging.getLogger("syswatch.collector")

# One message holds at most one 256 KiB read of bpftrace output (~1,000 events, ~300 KiB of
# JSON): 200 queued messages per subscriber bound what a stalled subscriber costs to ~60 MiB.
PUB_SNDHWM = 200


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


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s syswatch-collector %(levelname)s %(message)s")
    try:
        check_endpoint(config.bind)
        prepared = preflight(config)
        server_keys = curve.server_from_env()
    except (SetupError, program.FilterError, curve.CurveError, EndpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warn_if_public(config.bind, server_keys is not None)
    ctx = zmq.Context()
    auth = None
    try:
        if server_keys:
            auth = curve.start_authenticator(ctx, server_keys)
        sock = make_publisher(ctx, config.bind, sndhwm=PUB_SNDHWM, manual=True, curve_server=server_keys)
    except (zmq.ZMQError, EndpointError) as exc:
        print(f"error: {bind_error(config.bind, exc)}", file=sys.stderr)
        if auth:
            auth.stop()
        ctx.term()
        return 2
    watch = curve.RefusalWatch(sock) if server_keys else None
    coll = Collector(config, prepared, sock, curve_watch=watch)
    metrics = None
    if config.metrics:
        try:
            metrics = serve_metrics(config.metrics, coll)
        except (OSError, SystemExit) as exc:
            if isinstance(exc, OSError):
                print(f"error: {exc}", file=sys.stderr)
            coll.close()
            if watch:
                watch.stop()
            sock.close(linger=0)
            if auth:
                auth.stop()
            ctx.term()
            return 2
    signal.signal(signal.SIGINT, lambda *_: None)      # the wake-up fd tells the loop
    signal.signal(signal.SIGTERM, lambda *_: None)
    print("Loading eBPF program", flush=True)
    code = 0
    try:
        coll.start()
        if not coll.stop_requested:
            log.info("probe %s, mode %s, syscalls %s, host %s, %s (%s output, %s, on overload: %s), "
                     "publishing on %s%s", coll.probe, config.mode, ",".join(config.syscalls), prepared.hostname,
                     prepared.version.raw,
                     "ring buffer" if prepared.version.ringbuf_output else "perf buffer",
                     coll.bpftrace.buffer_desc(), config.on_overload, config.bind,
                     " (CurveZMQ)" if server_keys else "")
            code = coll.run()
    except BpftraceFailed as exc:
        print(f"error: bpftrace could not start tracing: {exc}", file=sys.stderr)
        code = 1
    finally:
        coll.close()
        if code == 0:
            coll.publish_status()                      # final counters for subscribers
        if metrics is not None:
            metrics.close()
        if watch:
            watch.stop()
        close_names = getattr(prepared.containers, "close", None)
        if close_names:
            close_names()
        sock.close(linger=0)
        if auth:
            auth.stop()
        ctx.term()
    return code


def serve_metrics(listen: str, coll: Collector):
    """--metrics: the collector's registry on its own HTTP thread (it reads the loop's last snapshot only)."""
    from syswatch.collector import metrics
    from syswatch.shared.metricsserver import MetricsServer, check_listen, is_loopback
    require("syswatch-collector --metrics", "prometheus_client")   # one line, exit 2
    try:
        server = MetricsServer(listen, metrics.registry(lambda: coll.metrics_snapshot,
                                                        lambda: coll.bt.pid if coll.bt else None))
    except OSError as exc:
        raise OSError(f"cannot serve --metrics on {listen}: {exc.strerror or exc}; pick another port") from None
    if not is_loopback(check_listen(listen)[0]):
        log.warning("--metrics %s is not a loopback address: anyone who reaches it sees the collector's "
                    "counters and what it runs", listen)
    log.info("metrics on http://%s/metrics", server.address)
    return server


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
