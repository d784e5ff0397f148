#!/bin/bash
# Publish throughput through the cluster: a single node (no Redis), then 1, 2 and 4 nodes on one
# redis-server; every server on CPU 0, the bench's publishers on CPU 1. Single publishes and
# batches of 100, ROUNDS rounds interleaved. Usage: cluster-tp.sh BIN SECONDS ROUNDS OUTDIR
set -u
BIN=$1; SECS=$2; ROUNDS=$3; OUT=$4
mkdir -p "$OUT"
start_nodes() { # $1 = count (0: single node without redis); echoes "apis pids"
  local n=$1 apis="" pids="" port
  if [ "$n" = 0 ]; then
    taskset -c 0 "$BIN" serve --shards 1 --cores 0 --listen 127.0.0.1:19180 --api 127.0.0.1:19181 \
      --sys-stats-interval-ms 0 > "$OUT/node-0.log" 2>&1 &
    pids=$!; apis=http://127.0.0.1:19181
  else
    taskset -c 0 redis-server --port 16400 --bind 127.0.0.1 --save "" --appendonly no > "$OUT/redis.log" 2>&1 &
    REDIS=$!; sleep 0.5; pids=$REDIS
    for i in $(seq 1 "$n"); do
      port=$((19180 + 2 * i))
      taskset -c 0 "$BIN" serve --shards 1 --cores 0 --listen 127.0.0.1:$port --api 127.0.0.1:$((port + 1)) \
        --redis redis://127.0.0.1:16400 --sys-stats-interval-ms 0 > "$OUT/node-$i.log" 2>&1 &
      pids="$pids,$!"; apis="$apis${apis:+,}http://127.0.0.1:$((port + 1))"
    done
  fi
  for api in ${apis//,/ }; do
    for _ in $(seq 1 100); do
      curl -s "$api/v1/stats" | grep -q '"connected":true\|"cluster":null' && break
      [ "$n" = 0 ] && curl -s "$api/healthz" >/dev/null && break
      sleep 0.1
    done
  done
  echo "$apis $pids"
}
for round in $(seq 1 "$ROUNDS"); do
  for n in 0 1 2 4; do
    read -r apis pids < <(start_nodes $n)
    for batch in 1 100; do
      echo "== round $round nodes $n batch $batch (pids $pids)" | tee -a "$OUT/all.txt"
      taskset -c 1 "$BIN" bench --throughput-s "$SECS" --api "$apis" --publishers 8 --batch $batch \
        --cpu 1 --pids "$pids" --channel tp.1 2>&1 | tee -a "$OUT/all.txt"
    done
    kill ${pids//,/ } 2>/dev/null; wait 2>/dev/null; sleep 1
  done
done
