#!/usr/bin/env bash
# Ingest cost of each candidate index on agent_events: binary COPY of the
# same rows into a fresh hypertable with the primary key and the time index,
# plus one candidate index at a time, then with the chosen set. Needs a
# TimescaleDB database ($DATABASE_URL) migrated by agent-telemetry and
# holding a loadgen run; docs/schema.md gives the commands and the figures.
#   benches/schema/index_cost.sh
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL to a TimescaleDB database with loadgen data}"
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
chmod 644 "$rows"
psql -q "$DATABASE_URL" -c "\\copy agent_events to '$rows' binary"
n=$(psql -qAt "$DATABASE_URL" -c "SELECT count(*) FROM agent_events")

variants=(
  "primary key + time only|"
  "+ (session_id, ts)|CREATE INDEX ON probe (session_id, \"timestamp\" DESC)"
  "+ (project_id, ts)|CREATE INDEX ON probe (project_id, \"timestamp\" DESC)"
  "+ (agent_id, ts)|CREATE INDEX ON probe (agent_id, \"timestamp\" DESC)"
  "+ (event_type, ts)|CREATE INDEX ON probe (event_type, \"timestamp\" DESC)"
  "+ (agent_id, event_type, ts)|CREATE INDEX ON probe (agent_id, event_type, \"timestamp\" DESC)"
  "+ GIN (tags)|CREATE INDEX ON probe USING gin (tags)"
  "+ (severity, ts)|CREATE INDEX ON probe (severity, \"timestamp\" DESC)"
  "+ (ts) WHERE severity warning/error|CREATE INDEX ON probe (\"timestamp\" DESC) WHERE severity IN ('warning', 'error')"
  "chosen set (docs/schema.md)|CREATE INDEX ON probe (session_id, \"timestamp\" DESC); CREATE INDEX ON probe (project_id, \"timestamp\" DESC); CREATE INDEX ON probe (agent_id, event_type, \"timestamp\" DESC); CREATE INDEX ON probe USING gin (tags); CREATE INDEX ON probe (\"timestamp\" DESC) WHERE severity IN ('warning', 'error')"
)
printf '%-40s %9s %12s %10s\n' variant seconds rows/s index_MB
for v in "${variants[@]}"; do
  IFS='|' read -r name extra <<<"$v"
  psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" >/dev/null 2>&1 <<SQL
DROP TABLE IF EXISTS probe;
CREATE TABLE probe (LIKE agent_events INCLUDING DEFAULTS);
ALTER TABLE probe ADD PRIMARY KEY (id, "timestamp");
SELECT create_hypertable('probe', by_range('timestamp', INTERVAL '1 day'));
$extra;
CHECKPOINT;
SQL
  start=$(date +%s.%N)
  psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "\\copy probe from '$rows' binary" >/dev/null
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  mb=$(psql -qAt "$DATABASE_URL" -c "SELECT round((SELECT sum(index_bytes) FROM chunks_detailed_size('probe')) / 1048576.0)")
  printf '%-40s %9.1f %12.0f %10s\n' "$name" "$secs" "$(echo "$n / $secs" | bc -l)" "$mb"
done
psql -q "$DATABASE_URL" -c "DROP TABLE probe"
