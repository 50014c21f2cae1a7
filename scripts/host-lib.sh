# Shared by scripts/setup-host.sh and scripts/setup-test.sh (sourced, not run): which host this is,
# and apt installs that start no service unless asked.
#
# Env: SYSWATCH_OS_RELEASE  the os-release file to read (default /etc/os-release; tests use fixtures)
#      SYSWATCH_APT_ETC     the apt directory to read (default /etc/apt)
# shellcheck shell=bash

OS_RELEASE="${SYSWATCH_OS_RELEASE:-/etc/os-release}"
APT_ETC="${SYSWATCH_APT_ETC:-/etc/apt}"
SUPPORTED_HOSTS="Debian 12 (bookworm), Debian 13 (trixie), Ubuntu 24.04 (noble)"

# DISTRO: debian12 | debian13 | ubuntu2404 | "" (unsupported); HOST_NAME: its PRETTY_NAME
detect_distro() {
    local ID="" VERSION_ID="" PRETTY_NAME="" VERSION_CODENAME=""
    if [[ -r $OS_RELEASE ]]; then
        # shellcheck disable=SC1090
        eval "$(grep -E '^(ID|VERSION_ID|PRETTY_NAME|VERSION_CODENAME)=' "$OS_RELEASE")"
    fi
    HOST_NAME="${PRETTY_NAME:-unknown (no $OS_RELEASE)}"
    case "$ID:$VERSION_ID" in
        debian:12) DISTRO=debian12 ;;
        debian:13) DISTRO=debian13 ;;
        ubuntu:24.04) DISTRO=ubuntu2404 ;;
        debian:*) [[ $VERSION_CODENAME == trixie ]] && DISTRO=debian13 || DISTRO="" ;;  # trixie before release
        *) DISTRO="" ;;
    esac
}

# "URI SUITE COMPONENTS..." for every enabled 'deb' entry of $APT_ETC (one-line and deb822 files)
apt_entries() {
    local f
    for f in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                           line = $i; for (j = i + 1; j <= NF && $j !~ /^#/; j++) line = line " " $j; print line }' "$f"
    done
    for f in "$APT_ETC"/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
             {
               types = uris = suites = comps = ""; enabled = 1
               for (n = 1; n <= NF; n++) {
                 line = $n; if (line ~ /^[ \t]*#/) continue
                 split(line, kv, ":"); key = tolower(kv[1]); val = substr(line, length(kv[1]) + 2)
                 gsub(/^[ \t]+|[ \t]+$/, "", val)
                 if (key == "types") types = val; else if (key == "uris") uris = val
                 else if (key == "suites") suites = val; else if (key == "components") comps = val
                 else if (key == "enabled" && tolower(val) == "no") enabled = 0
               }
               if (!enabled || types !~ /(^|[ \t])deb([ \t]|$)/) next
               nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
               for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++) print u[a], s[b], comps
             }' "$f"
    done
}

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
        apt-get update -q || die "apt-get update failed: check the mirror in $APT_ETC/sources.list(.d)"
        apt_updated=1
    fi
    apt-get install -y -q --no-install-recommends "$@" || die "apt-get install $* failed (see the messages above)"
}

POLICY_RC=/usr/sbin/policy-rc.d
own_policy=0
drop_policy() { ((own_policy)) && rm -f "$POLICY_RC"; own_policy=0; }
# apt_install_quietly PACKAGE...: install with invoke-rc.d/deb-systemd-invoke starting nothing (101)
apt_install_quietly() {
    if [[ ! -e $POLICY_RC ]]; then
        printf '#!/bin/sh\n# written by syswatch scripts/host-lib.sh for one apt-get install\nexit 101\n' >"$POLICY_RC"
        chmod 0755 "$POLICY_RC"
        own_policy=1
    fi
    apt_install "$@"
    drop_policy
}

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
