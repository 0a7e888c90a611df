#!/usr/bin/env bash
# Instructions per operation for every earshot-perf-kernels mode, counted by callgrind.
#
# Each mode runs twice under `valgrind --tool=callgrind`, with a small and a large
# iteration count; instructions per operation = (Ir(large) - Ir(small)) / (large - small),
# which cancels process start-up and workload set-up. Callgrind counts instructions, not
# time, so the numbers repeat run to run and machine to machine (for one build and one
# instruction set). Prints a table and writes the result as JSON.
#
# Usage: perf/callgrind.sh [--out FILE] [MODE...]
#   --out FILE  where to write the JSON (default: perf/baseline.json)
#   MODE...     a subset of modes (default: all; `earshot-perf-kernels list`)
# Environment: CARGO_TARGET_DIR (default: target/ at the workspace root), PERF_SCALE
# (multiplies the iteration counts; default 1).
# Takes 10-20 seconds on the 2-core machine after the release build.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/perf/baseline.json"
modes=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) modes+=("$1"); shift ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
scale="${PERF_SCALE:-1}"
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }

(cd "$root" && cargo build --release --quiet -p earshot-perf --bin earshot-perf-kernels)
bin="$CARGO_TARGET_DIR/release/earshot-perf-kernels"
cgdir="$CARGO_TARGET_DIR/callgrind"
mkdir -p "$cgdir"

declare -A unit
while read -r m u; do unit[$m]="${u//_/ }"; done < <("$bin" list)
if [ ${#modes[@]} -eq 0 ]; then
    mapfile -t modes < <("$bin" list | awk '{print $1}')
fi

# Iteration counts: the shard modes cost thousands of instructions per operation, the
# DSP kernels hundreds; both pairs put 10^7-10^8 instructions in the difference.
iterations() {
    case "$1" in
        forward|forward-pure|barge-tick) echo "$((2000 * scale)) $((12000 * scale))" ;;
        *) echo "$((20000 * scale)) $((120000 * scale))" ;;
    esac
}

# Total instructions executed (Ir) of one run, from the callgrind output file.
run_ir() {
    local mode="$1" n="$2" file="$cgdir/$1-$2.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$file" \
        "$bin" "$mode" "$n" >"$cgdir/$mode-$n.stdout" 2>"$cgdir/$mode-$n.log"
    awk '/^totals:/ {print $2; found=1} END {if (!found) exit 1}' "$file"
}

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
printf '%-14s %-15s %-8s %12s %14s %14s\n' mode unit kernel "Ir/op" "Ir(small)" "Ir(large)"
for mode in "${modes[@]}"; do
    [ -n "${unit[$mode]:-}" ] || { echo "callgrind.sh: unknown mode $mode" >&2; exit 2; }
    read -r small large < <(iterations "$mode")
    ir_small=$(run_ir "$mode" "$small")
    ir_large=$(run_ir "$mode" "$large")
    kernel=$(sed -n 's/.*kernel=\([^ ]*\).*/\1/p' "$cgdir/$mode-$large.stdout")
    per_op=$(awk -v a="$ir_small" -v b="$ir_large" -v m="$small" -v n="$large" \
        'BEGIN {printf "%.1f", (b - a) / (n - m)}')
    printf '%-14s %-15s %-8s %12s %14s %14s\n' \
        "$mode" "${unit[$mode]}" "$kernel" "$per_op" "$ir_small" "$ir_large"
    # One operation per line: check.sh reads this file with awk.
    printf '    {"mode": "%s", "unit": "%s", "kernel": "%s", "instructions_per_op": %s, "iterations": [%s, %s], "instructions": [%s, %s]},\n' \
        "$mode" "${unit[$mode]}" "$kernel" "$per_op" "$small" "$large" "$ir_small" "$ir_large" >>"$tmp"
done

{
    echo '{'
    echo '  "tool": "callgrind",'
    echo "  \"valgrind\": \"$(valgrind --version)\","
    echo "  \"rustc\": \"$(rustc --version)\","
    echo '  "method": "(Ir(large) - Ir(small)) / (large - small) iterations of earshot-perf-kernels, release profile",'
    echo '  "ops": ['
    sed '$ s/},$/}/' "$tmp"
    echo '  ]'
    echo '}'
} >"$out"
echo "wrote $out (callgrind files in $cgdir)"
