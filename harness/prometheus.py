"""A real Prometheus (Debian's prometheus package) scraping one target, and promtool.

    prom = Prometheus(tmp_dir, "127.0.0.1:8080")      # scrapes every second, job "syswatch"
    wait_for(prom.ready); prom.query('up') ...; prom.stop()
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import requests

from harness import procs
from harness.procs import die_with_parent, free_port

JOB = "syswatch"           # the scrape job: the Grafana dashboard's $job


def missing() -> str | None:
    """What is missing to run Prometheus here, or None."""
    if shutil.which("prometheus") and shutil.which("promtool"):
        return None
    return ("install Debian's prometheus (prometheus and promtool): apt-get install -y prometheus "
            "(scripts/setup-host.sh does it)")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, missing()
    return subprocess.run([tool, *args], input=stdin, capture_output=True, text=True, timeout=60)


class Prometheus:
    """`prometheus` scraping ``target`` (one, or a list) every second, on a free port, storage in ``tmp``."""

    def __init__(self, tmp: Path, target: str | list[str]):
        binary = shutil.which("prometheus")
        assert binary, missing()
        self.url = f"http://127.0.0.1:{free_port()}"
        config = tmp / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target] if isinstance(target, str)
                                                                        else list(target)}]}]}))
        self.log = tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address={self.url[len('http://'):]}", "--log.level=warn"],
            cwd=tmp, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent)

    def query(self, expr: str) -> dict:
        return requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10).json()

    def scrapes(self) -> int:
        """How many times the target was scraped in the last minute."""
        r = self.query(f'count_over_time(up{{job="{JOB}"}}[1m])')["data"]["result"]
        return int(r[0]["value"][1]) if r else 0

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        procs.stop(self.proc, signal.SIGTERM, 15)
