#!/usr/bin/env bash
# Dashboard queries by data size: every provisioned dashboard query timed
# over its default range (the last 30 days) on 1M, 10M and 100M events of
# the same shape, in one run of `bench dashboards` (BENCHMARKS.md,
# "Dashboards at scale").
#
# One PostgreSQL cluster with native TimescaleDB (shared_buffers 1GB), one
# database per size. 1M and 10M: loadgen through the service, spread over
# 30 days (50 projects, a tenth as many chat messages). 100M: a year —
# loadgen's last 30 days (100M / 12 events) through the service, then the
# eleven months before generated from it in SQL: each month a copy of that
# one, 30 days earlier per month, with new event ids and new session ids
# (written compressed, `timescaledb.enable_direct_compress_insert`). Then,
# on every database, every chunk compressed, every continuous aggregate
# refreshed over all time, ANALYZE, and `bench dashboards --runs 3`.
#   cargo build --release && benches/dashboards_scale.sh 50800
# SIZES overrides the sizes (default "1000000 10000000 100000000"); KEEP=1
# keeps the cluster (its folder is printed) for more runs.
set -euo pipefail
port=${1:-50800}
sizes=${SIZES:-"1000000 10000000 100000000"}
bin=${AGENT_TELEMETRY:-target/release/agent-telemetry}
dir=${DIR:-$(mktemp -d -p "${TMPDIR:-/tmp}" dashboards.XXXXXX)}
chmod 755 "$dir"
pgbin=$(pg_config --bindir)
pgport=$((port + 2000))
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -d "$dir/pg" ]; then
    mkdir -p "$dir/pg"
    [ "$(id -u)" = 0 ] && chown postgres "$dir/pg"
    as_pg "$pgbin/initdb" -D "$dir/pg" -U postgres --auth=trust >/dev/null
    cat >>"$dir/pg/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$dir/pg'
port = $pgport
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
shared_buffers = 1GB
max_wal_size = 4GB
fsync = off
full_page_writes = off
EOF
fi
as_pg "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg/server.log" -w start >/dev/null
stop() {
    as_pg "$pgbin/pg_ctl" -D "$dir/pg" -m fast -w stop >/dev/null || true
    [ -n "${KEEP:-}" ] && echo "cluster kept in $dir" || rm -rf "$dir"
}
trap stop EXIT
url() { echo "postgresql://postgres@localhost/$1?host=$dir/pg&port=$pgport"; }
sql() { psql -h "$dir/pg" -p "$pgport" -U postgres -d "$1" -XAtq -c "$2"; }

# Loads `events` events and a tenth as many messages over the last 30 days
# through the service, into database `db`.
load() {
    local db=$1 events=$2
    sql postgres "CREATE DATABASE $db"
    local log="$dir/serve-$db.log"
    DATABASE_URL=$(url "$db") "$bin" serve --listen "127.0.0.1:$port" \
        --metrics-listen "127.0.0.1:$((port + 1000))" \
        --otlp-grpc-listen off --otlp-http-listen off --max-past 40days >"$log" 2>&1 &
    local svc=$!
    for _ in $(seq 120); do grep -q listening "$log" && break; sleep 1; done
    "$bin" loadgen --endpoint "http://127.0.0.1:$port" --projects 50 --quiet --seed 7 \
        --events "$events" --messages $((events / 10)) --spread 30days |
        grep rows/s | sed "s/^/$db: /"
    grep VmHWM "/proc/$svc/status" | sed "s/^/$db: service peak RSS: /"
    kill -TERM $svc
    wait $svc || true
}

# Eleven earlier months from the loaded one (see the header).
earlier_months() {
    local db=$1
    sql "$db" "
    CREATE FUNCTION pg_temp.copy_month(t regclass, k int) RETURNS void LANGUAGE plpgsql AS \$\$
    DECLARE cols text; exprs text;
    BEGIN
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum),
               string_agg(CASE attname
                   WHEN 'id' THEN 'gen_random_uuid()'
                   WHEN 'timestamp' THEN '\"timestamp\" - ' || k || ' * INTERVAL ''30 days'''
                   WHEN 'session_id' THEN 'md5(session_id::text || ' || k || ')::uuid'
                   ELSE quote_ident(attname) END, ', ' ORDER BY attnum)
        INTO cols, exprs
        FROM pg_attribute WHERE attrelid = t AND attnum > 0 AND NOT attisdropped;
        EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM %s WHERE \"timestamp\" > now() - INTERVAL ''31 days''',
                       t, cols, exprs, t);
    END \$\$;
    SET timescaledb.enable_direct_compress_insert = on;
    SELECT pg_temp.copy_month('agent_events', k), pg_temp.copy_month('chat_messages', k)
    FROM generate_series(1, 11) k;
    INSERT INTO chat_sessions (session_id, workspace_id, project_id, agent_type, model_id,
                               started_at, ended_at, message_count, total_tokens, user_id)
    SELECT md5(session_id::text || k)::uuid, workspace_id, project_id, agent_type, model_id,
           started_at - k * INTERVAL '30 days', ended_at - k * INTERVAL '30 days',
           message_count, total_tokens, user_id
    FROM chat_sessions, generate_series(1, 11) k;" >/dev/null
}

# The schema of this build, every chunk compressed (one transaction each:
# the disk holds one chunk's old and new batches at a time, not the whole
# table's), every aggregate refreshed over all time (the hourly ones before
# the daily ones built on them), statistics.
maintain() {
    local db=$1
    DATABASE_URL=$(url "$db") "$bin" migrate >/dev/null
    sql "$db" "DO \$\$ DECLARE c regclass; BEGIN
                   FOR c IN SELECT show_chunks('agent_events') UNION ALL SELECT show_chunks('chat_messages') LOOP
                       PERFORM compress_chunk(c, true); COMMIT;
                   END LOOP;
               END \$\$"
    for view in $(sql "$db" "SELECT view_name FROM timescaledb_information.continuous_aggregates
                             ORDER BY view_definition LIKE '%_hourly%', view_name"); do
        sql "$db" "CALL refresh_continuous_aggregate('$view', NULL, NULL)"
    done
    sql "$db" "VACUUM ANALYZE"
    sql "$db" "CREATE TABLE bench_maintained ()"
    sql "$db" "SELECT '$db: ' || (SELECT count(*) FROM agent_events) || ' events, '
        || (SELECT count(*) FROM chat_messages) || ' messages, agent_events '
        || hypertable_size('agent_events') / 1000000 || ' MB, chat_messages '
        || hypertable_size('chat_messages') / 1000000 || ' MB, database '
        || pg_database_size(current_database()) / 1000000 || ' MB'"
}

dbs=()
for size in $sizes; do
    db="dash_$size"
    dbs+=("$db")
    if ! sql postgres "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
        if [ "$size" -ge 100000000 ]; then
            load "$db" $((size / 12))
            earlier_months "$db"
        else
            load "$db" "$size"
        fi
    fi
    # KEEP=1 runs of a newer build: its migrations and aggregates, once.
    sql "$db" "SELECT to_regclass('bench_maintained')" | grep -q bench_maintained || maintain "$db"
done
against=()
for db in "${dbs[@]:1}"; do against+=(--against "$(url "$db")"); done
DATABASE_URL=$(url "${dbs[0]}") "$bin" bench dashboards --runs 3 "${against[@]}"
