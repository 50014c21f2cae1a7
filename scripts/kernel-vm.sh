#!/usr/bin/env bash
# Run a pytest selection of this checkout inside a QEMU VM booting Debian's stock kernel
# (linux-image-amd64, 6.1: CONFIG_KPROBES=y, BTF), so the kprobe path is tested on a real kernel.
#
# Usage: sudo scripts/kernel-vm.sh [OPTIONS] [--] [PYTEST ARGS...]
#
#   sudo scripts/kernel-vm.sh                              # collector + kprobe tests, SYSWATCH_PROBE=kprobe then auto
#   sudo scripts/kernel-vm.sh tests/test_kprobe.py -x      # one module (the default passes: kprobe, auto)
#   sudo scripts/kernel-vm.sh --probe auto -- tests/test_collector.py -k sigterm
#   sudo scripts/kernel-vm.sh --pass 'kprobe:tests/test_kprobe.py' --pass 'auto:tests/test_collector.py -k "not counts"'
#   sudo scripts/kernel-vm.sh --build-only                 # only build (or check) the cached VM root
#   SYSWATCH_VM_CACHE=/tmp/vmcache scripts/kernel-vm.sh --rebuild --quiet
#
# What it does:
#   1. root: debootstrap bookworm (minbase + the packages in GUEST_PACKAGES below) into an ext4 image,
#      with the kernel and initrd beside it, cached in $SYSWATCH_VM_CACHE/<hash of the recipe>; a change
#      of the package list (or of this recipe) builds a new one, and older ones are removed.
#   2. job disk: the current checkout (git's tracked and untracked-but-not-ignored files, uncommitted
#      changes included) and scripts/kernel-vm-guest.sh on a fresh small ext4 image (mkfs.ext4 -d).
#   3. boot: qemu-system-x86_64 -accel tcg -cpu max (KVM hangs on this CI machine); the root image is
#      opened with snapshot=on (never modified); no network device, lo only.
#   4. in the guest, kernel-vm-guest.sh (PID 1) mounts proc/sys/tracefs/debugfs/bpffs, brings lo up,
#      runs `python3 -m pytest PYTEST ARGS` once per pass (--probe value, or --pass) with SYSWATCH_PROBE
#      set to the pass's value, prints one SYSWATCH-VM-RESULT line per pass and powers off.
#
# Exit status: the guest's pytest status (0 when every pass passed, else the first non-zero one);
#   64 bad usage, 69 a prerequisite is missing or the root could not be built, 124 the hard timeout
#   killed the VM, 125 the guest ended without reporting a result. The serial log is kept (path
#   printed) whenever the exit status is not 0, or always with --keep-log.
#
# Options (environment variable in brackets):
#   --probe LIST     comma-separated SYSWATCH_PROBE values, one pytest pass each with the PYTEST ARGS
#                    [SYSWATCH_VM_PROBES] (kprobe,auto)
#   --pass 'PROBE:ARGS'  a pass with its own pytest arguments (shell words), e.g. 'auto:tests/x.py -k y';
#                    repeatable; with --pass, --probe and the PYTEST ARGS are not used
#   --timeout SEC    hard limit for boot + tests; QEMU is killed after it [SYSWATCH_VM_TIMEOUT] (1800)
#   --build-timeout SEC  hard limit for building the root [SYSWATCH_VM_BUILD_TIMEOUT] (1800)
#   --cache DIR      where roots and logs are kept [SYSWATCH_VM_CACHE] (/var/cache/syswatch-vm)
#   --smp N          guest CPUs [SYSWATCH_VM_SMP] (2)        --memory MB  guest memory [SYSWATCH_VM_MEMORY] (2048)
#   --mirror URL     Debian mirror for debootstrap [SYSWATCH_VM_MIRROR] (http://deb.debian.org/debian)
#   --build-only     build the root if needed, then exit    --rebuild   build it even when cached
#   --keep-log       keep the serial log on success too     --quiet     do not echo the guest's console
#   -h, --help       this text
# Default pytest arguments: tests/test_collector.py tests/test_kprobe.py
# Env SYSWATCH_VM_EXTRA_PACKAGES: more Debian packages for the root (space or comma separated).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE=bookworm
# Bump when the way the root is built changes (the cache key includes it).
RECIPE_VERSION=1
GUEST_PACKAGES=(
    linux-image-amd64 initramfs-tools kmod udev             # Debian's stock kernel, its initrd
    bpftrace bpftool                                         # the collector's tracer; tests inspect programs
    python3 python3-zmq python3-cffi-backend                 # the collector (cffi: python3-zmq's dependency)
    python3-pytest python3-hypothesis                        # the tests
    python3-bottle python3-waitress python3-requests         # the API and its tests
    python3-prometheus-client                                # the API's /metrics
    iproute2 util-linux procps e2fsprogs                     # ip, setpriv/unshare/mountpoint, pgrep
)
DEFAULT_PYTEST_ARGS=(tests/test_collector.py tests/test_kprobe.py)

CACHE="${SYSWATCH_VM_CACHE:-/var/cache/syswatch-vm}"
PROBES="${SYSWATCH_VM_PROBES:-kprobe,auto}"
TIMEOUT="${SYSWATCH_VM_TIMEOUT:-1800}"
BUILD_TIMEOUT="${SYSWATCH_VM_BUILD_TIMEOUT:-1800}"
SMP="${SYSWATCH_VM_SMP:-2}"
MEMORY="${SYSWATCH_VM_MEMORY:-2048}"
MIRROR="${SYSWATCH_VM_MIRROR:-http://deb.debian.org/debian}"
BUILD_ONLY=0 REBUILD=0 KEEP_LOG=0 QUIET=0

T0=$SECONDS
say() { printf 'kernel-vm: [%4ds] %s\n' $((SECONDS - T0)) "$*"; }
die() { local code=$1; shift; printf 'kernel-vm: error: %s\n' "$*" >&2; exit "$code"; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
num() { [[ $2 =~ ^[0-9]+$ ]] || die 64 "$1 wants a whole number, got '$2'"; }

args=() PASS_SPECS=()
while (($#)); do
    case $1 in
        --probe) PROBES=${2:?--probe needs a value}; shift 2 ;;
        --pass) PASS_SPECS+=("${2:?--pass needs PROBE:ARGS}"); shift 2 ;;
        --timeout) TIMEOUT=${2:?}; shift 2 ;;
        --build-timeout) BUILD_TIMEOUT=${2:?}; shift 2 ;;
        --cache) CACHE=${2:?}; shift 2 ;;
        --smp) SMP=${2:?}; shift 2 ;;
        --memory) MEMORY=${2:?}; shift 2 ;;
        --mirror) MIRROR=${2:?}; shift 2 ;;
        --build-only) BUILD_ONLY=1; shift ;;
        --rebuild) REBUILD=1; shift ;;
        --keep-log) KEEP_LOG=1; shift ;;
        --quiet) QUIET=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; args+=("$@"); break ;;
        *) args+=("$1"); shift ;;
    esac
done
num --timeout "$TIMEOUT"; num --build-timeout "$BUILD_TIMEOUT"; num --smp "$SMP"; num --memory "$MEMORY"
# PASSES[i]: the SYSWATCH_PROBE value of pass i; PASS_ARGS[i]: its pytest arguments as shell words
PASSES=() PASS_ARGS=()
if ((${#PASS_SPECS[@]})); then
    ((${#args[@]} == 0)) || die 64 "give pytest arguments either after -- or in --pass, not both"
    for spec in "${PASS_SPECS[@]}"; do
        PASSES+=("${spec%%:*}")
        [[ $spec == *:* ]] && PASS_ARGS+=("${spec#*:}") || PASS_ARGS+=("$(printf '%q ' "${DEFAULT_PYTEST_ARGS[@]}")")
    done
else
    ((${#args[@]})) || args=("${DEFAULT_PYTEST_ARGS[@]}")
    for p in ${PROBES//,/ }; do
        PASSES+=("$p")
        PASS_ARGS+=("$(printf '%q ' "${args[@]}")")
    done
fi
((${#PASSES[@]})) || die 64 "--probe: no value given"
for p in "${PASSES[@]}"; do
    [[ $p =~ ^(auto|kprobe|tracepoint)$ ]] || die 64 "probe '$p' is not one of auto, kprobe, tracepoint"
done
for a in "${PASS_ARGS[@]}"; do
    bash -n <<<"x=($a)" 2>/dev/null || die 64 "cannot split into shell words: $a"
done
# shellcheck disable=SC2206
[[ -n ${SYSWATCH_VM_EXTRA_PACKAGES:-} ]] && GUEST_PACKAGES+=(${SYSWATCH_VM_EXTRA_PACKAGES//,/ })

# Prerequisites ---------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die 69 "run as root: sudo $0 (debootstrap and the root image need it)"
for cmd in qemu-system-x86_64:qemu-system-x86 debootstrap:debootstrap mkfs.ext4:e2fsprogs \
           sha256sum:coreutils flock:util-linux setpriv:util-linux; do
    command -v "${cmd%%:*}" >/dev/null \
        || die 69 "${cmd%%:*} is missing: apt-get install -y ${cmd#*:} (scripts/setup-test.sh installs it)"
done

# The cached root ---------------------------------------------------------------------------------
# The stub init baked into the root: mounts the job disk and runs the guest script from it, so a
# change of kernel-vm-guest.sh needs no rebuild.
STUB_INIT='#!/bin/sh
# syswatch VM init stub (scripts/kernel-vm.sh): run the job disk'"'"'s script as PID 1.
mount -t proc proc /proc 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /run/job
if ! mount -t ext4 /dev/vdb /run/job; then
    echo "SYSWATCH-VM-DONE status=125 (cannot mount the job disk /dev/vdb)"
    echo o >/proc/sysrq-trigger; sleep 30
fi
exec /bin/bash /run/job/guest.sh'
recipe() {
    printf 'recipe %s\nsuite %s\nstub %s\n' "$RECIPE_VERSION" "$SUITE" "$STUB_INIT"
    printf '%s\n' "${GUEST_PACKAGES[@]}" | sort -u
}
KEY="$(recipe | sha256sum | cut -c1-16)"
IMG_DIR="$CACHE/root-$KEY"

build_root() {
    local build="$CACHE/build-$KEY.$$" pkgs
    pkgs=$(printf '%s\n' "${GUEST_PACKAGES[@]}" | sort -u | paste -sd, -)
    rm -rf "$CACHE"/build-*          # a build that died half-way (we hold the lock)
    mkdir -p "$build"
    say "stage root: debootstrap --variant=minbase $SUITE ($MIRROR), packages: $pkgs (takes minutes)"
    local start=$SECONDS
    if ! timeout "$BUILD_TIMEOUT" debootstrap --variant=minbase --include="$pkgs" \
            "$SUITE" "$build/root" "$MIRROR" >"$build/debootstrap.log" 2>&1; then
        mkdir -p "$CACHE/logs"
        cp "$build/debootstrap.log" "$CACHE/logs/debootstrap-failed-$KEY.log"
        [[ -f $build/root/debootstrap/debootstrap.log ]] \
            && cp "$build/root/debootstrap/debootstrap.log" "$CACHE/logs/debootstrap-failed-$KEY.inner.log"
        tail -n 20 "$build/debootstrap.log" >&2
        die 69 "debootstrap failed or took over ${BUILD_TIMEOUT}s (log: $CACHE/logs/debootstrap-failed-$KEY.log)"
    fi
    say "stage root: debootstrap done in $((SECONDS - start))s"
    local r="$build/root"
    printf '%s\n' "$STUB_INIT" >"$r/sbin/syswatch-vm-init"
    chmod 755 "$r/sbin/syswatch-vm-init"
    echo syswatch-vm >"$r/etc/hostname"
    : >"$r/etc/fstab"
    chroot "$r" dpkg-query -W -f='${Package} ${Version}\n' >"$build/packages.txt"
    rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/usr/share/doc/* "$r"/usr/share/man/*
    local kernel initrd
    kernel=$(ls "$r"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
    initrd=$(ls "$r"/boot/initrd.img-* 2>/dev/null | sort -V | tail -n 1)
    [[ -n $kernel && -n $initrd ]] || die 69 "the root has no kernel or initrd in /boot: $(ls "$r/boot")"
    cp "$kernel" "$build/vmlinuz"
    cp "$initrd" "$build/initrd.img"
    local mb=$(($(du -sm "$r" | cut -f1) * 13 / 10 + 512))
    say "stage root: mkfs.ext4 -d into a ${mb} MiB image"
    truncate -s "${mb}M" "$build/root.img"
    mkfs.ext4 -q -F -L syswatch-root -d "$r" "$build/root.img" >"$build/mkfs.log" 2>&1 \
        || die 69 "mkfs.ext4 -d failed: $(cat "$build/mkfs.log")"
    rm -rf "$r"
    recipe >"$build/recipe.txt"
    echo "built $(date -u +%FT%TZ) in $((SECONDS - start))s" >"$build/built.txt"
    rm -rf "$IMG_DIR"
    mv "$build" "$IMG_DIR"
    # older roots (another package list) are of no further use
    find "$CACHE" -maxdepth 1 -name 'root-*' ! -name "root-$KEY" -exec rm -rf {} +
    say "stage root: built $IMG_DIR ($(du -sh "$IMG_DIR" | cut -f1)) in $((SECONDS - start))s"
}

mkdir -p "$CACHE/logs"
exec 9>"$CACHE/.lock"
flock 9                       # one build at a time; running VMs only read the image
if ((REBUILD)) || [[ ! -f $IMG_DIR/built.txt ]]; then
    build_root
else
    say "stage root: cached $IMG_DIR ($(cat "$IMG_DIR/built.txt"))"
fi
flock -u 9
KVER=$(grep -E '^linux-image-[0-9]' "$IMG_DIR/packages.txt" | head -n 1 || true)
say "guest: ${KVER:-kernel ?}; $(grep -E '^bpftrace ' "$IMG_DIR/packages.txt" || true); $(grep -E '^python3 ' "$IMG_DIR/packages.txt" || true)"
((BUILD_ONLY)) && exit 0

# The job disk: this checkout + the guest script --------------------------------------------------
RUN="$(mktemp -d /tmp/syswatch-vm.XXXXXX)"
LOG="$CACHE/logs/vm-$(date -u +%Y%m%dT%H%M%SZ)-$$.log"
QEMU_PID="" TAIL_PID="" STATUS=125
cleanup() {
    [[ -n $QEMU_PID ]] && kill -9 "$QEMU_PID" 2>/dev/null && wait "$QEMU_PID" 2>/dev/null
    [[ -n $TAIL_PID ]] && kill "$TAIL_PID" 2>/dev/null && wait "$TAIL_PID" 2>/dev/null
    rm -rf "$RUN"
    if [[ -f $LOG ]]; then
        if ((STATUS == 0 && !KEEP_LOG)); then rm -f "$LOG"; else echo "kernel-vm: serial log kept: $LOG"; fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$SECONDS
mkdir -p "$RUN/disk/src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # tracked + untracked-not-ignored files as they are now (deleted ones are left out)
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$RUN/disk/src"
else
    tar -C "$ROOT" --exclude=.git --exclude=__pycache__ --exclude=.pytest_cache -cf - . | tar -xf - -C "$RUN/disk/src"
fi
cp "$ROOT/scripts/kernel-vm-guest.sh" "$RUN/disk/guest.sh"
{
    printf 'GUEST_CI=%q\n' "${CI:-}"
    printf 'PASSES=(%s)\n' "${PASSES[*]}"
    printf 'PASS_ARGS=('; printf '%q ' "${PASS_ARGS[@]}"; printf ')\n'
} >"$RUN/disk/job.env"
mb=$(($(du -sm "$RUN/disk" | cut -f1) * 2 + 64))
truncate -s "${mb}M" "$RUN/job.img"
mkfs.ext4 -q -F -L syswatch-job -d "$RUN/disk" "$RUN/job.img" >"$RUN/mkfs.log" 2>&1 \
    || die 69 "mkfs.ext4 -d for the job disk failed: $(cat "$RUN/mkfs.log")"
say "stage job-disk: checkout ($(du -sh "$RUN/disk/src" | cut -f1)) on a ${mb} MiB ext4 image in $((SECONDS - start))s"

# Boot ------------------------------------------------------------------------------------------
say "stage boot+tests: qemu TCG, ${SMP} CPU(s), ${MEMORY} MiB, limit ${TIMEOUT}s; passes:"
for i in "${!PASSES[@]}"; do say "  SYSWATCH_PROBE=${PASSES[i]} python3 -m pytest ${PASS_ARGS[i]}"; done
: >"$LOG"
start=$SECONDS
# setpriv --pdeathsig: QEMU dies with this script even when the script is SIGKILLed (no trap runs then)
TMPDIR=/var/tmp setpriv --pdeathsig KILL qemu-system-x86_64 -accel tcg -cpu max -smp "$SMP" -m "$MEMORY" \
    -display none -monitor none -serial "file:$LOG" -nic none -no-reboot \
    -kernel "$IMG_DIR/vmlinuz" -initrd "$IMG_DIR/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 init=/sbin/syswatch-vm-init panic=-1 quiet loglevel=3" \
    -drive "file=$IMG_DIR/root.img,format=raw,if=virtio,snapshot=on" \
    -drive "file=$RUN/job.img,format=raw,if=virtio" \
    </dev/null >"$RUN/qemu.out" 2>&1 &
QEMU_PID=$!
if ((!QUIET)); then
    tail -n +1 -f --pid="$QEMU_PID" "$LOG" 2>/dev/null | sed -u 's/\r$//; s/^/guest| /' &
    TAIL_PID=$!
fi
timed_out=0 booted=0
while kill -0 "$QEMU_PID" 2>/dev/null; do
    if ((SECONDS - start > TIMEOUT)); then
        timed_out=1
        say "hard timeout: the VM ran over ${TIMEOUT}s; killing QEMU"
        kill -9 "$QEMU_PID" 2>/dev/null
        break
    fi
    if ((!booted)) && grep -q '^SYSWATCH-VM-BOOTED' "$LOG"; then
        booted=1
        ((QUIET)) && say "guest booted in $((SECONDS - start))s: $(grep -m1 '^SYSWATCH-VM-BOOTED' "$LOG" | tr -d '\r')"
    fi
    sleep 1
done
qemu_rc=0
wait "$QEMU_PID" 2>/dev/null || qemu_rc=$?
QEMU_PID=""
if [[ -n $TAIL_PID ]]; then wait "$TAIL_PID" 2>/dev/null || true; TAIL_PID=""; fi
took=$((SECONDS - start))

# Result ------------------------------------------------------------------------------------------
results=$(tr -d '\r' <"$LOG" | grep -E '^SYSWATCH-VM-(BOOTED|RESULT)' || true)
done_line=$(tr -d '\r' <"$LOG" | grep -E '^SYSWATCH-VM-DONE status=[0-9]+' | tail -n 1 || true)
echo "=== kernel-vm: summary (boot + tests ${took}s)"
[[ -n $results ]] && printf '  %s\n' "${results//$'\n'/$'\n'  }"
if ((timed_out)); then
    STATUS=124
    say "error: no result within ${TIMEOUT}s (raise --timeout or SYSWATCH_VM_TIMEOUT if the machine is just slow)"
elif [[ $done_line =~ status=([0-9]+) ]]; then
    STATUS=${BASH_REMATCH[1]}
    npass=$(grep -c '^SYSWATCH-VM-RESULT' <<<"$results" || true)
    if ((STATUS == 0 && npass != ${#PASSES[@]})); then
        say "error: the guest reported $npass pytest pass(es), ${#PASSES[@]} were asked for"
        STATUS=125
    fi
else
    STATUS=125
    say "error: the guest ended without a result (QEMU exit $qemu_rc: $(tr '\n' ' ' <"$RUN/qemu.out")); last lines of the console:"
    tr -d '\r' <"$LOG" | tail -n 25 | sed 's/^/  | /'
fi
say "exit $STATUS"
exit "$STATUS"
