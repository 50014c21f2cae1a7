"""The soak's hostile side, each a thread at a steady rate: a publisher the API subscribes to sending
the malformed and oversized messages the tests know (harness.hostile.MALFORMED), peers of the
collector sending junk subscriptions, oversized ones and announce floods, and HTTP clients: normal
traffic, bad bodies, slow clients, SSE streams opened and closed. Every answer that should be JSON
is parsed strictly (no NaN, no Infinity) and every SSE data line too; what is not is counted."""
from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time

import zmq

from harness.hostile import MALFORMED
from syswatch.shared.protocol import announce_topic


def strict_json(data: bytes):
    """json.loads refusing NaN/Infinity (ValueError), as a client of strict JSON would."""
    def bad(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(data, parse_constant=bad)


class Worker(threading.Thread):
    """A daemon thread calling ``step()`` every ``period`` s until ``stop()``; its errors go to ``errors``
    (bounded) unless ``quiet()`` says the target is down on purpose (a restart)."""

    def __init__(self, name: str, period: float, quiet=lambda: False):
        super().__init__(daemon=True, name=name)
        self.period, self.quiet = period, quiet
        self.halt = threading.Event()
        self.done = 0
        self.errors: list[str] = []
        self.error_count = 0

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.step()
                self.done += 1
            except Exception as exc:                       # noqa: BLE001 - counted, the soak goes on
                if not self.quiet():
                    self.error(f"{type(exc).__name__}: {exc}")
            self.halt.wait(self.period)

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < 20:
            self.errors.append(text[:300])

    def step(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.halt.set()
        self.join(15)


class HostilePublisher(Worker):
    """Binds ``endpoint`` (one of the API's collectors) and sends MALFORMED, one message a period."""

    def __init__(self, endpoint: str, period: float):
        super().__init__("soak-hostile-publisher", period)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100)
        self.sock.bind(endpoint)
        self.sent = 0

    def step(self) -> None:
        try:
            self.sock.send_multipart(MALFORMED[self.sent % len(MALFORMED)], zmq.NOBLOCK)
        except zmq.Again:
            pass
        self.sent += 1

    def stop(self) -> None:
        super().stop()
        self.sock.close(0)
        self.ctx.term()


class HostilePeers(Worker):
    """Connects to the collector as a new peer each period: junk and oversized subscriptions (the
    latter makes the collector close that connection), announces of PIDs that are not its own, and
    every 30 periods a flood of 1,000 announces; each peer is closed after a few periods."""

    def __init__(self, endpoint: str, period: float, quiet=lambda: False):
        super().__init__("soak-hostile-peers", period, quiet)
        self.endpoint = endpoint
        self.ctx = zmq.Context()
        self.live: list[tuple[float, zmq.Socket]] = []
        self.rounds = 0

    def step(self) -> None:
        now = time.monotonic()
        for born, sock in [p for p in self.live if now - p[0] > 5 * self.period]:
            sock.close(0)
            self.live.remove((born, sock))
        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        for topic in (b"x" * 200, b"\xff\xfe", b"syscall.read.more", b"~subscriber:1:1", b"~subscriber:abc"):
            s.setsockopt(zmq.SUBSCRIBE, topic)
        for _ in range(20):
            s.setsockopt(zmq.SUBSCRIBE, announce_topic(random.randint(2, 4_000_000),
                                                       random.choice((4026531836, random.randint(1, 2**32)))).encode())
        if self.rounds % 30 == 0:
            for i in range(1000):
                s.setsockopt(zmq.SUBSCRIBE, announce_topic(100_000 + i, 4026532000 + i).encode())
        if self.rounds % 3 == 0:
            s.setsockopt(zmq.SUBSCRIBE, b"s" * 5000)        # over XPUB_MAXMSGSIZE: the connection is closed
        self.live.append((now, s))
        self.rounds += 1

    def stop(self) -> None:
        super().stop()
        for _, s in self.live:
            s.close(0)
        self.ctx.term()


class HttpWorker(Worker):
    """One HTTP/1.1 exchange per call of ``exchange``; answers checked as strict JSON."""

    def __init__(self, name: str, port: int, period: float, quiet):
        super().__init__(name, period, quiet)
        self.port = port
        self.requests = 0
        self.invalid_json = 0

    def call(self, method: str, path: str, body: bytes | None = None, timeout: float = 15,
             headers: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Host": "localhost", **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.requests += 1
        if path != "/metrics" and path != "/":
            try:
                strict_json(data)
            except ValueError:
                self.invalid_json += 1
                self.error(f"{method} {path}: {resp.status} answered with invalid JSON: {data[:120]!r}")
        return resp.status, data


class Traffic(HttpWorker):
    """What a dashboard and a script do: stats, events, metrics, the IP list."""

    def __init__(self, port: int, period: float, quiet):
        super().__init__("soak-http-traffic", port, period, quiet)
        self.n = 0

    def step(self) -> None:
        self.n += 1
        k = self.n % 6
        if k == 0:
            body = json.dumps({"add_ips": [self.n % 4_000_000, f"10.{self.n >> 16 & 255}.{self.n >> 8 & 255}.1"]})
            status, _ = self.call("POST", "/add_ips", body.encode(), headers={"Content-Type": "application/json"})
        elif k == 1:
            status, _ = self.call("GET", "/stats")
        elif k == 2:
            status, _ = self.call("GET", "/events?limit=50")
        elif k == 3:
            status, data = self.call("GET", "/metrics")
            if b"syswatch_" not in data:
                self.error("/metrics holds no syswatch_ series")
        elif k == 4:
            status, _ = self.call("POST", "/print_all_ips", b'{"print_all_ips": true}',
                                  headers={"Content-Type": "application/json"})
        else:
            status, _ = self.call("GET", "/healthz")
        if status != 200:
            self.error(f"request {k}: status {status}")


class BadBodies(HttpWorker):
    """Requests that must be refused with a JSON error and change nothing."""

    CASES = [
        ("POST", "/add_ips", b"{not json"),
        ("POST", "/add_ips", b'{"add_ips": "1.2.3.4"}'),
        ("POST", "/add_ips", b'{"add_ips": [1e999]}'),
        ("POST", "/add_ips", b'{"add_ips": [1], "add_ips": [2]}'),
        ("POST", "/add_ips", b'{"add_ips": [' + b"1," * 300_000 + b"1]}"),
        ("POST", "/clear_ip_list", b'{"clear_ip_list": "yes"}'),
        ("GET", "/events?limit=-1", None),
        ("GET", "/events?min_latency=forever", None),
        ("GET", "/%63lear_ip_list", None),
    ]

    def __init__(self, port: int, period: float, quiet):
        super().__init__("soak-http-bad-bodies", port, period, quiet)
        self.n = 0

    def step(self) -> None:
        method, path, body = self.CASES[self.n % len(self.CASES)]
        self.n += 1
        status, _ = self.call(method, path, body, headers={"Content-Type": "application/json"} if body else None)
        if not 400 <= status < 500:
            self.error(f"{method} {path}: status {status}, expected a 4xx")


class SlowClients(Worker):
    """A request trickled a few bytes at a time over ~2 s, then answered."""

    def __init__(self, port: int, period: float, quiet):
        super().__init__("soak-http-slow", period, quiet)
        self.port = port

    def step(self) -> None:
        req = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as s:
            for i in range(0, len(req), 4):
                s.sendall(req[i:i + 4])
                time.sleep(2.0 / (len(req) / 4))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n")[0]:
            self.error(f"slow client: {head[:80]!r}")
        strict_json(body)


class SseChurn(Worker):
    """Opens an SSE stream, reads a few events (each data line strict JSON), closes it; several at once."""

    def __init__(self, port: int, period: float, quiet, parallel: int = 4):
        super().__init__("soak-sse-churn", period, quiet)
        self.port, self.parallel = port, parallel
        self.streams = 0
        self.lines = 0
        self.invalid_json = 0

    def _one(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/events/stream", headers={"Host": "localhost", "Accept": "text/event-stream"})
            resp = conn.getresponse()
            if resp.status == 503:             # every stream slot taken: a JSON refusal, and that is fine
                strict_json(resp.read())
                return
            if resp.status != 200:
                self.error(f"SSE: status {resp.status}")
                return
            deadline, got = time.monotonic() + 3, 0
            while time.monotonic() < deadline and got < 20:
                try:
                    line = resp.readline()     # http.client undoes the chunked transfer coding
                except (socket.timeout, TimeoutError):
                    break
                if not line:
                    break
                if line.startswith(b"data:") and line.endswith(b"\n"):
                    got += 1
                    self.lines += 1
                    try:
                        strict_json(line[5:])
                    except ValueError:
                        self.invalid_json += 1
                        self.error(f"SSE data line is not JSON: {line[:120]!r}")
            self.streams += 1
        except (OSError, http.client.HTTPException) as exc:
            if not self.quiet():
                self.error(f"SSE: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def step(self) -> None:
        threads = [threading.Thread(target=self._one, daemon=True) for _ in range(self.parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
