"""The installed package (issue 13): build the wheel, install it into a fresh virtual environment
outside the checkout, and run the console scripts from there, the collector as root with real
bpftrace and the API, end to end.

The venv has no system site-packages and its working directory is a temporary one, so nothing
of the checkout can leak in: what runs is what the wheel holds plus its declared dependencies
(pip fetches them from the index, as a user's install would).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

from harness import ROOT
from harness.procs import die_with_parent, free_port
from syswatch import __version__
from tests.conftest import have, is_root, require

SCRIPTS = ("syswatch-collector", "syswatch-api", "syswatch-tail", "syswatch-top", "syswatch-nats-bridge")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the checkout, so the build cannot leave build/ or *.egg-info in it.
    src = out / "src"
    shutil.copytree(ROOT, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.sqlite3*"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)], timeout=300)
    wheels = list(out.glob("syswatch-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv (no system site-packages) with the wheel and its dependencies installed."""
    require(subprocess.run([sys.executable, "-c", "import ensurepip"]).returncode == 0,
            "python3 -m venv needs ensurepip: apt-get install -y python3-venv (scripts/setup-host.sh does it)")
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", str(env_dir)], timeout=120)
    run([str(env_dir / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)], timeout=600)
    return env_dir


def run(argv: list[str], timeout: float = 60, cwd: Path | None = None, check: bool = True,
        **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=clean_env(), **kw)
    if check:
        assert out.returncode == 0, f"{argv} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


def clean_env() -> dict:
    """No PYTHONPATH and no SYSWATCH_* settings: only the venv's own packages count."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SYSWATCH_")}


def test_wheel_holds_one_top_level_package_and_the_programs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"syswatch", f"syswatch-{__version__}.dist-info"}, top
    for data in ("syswatch/collector/syscalls.bt", "syswatch/collector/syscalls_counts.bt",
                 "syswatch/api/static/index.html", "syswatch/api/static/dashboard.js",
                 "syswatch/api/static/vendor/uplot/uPlot.iife.min.js",
                 "syswatch/api/static/vendor/uplot/LICENSE"):
        assert data in names, data
    assert not [n for n in names if n.startswith(("syswatch/tests", "syswatch/bench"))]
    entry_points = zipfile.ZipFile(wheel).read(f"syswatch-{__version__}.dist-info/entry_points.txt").decode()
    for script in SCRIPTS:
        assert f"{script} = syswatch." in entry_points, entry_points



def test_wheel_holds_every_file_of_the_mapped_directories(wheel):
    """Whatever lands in collector/, api/ (the dashboard's assets at any depth), shared/, subscribers/ or
    syswatch/ is in the wheel: package-data globs that miss a new file fail here, not on a user's machine."""
    names = set(zipfile.ZipFile(wheel).namelist())
    mapping = {"syswatch": "syswatch", "collector": "syswatch/collector", "api": "syswatch/api",
               "shared": "syswatch/shared", "subscribers": "syswatch/subscribers"}
    missing = []
    for src, dest in mapping.items():
        for path in (ROOT / src).rglob("*"):
            rel = path.relative_to(ROOT / src)
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in (".pyc", ".pyo") \
                    and ".sqlite3" not in path.name:    # what the wheel fixture leaves out of its copy
                if f"{dest}/{rel.as_posix()}" not in names:
                    missing.append(f"{src}/{rel.as_posix()}")
    assert not missing, missing

def test_console_scripts_work_from_any_directory(venv, tmp_path):
    for script in SCRIPTS:
        out = run([str(venv / "bin" / script), "--version"], cwd=tmp_path)
        assert out.stdout.strip() == f"{script} {__version__}"
        assert f"usage: {script}" in run([str(venv / "bin" / script), "--help"], cwd=tmp_path).stdout
        bad = run([str(venv / "bin" / script), "--no-such-flag"], cwd=tmp_path, check=False)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, (script, bad.stderr)


def test_the_venv_sees_syswatch_from_site_packages_and_no_generic_names(venv, tmp_path):
    code = ("import importlib.util, syswatch, syswatch.shared.protocol as p;"
            "print(syswatch.__file__); print(p.VERSION);"
            "print([n for n in ('api', 'shared', 'collector', 'subscribers') if importlib.util.find_spec(n)])")
    lines = run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path).stdout.splitlines()
    assert lines[0].startswith(str(venv)) and "site-packages" in lines[0], lines
    assert lines[1] == "2" and lines[2] == "[]", lines


def test_installed_collector_and_api_end_to_end(venv, tmp_path):
    """syswatch-collector (root, real bpftrace) -> syswatch-api and syswatch-tail, all from the venv:
    a child with its own name writes a known number of times, and the API counts exactly that."""
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-test.sh does it)")
    bind, api_port = f"tcp://127.0.0.1:{free_port()}", free_port()
    comm, writes = "pkgtest-writer", 300
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], name: str) -> subprocess.Popen:
        proc = subprocess.Popen(argv, cwd=tmp_path, env={**clean_env(), "PYTHONUNBUFFERED": "1"},
                                stdout=open(tmp_path / f"{name}.out", "w"), stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)
        procs.append(proc)
        return proc

    def output(name: str) -> str:
        return (tmp_path / f"{name}.out").read_text()

    def wait(predicate, what: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not predicate():
            for p in procs:
                assert p.poll() is None or p.args[0].endswith("syswatch-tail"), \
                    f"{p.args[0]} exited {p.returncode} while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    try:
        start([str(venv / "bin" / "syswatch-collector"), "--bind", bind, "-n", comm, "--echo-rate", "0"], "collector")
        wait(lambda: "Monitoring sys_read and sys_write calls..." in output("collector"), "the collector to start")
        start([str(venv / "bin" / "syswatch-api"), "--port", str(api_port), "--collector", bind,
               "--db", str(tmp_path / "ips.sqlite3")], "api")
        base = f"http://127.0.0.1:{api_port}"

        def api_connected() -> bool:
            try:
                return requests.get(f"{base}/healthz", timeout=2).json().get("collector_connected") is True
            except (requests.ConnectionError, ValueError):
                return False
        wait(api_connected, "the API to connect to the collector")
        tail = start([str(venv / "bin" / "syswatch-tail"), "-e", bind, "--json", "--count", "5", "-n", comm], "tail")
        time.sleep(1)    # let the subscriptions arrive before the burst (ZeroMQ's slow joiner)

        writer = ("import ctypes, os; ctypes.CDLL(None).prctl(15, b'%s', 0, 0, 0)\n"
                  "fd = os.open('/dev/null', os.O_WRONLY)\n"
                  "for _ in range(%d): os.write(fd, b'x')\n") % (comm, writes)
        subprocess.run([sys.executable, "-c", writer], check=True, timeout=60)

        def counted() -> int:
            body = requests.get(f"{base}/events", params={"comm": comm, "syscall": "write", "limit": 1000},
                                timeout=5).json()
            return body["count"]
        wait(lambda: counted() >= writes, f"{writes} write events in the API", timeout=30)
        time.sleep(1.5)   # a late duplicate would show now
        assert counted() == writes
        assert tail.wait(30) == 0, output("tail")
        lines = [json.loads(line) for line in output("tail").splitlines() if line.startswith("{")]
        assert len(lines) == 5 and {e["comm"] for e in lines} == {comm}, output("tail")
        added = requests.post(f"{base}/add_ips", json={"add_ips": [1, "192.0.2.7"]}, timeout=5)
        assert added.status_code == 200 and added.json()["total_ips"] == 2, added.text
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    assert procs[0].returncode == 0, output("collector")


# -- what the installed programs tell a user to run must exist in the install ------------------
def suggested_modules(text: str) -> list[str]:
    """Every ``python -m MODULE`` / ``python3 -m MODULE`` a message or help text tells the user to run."""
    import re
    return re.findall(r"python3? -m ([\w.]+)", text)


def assert_runnable_in(venv: Path, text: str, tmp_path: Path) -> None:
    """Each module the text names can be run with the venv's python (outside any checkout)."""
    for module in suggested_modules(text):
        res = run([str(venv / "bin" / "python"), "-m", module, "--help"], cwd=tmp_path, check=False)
        assert res.returncode == 0, f"the text says to run python -m {module}, which fails installed:\n" \
                                    f"{res.stderr}\n--- the text:\n{text}"


def test_installed_collector_not_root_names_a_command_of_the_install(venv, tmp_path):
    """An unprivileged user running the installed script is told to run it as root, with a command
    that exists there (not the checkout's python -m collector.collector), by its path: sudo's
    secure_path does not hold the venv's bin/."""
    require(is_root(), "needs root to start an unprivileged process (unshare --user)")
    require(have("unshare"), "needs util-linux unshare")
    for argv, want in (([str(venv / "bin" / "syswatch-collector")], f"sudo {venv / 'bin' / 'syswatch-collector'}"),
                       ([str(venv / "bin" / "python"), "-m", "syswatch.collector.collector"],
                        "-m syswatch.collector.collector")):
        res = run(["unshare", "--user", *argv], cwd=tmp_path, check=False)
        assert res.returncode == 2 and "must run as root" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr, res.stderr
        assert want in res.stderr, res.stderr
        assert_runnable_in(venv, res.stderr, tmp_path)


def test_installed_curve_errors_name_a_key_command_of_the_install(venv, tmp_path):
    """A missing or incomplete CurveZMQ set-up: the error says how to make keys, and that command
    works in the install (python -m shared.curve does not: no top-level shared is installed)."""
    keys = tmp_path / "keys"
    res = run([str(venv / "bin" / "python"), "-m", "syswatch.shared.curve", str(keys), "server"], cwd=tmp_path)
    assert (keys / "server.key").is_file() and (keys / "server.key_secret").is_file(), res.stdout
    assert_runnable_in(venv, run([str(venv / "bin" / "python"), "-m", "syswatch.shared.curve", "--help"],
                                 cwd=tmp_path).stdout, tmp_path)
    for script, env in (("syswatch-api", {"SYSWATCH_CURVE_SERVER_KEY": str(tmp_path / "no-such.key")}),
                        ("syswatch-tail", {"SYSWATCH_CURVE_SERVER_KEY": str(keys / "server.key")})):
        res = subprocess.run([str(venv / "bin" / script), "--port", str(free_port())] if script == "syswatch-api"
                             else [str(venv / "bin" / script), "-d", "1"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, env={**clean_env(), **env}, stdin=subprocess.DEVNULL)
        assert res.returncode == 2 and "Traceback" not in res.stderr, (script, res.stderr)
        assert suggested_modules(res.stderr), (script, res.stderr)
        assert_runnable_in(venv, res.stderr, tmp_path)


def test_installed_scripts_exit_2_on_a_bad_flag_or_environment(venv, tmp_path):
    """Every set-up mistake a user makes with flags or environment variables is exit status 2 and one
    error line, as the collector and the API do for the rest (not 1, which means "failed at run time")."""
    (tmp_path / "empty").write_text("")
    (tmp_path / "spaced").write_text("has space\n")
    cases = [
        ("syswatch-collector", ["-d", "1"], {"SYSWATCH_MODE": "x"}),
        ("syswatch-collector", ["-d", "1"], {"SYSWATCH_CURVE_SERVER_KEY": str(tmp_path / "none.key_secret"),
                                             "SYSWATCH_CURVE_CLIENTS": str(tmp_path)}),
        ("syswatch-api", [], {"SYSWATCH_MAX_ITEMS": "abc"}),
        ("syswatch-api", [], {"SYSWATCH_CURVE_SERVER_KEY": str(tmp_path / "none.key")}),
        ("syswatch-api", ["--token-file", str(tmp_path / "missing")], {}),
        ("syswatch-api", ["--token-file", str(tmp_path / "empty")], {}),
        ("syswatch-api", ["--token-file", str(tmp_path / "spaced")], {}),
        ("syswatch-api", [], {"SYSWATCH_TOKEN": "has space"}),
        ("syswatch-tail", ["-d", "1"], {"SYSWATCH_COLLECTOR": "garbage"}),
        ("syswatch-tail", ["-d", "1"], {"SYSWATCH_CURVE_SERVER_KEY": str(tmp_path / "none.key")}),
        ("syswatch-top", ["--once"], {"SYSWATCH_COLLECTOR": "garbage"}),
        ("syswatch-top", ["--once"], {"SYSWATCH_CURVE_SERVER_KEY": str(tmp_path / "none.key")}),
        ("syswatch-api", ["--nats", "nats://127.0.0.1:1", "--nats-ca", str(tmp_path / "missing")], {}),
        ("syswatch-api", [], {"SYSWATCH_NATS": "http://nats:4222"}),
        ("syswatch-nats-bridge", [], {}),                                  # no --nats
        ("syswatch-nats-bridge", [], {"SYSWATCH_NATS": "http://nats:4222"}),
        ("syswatch-nats-bridge", ["--nats", "nats://127.0.0.1:1", "--nats-ca", str(tmp_path / "missing")], {}),
        ("syswatch-nats-bridge", ["--nats", "nats://127.0.0.1:1"], {"SYSWATCH_NATS_MAX_BYTES": "lots"}),
    ]
    wrong = []
    for script, args, env in cases:
        if script == "syswatch-collector" and not is_root():
            continue    # unprivileged, it stops at "must run as root" (exit 2 too, checked elsewhere)
        argv = [str(venv / "bin" / script), *args]
        if script == "syswatch-api":    # should it start after all, it must not take a port in use
            argv += ["--port", str(free_port()), "--db", str(tmp_path / "ips.sqlite3")]
        try:
            res = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30,
                                 env={**clean_env(), **env}, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        except subprocess.TimeoutExpired:    # run() killed it: it started instead of refusing
            wrong.append((script, args, env, "started", ""))
            continue
        if res.returncode != 2 or "Traceback" in res.stderr or "error" not in res.stderr:
            wrong.append((script, args, env, res.returncode, res.stderr.strip()))
    assert not wrong, "\n".join(map(str, wrong))


def test_sdist_builds_the_same_wheel_and_ships_no_half_test_suite(wheel, tmp_path):
    """The sdist (what `pip download` or an index would hand out) must build the very wheel the checkout
    builds: same files (the .bt programs, the dashboard, syswatch/__init__.py). Its tests/ would be
    unusable without conftest.py and the helpers (setuptools' default picks tests/test_*.py only), so
    it ships either all of them or none."""
    import tarfile
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.sqlite3*",
                                                             "build", "*.egg-info"))
    out = tmp_path / "sdist"
    # As `python -m build --sdist` does: the build-system requirement, fresh from the index, in its own venv.
    backend = tmp_path / "backend"
    run([sys.executable, "-m", "venv", str(backend)], timeout=120)
    requires = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    run([str(backend / "bin" / "pip"), "install", "-q", "--upgrade", "--disable-pip-version-check", *requires],
        timeout=300)     # --upgrade: the venv comes with an older setuptools; build would fetch the newest
    run([str(backend / "bin" / "python"), "-c",
         f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"], cwd=src, timeout=300)
    sdists = list(out.glob("syswatch-*.tar.gz"))
    assert len(sdists) == 1, sdists
    with tarfile.open(sdists[0]) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
        # our own archive; filter= only where this Python has it (Debian 12's 3.11.2 does not)
        tar.extractall(tmp_path / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    shipped_tests = {n for n in names if n.startswith("tests/") and n.endswith(".py")}
    all_tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("*.py")}
    assert shipped_tests in (set(), all_tests), sorted(all_tests - shipped_tests)
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "w"), str(unpacked)],
        timeout=300)
    (rebuilt,) = (tmp_path / "w").glob("syswatch-*.whl")
    assert sorted(zipfile.ZipFile(rebuilt).namelist()) == sorted(zipfile.ZipFile(wheel).namelist())


def test_a_flag_beats_a_bad_environment_variable_and_help_still_shows(venv, tmp_path):
    """Flags beat the environment (CONTRACT): a bad variable the command line overrides is never read,
    so it cannot stop the program; and --help / --version, which read none, work whatever the
    environment holds (the way to learn how to fix it). Left alone, the bad variable is still an error."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    bad = {"SYSWATCH_COLLECTOR": "garbage", "SYSWATCH_PORT": "abc", "SYSWATCH_MODE": "x", "SYSWATCH_PID": "abc"}
    for script in SCRIPTS:
        for flag in ("--help", "--version"):
            res = subprocess.run([str(venv / "bin" / script), flag], cwd=tmp_path, capture_output=True, text=True,
                                 timeout=30, env={**clean_env(), **bad})
            assert res.returncode == 0 and script in res.stdout, (script, flag, res.stderr)
    # tail and top read SYSWATCH_PID too (every flag has its variable): -p overrides it here
    runs = [("syswatch-tail", ["-e", endpoint, "-p", "1", "-d", "1"]),
            ("syswatch-top", ["-e", endpoint, "-p", "1", "--once"])]
    if is_root() and have("bpftrace"):
        runs.append(("syswatch-collector", ["--bind", endpoint, "--mode", "events", "-p", "1", "-d", "1",
                                            "--echo-rate", "0"]))
    for script, args in runs:
        res = subprocess.run([str(venv / "bin" / script), *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=90, env={**clean_env(), **bad}, stdin=subprocess.DEVNULL,
                             preexec_fn=die_with_parent)
        assert "is invalid" not in res.stderr and "Traceback" not in res.stderr, (script, res.stderr)
        # syswatch-top waits for a collector's first answer (none here): any failure but the variable's
        assert res.returncode == 0 or script == "syswatch-top" and "no collector answered" in res.stderr, \
            (script, res.returncode, res.stderr)
    api = subprocess.Popen([str(venv / "bin" / "syswatch-api"), "--port", str(free_port()), "--collector", endpoint,
                            "--db", str(tmp_path / "ips.sqlite3")], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env={**clean_env(), **bad}, preexec_fn=die_with_parent)
    try:
        first = api.stdout.readline()
        assert first.startswith("API Server starting on"), first + api.stdout.read()
    finally:
        api.terminate()
        try:
            api.wait(15)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()
    # without the overriding flag the variable is used, and is an error naming it
    res = subprocess.run([str(venv / "bin" / "syswatch-tail"), "-d", "1"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=30, env={**clean_env(), **bad})
    assert res.returncode == 2 and "SYSWATCH_COLLECTOR='garbage' is invalid" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


# --- one importable name per module in a checkout (docs/TESTING.md) -------------------------------

BARE = ("collector", "api", "shared", "subscribers")


def test_syswatch_holds_relative_links_to_the_top_level_folders():
    for name in BARE:
        link = ROOT / "syswatch" / name
        assert link.is_symlink() and os.readlink(link) == f"../{name}", link
        assert (link / "__init__.py").is_file()


@pytest.mark.parametrize("module, argv", [
    ("collector.collector", ["--help"]),
    ("api.server", ["--db", "/nonexistent/ips.sqlite3"]),      # through main: the app is built, then exit 2
    ("subscribers.tail", ["--version"]),
])
def test_the_entry_points_load_every_module_under_its_syswatch_name(module, argv):
    """`python -m collector.collector` runs that file as __main__; every module it loads is syswatch.*,
    the bare name holds nothing but the folder's empty __init__."""
    code = ("import json, runpy, sys\n"
            f"sys.argv = ['x', *{argv!r}]\n"
            "try:\n"
            f"    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
            "except SystemExit:\n"
            "    pass\n"
            "mods = [m for m in sys.modules if m.split('.')[0] in ('syswatch',) + " f"{BARE!r}]\n"
            "print(json.dumps(sorted(mods)), file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    loaded = json.loads(out.stderr.strip().splitlines()[-1])
    assert [m for m in loaded if not m.startswith("syswatch")] == [module.split(".")[0]], loaded
    assert f"syswatch.{module.split('.')[0]}" in loaded and "syswatch.shared.protocol" in loaded, loaded


@pytest.mark.parametrize("path, source, rule", [
    ("collector/x.py", "from .program import READY\n", "TID252"),
    ("api/x.py", "from . import routes\n", "TID252"),
    ("tests/x.py", "from collector.program import READY\n", "TID251"),
    ("bench/x.py", "import shared.protocol\n", "TID251"),
])
def test_lint_refuses_a_second_name(path, source, rule):
    require(have("ruff") or subprocess.run([sys.executable, "-m", "ruff", "--version"],
                                           capture_output=True).returncode == 0,
            "install ruff: python3 -m pip install -r requirements-dev.txt")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--stdin-filename", path, "-"], input=source,
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and rule in out.stdout, out.stdout + out.stderr
    ok = subprocess.run([sys.executable, "-m", "ruff", "check", "--stdin-filename", path, "-"],
                        input="from syswatch.collector.program import READY\n\nprint(READY)\n", cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout
