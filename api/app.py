"""The API wired up once: ``make_app(config)`` builds every part from an ``ApiConfig``.

    IPList (SQLite)  StreamStats <- StreamSubscriber (thread, not started) -> StreamHub
                                 <- NatsIngest (thread, not started; with --nats)
            \\             |     both also -> Recorder (thread, not started) -> HistoryStore (SQLite)
             \\            |                                                  /
             Api handlers (api/routes.py) -> Bottle app -> WebGuard -> AccessLog  = App.wsgi

``api/server.py`` builds the config from flags and environment, calls ``make_app``, starts the
subscriber and serves ``App.wsgi`` with waitress; the tests call the same ``make_app`` and send
requests to ``App.wsgi`` in process (harness/wsgi.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from syswatch.api.aggregates import StreamStats
from syswatch.api.history_recorder import Recorder
from syswatch.api.history_store import HistoryStore, default_path
from syswatch.api.httplog import AccessLog, RequestStats, stdout_line
from syswatch.api.hub import StreamHub
from syswatch.api.ingest import StreamSubscriber
from syswatch.api.iplist import IPList
from syswatch.api.nats_ingest import NatsIngest
from syswatch.api.routes import ROUTES, Api, Limits, build_app
from syswatch.api.web import StaticFiles, WebGuard
from syswatch.shared import jetstream, natsclient, protocol


@dataclass(frozen=True)
class ApiConfig:
    """Everything the API is told, from flags and environment (api/server.py ``parse_args``).
    The defaults here are the command line's defaults."""
    host: str = "127.0.0.1"
    port: int = 8080
    collectors: tuple[str, ...] = (protocol.DEFAULT_ENDPOINT,)
    db: str = "./syswatch.sqlite3"
    token: str | None = None               # the bearer token POSTs must send; None: open
    read_token: str | None = None          # the bearer token the read endpoints need (or token); None: open
    max_body_bytes: int = 1 << 20
    max_items: int = 10_000
    max_ips: int = 100_000
    recent_events: int = 10_000
    max_streams: int = 8
    max_streams_per_address: int = 4       # one client address's share of max_streams
    stream_queue: int = 20_000
    sse_stall_timeout: float = 30.0        # a stream whose client takes nothing for this long is closed
    cors_origins: tuple[str, ...] = ()     # parsed by web.parse_origins
    allowed_hosts: tuple[str, ...] = ()    # lower case
    sse_heartbeat: float = 10.0
    threads: int = 16
    max_connections: int = 1000
    channel_timeout: int = 60
    hosts_per_collector: int = 1           # host names one collector endpoint may speak for
    host_expiry: float = 600.0             # a host silent this long is forgotten (its name and slot freed)
    nats: natsclient.Options | None = None   # --nats: also (or only) read the fleet's JetStream stream
    nats_stream: str = jetstream.DEFAULT_STREAM
    nats_consumer: str = jetstream.DEFAULT_CONSUMER
    history_db: str | None = None          # the history store; None: beside ``db`` (history_store.default_path)
    history_max_mb: int = 1024             # its size limit in MiB; 0: no history

    @property
    def history_path(self) -> str:
        return self.history_db or default_path(self.db)


@dataclass
class App:
    """One API: its WSGI callable and the parts behind it (the tests read and feed them directly)."""
    config: ApiConfig
    wsgi: AccessLog
    api: Api
    iplist: IPList
    stats: StreamStats
    hub: StreamHub
    requests: RequestStats
    subscriber: StreamSubscriber            # started by the caller (server.main), stopped by it too
    history: Recorder | None = None         # likewise (None: history is off)
    nats: NatsIngest | None = None          # likewise, when the config names a NATS server

    def close(self) -> None:
        """Stop the history recorder (writing what it holds) and release its store."""
        if self.history is not None:
            self.history.stop()
            self.history.store.close()


def make_app(config: ApiConfig, curve_client=None, log: Callable[[str], None] = stdout_line,
             clock: Callable[[], float] = time.time) -> App:
    """Every part of one API. Raises iplist.DatabaseUnusable (the database cannot be used),
    history_store.StoreUnusable (the history file cannot be used) and OSError (the dashboard's files cannot
    be read). ``curve_client``: shared.curve.ClientKeys, or None; ``log`` gets each access-log line;
    ``clock``: the history recorder's wall clock (the bench walks through a simulated day with its own)."""
    iplist = IPList(config.db, config.max_ips)
    history = None
    if config.history_max_mb:
        history = Recorder(HistoryStore(config.history_path, config.history_max_mb << 20), clock=clock)
    stats = StreamStats(list(config.collectors), config.recent_events, config.hosts_per_collector,
                        config.host_expiry)
    hub = StreamHub(stats, config.max_streams, config.stream_queue,
                    per_address=min(config.max_streams_per_address, config.max_streams))
    subscriber = StreamSubscriber(list(config.collectors), stats, hub, curve_client=curve_client, history=history)
    requests = RequestStats(r.path for r in ROUTES)  # route labels: the table's templates, nothing else
    limits = Limits(max_body_bytes=config.max_body_bytes, max_items=config.max_items,
                    max_events_limit=config.recent_events, default_events_limit=min(100, config.recent_events),
                    sse_heartbeat_s=config.sse_heartbeat, sse_stall_s=config.sse_stall_timeout)
    api = Api(iplist, stats, hub, requests, limits, config.token, StaticFiles(), read_token=config.read_token,
              history=history)
    wsgi = AccessLog(WebGuard(build_app(api), config.host, config.cors_origins, config.allowed_hosts),
                     requests, log=log)
    nats = (NatsIngest(config.nats, config.nats_stream, config.nats_consumer, stats, hub, history)
            if config.nats is not None else None)
    return App(config, wsgi, api, iplist, stats, hub, requests, subscriber, history, nats)
