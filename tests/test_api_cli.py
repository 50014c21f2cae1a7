"""`python -m api.server` as a user starts it: --help, bad flags and environment, a port in use."""
from __future__ import annotations

import re
import socket
import subprocess

from harness import ROOT
from harness.api import PYTHON, ApiProcess


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SYSWATCH_")}
    full_env.update(env or {})
    return subprocess.run([PYTHON, "-m", "api.server", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=30)


def test_help_lists_every_flag_with_its_default_and_examples():
    out = run("--help")
    assert out.returncode == 0
    flags = set(re.findall(r"^  (--[a-z-]+)", out.stdout, re.M))
    assert flags >= {"--host", "--port", "--collector", "--db", "--token-file", "--max-body-bytes", "--max-items",
                     "--max-ips", "--recent-events", "--max-streams", "--threads", "--max-connections",
                     "--channel-timeout"}
    text = " ".join(out.stdout.split())
    for default in ("(default: 127.0.0.1)", "(default: 8080)", "(default: tcp://127.0.0.1:5556)",
                    "(default: ./syswatch.sqlite3)", "(default: 10000)", "(default: 1048576)"):
        assert default in text
    assert "examples:" in out.stdout and "SYSWATCH_TOKEN" in out.stdout


def test_bad_values_are_clear_errors(tmp_path):
    out = run("--port", "70000")
    assert out.returncode == 2 and "a TCP port is 0..65535" in out.stderr
    out = run(env={"SYSWATCH_MAX_ITEMS": "lots"})
    assert out.returncode == 2 and "SYSWATCH_MAX_ITEMS='lots' is invalid" in out.stderr
    out = run("--threads", "5", "--max-streams", "8")
    assert out.returncode == 2 and "--threads 5 must be at least --max-streams 8 + 4" in out.stderr
    out = run("--collector", "nonsense://x", "--db", str(tmp_path / "ips.sqlite3"))
    assert out.returncode == 2 and "is not a ZeroMQ endpoint" in out.stderr
    assert "Traceback" not in out.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run("--port", str(port), "--db", str(tmp_path / "ips.sqlite3"))
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_environment_configures_and_flags_beat_it(tmp_path):
    srv = ApiProcess(tmp_path / "ips.sqlite3", "--max-items", "3", env={"SYSWATCH_MAX_ITEMS": "1",
                                                                     "SYSWATCH_MAX_IPS": "4"})
    with srv:
        assert srv.post("/add_ips", {"add_ips": [1, 2, 3]}).status_code == 200      # flag: 3 per request
        r = srv.post("/add_ips", {"add_ips": [4, 5]})                              # env: 4 in the list
        assert r.status_code == 409 and "the maximum is 4" in r.json()["error"]
        assert srv.lines[0] == f"API Server starting on 127.0.0.1:{srv.port}"


def test_sigterm_ends_open_streams_and_exits_0(tmp_path):
    import requests

    from harness.procs import wait_for
    srv = ApiProcess(tmp_path / "ips.sqlite3").start()
    with requests.get(srv.url("/events/stream"), stream=True, timeout=10) as r:
        assert r.status_code == 200
        wait_for(lambda: srv.get("/stats").json()["api"]["event_streams"] == 1, what="the stream")
        assert srv.stop() == 0 and srv.wait_exit() == 0
        assert r.raw.read(4096).startswith(b": syswatch event stream")  # then the end of the body
    assert any(" GET /events/stream 200 " in line for line in srv.lines)
    assert "thread(s) still running" not in srv.output
