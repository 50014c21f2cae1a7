"""A missing Python dependency is one line naming the package to install, and exit status 2, in every
entry point (issue 31). Each program is started for real in an interpreter that cannot import the
package: a sitecustomize on PYTHONPATH puts a finder first on sys.meta_path that refuses it, as a
venv or a Debian install without that package would."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness import ROOT
from syswatch.shared import deps

# What each entry point imports, as it is started in a checkout (the console scripts of an installed
# wheel import the same modules: syswatch-api runs syswatch.api.server's module code first).
ENTRY_POINTS = {
    "syswatch-collector": ([sys.executable, "-m", "collector.collector", "-V"], ["zmq"]),
    "syswatch-api": ([sys.executable, "-m", "api.server", "-V"], ["zmq", "bottle", "waitress", "prometheus_client"]),
    "syswatch-tail": ([sys.executable, "subscribers/tail.py", "-V"], ["zmq"]),
    "syswatch-top": ([sys.executable, "subscribers/top.py", "-V"], ["zmq"]),
    "python3 -m syswatch.shared.curve": ([sys.executable, "-m", "syswatch.shared.curve", "keys", "x"], ["zmq"]),
}

# Refuses the modules named in SYSWATCH_TEST_BLOCK (comma separated); a leading "!" makes the import
# fail as a broken install does (ImportError from inside the package) instead of a missing one.
SITECUSTOMIZE = '''
import os, sys
_spec = [n for n in os.environ.get("SYSWATCH_TEST_BLOCK", "").split(",") if n]
_missing = {n for n in _spec if not n.startswith("!")}
_broken = {n[1:] for n in _spec if n.startswith("!")}
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in _missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if top in _broken:
            raise ImportError("libzmq.so.5: cannot open shared object file: No such file or directory",
                              name="zmq.backend.cython")
        return None
sys.meta_path.insert(0, _Refuse())
'''


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("block")
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return d


def run_without(blocker: Path, argv: list[str], block: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(blocker), "SYSWATCH_TEST_BLOCK": block}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("program", list(ENTRY_POINTS))
def test_each_entry_point_names_each_missing_package_and_exits_2(blocker, program):
    argv, modules = ENTRY_POINTS[program]
    for module in modules:
        res = run_without(blocker, argv, module)
        req, deb = deps.REQUIREMENTS[module]
        want = re.escape(f"error: {program} needs the Python package {req.split('>')[0].split('<')[0]}, "
                         f"which is not installed: pip install '{req}' (Debian: apt-get install {deb})")
        assert res.returncode == 2, (module, res.returncode, res.stdout, res.stderr)
        assert re.fullmatch(want + r"\n", res.stderr), (module, res.stderr)   # one line, no traceback
        assert res.stdout == "", (module, res.stdout)


def test_a_broken_package_is_one_line_too(blocker):
    res = run_without(blocker, ENTRY_POINTS["syswatch-tail"][0], "!zmq")
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("error: syswatch-tail cannot import the Python package pyzmq (libzmq.so.5: ")
    assert "pip install 'pyzmq>=24,<28'" in res.stderr


def test_with_every_package_present_the_entry_points_start(blocker):
    for program, (argv, _) in ENTRY_POINTS.items():
        if "curve" in program:
            continue
        res = run_without(blocker, argv, "")
        assert res.returncode == 0 and "0." in res.stdout, (program, res.stdout, res.stderr)


@pytest.mark.unit
def test_the_table_matches_pyprojects_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(req for req, _ in deps.REQUIREMENTS.values())
