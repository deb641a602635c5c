#!/usr/bin/env bash
# On-time ingest alone, and while a paced backfill of late rows runs, for
# one --late-settle: a month of history (1M events over 30 days), 1M
# on-time events alone, then 3M events over 30 days paced at 15,000/s with
# 1M on-time events sent 40 s into it; at the end, the late-data refreshes
# each aggregate had. Embedded database in a scratch folder (native
# TimescaleDB where it is installed). BENCHMARKS.md has the figures.
#   cargo build --release && benches/late_refresh.sh 60s 50601
# BACKFILL sets the backfill's events (default 3000000) and AT the seconds
# into it at which 1M on-time events are sent (default "40"; e.g.
# BACKFILL=10000000 AT="40 300 600" for a 10M backfill's whole length).
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
load --events "${BACKFILL:-3000000}" --spread 30days --seed 8 --rate 15000 >"$dir/backfill.txt" &
backfill=$!
started=$SECONDS
seed=2
for at in ${AT:-40}; do
    sleep $((at - (SECONDS - started) > 0 ? at - (SECONDS - started) : 0))
    sock=$(find "$dir/data" -name '.s.PGSQL.*' -print -quit)
    late=$(psql -h "$(dirname "$sock")" -p "${sock##*.}" -U postgres -d agent_telemetry -XAtqc \
        "SELECT count(*) FROM agent_events WHERE \"timestamp\" < now() - INTERVAL '1 day'")
    load --events 1000000 --seed "$seed" | grep rows/s |
        sed "s/^/on-time during the backfill, ${at} s in ($late rows older than a day in the table): /"
    seed=$((seed + 1))
done
wait $backfill
grep rows/s "$dir/backfill.txt" | sed 's/^/backfill (paced at 15,000\/s): /'
curl -s "http://127.0.0.1:$((port + 1000))/metrics" | grep -E '^agent_telemetry_late_refreshes_total'
