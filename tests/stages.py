"""Which set-up stages a pytest selection needs: scripts/test.sh asks before it sets anything up.

    python3 -m pytest -p tests.stages --collect-only -q [the selection's arguments]

prints one line, ``SYSWATCH-STAGES: <stage> ...``, after pytest has collected and deselected
(-m, -k, paths), so ``-m unit`` or one module gets only what those tests use. How a test tells:

    unit marker                      nothing (in-process; the Python packages are installed first)
    any other test                   host (setup-host.sh) and test (setup-test.sh)
    docker marker, or a module whose
      source uses the compose helpers  base-image (build-base-image.sh)
    the bpftrace_bin or
      trixie_bpftrace fixture, or a
      module whose source names the
      trixie bpftrace                  trixie (trixie-bpftrace.sh)
    vm marker                        vm (the kprobe VM's root, kernel-vm.sh --build-only: ~1 GB)
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

STAGES = ("host", "test", "base-image", "trixie", "vm")


def needs(item) -> set[str]:
    if item.get_closest_marker("unit") is not None:
        return set()
    got = {"host", "test"}
    source = _source(str(getattr(item, "fspath", "")))
    fixtures = set(getattr(item, "fixturenames", ()))
    if item.get_closest_marker("docker") is not None or any(
            w in source for w in ("composestack", "harness.compose", "compose_command", "ComposeStack")):
        got.add("base-image")
    if fixtures & {"bpftrace_bin", "trixie_bpftrace"} or "trixie_bpftrace" in source or "trixie-bpftrace" in source:
        got.add("trixie")
    if item.get_closest_marker("vm") is not None:
        got.add("vm")
    return got


@functools.lru_cache(maxsize=None)
def _source(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def pytest_collection_finish(session):
    wanted: set[str] = set()
    for item in session.items:
        wanted |= needs(item)
    print(f"\nSYSWATCH-STAGES: {' '.join(s for s in STAGES if s in wanted)} "
          f"(for {len(session.items)} selected tests)", file=sys.stdout, flush=True)
