#!/usr/bin/env bash
# Plain vs SRTP capacity on a noisy machine: alternating plain / SRTP steps at one
# session count, same binary, same core, so that each pair shares the machine's state
# and the ratio of their `projected_sessions` is the SRTP cost (docs/perf.md, "SRTP
# capacity"). Needs `cargo build --release -p earshot-bench` first.
#
# Environment: N (sessions, default 1000: below saturation for both), PAIRS (5), STEP
# (ms per step, 3000), SUITE (aes_cm_128_hmac_sha1_80), OUT (result JSON directory,
# default a temporary one), EXTRA (more earshot-bench flags).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}; PAIRS=${PAIRS:-5}; STEP=${STEP:-3000}; SUITE=${SUITE:-aes_cm_128_hmac_sha1_80}
out=${OUT:-$(mktemp -d)}
for i in $(seq 1 "$PAIRS"); do
  for mode in plain "$SUITE"; do
    nice -n -20 target/release/earshot-bench capacity --scenario bench/scenarios/capacity-srtp.json \
      --srtp "$mode" --ramp "$N" --step-ms "$STEP" --max-seconds 10 --core 0 \
      --results "$out" --name "pair$i-$mode" ${EXTRA:-} 2>&1 | grep -v "^capacity (" | sed "s/^/pair $i $mode: /"
  done
done
python3 - "$out" "$SUITE" "$PAIRS" <<'PY'
import json, statistics, sys
out, suite, pairs = sys.argv[1], sys.argv[2], int(sys.argv[3])
step = lambda name: json.load(open(f"{out}/{name}.json"))["result"]["steps"][0]
rows = [(step(f"pair{i}-plain")["projected_sessions"], step(f"pair{i}-{suite}")["projected_sessions"])
        for i in range(1, pairs + 1)]
ratios = [s / p for p, s in rows]
print("projected plain:", [round(p) for p, _ in rows], "srtp:", [round(s) for _, s in rows])
print(f"srtp/plain per pair: {[round(r, 3) for r in ratios]}; median {statistics.median(ratios):.3f} "
      f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
PY
