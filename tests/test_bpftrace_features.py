"""The collector adapts to what its bpftrace does, not to a list of versions (issue 28).

bpfversion.detect() runs the binary once (bpfversion.probe): the BPF map types it creates tell its
output path (a ring buffer, BPF_MAP_TYPE_RINGBUF, or per-CPU perf buffers), and a map key holding
a quote tells how -f json escapes keys. Real bpftrace 0.17 (Debian 12) and 0.23 (Debian 13, through
scripts/trixie-bpftrace.sh) must be told apart by what they do; the answer is cached per binary.
Ubuntu 24.04's 0.20 cannot be had from the archives this project reaches (Debian bookworm and
trixie, their backports hold no bpftrace; snapshot.debian.org is not reachable): the probe is what
makes it work there without a version table, and docs/bpftrace-versions.md says so.
"""
from __future__ import annotations

import json
import shutil

import pytest

from syswatch.collector import bpfversion, program
from tests.conftest import is_root, require


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYSWATCH_FEATURES_CACHE", str(tmp_path))
    bpfversion._cache.clear()
    yield tmp_path
    bpfversion._cache.clear()


def test_both_versions_are_told_apart_by_what_they_do(bpftrace_bin, cache):
    v = bpfversion.detect(bpftrace_bin)
    assert v.features is not None, v
    newer = v.at_least(0, 22)        # 0.23 (trixie) here; 0.17 (bookworm) otherwise
    assert v.features == bpfversion.Features(ringbuf_output=newer, map_key_strings_escaped_twice=newer), v
    assert v.ringbuf_output is v.features.ringbuf_output
    assert v.map_key_strings_escaped_twice is v.features.map_key_strings_escaped_twice
    # what the collector then runs bpftrace with follows the probe
    assert program.env(v)["BPFTRACE_PERF_RB_PAGES"] == ("4096" if newer else "1024")
    files = list(cache.glob("bpftrace-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == v.features._asdict()


def test_the_probe_runs_once_per_binary(cache):
    require(is_root() and shutil.which("bpftrace"), "root and bpftrace: scripts/setup-test.sh")
    first = bpfversion.detect("bpftrace")
    (path,) = cache.glob("bpftrace-*.json")
    # a cached answer is used as it is: flip it on disk, forget the in-process copy, detect again
    flipped = {k: not v for k, v in first.features._asdict().items()}
    path.write_text(json.dumps(flipped))
    bpfversion._cache.clear()
    assert bpfversion.detect("bpftrace").features._asdict() == flipped
    # a broken cache file is probed again, and rewritten
    path.write_text("{not json")
    bpfversion._cache.clear()
    assert bpfversion.detect("bpftrace").features == first.features
    assert json.loads(path.read_text()) == first.features._asdict()


def test_a_binary_that_is_not_bpftrace_fails_the_probe_with_the_reason(tmp_path, cache):
    fake = tmp_path / "bpftrace"
    fake.write_text("#!/bin/sh\n"
                    "if [ \"$1\" = --version ]; then echo 'bpftrace v0.20.2'; exit 0; fi\n"
                    "echo '{\"type\": \"map\", \"data\": {\"@syswatch_probe\": {\"q\\\"b\": 1}}}'\n"
                    "echo '{\"type\": \"printf\", \"data\": \"syswatch-probe\\n\"}'\n"
                    "exec sleep 30\n")
    fake.chmod(0o755)
    assert bpfversion.detect(str(fake), features=False).key == (0, 20, 2)
    with pytest.raises(bpfversion.BpftraceVersionError, match="no ring buffer or perf buffer among its BPF maps"):
        bpfversion.detect(str(fake))
    dying = tmp_path / "dying"
    dying.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'bpftrace v0.19.1'; exit 0; }\n"
                     "echo 'ERROR: cannot attach' >&2; exit 1\n")
    dying.chmod(0o755)
    with pytest.raises(bpfversion.BpftraceVersionError,
                       match=r"feature probe exited with status 1: ERROR: cannot attach"):
        bpfversion.detect(str(dying))
    assert not list(cache.glob("bpftrace-*.json")), "a failed probe is not cached"


def test_without_a_probe_the_changelog_decides():
    for raw, ring, twice in (("bpftrace v0.17.0", False, False), ("bpftrace v0.20.2", True, False),
                             ("bpftrace v0.23.2", True, True)):
        v = bpfversion.parse(raw)
        assert (v.features, v.ringbuf_output, v.map_key_strings_escaped_twice) == (None, ring, twice), raw
