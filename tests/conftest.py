"""Test policy shared by every test module.

A test that needs something this machine lacks (root, bpftrace, docker) calls
``require(condition, what_to_do)``: it skips on a developer's machine but FAILS in CI
(``CI=true``), so a missing prerequisite can never pass silently. As a second guard,
a CI session with any skipped test exits non-zero.

What the tests start (APIs, collectors, stacks, browsers, workloads) comes from harness/, which
the benchmarks use too. A test marked ``unit`` runs in process: it fails if it starts a process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import compose
from harness.bpftrace import TRIXIE_FIX, trixie_bpftrace

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The tests check the programs' defaults and set what they need themselves: a SYSWATCH_MODE or
# SYSWATCH_PID left in the shell must not change what they test. Kept: how this machine is set
# up (mirrors, dockerd) and which interpreter runs the API.
KEEP_ENV = {"SYSWATCH_TEST_PYTHON", "SYSWATCH_MIRROR", "SYSWATCH_SECURITY_MIRROR", "SYSWATCH_APT_ETC",
            "SYSWATCH_BASE_IMAGE", "SYSWATCH_DOCKERD_LOG", "SYSWATCH_DOCKERD_WAIT", "SYSWATCH_SCREENSHOT",
            "SYSWATCH_PROBE", "SYSWATCH_VM"}   # SYSWATCH_PROBE: the kprobe VM runs the collector tests per probe kind
for _name in [n for n in os.environ if n.startswith("SYSWATCH_") and n not in KEEP_ENV
              and not n.startswith(("SYSWATCH_VM_", "SYSWATCH_TEST_"))]:
    del os.environ[_name]


def require(condition: bool, what: str) -> None:
    """Skip (developer machine) or fail (CI) when ``condition`` is false; ``what`` says how to fix it."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"missing prerequisite in CI: {what}", pytrace=False)
    pytest.skip(what)


def is_root() -> bool:
    return os.geteuid() == 0


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


@pytest.fixture
def root_and_bpftrace():
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-test.sh does it)")


def kernel_has_kprobes() -> bool:
    """CONFIG_KPROBES (with kprobe events): the perf kprobe PMU bpftrace uses, or tracefs' kprobe_events."""
    return any(Path(p).exists() for p in ("/sys/bus/event_source/devices/kprobe",
                                         "/sys/kernel/tracing/kprobe_events",
                                         "/sys/kernel/debug/tracing/kprobe_events"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``kprobe`` need a kernel with kprobes. On one without (this CI machine's) they are
    deselected, not skipped (a skip fails CI): scripts/kernel-vm.sh runs them in a VM with Debian's
    stock kernel, and tests/test_kernel_vm.py checks they ran there. Inside that VM (SYSWATCH_VM=1)
    they are never deselected: a kernel without kprobes there fails them."""
    if os.environ.get("SYSWATCH_VM") or kernel_has_kprobes():
        return
    keep = [item for item in items if item.get_closest_marker("kprobe") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


# Lines the VM test (tests/test_kernel_vm.py) reports: the guest's pytest summaries, stage times.
vm_report: list[str] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if vm_report:
        terminalreporter.section("kprobe VM (scripts/kernel-vm.sh)")
        for line in vm_report:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session, exitstatus):
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        print(f"\nCI: {skipped} test(s) skipped; in CI every test must run", file=sys.stderr)
        session.exitstatus = 1


def require_compose_stack() -> None:
    """What running a compose stack needs (skips locally, fails in CI, saying how to fix it)."""
    why = compose.stack_missing()
    require(why is None, why or "")


def require_nats_server() -> None:
    require(have("nats-server"), "install Debian's nats-server: apt-get install -y nats-server "
                                 "(scripts/setup-test.sh does it)")


def uncaptured_printer(config):
    """print() that shows even while pytest captures output (for timings printed by fixtures)."""
    capture = config.pluginmanager.get_plugin("capturemanager")

    def report(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print("\n" + line)
    return report


class StartsAProcess(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request, monkeypatch):
    """The ``unit`` marker's promise, kept: such a test starting a child process fails."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return

    def refuse(*args, **kwargs):
        raise StartsAProcess(f"{request.node.nodeid} is marked unit but starts a process: {args[:1]!r}")
    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)
    monkeypatch.setattr(os, "posix_spawnp", refuse)
    yield


@pytest.fixture(params=["0.17", "0.23"], scope="session")
def bpftrace_bin(request):
    """The bpftrace the collector runs: bookworm's 0.17 on PATH, and trixie's 0.23 (issue 16)."""
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    if request.param == "0.17":
        require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-test.sh does it)")
        return shutil.which("bpftrace")
    path = trixie_bpftrace()
    require(path is not None, TRIXIE_FIX)
    return path
