"""WSGI middleware around the Bottle app: one access-log line per request, and request counts.

Line format (stdout):  2026-11-24T19:50:00.123Z 127.0.0.1 POST /add_ips 200 1.4ms
For /events/stream the line is written when the stream ends, with its whole duration. Paths are
printed with control and non-ASCII characters escaped, so a request cannot forge log lines; headers
(and so the API token) are never logged.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Callable


def _printable(text: str, limit: int = 200) -> str:
    out = "".join(c if " " < c < "\x7f" else f"\\x{ord(c):02x}" for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


def stdout_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class RequestStats:
    """Requests answered, by (route, method, status); ``route`` is the route's rule, never the raw path."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: collections.Counter = collections.Counter()

    def add(self, route: str, method: str, status: int) -> None:
        with self._lock:
            self._counts[(route, method, status)] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._counts)


class AccessLog:
    """Wraps a WSGI app; logs and counts each request when its response body is finished."""

    KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}

    def __init__(self, app, stats: RequestStats, log: Callable[[str], None] = stdout_line):
        self.app, self.stats, self.log = app, stats, log

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
        ms = (time.perf_counter() - started) * 1000
        method = environ.get("REQUEST_METHOD", "?")
        path = environ.get("PATH_INFO", "")
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        route = environ.get("bottle.route")
        rule = getattr(route, "rule", None) or "unmatched"
        self.stats.add(rule, method if method in self.KNOWN_METHODS else "other", status)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        self.log(f"{stamp} {environ.get('REMOTE_ADDR', '-')} {_printable(method, 16)} "
                 f"{_printable(path)} {status} {ms:.1f}ms")


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
