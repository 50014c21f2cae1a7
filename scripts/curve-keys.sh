#!/usr/bin/env bash
# Make the CurveZMQ keys docker-compose.curve.yml expects, with permissions the containers can use.
#
#   DIR/server.key, DIR/server.key_secret       the collector's key pair (secret: root only)
#   DIR/clients/api.key(_secret)                the API's key pair (secret readable by uid 10001 only)
#   DIR/clients/NAME.key(_secret)               one pair per extra subscriber NAME
# Every DIR/clients/*.key (public) is an authorised subscriber; hand each NAME.key_secret to its owner
# (and delete it here). Existing keys are kept, so the script can add subscribers later.
#
# Usage:    scripts/curve-keys.sh DIR [NAME...]
# Examples: scripts/curve-keys.sh keys                 # collector + API only
#           scripts/curve-keys.sh keys alice bob       # and two subscribers on other hosts
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
API_UID=10001   # the API image's syswatch user

die() { echo "curve-keys: error: $*" >&2; exit 1; }
[[ $# -ge 1 && $1 != -* ]] || { sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (the API's secret key is given to uid $API_UID): sudo $0 $*"
mkdir -p "$1/clients"
SHOWN="${1%/}"                 # the directory as the user wrote it, for messages
DIR="$(cd "$1" && pwd)"
shift

make_pair() {  # subdirectory ("" or /clients) name
    local dir="$DIR$1" shown="$SHOWN$1/$2"
    if [[ -f $dir/$2.key && -f $dir/$2.key_secret ]]; then
        echo "curve-keys: $shown.key exists; kept"
    else
        (cd "$ROOT" && python3 -m shared.curve "$dir" "$2" >/dev/null) || die "cannot create $shown.key"
        echo "curve-keys: created $shown.key and $shown.key_secret"
    fi
}
make_pair "" server
make_pair /clients api
for name in "$@"; do
    [[ $name =~ ^[A-Za-z0-9_.-]+$ && $name != server && $name != api ]] || die "bad subscriber name '$name'"
    make_pair /clients "$name"
done

# Public keys and directories readable by all; each secret by its user only.
chmod 0755 "$DIR" "$DIR/clients"
chmod 0644 "$DIR"/server.key "$DIR"/clients/*.key
chmod 0600 "$DIR"/server.key_secret "$DIR"/clients/*.key_secret
chown "$API_UID:$API_UID" "$DIR/clients/api.key_secret"
chmod 0400 "$DIR/clients/api.key_secret"
echo "curve-keys: done; start with: docker-compose -f docker-compose.yml -f docker-compose.curve.yml up -d"
