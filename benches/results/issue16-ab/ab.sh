#!/bin/bash
# A/B of fan-out on ordinary channels: alternates two corecast binaries, one shard on CPU 0,
# the bench on CPU 1. Usage: ab.sh BASE NEW SUBS INTERVAL_MS EVENTS ROUNDS OUTDIR
set -u
BASE=$1; NEW=$2; SUBS=$3; INTERVAL=$4; EVENTS=$5; ROUNDS=$6; OUT=$7
BENCH=/work/main/target/release/corecast
mkdir -p "$OUT"
ulimit -n 20000
for round in $(seq 1 "$ROUNDS"); do
  for name in base new; do
    if [ $name = base ]; then BIN=$BASE; else BIN=$NEW; fi
    taskset -c 0 "$BIN" serve --shards 1 --cores 0 --listen 127.0.0.1:19080 --api 127.0.0.1:19081 \
      --sys-stats-interval-ms 0 > "$OUT/$name-$round.server.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 50); do curl -s 127.0.0.1:19081/healthz >/dev/null && break; sleep 0.1; done
    taskset -c 1 "$BENCH" bench --ws ws://127.0.0.1:19080/ws --api http://127.0.0.1:19081 \
      --subscribers "$SUBS" --events "$EVENTS" --interval-ms "$INTERVAL" --cpu 1 \
      --server-pid $PID --timeout-s 300 --json "$OUT/$name-$round.json" > "$OUT/$name-$round.txt" 2>&1
    echo "round $round $name rc=$?"
    kill $PID; wait $PID 2>/dev/null
    sleep 1
  done
done
