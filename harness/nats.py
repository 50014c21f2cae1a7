"""NATS for the tests and the bench: Debian's nats-server on a free port on 127.0.0.1 with JetStream on a
temporary store (optional authorization and TLS blocks; stopped, and restartable on the same port and
store, by the owner), the syswatch-nats-bridge as a process, and nats-py (the official client, an
independent peer of shared/natsclient.py) to read a stream back or publish anything into it."""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness import ROOT, procs
from harness.procs import die_with_parent, free_port


class NatsServer:
    """``nats-server -c`` a generated configuration; ``extra`` is appended to it verbatim."""

    def __init__(self, tmp: Path, extra: str = "", max_payload: str = "8MB", scheme: str = "nats"):
        binary = shutil.which("nats-server")
        if binary is None:
            raise FileNotFoundError("nats-server is not installed: apt-get install -y nats-server")
        self.binary = binary
        self.tmp = Path(tmp)
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.store = self.tmp / "jetstream"
        self.log = self.tmp / "nats-server.log"
        self.config = self.tmp / "nats-server.conf"
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"max_payload: {max_payload}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.store))}, max_memory_store: 64MB, max_file_store: 2GB }}\n"
            + extra)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "NatsServer":
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=open(self.log, "a"),
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, \
                f"nats-server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(5) == b"INFO ":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, \
                f"nats-server did not listen within {timeout} s: {self.log.read_text()[-2000:]}"
            time.sleep(0.05)
        # JetStream is ready once the log says so (it recovers the store after the listener is up)
        while "Server is ready" not in self.log.read_text():
            assert time.monotonic() < deadline, f"nats-server not ready: {self.log.read_text()[-2000:]}"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc:
            procs.stop(self.proc, signal.SIGTERM, 15)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def stream_messages(url: str, stream: str = "SYSWATCH", **connect) -> list:
    """Every message stored in ``stream``, read with nats-py (the official client, an independent
    peer of shared/natsclient.py): [(sequence, subject, headers, data)]."""
    import asyncio

    import nats

    async def read():
        nc = await nats.connect(url, **connect)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    m = await js.get_msg(stream, seq)
                except nats.js.errors.NotFoundError:
                    continue
                out.append((m.seq, m.subject, dict(m.headers or {}), m.data))
            return out
        finally:
            await nc.close()
    return asyncio.run(read())


def publish_raw(url: str, items: list[tuple[str, bytes]], **connect) -> list:
    """Publish ``(subject, payload)`` pairs to JetStream with nats-py; the acks' sequences."""
    import asyncio

    import nats

    async def send():
        nc = await nats.connect(url, max_reconnect_attempts=0, **connect)
        try:
            js = nc.jetstream()
            return [(await js.publish(subject, data, timeout=10)).seq for subject, data in items]
        finally:
            await nc.close()
    return asyncio.run(send())


class BridgeProcess:
    """``python -m subscribers.nats_bridge`` (the real console script's module) with its log in ``tmp``."""

    def __init__(self, tmp: Path, endpoint: str, nats_url: str, *args: str, env: dict | None = None):
        import os
        import sys
        self.metrics_port = free_port()
        self.log = Path(tmp) / f"bridge-{self.metrics_port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "subscribers.nats_bridge", "--endpoint", endpoint, "--nats", nats_url,
             "--metrics", f"127.0.0.1:{self.metrics_port}", *args],
            cwd=ROOT, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("SYSWATCH_")}, "PYTHONUNBUFFERED": "1",
                 **(env or {})})

    def output(self) -> str:
        return self.log.read_text()

    def metrics(self) -> dict:
        """{(name, reason or None): value} of the bridge's /metrics, {} while it does not answer."""
        import requests
        from prometheus_client.parser import text_string_to_metric_families
        assert self.proc.poll() is None, f"the bridge exited {self.proc.returncode}: {self.output()[-3000:]}"
        try:
            text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except requests.ConnectionError:
            return {}
        return {(s.name, s.labels.get("reason")): s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name.startswith("syswatch_bridge_")}

    def stop(self) -> int:
        procs.stop(self.proc, signal.SIGTERM, 15)
        return self.proc.returncode
