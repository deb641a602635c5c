#!/usr/bin/env bash
# Compression ratio of agent_events under candidate segment-by/order-by
# settings, measured on real rows. Needs a TimescaleDB database ($DATABASE_URL)
# migrated by agent-telemetry and holding a loadgen run; docs/schema.md gives
# the commands and the figures measured.
#   benches/schema/compression_ratio.sh
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL to a TimescaleDB database with loadgen data}"
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
chmod 644 "$rows"
psql -q "$DATABASE_URL" -c "\\copy agent_events to '$rows' binary"

variants=(
  "none||\"timestamp\" DESC"
  "project|project_id|\"timestamp\" DESC"
  "project,agent|project_id, agent_id|\"timestamp\" DESC"
  "project,agent,event_type (seed)|project_id, agent_id, event_type|\"timestamp\" DESC"
  "session|session_id|\"timestamp\" DESC"
  "project + order by ts,id|project_id|\"timestamp\" DESC, id"
  "agent,event_type|agent_id, event_type|\"timestamp\" DESC"
  "project,agent,event_type + ts,id (chosen)|project_id, agent_id, event_type|\"timestamp\" DESC, id"
)
printf '%-42s %10s %12s %12s %7s %9s\n' variant rows before after ratio compress_s
for v in "${variants[@]}"; do
  IFS='|' read -r name seg ord <<<"$v"
  psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" >/dev/null 2>&1 <<SQL
DROP TABLE IF EXISTS ratio_probe;
CREATE TABLE ratio_probe (LIKE agent_events INCLUDING ALL);
SELECT create_hypertable('ratio_probe', by_range('timestamp', INTERVAL '1 day'), create_default_indexes => false);
\\copy ratio_probe from '$rows' binary
ALTER TABLE ratio_probe SET (timescaledb.compress, timescaledb.compress_segmentby = '$seg', timescaledb.compress_orderby = '$ord');
SQL
  start=$(date +%s.%N)
  psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "SELECT count(compress_chunk(c)) FROM show_chunks('ratio_probe') c" >/dev/null
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  psql -qAt -F' ' "$DATABASE_URL" -c "SELECT (SELECT count(*) FROM ratio_probe), before_compression_total_bytes, after_compression_total_bytes FROM hypertable_compression_stats('ratio_probe')" |
    while read -r n before after; do
      printf '%-42s %10d %12d %12d %7.1f %9.1f\n' "$name" "$n" "$before" "$after" "$(echo "$before / $after" | bc -l)" "$secs"
    done
done
psql -q "$DATABASE_URL" -c "DROP TABLE ratio_probe"
