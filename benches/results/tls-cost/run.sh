#!/usr/bin/env bash
# What TLS costs per delivery: the release `corecast serve --shards 1 --cores 0`, plain and with
# TLS on the WebSocket port, alternated ROUNDS times, each measured by the same bench run with
# --ws ws:// or wss:// (the control plane stays plain http:// in both, so only the fan-out
# differs). Writes plain-rN.json and tls-rN.json beside this script and prints one line a run.
# Usage: benches/results/tls-cost/run.sh [ROUNDS]   (from the repository root, after
# `cargo build --release`; ports 18080/18081 must be free).
set -euo pipefail
rounds=${1:-3}
here=$(cd "$(dirname "$0")" && pwd)
bin=target/release/corecast
work=$(mktemp -d)
pid=
trap 'if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
for round in $(seq 1 "$rounds"); do
    for mode in plain tls; do
        tls_flags=() bench_flags=(--ws ws://127.0.0.1:18080/ws)
        if [ "$mode" = tls ]; then
            tls_flags=(--tls-cert-file "$work/cert.pem" --tls-key-file "$work/key.pem")
            bench_flags=(--ws wss://127.0.0.1:18080/ws --ca "$work/cert.pem")
        fi
        "$bin" serve --shards 1 --cores 0 --listen 127.0.0.1:18080 --api 127.0.0.1:18081 \
            "${tls_flags[@]}" >"$work/serve.out" 2>"$work/serve.err" &
        pid=$!
        for _ in $(seq 100); do
            grep -q '^listening ' "$work/serve.out" && break
            sleep 0.1
        done
        grep -q '^listening ' "$work/serve.out" || { cat "$work/serve.err"; exit 1; }
        out="$here/$mode-r$round.json"
        "$bin" bench --subscribers 1000 --events 200 --interval-ms 50 --cpu 1 \
            --server-pid "$pid" --api http://127.0.0.1:18081 "${bench_flags[@]}" \
            --json "$out" >/dev/null
        kill -INT "$pid"
        wait "$pid" || true
        pid=
        python3 - "$mode" "$round" "$out" <<'PY'
import json, sys
mode, round_, path = sys.argv[1:]
r = json.load(open(path))
print(f"{mode:5} r{round_}: server_cpu_per_delivery_ns={r['server_cpu_per_delivery_ns']} "
      f"fanout_completion_us_p50={r['fanout_completion_us_p50']} "
      f"p99={r['fanout_completion_us_p99']} latency_us_p50={r['latency_us_p50']} "
      f"p99={r['latency_us_p99']} lost={r['lost']}")
PY
    done
done
