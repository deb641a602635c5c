#!/usr/bin/env bash
# Late rows by table size: the rate at which a month (and three months) of
# history goes in — 1M events and 100k chat messages spread over 30 (90)
# days, 50 projects — into an empty table, then into one that holds 10M and
# 50M events (filled by loadgen with the same spread between the
# measurements). After each measurement: the tables' and key tables' sizes
# and the service's peak RSS. Embedded database in a scratch folder (native
# TimescaleDB where it is installed). BENCHMARKS.md, "Late rows at scale",
# has the figures.
#   cargo build --release && benches/late_rows.sh 50700
# SIZES overrides the table sizes (events, ascending; default
# "10000000 50000000"); SERVE_ARGS adds flags to serve (e.g.
# "--late-refresh-every 1day" to see what the late-data refreshes cost).
set -euo pipefail
port=${1:-50700}
sizes=${SIZES:-"10000000 50000000"}
bin=${AGENT_TELEMETRY:-target/release/agent-telemetry}
dir=$(mktemp -d)
chmod 755 "$dir"
log="$dir/serve.log"
"$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" ${SERVE_ARGS:-} \
    --metrics-listen "127.0.0.1:$((port + 1000))" \
    --otlp-grpc-listen off --otlp-http-listen off \
    --max-past 100days >"$log" 2>&1 &
svc=$!
trap 'kill -TERM $svc 2>/dev/null; wait $svc 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 120); do grep -q listening "$log" && break; sleep 1; done
ep="http://127.0.0.1:$port"
socket=$(dirname "$(find "$dir/data" -name '.s.PGSQL.*' -print -quit)")
sql() { psql -h "$socket" -p "${socket_port:-5432}" -U postgres -d agent_telemetry -XAtq -c "$1"; }
load() { "$bin" loadgen --endpoint "$ep" --projects 50 --quiet "$@"; }
seed=100
measure() {
    local events
    events=$(sql "SELECT count(*) FROM agent_events")
    for spread in 30days 90days; do
        seed=$((seed + 1))
        load --events 1000000 --messages 100000 --spread "$spread" --seed "$seed" |
            grep rows/s | sed "s/^/$events events, load spread over $spread: /"
    done
    sql "SELECT 'sizes (MB): agent_events ' || hypertable_size('agent_events') / 1000000
            || ', chat_messages ' || hypertable_size('chat_messages') / 1000000
            || ', agent_event_keys ' || pg_total_relation_size('agent_event_keys') / 1000000
            || coalesce(', agent_event_key_archive ' || pg_total_relation_size(to_regclass('agent_event_key_archive')) / 1000000, '')"
    grep VmHWM "/proc/$svc/status" | sed 's/^/service peak RSS: /'
}
measure
for size in $sizes; do
    have=$(sql "SELECT count(*) FROM agent_events")
    seed=$((seed + 1))
    load --events $((size - have)) --messages 0 --spread 30days --seed "$seed" |
        grep rows/s | sed "s/^/fill to $size: /"
    measure
done
curl -s "http://127.0.0.1:$((port + 1000))/metrics" |
    grep -E '^agent_telemetry_(late_refreshes_total|rows_past_key_window_total)'
