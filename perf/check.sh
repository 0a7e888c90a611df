#!/usr/bin/env bash
# Compares a fresh callgrind run against perf/baseline.json: fails if any operation
# costs more than the threshold (default 10%) above its baseline instruction count.
#
# Usage: perf/check.sh [MODE...]
# Environment: PERF_THRESHOLD_PCT (default 10), and those of callgrind.sh.
# CI runs it (.ci/run) after the tests: 10-20 seconds of valgrind after the release
# build. Run it before and after a change to the packet or tick path, and refresh the
# baseline with `perf/callgrind.sh --out perf/baseline.json` when a change is intended.
# An operation whose kernel differs from the baseline's (say AVX-512 detected where the
# baseline was taken on AVX2) is printed but not judged: its count measures another
# instruction sequence.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
baseline="$root/perf/baseline.json"
threshold="${PERF_THRESHOLD_PCT:-10}"
fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT

"$root/perf/callgrind.sh" --out "$fresh" "$@"
echo
awk -v threshold="$threshold" '
    # Lines of the form {"mode": "x", ..., "instructions_per_op": N, ...}
    function field(line, key,    s) {
        if (!match(line, "\"" key "\": \"?[^\",]*")) return ""
        s = substr(line, RSTART, RLENGTH)
        sub("\"" key "\": \"?", "", s)
        return s
    }
    FNR == NR && /"mode":/ {
        base[field($0, "mode")] = field($0, "instructions_per_op")
        kernel[field($0, "mode")] = field($0, "kernel")
        next
    }
    /"mode":/ {
        mode = field($0, "mode"); now = field($0, "instructions_per_op")
        if (!(mode in base)) { printf "%-14s %12s  (no baseline)\n", mode, now; next }
        if (field($0, "kernel") != kernel[mode]) {
            printf "%-14s %12s  (kernel %s, baseline %s: not compared)\n", mode, now, field($0, "kernel"), kernel[mode]
            next
        }
        pct = (now - base[mode]) * 100 / base[mode]
        verdict = "ok"
        if (pct > threshold) { verdict = "REGRESSION"; failed = 1 }
        else if (pct < -threshold) verdict = "faster: refresh the baseline"
        printf "%-14s %12s -> %12s  %+6.1f%%  %s\n", mode, base[mode], now, pct, verdict
    }
    END { exit failed }
' "$baseline" "$fresh" && echo "perf/check.sh: within ${threshold}% of the baseline" || {
    echo "perf/check.sh: an operation costs more than ${threshold}% above perf/baseline.json" >&2
    exit 1
}
