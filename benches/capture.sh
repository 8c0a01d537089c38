#!/usr/bin/env bash
# Capture overhead and undo throughput (issue 11): a data migration updating ROWS
# rows of a 3-column table, applied by `pgshepherd run` with and without
# `-- pgshepherd:capture`, side by side in one run on one throwaway cluster; then
# `pgshepherd undo` of the captured one against the same inverse UPDATE typed by
# hand (the physical floor).
#
# - migration time: the `duration_ms` of each run's `migration_applied` event (the
#   migration's transaction, capture setup and teardown included);
# - undo time: the wall time of `pgshepherd undo` (connecting, the lock, the
#   reverting transaction, the report), against psql's wall time for
#   `UPDATE items SET qty = qty - 1` on the database migrated without capture.
# Both databases are identical before each step (same rows, VACUUM ANALYZE).
#
# Usage: benches/capture.sh        Env: ROWS (1000000), PGSHEPHERD (release binary),
#        PGBIN, KEEP_BENCH_TMP. Exits non-zero only when the setup fails.
# Targets (issue 11): with capture <= 2.5x without; undo <= 2x the hand UPDATE.
# Requires: jq, ss (iproute2), runuser when run as root.

source "$(dirname "$0")/lib.sh"
ROWS=${ROWS:-1000000}
[ -x "$PGSHEPHERD" ] || (cd "$REPO" && cargo build --release --quiet)
start_cluster
describe_machine
W=$BENCH_TMP/work
mkdir -p "$W"

setup_db() {
    psql_q -c "CREATE DATABASE $1"
    psql_q -d "$1" -c "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, note text NOT NULL)" \
        -c "INSERT INTO items SELECT g, g % 100, 'item ' || g FROM generate_series(1, $ROWS) g" \
        -c "VACUUM ANALYZE items"
}

# write_plan DIR HEADER: a plan whose V1 adds 1 to every row's qty.
write_plan() {
    mkdir -p "$1/migrations"
    printf '%s\nUPDATE items SET qty = qty + 1;\n' "$2" >"$1/migrations/V1__bump.sql"
    cat >"$1/plan.yaml" <<YAML
name: bump
target: bench
migrations: migrations
backup:
  enabled: false
rollback:
  strategy: hold
soak:
  duration: 1s
  interval: 500ms
  baseline_samples: 1
  checks:
    - name: one
      sql: SELECT 1
      max: 1
      min_samples: 1
      consecutive: 1
YAML
}

setup_db cap_off
setup_db cap_on
write_plan "$W/off" "-- bump every row"
write_plan "$W/on" "-- pgshepherd:capture public.items"

run_plan() { # dir db -> run id and migration ms on stdout
    (cd "$W" && "$PGSHEPHERD" run "$1/plan.yaml" --database-url "$(db_url "$2")" --now --json \
        --backup-dir "$W/backups" 2>"$W/$2.stderr") >"$W/$2.events"
    jq -r 'select(.event == "migration_applied") | "\(.run_id) \(.report.duration_ms // .duration_ms)"' "$W/$2.events"
}

read -r _ off_ms < <(run_plan "$W/off" cap_off)
read -r run_on on_ms < <(run_plan "$W/on" cap_on)
captured=$(psql_q -d cap_on -c "SELECT count(*) FROM pgshepherd.captured_rows")
capture_size=$(psql_q -d cap_on -c "SELECT pg_size_pretty((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('pgshepherd.captured_rows')))")

t0=$(now_s)
(cd "$W" && "$PGSHEPHERD" undo "$run_on" --database-url "$(db_url cap_on)" --json >"$W/undo.events" 2>"$W/undo.stderr")
t1=$(now_s)
undo_ms=$(echo "($t1 - $t0) * 1000" | bc)
reverted=$(jq -r 'select(.event == "undo_finished") | .tables["public.items"].reverted' "$W/undo.events")
t0=$(now_s)
psql_q -d cap_off -c "UPDATE items SET qty = qty - 1"
t1=$(now_s)
hand_ms=$(echo "($t1 - $t0) * 1000" | bc)
same=$(psql_q -d cap_on -c "SELECT sum(qty)::text FROM items")
same_off=$(psql_q -d cap_off -c "SELECT sum(qty)::text FROM items")

echo "rows: $ROWS"
printf 'migration without capture: %.0f ms\n' "$off_ms"
printf 'migration with capture:    %.0f ms (%s changes captured, %s)  ratio %.2f (target <= 2.5)\n' \
    "$on_ms" "$captured" "$capture_size" "$(echo "$on_ms / $off_ms" | bc -l)"
printf 'undo (pgshepherd undo):    %.0f ms (%s rows reverted)\n' "$undo_ms" "$reverted"
printf 'inverse UPDATE by hand:    %.0f ms  ratio %.2f (target <= 2)\n' "$hand_ms" "$(echo "$undo_ms / $hand_ms" | bc -l)"
echo "after both: sum(qty) $same (undone) vs $same_off (by hand)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
