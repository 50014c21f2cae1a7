#!/usr/bin/env bash
# THE test command (README): set up what the selected tests need, then run them.
#
#   sudo scripts/test.sh                  # the whole suite: what CI runs
#   sudo scripts/test.sh -m 'not docker'  # extra arguments go to pytest
#   scripts/test.sh -m unit               # in-process tests only: no root, nothing installed but pytest & co
#   scripts/test.sh --plan -m unit        # print the stages this selection would run, run nothing
#
# Stages, each run only when a selected test needs it (tests/stages.py tells, from the tests that
# pytest selects: markers, fixtures, what a test module uses), each timed:
#   python-deps      scripts/setup-test.sh --python: pytest, hypothesis, ... (always: pytest needs them)
#   lint             scripts/lint.sh: ruff and mypy (always; a finding stops the run before the slow stages)
#   setup-host       scripts/setup-host.sh: what running needs (docker, Compose, tracefs, dockerd)
#   setup-test       scripts/setup-test.sh: the test tools (bpftrace, chromium, qemu, prometheus, ...)
#   base-image       scripts/build-base-image.sh: debian:bookworm-slim and debian:trixie-slim
#   trixie-bpftrace  scripts/trixie-bpftrace.sh: bpftrace 0.23 beside the host's (~1 min the first time)
#   vm-root          scripts/kernel-vm.sh --build-only: the kprobe VM's root (~1 GB, minutes the first
#                    time), only when the selection holds tests marked vm
#   pytest           python3 -m pytest --durations=15 ARGS
# A `-m unit` run needs no stage but python-deps, so it needs no root when those are installed.
# The exit status is pytest's; "no tests collected" (5) counts as a failure like any other
# non-zero status. With CI=true (set by CI) a missing prerequisite or a skipped test fails the
# run (tests/conftest.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

case ${1:-} in
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
esac
PLAN_ONLY=0
if [[ ${1:-} == --plan ]]; then
    PLAN_ONLY=1
    shift
fi

TIMINGS=()
stage() {  # stage NAME COMMAND...: run, time and record it; stop the script if it fails
    local name=$1 start=$SECONDS rc=0
    shift
    echo "=== stage: $name"
    "$@" || rc=$?
    TIMINGS+=("$(printf '%-18s %4ds  exit %d' "$name" $((SECONDS - start)) "$rc")")
    return "$rc"
}
report() {
    ((${#TIMINGS[@]})) || return 0
    echo "=== stage timings"
    printf '  %s\n' "${TIMINGS[@]}"
}
trap report EXIT

if ((!PLAN_ONLY)); then
    stage python-deps scripts/setup-test.sh --python
    stage lint scripts/lint.sh          # cheap, and a finding stops the run before the slow stages
fi
# Which stages the selection needs; if pytest cannot even collect, set up everything and let the
# pytest stage show why.
plan_out="$(python3 -m pytest -p tests.stages --collect-only -q -p no:cacheprovider "$@" 2>&1)" || true
line="$(grep -m1 '^SYSWATCH-STAGES:' <<<"$plan_out" || true)"
if [[ -n $line ]]; then
    read -r -a NEEDS <<<"$(sed -E 's/^SYSWATCH-STAGES:(.*)\(for .*$/\1/' <<<"$line")"
    why="${line#*(}"
    why="(${why}"
else
    NEEDS=(host test base-image trixie vm)
    why="(pytest could not collect the selection: setting up everything)"
fi
need() { [[ " ${NEEDS[*]} " == *" $1 "* ]]; }
planned=(python-deps lint)
need host && planned+=(setup-host)
need test && planned+=(setup-test)
need base-image && planned+=(base-image)
need trixie && planned+=(trixie-bpftrace)
need vm && planned+=(vm-root)
planned+=(pytest)
echo "test.sh: stages: ${planned[*]} $why"
((PLAN_ONLY)) && exit 0

if ((${#NEEDS[@]})) && [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: error: run as root: sudo $0 $* (stages ${NEEDS[*]} install packages, start dockerd, run bpftrace)" >&2
    exit 1
fi
need host && stage setup-host scripts/setup-host.sh
need test && stage setup-test scripts/setup-test.sh
need base-image && stage base-image scripts/build-base-image.sh   # bookworm (API), trixie (collector: bpftrace 0.23)
need trixie && stage trixie-bpftrace scripts/trixie-bpftrace.sh   # bpftrace 0.23 beside the host's 0.17 (issue 16)
if need vm; then
    # Not fatal here: tests/test_kernel_vm.py then fails with the reason, and other tests still run.
    stage vm-root scripts/kernel-vm.sh --build-only \
        || echo "test.sh: warning: the kprobe VM's root could not be built; tests/test_kernel_vm.py will fail" >&2
fi

rc=0
stage pytest python3 -m pytest --durations=15 "$@" || rc=$?
if ((rc == 5)); then
    echo "test.sh: error: pytest collected no tests (exit 5); check the arguments: $*" >&2
fi
exit "$rc"
