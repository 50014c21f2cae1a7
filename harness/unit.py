"""What the systemd units in deploy/systemd say, read as systemd reads them, and the collector's
capability set applied to a process with setpriv (the bounding set CapabilityBoundingSet= or a
container's capability list gives)."""
from __future__ import annotations

from pathlib import Path

from harness import ROOT

SYSTEMD = ROOT / "deploy" / "systemd"
COLLECTOR_UNIT = SYSTEMD / "syswatch-collector.service"


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
    """The collector unit's CapabilityBoundingSet, without the CAP_ prefix (SYS_ADMIN, IPC_LOCK)."""
    caps = parse_unit(COLLECTOR_UNIT)["Service.CapabilityBoundingSet"][0].split()
    return [c.removeprefix("CAP_") for c in caps]


def setpriv(caps: list[str]) -> list[str]:
    """A command prefix: root with only ``caps`` in its bounding set, none inherited, no new privileges."""
    bounding = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    return ["setpriv", "--no-new-privs", f"--bounding-set={bounding}", "--inh-caps=-all"]
