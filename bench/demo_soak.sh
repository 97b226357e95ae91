#!/usr/bin/env bash
# `make demo`'s run step N times (default 10) while a burner keeps every core busy; prints how
# many passed. Issue 8: the demo must pass 10 runs out of 10 on a loaded machine.
#   bash bench/demo_soak.sh [RUNS]
set -u
cd "$(dirname "$0")/.."
runs=${1:-10}
burners=()
for _ in $(seq "$(nproc)"); do ( while :; do :; done ) & burners+=($!); done
trap 'kill "${burners[@]}" 2>/dev/null' EXIT
passed=0
for i in $(seq "$runs"); do
  start=$(date +%s.%N)
  if timeout -s INT -k 10 120 .venv/bin/python demo/run.py >"/tmp/demo-soak-$i.log" 2>&1; then
    passed=$((passed + 1)); verdict=pass
  else
    verdict="FAIL (log: /tmp/demo-soak-$i.log)"
  fi
  awk -v i="$i" -v v="$verdict" -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "run %2d: %s in %.1f s\n", i, v, e - s }'
done
echo "demo passed $passed of $runs runs with $(nproc) core(s) busy"
[ "$passed" = "$runs" ]
