"""The shipping scripts: scripts/build-base-image.sh, scripts/setup-host.sh and test_api.sh."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import ROOT
from harness.compose import BASE_IMAGE, docker, docker_answers, image_present
from harness.procs import free_port
from tests.conftest import have, is_root, require

BUILD_BASE = str(ROOT / "scripts" / "build-base-image.sh")


def run(cmd, env=None, timeout=600):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


# --- build-base-image.sh -------------------------------------------------------------------------

def test_base_image_mirror_comes_from_the_hosts_apt_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://mirror.example/debian/ bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm-security\nEnabled: no\n\n"
        "Types: deb deb-src\n# a comment inside the stanza\nURIs: http://sec.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    want = ["mirror: http://mirror.example/debian", "security: http://sec.example/debian-security"]
    out = run([BUILD_BASE, "--print-mirror", "--suite", "bookworm"], env={"SYSWATCH_APT_ETC": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == want
    # trixie (the collector's base, issue 16): a bookworm host lists no trixie entry; its mirror serves both
    out = run([BUILD_BASE, "--print-mirror", "--suite", "trixie"], env={"SYSWATCH_APT_ETC": str(tmp_path)})
    assert out.returncode == 0 and out.stdout.splitlines() == want, out.stderr
    out = run([BUILD_BASE, "--print-mirror"], env={"SYSWATCH_APT_ETC": str(tmp_path)})   # default: both
    assert out.returncode == 0 and out.stdout.splitlines() == want + want, out.stderr


def test_base_image_rejects_an_unknown_suite():
    out = run([BUILD_BASE, "--suite", "sid", "--print-mirror"])
    assert out.returncode == 1 and "unknown suite 'sid'" in out.stderr


def test_base_image_without_a_bookworm_source_says_what_to_do(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://mirror.example/debian bullseye main\n")
    out = run([BUILD_BASE, "--print-mirror"], env={"SYSWATCH_APT_ETC": str(tmp_path)})
    assert out.returncode == 1
    assert "no 'bookworm' entry" in out.stderr and "SYSWATCH_MIRROR=" in out.stderr


def test_base_image_rejects_unknown_arguments():
    out = run([BUILD_BASE, "--frobnicate"])
    assert out.returncode == 1 and "unknown argument '--frobnicate'" in out.stderr


def test_base_image_script_does_nothing_when_the_image_exists():
    require(docker_answers(), "start dockerd: sudo scripts/setup-host.sh")
    require(image_present(BASE_IMAGE), f"build {BASE_IMAGE}: sudo scripts/build-base-image.sh")
    before = docker("image", "inspect", "-f", "{{.Id}}", BASE_IMAGE).stdout
    out = run([BUILD_BASE])
    assert out.returncode == 0, out.stderr
    assert "already present" in out.stdout and "nothing to do" in out.stdout
    assert docker("image", "inspect", "-f", "{{.Id}}", BASE_IMAGE).stdout == before


def test_base_image_build_failure_leaves_no_temporary_rootfs():
    require(is_root() and have("debootstrap"), "run as root with debootstrap: sudo scripts/test.sh")
    require(docker_answers(), "start dockerd: sudo scripts/setup-host.sh")
    tag = f"syswatch-test-base:{uuid.uuid4().hex[:8]}"
    before = set(glob.glob("/var/tmp/syswatch-rootfs.*"))
    out = run([BUILD_BASE], env={"SYSWATCH_BASE_IMAGE": tag,
                                 "SYSWATCH_MIRROR": f"http://127.0.0.1:{free_port()}/debian"})
    assert out.returncode == 1
    assert "debootstrap failed" in out.stderr and "is reachable" in out.stderr
    assert set(glob.glob("/var/tmp/syswatch-rootfs.*")) == before
    assert not image_present(tag)


@pytest.mark.slow
@pytest.mark.docker
def test_base_image_built_from_the_hosts_mirror():
    """The real path of a host without a registry: debootstrap + docker import, under a test tag."""
    require(is_root() and have("debootstrap"), "run as root with debootstrap: sudo scripts/test.sh")
    require(docker_answers(), "start dockerd: sudo scripts/setup-host.sh")
    tag = f"syswatch-test-base:{uuid.uuid4().hex[:8]}"
    mirror = run([BUILD_BASE, "--print-mirror"]).stdout.splitlines()[0].split(": ", 1)[1]
    try:
        out = run([BUILD_BASE], env={"SYSWATCH_BASE_IMAGE": tag})
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"built {tag}" in out.stdout
        sources = docker("run", "--rm", tag, "cat", "/etc/apt/sources.list.d/debian.sources").stdout
        assert f"URIs: {mirror}\nSuites: bookworm bookworm-updates\n" in sources
        release = docker("run", "--rm", tag, "cat", "/etc/debian_version").stdout
        assert release.startswith("12."), release
        # Slim: no apt lists or docs, and nothing left in /tmp.
        left = docker("run", "--rm", tag, "sh", "-c",
                      "ls -A /var/lib/apt/lists /tmp /var/cache/apt; "
                      "find /usr/share/doc -type f ! -name copyright | head -3").stdout
        assert [w for w in left.split() if not w.endswith(":")] == [], left
    finally:
        docker("rmi", "-f", tag, check=False)


# --- setup-host.sh ---------------------------------------------------------------------------------

def test_setup_host_is_idempotent():
    require(is_root(), "run as root: sudo scripts/test.sh")
    first = run([str(ROOT / "scripts" / "setup-host.sh")])
    assert first.returncode == 0, first.stdout + first.stderr
    again = run([str(ROOT / "scripts" / "setup-host.sh")])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "installing" not in again.stdout and "starting dockerd" not in again.stdout, again.stdout
    assert again.stdout.rstrip().endswith("setup-host: host ready to run: scripts/build-base-image.sh && "
                                          "docker-compose up -d")
    assert docker_answers()
    test = run([str(ROOT / "scripts" / "setup-test.sh")])
    assert test.returncode == 0, test.stdout + test.stderr
    assert "installing" not in test.stdout and test.stdout.rstrip().endswith("setup-test: host ready to test")


# --- test_api.sh -----------------------------------------------------------------------------------

class WrongApi(BaseHTTPRequestHandler):
    """Right answers except the one named in ``server.wrong``."""
    answers = {
        "/apis": {"available_apis": ["GET /apis", "POST /add_ips", "POST /print_all_ips", "POST /clear_ip_list"],
                  "usage": {}},
        "/print_all_ips": {"message": "All IPs retrieved successfully", "ips": [], "total_ips": 0},
        "/add_ips": {"message": "IPs added successfully", "added_ips": [1, 2, 3], "total_ips": 3},
    }

    def reply(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = dict(self.answers.get(self.path, {"error": "not found"}))
        if self.path == self.server.wrong:
            body["total_ips"] = 99
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = reply

    def log_message(self, *args):
        pass


@pytest.fixture
def wrong_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), WrongApi)
    server.wrong = "/add_ips"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_api_script_stops_at_the_first_wrong_answer(wrong_api):
    out = run([str(ROOT / "test_api.sh")], env={"BASE_URL": wrong_api}, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Getting available APIs" in out.stdout and '"total_ips": 99' in out.stdout
    assert "FAIL: expected" in out.stderr and "POST /add_ips gave a wrong answer" in out.stderr
    assert "Printing all IPs" not in out.stdout  # nothing after the first wrong answer


def test_api_script_says_when_the_api_is_unreachable():
    out = run([str(ROOT / "test_api.sh")], env={"BASE_URL": f"http://127.0.0.1:{free_port()}"}, timeout=60)
    assert out.returncode == 2
    assert "cannot reach" in out.stderr and "docker-compose up -d" in out.stderr


# --- scripts/test.sh ------------------------------------------------------------------------------

def test_test_command_fails_when_pytest_collects_nothing():
    require(is_root(), "run as root: sudo scripts/test.sh")
    out = run([str(ROOT / "scripts" / "test.sh"), "-k", "no_test_has_this_name", "tests/test_containers.py"],
              timeout=300)
    assert out.returncode == 5, out.stdout[-2000:] + out.stderr
    assert "pytest collected no tests (exit 5)" in out.stderr
    timings = out.stdout[out.stdout.index("=== stage timings"):].splitlines()[1:]
    # no test selected: nothing to set up but the Python packages pytest needs, and the lint
    assert [line.split()[0] for line in timings] == ["python-deps", "lint", "pytest"], timings
    assert timings[-1].endswith("exit 5")


@pytest.mark.parametrize("selection, stages", [
    (["-m", "unit"], "python-deps lint pytest"),
    (["tests/test_api_cli.py"], "python-deps lint setup-host setup-test pytest"),
    (["tests/test_e2e_docker.py"], "python-deps lint setup-host setup-test base-image pytest"),
    (["tests/test_bpftrace_versions.py"], "python-deps lint setup-host setup-test trixie-bpftrace pytest"),
    (["tests/test_kernel_vm.py"], "python-deps lint setup-host setup-test vm-root pytest"),
    (["-m", "not vm"], "python-deps lint setup-host setup-test base-image trixie-bpftrace pytest"),
    ([], "python-deps lint setup-host setup-test base-image trixie-bpftrace vm-root pytest"),
])
def test_test_command_sets_up_only_what_the_selection_needs(selection, stages):
    out = run([str(ROOT / "scripts" / "test.sh"), "--plan", *selection], timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith(f"test.sh: stages: {stages} (for "), out.stdout
