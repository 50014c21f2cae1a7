"""The API as a process: a real `python -m api.server` on a free port; the same API in process
(make_app called through harness.wsgi); and a real ZeroMQ publisher speaking wire protocol v2
(shared/protocol.py), standing in for the collector.

SYSWATCH_TEST_PYTHON picks the interpreter that runs the server, e.g. Debian's
/usr/bin/python3 with bottle 0.12, waitress 2.1 and pyzmq 24:
    SYSWATCH_TEST_PYTHON=/usr/bin/python3 python -m pytest tests/test_api*.py
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import requests
import zmq
from prometheus_client.parser import text_string_to_metric_families

from harness import ROOT
from harness.procs import die_with_parent, free_port, wait_for
from harness.wsgi import Client, Response
from syswatch.api.app import ApiConfig, make_app
from syswatch.shared import protocol, zmqsock

PYTHON = os.environ.get("SYSWATCH_TEST_PYTHON", sys.executable)


# api/server.py prints this line last at start-up, after "API Server starting on" (its port),
# "IP list: ..." (the tokens) and any respelling of the IP list
STARTED_LINE = "History: "


class ApiProcess:
    """`python -m api.server` on 127.0.0.1:<free port>; stdout and stderr are collected in ``lines``."""

    def __init__(self, db: Path, *args: str, collector: str | None = None, env: dict | None = None):
        self.db = str(db)
        self.args = list(args)
        self.collector = collector or f"tcp://127.0.0.1:{free_port()}"
        self.extra_env = env or {}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def command(self) -> list[str]:
        return [PYTHON, "-m", "api.server", "--host", "127.0.0.1", "--port", str(self.port),
                "--db", self.db, "--collector", self.collector, *self.args]

    def start(self, wait: bool = True, timeout: float = 15) -> "ApiProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYSWATCH_")}
        env.update(PYTHONUNBUFFERED="1", **self.extra_env)
        self.lines = []
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     preexec_fn=die_with_parent, stderr=subprocess.STDOUT, text=True,
                                     errors="replace")
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        if wait:
            # The last start-up line (after "API Server starting on"): once it is here, every
            # start-up line a test may look for is in ``lines``.
            deadline = time.monotonic() + timeout
            while not any(line.startswith(STARTED_LINE) for line in self.lines):
                if self.proc.poll() is not None:
                    self._reader.join(5)       # its last lines, to say why it exited
                    raise RuntimeError(f"API exited with {self.proc.returncode}:\n{self.output}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"API did not start within {timeout}s:\n{self.output}")
                time.sleep(0.02)
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None     # PIPE
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_exit(self, timeout: float = 15) -> int:
        """Wait for the process to end (e.g. a start-up error) and for its last output line."""
        assert self.proc is not None, "start() first"
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def url(self, path: str) -> str:
        return self.base + path

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url(path), timeout=kw.pop("timeout", 10), **kw)

    def post(self, path: str, body=None, **kw) -> requests.Response:
        return requests.post(self.url(path), json=body, timeout=kw.pop("timeout", 10), **kw)

    def ips(self, **kw) -> list:
        r = self.post("/print_all_ips", {"print_all_ips": True}, **kw)
        assert r.status_code == 200, r.text
        return r.json()["ips"]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode if self.proc else 0

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class ApiInProcess:
    """The API of ``make_app`` called in process (harness.wsgi), with ApiProcess's request methods:
    what a request/response test needs, without a process, a port or a thread. ``lines`` gets the
    access log. No subscriber thread runs: ``feed`` applies a message as the ingest thread would."""

    def __init__(self, db: Path | None = None, collector: str = "tcp://127.0.0.1:1",
                 config: ApiConfig | None = None, **options):
        """An ApiConfig of ``db``, ``collector`` and ``options`` (ApiConfig's fields), or ``config`` as given."""
        self.lines: list[str] = []
        self.config = config or ApiConfig(db=str(db), collectors=(collector,), **options)
        self.app = make_app(self.config, log=self.lines.append)
        self.client = Client(self.app.wsgi, host=self.config.host, port=self.config.port)

    @classmethod
    def from_args(cls, db: Path, *args: str, env: dict[str, str] | None = None) -> "ApiInProcess":
        """The in-process twin of ``ApiProcess(db, *args, env=env)``: its command line (and ``env`` added
        to the environment) read by the server's own parse_args."""
        from syswatch.api.server import parse_args
        saved = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            return cls(config=parse_args(["--db", str(db), *args]))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def collector(self) -> str:
        return self.config.collectors[0]

    def __enter__(self) -> "ApiInProcess":
        return self

    def __exit__(self, *exc) -> None:
        pass

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def request(self, method: str, path: str, params=None, **kw) -> Response:
        """As requests.request: ``params`` (a dict or (name, value) pairs) is added as the query string."""
        kw.pop("timeout", None)
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params, doseq=True)
        return self.client.request(method, path, **kw)

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def head(self, path: str, **kw) -> Response:
        return self.request("HEAD", path, **kw)

    def options(self, path: str, **kw) -> Response:
        return self.request("OPTIONS", path, **kw)

    def post(self, path: str, body=None, **kw) -> Response:
        if body is not None:
            kw["json"] = body
        return self.request("POST", path, **kw)

    def ips(self, **kw) -> list:
        r = self.post("/print_all_ips", {"print_all_ips": True}, **kw)
        assert r.status_code == 200, r.text
        return r.json()["ips"]

    def feed(self, frames: list[bytes], endpoint: str | None = None) -> None:
        """One ZeroMQ message (two frames), decoded and applied by the API's ingest code."""
        self.app.subscriber.handle(frames, endpoint or self.config.collectors[0])


def event(pid: int = 4242, comm: str = "testproc", syscall: str = "write", count: int = 100,
          fd: int = 1, tid: int | None = None, uid: int = 1000, ts_ns: int | None = None,
          ret: int | None = None, lat_ns: int = 1500, container_id: str = "", container_name: str = "",
          cgroup_id: int = 1) -> dict:
    """A v2 EVENT; ``ret`` defaults to ``count`` (every byte moved)."""
    return {"ts_ns": ts_ns if ts_ns is not None else time.time_ns(), "pid": pid,
            "tid": pid if tid is None else tid, "uid": uid, "comm": comm, "syscall": syscall,
            "fd": fd, "count": count, "ret": count if ret is None else ret, "lat_ns": lat_ns,
            "cgroup_id": cgroup_id, "container_id": container_id, "container_name": container_name}


class Publisher:
    """A PUB socket bound like the collector's, sending protocol-v2 messages built with shared/protocol."""

    def __init__(self, endpoint: str, ctx: zmq.Context | None = None, curve_server=None, host: str = "testhost"):
        self.ctx = ctx or zmq.Context.instance()
        self.endpoint = endpoint
        self.host = host
        self.sock = zmqsock.make_publisher(self.ctx, endpoint, sndhwm=100_000, curve_server=curve_server)
        self.events_total = 0
        self.started = time.monotonic()

    def status(self, **over) -> None:
        payload = {"host": self.host, "ts_ns": time.time_ns(), "mode": "events", "probe": "tracepoint",
                   "syscalls": ["read", "write"], "excluded_pids": [1, 2], "events_total": self.events_total,
                   "lost_total": 0, "dropped_total": 0, "malformed_total": 0,
                   "uptime_s": round(time.monotonic() - self.started, 3)}
        payload.update(over)
        self.raw(protocol.encode(protocol.TOPIC_STATUS, payload))

    def events(self, events: list) -> None:
        by_syscall: dict = {}
        for e in events:
            by_syscall.setdefault(e["syscall"], []).append(e)
        for syscall, batch in by_syscall.items():
            self.raw(protocol.encode(protocol.topic_for(syscall), {"host": self.host, "events": batch}))
            self.events_total += len(batch)

    def raw(self, frames: list) -> None:
        self.sock.send_multipart(frames)

    def close(self) -> None:
        self.sock.close(0)


class Feed(Publisher):
    """Publisher's messages handed straight to an ApiInProcess's ingest code: no socket, no thread,
    so each message is applied before the call returns."""

    def __init__(self, api: ApiInProcess, host: str = "testhost"):
        self.api, self.host = api, host
        self.endpoint = api.collector
        self.events_total = 0
        self.started = time.monotonic()

    def raw(self, frames: list) -> None:
        self.api.feed(list(frames), self.endpoint)

    def close(self) -> None:
        pass


def connect(server: ApiProcess, pub: Publisher, timeout: float = 15) -> None:
    """Send status messages until the API reports the collector connected (ZeroMQ's slow joiner)."""
    def connected():
        pub.status()
        return server.get("/healthz").json()["collector_connected"]
    wait_for(connected, timeout, 0.1, "the API to receive the publisher's status")


def metric(text: str, name: str, **labels) -> float | None:
    """The value of sample ``name`` with exactly ``labels`` in a /metrics text, read with
    prometheus_client's parser (None when there is no such sample)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None
