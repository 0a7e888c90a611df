#!/bin/sh
# Fail when the committed xdp-programs/earshot_xdp.o is not what earshot_xdp.c builds to.
# CI runs this so the object embedded by engine/afxdp can never drift from its source.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$here/build.sh" "$tmp/earshot_xdp.o"
if cmp -s "$tmp/earshot_xdp.o" "$here/earshot_xdp.o"; then
    echo "earshot_xdp.o is up to date ($(sha256sum "$here/earshot_xdp.o" | cut -d' ' -f1))"
else
    echo "earshot_xdp.o differs from a fresh build of earshot_xdp.c: run xdp-programs/build.sh" >&2
    exit 1
fi
