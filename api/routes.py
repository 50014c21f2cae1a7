"""Every HTTP route of the API, declared in one table (ROUTES), and the Bottle app built from it.

Handlers raise ``BadRequest`` (or a domain error) and ``_json_errors`` turns it into
``{"error": "..."}`` with its status. Bottle's own errors (404, 405 with ``Allow``, 500) are
answered as JSON too, never as Bottle's HTML pages.
"""
from __future__ import annotations

import functools
import hmac
import json
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qs

import bottle

from syswatch.api import history_query, metrics, openapi, validation
from syswatch.api.aggregates import StreamStats
from syswatch.api.history_recorder import Recorder
from syswatch.api.httplog import RequestStats
from syswatch.api.hub import StreamHub, TooManyStreams
from syswatch.api.iplist import DiskFull, IPList, ListFull
from syswatch.api.peer import Peer
from syswatch.api.sse import EventStream
from syswatch.api.validation import BadRequest
from syswatch.api.web import StaticFiles


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_items: int
    max_events_limit: int
    default_events_limit: int
    sse_heartbeat_s: float
    sse_stall_s: float = 30.0


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: str        # name of the Api method
    usage: str          # shown by GET /apis
    read: bool = False  # what the stream shows: needs the read token when one is set

ROUTES = (
    Route("GET", "/", "dashboard", "GET: the live dashboard (HTML, same origin; open it in a browser)"),
    Route("GET", "/static/<name:path>", "static", "GET: the dashboard's scripts, styles and vendored uPlot"),
    Route("GET", "/apis", "apis", "GET: this list of endpoints and how to use them"),
    Route("POST", "/add_ips", "add_ips",
          'POST {"add_ips": [1, 2, 3]}: add IPs (integers 0..4294967295 or IPv4/IPv6 strings); '
          "all or nothing, an address already present is not added again"),
    Route("POST", "/print_all_ips", "print_all_ips",
          'POST {"print_all_ips": true}: the whole list, in insertion order'),
    Route("POST", "/clear_ip_list", "clear_ip_list", 'POST {"clear_ip_list": true}: empty the list'),
    Route("GET", "/stats", "stats",
          "GET ?host=: totals per syscall with latency percentiles and errors by errno, top processes, "
          "containers and files by calls and bytes, events/s, each collector's status and whether it is "
          "connected", read=True),
    Route("GET", "/events", "events",
          "GET ?limit=&pid=&tid=&uid=&comm=&syscall=&container=&host=&path=&file_type=&failed=1&min_latency=: "
          "the most recent events (bounded buffer), filtered (path: a prefix; min_latency: 500us, 20ms, 1s)",
          read=True),
    Route("GET", "/events/stream", "events_stream",
          "GET with the filters of /events (no limit): live Server-Sent Events, one event per data: line; a "
          "client that takes no data for the stall timeout is disconnected", read=True),
    Route("GET", "/history", "history",
          "GET ?from=&to=&group=process|container|syscall|file|host&host=&container=&step=&order=&limit=&series="
          "&format=json|csv: what was recorded: totals per group over the range, and per step; from/to as "
          "RFC 3339, relative (-15m) or unix seconds", read=True),
    Route("GET", "/metrics", "metrics", "GET: Prometheus text exposition", read=True),
    Route("GET", "/healthz", "healthz", "GET: 200 while the API is up; says whether the collector is connected"),
    Route("GET", "/openapi.json", "openapi", "GET: the OpenAPI 3 description of every endpoint"),
)

JSON = "application/json"


def _error(status: int, message: str, **headers) -> str:
    bottle.response.status = status
    bottle.response.content_type = JSON
    for name, value in headers.items():
        bottle.response.set_header(name.replace("_", "-"), value)
    return json.dumps({"error": message})


def _ok(text: str | bytes, content_type: str = JSON) -> str | bytes:
    bottle.response.content_type = content_type
    return text


def _json_errors(handler: Callable) -> Callable:
    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except BadRequest as exc:
            if exc.status == 401:  # the challenge header RFC 6750 asks for
                return _error(401, exc.message, WWW_Authenticate='Bearer realm="syswatch"')
            return _error(exc.status, exc.message)
        except ListFull as exc:
            return _error(409, str(exc))
        except DiskFull as exc:  # 507 Insufficient Storage; the transaction was rolled back
            return _error(507, str(exc))
        except TooManyStreams as exc:       # 503 every slot taken, 429 the address's share taken
            return _error(exc.status, str(exc), Retry_After="5")
    return wrapped


class Api:
    """The handlers; each one small, over the IP list and the stream's stats model."""

    def __init__(self, iplist: IPList, stats: StreamStats, hub: StreamHub, requests: RequestStats,
                 limits: Limits, token: str | None, static: StaticFiles | None = None, read_token: str | None = None,
                 history: Recorder | None = None):
        self.iplist, self.stream, self.hub, self.requests = iplist, stats, hub, requests
        self.recorder = history
        self.files = static or StaticFiles()
        self.limits = limits
        self._token = token.encode() if token else None
        # the read endpoints take the read token, or the POST token (who may write may read)
        self._read_tokens = [t.encode() for t in (read_token, token) if t] if read_token else []
        self._openapi = json.dumps(openapi.document(limits.max_items, limits.max_events_limit,
                                                    limits.default_events_limit), indent=1)
        self.registry = metrics.registry(stats, requests, iplist, hub, history)  # this API's own, read at each scrape

    # --- request helpers ---------------------------------------------------------------------
    def _check_token(self) -> None:
        if self._token is None:
            return
        given = bottle.request.environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("latin-1"), self._token)
        if not ok:
            what = "missing" if not given else "wrong or malformed"
            raise BadRequest(f"{what} bearer token: this API requires 'Authorization: Bearer <token>' "
                             f"on POST requests (the token of SYSWATCH_TOKEN / --token-file)", 401)

    def check_read_token(self) -> None:
        """For the read endpoints (Route.read), when a read token is set."""
        if not self._read_tokens:
            return
        given = bottle.request.environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = given.partition(" ")
        presented = value.strip().encode("latin-1", "replace")
        # every token compared, in constant time each: which one matched does not show in the timing
        ok = scheme.lower() == "bearer" and sum(hmac.compare_digest(presented, t) for t in self._read_tokens) > 0
        if not ok:
            what = "missing" if not given else "wrong or malformed"
            raise BadRequest(f"{what} bearer token: this API requires 'Authorization: Bearer <token>' to read "
                             f"the stream (the token of SYSWATCH_READ_TOKEN / --read-token-file)", 401)

    def _body(self) -> dict:
        """The POST body as a JSON object, after the token, Content-Type and size checks."""
        self._check_token()
        env = bottle.request.environ
        validation.check_content_type(env.get("CONTENT_TYPE"))
        limit = self.limits.max_body_bytes
        try:
            length = int(env.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise BadRequest("the Content-Length header is not a number") from None
        if length > limit:
            raise BadRequest(f"request body of {length} bytes is larger than {limit} bytes "
                             f"(server option --max-body-bytes)", 413)
        raw = env["wsgi.input"].read(length) if length > 0 else b""
        return validation.parse_json_object(raw)

    def _query(self) -> dict:
        try:
            return parse_qs(bottle.request.environ.get("QUERY_STRING", ""), keep_blank_values=True,
                            strict_parsing=False, errors="strict", max_num_fields=16)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"query string is not valid: {exc}") from None

    # --- the dashboard ------------------------------------------------------------------------------
    def _asset(self, asset, cache_control: str):
        r = bottle.response
        r.set_header("Cache-Control", cache_control)
        r.set_header("ETag", asset.etag)
        if StaticFiles.not_modified(asset, bottle.request.environ.get("HTTP_IF_NONE_MATCH")):
            r.status = 304
            return b""
        r.content_type = asset.content_type
        return asset.body

    def dashboard(self):
        return self._asset(self.files.index, "no-cache")

    def static(self, name: str):
        asset = self.files.get(name)
        if asset is None:
            raise BadRequest(f"no such file: /static/{validation.printable(name)}", 404)
        version = bottle.request.query.get("v")
        return self._asset(asset, StaticFiles.cache_control(asset, version))

    # --- seed-compatible endpoints -------------------------------------------------------------
    def apis(self):
        return _ok(json.dumps({"available_apis": [r.path for r in ROUTES],
                               "usage": {r.path: r.usage for r in ROUTES}}))

    def add_ips(self):
        entries = validation.entries(self._body(), self.limits.max_items)
        result = self.iplist.add(entries)
        return _ok(json.dumps({"message": "IPs added successfully", "added_ips": result.added,
                               "ignored_ips": result.ignored, "total_ips": result.total}))

    def print_all_ips(self):
        validation.require_true(self._body(), "print_all_ips")
        ips, total = self.iplist.all_json()
        return _ok('{"message": "All IPs retrieved successfully", "ips": %s, "total_ips": %d}' % (ips, total))

    def clear_ip_list(self):
        validation.require_true(self._body(), "clear_ip_list")
        self.iplist.clear()
        return _ok(json.dumps({"message": "IP list cleared successfully", "total_ips": 0}))

    # --- the stream ------------------------------------------------------------------------------
    def stats(self):
        host = validation.host_param(self._single(self._query(), ("host",)))
        s = self.stream.snapshot(host)
        s["api"].update(event_streams=self.hub.count(), event_streams_max=self.hub.max_clients,
                        event_streams_per_address=self.hub.per_address)
        first = next((c["status"] for c in s["collectors"] if c["status"]), None)
        # collector_status: the (first) collector's last status, as before fan-in
        history = self.recorder.status() if self.recorder is not None else None
        return _ok(json.dumps({**s, "collector_status": first, "history": history}))

    def _single(self, query: dict, known: tuple) -> dict:
        for name, values in query.items():
            if name not in known:
                raise BadRequest(f"unknown query parameter {validation.printable(name)!r}; known: {', '.join(known)}")
            if len(values) > 1:
                raise BadRequest(f"query parameter {name!r} is given {len(values)} times; give it once")
        return {name: values[0] for name, values in query.items()}

    def events(self):
        flt, limit = validation.event_query(self._query(), ("limit",), self.limits.max_events_limit,
                                            self.limits.default_events_limit)
        assert limit is not None                # event_query gives the default when none is asked for
        events = self.stream.recent_events(flt, limit)
        return _ok(json.dumps({"events": events, "count": len(events)}, separators=(",", ":")))

    def events_stream(self):
        flt, _ = validation.event_query(self._query())
        bottle.response.content_type = "text/event-stream; charset=utf-8"
        bottle.response.set_header("Cache-Control", "no-cache")
        bottle.response.set_header("X-Accel-Buffering", "no")
        if bottle.request.method == "HEAD":
            return ""  # waitress would iterate an endless body it never sends: answer headers only
        env = bottle.request.environ
        peer = Peer(env)
        client = self.hub.open(flt, env.get("HTTP_LAST_EVENT_ID"), peer.address)
        return EventStream(self.hub, client, self.limits.sse_heartbeat_s,
                           f"syswatch event stream (filters: {validation.printable(flt.shown())})",
                           env.get("waitress.client_disconnected"), peer, self.limits.sse_stall_s)

    def history(self):
        if self.recorder is None:
            raise BadRequest("this API keeps no history: it was started with --history-max-mb 0 "
                             "(SYSWATCH_HISTORY_MAX_MB=0)", 404)
        query = history_query.parse(self._query(), time.time())
        answer = history_query.answer(self.recorder.store, query)
        if query.fmt == "csv":
            return _ok(history_query.to_csv(answer), "text/csv; charset=utf-8")
        return _ok(json.dumps(answer, separators=(",", ":")))

    def metrics(self):
        return _ok(metrics.exposition(self.registry), metrics.CONTENT_TYPE)

    def healthz(self):
        return _ok(json.dumps({"status": "ok", "collector_connected": self.stream.connected(),
                               "collectors": self.stream.endpoints}))

    def openapi(self):
        return _ok(self._openapi)


def _reading(api: Api, handler: Callable) -> Callable:
    """``handler`` behind the read token."""
    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        api.check_read_token()
        return handler(*args, **kwargs)
    return wrapped


def build_app(api: Api) -> bottle.Bottle:
    app = bottle.Bottle()  # catchall on: an unexpected error is a JSON 500, never a traceback page
    for r in ROUTES:
        handler = getattr(api, r.handler)
        app.route(r.path, r.method, _json_errors(_reading(api, handler) if r.read else handler))

    def error_page(err: bottle.HTTPError) -> str:
        """Bottle's errors (404, 405, 500...) as JSON; 405 keeps the Allow header Bottle set."""
        status = err.status_code
        bottle.response.content_type = JSON
        if status == 404:
            message = (f"no such endpoint: {validation.printable(bottle.request.path)}; "
                       f"GET /apis lists the endpoints")
        elif status == 405:
            allow = bottle.response.headers.get("Allow", "")
            message = (f"method {validation.printable(bottle.request.method)} is not allowed on "
                       f"{validation.printable(bottle.request.path)}; allowed: {allow}")
        elif status >= 500:
            message = "internal error; the server log has the details"
        else:
            message = validation.printable(str(err.body))
        return json.dumps({"error": message})

    app.default_error_handler = error_page
    return app
