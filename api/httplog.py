"""WSGI middleware around the Bottle app: one access-log line per request, request counts and
durations (RequestStats, for /metrics), and exact paths; and JSON for the errors waitress answers itself.

Line format (stdout):  2026-11-24T19:50:00.123Z 127.0.0.1 POST /add_ips 200 1.4ms
The path is the request target as sent (waitress's REQUEST_URI), so /%63lear_ip_list is logged as
such. For /events/stream the line is written when the stream ends, with its whole duration. Paths are
printed with control and non-ASCII characters escaped, so a request cannot forge log lines; headers
(and so the API token) are never logged.

``ExactPaths`` answers 404 to a path that reaches a route only through decoding or normalising
(``/%63lear_ip_list``, ``//clear_ip_list``, ``/%2Fclear_ip_list``, ``/clear_ip_list%ff``): waitress
percent-decodes PATH_INFO and Bottle strips leading slashes and drops bytes that are not UTF-8, so
without it each of those would act as /clear_ip_list. ``json_server_errors`` makes waitress's own
answers (400 malformed request, 413, 431, 501, 500) JSON objects ``{"error": ...}`` like the app's.
"""
from __future__ import annotations

import bisect
import itertools
import json
import re
import sys
import threading
import time
from typing import Callable

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.task import ErrorTask

from syswatch.api.validation import printable


def _printable(text: str, limit: int = 200) -> str:
    out = "".join(c if " " < c < "\x7f" else f"\\x{ord(c):02x}" for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


def stdout_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# Upper bounds (seconds) of the request-duration histogram's buckets: API answers take about a
# millisecond, so the low end is finer than prometheus_client's defaults; /events/stream requests
# last as long as their stream and fall in the high ones (or +Inf).
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, float("inf"))
UNMATCHED = "unmatched"  # the route label of every request no route took (404s, 405s, refusals)


class RequestStats:
    """Requests answered and their durations, by (route, method, status): the API's request model,
    read by /metrics at scrape time. ``route`` is the route's template (``/static/<name:path>``),
    never the raw path, and one of ``routes`` or UNMATCHED: the label set stays bounded."""

    def __init__(self, routes=()):
        self.routes = frozenset(routes)
        self._lock = threading.Lock()
        self._rows: dict[tuple, list] = {}  # key -> [count per bucket (not cumulative)..., sum of seconds]

    def add(self, route: str, method: str, status: int, seconds: float = 0.0) -> None:
        key = (route if route in self.routes else UNMATCHED, method, status)
        bucket = bisect.bisect_left(DURATION_BUCKETS, seconds)  # le is inclusive: 0.001 falls in le="0.001"
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                row = self._rows[key] = [0] * len(DURATION_BUCKETS) + [0.0]
            row[bucket] += 1
            row[-1] += seconds

    def snapshot(self) -> dict:
        """{(route, method, status): requests}"""
        with self._lock:
            return {key: sum(row[:-1]) for key, row in self._rows.items()}

    def durations(self) -> dict:
        """{(route, method, status): ([(le, cumulative count), ...], sum of seconds)}"""
        with self._lock:
            rows = {key: list(row) for key, row in self._rows.items()}
        return {key: (list(zip(DURATION_BUCKETS, itertools.accumulate(row[:-1]))), row[-1])
                for key, row in rows.items()}


_ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*")  # "http://host" of "http://host/path"


def path_alias(environ: dict) -> str | None:
    """Why the request's path is not spelled exactly as a route would be; None when it is.

    The raw target (REQUEST_URI from waitress, RAW_URI from gunicorn) must equal PATH_INFO: no
    percent-encoding at all in the path (the query string may have it). PATH_INFO must start with
    "/", hold only printable ASCII and no empty, "." or ".." segment.
    """
    path = environ.get("PATH_INFO", "")
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    raw_path = path
    if raw is not None:
        raw_path = _ABSOLUTE_FORM.sub("", raw.split("?", 1)[0].split("#", 1)[0], count=1) or "/"
        if "%" in raw_path:
            return "percent-encoded"
    for spelled in (raw_path, path):
        if not spelled.startswith("/") or not all("!" <= c <= "~" for c in spelled):
            return "not printable ASCII"
        segments = spelled.split("/")[1:]  # "/" -> [""], "/a/" -> ["a", ""]: a trailing slash is the router's
        if any(s in ("", ".", "..") for s in segments[:-1]) or segments[-1] in (".", ".."):
            return "an empty, '.' or '..' segment"
    if raw_path != path:
        return "not as sent"
    return None


class ExactPaths:
    """WSGI middleware: a JSON 404 for a path that is not spelled exactly (``path_alias``)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        why = path_alias(environ)
        if why is None:
            return self.app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        raw_path = (environ.get("REQUEST_URI") or environ.get("RAW_URI") or path).split("?", 1)[0]
        sent = f" (sent as {printable(raw_path)})" if raw_path != path else ""
        body = json.dumps({"error": f"no such endpoint: {printable(path)}{sent}; paths are matched exactly as "
                                    f"spelled ({why}); GET /apis lists the endpoints"}).encode()
        start_response("404 Not Found", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


class AccessLog:
    """Wraps a WSGI app; logs and counts each request when its response body is finished.

    With ``exact_paths`` (the default) the app is wrapped in ``ExactPaths`` first, so the 404s it
    gives path aliases are logged and counted like any other answer.
    """

    KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}

    def __init__(self, app, stats: RequestStats, log: Callable[[str], None] = stdout_line,
                 exact_paths: bool = True):
        self.app, self.stats, self.log = (ExactPaths(app) if exact_paths else app), stats, log

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        seen = {"status": 500}

        def recording_start_response(status, headers, exc_info=None):
            seen["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            self._done(environ, 500, started)
            raise
        return _ClosingIter(body, lambda: self._done(environ, seen["status"], started))

    def _done(self, environ, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        method = environ.get("REQUEST_METHOD", "?")
        path = environ.get("REQUEST_URI") or environ.get("RAW_URI")
        if path is None:
            path = environ.get("PATH_INFO", "")
            if environ.get("QUERY_STRING"):
                path += "?" + environ["QUERY_STRING"]
        route = environ.get("bottle.route")
        rule = getattr(route, "rule", None) or UNMATCHED
        self.stats.add(rule, method if method in self.KNOWN_METHODS else "other", status, seconds)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        self.log(f"{stamp} {environ.get('REMOTE_ADDR', '-')} {_printable(method, 16)} "
                 f"{_printable(path)} {status} {seconds * 1000:.1f}ms")


class _ClosingIter:
    """The app's body, plus a callback once the server closes it (after the last byte or a disconnect)."""

    def __init__(self, body, on_close):
        self._body, self._on_close = body, on_close

    def __iter__(self):
        return iter(self._body)

    def close(self):
        try:
            if hasattr(self._body, "close"):
                self._body.close()
        finally:
            self._on_close()


class JsonErrorTask(ErrorTask):
    """waitress's answer to a request it refuses itself, as ``{"error": "<reason>: <detail>"}``."""

    def execute(self):
        error = self.request.error
        detail = " ".join(str(error.body).split())
        message = printable(f"{error.reason}: {detail}" if detail else error.reason, 300)
        body = json.dumps({"error": message}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        if hasattr(self, "set_close_on_finish"):  # waitress 3
            self.set_close_on_finish()
        else:  # waitress 2 (Debian 12's python3-waitress), as its own ErrorTask does
            self.response_headers.append(("Connection", "close"))
            self.close_on_finish = True
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


def json_server_errors(server) -> None:
    """Make the server from ``waitress.create_server`` answer its own errors with ``JsonErrorTask``.

    One listening socket gives a TcpWSGIServer, several (a host name with an IPv4 and an IPv6
    address) a MultiSocketServer whose map holds one per socket.
    """
    servers = list(server.map.values()) if isinstance(server, MultiSocketServer) else [server]
    for each in servers:
        if isinstance(each, BaseWSGIServer):
            each.channel_class = JsonErrorChannel
