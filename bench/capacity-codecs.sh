#!/usr/bin/env bash
# Codec capacity on a noisy machine: rounds of one step each of the plain PCMU barge, the
# G.722 barge and the Opus-agent/PCMU-trunk monitored call, same binary, same core, so
# that each round shares the machine's state (docs/perf.md, "Codec capacity"). Needs
# `cargo build --release -p earshot-bench` first.
#
# Environment: ROUNDS (3), STEP (ms per step, 3000), N_PCMU (1000), N_G722 (400),
# N_OPUS (150) sessions per step (below saturation), OUT (result JSON directory, default
# a temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}; STEP=${STEP:-3000}
out=${OUT:-$(mktemp -d)}
run() { # name scenario sessions
  nice -n -20 target/release/earshot-bench capacity --scenario "bench/scenarios/$2" \
    --ramp "$3" --step-ms "$STEP" --max-seconds 10 --core 0 --results "$out" --name "$1" 2>&1 |
    grep -v "^capacity (" | sed "s/^/$1: /"
}
for i in $(seq 1 "$ROUNDS"); do
  run "r$i-pcmu" capacity.json "${N_PCMU:-1000}"
  run "r$i-g722" capacity-g722-barge.json "${N_G722:-400}"
  run "r$i-opus" capacity-opus-pcmu-monitor.json "${N_OPUS:-150}"
done
python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
step = lambda name: json.load(open(f"{out}/{name}.json"))["result"]["steps"][0]
for kind, unit in [("pcmu", "barge sessions"), ("g722", "barge sessions (x3 G.722 legs)"), ("opus", "monitored Opus/PCMU calls")]:
    p = [step(f"r{i}-{kind}")["projected_sessions"] for i in range(1, rounds + 1)]
    print(f"{kind}: projected {unit} per core: {[round(x) for x in p]}; median {statistics.median(p):.0f}")
PY
