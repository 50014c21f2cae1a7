"""syswatch API server: the seed's IP-list endpoints (SQLite) and live views of the collector's stream.

    python -m api.server [--host H] [--port P] [--collector ENDPOINT] [--db FILE] [--token-file FILE] ...

The command line (flags and environment -> a frozen ApiConfig), then the app that make_app
(api/app.py) wires up, served by waitress (multi-threaded), with one background thread that
subscribes to the collectors (api/ingest.py). Flags beat environment variables, which beat defaults.
"""
from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import signal
import socket
import string
import sys
import textwrap
from typing import NoReturn

from syswatch.shared.deps import require

require("syswatch-api", "zmq", "bottle", "waitress", "prometheus_client")   # a missing one: one line, exit 2

from syswatch import __version__  # noqa: E402
from syswatch.api.app import ApiConfig, make_app  # noqa: E402
from syswatch.shared import curve, jetstream  # noqa: E402
from syswatch.shared.config import add_option  # noqa: E402
from syswatch.shared.zmqsock import check_endpoint  # noqa: E402

EPILOG = textwrap.dedent("""\
    environment (a flag beats its variable, which beats the default):
      SYSWATCH_HOST, SYSWATCH_PORT, SYSWATCH_COLLECTOR, SYSWATCH_DB, SYSWATCH_TOKEN (the token itself),
      SYSWATCH_READ_TOKEN (the read endpoints' token itself),
      SYSWATCH_MAX_BODY_BYTES, SYSWATCH_MAX_ITEMS, SYSWATCH_MAX_IPS, SYSWATCH_MAX_STREAMS,
      SYSWATCH_MAX_STREAMS_PER_ADDRESS, SYSWATCH_SSE_STALL_TIMEOUT, SYSWATCH_RECENT_EVENTS,
      SYSWATCH_STREAM_QUEUE, SYSWATCH_THREADS, SYSWATCH_MAX_CONNECTIONS, SYSWATCH_CHANNEL_TIMEOUT,
      SYSWATCH_HOSTS_PER_COLLECTOR, SYSWATCH_HOST_EXPIRY,
      SYSWATCH_HISTORY_DB, SYSWATCH_HISTORY_MAX_MB,
      SYSWATCH_CORS_ORIGINS and SYSWATCH_ALLOWED_HOSTS (comma separated)
      SYSWATCH_CURVE_SERVER_KEY + SYSWATCH_CURVE_CLIENT_KEY: subscribe with CurveZMQ
        (make the keys with: python3 -m syswatch.shared.curve --help)
      SYSWATCH_NATS_PASSWORD, SYSWATCH_NATS_TOKEN: NATS credentials (or the --nats-*-file flags)

    examples:
      syswatch-api                                            # 127.0.0.1:8080, collector tcp://127.0.0.1:5556
      syswatch-api --host 0.0.0.0 --port 9080                 # listen on every interface, port 9080
      syswatch-api --db /var/lib/syswatch/ips.sqlite3
      syswatch-api --collector tcp://10.0.0.5:5556            # a collector on another host
      syswatch-api --nats nats://nats.example:4222            # every node's events from NATS JetStream
      SYSWATCH_NATS_PASSWORD=... syswatch-api --nats tls://nats.example:4222 --nats-user api \
          --nats-ca /etc/syswatch/nats-ca.pem                 # with TLS and a password (docs/DEPLOY.md)
      SYSWATCH_TOKEN=s3cret syswatch-api                      # POSTs need: Authorization: Bearer s3cret
      syswatch-api --token-file /run/secrets/syswatch_token
      syswatch-api --host 0.0.0.0 --read-token-file /run/secrets/syswatch_read   # reads need a token too
      curl -s -H "Authorization: Bearer $(cat /run/secrets/syswatch_read)" localhost:8080/stats
      syswatch-api --max-items 1000 --max-ips 50000           # tighter IP list limits
      syswatch-api --history-max-mb 4096                      # room for more hosts (default 1024 MiB)
      syswatch-api --history-db /var/lib/syswatch/history.sqlite3 --history-max-mb 0   # 0: no history

      curl -s localhost:8080/apis
      curl -s -X POST localhost:8080/add_ips -H 'Content-Type: application/json' -d '{"add_ips": [1, 2, 3]}'
      curl -s 'localhost:8080/events?limit=5&syscall=write'
      curl -sN localhost:8080/events/stream?comm=dd
      curl -s 'localhost:8080/history?from=-15m&group=container'          # who did the I/O, 15 min back
      curl -s 'localhost:8080/history?from=2026-12-06T03:10:00Z&to=2026-12-06T03:15:00Z&group=file&format=csv'
      xdg-open http://localhost:8080/                       # the live dashboard

      # a page served from http://localhost:3000 may call the API (CORS), nothing else may:
      syswatch-api --cors-origin http://localhost:3000
        """)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"a TCP port is 0..65535, got {value}")
    return value


def history_mb(text: str) -> int:
    value = int(text)
    if value != 0 and not 1 <= value <= 1 << 20:
        raise ValueError(f"must be 0 (no history) or 1..{1 << 20} MiB, got {value}")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise ValueError(f"must be a positive number of seconds (at most 3600), got {text}")
    return value


def parse_args(argv=None) -> ApiConfig:
    """The ``ApiConfig`` of a command line (and the environment); exits 2 on a bad flag, variable or token."""
    d = ApiConfig     # its defaults are the command line's
    p = argparse.ArgumentParser(
        prog="syswatch-api", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="syswatch API: the IP list (SQLite) and live views of the collector's syscall stream.")
    opt = functools.partial(add_option, p)
    opt("--host", env="SYSWATCH_HOST", default=d.host, help="address to listen on")
    opt("--port", env="SYSWATCH_PORT", default=d.port, type=port, help="TCP port to listen on")
    opt("--collector", env="SYSWATCH_COLLECTOR", default=list(d.collectors), repeatable=True,
        type=check_endpoint, metavar="ENDPOINT",
        help="a collector's ZeroMQ PUB endpoint; repeat (env: comma separated) for one view over several")
    jetstream.add_flags(p, required=False)
    opt("--nats-consumer", env="SYSWATCH_NATS_CONSUMER", default=d.nats_consumer, type=jetstream.stream_name,
        metavar="NAME", help="the durable JetStream consumer; API replicas with the same name share the "
                             "messages (each gets some), another name reads them all again")
    opt("--db", env="SYSWATCH_DB", default=d.db, help="SQLite file holding the IP list")
    opt("--token-file", help="file holding the bearer token every POST must send; beats SYSWATCH_TOKEN "
                             "(none: POSTs are open unless SYSWATCH_TOKEN is set)")
    opt("--read-token-file", help="file holding the bearer token GET /events, /events/stream, /stats, "
                                  "/history and /metrics must send (the POST token is accepted too); beats "
                                  "SYSWATCH_READ_TOKEN (none: they are open unless SYSWATCH_READ_TOKEN is set)")
    opt("--max-body-bytes", env="SYSWATCH_MAX_BODY_BYTES", default=d.max_body_bytes, type=positive,
        help="largest POST body accepted, else 413")
    opt("--max-items", env="SYSWATCH_MAX_ITEMS", default=d.max_items, type=positive,
        help="most add_ips items in one request, else 413")
    opt("--max-ips", env="SYSWATCH_MAX_IPS", default=d.max_ips, type=positive,
        help="most addresses the list may hold, else 409")
    opt("--recent-events", env="SYSWATCH_RECENT_EVENTS", default=d.recent_events, type=positive,
        help="events kept for GET /events; also its largest ?limit=")
    opt("--max-streams", env="SYSWATCH_MAX_STREAMS", default=d.max_streams, type=positive,
        help="most concurrent GET /events/stream clients, else 503")
    opt("--max-streams-per-address", env="SYSWATCH_MAX_STREAMS_PER_ADDRESS", default=d.max_streams_per_address,
        type=positive, help="most concurrent GET /events/stream clients from one client address, else 429 "
                            "(behind a reverse proxy every client has the proxy's address)")
    opt("--stream-queue", env="SYSWATCH_STREAM_QUEUE", default=d.stream_queue, type=positive,
        help="events queued per stream client before drops")
    opt("--sse-stall-timeout", env="SYSWATCH_SSE_STALL_TIMEOUT", default=d.sse_stall_timeout, type=seconds,
        help="seconds an event stream's client may leave queued output untaken before the stream is closed "
             "and its slot freed")
    opt("--cors-origin", env="SYSWATCH_CORS_ORIGINS", default=[], repeatable=True, metavar="ORIGIN",
        help="a browser origin (scheme://host[:port], exact, no wildcard) whose pages may call the API "
             "(CORS); repeatable (none: same origin only)")
    opt("--allowed-host", env="SYSWATCH_ALLOWED_HOSTS", default=[], repeatable=True, metavar="NAME",
        help="a Host name the API answers to besides localhost/127.0.0.1/[::1]; repeatable; turns the "
             "Host check on for any --host (none: the check is on when --host is a loopback address, "
             "with loopback names only)")
    opt("--sse-heartbeat", env="SYSWATCH_SSE_HEARTBEAT", default=d.sse_heartbeat, type=seconds,
        help="seconds between heartbeat comments on an idle event stream")
    opt("--threads", env="SYSWATCH_THREADS", default=d.threads, type=positive,
        help="waitress worker threads; at least --max-streams + 4")
    opt("--max-connections", env="SYSWATCH_MAX_CONNECTIONS", default=d.max_connections, type=positive,
        help="open connections waitress accepts; more wait in the listen backlog")
    opt("--channel-timeout", env="SYSWATCH_CHANNEL_TIMEOUT", default=d.channel_timeout, type=positive,
        help="seconds before an idle connection is closed")
    opt("--hosts-per-collector", env="SYSWATCH_HOSTS_PER_COLLECTOR", default=d.hosts_per_collector, type=positive,
        help="host names one collector endpoint may speak for (a collector sends one; a relay of several "
             "collectors needs more); a host name belongs to the endpoint that sent it first")
    opt("--host-expiry", env="SYSWATCH_HOST_EXPIRY", default=d.host_expiry, type=seconds,
        help="seconds without a message after which a host is forgotten: its data, its name and its slot")
    opt("--history-db", env="SYSWATCH_HISTORY_DB", default=None, metavar="FILE",
        help="SQLite file of the history GET /history answers from (default: beside --db, e.g. "
             "./syswatch-history.sqlite3 for ./syswatch.sqlite3)")
    opt("--history-max-mb", env="SYSWATCH_HISTORY_MAX_MB", default=d.history_max_mb, type=history_mb, metavar="MIB",
        help="size limit of the history store (file, WAL and index) in MiB; when it is reached the oldest "
             "fine intervals go first (docs/HISTORY.md); 0 turns history off")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    args = p.parse_args(argv)
    from syswatch.api import web
    try:
        cors_origins = web.parse_origins(args.cors_origin)
    except web.BadOrigin as exc:
        p.error(f"--cors-origin / SYSWATCH_CORS_ORIGINS: {exc}")
    nats = None
    collectors = tuple(args.collector)
    if args.nats:
        try:
            nats = jetstream.options(args, name="syswatch-api")
        except jetstream.SettingsError as exc:
            p.error(str(exc))
        # --nats alone reads NATS only: the default ZeroMQ endpoint is for the one-host set-up
        named = os.environ.get("SYSWATCH_COLLECTOR") or any(
            a == "--collector" or a.startswith("--collector=") for a in (argv if argv is not None else sys.argv[1:]))
        if not named:
            collectors = ()
    if args.threads < args.max_streams + 4:
        p.error(f"--threads {args.threads} must be at least --max-streams {args.max_streams} + 4, "
                f"so that open event streams never take every worker thread")
    return ApiConfig(
        host=args.host, port=args.port, collectors=collectors, db=args.db, token=read_token(args.token_file),
        read_token=read_token(args.read_token_file, "--read-token-file", "SYSWATCH_READ_TOKEN"),
        max_body_bytes=args.max_body_bytes, max_items=args.max_items, max_ips=args.max_ips,
        recent_events=args.recent_events, max_streams=args.max_streams,
        max_streams_per_address=args.max_streams_per_address, stream_queue=args.stream_queue,
        sse_stall_timeout=args.sse_stall_timeout, hosts_per_collector=args.hosts_per_collector,
        host_expiry=args.host_expiry,
        cors_origins=tuple(cors_origins),
        allowed_hosts=tuple(h.strip().lower() for h in args.allowed_host if h.strip()),
        sse_heartbeat=args.sse_heartbeat, threads=args.threads, max_connections=args.max_connections,
        channel_timeout=args.channel_timeout, nats=nats, nats_stream=args.nats_stream,
        nats_consumer=args.nats_consumer, history_db=args.history_db or None, history_max_mb=args.history_max_mb)


def token_error(message: str) -> NoReturn:
    """A token set up wrong is a usage error, like a bad flag or variable: exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_token(token_file: str | None, flag: str = "--token-file", env: str = "SYSWATCH_TOKEN") -> str | None:
    """A bearer token from its file flag, else its environment variable; None when neither is set
    (the POST token: --token-file / SYSWATCH_TOKEN; the read token: --read-token-file /
    SYSWATCH_READ_TOKEN)."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            token_error(f"cannot read {flag} {token_file}: {exc}")
        source = f"{flag} {token_file}"
        if not token:
            token_error(f"{source} is empty; put the token in it, or drop the flag")
    else:
        token = os.environ.get(env, "").strip()
        source = env
        if not token:
            return None
    allowed = set(string.ascii_letters + string.digits + "-._~+/=")
    if not set(token) <= allowed:
        token_error(f"the token of {source} holds characters a bearer token cannot "
                    f"(allowed: letters, digits and -._~+/=); e.g. use: openssl rand -hex 32")
    return token


def host_problem(host: str) -> str:
    """Why ``host`` cannot be listened on, as getaddrinfo tells it."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return f"{host!r} is neither an IP address nor a host name this machine resolves ({reason})"
    return f"{host!r} is not a usable listen address"


def main(argv=None) -> int:
    config = parse_args(argv)

    import waitress
    import zmq

    from syswatch.api.history_store import StoreUnusable
    from syswatch.api.httplog import json_server_errors, stdout_line
    from syswatch.api.iplist import DatabaseUnusable
    from syswatch.api.memory import return_large_blocks

    return_large_blocks()                       # a large message's memory is returned once it is handled

    for endpoint in config.collectors:
        probe: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        try:
            probe.connect(endpoint)  # fail fast on an unusable endpoint (e.g. an unknown host), before serving
        except zmq.ZMQError as exc:
            print(f"error: --collector {endpoint!r} is not a usable ZeroMQ endpoint ({exc}); "
                  f"e.g. tcp://127.0.0.1:5556", file=sys.stderr)
            return 2
        finally:
            probe.close(0)
    try:
        curve_client = curve.client_from_env()  # SYSWATCH_CURVE_SERVER_KEY / SYSWATCH_CURVE_CLIENT_KEY
        app = make_app(config, curve_client)
    except (curve.CurveError, DatabaseUnusable, StoreUnusable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        server = waitress.create_server(
            app.wsgi, host=config.host, port=config.port, threads=config.threads, ident="syswatch",
            connection_limit=config.max_connections, channel_timeout=config.channel_timeout,
            cleanup_interval=max(1, min(10, config.channel_timeout // 2)),  # how often idle ones are closed
            # Bodies over --max-body-bytes get a JSON 413 from the app; waitress itself refuses
            # (plain-text 413) only what is far larger, before buffering it.
            max_request_body_size=4 * config.max_body_bytes + 65536,
            # A stream client that stops reading blocks its worker at 1 MiB of unsent output, so its
            # bounded event queue overflows (counted) instead of the API's memory growing.
            outbuf_high_watermark=1 << 20,
            asyncore_use_poll=True,  # select() cannot watch more than 1024 sockets
            # Keep reading a connection while its request runs, so an event stream whose client
            # left is noticed at once (waitress.client_disconnected), not when a heartbeat fails.
            channel_request_lookahead=1,
            clear_untrusted_proxy_headers=True)
    except ValueError:  # waitress: "Invalid host/port specified." when the host does not resolve
        print(f"error: cannot listen on {config.host}:{config.port}: {host_problem(config.host)}; fix --host / "
              f"SYSWATCH_HOST (an address of this machine or a host name, e.g. 127.0.0.1 or 0.0.0.0)",
              file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            print(f"error: cannot listen on {config.host}:{config.port}: {exc.strerror} (no interface of this "
                  f"machine has that address); fix --host / SYSWATCH_HOST", file=sys.stderr)
            return 2
        print(f"error: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; "
              f"pick another --port / SYSWATCH_PORT or stop what uses it", file=sys.stderr)
        return 2
    json_server_errors(server)  # waitress's own 400/413/431/501/500 answers as {"error": ...}

    # waitress warns on every request that waits for a free thread; /metrics and the access log's
    # durations tell that story without a line per request.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    app.subscriber.start()
    if app.nats is not None:
        app.nats.start()
    if app.history is not None:
        app.history.start()

    def stop(*_):
        app.hub.end_all()  # open event streams end now, instead of holding waitress's shutdown for 5 s
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    # Ctrl-C too: waitress catches KeyboardInterrupt itself and waits up to 5 s for busy worker
    # threads before our code runs; ending the streams first lets them finish at once.
    signal.signal(signal.SIGINT, stop)
    stdout_line(f"API Server starting on {config.host}:{server.effective_port}")
    iplist = app.iplist
    sources = [f"collector: {', '.join(config.collectors)}{' (CurveZMQ)' if curve_client else ''}"] \
        if config.collectors else []
    if app.nats is not None:
        sources.append(f"NATS: {app.nats.source}")
    stdout_line(f"IP list: {os.path.abspath(config.db)} ({iplist.count()} addresses); "
                f"{'; '.join(sources)}; POST token: {'required' if config.token else 'not required'}; "
                f"read token: {'required' if config.read_token else 'not required'}")
    if iplist.respelled:  # a list written by another Python version (iplist.IPList._respell)
        stdout_line(f"IP list: respelled {iplist.respelled} stored IPv4-mapped IPv6 address(es) as ::ffff:a.b.c.d "
                    f"and dropped {iplist.merged} duplicate(s) of an address added earlier")
    # "History: " is the last start-up line, always printed (harness/api.py waits for it)
    if app.history is not None:
        store = app.history.store
        stdout_line(f"History: {os.path.abspath(store.path)} ({store.disk_bytes() / 2**20:.1f} MiB of "
                    f"{config.history_max_mb} MiB; GET /history)")
    else:
        stdout_line("History: off (--history-max-mb 0)")
    try:
        server.run()
    except KeyboardInterrupt:
        app.hub.end_all()
    except SystemExit:
        pass
    finally:
        app.subscriber.stop()
        if app.nats is not None:
            app.nats.stop()
        app.close()             # the history recorder writes what it holds
    return 0


if __name__ == "__main__":
    sys.exit(main())
