#!/usr/bin/env bash
# Prepare a host (as root) for RUNNING syswatch with docker-compose: the README's first command.
# What the tests need besides is scripts/setup-test.sh's (scripts/test.sh runs both).
#
# Supported hosts: Debian 12 (bookworm), Debian 13 (trixie), Ubuntu 24.04 (noble), amd64, systemd or
# not. Anything else stops with exit status 2 before changing anything, saying what it would need.
#
# What it does, each step skipped when already done (a second run takes ~1 s):
#   1. apt packages: docker.io, Compose, debootstrap (scripts/build-base-image.sh builds the base
#      image with it when no registry answers), curl and python3 (./test_api.sh). Compose is
#      whichever the host has: `docker-compose` (v1, Debian 12's package docker-compose), or the
#      plugin `docker compose` (Debian 13's docker-compose, Ubuntu's docker-compose-v2), in which case
#      a two-line /usr/local/bin/docker-compose that runs `docker compose` is written, so the README's
#      `docker-compose ...` commands work as written. Ubuntu: docker.io and docker-compose-v2 are in
#      the universe component, which must be enabled; debian-archive-keyring lets debootstrap check
#      the Debian suites it builds.
#   2. tracefs on /sys/kernel/tracing and debugfs on /sys/kernel/debug (bpftrace's tracepoints live
#      there; compose mounts both into the collector)
#   3. dockerd: `systemctl enable --now docker` under systemd, else started in the background (log:
#      $SYSWATCH_DOCKERD_LOG) when its socket does not answer
# Not done (not needed to run): bpftrace on the host (the collector image has its own; to run the
# collector from a checkout: apt-get install bpftrace), Python packages (the images have them).
#
# Usage:  scripts/setup-host.sh [--plan]
#           --plan   print what this host would get (distro, packages, Compose, mounts); change nothing
# Env:    SYSWATCH_DOCKERD_LOG   dockerd's log file          (default /var/log/syswatch-dockerd.log)
#         SYSWATCH_DOCKERD_WAIT  seconds to wait for dockerd (default 60)
#         SYSWATCH_OS_RELEASE    os-release file read        (default /etc/os-release)
#         SYSWATCH_APT_ETC       apt directory read          (default /etc/apt)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERD_LOG="${SYSWATCH_DOCKERD_LOG:-/var/log/syswatch-dockerd.log}"
DOCKERD_WAIT="${SYSWATCH_DOCKERD_WAIT:-60}"
COMPOSE_WRAPPER=/usr/local/bin/docker-compose

say() { echo "setup-host: $*"; }
die() { echo "setup-host: error: $*" >&2; exit 1; }
unsupported() { echo "setup-host: error: $*" >&2; exit 2; }
# shellcheck source=scripts/host-lib.sh
. "$ROOT/scripts/host-lib.sh"
trap drop_policy EXIT

PLAN=0
case ${1:-} in
    "") ;;
    --plan) PLAN=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
    *) unsupported "unknown argument '$1' (see --help)" ;;
esac

detect_distro
[[ -n $DISTRO ]] || unsupported "this host is $HOST_NAME; supported: $SUPPORTED_HOSTS. Elsewhere install by hand:
  Docker Engine with Compose, debootstrap, curl and python3, mount tracefs on /sys/kernel/tracing and
  debugfs on /sys/kernel/debug, then run scripts/build-base-image.sh && docker-compose up -d"
[[ $(uname -m) == x86_64 || $PLAN -eq 1 ]] \
    || unsupported "this host is $(uname -m); syswatch's kprobe and image set-up is for amd64 (x86_64) only"

# Compose: the package that brings it on this distro, and whether it is the plugin (docker compose)
case $DISTRO in
    debian12) COMPOSE_PKG=docker-compose COMPOSE_KIND=v1 ;;
    debian13) COMPOSE_PKG=docker-compose COMPOSE_KIND=plugin ;;
    ubuntu2404) COMPOSE_PKG=docker-compose-v2 COMPOSE_KIND=plugin ;;
esac
RUN_PACKAGES=(docker.io debootstrap curl python3 ca-certificates)
# Ubuntu: debootstrap needs Debian's archive keyring to check a Debian suite
[[ $DISTRO == ubuntu2404 ]] && RUN_PACKAGES+=(debian-archive-keyring)
APT_PACKAGES=("${RUN_PACKAGES[@]}" "$COMPOSE_PKG")

universe_enabled() {  # Ubuntu: docker.io and docker-compose-v2 are in universe
    apt_entries | awk '$2 ~ /^noble/ { for (i = 3; i <= NF; i++) if ($i == "universe") f = 1 } END { exit !f }'
}

if ((PLAN)); then
    echo "host: $HOST_NAME ($DISTRO)"
    echo "packages: ${APT_PACKAGES[*]}"
    if [[ $COMPOSE_KIND == v1 ]]; then
        echo "compose: docker-compose (v1, package $COMPOSE_PKG)"
    else
        echo "compose: the plugin, docker compose (package $COMPOSE_PKG), and $COMPOSE_WRAPPER running it"
    fi
    if [[ $DISTRO == ubuntu2404 ]] && ! universe_enabled; then
        echo "apt: universe is not enabled in $APT_ETC: add-apt-repository universe (it holds docker.io)"
    fi
    echo "mounts: tracefs /sys/kernel/tracing, debugfs /sys/kernel/debug"
    echo "dockerd: systemctl enable --now docker under systemd, else dockerd in the background"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages, mounts tracefs and starts dockerd): sudo $0"
say "host: $HOST_NAME"

# 1. apt packages ------------------------------------------------------------------------------
if [[ $DISTRO == ubuntu2404 ]] && ! universe_enabled; then
    die "Ubuntu's universe component is not enabled in $APT_ETC (docker.io and docker-compose-v2 are in it): add-apt-repository universe, then run this again"
fi
compose_works() { docker-compose version >/dev/null 2>&1 || docker compose version >/dev/null 2>&1; }
want=("${RUN_PACKAGES[@]}")
compose_works || want+=("$COMPOSE_PKG")       # a Compose from elsewhere (Docker's own packages) is fine
mapfile -t missing < <(missing_of "${want[@]}")
if ((${#missing[@]})); then
    say "installing apt packages: ${missing[*]}"
    apt_install "${missing[@]}"
else
    say "apt packages present: ${want[*]}"
fi
if ! command -v docker-compose >/dev/null && docker compose version >/dev/null 2>&1; then
    say "writing $COMPOSE_WRAPPER: runs 'docker compose' (the plugin), so docker-compose commands work as written"
    printf '#!/bin/sh\n# written by syswatch scripts/setup-host.sh: Compose v2 is the docker plugin here\nexec docker compose "$@"\n' \
        >"$COMPOSE_WRAPPER"
    chmod 0755 "$COMPOSE_WRAPPER"
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

# 3. dockerd -----------------------------------------------------------------------------------
docker_answers() { timeout 10 docker info >/dev/null 2>&1; }
if docker_answers; then
    say "dockerd is answering"
else
    if [[ -d /run/systemd/system ]]; then
        say "starting dockerd: systemctl enable --now docker"
        systemctl enable --now docker || die "systemctl enable --now docker failed: journalctl -u docker says why"
    elif ! pgrep -x dockerd >/dev/null; then
        say "starting dockerd in the background (log: $DOCKERD_LOG)"
        # setsid: dockerd outlives this script and the terminal that ran it. It must not inherit
        # the caller's other descriptors either: a lock (flock) or a pipe of whoever ran this
        # script would stay open for dockerd's whole life, holding the lock and the pipe's reader.
        (
            for fd in /proc/$BASHPID/fd/*; do
                fd=${fd##*/}
                ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
            done
            exec setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null
        ) &
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
compose_works || die "neither docker-compose nor 'docker compose' works after installing $COMPOSE_PKG"
say "host ready to run: scripts/build-base-image.sh && docker-compose up -d"
