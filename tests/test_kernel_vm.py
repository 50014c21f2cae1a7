"""The kprobe path on a real kernel: scripts/kernel-vm.sh boots Debian's stock kernel (6.1, kprobes)
under QEMU (TCG) with this checkout and runs the collector's real-kernel tests and tests/test_kprobe.py
in it with SYSWATCH_PROBE=kprobe (the PASSES note says why not again with auto).

Marker ``vm``. The first run builds the VM root (debootstrap, a few minutes; cached in
/var/cache/syswatch-vm, or SYSWATCH_VM_CACHE). A missing prerequisite (root, qemu-system-x86,
debootstrap) fails in CI like any other. The guest's pytest summaries are printed at the end of
the session (tests/conftest.py's terminal summary).
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess

import pytest

from harness import ROOT
from tests.conftest import have, is_root, require, vm_report

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SCRIPT = ROOT / "scripts" / "kernel-vm.sh"
# The selection. Under TCG every collector start costs 10-60 s (LLVM compiles the bpftrace program
# in emulation), so the VM runs what the kernel's probe kind can change, and leaves out, by name:
# tests that start no tracing (help, env parsing, root/namespace/filter/bpftrace errors); the
# kprobe program's compile-only check; SIGTERM/SIGINT/SIGKILL/bpftrace-killed/--probe kprobe tests,
# which assert a 2 s stop or are covered by tests/test_kprobe.py without timing; the non-loopback
# warning (probe-independent); and exact host-wide counts at a 0.25 s interval, which the emulated
# guest's slow bpftrace user space cannot keep (see the closing note of issue 10). New tests in
# these modules run in the VM unless they are named here.
NOT_IN_VM = ["help_lists", "env_overrides", "not_root", "other_pid_namespace", "bad_filter", "bpftrace_missing",
             "kprobe_program_compiles", "sigterm_exits_0", "collector_killed", "sigint_exits_0",
             "bpftrace_killed", "explicit_kprobe_fails", "non_loopback_bind", "counts_mode_sums"]
DESELECT = " and ".join(f"not {name}" for name in NOT_IN_VM)
# SYSWATCH_PROBE=kprobe: the collector's real-kernel tests, every kprobe test, and the container mapping of
# every runtime's cgroup layout on the VM's pure cgroup v2 hierarchy (issue 28: users' hosts are pure v2).
# No second pass with SYSWATCH_PROBE=auto: test_kprobe.py's test_auto_picks_kprobe shows that auto (the
# default, and the variable) picks kprobes here, so such a pass ran the same program over the same tests
# again (95 s of CI; `scripts/kernel-vm.sh` alone still runs both).
PASSES = {
    "kprobe": ["tests/test_collector.py", "tests/test_kprobe.py", "tests/test_cgroup_layouts.py", "-k", DESELECT],
}
BUILD_TIMEOUT = int(os.environ.get("SYSWATCH_VM_BUILD_TIMEOUT", "1800"))
RUN_TIMEOUT = int(os.environ.get("SYSWATCH_VM_TIMEOUT", "1800"))


def test_collector_and_kprobe_tests_pass_in_a_kprobe_vm():
    require(is_root(), "run as root (debootstrap and QEMU's images need it): sudo scripts/test.sh")
    for cmd, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("debootstrap", "debootstrap"),
                     ("mkfs.ext4", "e2fsprogs")):
        require(have(cmd), f"install {pkg}: apt-get install -y {pkg} (scripts/setup-test.sh does it)")
    argv = [str(SCRIPT), "--timeout", str(RUN_TIMEOUT), "--build-timeout", str(BUILD_TIMEOUT),
            *[a for probe, args in PASSES.items() for a in ("--pass", f"{probe}:-v --durations=10 {shlex.join(args)}")]]
    # The script has its own hard timeouts; this one is a backstop. Its own session, so that the
    # whole group goes (QEMU also dies with the script: setpriv --pdeathsig).
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BUILD_TIMEOUT + RUN_TIMEOUT + 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    res = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    results = re.findall(r"^\s*SYSWATCH-VM-RESULT probe=(\S+) status=(\d+) seconds=(\d+) summary=(.*)$", out, re.M)
    booted = re.search(r"^\s*SYSWATCH-VM-BOOTED (.*)$", out, re.M)
    stages = [line for line in out.splitlines() if line.startswith("kernel-vm: [") and "python3 -m pytest" not in line]
    vm_report.append(f"kernel-vm.sh exit {res.returncode}; {booted.group(1) if booted else 'guest did not boot'}")
    vm_report.extend(f"SYSWATCH_PROBE={p}: pytest exit {s} in {t}s: {summ}" for p, s, t, summ in results)
    vm_report.extend(stages)
    tail = "\n".join(out.splitlines()[-60:]) + "\n" + res.stderr[-3000:]
    assert res.returncode == 0, f"the VM run failed (exit {res.returncode}); its output ends with:\n{tail}"
    assert booted and "kprobes=yes" in booted.group(1), tail
    # a pure cgroup v2 hierarchy: cgroup2 on /sys/fs/cgroup and no v1 controller mounted
    assert "cgroup=cgroup2fs" in booted.group(1) and " v1=0 " in booted.group(1), booted.group(1)
    assert [r[0] for r in results] == list(PASSES), tail
    n_kprobe_tests = _kprobe_test_count()
    for probe, status, _, summary in results:
        section = out.split(f"pytest with SYSWATCH_PROBE={probe}:", 1)[1].split("SYSWATCH-VM-RESULT", 1)[0]
        assert status == "0", summary
        assert re.search(r"\d+ passed", summary) and not re.search(r"failed|error|skipped", summary), \
            summary
        assert re.search(r"tests/test_collector\.py::\S+ PASSED", section), section[-4000:]
        if "tests/test_cgroup_layouts.py" in PASSES[probe]:
            assert re.search(r"tests/test_cgroup_layouts\.py::test_each_runtimes_layout_maps_to_its_container PASSED",
                             section), section[-4000:]
        if "tests/test_kprobe.py" not in PASSES[probe]:
            continue
        # every kprobe test ran and passed in this pass (pytest -v lines between its start and end)
        passed = re.findall(r"tests/test_kprobe\.py::\S+ PASSED", section)
        assert len(passed) == n_kprobe_tests, f"SYSWATCH_PROBE={probe}: {len(passed)} of {n_kprobe_tests} " \
                                              f"kprobe tests passed:\n{section[-4000:]}"


def _kprobe_test_count() -> int:
    """tests/test_kprobe.py's test items, as pytest collects them (the host deselects them all)."""
    res = subprocess.run(["python3", "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "tests/test_kprobe.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SYSWATCH_VM": "1"})
    n = len(re.findall(r"^tests/test_kprobe\.py::", res.stdout, re.M))
    assert n > 0, res.stdout + res.stderr
    return n
