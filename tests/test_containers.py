"""The container definitions say what issue 4 asks: checked on the files as docker-compose reads them
(`docker-compose config`, with variables interpolated), without starting anything."""
from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from harness import ROOT
from harness.compose import compose_command
from tests.conftest import require


def compose_config(*files: str, env: dict | None = None) -> dict:
    cmd = compose_command()
    require(cmd is not None, "install docker-compose: apt-get install docker-compose (scripts/setup-host.sh)")
    args = [a for f in files for a in ("-f", str(ROOT / f))]
    proc = subprocess.run([*cmd, *args, "config"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="module")
def config():
    return compose_config("docker-compose.yml",
                          env={"SYSWATCH_API_PORT": "8080", "SYSWATCH_COLLECTOR_PORT": "5556"})


def test_compose_file_has_no_version_key_and_two_services():
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "version" not in raw
    assert set(raw["services"]) == {"collector", "api"}


def published(service: dict) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) of every published port, whatever syntax compose printed."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip", ""), str(p["published"]), str(p["target"])))
        else:
            ip, host, target = str(p).rsplit(":", 2) if str(p).count(":") >= 2 else ("", *str(p).split(":"))
            out.append((ip, host, target.split("/")[0]))
    return out


def test_collector_has_least_privilege_for_bpftrace(config):
    c = config["services"]["collector"]
    assert c["pid"] == "host"
    assert sorted(c["cap_add"]) == ["IPC_LOCK", "SYS_ADMIN"]
    assert "privileged" not in c
    assert set(c["security_opt"]) == {"seccomp:unconfined", "apparmor:unconfined"}
    volumes = {(v["source"], v["target"], v.get("read_only", False)) if isinstance(v, dict) else tuple(v.split(":"))
               for v in c["volumes"]}
    for path in ("/sys/kernel/tracing", "/sys/kernel/debug"):
        assert (path, path, True) in volumes or (path, path, "ro") in volumes, volumes
    assert c["environment"]["SYSWATCH_BIND"] == "tcp://0.0.0.0:5556"
    assert published(c) == [("127.0.0.1", "5556", "5556")]
    assert c["restart"] == "unless-stopped"
    assert c["logging"]["options"]["max-size"] and c["logging"]["options"]["max-file"]


def test_api_is_unprivileged(config):
    a = config["services"]["api"]
    assert a["cap_drop"] == ["ALL"]
    assert a["read_only"] is True
    assert "no-new-privileges:true" in a["security_opt"]
    assert a["user"].split(":")[0] not in ("0", "root")
    assert "cap_add" not in a and "privileged" not in a and "pid" not in a
    env = a["environment"]
    assert env["SYSWATCH_COLLECTOR"] == "tcp://collector:5556"
    assert env["SYSWATCH_HOST"] == "0.0.0.0"
    db_dir = os.path.dirname(env["SYSWATCH_DB"])
    mounts = [(v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2]) for v in a["volumes"]]
    assert [src for src, dst in mounts if dst == db_dir and src in config["volumes"]], (mounts, "not a named volume")
    assert published(a) == [("127.0.0.1", "8080", "8080")]
    # no Docker healthcheck, in compose or in the image: its exec of an interpreter every 5 s was most
    # of an idle host's stream
    assert "healthcheck" not in a
    assert "HEALTHCHECK" not in [line.split(" ", 1)[0] for line in (ROOT / "Dockerfile.api").read_text().splitlines()]
    assert a["restart"] == "unless-stopped" and a["logging"]["options"]["max-size"]


def test_published_ports_follow_the_environment():
    cfg = compose_config("docker-compose.yml", env={"SYSWATCH_API_PORT": "19080", "SYSWATCH_COLLECTOR_PORT": "15556"})
    assert published(cfg["services"]["api"]) == [("127.0.0.1", "19080", "8080")]
    assert published(cfg["services"]["collector"]) == [("127.0.0.1", "15556", "5556")]


def test_privileged_override_only_makes_the_collector_privileged():
    cfg = compose_config("docker-compose.yml", "docker-compose.privileged.yml")
    assert cfg["services"]["collector"]["privileged"] is True
    assert "privileged" not in cfg["services"]["api"]
    assert cfg["services"]["api"]["cap_drop"] == ["ALL"]


def test_dockerfiles_copy_only_what_each_image_runs():
    # the collector runs trixie's bpftrace 0.23 (issue 16); the API stays on bookworm
    # the collector image also holds subscribers/: the NATS bridge runs beside it as a sidecar (issue 27)
    for name, packages, base in (("Dockerfile.collector", ("collector", "subscribers"), "debian:trixie-slim"),
                                 ("Dockerfile.api", ("api",), "debian:bookworm-slim")):
        package = packages[0]
        text = (ROOT / name).read_text()
        lines = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
        assert lines[0] == ["FROM", base], name
        copies = {tuple(words[1:]) for words in lines if words[0] == "COPY"}
        # syswatch/__init__.py, and links to the folders the image holds (syswatch.shared...)
        assert copies == {("syswatch/__init__.py", "syswatch/"), ("shared/", "shared/"),
                          *((f"{pkg}/", f"{pkg}/") for pkg in packages)}, (name, copies)
        assert f"ln -s ../shared syswatch/shared && ln -s ../{package} syswatch/{package}" in text, name
        assert "pip" not in text.replace("python3-", ""), f"{name}: Debian packages only (no PyPI in the build)"
    assert "USER syswatch" in (ROOT / "Dockerfile.api").read_text()


def test_dockerignore_admits_only_the_packages():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert {line for line in lines if line.startswith("!")} == {"!syswatch/", "!collector/", "!api/", "!shared/",
                                                               "!subscribers/"}


def test_curve_override_gives_each_service_only_its_own_keys():
    cfg = compose_config("docker-compose.yml", "docker-compose.curve.yml", env={"SYSWATCH_KEYS": "/srv/keys"})
    def mounts(service):
        return {(v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2])
                for v in cfg["services"][service]["volumes"]}
    collector, api = mounts("collector"), mounts("api")
    assert ("/srv/keys/server.key_secret", "/keys/server.key_secret") in collector
    assert ("/srv/keys/clients", "/keys/clients") in collector
    assert {src for src, _ in api if src.startswith("/srv/keys")} == {"/srv/keys/server.key",
                                                                     "/srv/keys/clients/api.key_secret"}
    env = cfg["services"]["api"]["environment"]
    assert env["SYSWATCH_CURVE_SERVER_KEY"] == "/keys/server.key"
    assert env["SYSWATCH_CURVE_CLIENT_KEY"] == "/keys/api.key_secret"
    assert cfg["services"]["api"]["read_only"] is True and cfg["services"]["api"]["cap_drop"] == ["ALL"]
