#!/usr/bin/env bash
# Prepare a Debian bookworm host (as root) for running and testing syswatch.
#
# What it does, each step skipped when already done (a second run takes ~1 s):
#   1. apt packages: bpftrace docker.io docker-compose debootstrap curl bpftool strace wrk systemd
#      chromium chromium-driver python3-selenium qemu-system-x86 e2fsprogs python3-venv gcc libc6-dev (venv: the
#      wheel is installed into a fresh virtual environment by tests/test_package.py; systemd: systemd-analyze
#      verifies the units in deploy/systemd; chromium: the browser tests use the system browser,
#      nothing downloads one; qemu: the kprobe VM of scripts/kernel-vm.sh), and prometheus (2.42:
#      prometheus and promtool for tests/test_metrics_prometheus.py, which runs its own server) with
#      its service kept from starting and disabled, so nothing listens on :9090 or scrapes in the background
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
# gcc, libc6-dev: tests/test_history_e2e.py builds harness/rounds.c statically for its containers
APT_PACKAGES=(bpftrace docker.io docker-compose debootstrap curl bpftool strace wrk systemd chromium
              chromium-driver python3-selenium qemu-system-x86 e2fsprogs python3-venv gcc libc6-dev)
# Installed for their programs only: their services must not start (see quiet_services below).
NO_SERVICE_PACKAGES=(prometheus)

say() { echo "setup-host: $*"; }
die() { echo "setup-host: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root: sudo $0 (it installs packages, mounts tracefs and starts dockerd)"

# 1. apt packages ------------------------------------------------------------------------------
missing_of() {  # PACKAGE...: those not installed
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
    done
}
apt_updated=0
apt_install() {  # PACKAGE...
    export DEBIAN_FRONTEND=noninteractive
    if ((!apt_updated)); then
        apt-get update -q || die "apt-get update failed: check the mirror in /etc/apt/sources.list(.d)"
        apt_updated=1
    fi
    apt-get install -y -q --no-install-recommends "$@" || die "apt-get install $* failed (see the messages above)"
}
POLICY_RC=/usr/sbin/policy-rc.d
own_policy=0
drop_policy() { ((own_policy)) && rm -f "$POLICY_RC"; own_policy=0; }
trap drop_policy EXIT
quiet_services() {  # UNIT...: stopped now and not started at boot (systemd, or SysV init scripts)
    local unit
    for unit in "$@"; do
        [[ -e /lib/systemd/system/$unit.service || -e /etc/init.d/$unit ]] || continue
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now --quiet "$unit" || die "systemctl disable --now $unit failed"
        else
            systemctl disable --quiet "$unit" 2>/dev/null || update-rc.d "$unit" disable >/dev/null 2>&1 || true
            if [[ -x /etc/init.d/$unit ]] && /etc/init.d/"$unit" status >/dev/null 2>&1; then
                /etc/init.d/"$unit" stop || die "/etc/init.d/$unit stop failed"
            fi
        fi
    done
}

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
    if [[ ! -e $POLICY_RC ]]; then  # invoke-rc.d and deb-systemd-invoke start nothing while it says 101
        printf '#!/bin/sh\n# written by syswatch scripts/setup-host.sh for one apt-get install\nexit 101\n' >"$POLICY_RC"
        chmod 0755 "$POLICY_RC"
        own_policy=1
    fi
    apt_install "${missing[@]}"
    drop_policy
else
    say "apt packages present: ${NO_SERVICE_PACKAGES[*]}"
fi
quiet_services prometheus prometheus-node-exporter

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
