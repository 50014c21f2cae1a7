"""The compose stack's collector as a bench tracer (issue 16): the image users run with
``docker-compose up`` (trixie, bpftrace 0.23), started from docker-compose.yml itself so it has
exactly the compose file's options (pid: host, capabilities, mounts, environment).

``docker-compose -p <unique project> up -d --no-build collector`` on a free port; stopped with
``down -v`` whatever happens (also when start-up fails), so no container is left behind.
The image must be built beforehand (``docker-compose build collector``): the bench never builds.
"""
from __future__ import annotations

import os
import subprocess
import uuid

from bench.subscriber import BenchSubscriber
from bench.tracers import CollectorTracer
from harness import ROOT, procs
from harness.compose import compose_command, docker_answers, image_present

IMAGE = "syswatch-collector:latest"


def unavailable() -> str | None:
    """None when the compose tracers can run, else why not."""
    if compose_command() is None:
        return "docker-compose is not installed (scripts/setup-host.sh installs it)"
    if not docker_answers():
        return "dockerd does not answer (scripts/setup-host.sh starts it)"
    if not image_present(IMAGE):
        return f"{IMAGE} is not built: run docker-compose build collector first"
    return None


class ComposeCollectorTracer(CollectorTracer):
    """The compose collector in ``mode`` with a BenchSubscriber on its published port.

    ``container``: SYSWATCH_CONTAINER (trace only that container; the stream is then ready as soon
    as a status arrives, since the bench's own writes are not traced)."""

    def __init__(self, mode: str, container: str | None = None, overload: str | None = None):
        super().__init__(mode)
        self.name = f"compose-{mode}"
        self.project = f"syswatch-bench-{uuid.uuid4().hex[:8]}"
        self.container = container
        port = procs.free_port()
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.env = {**os.environ, "SYSWATCH_COLLECTOR_PORT": str(port), "SYSWATCH_API_PORT": str(procs.free_port()),
                    "SYSWATCH_MODE": mode, "SYSWATCH_CONTAINER": container or ""}
        if overload:
            self.env["SYSWATCH_ON_OVERLOAD"] = overload
        self.collector_pid: int | None = None
        self.status_at_start: dict = {}

    def _compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*compose_command(), "-p", self.project, "-f", str(ROOT / "docker-compose.yml"), *args],
                              cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self):
        try:
            up = self._compose("up", "-d", "--no-build", "collector")
            if up.returncode != 0:
                raise RuntimeError(f"docker-compose up failed: {(up.stderr or up.stdout)[-800:]}")
            self.subscriber = BenchSubscriber(self.endpoint)
            self.subscriber.start()
            if self.container:
                if not self.subscriber.status_seen.wait(90):
                    raise TimeoutError("no status message within 90 s")
            else:
                self.subscriber.wait_ready(timeout=90)
            self.status_at_start = dict(self.subscriber.status or {})
            cid = self._compose("ps", "-q", "collector").stdout.strip()
            pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", cid], capture_output=True,
                                 text=True).stdout.strip()
            self.collector_pid = int(pid) if pid.isdigit() and int(pid) > 0 else None
            if self.collector_pid:
                self.bpftrace_pid = procs.descendant_named(self.collector_pid, "bpftrace", timeout=5)
        except Exception as exc:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {exc}; its log:\n{tail}") from None
        return self

    def alive(self) -> bool:
        return self.collector_pid is not None and procs.comm_of(self.collector_pid) != ""

    def log_tail(self, n: int = 20) -> str:
        try:
            out = self._compose("logs", "--no-color", "--tail", str(n), "collector", timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return (out.stdout + out.stderr).strip()

    def stop(self):
        if self.subscriber:
            self.subscriber.stop()
            self.subscriber = None
        down = self._compose("down", "-v", "--timeout", "10")
        self.exit_status = down.returncode
        if down.returncode != 0:
            raise RuntimeError(f"docker-compose down failed for {self.project}: {down.stderr[-400:]}")

    def pids(self):
        out = {"collector": self.collector_pid} if self.collector_pid else {}
        if self.bpftrace_pid:
            out["bpftrace"] = self.bpftrace_pid
        return out
