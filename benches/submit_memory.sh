#!/usr/bin/env bash
# Peak memory of the daemon under concurrent large submits.
#
# A throwaway cluster holds a state database and one target; one `pgshepherd
# daemon` gets CONCURRENCY simultaneous POST /v1/runs (curl), each a bundle of
# about SIZE_MB MiB (one migration padded with SQL comments, under the API's
# 8 MiB body limit). The plan requires approval, so the runs stay
# pending_approval and nothing but the submits themselves runs. Reports the
# daemon's VmRSS when idle, its peak (VmHWM) after the submits, the status codes
# and the wall time of the whole batch.
#
# Usage: cargo build --release && benches/submit_memory.sh
# Env:   CONCURRENCY (16), SIZE_MB (7.5), PGBIN, PGSHEPHERD, KEEP_BENCH_TMP.
# Requires: jq, curl, ss (iproute2), runuser (util-linux) when run as root.

source "$(dirname "$0")/lib.sh"

CONCURRENCY=${CONCURRENCY:-16}
SIZE_MB=${SIZE_MB:-7.5}

for tool in jq curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -x "$PGSHEPHERD" ] || { echo "build first ($PGSHEPHERD missing)" >&2; exit 1; }

start_cluster
trap stop_daemon_and_cluster EXIT
W=$BENCH_TMP/work
DATA=$BENCH_TMP/data
mkdir -p "$W/backups" "$W/migrations/big"
cp "$PGSHEPHERD" "$W/pgshepherd"
BIN=$W/pgshepherd
create_bench_databases 1
write_daemon_config 1

# One migration of SIZE_MB MiB: a table, then comment lines.
awk -v mb="$SIZE_MB" 'BEGIN {
    print "CREATE TABLE t_big (id int);"
    line = "-- padding padding padding padding padding padding padding padding padding"
    n = int(mb * 1048576 / (length(line) + 1))
    for (i = 0; i < n; i++) print line
}' >"$W/migrations/big/V1__big.sql"
echo 'DROP TABLE t_big;' >"$W/migrations/big/V1__big.down.sql"
cat >"$W/big.yaml" <<YAML
name: big
target: target_001
migrations: migrations/big
approval:
  required: true
backup:
  enabled: false
soak:
  duration: 10s
  interval: 1s
  checks:
    - name: one
      sql: SELECT 1
      max: 1
rollback:
  strategy: down
YAML
jq -n --rawfile plan "$W/big.yaml" \
    --rawfile up "$W/migrations/big/V1__big.sql" --rawfile down "$W/migrations/big/V1__big.down.sql" \
    '{plan: {path: "big.yaml", content: $plan},
      migrations: {name: "big", files: [{name: "V1__big.sql", content: $up},
                                        {name: "V1__big.down.sql", content: $down}]}}' \
    >"$W/bundle.json"

start_daemon
describe_machine
echo "bundle: $(stat -c %s "$W/bundle.json") bytes; $CONCURRENCY concurrent submits"
sleep 1
idle=$(awk '/^VmRSS:/ { print $2 }' "/proc/$DAEMON_PID/status")

started=$(now_s)
pids=()
for i in $(seq 1 "$CONCURRENCY"); do
    curl -sS -o "$W/body.$i" -w '%{http_code}\n' -X POST \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data-binary @"$W/bundle.json" "$S/v1/runs" >"$W/code.$i" &
    pids+=($!)
done
wait "${pids[@]}"
ended=$(now_s)

cat "$W"/code.* | grep -qvx 201 && { echo "a submit was refused:" >&2; grep -L '"id"' "$W"/body.* | head -1 | xargs head -c 600 >&2; echo >&2; }
peak=$(awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status")
now=$(awk '/^VmRSS:/ { print $2 }' "/proc/$DAEMON_PID/status")
codes=$(cat "$W"/code.* | sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')
stored=$(psql_q -d pgshepherd_state -c "SELECT count(*) FROM runs")
echo "statuses: $codes; runs stored: $stored; batch wall time $(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.2f s", b - a }')"
awk -v i="$idle" -v p="$peak" -v n="$now" 'BEGIN {
    printf "daemon RSS: idle %.1f MB, peak %.1f MB (VmHWM), after the batch %.1f MB\n", i / 1024, p / 1024, n / 1024 }'
