"""Drive a docker-compose project of syswatch: build, up, wait, inspect, tear down.

One ``ComposeStack`` is one compose project with a unique name and its own free host ports,
so it never collides with a stack the user runs or with another test run. ``receive`` and
``wait_for_status`` read the collector's stream the way a subscriber on the host does.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import zmq

from harness import ROOT
from syswatch.shared import protocol

BASE_IMAGE = "debian:bookworm-slim"                  # the API image's (and test containers')
COLLECTOR_BASE_IMAGE = "debian:trixie-slim"          # the collector's: bpftrace 0.23


def stack_missing() -> str | None:
    """What running a stack still needs, as what to do about it; None when nothing is missing."""
    if compose_command() is None:
        return "install docker-compose: apt-get install docker-compose (scripts/setup-host.sh)"
    if not docker_answers():
        return "start dockerd: sudo scripts/setup-host.sh"
    if os.geteuid() != 0:
        return "run as root (the tests watch and signal host processes, write root-owned keys): sudo scripts/test.sh"
    for image in (BASE_IMAGE, COLLECTOR_BASE_IMAGE):
        if not image_present(image):
            return f"build {image} without a registry: sudo scripts/build-base-image.sh"
    return None


def compose_command() -> list[str] | None:
    """``docker-compose`` (1.29) if installed, else ``docker compose`` (v2), else None."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def image_present(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


class ComposeStack:
    def __init__(self, api_port: int, collector_port: int, files: tuple[str, ...] = ("docker-compose.yml",)):
        self.project = f"syswatch-test-{uuid.uuid4().hex[:8]}"
        self.api_port = api_port
        self.collector_port = collector_port
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.collector_endpoint = f"tcp://127.0.0.1:{collector_port}"
        self.files = files
        self.env = {**os.environ, "SYSWATCH_API_PORT": str(api_port),
                    "SYSWATCH_COLLECTOR_PORT": str(collector_port)}
        self.env.pop("SYSWATCH_TOKEN", None)  # the walk-through expects open POST endpoints
        self.timings: dict[str, float] = {}

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        command = compose_command()
        assert command is not None, stack_missing()
        cmd = [*command, "-p", self.project]
        for f in self.files:
            cmd += ["-f", str(ROOT / f)]
        proc = subprocess.run([*cmd, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd + list(args))} failed ({proc.returncode}):\n"
                                 f"{proc.stderr[-4000:]}{proc.stdout[-2000:]}")
        return proc

    def timed(self, name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        start = time.monotonic()
        proc = self.compose(*args, timeout=timeout)
        self.timings[name] = time.monotonic() - start
        return proc

    @contextlib.contextmanager
    def running(self, report=print):
        """Build, `up -d`, wait until the API answers; afterwards ALWAYS `down -v` and check nothing is left.
        ``report`` gets one line of timings (build, up, answering, down) at the end."""
        try:
            self.timed("build", "build")
            self.timed("up", "up", "-d")
            start = time.monotonic()
            self.wait_api_answers()
            self.wait_running("collector")
            self.timings["answering"] = time.monotonic() - start
            yield self
        finally:
            start = time.monotonic()
            down = self.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
            self.timings["down"] = time.monotonic() - start
            report(f"docker timings ({self.project}): "
                   + ", ".join(f"{k} {v:.1f}{'' if 'MB' in k else 's'}" for k, v in self.timings.items()))
            assert down.returncode == 0, f"docker-compose down -v failed:\n{down.stderr}"
            left = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}").stdout
            assert not left.strip(), f"containers left behind by {self.project}: {left}"

    def container_id(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        assert cid, f"service {service} has no container in project {self.project}"
        return cid

    def inspect(self, service: str) -> dict:
        return json.loads(docker("inspect", self.container_id(service)).stdout)[0]

    def logs(self, service: str = "") -> str:
        args = ["logs", "--no-color", "--tail", "60"] + ([service] if service else [])
        proc = self.compose(*args, check=False, timeout=60)
        return proc.stdout + proc.stderr

    def wait_api_answers(self, timeout: float = 90) -> None:
        """Until GET /healthz on the API's published port answers 200 (compose runs no Docker
        healthcheck: its exec of an interpreter every few seconds was most of an idle stream)."""
        deadline = time.monotonic() + timeout
        status = "?"
        while time.monotonic() < deadline:
            state = self.inspect("api")["State"]
            status = state["Status"]
            if state["Status"] in ("exited", "dead"):
                break
            try:
                if self.http("GET", "/healthz", timeout=2)[0] == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"the API did not answer /healthz within {timeout}s (container {status}); "
                             f"logs:\n{self.logs()}")

    def wait_running(self, service: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.inspect(service)["State"]
            if state["Running"] and not state.get("Restarting"):
                return state
            time.sleep(0.3)
        raise AssertionError(f"{service} not running within {timeout}s; logs:\n{self.logs(service)}")

    def http(self, method: str, path: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")


# --- the collector's stream, as a host subscriber sees it -----------------------------------------

def receive(sock: zmq.Socket, until: float):
    """Decoded messages from ``sock`` until the monotonic deadline ``until``."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while (left := until - time.monotonic()) > 0:
        if poller.poll(int(left * 1000) + 1):
            yield protocol.decode(sock.recv_multipart())


def wait_for_status(sock: zmq.Socket, timeout: float = 15) -> dict:
    for msg in receive(sock, time.monotonic() + timeout):
        if msg.topic == protocol.TOPIC_STATUS:
            return msg.payload
    raise AssertionError(f"no status message from the collector within {timeout}s")
