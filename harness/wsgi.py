"""Call a WSGI app in process the way waitress calls it: no server, no socket, no thread.

The request is written as HTTP/1.1 bytes and parsed by waitress's own request parser, and the
environ is built from it as waitress's WSGITask builds it (percent-decoded PATH_INFO, the raw
REQUEST_URI, HTTP_* headers, CONTENT_TYPE/CONTENT_LENGTH, a body stream), so an in-process answer
is the one the served app gives. What only a server does (connection limits, its own 400/413/431
answers, timeouts, client disconnects) needs the process: harness.api.ApiProcess.

    client = Client(app)                         # app: any WSGI callable, e.g. make_app(...).wsgi
    r = client.get("/stats")                     # r.status_code, r.headers["Content-Type"], r.json()
    r = client.post("/add_ips", json={"add_ips": [1]})
"""
from __future__ import annotations

import json as jsonlib
import sys
from typing import Any, Callable, Iterable, Iterator

from waitress.adjustments import Adjustments
from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.parser import HTTPRequestParser

_NO_JSON = object()


class Headers:
    """Response headers, looked up case-insensitively (as requests' ``Response.headers``)."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = list(pairs)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = [v for k, v in self.pairs if k.lower() == name.lower()]
        return ", ".join(values) if values else default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:
        return f"Headers({self.pairs!r})"


class Response:
    def __init__(self, status: str, headers: list[tuple[str, str]], content: bytes):
        self.status_code = int(status.split(" ", 1)[0])
        self.reason = status.split(" ", 1)[1] if " " in status else ""
        self.headers = Headers(headers)
        self.content = content

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class Client:
    """Requests to ``app`` as if sent to a waitress server on ``host``:``port`` by ``remote_addr``."""

    def __init__(self, app: Callable, host: str = "127.0.0.1", port: int = 8080, remote_addr: str = "127.0.0.1",
                 **adjustments: Any):
        self.app = app
        self.host, self.port, self.remote_addr = host, port, remote_addr
        self.adj = Adjustments(host=host, port=port, **adjustments)

    def environ(self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> dict:
        """The WSGI environ waitress would hand the app for this request."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        given = {k.lower() for k in (headers or {})}
        lines = [line for line in lines if not (line.startswith("Host:") and "host" in given)]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if "content-length" not in given and "transfer-encoding" not in given \
                and (body or method in ("POST", "PUT", "PATCH")):     # as requests sends them
            lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        parser = HTTPRequestParser(self.adj)
        while raw and not parser.completed:
            raw = raw[parser.received(raw):]
        if parser.error is not None or not parser.completed:
            raise ValueError(f"waitress would refuse this request itself ({parser.error!r}): use ApiProcess")
        path = parser.path
        if path.startswith("/"):
            path = "/" + path.lstrip("/")
        environ = {
            "REMOTE_ADDR": self.remote_addr, "REMOTE_HOST": self.remote_addr, "REMOTE_PORT": "40000",
            "REQUEST_METHOD": parser.command.upper(), "SERVER_PORT": str(self.port), "SERVER_NAME": self.host,
            "SERVER_SOFTWARE": "syswatch", "SERVER_PROTOCOL": f"HTTP/{parser.version}", "SCRIPT_NAME": "",
            "PATH_INFO": path, "REQUEST_URI": parser.request_uri, "QUERY_STRING": parser.query,
            "wsgi.url_scheme": parser.url_scheme, "wsgi.version": (1, 0), "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "wsgi.input": parser.get_body_stream(), "wsgi.file_wrapper": ReadOnlyFileBasedBuffer,
            "wsgi.input_terminated": True, "waitress.client_disconnected": lambda: False,
        }
        for key, value in dict(parser.headers).items():
            name = key if key in ("CONTENT_LENGTH", "CONTENT_TYPE") else "HTTP_" + key
            environ.setdefault(name, value)
        return environ

    def stream(self, method: str, target: str, body: bytes = b"",
               headers: dict[str, str] | None = None) -> tuple[str, Headers, Iterator[bytes], Callable[[], None]]:
        """(status, headers, body chunks, close) of a response that may never end (an event stream)."""
        seen: dict = {}

        def start_response(status, response_headers, exc_info=None):
            seen["status"], seen["headers"] = status, response_headers
        result: Iterable[bytes] = self.app(self.environ(method, target, body, headers), start_response)
        chunks = iter(result)
        first = next(chunks, b"")          # the app calls start_response by its first chunk at the latest

        def body_chunks() -> Iterator[bytes]:
            if first:
                yield first
            yield from chunks

        def close() -> None:
            if hasattr(result, "close"):
                result.close()            # the server does this; AccessLog logs and counts the request then
        return seen["status"], Headers(seen["headers"]), body_chunks(), close

    def request(self, method: str, target: str, data: bytes | str = b"", headers: dict[str, str] | None = None,
                json: Any = _NO_JSON) -> Response:
        headers = dict(headers or {})
        if json is not _NO_JSON and json is not None:      # as requests: json=None sends no body
            data = jsonlib.dumps(json)
            headers.setdefault("Content-Type", "application/json")
        body = data.encode() if isinstance(data, str) else data
        status, response_headers, chunks, close = self.stream(method, target, body, headers)
        try:
            content = b"".join(chunks)
        finally:
            close()
        return Response(status, response_headers.pairs, content)

    def get(self, target: str, **kw: Any) -> Response:
        return self.request("GET", target, **kw)

    def post(self, target: str, **kw: Any) -> Response:
        return self.request("POST", target, **kw)
