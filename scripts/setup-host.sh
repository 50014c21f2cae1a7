#!/usr/bin/env bash
# Prepare a Debian bookworm host (as root) for running and testing syswatch.
#
# What it does, each step skipped when already done (a second run takes ~1 s):
#   1. apt packages: bpftrace docker.io docker-compose debootstrap curl bpftool strace wrk systemd
#      chromium chromium-driver python3-selenium qemu-system-x86 e2fsprogs python3-venv (venv: the
#      wheel is installed into a fresh virtual environment by tests/test_package.py; systemd: systemd-analyze
#      verifies the units in deploy/systemd; chromium: the browser tests use the system browser,
#      nothing downloads one; qemu: the kprobe VM of scripts/kernel-vm.sh)
#   2. tracefs on /sys/kernel/tracing and debugfs on /sys/kernel/debug (bpftrace's tracepoints need them)
#   3. the Python test dependencies: python3 -m pip install -r requirements-dev.txt
#   4. dockerd: started in the background (log: $SYSWATCH_DOCKERD_LOG) when its socket does not answer
#
# Usage:  sudo scripts/setup-host.sh
# Env:    SYSWATCH_DOCKERD_LOG   dockerd's log file          (default /var/log/syswatch-dockerd.log)
#         SYSWATCH_DOCKERD_WAIT  seconds to wait for dockerd (default 60)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERD_LOG="${SYSWATCH_DOCKERD_LOG:-/var/log/syswatch-dockerd.log}"
DOCKERD_WAIT="${SYSWATCH_DOCKERD_WAIT:-60}"
# chromium, chromium-driver, python3-selenium: the dashboard's browser tests (tests/test_dashboard.py)
APT_PACKAGES=(bpftrace docker.io docker-compose debootstrap curl bpftool strace wrk systemd chromium
              chromium-driver python3-selenium qemu-system-x86 e2fsprogs python3-venv)

say() { echo "setup-host: $*"; }
die() { echo "setup-host: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root: sudo $0 (it installs packages, mounts tracefs and starts dockerd)"

# 1. apt packages ------------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || die "apt-get update failed: check the mirror in /etc/apt/sources.list(.d)"
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed (see the messages above)"
else
    say "apt packages present: ${APT_PACKAGES[*]}"
fi

# 2. tracefs / debugfs -------------------------------------------------------------------------
mount_if_missing() {  # fstype mountpoint
    local fstype=$1 dir=$2
    if [[ "$(stat -f -c %T "$dir" 2>/dev/null)" == "$fstype" ]]; then
        say "$fstype already mounted on $dir"
        return
    fi
    say "mounting $fstype on $dir"
    mount -t "$fstype" "$fstype" "$dir" \
        || die "cannot mount $fstype on $dir; the kernel needs CONFIG_${fstype^^}_FS (bpftrace's tracepoints need it)"
}
mount_if_missing debugfs /sys/kernel/debug
mount_if_missing tracefs /sys/kernel/tracing

# 3. Python test dependencies ------------------------------------------------------------------
if python3 - "$ROOT/requirements-dev.txt" <<'EOF' 2>/dev/null
# Exit 0 when every "name>=floor" line of the file is installed at or above its floor.
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
then
    say "python packages of requirements-dev.txt present ($(python3 --version))"
else
    say "installing python packages: python3 -m pip install -r requirements-dev.txt"
    python3 -m pip install -q -r "$ROOT/requirements-dev.txt" || die "pip install -r requirements-dev.txt failed"
fi

# 4. dockerd -----------------------------------------------------------------------------------
docker_answers() { timeout 10 docker info >/dev/null 2>&1; }
if docker_answers; then
    say "dockerd is answering"
else
    if ! pgrep -x dockerd >/dev/null; then
        say "starting dockerd in the background (log: $DOCKERD_LOG)"
        # setsid: dockerd outlives this script and the terminal that ran it.
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    else
        say "dockerd is running but not answering yet; waiting"
    fi
    for ((i = 0; i < DOCKERD_WAIT; i++)); do
        docker_answers && break
        sleep 1
    done
    docker_answers || die "dockerd did not answer within ${DOCKERD_WAIT}s; last lines of $DOCKERD_LOG:
$(tail -n 15 "$DOCKERD_LOG" 2>/dev/null)"
    say "dockerd is answering (after ${i}s)"
fi
say "host ready"
