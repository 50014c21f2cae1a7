"""The browser-facing layer of the API: who may call it from a web page, and the dashboard's files.

``WebGuard`` is WSGI middleware around the whole app (inside the access log, so refusals are logged):

- Host check (DNS rebinding): when the API listens on a loopback address only, a request whose
  ``Host`` names anything but a loopback name (``localhost``, ``*.localhost``, ``127.x.x.x``,
  ``[::1]``) or an ``--allowed-host`` is refused with 403. Otherwise a page on ``evil.example``
  whose name is made to resolve to 127.0.0.1 would be same-origin with the API and could read it.
- Origin check (CSRF and cross-origin reads): a request carrying an ``Origin`` that is neither the
  API's own origin (same host and port as ``Host``) nor one of the CORS origins is refused with 403,
  whatever its method. Browsers send ``Origin`` on every cross-origin POST (forms included) and on
  every cross-origin fetch/EventSource, so another site can neither change the IP list nor hold an
  event stream open. A request without ``Origin`` that a browser marks ``Sec-Fetch-Site:
  cross-site``/``same-site`` (``<img>``, ``<script>``, no-cors fetch) is refused too, except a plain
  top-level navigation (a link to the dashboard). curl and scripts send neither header: unaffected.
- CORS, opt-in: ``--cors-origin`` / ``SYSWATCH_CORS_ORIGINS`` list exact origins
  (``scheme://host[:port]``, no wildcard); only those get ``Access-Control-Allow-Origin`` (and an
  answer to their preflight ``OPTIONS``). The bearer token still guards POSTs.
- Headers on every answer: a Content-Security-Policy that allows scripts and styles from the API
  itself only (no inline script, no eval, no other host), ``nosniff``, no framing, no referrer.

``StaticFiles`` serves ``api/static/`` from memory: correct types; each asset URL in ``index.html``
carries ``?v=<content hash>``, and an asset asked for with its current hash is cached for a year
(``immutable``); anything else (the page itself, or an asset without the hash) is ``no-cache``
with an ``ETag``, so a browser revalidates and gets ``304`` when nothing changed.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from pathlib import Path
from typing import Iterable, NamedTuple
from urllib.parse import urlsplit

from syswatch.shared import errnos

STATIC_DIR = Path(__file__).resolve().parent / "static"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
CORS_METHODS = "GET, POST"
CORS_HEADERS = "Authorization, Content-Type, Last-Event-ID"
CORS_MAX_AGE = "600"


class BadOrigin(ValueError):
    pass


def parse_origin(text: str) -> str:
    """``text`` as an exact origin ``scheme://host[:port]`` (lower-cased, default port dropped)."""
    raw = text.strip()
    if raw == "*" or "*" in raw:
        raise BadOrigin(f"CORS origin {raw!r}: wildcards are not allowed; list exact origins "
                        f"such as http://localhost:3000")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise BadOrigin(f"CORS origin {raw!r} is not a valid origin: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password \
            or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadOrigin(f"CORS origin {raw!r} is not an origin: give scheme://host[:port] only, "
                        f"e.g. http://localhost:3000 (no path, no wildcard)")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def parse_origins(values: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        for item in value.split(","):
            if item.strip():
                origin = parse_origin(item)
                if origin not in out:
                    out.append(origin)
    return tuple(out)


def is_loopback_bind(host: str) -> bool:
    """True when listening on ``host`` reaches loopback only (127.0.0.0/8, ::1, localhost)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The name part of a Host header value, lower-cased ("[::1]:8080" -> "[::1]")."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[:h.find("]") + 1] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _hostport(netloc: str, scheme: str) -> str:
    """``netloc`` lower-cased without the scheme's default port."""
    n = netloc.strip().lower()
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return n[:-len(default)] if default and n.endswith(default) else n


class WebGuard:
    """WSGI middleware: Host and Origin checks, opt-in CORS, security headers (see the module text)."""

    def __init__(self, app, bind_host: str, cors_origins: Iterable[str] = (), allowed_hosts: Iterable[str] = ()):
        self.app = app
        self.cors = frozenset(cors_origins)
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.check_host = is_loopback_bind(bind_host) or bool(self.allowed_hosts)

    def host_allowed(self, host_header: str | None) -> bool:
        if not self.check_host or host_header is None:
            return True  # HTTP/1.0 clients may send no Host; browsers always send one
        name = _host_name(host_header)
        if name in self.allowed_hosts or name == "localhost" or name.endswith(".localhost"):
            return True  # browsers resolve *.localhost to loopback themselves, never through DNS
        try:
            return ipaddress.ip_address(name.strip("[]")).is_loopback
        except ValueError:
            return False

    def __call__(self, environ, start_response):
        host = environ.get("HTTP_HOST")
        method = environ.get("REQUEST_METHOD", "GET")
        if not self.host_allowed(host):
            return self._refuse(start_response, 403, f"Host {_printable(host)!r} is not this server's name: "
                                "this API listens on a loopback address and answers only to localhost, "
                                "127.0.0.1 and [::1] (a DNS rebinding defence); add --allowed-host NAME "
                                "to accept another name")
        origin = environ.get("HTTP_ORIGIN")
        cors_origin = None
        if origin is not None:
            if origin in self.cors:
                cors_origin = origin
            elif not self._same_origin(origin, host, environ):
                return self._refuse(start_response, 403, f"cross-origin request from {_printable(origin)!r} "
                                    "refused: only this API's own pages may call it from a browser; start "
                                    "the API with --cors-origin ORIGIN to allow another origin")
        else:
            site = environ.get("HTTP_SEC_FETCH_SITE")
            navigation = method in ("GET", "HEAD") and environ.get("HTTP_SEC_FETCH_MODE") == "navigate"
            if site in ("cross-site", "same-site") and not navigation:
                return self._refuse(start_response, 403, "request from another site's page refused "
                                    "(Sec-Fetch-Site: " + _printable(site) + ")")
        if cors_origin and method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
            start_response("204 No Content", self._headers([], cors_origin) + [
                ("Access-Control-Allow-Methods", CORS_METHODS),
                ("Access-Control-Allow-Headers", CORS_HEADERS),
                ("Access-Control-Max-Age", CORS_MAX_AGE)])
            return [b""]

        def with_headers(status, headers, exc_info=None):
            return start_response(status, self._headers(headers, cors_origin), exc_info)
        return self.app(environ, with_headers)

    @staticmethod
    def _same_origin(origin: str, host: str | None, environ) -> bool:
        if host is None:
            return False
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file:// pages) included
        scheme = environ.get("wsgi.url_scheme", "http")
        return _hostport(parts.netloc, parts.scheme) == _hostport(host, scheme)

    def _headers(self, headers: list, cors_origin: str | None) -> list:
        have = {name.lower() for name, _ in headers}
        out = list(headers) + [(n, v) for n, v in SECURITY_HEADERS if n.lower() not in have]
        if self.cors:
            out.append(("Vary", "Origin"))
        if cors_origin:
            out.append(("Access-Control-Allow-Origin", cors_origin))
        return out

    def _refuse(self, start_response, status: int, message: str):
        body = json.dumps({"error": message}).encode()
        start_response(f"{status} Forbidden", self._headers(
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], None))
        return [body]


def _printable(text: str | None, limit: int = 100) -> str:
    text = text or ""
    out = "".join(c if " " <= c < "\x7f" else f"\\x{ord(c):02x}" for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


# --- static files ----------------------------------------------------------------------------------
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".ico": "image/x-icon", ".json": "application/json", ".txt": "text/plain; charset=utf-8"}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
ASSET_REF = re.compile(r'((?:src|href)=")static/([A-Za-z0-9._/-]+)(")')


class Asset(NamedTuple):
    body: bytes
    content_type: str
    etag: str           # quoted, as sent
    version: str        # the content hash put in ?v=


def errnos_script() -> bytes:
    """``window.SYSWATCH_ERRNOS = {"9": ["EBADF", "Bad file descriptor"], ...}``: shared/errnos.py for the page."""
    table = {str(n): [name, message] for n, (name, message) in errnos.TABLE.items()}
    return b"// generated by the API from shared/errnos.py\nwindow.SYSWATCH_ERRNOS = " + \
        json.dumps(table, separators=(",", ":")).encode() + b";\n"


class StaticFiles:
    """Every file under ``root`` (read once, at start), and the dashboard page with versioned asset URLs."""

    def __init__(self, root: Path = STATIC_DIR):
        self.files: dict[str, Asset] = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in TYPES and not path.name.startswith("."):
                self.files[path.relative_to(root).as_posix()] = self._asset(path.read_bytes(), TYPES[path.suffix])
        # generated, not a file: the one errno table (shared/errnos.py) for the page's error names
        self.files["errnos.js"] = self._asset(errnos_script(), TYPES[".js"])
        page = self.files.get("index.html")
        if page is None:
            raise FileNotFoundError(f"{root}/index.html is missing: the dashboard cannot be served")

        def versioned(m: re.Match) -> str:
            asset = self.files.get(m.group(2))
            if asset is None:
                raise FileNotFoundError(f"index.html refers to static/{m.group(2)}, which is not in {root}")
            return f"{m.group(1)}static/{m.group(2)}?v={asset.version}{m.group(3)}"
        self.index = self._asset(ASSET_REF.sub(versioned, page.body.decode()).encode(), TYPES[".html"])

    @staticmethod
    def _asset(body: bytes, content_type: str) -> Asset:
        version = hashlib.sha256(body).hexdigest()[:16]
        return Asset(body, content_type, f'"{version}"', version)

    def get(self, name: str) -> Asset | None:
        return self.files.get(name)

    @staticmethod
    def cache_control(asset: Asset, asked_version: str | None) -> str:
        return IMMUTABLE if asked_version == asset.version else REVALIDATE

    @staticmethod
    def not_modified(asset: Asset, if_none_match: str | None) -> bool:
        if not if_none_match:
            return False
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return asset.etag in tags or "*" in tags
