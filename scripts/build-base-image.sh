#!/usr/bin/env bash
# Make the base images docker-compose builds on: debian:bookworm-slim (the API) and debian:trixie-slim
# (the collector: bpftrace 0.23), whatever the host can do. For each image, the first that works:
#   1. present: `docker image inspect` finds it; nothing to do;
#   2. pull: a registry answers (the registry API's handshake, GET <registry>/v2/, answers 200 or
#      401 with Docker-Distribution-Api-Version: registry/2.0): `docker pull`;
#   3. build: debootstrap --variant=minbase <suite> from a Debian mirror, trimmed like the official
#      slim image, `docker import`ed. The mirror: the host's own when it is Debian (its apt entry for
#      <suite>, else for any Debian suite: one mirror serves them all; /etc/apt/sources.list,
#      sources.list.d/*.list and deb822 sources.list.d/*.sources), else (Ubuntu and other hosts) the
#      documented default http://deb.debian.org/debian (security: http://deb.debian.org/debian-security).
#      The image's apt uses the same mirror, so the Dockerfiles' apt-get steps need no registry either.
# It says which path it took. A build takes under a minute with a nearby mirror; the temporary
# rootfs is removed whatever happens; a pull that fails falls back to the build.
#
# Usage:  scripts/build-base-image.sh [--suite bookworm|trixie|all] [--plan | --print-mirror]
#           --suite SUITE    the Debian suite (default all: bookworm and trixie; bookworm when
#                            SYSWATCH_BASE_IMAGE names one image)
#           --plan           print the path each image would take (present / pull / build, and why);
#                            change nothing
#           --print-mirror   print the mirrors a build would use, build nothing
# Env:    SYSWATCH_SUITE            same as --suite
#         SYSWATCH_BASE_IMAGE       tag to make             (default debian:<suite>-slim)
#         SYSWATCH_PULL             auto: pull when a registry answers; never: always build (default auto)
#         SYSWATCH_REGISTRY         registry asked          (default https://registry-1.docker.io)
#         SYSWATCH_REGISTRY_TIMEOUT seconds for its answer  (default 5)
#         SYSWATCH_MIRROR           Debian mirror URL       (default: as above)
#         SYSWATCH_SECURITY_MIRROR  security mirror URL     (default: the host's '<suite>-security' entry,
#                                                            or any '*-security' one; none: left out)
#         SYSWATCH_APT_ETC          the host's apt directory (default /etc/apt)
#         SYSWATCH_OS_RELEASE       the host's os-release   (default /etc/os-release)
# Examples:
#   sudo scripts/build-base-image.sh                  # debian:bookworm-slim and debian:trixie-slim
#   sudo scripts/build-base-image.sh --suite trixie
#   scripts/build-base-image.sh --plan                # which path each image would take
#   sudo SYSWATCH_PULL=never SYSWATCH_MIRROR=http://ftp.de.debian.org/debian scripts/build-base-image.sh
set -euo pipefail

APT_ETC="${SYSWATCH_APT_ETC:-/etc/apt}"
# Default: both images compose builds from (one image when SYSWATCH_BASE_IMAGE names it: bookworm).
SUITE="${SYSWATCH_SUITE:-$([[ -n ${SYSWATCH_BASE_IMAGE:-} ]] && echo bookworm || echo all)}"

say() { echo "build-base-image: $*"; }
die() { echo "build-base-image: error: $*" >&2; exit 1; }

PRINT_MIRROR=0 PLAN=0
while (($#)); do
    case $1 in
        --print-mirror) PRINT_MIRROR=1 ;;
        --plan) PLAN=1 ;;
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
            if ((PRINT_MIRROR)); then "$0" --suite "$s" --print-mirror
            elif ((PLAN)); then "$0" --suite "$s" --plan
            else "$0" --suite "$s"; fi || exit $?
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
DEFAULT_MIRROR=http://deb.debian.org/debian
DEFAULT_SECURITY_MIRROR=http://deb.debian.org/debian-security
HOST_ID="$(sed -n 's/^ID=//p' "${SYSWATCH_OS_RELEASE:-/etc/os-release}" 2>/dev/null | tr -d '"' | head -n 1)"
# The URI of the host's entry for suite $1, else of its first entry whose suite matches the regex $2.
first_uri() { awk -v s="$1" -v t="$2" '$2 == s { print $1; exit } $2 ~ t && !f { f = $1 } END { if (f) print f }' <<<"$SOURCES" | head -n 1; }
MIRROR_FROM="SYSWATCH_MIRROR"
if [[ -n ${SYSWATCH_MIRROR:-} ]]; then
    MIRROR=$SYSWATCH_MIRROR
elif [[ $HOST_ID == debian ]]; then
    MIRROR="$(first_uri "$SUITE" '^(bookworm|trixie|forky|sid|stable|testing|unstable)$')"
    MIRROR_FROM="the host's apt sources"
    [[ -n $MIRROR ]] || die "no '$SUITE' entry in $APT_ETC/sources.list or $APT_ETC/sources.list.d/; set SYSWATCH_MIRROR=http://<your mirror>/debian"
else
    MIRROR=$DEFAULT_MIRROR
    MIRROR_FROM="the default: this host (${HOST_ID:-unknown}) is not Debian"
fi
if [[ -n ${SYSWATCH_SECURITY_MIRROR+set} ]]; then
    SECURITY_MIRROR=$SYSWATCH_SECURITY_MIRROR
elif [[ $HOST_ID == debian ]]; then
    SECURITY_MIRROR="$(first_uri "$SUITE-security" '-security$')"
else
    SECURITY_MIRROR=$DEFAULT_SECURITY_MIRROR
fi
MIRROR="${MIRROR%/}"
SECURITY_MIRROR="${SECURITY_MIRROR%/}"
if ((PRINT_MIRROR)); then
    echo "mirror: $MIRROR"
    echo "security: ${SECURITY_MIRROR:-none}"
    exit 0
fi

# Which path: present, pull or build ----------------------------------------------------------------
REGISTRY="${SYSWATCH_REGISTRY:-https://registry-1.docker.io}"
REGISTRY="${REGISTRY%/}"
REGISTRY_TIMEOUT="${SYSWATCH_REGISTRY_TIMEOUT:-5}"
PULL="${SYSWATCH_PULL:-auto}"
[[ $PULL == auto || $PULL == never ]] || die "SYSWATCH_PULL must be auto or never, not '$PULL'"
REGISTRY_SAYS=""
registry_answers() {  # 0 when $REGISTRY speaks the registry API; REGISTRY_SAYS tells what it answered
    local headers status
    command -v curl >/dev/null || { REGISTRY_SAYS="curl is missing"; return 1; }
    if ! headers="$(curl -sS -o /dev/null -D - --max-time "$REGISTRY_TIMEOUT" "$REGISTRY/v2/" 2>&1)"; then
        REGISTRY_SAYS="no answer ($(tail -n 1 <<<"$headers" | tr -d '\r'))"
        return 1
    fi
    status="$(awk 'NR == 1 { print $2 }' <<<"$headers")"
    if [[ $status =~ ^(200|401)$ ]] && grep -qi '^docker-distribution-api-version: *registry/2.0' <<<"$headers"; then
        REGISTRY_SAYS="HTTP $status, registry/2.0"
        return 0
    fi
    REGISTRY_SAYS="HTTP ${status:-?} without the registry API's header: not a registry"
    return 1
}
docker_image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null | cut -c1-19; }

if id="$(docker_image_id "$IMAGE")" && [[ -n $id ]]; then
    PATH_TAKEN=present WHY="$id"
elif [[ $PULL == never ]]; then
    PATH_TAKEN=build WHY="SYSWATCH_PULL=never"
elif registry_answers; then
    PATH_TAKEN=pull WHY="$REGISTRY/v2/ answered: $REGISTRY_SAYS"
else
    PATH_TAKEN=build WHY="$REGISTRY/v2/: $REGISTRY_SAYS"
fi
if ((PLAN)); then
    case $PATH_TAKEN in
        present) echo "$IMAGE: present ($WHY)" ;;
        pull) echo "$IMAGE: pull ($WHY)" ;;
        build) echo "$IMAGE: build with debootstrap $SUITE from $MIRROR ($MIRROR_FROM; security: ${SECURITY_MIRROR:-none}) ($WHY)" ;;
    esac
    exit 0
fi

if [[ $PATH_TAKEN == present ]]; then
    say "$IMAGE already present ($WHY); nothing to do"
    exit 0
fi
docker info >/dev/null 2>&1 || die "dockerd does not answer: start it (scripts/setup-host.sh does it)"
if [[ $PATH_TAKEN == pull ]]; then
    say "pulling $IMAGE ($WHY)"
    if docker pull -q "$IMAGE" >/dev/null; then
        say "pulled $IMAGE ($(docker_image_id "$IMAGE"))"
        exit 0
    fi
    say "docker pull $IMAGE failed (above); building it with debootstrap instead"
fi
[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap needs it): sudo $0"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap (scripts/setup-host.sh does it)"
say "building $IMAGE with debootstrap from $MIRROR ($MIRROR_FROM; security: ${SECURITY_MIRROR:-none}) ($WHY)"

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
