#!/usr/bin/env bash
# Update the vendored uPlot (the dashboard's chart library) in api/static/vendor/uplot/.
#
#   scripts/vendor-uplot.sh            # the version pinned below
#   scripts/vendor-uplot.sh 1.6.33     # another version (then update VERSION below and commit)
#
# Needs npm (apt-get install npm). Downloads the package tarball from the npm registry with
# `npm pack`, checks it against the registry's published sha512 integrity, and copies the built
# browser files and the licence. Nothing else of uPlot is kept; the dashboard works offline.
set -euo pipefail

VERSION="${1:-1.6.32}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/api/static/vendor/uplot"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

command -v npm >/dev/null || { echo "vendor-uplot: error: npm is not installed (apt-get install npm)" >&2; exit 1; }
cd "$TMP"
want="$(npm view "uplot@$VERSION" dist.integrity)"
[[ -n $want ]] || { echo "vendor-uplot: error: uplot@$VERSION not found on the registry" >&2; exit 1; }
npm pack --silent "uplot@$VERSION" >/dev/null
tarball="uplot-$VERSION.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
[[ $got == "$want" ]] || { echo "vendor-uplot: error: $tarball integrity $got != registry's $want" >&2; exit 1; }
tar xzf "$tarball"
mkdir -p "$DEST"
cp package/dist/uPlot.iife.min.js package/dist/uPlot.min.css package/LICENSE "$DEST/"
echo "vendor-uplot: api/static/vendor/uplot/ now holds uPlot $VERSION ($want)"
sed -n '1p' "$DEST/uPlot.iife.min.js"
