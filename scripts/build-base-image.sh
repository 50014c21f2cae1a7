#!/usr/bin/env bash
# Build a debian:<suite>-slim base image locally, for hosts that cannot pull from a registry.
# The API image uses debian:bookworm-slim, the collector image debian:trixie-slim (bpftrace 0.23).
#
# When the image is already present this does nothing. Otherwise it runs
#   debootstrap --variant=minbase <suite> <rootfs> <the host's Debian mirror>
# trims apt lists, docs and man pages, points the image's apt at the same mirror the host uses
# (<suite>, <suite>-updates and the host's security mirror, if any) and runs `docker import`.
# Takes under a minute with a nearby mirror; the temporary rootfs is removed whatever happens.
#
# Usage:  sudo scripts/build-base-image.sh [--suite bookworm|trixie|all] [--print-mirror]
#           --suite SUITE    the Debian suite (default all: bookworm and trixie; bookworm when
#                            SYSWATCH_BASE_IMAGE names one image)
#           --print-mirror   print the mirrors it would use, build nothing
# Env:    SYSWATCH_SUITE            same as --suite
#         SYSWATCH_BASE_IMAGE       tag to build            (default debian:<suite>-slim)
#         SYSWATCH_MIRROR           Debian mirror URL       (default: the host's '<suite>' entry, else
#                                                            its 'bookworm' entry: one mirror serves both)
#         SYSWATCH_SECURITY_MIRROR  security mirror URL     (default: the host's '<suite>-security'
#                                                            or 'bookworm-security' entry, for
#                                                            <suite>-security; none: left out)
#         SYSWATCH_APT_ETC          the host's apt directory (default /etc/apt: sources.list,
#                                   sources.list.d/*.list and sources.list.d/*.sources are read)
# Examples:
#   sudo scripts/build-base-image.sh                  # debian:bookworm-slim and debian:trixie-slim
#   sudo scripts/build-base-image.sh --suite trixie
#   sudo SYSWATCH_MIRROR=http://ftp.de.debian.org/debian scripts/build-base-image.sh
set -euo pipefail

APT_ETC="${SYSWATCH_APT_ETC:-/etc/apt}"
# Default: both images compose builds from (one image when SYSWATCH_BASE_IMAGE names it: bookworm).
SUITE="${SYSWATCH_SUITE:-$([[ -n ${SYSWATCH_BASE_IMAGE:-} ]] && echo bookworm || echo all)}"

say() { echo "build-base-image: $*"; }
die() { echo "build-base-image: error: $*" >&2; exit 1; }

PRINT_MIRROR=0
while (($#)); do
    case $1 in
        --print-mirror) PRINT_MIRROR=1 ;;
        --suite) (($# > 1)) || die "--suite needs a value"; SUITE=$2; shift ;;
        --suite=*) SUITE=${1#--suite=} ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
case $SUITE in
    all)  # one run per suite, in child processes so each gets its own cleanup trap
        [[ -z ${SYSWATCH_BASE_IMAGE:-} ]] || die "SYSWATCH_BASE_IMAGE names one image; it cannot be used with --suite all"
        for s in bookworm trixie; do
            if ((PRINT_MIRROR)); then "$0" --suite "$s" --print-mirror; else "$0" --suite "$s"; fi || exit $?
        done
        exit 0 ;;
    bookworm|trixie) ;;
    *) die "unknown suite '$SUITE' (bookworm, trixie or all)" ;;
esac
IMAGE="${SYSWATCH_BASE_IMAGE:-debian:$SUITE-slim}"

# The host's Debian mirrors, from one-line (*.list) and deb822 (*.sources) files.
# Prints "URI SUITE" for every enabled 'deb' entry.
host_sources() {
    local f
    for f in "$APT_ETC"/sources.list "$APT_ETC"/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } print $i, $(i + 1) }' "$f"
    done
    for f in "$APT_ETC"/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
             {
               types = uris = suites = ""; enabled = 1
               for (n = 1; n <= NF; n++) {
                 line = $n; if (line ~ /^[ \t]*#/) continue
                 split(line, kv, ":"); key = tolower(kv[1]); val = substr(line, length(kv[1]) + 2)
                 gsub(/^[ \t]+|[ \t]+$/, "", val)
                 if (key == "types") types = val; else if (key == "uris") uris = val
                 else if (key == "suites") suites = val; else if (key == "enabled" && tolower(val) == "no") enabled = 0
               }
               if (!enabled || types !~ /(^|[ \t])deb([ \t]|$)/) next
               nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
               for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++) print u[a], s[b]
             }' "$f"
    done
}
SOURCES="$(host_sources)"
# A bookworm host usually lists no trixie entry; its bookworm mirror serves trixie as well.
first_uri() { awk -v s="$1" -v t="$2" '$2 == s { print $1; exit } $2 == t && !f { f = $1 } END { if (f) print f }' <<<"$SOURCES" | head -n 1; }
MIRROR="${SYSWATCH_MIRROR:-$(first_uri "$SUITE" bookworm)}"
SECURITY_MIRROR="${SYSWATCH_SECURITY_MIRROR:-$(first_uri "$SUITE-security" bookworm-security)}"
[[ -n $MIRROR ]] || die "no '$SUITE' entry in $APT_ETC/sources.list or $APT_ETC/sources.list.d/; set SYSWATCH_MIRROR=http://<your mirror>/debian"
MIRROR="${MIRROR%/}"
SECURITY_MIRROR="${SECURITY_MIRROR%/}"
if ((PRINT_MIRROR)); then
    echo "mirror: $MIRROR"
    echo "security: ${SECURITY_MIRROR:-none}"
    exit 0
fi

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE already present ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-19)); nothing to do"
    exit 0
fi
[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap needs it): sudo $0"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap (scripts/setup-host.sh does it)"
docker info >/dev/null 2>&1 || die "dockerd does not answer: start it (scripts/setup-host.sh does it)"
say "building $IMAGE with debootstrap from $MIRROR (security: ${SECURITY_MIRROR:-none})"

WORK="$(mktemp -d /var/tmp/syswatch-rootfs.XXXXXX)"
cleanup() {  # a failed debootstrap can leave proc/sys mounted inside the rootfs
    awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l 2>/dev/null || true
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'die "interrupted"' INT TERM
ROOTFS="$WORK/rootfs"

start=$SECONDS
say "debootstrap --variant=minbase $SUITE (log: $WORK/debootstrap.log, shown on failure)"
if ! debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 25 "$WORK/debootstrap.log" >&2
    tail -n 25 "$ROOTFS/debootstrap/debootstrap.log" 2>/dev/null >&2 || true
    die "debootstrap failed (last lines above); check that $MIRROR is reachable"
fi
say "debootstrap done in $((SECONDS - start))s; trimming"

# apt in the image uses the host's mirror (deb822, like debian:bookworm-slim itself).
rm -f "$ROOTFS/etc/apt/sources.list"
{
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$MIRROR" "$SUITE" "$SUITE"
    if [[ -n $SECURITY_MIRROR ]]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$SECURITY_MIRROR" "$SUITE"
    fi
} >"$ROOTFS/etc/apt/sources.list.d/debian.sources"
# What the official slim image does: no docs/man/locales from later installs, no apt caches.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
APT::Install-Recommends "false";
EOF
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* \
       "$ROOTFS"/usr/share/lintian/* "$ROOTFS"/debootstrap
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
: >"$ROOTFS/etc/machine-id"
echo "$SUITE-slim" >"$ROOTFS/etc/hostname"

say "docker import as $IMAGE"
tar -C "$ROOTFS" --numeric-owner -c . \
    | docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' \
        --message "debootstrap --variant=minbase $SUITE from $MIRROR (scripts/build-base-image.sh)" - "$IMAGE" >/dev/null \
    || die "docker import failed"
say "built $IMAGE in $((SECONDS - start))s, size $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
