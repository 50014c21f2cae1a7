#!/bin/bash
# PID 1 of the test VM (scripts/kernel-vm.sh copies this file onto the per-run disk; the root
# image's /sbin/syswatch-vm-init mounts that disk on /run/job and execs this script).
#
# Reads /run/job/job.env (written by kernel-vm.sh): PASSES (SYSWATCH_PROBE values) and PASS_ARGS
# (each pass's pytest arguments, as one string of shell words), GUEST_CI. For each pass it runs
#     SYSWATCH_PROBE=<value> python3 -m pytest <its arguments>
# in the checkout (/run/job/src), and prints on the serial console, for kernel-vm.sh to parse:
#     SYSWATCH-VM-BOOTED kernel=<release> kprobes=<yes|no> cgroup=<fs type of /sys/fs/cgroup> v1=<v1 mounts>
#     SYSWATCH-VM-RESULT probe=<value> status=<pytest exit> seconds=<n> summary=<pytest's last line>
#     SYSWATCH-VM-DONE status=<0, or the first non-zero pass status>
# then powers the VM off (sysrq o). It never returns: PID 1 exiting would panic the kernel.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb

poweroff_now() {
    sync
    echo o >/proc/sysrq-trigger
    sleep 30                 # the power-off is asynchronous; PID 1 must not exit meanwhile
}
trap 'echo "SYSWATCH-VM-DONE status=${DONE_STATUS:-125}"; poweroff_now' EXIT

mnt() {  # fstype dir [options]: mount unless already mounted
    local fstype=$1 dir=$2 opts=${3:-}
    mkdir -p "$dir"
    mountpoint -q "$dir" && return 0
    mount -t "$fstype" ${opts:+-o "$opts"} "$fstype" "$dir" || echo "guest: warning: cannot mount $fstype on $dir"
}
mnt proc /proc
mnt sysfs /sys
mnt devtmpfs /dev
mnt tmpfs /tmp mode=1777
mnt tmpfs /run/shm mode=1777
mnt debugfs /sys/kernel/debug
mnt tracefs /sys/kernel/tracing
mnt bpf /sys/fs/bpf
mnt cgroup2 /sys/fs/cgroup       # only cgroup2, as on Ubuntu 24.04 and Debian 12 with systemd: pure v2
ln -sfn /proc/self/fd /dev/fd 2>/dev/null
ip link set lo up
hostname syswatch-vm

if [[ -e /sys/kernel/tracing/kprobe_events ]]; then kprobes=yes; else kprobes=no; fi
cgroup=$(stat -f -c %T /sys/fs/cgroup)                          # cgroup2fs on a pure v2 hierarchy
v1=$(awk '$3 == "cgroup" { n++ } END { print n + 0 }' /proc/mounts) # cgroup v1 mounts: none
echo "SYSWATCH-VM-BOOTED kernel=$(uname -r) kprobes=$kprobes cgroup=$cgroup v1=$v1 cpus=$(nproc) uptime=$(cut -d' ' -f1 /proc/uptime)"

# shellcheck source=/dev/null
. /run/job/job.env
cd /run/job/src || { echo "guest: error: no checkout on /run/job/src"; exit 1; }
# SYSWATCH_TEST_SLOWDOWN: the test helpers' start-up waits are multiplied by it (TCG is slow)
export CI="$GUEST_CI" PYTHONDONTWRITEBYTECODE=1 SYSWATCH_VM=1 SYSWATCH_TEST_SLOWDOWN=${SYSWATCH_TEST_SLOWDOWN:-4}

DONE_STATUS=0
for i in "${!PASSES[@]}"; do
    probe=${PASSES[i]}
    eval "args=(${PASS_ARGS[i]})"
    echo "=== guest: pytest with SYSWATCH_PROBE=$probe: python3 -m pytest ${PASS_ARGS[i]}"
    start=$(date +%s)
    SYSWATCH_PROBE=$probe python3 -m pytest -p no:cacheprovider "${args[@]}" 2>&1 | tee /tmp/pytest.out
    status=${PIPESTATUS[0]}
    summary=$(grep -E '^=+ .* in [0-9.]+s' /tmp/pytest.out | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    echo "SYSWATCH-VM-RESULT probe=$probe status=$status seconds=$(($(date +%s) - start)) summary=${summary:-<none>}"
    ((status != 0 && DONE_STATUS == 0)) && DONE_STATUS=$status
done
# leftovers would mean a test did not stop what it started
left=$(pgrep -a bpftrace; pgrep -af collector.collector)
[[ -n $left ]] && echo "guest: warning: processes left running after the tests: $left"
exit 0
