#!/usr/bin/env bash
# Prepare a host (as root) for TESTING syswatch: what scripts/test.sh runs before pytest, on top of
# scripts/setup-host.sh (what running needs). Supported: Debian 12 and 13 (CI runs Debian 12). On
# Ubuntu 24.04 it stops (exit 2): its chromium is a snap, which the browser tests cannot drive.
#
#   scripts/setup-test.sh            # apt packages + Python test packages
#   scripts/setup-test.sh --python   # only the Python test packages (what `-m unit` needs; no root
#                                    # needed when they are present)
#   scripts/setup-test.sh --plan     # print the packages; change nothing
#
# apt packages, each for the tests named:
#   bpftrace bpftool      the collector on the host (0.17 on Debian 12); tests inspect BPF programs
#   strace wrk            the bench's peers (tests/test_bench_*.py)
#   systemd               systemd-analyze verifies deploy/systemd (tests/test_deploy.py)
#   chromium chromium-driver python3-selenium   the dashboard's browser tests (Debian's browser)
#   qemu-system-x86 e2fsprogs                   the kprobe VM (scripts/kernel-vm.sh)
#   python3-venv          tests/test_package.py installs the wheel into a fresh venv
#   sqlite3               the history store's and IP list's tests read the files with the CLI
#   python3-zmq           Debian's python3 with pyzmq, which any user may run: the uid-nobody
#                         subscribers of tests/test_exclusion*.py and bench/soak.py (harness/nobody.py)
#   gcc libc6-dev         tests/test_history_e2e.py builds harness/rounds.c statically for its containers
#   prometheus nats-server  their programs only (tests start their own servers): their services are
#                         kept from starting and disabled, nothing listens on :9090 or :4222
# Python: python3 -m pip install -r requirements-dev.txt (pytest, hypothesis, schemathesis, ...).
#
# Env: SYSWATCH_OS_RELEASE, SYSWATCH_APT_ETC (as scripts/setup-host.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "setup-test: $*"; }
die() { echo "setup-test: error: $*" >&2; exit 1; }
# shellcheck source=scripts/host-lib.sh
. "$ROOT/scripts/host-lib.sh"
trap drop_policy EXIT

APT_PACKAGES=(bpftrace bpftool strace wrk systemd chromium chromium-driver python3-selenium qemu-system-x86
              e2fsprogs python3-venv sqlite3 python3-zmq gcc libc6-dev)
NO_SERVICE_PACKAGES=(prometheus nats-server)
QUIET_UNITS=(prometheus prometheus-node-exporter nats-server)

MODE=all
case ${1:-} in
    "") ;;
    --python) MODE=python ;;
    --plan) MODE=plan ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
    *) echo "setup-test: error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

python_ready() {  # every "name>=floor" line of requirements-dev.txt installed at or above its floor
    python3 - "$ROOT/requirements-dev.txt" <<'EOF' 2>/dev/null
import re, sys
from importlib.metadata import PackageNotFoundError, version
def numbers(text):
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])
for line in open(sys.argv[1]):
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:>=\s*([\d.]+))?", line.split("#")[0])
    if not m:
        continue
    try:
        have = version(m.group(1))
    except PackageNotFoundError:
        sys.exit(1)
    if m.group(2) and numbers(have) < numbers(m.group(2)):
        sys.exit(1)
EOF
}
python_packages() {
    if python_ready; then
        say "python packages of requirements-dev.txt present ($(python3 --version))"
        return
    fi
    [[ $(id -u) -eq 0 || -n ${VIRTUAL_ENV:-} ]] \
        || die "python packages of requirements-dev.txt are missing: python3 -m pip install -r requirements-dev.txt (in a venv, or as root)"
    say "installing python packages: python3 -m pip install -r requirements-dev.txt"
    python3 -m pip install -q -r "$ROOT/requirements-dev.txt" || die "pip install -r requirements-dev.txt failed"
}

if [[ $MODE == python ]]; then
    python_packages
    exit 0
fi

detect_distro
case $DISTRO in
    debian12|debian13) ;;
    ubuntu2404) echo "setup-test: error: $HOST_NAME runs syswatch (scripts/setup-host.sh) but the test set is Debian's: its chromium is a snap the browser tests cannot drive; test on Debian 12 or 13" >&2; exit 2 ;;
    *) echo "setup-test: error: this host is $HOST_NAME; the test set is supported on Debian 12 and 13" >&2; exit 2 ;;
esac
if [[ $MODE == plan ]]; then
    echo "host: $HOST_NAME ($DISTRO)"
    echo "packages: ${APT_PACKAGES[*]}"
    echo "packages without their services: ${NO_SERVICE_PACKAGES[*]}"
    echo "python: python3 -m pip install -r requirements-dev.txt"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages): sudo $0"

mapfile -t missing < <(missing_of "${APT_PACKAGES[@]}")
if ((${#missing[@]})); then
    say "installing apt packages: ${missing[*]}"
    apt_install "${missing[@]}"
else
    say "apt packages present: ${APT_PACKAGES[*]}"
fi
mapfile -t missing < <(missing_of "${NO_SERVICE_PACKAGES[@]}")
if ((${#missing[@]})); then
    say "installing apt packages without starting their services: ${missing[*]}"
    apt_install_quietly "${missing[@]}"
else
    say "apt packages present: ${NO_SERVICE_PACKAGES[*]}"
fi
quiet_services "${QUIET_UNITS[@]}"
python_packages
say "host ready to test"
