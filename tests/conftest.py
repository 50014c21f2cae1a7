"""Test policy shared by every test module.

A test that needs something this machine lacks (root, bpftrace, docker) calls
``require(condition, what_to_do)``: it skips on a developer's machine but FAILS in CI
(``CI=true``), so a missing prerequisite can never pass silently. As a second guard,
a CI session with any skipped test exits non-zero.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def root_and_bpftrace():
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-host.sh does it)")


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
