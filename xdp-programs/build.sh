#!/bin/sh
# Rebuild xdp-programs/earshot_xdp.o reproducibly.
#
# Usage: xdp-programs/build.sh [OUTPUT]   (default OUTPUT: xdp-programs/earshot_xdp.o)
#
# Needs clang-14 and libbpf headers (Debian: apt-get install -y clang-14 libbpf-dev).
# The same clang-14 produces the same bytes run to run: we compile from inside this
# directory with a relative source name and map the directory to a fixed name, so the
# DWARF/BTF carry no absolute path of whoever built it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/earshot_xdp.o"}
case "$out" in /*) ;; *) out="$(pwd)/$out" ;; esac
CLANG=${CLANG:-clang-14}
cd "$here"
"$CLANG" -O2 -g -target bpf \
    -I/usr/include/x86_64-linux-gnu \
    -fdebug-prefix-map="$here"=xdp-programs \
    -fdebug-compilation-dir=xdp-programs \
    -Wall -Werror \
    -c earshot_xdp.c -o "$out"
