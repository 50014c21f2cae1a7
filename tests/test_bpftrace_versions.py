"""bpftrace 0.17 (the host's, bookworm) and 0.23 (a Debian trixie root, scripts/trixie-bpftrace.sh).

Real binaries on the real kernel: a child makes a known number of write() calls and both
versions must count them exactly, in a map and through printf. The trixie wrapper must keep
the PID it was started with (the collector's ``exec "$@" "$$"``), pass signals, argv and
stdio through, and leave no mount behind. The root is built when missing (about a minute
on a fresh machine with a nearby mirror; scripts/test.sh builds it before pytest).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ROOT
from syswatch.collector import bpfversion
from tests.conftest import have, is_root, require

SCRIPT = ROOT / "scripts" / "trixie-bpftrace.sh"
WRITES = 137          # the child's write() calls of WRITE_SIZE bytes each
WRITE_SIZE = 7

# the child waits for one byte on stdin, then writes WRITES x WRITE_SIZE bytes to /dev/null
CHILD = f"""
import os
fd = os.open("/dev/null", os.O_WRONLY)
os.read(0, 1)
for _ in range({WRITES}):
    os.write(fd, b"x" * {WRITE_SIZE})
"""

# $1: the child's pid. Map counts (in the kernel) and one printf per returned write; bpftrace
# exits by itself when the child has exited (then prints the maps: the output is complete).
COUNT_PROGRAM = f"""
BEGIN {{ printf("ready\\n"); }}
tracepoint:syscalls:sys_enter_write /pid == $1 && args->count == {WRITE_SIZE}/ {{ @calls = count(); }}
tracepoint:syscalls:sys_exit_write /pid == $1 && args->ret == {WRITE_SIZE}/ {{
    @bytes = sum(args->ret);
    printf("w %d\\n", args->ret);
}}
tracepoint:sched:sched_process_exit /pid == $1/ {{ exit(); }}
"""


# ---------------------------------------------------------------------------------------------
# version parsing (no root needed)

@pytest.mark.parametrize("text, want", [
    ("bpftrace v0.17.0\n", (0, 17, 0)),
    ("bpftrace v0.23.2\n", (0, 23, 2)),
    ("bpftrace v0.21.0-167-g1a2b3c4d\n", (0, 21, 0)),
    ("WARNING: something first\nbpftrace v0.20\n", (0, 20, 0)),
    ("bpftrace 1.2.3", (1, 2, 3)),
])
def test_parse_version_lines(text, want):
    v = bpfversion.parse(text)
    assert v.key == want
    assert v.raw.startswith("bpftrace")
    assert str(v) == "%d.%d.%d" % want


@pytest.mark.parametrize("text", ["", "v0.23.2", "Usage: bpftrace [options]", "bpftrace version unknown"])
def test_parse_refuses_other_output(text):
    with pytest.raises(bpfversion.BpftraceVersionError):
        bpfversion.parse(text)


def test_capabilities_differ_between_017_and_023():
    old, new = bpfversion.parse("bpftrace v0.17.0"), bpfversion.parse("bpftrace v0.23.2")
    assert old < new
    for prop in ("ringbuf_output", "args_dot", "config_block", "fexit_alias", "delete_with_key_args",
                 "map_key_strings_escaped_twice", "line_buffering_flag"):
        assert getattr(old, prop) is False and getattr(new, prop) is True, prop


def test_detect_reports_a_missing_or_foreign_binary(tmp_path):
    with pytest.raises(bpfversion.BpftraceVersionError, match="no such file"):
        bpfversion.detect(str(tmp_path / "nope"))
    fake = tmp_path / "fake"
    fake.write_text("#!/bin/sh\necho 'not a tracer'\n")
    fake.chmod(0o755)
    with pytest.raises(bpfversion.BpftraceVersionError, match="no bpftrace version"):
        bpfversion.detect(str(fake))
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'broken' >&2\nexit 3\n")
    failing.chmod(0o755)
    with pytest.raises(bpfversion.BpftraceVersionError, match="status 3: broken"):
        bpfversion.detect(str(failing))


def test_check_of_an_empty_cache_says_how_to_build(tmp_path):
    env = dict(os.environ, SYSWATCH_TRIXIE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(["bash", str(SCRIPT), "--check"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "run scripts/trixie-bpftrace.sh" in proc.stderr
    proc = subprocess.run(["bash", str(SCRIPT), "--print-path"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.stdout.strip() == str(tmp_path / "cache" / "bin" / "bpftrace")
    assert not (tmp_path / "cache").exists(), "--check/--print-path must build nothing"


def test_failed_build_leaves_nothing_behind(tmp_path):
    require(is_root(), "run as root (debootstrap needs it): sudo scripts/test.sh")
    require(have("debootstrap"), "install debootstrap: apt-get install -y debootstrap (scripts/setup-host.sh does it)")
    cache = tmp_path / "cache"
    env = dict(os.environ, SYSWATCH_TRIXIE_CACHE=str(cache), SYSWATCH_MIRROR="http://127.0.0.1:9/debian")
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "debootstrap failed" in proc.stderr and "http://127.0.0.1:9/debian" in proc.stderr, proc.stderr
    assert sorted(p.name for p in cache.iterdir()) == [".lock"], "no root, no wrapper, no build directory"
    assert str(cache) not in Path("/proc/self/mountinfo").read_text()


def test_help_and_bad_arguments():
    proc = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "SYSWATCH_TRIXIE_CACHE" in proc.stdout and "--print-path" in proc.stdout
    proc = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "unknown argument '--bogus'" in proc.stderr
    env = dict(os.environ, SYSWATCH_TRIXIE_CACHE="relative/dir")
    proc = subprocess.run(["bash", str(SCRIPT), "--check"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "must be an absolute path" in proc.stderr


# ---------------------------------------------------------------------------------------------
# the real binaries

@pytest.fixture(scope="module")
def trixie_bpftrace() -> str:
    """The wrapper's path; builds the trixie root when it is missing (timed: see the log)."""
    require(is_root(), "run as root (debootstrap and bpftrace need it): sudo scripts/test.sh")
    require(have("debootstrap"), "install debootstrap: apt-get install -y debootstrap (scripts/setup-host.sh does it)")
    require(have("unshare"), "install util-linux (unshare)")
    start = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1200)
    took = time.monotonic() - start
    assert proc.returncode == 0, f"scripts/trixie-bpftrace.sh failed after {took:.0f} s:\n{proc.stderr[-3000:]}"
    path = proc.stdout.strip().splitlines()[-1]
    print(f"trixie bpftrace ready in {took:.1f} s: {path}\n{proc.stderr.strip()}")
    return path


@pytest.fixture(scope="module")
def host_bpftrace() -> str:
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-test.sh does it)")
    return "bpftrace"


def _upstream(deb_version: str) -> tuple[int, ...]:
    """'0.23.2-1' -> (0, 23, 2); '0.17.0-1+b1' -> (0, 17, 0)."""
    core = deb_version.split(":")[-1].split("-")[0].split("+")[0]
    return tuple(int(x) for x in core.split(".")[:3])


def _dpkg_version(status: Path) -> str:
    """bpftrace's Version in a dpkg status file."""
    for block in status.read_text().split("\n\n"):
        if "Package: bpftrace\n" in block + "\n":
            return next(ln.split(": ", 1)[1] for ln in block.splitlines() if ln.startswith("Version: "))
    raise AssertionError(f"bpftrace is not in {status}")


def test_detect_the_host_bpftrace(host_bpftrace):
    v = bpfversion.detect(host_bpftrace)
    assert v.key == _upstream(_dpkg_version(Path("/var/lib/dpkg/status")))
    assert v.raw == f"bpftrace v{v}"


def test_detect_the_trixie_bpftrace(trixie_bpftrace):
    v = bpfversion.detect(trixie_bpftrace)
    root = _root_of(trixie_bpftrace)
    assert v.key == _upstream(_dpkg_version(root / "var/lib/dpkg/status"))
    assert v.at_least(0, 23) and v.ringbuf_output and v.args_dot, v


def test_build_is_idempotent_and_quick(trixie_bpftrace):
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == trixie_bpftrace
    assert "root present" in proc.stderr and "debootstrap" not in proc.stderr


def _root_of(wrapper: str) -> Path:
    """The trixie root a wrapper runs (its "# root: PATH (packages: ...)" line)."""
    m = re.search(r"^# root: (/\S+) ", Path(wrapper).read_text(), re.M)
    assert m, f"no '# root:' line in {wrapper}"
    return Path(m.group(1))


def _mount_lines() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def test_wrapper_keeps_the_pid_and_passes_argv_and_stdio(trixie_bpftrace, tmp_path):
    before = _mount_lines()
    prog = 'BEGIN { printf("pid=%d arg=%d str=%s\\n", pid, $1, str($2)); exit(); }'
    out = tmp_path / "out.txt"
    # exactly how collector/program.py starts bpftrace: the shell's $$ is bpftrace's PID
    proc = subprocess.run(["/bin/sh", "-c", 'echo "shell=$$" >&2; exec "$@" "$$"', "sh",
                           trixie_bpftrace, "-o", str(out), "-e", prog.replace("$1, str($2)", "$2, str($1)"),
                           "hello world"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shell_pid = int(next(ln for ln in proc.stderr.splitlines() if ln.startswith("shell="))[6:])
    # -o FILE is a host path (the wrapper leaves the host's filesystem in place apart from /usr)
    assert f"pid={shell_pid} arg={shell_pid} str=hello world" in out.read_text()
    assert _mount_lines() == before, "the wrapper's mounts must not reach the host's mount namespace"
    assert not any(str(_root_of(trixie_bpftrace)) in ln for ln in _mount_lines())


def test_wrapper_passes_stdin_and_exit_status(trixie_bpftrace):
    # bpftrace -c runs a command as its child: that child inherits the stdin given to the wrapper
    proc = subprocess.run([trixie_bpftrace, "-c", "/bin/cat", "-e", "BEGIN { }"], input="through stdin\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "through stdin" in proc.stdout
    bad = subprocess.run([trixie_bpftrace, "-e", "this is not a program"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "ERROR: unexpected end of file" in bad.stderr, bad.stderr


def _start(binary: str, program: str, *args: str, out: Path) -> subprocess.Popen:
    """bpftrace -f json PROGRAM ARGS with stdout to ``out``; returns once BEGIN printed "ready"."""
    fo = open(out, "wb")
    proc = subprocess.Popen([binary, "-f", "json", "-e", program, *args], stdout=fo, stderr=subprocess.PIPE)
    fo.close()
    deadline = time.monotonic() + 120
    while '"ready\\n"' not in out.read_text(errors="replace"):
        if proc.poll() is not None:
            raise AssertionError(f"{binary} exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{binary} did not print its BEGIN line within 120 s")
        time.sleep(0.05)
    return proc


def _threads(pid: int) -> str:
    """Where each thread of ``pid`` waits: for the message of a hung bpftrace."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.append(f"{task.name} {(task / 'comm').read_text().strip()} wchan={(task / 'wchan').read_text()}")
        except OSError:
            pass
    return "; ".join(out)


def _stop(proc: subprocess.Popen, sig: int | None = signal.SIGINT, timeout: float = 60) -> tuple[int, str]:
    """Send ``sig`` (None: bpftrace exits by itself) and wait; a bpftrace still there after
    ``timeout`` is killed and reported with where its threads waited."""
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    hung = ""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = f"bpftrace {proc.pid} still running {timeout:.0f} s after {sig!r}: {_threads(proc.pid)}"
        proc.kill()
        proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    assert not hung, f"{hung}\nstderr: {err[-1000:]}"
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_wrapper_passes_signals_to_bpftrace(trixie_bpftrace, tmp_path, sig):
    out = tmp_path / "out.json"
    proc = _start(trixie_bpftrace, 'BEGIN { printf("ready\\n"); } END { printf("end ran\\n"); }', out=out)
    assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "bpftrace"
    code, err = _stop(proc, sig)
    assert code == 0, err
    assert '"end ran\\n"' in out.read_text(), "bpftrace's END probe ran: the signal reached bpftrace itself"


@pytest.mark.parametrize("which", ["host", "trixie"])
def test_exact_write_count(which, request, tmp_path):
    binary = request.getfixturevalue("host_bpftrace" if which == "host" else "trixie_bpftrace")
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE)
    out = tmp_path / "out.json"
    try:
        proc = _start(binary, COUNT_PROGRAM, str(child.pid), out=out)
        child.stdin.write(b"g")
        child.stdin.close()
        assert child.wait(timeout=60) == 0
        code, err = _stop(proc, sig=None)   # exit() on the child's exit; then every map is printed
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert code == 0, err
    records = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
    maps = {name: value for r in records if r["type"] == "map" for name, value in r["data"].items()}
    printed = [r for r in records if r["type"] == "printf" and r["data"] == f"w {WRITE_SIZE}\n"]
    lost = sum(r["data"]["events"] for r in records if r["type"] == "lost_events")
    assert maps.get("@calls") == WRITES, records[-5:]
    assert maps.get("@bytes") == WRITES * WRITE_SIZE, records[-5:]
    assert lost == 0 and len(printed) == WRITES, f"printf records {len(printed)}, lost {lost}"
