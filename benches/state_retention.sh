#!/usr/bin/env bash
# The state database's size under continuous load, with a short retention.
#
# A throwaway cluster on 127.0.0.1 holds a state database and TARGETS target
# databases; one `pgshepherd daemon` with
#   retention: {samples: SAMPLES, events: EVENTS, notifications: EVENTS,
#               audit: EVENTS, interval: PRUNE_EVERY, batch: 500}
# gets a new run every SUBMIT_EVERY seconds (round robin over the targets; each
# run applies one new migration and soaks SOAK with two checks every INTERVAL,
# so most of its rows are check samples), and a stream of unauthenticated
# requests (SCAN_RATE a second, counted in the audit trail) for DURATION
# seconds. Every REPORT seconds it prints the state database's size
# (pg_database_size), the rows of events / check samples / audit (and the 401s
# they count), and the runs finished so far.
#
# Bounded: DURATION seconds of load (default 240), loopback only; the cluster
# and its files are removed at the end.
#
# Usage: benches/state_retention.sh
# Env:   DURATION (240), TARGETS (6), SOAK (8s), INTERVAL (200ms), SUBMIT_EVERY
#        (2), SCAN_RATE (10), SAMPLES (20s), EVENTS (40s), PRUNE_EVERY (5s),
#        REPORT (15), RETENTION=0 (no pruning: the control), PGBIN, PGSHEPHERD
#        (default target/release/pgshepherd; a debug build works too),
#        KEEP_BENCH_TMP.
# Exits non-zero only when the setup fails, never because of the figures.
# Requires: jq, curl, ss (iproute2), runuser (util-linux) when run as root.

source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-240}
TARGETS=${TARGETS:-6}
SOAK=${SOAK:-8s}
INTERVAL=${INTERVAL:-200ms}
SUBMIT_EVERY=${SUBMIT_EVERY:-2}
SCAN_RATE=${SCAN_RATE:-10}
SAMPLES=${SAMPLES:-20s}
EVENTS=${EVENTS:-40s}
PRUNE_EVERY=${PRUNE_EVERY:-5s}
REPORT=${REPORT:-15}
RETENTION=${RETENTION:-1}

for tool in jq curl sha256sum; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -x "$PGSHEPHERD" ] || { echo "build first: cargo build --release ($PGSHEPHERD missing)" >&2; exit 1; }

SCAN_PID=""
cleanup() {
    [ -n "$SCAN_PID" ] && kill "$SCAN_PID" 2>/dev/null || true
    stop_daemon_and_cluster
}

start_cluster
trap cleanup EXIT
W=$BENCH_TMP/work
mkdir -p "$W/backups"
cp "$PGSHEPHERD" "$W/pgshepherd"
BIN=$W/pgshepherd
DATA=$BENCH_TMP/data

create_bench_databases "$TARGETS"
if [ "$RETENTION" = 1 ]; then
    retention="retention: {samples: $SAMPLES, events: $EVENTS, notifications: $EVENTS, audit: $EVENTS, interval: $PRUNE_EVERY, batch: 500}"
else
    retention="retention: {samples: never, events: never, notifications: never, audit: never}"
fi
write_daemon_config_extra "$TARGETS" <<<"$retention"
sed -i -e "s/^log: .*/log: {format: json, level: \"warn,pgshepherd::daemon::retention=info\"}/" "$W/daemon.yaml"
sed -i 's/^daemon: .*/daemon: {name: bench, poll_interval: 300ms, lease_timeout: 3s}/' "$W/daemon.yaml"
start_daemon
describe_machine
echo "load: a run every ${SUBMIT_EVERY}s over $TARGETS targets (soak $SOAK at $INTERVAL, 2 checks), $SCAN_RATE unauthenticated requests/s, for ${DURATION}s"
echo "$retention"

# Run n on target t applies V1..Vn of the target's own set (each a new table).
declare -A applied
bundle_for() { # $1 = target, $2 = n
    local target=$1 n=$2 files="[]" i
    for i in $(seq 1 "$n"); do
        files=$(jq -c --arg i "$i" '. + [{name: "V\($i)__t\($i).sql", content: "CREATE TABLE t\($i) (id int);\n"},
                                          {name: "V\($i)__t\($i).down.sql", content: "DROP TABLE t\($i);\n"}]' <<<"$files")
    done
    jq -n --arg target "$target" --arg soak "$SOAK" --arg interval "$INTERVAL" --argjson files "$files" '{
        plan: {path: "plan.yaml", content: ("name: load\ntarget: " + $target + "\nmigrations: set\nbackup:\n  enabled: false\nsoak:\n  duration: " + $soak + "\n  interval: " + $interval + "\n  baseline_samples: 1\n  checks:\n    - name: sessions\n      sql: SELECT count(*) FROM pg_stat_activity\n      max: 100000\n    - name: one\n      sql: SELECT 1\n      min: 1\n      max: 1\nrollback:\n  strategy: down\n  confirm: 0s\n")},
        migrations: {name: "set", files: $files}}'
}

# Unauthenticated requests, SCAN_RATE a second.
(
    while true; do
        for _ in $(seq 1 "$SCAN_RATE"); do
            curl -s -o /dev/null "$S/v1/runs" &
        done
        wait
        sleep 1
    done
) &
SCAN_PID=$!

report() {
    psql_q -d pgshepherd_state -F ' ' -c "
        SELECT round(pg_database_size(current_database()) / 1048576.0, 1),
               (SELECT count(*) FROM events),
               (SELECT count(*) FROM events WHERE name = 'check_sample'),
               (SELECT count(*) FROM audit),
               (SELECT coalesce(sum(count), 0) FROM audit WHERE status = 401),
               (SELECT count(*) FROM runs WHERE phase = 'finished'),
               (SELECT count(*) FROM runs WHERE phase <> 'finished'),
               round(pg_total_relation_size('events') / 1048576.0, 1)"
}
printf '%6s %8s %8s %8s %6s %7s %9s %7s %10s\n' t_s db_MiB events samples audit 401s finished open events_MiB
start=$(date +%s)
next_report=$start
n=0
while :; do
    now=$(date +%s)
    [ $((now - start)) -ge "$DURATION" ] && break
    target=$(printf 'target_%03d' $((n % TARGETS + 1)))
    k=$(( ${applied[$target]:-0} + 1 ))
    applied[$target]=$k
    bundle_for "$target" "$k" >"$W/bundle.json"
    code=$(curl -sS -o "$W/submit.json" -w '%{http_code}' -X POST \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data-binary @"$W/bundle.json" "$S/v1/runs")
    [ "$code" = 201 ] || { echo "submit answered $code: $(cat "$W/submit.json")" >&2; exit 1; }
    n=$((n + 1))
    if [ "$now" -ge "$next_report" ]; then
        read -r size ev samples audit refused finished open evsize <<<"$(report)"
        printf '%6d %8s %8s %8s %6s %7s %9s %7s %10s\n' $((now - start)) "$size" "$ev" "$samples" "$audit" "$refused" "$finished" "$open" "$evsize"
        next_report=$((next_report + REPORT))
    fi
    sleep "$SUBMIT_EVERY"
done
read -r size ev samples audit refused finished open evsize <<<"$(report)"
printf '%6d %8s %8s %8s %6s %7s %9s %7s %10s\n' $(( $(date +%s) - start)) "$size" "$ev" "$samples" "$audit" "$refused" "$finished" "$open" "$evsize"
echo "submitted $n runs; outcomes:"
psql_q -d pgshepherd_state -c "SELECT coalesce(outcome, phase), count(*) FROM runs GROUP BY 1 ORDER BY 1"
echo "pruning passes that deleted something: $(grep -c 'pruned the state database' "$W/daemon.log" || true)"
