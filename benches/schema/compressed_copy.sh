#!/usr/bin/env bash
# Binary COPY speed of late rows into an uncompressed vs a compressed chunk,
# with agent_events' real key and compression settings. Needs a TimescaleDB
# database ($DATABASE_URL) migrated by agent-telemetry and holding a loadgen
# run. docs/schema.md gives the figures measured.
#   LATE_ROWS=1000 benches/schema/compressed_copy.sh
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL to a TimescaleDB database with loadgen data}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir"
psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" >/dev/null 2>&1 <<SQL
\\copy agent_events to '$dir/base.bin' binary
CREATE TEMP TABLE late AS SELECT * FROM agent_events LIMIT ${LATE_ROWS:-1000};
UPDATE late SET id = gen_random_uuid(), "timestamp" = "timestamp" + INTERVAL '1 millisecond';
\\copy late to '$dir/late.bin' binary
SQL
for compressed in false true; do
  psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" >/dev/null 2>&1 <<SQL
DROP TABLE IF EXISTS probe;
CREATE TABLE probe (LIKE agent_events INCLUDING ALL);
SELECT create_hypertable('probe', by_range('timestamp', INTERVAL '1 day'), create_default_indexes => false);
\\copy probe from '$dir/base.bin' binary
ALTER TABLE probe SET (timescaledb.compress,
  timescaledb.compress_segmentby = 'project_id, agent_id, event_type',
  timescaledb.compress_orderby = '"timestamp" DESC, id');
SELECT compress_chunk(c) FROM show_chunks('probe') c WHERE $compressed;
CHECKPOINT;
SQL
  start=$(date +%s.%N)
  psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "\\copy probe from '$dir/late.bin' binary" >/dev/null
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  printf 'into %-12s chunk: %d rows in %6.1f s = %8.0f rows/s\n' \
    "$([ $compressed = true ] && echo compressed || echo uncompressed)" "${LATE_ROWS:-1000}" "$secs" "$(echo "${LATE_ROWS:-1000} / $secs" | bc -l)"
done
psql -q "$DATABASE_URL" -c "DROP TABLE probe"
