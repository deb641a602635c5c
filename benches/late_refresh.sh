#!/usr/bin/env bash
# On-time ingest alone, and while a paced backfill of late rows runs, for
# one --late-settle: a month of history (1M events over 30 days), 1M
# on-time events alone, then 3M events over 30 days paced at 15,000/s with
# 1M on-time events sent 40 s into it; at the end, the late-data refreshes
# each aggregate had. Embedded database in a scratch folder (native
# TimescaleDB where it is installed). BENCHMARKS.md has the figures.
#   cargo build --release && benches/late_refresh.sh 60s 50601
set -euo pipefail
settle=${1:?--late-settle, e.g. 60s or 0}
port=${2:-50600}
bin=${AGENT_TELEMETRY:-target/release/agent-telemetry}
dir=$(mktemp -d)
chmod 755 "$dir" # the embedded cluster runs as postgres when we are root
log="$dir/serve.log"
"$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" \
    --metrics-listen "127.0.0.1:$((port + 1000))" \
    --otlp-grpc-listen off --otlp-http-listen off \
    --max-past 40days --late-settle "$settle" >"$log" 2>&1 &
svc=$!
trap 'kill -TERM $svc 2>/dev/null; wait $svc 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 120); do grep -q listening "$log" && break; sleep 1; done
ep="http://127.0.0.1:$port"
load() { "$bin" loadgen --endpoint "$ep" --messages 0 --quiet "$@"; }
load --events 1000000 --spread 30days --seed 7 | grep rows/s | sed 's/^/history: /'
load --events 1000000 --seed 1 | grep rows/s | sed 's/^/on-time alone: /'
load --events 3000000 --spread 30days --seed 8 --rate 15000 >"$dir/backfill.txt" &
backfill=$!
sleep 40
load --events 1000000 --seed 2 | grep rows/s | sed 's/^/on-time during the backfill: /'
wait $backfill
grep rows/s "$dir/backfill.txt" | sed 's/^/backfill (paced at 15,000\/s): /'
curl -s "http://127.0.0.1:$((port + 1000))/metrics" | grep -E '^agent_telemetry_late_refreshes_total'
