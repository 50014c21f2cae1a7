"""A process's own Prometheus endpoint (``--metrics HOST:PORT``): GET /metrics of a registry, from one
daemon thread that only reads values the owner published (it never touches the owner's sockets).

Used by the collector and the NATS bridge; needs prometheus_client (Debian: python3-prometheus-client),
imported only when the endpoint is asked for.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def check_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (then 127.0.0.1) -> (host, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not (port.isdigit() and 0 <= int(port) <= 65535):
        raise ValueError(f"{text!r}: use HOST:PORT (e.g. 127.0.0.1:9101), the port 0..65535")
    return host, int(port)


def listen_text(text: str) -> str:
    check_listen(text)
    return text


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class MetricsServer:
    """Serves ``registry`` on GET /metrics (and /); started at construction, ``close()`` stops it."""

    def __init__(self, listen: str, registry):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics here")
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):   # a scrape every few seconds is not worth a log line
                pass

        host, port = check_listen(listen)
        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        self.httpd = Server((host, port), Handler)
        self.address = f"{'[' + host + ']' if ':' in host else host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
