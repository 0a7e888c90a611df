#!/bin/bash
# Alternates the before/after binaries, same ramp, same machine, one after the other.
B=/work/target-uringcap/bins
cd /work/wt/uringcap
for round in 1 2; do
  for bin in before after; do
    echo "== fifo round $round $bin $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    timeout 300 $B/$bin udp --scenario bench/scenarios/udp-barge-io_uring-ramp.json --ramp 250,500,750,1000,1250 --step-ms 15000 --shard-fifo --results /tmp/uc-final --name fifo2-$bin-$round 2>&1 | grep -E "^udp-ramp|earshot-bench:" | grep -v "^udp-ramp: generator" | sed 's/^udp-ramp: //' | awk '!seen[$0]++'
  done
done
echo done
