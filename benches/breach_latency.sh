#!/usr/bin/env bash
# Breach-to-rollback-started latency.
#
# A trivial transactional migration (CREATE TABLE t_marker, with a down script),
# no backup, a long soak sampling one SQL check `SELECT v FROM knob` (max 0)
# every INTERVAL. Once `soak_started` is on pgshepherd's --json stream, wait a
# random 0-1 s, flip the knob (UPDATE knob SET v = 1, autocommit) and take T =
# the server's clock_timestamp() in the statement right after the commit
# returned. Latency = ts(rollback_started) - T. Both clocks are this machine's
# wall clock. A fresh database per repetition.
#
# Usage: benches/breach_latency.sh            (REPS=20 INTERVAL=1s CONSECUTIVE=1)
# Env:   REPS, INTERVAL, CONSECUTIVE, PGBIN, PGSHEPHERD (default target/release/pgshepherd),
#        BACKUP_DIR (where the run journal goes; default inside the bench's temp dir)
# Prints one line per repetition and a summary: min / median / p90 / max in ms,
# plus the decomposition: T -> start of the sample that completes the breach
# streak (with CONSECUTIVE > 1 that includes the earlier breaching samples),
# that sample's cost (sample_ms), and that sample's event -> rollback_started
# (verdict, soak_finished and the state save). flip_ms is the random delay.
# Requires: jq, ss (iproute2), runuser (util-linux) when run as root.

source "$(dirname "$0")/lib.sh"

REPS=${REPS:-20}
INTERVAL=${INTERVAL:-1s}
CONSECUTIVE=${CONSECUTIVE:-1}

[ -x "$PGSHEPHERD" ] || { echo "build first: cargo build --release ($PGSHEPHERD missing)" >&2; exit 1; }
start_cluster
W=$BENCH_TMP/work
BACKUP_DIR=${BACKUP_DIR:-$W/backups}
mkdir -p "$W/migrations/latency" "$BACKUP_DIR"

cat >"$W/migrations/latency/V1__marker.sql" <<'SQL'
CREATE TABLE t_marker (id int);
SQL
cat >"$W/migrations/latency/V1__marker.down.sql" <<'SQL'
DROP TABLE t_marker;
SQL
cat >"$W/plan.yaml" <<YAML
name: bench-breach-latency
target: bench
migrations: migrations/latency
backup:
  enabled: false
soak:
  duration: 60s
  interval: $INTERVAL
  baseline_samples: 1
  checks:
    - name: knob
      sql: SELECT v FROM knob
      max: 0
      consecutive: $CONSECUTIVE
      min_samples: 1
rollback:
  strategy: down
  confirm: 0s
YAML
"$PGSHEPHERD" check "$W/plan.yaml" >/dev/null

describe_machine
echo "journal (--backup-dir): $BACKUP_DIR on $(df --output=fstype "$BACKUP_DIR" | tail -n 1)"
echo "plan: interval $INTERVAL, consecutive $CONSECUTIVE, check SELECT v FROM knob (max 0), $REPS repetitions"
printf '%-4s %8s %10s %10s %10s %10s\n' rep flip_ms latency_ms wait_ms sample_ms decide_ms

epoch_ms() { # RFC 3339 -> epoch milliseconds
    date -d "$1" +%s%3N
}

: >"$W/latency" ; : >"$W/wait" ; : >"$W/sample" ; : >"$W/decide"
for i in $(seq 1 "$REPS"); do
    db=lat_$i
    psql_q -c "CREATE DATABASE $db"
    psql_q -d "$db" -c "CREATE TABLE knob (v int); INSERT INTO knob VALUES (0)"
    out=$W/run$i.jsonl
    : >"$out"
    "$PGSHEPHERD" run "$W/plan.yaml" --database-url "$(db_url "$db")" --now --json \
        --backup-dir "$BACKUP_DIR" >"$out" 2>"$W/run$i.err" &
    pid=$!
    deadline=$((SECONDS + 60))
    until grep -q '"event":"soak_started"' "$out"; do
        if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -gt "$deadline" ]; then
            echo "rep $i: no soak_started" >&2; cat "$W/run$i.err" >&2; exit 1
        fi
        sleep 0.005
    done
    delay_ms=$((RANDOM % 1000))
    sleep "$(printf '0.%03d' "$delay_ms")"
    t_flip=$(psql_q -d "$db" -c "UPDATE knob SET v = 1" \
        -c "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
    rc=0
    wait "$pid" || rc=$?
    if [ "$rc" != 3 ]; then
        echo "rep $i: pgshepherd exited $rc, expected 3 (rolled back)" >&2
        tail -n 5 "$out" >&2; cat "$W/run$i.err" >&2; exit 1
    fi
    rb=$(epoch_ms "$(jq -r 'select(.event == "rollback_started") | .ts' "$out")")
    # The breaching sample: the last check_sample of the soak step.
    read -r s_ts s_ms < <(jq -r 'select(.event == "check_sample" and .step == "soak") | "\(.ts) \(.sample_ms)"' "$out" | tail -n 1)
    s_end=$(epoch_ms "$s_ts")
    latency=$((rb - t_flip))
    # The sample started sample_ms before its event; the flip was waiting for that tick.
    wait_ms=$(awk -v e="$s_end" -v c="$s_ms" -v t="$t_flip" 'BEGIN { printf "%.0f", e - c - t }')
    decide=$((rb - s_end))
    printf '%-4s %8s %10s %10s %10s %10s\n' "$i" "$delay_ms" "$latency" "$wait_ms" "$s_ms" "$decide"
    echo "$latency" >>"$W/latency"; echo "$wait_ms" >>"$W/wait"
    echo "$s_ms" >>"$W/sample"; echo "$decide" >>"$W/decide"
    psql_q -c "DROP DATABASE $db"
done

echo
echo "breach -> rollback_started latency (ms): $(summary_ms <"$W/latency")"
echo "  flip -> sample start (ms):               $(summary_ms <"$W/wait")"
echo "  sample cost (ms, sample_ms):             $(awk '{ printf "%.1f\n", $1 }' "$W/sample" | sort -g | awk '{ v[NR] = $1 } END { printf "min=%.1f median=%.1f max=%.1f\n", v[1], v[int((NR + 1) / 2)], v[NR] }')"
echo "  breaching sample -> rollback_started (ms): $(summary_ms <"$W/decide")"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
