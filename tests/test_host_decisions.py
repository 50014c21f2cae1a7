"""What the set-up scripts decide on each supported host (issue 28), from real apt configurations:
tests/fixtures/hosts/<host>/ holds the os-release and the /etc/apt of Debian 12 (the installer's
one-line sources.list, a national mirror), Debian 13 (deb822 debian.sources) and Ubuntu 24.04
(deb822 ubuntu.sources), plus Ubuntu 22.04 as an unsupported host. The scripts read them through
SYSWATCH_OS_RELEASE and SYSWATCH_APT_ETC and print their decisions with --plan: the same code that
then acts (scripts/setup-host.sh, scripts/setup-test.sh, scripts/build-base-image.sh).

The registry is a real HTTP server on a loopback port speaking just the registry API's handshake
(GET /v2/ -> 401 with Docker-Distribution-Api-Version: registry/2.0, as Docker Hub answers), or a
plain web server, or a closed port; build-base-image.sh asks it through SYSWATCH_REGISTRY."""
from __future__ import annotations

import os
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import ROOT
from harness.procs import free_port

FIXTURES = ROOT / "tests" / "fixtures" / "hosts"
SETUP_HOST = str(ROOT / "scripts" / "setup-host.sh")
SETUP_TEST = str(ROOT / "scripts" / "setup-test.sh")
BUILD_BASE = str(ROOT / "scripts" / "build-base-image.sh")


def run(argv, host: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "SYSWATCH_OS_RELEASE": str(FIXTURES / host / "os-release"),
            "SYSWATCH_APT_ETC": str(FIXTURES / host / "apt"), **env}
    return subprocess.run(argv, env=full, capture_output=True, text=True, timeout=60)


# --- setup-host.sh: what running needs ------------------------------------------------------------

RUN_PLANS = {
    "debian12": ("Debian GNU/Linux 12 (bookworm)", "docker.io debootstrap curl python3 ca-certificates docker-compose",
                 "compose: docker-compose (v1, package docker-compose)"),
    "debian13": ("Debian GNU/Linux 13 (trixie)", "docker.io debootstrap curl python3 ca-certificates docker-compose",
                 "compose: the plugin, docker compose (package docker-compose), "
                 "and /usr/local/bin/docker-compose running it"),
    "ubuntu2404": ("Ubuntu 24.04.3 LTS",
                   "docker.io debootstrap curl python3 ca-certificates debian-archive-keyring docker-compose-v2",
                   "compose: the plugin, docker compose (package docker-compose-v2), "
                   "and /usr/local/bin/docker-compose running it"),
}


@pytest.mark.parametrize("host", list(RUN_PLANS))
def test_setup_host_plan_per_supported_host(host):
    name, packages, compose = RUN_PLANS[host]
    res = run([SETUP_HOST, "--plan"], host)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"host: {name} ({host})"
    assert lines[1] == f"packages: {packages}"
    assert lines[2] == compose
    assert "apt: universe is not enabled" not in res.stdout       # every fixture has what it needs
    # nothing of the test set: running needs no browser, VM, bpftrace or test tools
    for pkg in ("chromium", "qemu", "selenium", "prometheus", "bpftrace", "strace", "wrk", "nats-server"):
        assert pkg not in res.stdout, pkg


def test_setup_host_on_ubuntu_without_universe_says_how_to_enable_it(tmp_path):
    apt = tmp_path / "apt" / "sources.list.d"
    apt.mkdir(parents=True)
    text = (FIXTURES / "ubuntu2404" / "apt" / "sources.list.d" / "ubuntu.sources").read_text()
    (apt / "ubuntu.sources").write_text(text.replace(" universe", ""))
    res = run([SETUP_HOST, "--plan"], "ubuntu2404", SYSWATCH_APT_ETC=str(tmp_path / "apt"))
    assert "apt: universe is not enabled in" in res.stdout and "add-apt-repository universe" in res.stdout


def test_setup_host_refuses_an_unsupported_host_before_changing_anything(tmp_path):
    for argv in ([SETUP_HOST], [SETUP_HOST, "--plan"]):      # as root too: nothing is installed
        res = run(argv, "ubuntu2204")
        assert res.returncode == 2, res
        assert res.stdout == ""
        assert res.stderr.startswith("setup-host: error: this host is Ubuntu 22.04.5 LTS; supported: "
                                     "Debian 12 (bookworm), Debian 13 (trixie), Ubuntu 24.04 (noble)")
        assert "install by hand" in res.stderr
    res = run([SETUP_HOST, "--plan"], "ubuntu2204", SYSWATCH_OS_RELEASE=str(tmp_path / "none"))
    assert res.returncode == 2 and "this host is unknown (no " in res.stderr
    res = run([SETUP_HOST, "--frobnicate"], "debian12")
    assert res.returncode == 2 and "unknown argument '--frobnicate'" in res.stderr


# --- setup-test.sh: what testing needs ------------------------------------------------------------

@pytest.mark.parametrize("host", ["debian12", "debian13"])
def test_setup_test_plan_holds_the_test_tools(host):
    res = run([SETUP_TEST, "--plan"], host)
    assert res.returncode == 0, res.stderr
    packages = res.stdout.splitlines()[1].split(": ", 1)[1].split()
    for pkg in ("bpftrace", "chromium", "chromium-driver", "python3-selenium", "qemu-system-x86", "strace",
                "wrk", "sqlite3"):
        assert pkg in packages, pkg
    assert "packages without their services: prometheus nats-server" in res.stdout


def test_setup_test_on_ubuntu_says_the_test_set_is_debians():
    res = run([SETUP_TEST, "--plan"], "ubuntu2404")
    assert res.returncode == 2 and "chromium is a snap" in res.stderr and "Debian 12 or 13" in res.stderr


# --- build-base-image.sh: present, pull or build --------------------------------------------------

class _Registry(BaseHTTPRequestHandler):
    """GET /v2/ as a registry answers an anonymous client; anything else 404."""
    speaks_registry = True

    def do_GET(self):
        if self.path == "/v2/":
            self.send_response(401)
            if self.speaks_registry:
                self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
                self.send_header("WWW-Authenticate", 'Bearer realm="http://127.0.0.1/token",service="test"')
        else:
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class _PlainWeb(_Registry):
    speaks_registry = False


@pytest.fixture(params=["registry", "plain-web", "closed-port"])
def registry(request):
    """(URL, what build-base-image.sh must decide, what it must say about the answer)."""
    if request.param == "closed-port":
        yield f"http://127.0.0.1:{free_port()}", "build", "no answer (curl: (7) "
        return
    handler = _Registry if request.param == "registry" else _PlainWeb
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        if request.param == "registry":
            yield url, "pull", "answered: HTTP 401, registry/2.0"
        else:
            yield url, "build", "HTTP 401 without the registry API's header: not a registry"
    finally:
        server.shutdown()
        server.server_close()


MIRRORS = {   # the mirror a build uses on each host, and why
    "debian12": ("http://ftp.de.debian.org/debian", "http://security.debian.org/debian-security",
                 "the host's apt sources"),
    "debian13": ("https://mirror.example.net/debian", "https://security.debian.org/debian-security",
                 "the host's apt sources"),
    "ubuntu2404": ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security",
                   "the default: this host (ubuntu) is not Debian"),
}


@pytest.mark.parametrize("host", list(MIRRORS))
def test_base_image_pulls_when_a_registry_answers_else_builds_from_the_hosts_mirror(host, registry):
    url, path, said = registry
    mirror, security, why = MIRRORS[host]
    tag = f"syswatch-test-absent:{uuid.uuid4().hex[:8]}"     # no such image: present is not an option
    for suite in ("bookworm", "trixie"):
        res = run([BUILD_BASE, "--plan", "--suite", suite], host, SYSWATCH_REGISTRY=url, SYSWATCH_BASE_IMAGE=tag)
        assert res.returncode == 0, res.stderr
        line = res.stdout.strip()
        if path == "pull":
            assert line == f"{tag}: pull ({url}/v2/ {said})"
        else:
            assert line.startswith(f"{tag}: build with debootstrap {suite} from {mirror} ({why}; security: {security}) "
                                   f"({url}/v2/: "), line
            assert said in line, line
        res = run([BUILD_BASE, "--print-mirror", "--suite", suite], host)
        assert res.stdout.splitlines() == [f"mirror: {mirror}", f"security: {security}"]


def test_base_image_never_pulls_when_told_not_to(registry):
    url, _, _ = registry
    res = run([BUILD_BASE, "--plan", "--suite", "bookworm"], "ubuntu2404", SYSWATCH_REGISTRY=url, SYSWATCH_PULL="never",
              SYSWATCH_BASE_IMAGE="syswatch-test-absent:x")
    assert res.stdout.strip().endswith("(SYSWATCH_PULL=never)") and ": build with debootstrap" in res.stdout


def test_base_image_plan_covers_both_images_by_default():
    res = run([BUILD_BASE, "--plan"], "debian13", SYSWATCH_REGISTRY=f"http://127.0.0.1:{free_port()}")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [ln.split(":", 2)[0] + ":" + ln.split(":", 2)[1] for ln in lines] == ["debian:bookworm-slim",
                                                                                  "debian:trixie-slim"]
