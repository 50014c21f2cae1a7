#!/usr/bin/env bash
# Build (once) a Debian trixie root holding bpftrace 0.23 and install a wrapper that runs it on this host.
#
# bookworm packages bpftrace 0.17; trixie packages 0.23, which outputs through a BPF ring buffer
# (issue 16). This script makes the newer one runnable on a bookworm host, without Docker:
#   1. debootstrap --variant=minbase --include=$PACKAGES trixie into $CACHE/root-<key>, where <key>
#      is a hash of the suite, variant and package list (a changed list builds a new root beside
#      the old one; an unchanged one is reused: a second run takes well under a second);
#   2. writes the wrapper $CACHE/bin/bpftrace and prints its path on stdout (progress goes to stderr).
#
# The wrapper runs the trixie bpftrace in a private mount namespace (unshare -m) in which the
# root's /usr is bind-mounted over the host's /usr (and its ld.so.cache over /etc/ld.so.cache).
# Everything else is the host's: /proc, /sys (tracing, debugfs, bpffs, btf), /dev, /tmp, the
# working directory and every path given in argv, so `wrapper -o FILE prog.bt` and system()
# behave as with the host's bpftrace. A chroot would need each of those bind-mounted and argv
# paths rewritten. Each step execs the next (unshare without --fork, sh, bpftrace), so
#   * bpftrace keeps the PID the wrapper was started with (the collector's `exec "$@" "$$"`),
#   * argv, stdin/stdout/stderr, the environment and signals (SIGINT/SIGTERM) reach bpftrace
#     directly, and its exit status is the wrapper's;
#   * the mounts exist only in that namespace and vanish with bpftrace: nothing to unmount,
#     nothing piles up, the host never sees them.
#
# Usage:  sudo scripts/trixie-bpftrace.sh            build if needed, print the wrapper's path
#         scripts/trixie-bpftrace.sh --print-path     print where the wrapper is/would be; build nothing
#         scripts/trixie-bpftrace.sh --check          exit 0 when the root and wrapper are ready
# Env:    SYSWATCH_TRIXIE_CACHE     cache directory         (default /var/cache/syswatch-trixie)
#         SYSWATCH_TRIXIE_PACKAGES  packages to include     (default "bpftrace")
#         SYSWATCH_MIRROR           Debian mirror URL       (default: the host's, as build-base-image.sh finds it)
# Then:   "$(scripts/trixie-bpftrace.sh)" --version          -> bpftrace v0.23.x
#         SYSWATCH_BPFTRACE="$(scripts/trixie-bpftrace.sh)" python3 -m collector.collector
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SYSWATCH_TRIXIE_CACHE:-/var/cache/syswatch-trixie}"
PACKAGES="${SYSWATCH_TRIXIE_PACKAGES:-bpftrace}"
SUITE=trixie
VARIANT=minbase
WRAPPER="$CACHE/bin/bpftrace"

say() { echo "trixie-bpftrace: $*" >&2; }
die() { echo "trixie-bpftrace: error: $*" >&2; exit 1; }

MODE=build
for arg in "$@"; do
    case $arg in
        --print-path) MODE=print ;;
        --check) MODE=check ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
done

# The root's name depends on what goes into it (the mirror does not change what is built).
PKGS_SORTED="$(tr ', ' '\n\n' <<<"$PACKAGES" | sed '/^$/d' | sort -u | paste -sd, -)"
[[ -n $PKGS_SORTED ]] || die "SYSWATCH_TRIXIE_PACKAGES is empty"
KEY="$(printf 'suite=%s variant=%s packages=%s\n' "$SUITE" "$VARIANT" "$PKGS_SORTED" | sha256sum | cut -c1-12)"
ROOTFS="$CACHE/root-$KEY"
# the wrapper quotes the root's path in sh: keep it to plain characters
[[ $CACHE =~ ^/[A-Za-z0-9/._-]*$ ]] || die "SYSWATCH_TRIXIE_CACHE must be an absolute path of letters, digits and /._- (got '$CACHE')"

wrapper_text() {  # the wrapper, for the root $1
    cat <<EOF
#!/bin/sh
# bpftrace from a Debian $SUITE root, run on this host (written by scripts/trixie-bpftrace.sh).
# A private mount namespace (unshare -m) in which the root's /usr is bind-mounted over the
# host's; exec all the way (unshare, sh, bpftrace), so bpftrace keeps this script's PID, argv,
# stdio and signals, and the mounts vanish when it exits. The host's mounts are never touched.
# root: $1 (packages: $PKGS_SORTED)
if [ ! -x '$1/usr/bin/bpftrace' ]; then
    echo "bpftrace ($SUITE wrapper): $1/usr/bin/bpftrace is missing; run scripts/trixie-bpftrace.sh (as root)" >&2
    exit 127
fi
exec unshare --mount --propagation private -- /bin/sh -c '
R=$1
# merged-/usr hosts (/lib -> usr/lib, ...) need only /usr; a split host gets the root dirs too
for d in bin sbin lib lib64; do
    if [ -d "/\$d" ] && [ ! -L "/\$d" ] && [ -d "\$R/usr/\$d" ]; then
        mount --rbind "\$R/usr/\$d" "/\$d" || exit 126
    fi
done
mount --rbind "\$R/usr" /usr || { echo "bpftrace ($SUITE wrapper): cannot bind-mount \$R/usr on /usr" >&2; exit 126; }
mount --bind "\$R/etc/ld.so.cache" /etc/ld.so.cache 2>/dev/null || true
exec /usr/bin/bpftrace "\$@"
' bpftrace "\$@"
echo "bpftrace ($SUITE wrapper): cannot run unshare --mount (it needs root: CAP_SYS_ADMIN)" >&2
exit 126
EOF
}

install_wrapper() {
    local text tmp
    text="$(wrapper_text "$ROOTFS")"
    if [[ -f $WRAPPER && -x $WRAPPER && "$(cat "$WRAPPER")" == "$text" ]]; then
        return
    fi
    mkdir -p "$CACHE/bin"
    tmp="$(mktemp "$CACHE/bin/.bpftrace.XXXXXX")"
    printf '%s\n' "$text" >"$tmp"
    chmod 755 "$tmp"
    mv -f "$tmp" "$WRAPPER"
    say "wrote $WRAPPER"
}

ready() { [[ -f $ROOTFS/.syswatch-complete && -x $ROOTFS/usr/bin/bpftrace && -x $WRAPPER ]] && [[ "$(cat "$WRAPPER")" == "$(wrapper_text "$ROOTFS")" ]]; }

case $MODE in
    print) echo "$WRAPPER"; exit 0 ;;
    check)
        if ready; then say "ready: $WRAPPER ($(cat "$ROOTFS/.syswatch-complete"))"; exit 0; fi
        say "not built: run scripts/trixie-bpftrace.sh as root"; exit 1 ;;
esac

if ready; then
    say "$SUITE root present: $ROOTFS ($(cat "$ROOTFS/.syswatch-complete"))"
    echo "$WRAPPER"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and the wrapper's mounts need it): sudo $0"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap (scripts/setup-host.sh does it)"
command -v unshare >/dev/null || die "unshare is missing: apt-get install util-linux"
[[ -e /usr/share/debootstrap/scripts/$SUITE ]] || die "this debootstrap does not know '$SUITE': upgrade debootstrap"
mkdir -p "$CACHE"

# One build at a time (parallel test runs, two engineers): the second waits, then finds it built.
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    say "another build holds $CACHE/.lock; waiting for it"
    flock 9
fi
if [[ -f $ROOTFS/.syswatch-complete && -x $ROOTFS/usr/bin/bpftrace ]]; then
    install_wrapper
    say "$SUITE root present: $ROOTFS ($(cat "$ROOTFS/.syswatch-complete"))"
    echo "$WRAPPER"
    exit 0
fi

if [[ -n ${SYSWATCH_MIRROR:-} ]]; then
    MIRROR="$SYSWATCH_MIRROR"
else
    MIRROR="$("$ROOT_DIR/scripts/build-base-image.sh" --suite "$SUITE" --print-mirror 2>/dev/null | awk '$1 == "mirror:" { print $2 }')" || true
    [[ -n $MIRROR ]] || die "cannot tell the host's Debian mirror: set SYSWATCH_MIRROR=http://<your mirror>/debian"
fi
MIRROR="${MIRROR%/}"

WORK="$(mktemp -d "$CACHE/.build.XXXXXX")"
cleanup() {  # debootstrap can leave proc/sys mounted inside a root it failed to finish
    awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l 2>/dev/null || true
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'die "interrupted"' INT TERM

start=$SECONDS
say "building a $SUITE root with $PKGS_SORTED from $MIRROR into $ROOTFS (takes a few minutes; log: $WORK/debootstrap.log, shown on failure)"
if ! debootstrap --variant="$VARIANT" --include="$PKGS_SORTED" "$SUITE" "$WORK/root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 25 "$WORK/debootstrap.log" >&2
    tail -n 25 "$WORK/root/debootstrap/debootstrap.log" 2>/dev/null >&2 || true
    die "debootstrap failed (last lines above); check that $MIRROR is reachable and serves $SUITE"
fi
say "debootstrap done in $((SECONDS - start))s; trimming"
rm -rf "$WORK/root"/var/cache/apt/archives/*.deb "$WORK/root"/var/lib/apt/lists/* \
       "$WORK/root"/usr/share/doc "$WORK/root"/usr/share/man "$WORK/root"/usr/share/info "$WORK/root"/usr/share/locale
[[ -x $WORK/root/usr/bin/bpftrace ]] || die "the root has no /usr/bin/bpftrace (packages: $PKGS_SORTED)"
version="$(chroot "$WORK/root" dpkg-query -W -f='${Version}' bpftrace 2>/dev/null || echo unknown)"
printf 'bpftrace %s; %s %s; packages %s; mirror %s; built %s\n' "$version" "$SUITE" "$VARIANT" \
    "$PKGS_SORTED" "$MIRROR" "$(date -u +%FT%TZ)" >"$WORK/root/.syswatch-complete"
rm -rf --one-file-system "$ROOTFS"
mv "$WORK/root" "$ROOTFS"
install_wrapper
# drop roots of other package lists that no wrapper points at any more
for old in "$CACHE"/root-*; do
    [[ $old != "$ROOTFS" && -d $old ]] || continue
    say "removing the previous root $old"
    rm -rf --one-file-system "$old"
done
say "built in $((SECONDS - start))s: bpftrace $version, $(du -sm "$ROOTFS" | cut -f1) MB in $ROOTFS"
"$WRAPPER" --version >&2 || die "the wrapper was installed but '$WRAPPER --version' failed (output above)"
echo "$WRAPPER"
